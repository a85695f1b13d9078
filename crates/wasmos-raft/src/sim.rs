//! A simulation of a master group: real openraft nodes over the real redb stores (on tmpfs when
//! there is one), joined by an in-memory network that loses, delays and reorders messages and
//! cuts nodes off, with nodes crashing and restarting from their files, while a client writes
//! submissions and status updates. Everything runs on one thread in tokio's paused time, and
//! every fault comes from one seeded generator, so a seed names a schedule of faults.
//!
//! Invariants checked throughout and at the end:
//! - at most one leader per term;
//! - a write acknowledged to the client is in every state machine once the faults stop;
//! - two state machines that applied the same log index hold the same state;
//! - on every node a task's state only moves forward (staging, starting, running, ended).
//!
//! `cargo test` runs [`DEFAULT_SEEDS`] seeds; `WASMOS_RAFT_SIM_SEEDS=5000 cargo test --release
//! -p wasmos-raft sim` runs more, and `WASMOS_RAFT_SIM_SEED=N` replays one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use openraft::{BasicNode, Config, Raft, ServerState};
use sha2::{Digest, Sha256};
use wasmos_proto::{
    AgentId, BundleHash, Resources, StatusUpdate, TaskId, TaskSpec, TaskState, TaskStatus,
};
use wasmos_state::{ClusterState, Command, CommandResult};

use crate::sim_net::{Rng, Router, SimNetwork, run_paused};
use crate::state_machine::Shared;
use crate::store::open_stores;
use crate::types::{NodeId, TypeConfig};

/// Seeds `cargo test` runs.
const DEFAULT_SEEDS: u64 = 300;
/// Simulated time of faults and writes per seed; then everything heals.
const RUN: Duration = Duration::from_secs(4);

/// One simulated master: its files survive its crashes.
struct Node {
    id: NodeId,
    path: PathBuf,
    raft: Option<Raft<TypeConfig>>,
    shared: Option<Shared>,
    closed: Option<tokio::sync::watch::Receiver<()>>,
}

/// What the invariants remember between observations.
#[derive(Default)]
struct Observed {
    leaders: BTreeMap<u64, BTreeSet<NodeId>>,
    state_at: BTreeMap<u64, [u8; 32]>,
    task_rank: BTreeMap<(NodeId, TaskId), u8>,
}

fn digest(state: &ClusterState) -> [u8; 32] {
    let bytes = postcard::to_stdvec(state).unwrap_or_default();
    Sha256::digest(bytes).into()
}

fn config() -> Arc<Config> {
    let config = Config {
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        // Snapshots and purges happen within a run, so lagging nodes catch up by snapshot.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(15),
        max_in_snapshot_log_to_keep: 3,
        ..Config::default()
    };
    Arc::new(config.validate().unwrap())
}

const HASH: &str = "0000000000000000000000000000000000000000000000000000000000000001";

fn agent() -> AgentId {
    AgentId::new("agent-1").unwrap()
}

struct Sim {
    router: Arc<Router>,
    nodes: Vec<Node>,
    rng: Rng,
    observed: Observed,
    acked: BTreeSet<TaskId>,
    seq: u64,
}

impl Sim {
    async fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        let (log_store, sm) = open_stores(&node.path).await?;
        let network = SimNetwork {
            router: self.router.clone(),
            from: node.id,
        };
        node.closed = Some(log_store.closed());
        node.shared = Some(sm.shared());
        let raft = Raft::new(node.id, config(), network, log_store, sm).await?;
        self.router
            .nodes
            .lock()
            .unwrap()
            .insert(node.id, raft.clone());
        node.raft = Some(raft);
        Ok(())
    }

    async fn crash(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        let Some(raft) = node.raft.take() else {
            return Ok(());
        };
        self.router.nodes.lock().unwrap().remove(&node.id);
        raft.shutdown().await?;
        drop(raft);
        node.shared = None;
        if let Some(mut closed) = node.closed.take() {
            while closed.changed().await.is_ok() {}
        }
        Ok(())
    }

    fn leader(&self) -> Option<Raft<TypeConfig>> {
        self.nodes.iter().filter_map(|n| n.raft.clone()).find(|r| {
            let m = r.metrics();
            let m = m.borrow();
            m.state == ServerState::Leader
        })
    }

    /// Checks the invariants against what every live node shows now.
    fn observe(&mut self) -> anyhow::Result<()> {
        for node in &self.nodes {
            let (Some(raft), Some(shared)) = (&node.raft, &node.shared) else {
                continue;
            };
            let m = raft.metrics().borrow().clone();
            if m.state == ServerState::Leader {
                let leaders = self.observed.leaders.entry(m.current_term).or_default();
                leaders.insert(node.id);
                ensure!(
                    leaders.len() == 1,
                    "two leaders in term {}: {leaders:?}",
                    m.current_term
                );
            }
            let applied = shared.read();
            if let Some(index) = applied.last_applied.map(|l| l.index) {
                let d = digest(&applied.state);
                let seen = *self.observed.state_at.entry(index).or_insert(d);
                ensure!(
                    seen == d,
                    "node {} applied index {index} to a state unlike another node's",
                    node.id
                );
            }
            for (id, t) in &applied.state.tasks {
                let r = t.status.state.step();
                let before = self.observed.task_rank.entry((node.id, *id)).or_insert(r);
                ensure!(
                    r >= *before,
                    "task {id} went back from rank {before} to {r} on node {}",
                    node.id
                );
                *before = r;
            }
        }
        Ok(())
    }

    /// One client write to whoever leads now; an error or a timeout is simply not acknowledged.
    async fn write(&mut self, cmd: Command) -> Option<CommandResult> {
        self.write_at(cmd).await.map(|(r, _)| r)
    }

    /// [`Sim::write`], also returning the log index the write was committed at.
    async fn write_at(&mut self, cmd: Command) -> Option<(CommandResult, u64)> {
        let raft = self.leader()?;
        match tokio::time::timeout(Duration::from_secs(1), raft.client_write(cmd)).await {
            Ok(Ok(resp)) => Some((resp.data, resp.log_id.index)),
            _ => None,
        }
    }

    async fn client_step(&mut self) {
        let acked: Vec<TaskId> = self.acked.iter().copied().collect();
        let cmd = match (self.rng.below(3), acked.is_empty()) {
            (0, _) | (_, true) => Command::SubmitTask {
                id: None,
                spec: spec(),
                owner: "op".into(),
                now_ms: 1,
                key: None,
            },
            (1, false) => Command::AssignTask {
                task: acked[self.rng.below(acked.len() as u64) as usize],
                agent: agent(),
                now_ms: 1,
            },
            _ => {
                self.seq += 1;
                let state = match self.rng.below(3) {
                    0 => TaskState::Starting,
                    1 => TaskState::Running,
                    _ => TaskState::Finished,
                };
                Command::AgentStatus {
                    agent: agent(),
                    update: StatusUpdate {
                        seq: self.seq,
                        task: acked[self.rng.below(acked.len() as u64) as usize],
                        status: TaskStatus::new(state),
                    },
                    now_ms: 1,
                }
            }
        };
        if let Some(CommandResult::Submitted(id)) = self.write(cmd).await {
            self.acked.insert(id);
        }
    }

    async fn fault_step(&mut self) -> anyhow::Result<()> {
        let i = self.rng.below(self.nodes.len() as u64) as usize;
        let id = self.nodes[i].id;
        match self.rng.below(4) {
            0 if self.nodes[i].raft.is_some() => self.crash(i).await?,
            1 if self.nodes[i].raft.is_none() => self.start(i).await?,
            2 => {
                self.router.cut.lock().unwrap().insert(id);
            }
            _ => {
                self.router.cut.lock().unwrap().remove(&id);
            }
        }
        Ok(())
    }
}

fn spec() -> TaskSpec {
    let mut spec = TaskSpec::new("sim", BundleHash::parse(HASH).unwrap());
    spec.resources = Resources::new(1, 1, 0);
    spec
}

/// Runs one seed to the end, returning how many writes were acknowledged.
async fn run(seed: u64, dir: &std::path::Path) -> anyhow::Result<usize> {
    let mut rng = Rng(seed);
    let n = if rng.chance(25) { 5 } else { 3 };
    let router = Arc::new(Router::new(seed ^ 0x5eed, rng.below(15)));
    let nodes = (1..=n)
        .map(|id| Node {
            id,
            path: dir.join(format!("node-{id}.redb")),
            raft: None,
            shared: None,
            closed: None,
        })
        .collect();
    let mut sim = Sim {
        router,
        nodes,
        rng,
        observed: Observed::default(),
        acked: BTreeSet::new(),
        seq: 0,
    };
    for i in 0..sim.nodes.len() {
        sim.start(i).await?;
    }
    let members: BTreeMap<NodeId, BasicNode> = (1..=n)
        .map(|id| (id, BasicNode::new(format!("sim-{id}"))))
        .collect();
    let first = sim.nodes[0].raft.clone().context("node 1")?;
    first.initialize(members).await?;
    // The bundle and agent every task needs, before any fault.
    let setup = [
        Command::AddBundle {
            hash: BundleHash::parse(HASH)?,
            size: 1,
            now_ms: 1,
            reader: None,
        },
        Command::RegisterAgent {
            id: agent(),
            total: Resources::new(1 << 20, 1 << 40, 0),
            attributes: BTreeMap::new(),
            fuel_per_core_second: 0,
            reserved: BTreeMap::new(),
            running: Vec::new(),
            peer_addr: None,
            now_ms: 1,
        },
    ];
    for cmd in setup {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while sim.write(cmd.clone()).await.is_none() {
            ensure!(tokio::time::Instant::now() < deadline, "no leader at start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let end = tokio::time::Instant::now() + RUN;
    while tokio::time::Instant::now() < end {
        if sim.rng.chance(8) {
            sim.fault_step().await?;
        }
        sim.client_step().await;
        sim.observe()?;
        tokio::time::sleep(Duration::from_millis(5 + sim.rng.below(20))).await;
    }

    // Heal everything; every node must converge on one state holding every acknowledged write.
    sim.router.cut.lock().unwrap().clear();
    for i in 0..sim.nodes.len() {
        if sim.nodes[i].raft.is_none() {
            sim.start(i).await?;
        }
    }
    // One more write commits everything before it in the leader's term.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let marker_index = loop {
        sim.observe()?;
        let marker = Command::AddBundle {
            hash: BundleHash::parse(HASH)?,
            size: 1,
            now_ms: 2,
            reader: None,
        };
        if let Some((_, index)) = sim.write_at(marker).await {
            break index;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no leader after healing");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let last = Some(marker_index);
    loop {
        sim.observe()?;
        let applied: Vec<Option<u64>> = sim
            .nodes
            .iter()
            .map(|n| {
                n.shared
                    .as_ref()
                    .and_then(|s| s.read().last_applied.map(|l| l.index))
            })
            .collect();
        if applied.iter().all(|a| *a >= last) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("nodes did not converge on index {last:?}: {applied:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let states: Vec<ClusterState> = sim
        .nodes
        .iter()
        .map(|n| {
            n.shared
                .as_ref()
                .map(|s| s.read().state.clone())
                .unwrap_or_default()
        })
        .collect();
    for (i, s) in states.iter().enumerate() {
        for id in &sim.acked {
            ensure!(
                s.tasks.contains_key(id),
                "acknowledged task {id} is missing on node {} (it has {} tasks, next id {}; applied {:?}; leader's last index {last:?})",
                i + 1,
                s.tasks.len(),
                s.next_task_id,
                sim.nodes[i]
                    .shared
                    .as_ref()
                    .and_then(|x| x.read().last_applied)
            );
        }
    }
    // Applied indexes may still differ by entries after `last`; compare at the same index.
    let digests: BTreeSet<[u8; 32]> = sim
        .nodes
        .iter()
        .filter_map(|n| {
            let s = n.shared.as_ref()?.read();
            (s.last_applied.map(|l| l.index) == applied_max(&sim)).then(|| digest(&s.state))
        })
        .collect();
    ensure!(digests.len() <= 1, "nodes at the same index differ");
    let acked = sim.acked.len();
    for i in 0..sim.nodes.len() {
        sim.crash(i).await?;
    }
    Ok(acked)
}

fn applied_max(sim: &Sim) -> Option<u64> {
    sim.nodes
        .iter()
        .filter_map(|n| n.shared.as_ref()?.read().last_applied.map(|l| l.index))
        .max()
}

/// Runs `seed` on a single thread in paused time, with its files in a fresh directory.
fn run_seed(seed: u64) -> anyhow::Result<usize> {
    run_paused(|dir| async move { run(seed, &dir).await })?
        .with_context(|| format!("seed {seed} (replay: WASMOS_RAFT_SIM_SEED={seed})"))
}

#[test]
fn sim_seeds_keep_every_invariant() -> anyhow::Result<()> {
    let seeds: Vec<u64> = match std::env::var("WASMOS_RAFT_SIM_SEED") {
        Ok(one) => vec![one.parse()?],
        Err(_) => {
            let n = std::env::var("WASMOS_RAFT_SIM_SEEDS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_SEEDS);
            (1..=n).collect()
        }
    };
    let mut acked = 0;
    for seed in &seeds {
        acked += run_seed(*seed)?;
    }
    eprintln!(
        "{} seeds, {acked} acknowledged submissions, every invariant held",
        seeds.len()
    );
    ensure!(acked > 0, "no write was ever acknowledged");
    Ok(())
}
