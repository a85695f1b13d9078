//! Wasmos wire vocabulary: ids, resources, task specs and states, and every message that crosses a
//! connection, plus the versioned frame codec. Pure data: no I/O, no clock, no async runtime.

mod ceilings;
mod codec;
mod events;
mod framework;
mod guest;
mod ids;
mod job;
mod messages;
mod net;
mod quantity;
mod signing;
mod spawn;
mod task;

pub use ceilings::{Ceilings, DEFAULT_CEILINGS, EffectiveCeilings};
pub use codec::{CodecError, MAX_FRAME_BYTES, PROTOCOL_VERSION, decode, encode};
pub use events::{
    AgentChange, Change, Event, FrameworkChange, JobChange, MAX_EVENTS_PER_FRAME, RoleChange, Topic,
};
pub use framework::{
    DEFAULT_FAILOVER_TIMEOUT_MS, FrameworkCall, FrameworkEvent, OfferInfo, OfferOperation,
};
pub use guest::{
    GRACE_MS, MAX_PROGRESS_MESSAGE_BYTES, MAX_RESULT_FILES, MAX_RESULT_NAME_BYTES,
    MAX_RESULT_PATH_BYTES, MAX_RESULT_VALUE_BYTES, MAX_RESULT_VALUES_BYTES, MAX_RESULTS,
    ResultError, ResultFile, TASK_INTERFACES, TASK_PACKAGE, TASK_PACKAGE_VERSION, TaskProgress,
    TaskResult, WASI_PACKAGES, check_component_imports, check_import, component_imports,
    component_interface, publish_file, publish_result, result_files_valid, result_path_ok,
    results_valid,
};
pub use ids::{AgentId, BundleHash, FrameworkId, IdError, OfferId, TaskId};
pub use job::{
    DoneSlots, GroupProgress, GroupSpec, JobEvent, JobId, JobInfo, JobKind, JobSpec, JobState,
    MAX_GROUP_COUNT,
};
pub use messages::{
    AgentInfo, AgentPeerRequest, AgentPeerResponse, AgentState, AgentToMaster, AuditEntry,
    AuditFilter, BlobKind, ClientRequest, ClientResponse, ClusterInfo, ErrorKind, FrameworkOffers,
    FrameworkSummary, InputSource, MAX_AUDIT_PAGE, MAX_AUDIT_SCAN, MAX_CSR_BYTES,
    MAX_MAINTENANCE_AGENTS, MAX_MAINTENANCE_MS, MAX_REVOKED_PAGE, MAX_TASK_PAGE, MAX_TASK_SAMPLES,
    MaintenanceInfo, MaintenanceWindow, MasterInfo, MasterToAgent, OutputStream, PeerRequest,
    PeerResponse, ReservationInfo, RevokedInfo, RoleInfo, StatusUpdate, TaskFilter, TaskSample,
    USAGE_SAMPLES, UsageSample,
};
pub use net::{Cidr, EgressRule, NetRule, NetRuleError};
pub use quantity::{
    QuantityError, format_bytes, format_cpu, format_duration_ms, parse_bytes, parse_cpu,
};
pub use signing::{
    BundleSignature, BundleTrust, MAX_BUNDLE_SIGNATURES, MAX_KEY_ID_BYTES, MAX_ROLE_SIGNERS,
    MAX_SIGNING_KEYS, PUBLIC_KEY_BYTES, SIGNATURE_BYTES, SigningKeyInfo, TrustedKey,
};
pub use spawn::{
    ChildEnd, ChildOutcome, ChildSpec, Lineage, MAX_CHILD_RETRIES, MAX_CHILD_SPEC_BYTES,
    MAX_CHILD_SPEC_ITEMS, MAX_LIVE_CHILDREN, MAX_SPAWN_DEPTH, SpawnRefusal, check_child_spec,
};
pub use task::{
    InputFile, JobSlot, MAX_INPUTS, MAX_MOUNTS, MAX_OUTPUT_FILES, MAX_SCALAR_KINDS, Mount, NET,
    OutputFile, OutputPolicy, Qos, Reason, Resources, SecretEnv, SecretValue, TaskInfo, TaskSpec,
    TaskState, TaskStatus, guest_parent, valid_guest_path,
};

/// ALPN protocol names: one per channel, so a peer on the wrong channel fails the TLS handshake.
pub mod alpn {
    pub const AGENT: &[u8] = b"wasmos-agent/1";
    pub const CLIENT: &[u8] = b"wasmos-client/1";
    pub const FRAMEWORK: &[u8] = b"wasmos-framework/1";
    pub const RAFT: &[u8] = b"wasmos-raft/2";
    /// Master to master, besides raft: copies of bundle blobs.
    pub const PEER: &[u8] = b"wasmos-peer/1";
    /// Agent to agent: intermediate outputs kept where they were produced.
    pub const AGENT_PEER: &[u8] = b"wasmos-agent-peer/1";
}
