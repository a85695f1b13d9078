//! A group of three masters over real QUIC with mutual TLS on loopback, each with its own
//! redb store: election, replication to followers, writes refused by followers with the
//! leader's id, failover when the leader stops, and a stopped member catching up on restart.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tempfile::TempDir;
use wasmos_net::Identity;
use wasmos_net::pki::{self, CaBundle};
use wasmos_proto::BundleHash;
use wasmos_state::{Command, CommandResult};

use crate::{NodeId, Peers, RaftError, RaftNode, RaftOptions};

struct Member {
    id: NodeId,
    dir: TempDir,
    creds: wasmos_net::Credentials,
    /// `None` while stopped: its socket must be free to bind again.
    endpoint: Option<wasmos_net::Endpoint>,
    node: Option<RaftNode>,
}

impl Member {
    /// Stops raft and closes the endpoint, as a master process that exits.
    async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(node) = self.node.take() {
            node.shutdown().await?;
        }
        if let Some(endpoint) = self.endpoint.take() {
            endpoint.close(0u32.into(), b"stopped");
            endpoint.wait_idle().await;
        }
        Ok(())
    }

    /// Starts again from its store, listening on the same address.
    async fn restart(
        &mut self,
        ca: &CaBundle,
        members: &BTreeMap<NodeId, String>,
    ) -> anyhow::Result<()> {
        ensure!(
            Path::new(self.dir.path())
                .join(crate::node::DB_FILE)
                .exists()
        );
        let addr: SocketAddr = members[&self.id].parse()?;
        // The old socket is released once the stopped endpoint's last handle is dropped.
        let mut tries = 0;
        self.endpoint = Some(loop {
            match wasmos_net::server_endpoint(addr, &self.creds, &[wasmos_proto::alpn::RAFT]) {
                Ok(e) => break e,
                Err(_) if tries < 50 => tries += 1,
                Err(e) => return Err(e.into()),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        });
        open(self, ca, members).await
    }
}

fn bundle(n: u64) -> Command {
    Command::AddBundle {
        hash: BundleHash::parse(&format!("{n:064x}")).unwrap(),
        size: n,
        now_ms: n,
        reader: None,
    }
}

fn peers_for(ca: &CaBundle, id: NodeId, members: &BTreeMap<NodeId, String>) -> Peers {
    let who = Identity::Master(format!("m{id}"));
    let ip: std::net::IpAddr = [127, 0, 0, 1].into();
    let issued = pki::issue(ca, &who, &[], &[ip]).unwrap();
    Peers {
        creds: wasmos_net::Credentials::from_pem(&ca.cert_pem, &issued.cert_pem, &issued.key_pem)
            .unwrap(),
        members: members.clone(),
        bootstrap: true,
    }
}

/// Serves raft RPCs from peer masters on `endpoint` (what the master's accept loop does).
fn serve(endpoint: wasmos_net::Endpoint, node: RaftNode) {
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let raft = node.raft().clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                if matches!(wasmos_net::peer_identity(&conn), Ok(Identity::Master(_))) {
                    crate::serve(raft, conn).await;
                }
            });
        }
    });
}

async fn open(
    m: &mut Member,
    ca: &CaBundle,
    members: &BTreeMap<NodeId, String>,
) -> anyhow::Result<()> {
    let peers = peers_for(ca, m.id, members);
    let node = RaftNode::open_cluster(m.dir.path(), m.id, options(), &peers).await?;
    if let Some(endpoint) = &m.endpoint {
        serve(endpoint.clone(), node.clone());
    }
    m.node = Some(node);
    Ok(())
}

fn options() -> RaftOptions {
    RaftOptions {
        snapshot_logs_since_last: 20,
        logs_to_keep: 5,
        ..RaftOptions::default()
    }
}

async fn leader_of(nodes: &[&RaftNode], not: Option<NodeId>) -> anyhow::Result<NodeId> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let seen: Vec<Option<NodeId>> = nodes.iter().map(|n| n.leader()).collect();
        if let Some(Some(l)) = seen.first()
            && Some(*l) != not
            && seen.iter().all(|s| s == &Some(*l))
        {
            return Ok(*l);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no agreed leader in 10 s: {seen:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn has_bundles(node: &RaftNode, n: usize) -> anyhow::Result<()> {
    let mut applied = node.subscribe();
    tokio::time::timeout(Duration::from_secs(10), async {
        while node.read(|s| s.bundles.len()) < n {
            let _ = applied.changed().await;
        }
    })
    .await
    .with_context(|| format!("node {} never applied {n} bundles", node.id()))
}

/// Three members (not opened) with master certificates of `ca`, each with its raft endpoint
/// bound on a free loopback port, and their addresses.
fn three_members(ca: &CaBundle) -> anyhow::Result<(Vec<Member>, BTreeMap<NodeId, String>)> {
    let mut members = Vec::new();
    let mut addrs = BTreeMap::new();
    for id in 1..=3 {
        let ip: std::net::IpAddr = [127, 0, 0, 1].into();
        let issued = pki::issue(ca, &Identity::Master(format!("m{id}")), &[], &[ip])?;
        let creds =
            wasmos_net::Credentials::from_pem(&ca.cert_pem, &issued.cert_pem, &issued.key_pem)?;
        let addr: SocketAddr = "127.0.0.1:0".parse()?;
        let endpoint = wasmos_net::server_endpoint(addr, &creds, &[wasmos_proto::alpn::RAFT])?;
        addrs.insert(id, endpoint.local_addr()?.to_string());
        members.push(Member {
            id,
            dir: tempfile::tempdir()?,
            creds,
            endpoint: Some(endpoint),
            node: None,
        });
    }
    Ok((members, addrs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_masters_elect_replicate_and_fail_over() -> anyhow::Result<()> {
    let ca = pki::new_ca("raft-test")?;
    let (mut members, addrs) = three_members(&ca)?;
    for m in &mut members {
        open(m, &ca, &addrs).await?;
    }
    for m in &members {
        m.node
            .as_ref()
            .unwrap()
            .ready(Duration::from_secs(10))
            .await?;
    }
    let nodes: Vec<&RaftNode> = members.iter().map(|m| m.node.as_ref().unwrap()).collect();
    let leader = leader_of(&nodes, None).await?;
    let by_id = |id: NodeId| nodes.iter().find(|n| n.id() == id).copied().unwrap();
    // `cluster init` is for `--join` masters only: here it would split the group.
    match nodes[2].initialize_alone().await {
        Err(RaftError::Config(msg)) => ensure!(msg.contains("--join"), "{msg}"),
        other => bail!("a --peers master started a group of its own: {other:?}"),
    }

    // Writes go through the leader and reach every follower; past 20 entries a snapshot is
    // built and the log purged behind it.
    for n in 1..=30 {
        ensure!(by_id(leader).write(bundle(n)).await? == CommandResult::Ok);
    }
    for n in &nodes {
        has_bundles(n, 30).await?;
    }
    let follower = nodes.iter().find(|n| n.id() != leader).unwrap();
    match follower.write(bundle(99)).await {
        Err(RaftError::NotLeader { leader: Some(l) }) => ensure!(l == leader),
        other => bail!("a follower accepted a write: {other:?}"),
    }

    // The leader stops: the other two elect one of themselves and go on.
    drop(nodes);
    let old = members.iter_mut().find(|m| m.id == leader).unwrap();
    old.stop().await?;
    let nodes: Vec<&RaftNode> = members.iter().filter_map(|m| m.node.as_ref()).collect();
    let by_id = |id: NodeId| nodes.iter().find(|n| n.id() == id).copied().unwrap();
    let rest: Vec<&RaftNode> = nodes.clone();
    let next = leader_of(&rest, Some(leader)).await?;
    ensure!(next != leader);
    for n in 31..=40 {
        ensure!(by_id(next).write(bundle(n)).await? == CommandResult::Ok);
    }
    for n in &rest {
        has_bundles(n, 40).await?;
    }

    // The old leader comes back from its store and catches up (by log or snapshot).
    drop(nodes);
    drop(rest);
    let back = members.iter_mut().find(|m| m.id == leader).unwrap();
    back.restart(&ca, &addrs).await?;
    let back = members
        .iter()
        .find(|m| m.id == leader)
        .unwrap()
        .node
        .as_ref()
        .unwrap();
    back.ready(Duration::from_secs(10)).await?;
    has_bundles(back, 40).await?;
    let all = members
        .iter()
        .map(|m| m.node.as_ref().unwrap().read(|s| s.clone()));
    let states: Vec<_> = all.collect();
    ensure!(
        states.windows(2).all(|w| w[0] == w[1]),
        "state machines differ"
    );
    for m in &members {
        m.node.as_ref().unwrap().shutdown().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masters_join_and_leave_through_joint_consensus() -> anyhow::Result<()> {
    let ca = pki::new_ca("raft-membership-test")?;
    let (mut members, addrs) = three_members(&ca)?;
    // Each starts knowing only itself and waiting (`wasmos master --join`).
    for m in &mut members {
        let alone = BTreeMap::from([(m.id, addrs[&m.id].clone())]);
        let peers = Peers {
            bootstrap: false,
            ..peers_for(&ca, m.id, &alone)
        };
        let node = RaftNode::open_cluster(m.dir.path(), m.id, options(), &peers).await?;
        serve(m.endpoint.clone().context("endpoint")?, node.clone());
        m.node = Some(node);
    }
    let node = |id: NodeId| members[id as usize - 1].node.clone().unwrap();
    // Nothing starts a group by itself.
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(
        node(1).leader().is_none(),
        "a waiting master elected itself"
    );

    // `cluster init` on 1, then 2 and 3 join; past 20 writes the joiners catch up by snapshot.
    node(1).initialize_alone().await?;
    node(1).ready(Duration::from_secs(10)).await?;
    for n in 1..=30 {
        ensure!(node(1).write(bundle(n)).await? == CommandResult::Ok);
    }
    match node(1).initialize_alone().await {
        Err(RaftError::Config(msg)) => ensure!(msg.contains("already"), "{msg}"),
        other => bail!("initialized twice: {other:?}"),
    }
    node(1).add_master(2, addrs[&2].clone()).await?;
    node(1).add_master(3, addrs[&3].clone()).await?;
    let status = node(1).status();
    ensure!(
        status.members.iter().filter(|m| m.voter).count() == 3,
        "{status:?}"
    );
    for id in 2..=3 {
        has_bundles(&node(id), 30).await?;
    }
    // A follower cannot change membership.
    match node(2).remove_master(1).await {
        Err(RaftError::NotLeader { .. }) => {}
        other => bail!("a follower removed a master: {other:?}"),
    }

    // The leader removes itself: the other two elect a leader and accept writes.
    node(1).remove_master(1).await?;
    let rest = [node(2), node(3)];
    let refs: Vec<&RaftNode> = rest.iter().collect();
    let next = leader_of(&refs, Some(1)).await?;
    ensure!(next != 1);
    ensure!(node(next).write(bundle(31)).await? == CommandResult::Ok);
    let status = node(next).status();
    let voters: Vec<NodeId> = status
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.id)
        .collect();
    ensure!(voters == vec![2, 3], "{status:?}");
    match node(next).remove_master(9).await {
        Err(RaftError::Config(msg)) => ensure!(msg.contains("not a member"), "{msg}"),
        other => bail!("removed an unknown master: {other:?}"),
    }
    for m in &members {
        m.node.as_ref().unwrap().shutdown().await?;
    }
    Ok(())
}
