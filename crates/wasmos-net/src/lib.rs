//! Wasmos transport: QUIC endpoints with mutual TLS, the identity a certificate proves, the
//! length-prefixed frame format, and the PKI helpers that mint the cluster's certificates.
//! This is the only crate that touches quinn, rustls and ring
//! (which also seals secrets at rest and signs bundles).

mod agent_peer;
mod frame;
mod https;
mod identity;
mod live;
pub mod pki;
mod private;
mod refusals;
mod renew;
mod revoke;
pub mod seal;
pub mod signing;
mod tls;
mod udp;
mod watch;

pub use agent_peer::{agent_peer_client, connect_agent};
pub use frame::{FrameError, recv_frame, send_frame};
pub use https::{HttpsAcceptor, HttpsStream};
pub use identity::{
    Identity, IdentityError, closed_on_purpose, negotiated_alpn, peer_chain, peer_identity,
    peer_leaf,
};
pub use live::{CredentialFiles, RELOAD_EVERY, follow_files};
pub use private::{create_private_dir, restrict, write_private};
pub use quinn::{Connection, Endpoint, RecvStream, SendStream};
pub use refusals::Refusals;
pub use renew::renew_when_due;
pub use revoke::{
    LiveConnections, REVOKED_REASON, Registered, RevocationList, Revoked, UNTRUSTED_REASON,
    close_as_revoked, normalize_serial, serial_of_der,
};
pub use tls::{
    Credentials, MASTER_SERVER_NAME, NetError, REFUSED, WATCHFUL_KEEP_ALIVE, bind_for,
    client_endpoint, connect, connect_within, describe, is_refusal, server_endpoint,
    watchful_client_endpoint,
};
pub use udp::PLAIN_UDP_ENV;
pub use watch::{PROBE_TIMEOUT, SILENCE, ask_leader, watch_leader};
