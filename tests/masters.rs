//! Three `wasmos master` processes in one raft group over QUIC on loopback: they elect a
//! leader that `wasmos cluster status` names on every member, a write through the leader is
//! replicated, and after `kill -9` of the leader the other two elect a new one, which still has
//! every acknowledged write and accepts new ones. Writes sent to a follower are redirected to the
//! leader; `--stale` reads are answered by the follower.
//! An agent and a client config given every master find the new leader by themselves.
//! Masters renew their own short-lived certificates, from their CA key or from a peer's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wasmos_net::Identity;
use wasmos_net::pki;
use wasmos_tests::{eventually, text, wasmos_bin, wasmos_with};

struct Master {
    id: u64,
    addr: String,
    child: Option<Child>,
}

impl Drop for Master {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A free UDP port on loopback (released again for the master to bind).
fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_pem(dir: &Path, name: &str, cert: &str, key: &str) {
    std::fs::write(dir.join(format!("{name}.pem")), cert).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key).unwrap();
}

/// An operator's client config pointing at `addr`.
fn client_config(dir: &Path, addr: &str) -> PathBuf {
    let path = dir.join(format!("client-{}.toml", addr.replace([':', '.'], "-")));
    std::fs::write(
        &path,
        format!(
            "master = \"{addr}\"\nca = \"ca.pem\"\ncert = \"operator.pem\"\nkey = \"operator.key\"\n"
        ),
    )
    .unwrap();
    path
}

fn status(dir: &Path, addr: &str) -> Option<serde_json::Value> {
    let out = wasmos_with(
        &client_config(dir, addr),
        &["cluster", "status", "-o", "json"],
    );
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

/// Waits until every live master names the same leader, other than `not`.
fn agreed_leader(dir: &Path, masters: &[&Master], not: Option<u64>) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leaders: Vec<Option<u64>> = masters
            .iter()
            .map(|m| status(dir, &m.addr).and_then(|s| s["leader"].as_u64()))
            .collect();
        if let Some(Some(l)) = leaders.first()
            && Some(*l) != not
            && leaders.iter().all(|x| x == &Some(*l))
        {
            return *l;
        }
        assert!(Instant::now() < deadline, "no agreed leader: {leaders:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `wasmos master` for `m` of the group `peers` (`ID=ADDR,...`), run in `dir` with the
/// certificate `m<ID>.pem` there, logging to `m<ID>.log`.
fn master_cmd(dir: &Path, m: &Master, peers: &str) -> Command {
    let name = format!("m{}", m.id);
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let mut cmd = Command::new(wasmos_bin());
    cmd.current_dir(dir)
        .args(["master", "--id", &m.id.to_string(), "--listen", &m.addr])
        .args(["--peers", peers, "--data-dir", &name])
        .args(["--ca", "ca.pem", "--cert", &format!("{name}.pem")])
        .args(["--key", &format!("{name}.key")])
        .env("RUST_LOG", "info,openraft=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    cmd
}

/// A temporary directory with a new CA and an operator's certificate in it, and three masters
/// (not started) on free loopback ports.
fn three_masters(cluster: &str) -> (tempfile::TempDir, pki::CaBundle, Vec<Master>) {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::new_ca(cluster).unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
    let op = pki::issue(&ca, &Identity::Operator("admin".into()), &[], &[]).unwrap();
    write_pem(dir.path(), "operator", &op.cert_pem, &op.key_pem);
    let masters = (1..=3)
        .map(|id| Master {
            id,
            addr: format!("127.0.0.1:{}", free_port()),
            child: None,
        })
        .collect();
    (dir, ca, masters)
}

#[test]
fn three_masters_elect_a_leader_and_fail_over_after_kill_dash_nine() {
    let (dir, ca, mut masters) = three_masters("masters-test");
    let peers: Vec<String> = masters
        .iter()
        .map(|m| format!("{}={}", m.id, m.addr))
        .collect();
    let peers = peers.join(",");
    for m in &mut masters {
        let name = format!("m{}", m.id);
        let issued = pki::issue(&ca, &Identity::Master(name.clone()), &[], &[]).unwrap();
        write_pem(dir.path(), &name, &issued.cert_pem, &issued.key_pem);
        m.child = Some(master_cmd(dir.path(), m, &peers).spawn().unwrap());
    }
    // An agent given every master finds the leader, and follows it.
    let issued = pki::issue(&ca, &Identity::Agent("agent-1".into()), &[], &[]).unwrap();
    write_pem(dir.path(), "agent-1", &issued.cert_pem, &issued.key_pem);
    let addrs: Vec<String> = masters.iter().map(|m| m.addr.clone()).collect();
    let agent_log = std::fs::File::create(dir.path().join("agent-1.log")).unwrap();
    // Killed by its drop at the end, like the masters.
    let _agent = Master {
        id: 0,
        addr: String::new(),
        child: Some(
            Command::new(wasmos_bin())
                .current_dir(dir.path())
                .args(["agent", "--master", &addrs.join(",")])
                .args([
                    "--ca",
                    "ca.pem",
                    "--cert",
                    "agent-1.pem",
                    "--key",
                    "agent-1.key",
                ])
                .args(["--cpu", "1", "--mem", "1GiB", "--work-dir", "agent-1"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(agent_log)
                .spawn()
                .unwrap(),
        ),
    };
    let all: Vec<&Master> = masters.iter().collect();
    let leader = agreed_leader(dir.path(), &all, None);
    let leader_addr = masters[(leader - 1) as usize].addr.clone();
    let first = status(dir.path(), &leader_addr).unwrap();
    assert_eq!(first["state"], "leader", "{first}");
    assert_eq!(first["members"].as_array().unwrap().len(), 3, "{first}");

    // A write through the leader; one sent to a follower is redirected to the leader.
    let on_leader = client_config(dir.path(), &leader_addr);
    let out = wasmos_with(&on_leader, &["role", "set", "team-a", "--weight", "3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let follower = masters.iter().find(|m| m.id != leader).unwrap();
    let on_follower = client_config(dir.path(), &follower.addr);
    let out = wasmos_with(&on_follower, &["role", "set", "team-b", "--weight", "2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A stale read is answered by the follower itself, from its replicated state.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = wasmos_with(&on_follower, &["--stale", "role", "list", "-o", "json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let roles: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if roles.as_array().is_some_and(|r| r.len() == 2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower never saw both roles: {roles}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The leader reports every member's replication progress.
    let st = status(dir.path(), &leader_addr).unwrap();
    assert!(
        st["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["matched"].as_u64().is_some()),
        "{st}"
    );

    // kill -9 of the leader: the other two elect a new one in a later term.
    let killed = masters.iter_mut().find(|m| m.id == leader).unwrap();
    let mut child = killed.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let started = Instant::now();
    let rest: Vec<&Master> = masters.iter().filter(|m| m.id != leader).collect();
    let next = agreed_leader(dir.path(), &rest, Some(leader));
    let failover = started.elapsed();
    let next_addr = masters[(next - 1) as usize].addr.clone();
    let st = status(dir.path(), &next_addr).unwrap();
    assert!(st["term"].as_u64() > first["term"].as_u64(), "{st}");
    // The acknowledged write survived; new writes are accepted.
    let on_next = client_config(dir.path(), &next_addr);
    let roles = wasmos_with(&on_next, &["role", "list", "-o", "json"]);
    let roles: serde_json::Value = serde_json::from_slice(&roles.stdout).unwrap();
    assert_eq!(roles[0]["role"], "team-a", "{roles}");
    assert_eq!(roles[0]["weight_milli"], 3000, "{roles}");
    let out = wasmos_with(&on_next, &["role", "set", "team-c", "--weight", "2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A client config that lists every master reaches the new leader even though its first
    // address is the dead one.
    let every = dir.path().join("every.toml");
    let quoted: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    std::fs::write(
        &every,
        format!(
            "master = \"{leader_addr}\"\nmasters = [{}]\nca = \"ca.pem\"\ncert = \"operator.pem\"\nkey = \"operator.key\"\n",
            quoted.join(", ")
        ),
    )
    .unwrap();
    let out = wasmos_with(&every, &["role", "set", "team-d", "--weight", "2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The agent re-registered with the new leader.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = wasmos_with(&every, &["agent", "list", "-o", "json"]);
        let agents: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if agents[0]["state"] == "Active" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not follow the leader: {agents}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("failover after kill -9 of master {leader}: master {next} leads after {failover:?}");
}

/// `wasmos master --join` processes form a group only when told: `cluster init` starts it on
/// one, `cluster join` adds the others (they catch up and become voters), and `cluster leave`
/// removes a master, the leader included, after which the rest elect a leader and go on.
#[test]
fn masters_join_and_leave_with_cluster_commands() {
    let (dir, ca, mut masters) = three_masters("membership-test");
    for m in &mut masters {
        let name = format!("m{}", m.id);
        let issued = pki::issue(&ca, &Identity::Master(name.clone()), &[], &[]).unwrap();
        write_pem(dir.path(), &name, &issued.cert_pem, &issued.key_pem);
        let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap();
        m.child = Some(
            Command::new(wasmos_bin())
                .current_dir(dir.path())
                .args(["master", "--id", &m.id.to_string(), "--listen", &m.addr])
                .args(["--join", "--data-dir", &name])
                .args(["--ca", "ca.pem", "--cert", &format!("{name}.pem")])
                .args(["--key", &format!("{name}.key")])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }
    let on = |i: usize| client_config(dir.path(), &masters[i].addr);
    // Until told, no master leads: a write has nowhere to go.
    std::thread::sleep(Duration::from_millis(500));
    let st = status(dir.path(), &masters[0].addr).unwrap();
    assert!(st["leader"].is_null(), "{st}");

    let out = wasmos_with(&on(0), &["cluster", "init"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = wasmos_with(&on(0), &["role", "set", "team-a", "--weight", "3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A second init is refused, naming the problem.
    let out = wasmos_with(&on(0), &["cluster", "init"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("already belongs"),
        "{}",
        text(&out.stderr)
    );

    for i in [1, 2] {
        let (id, addr) = (masters[i].id.to_string(), masters[i].addr.clone());
        let out = wasmos_with(&on(0), &["cluster", "join", &id, &addr]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stdout).contains(&format!("master {id} joined")));
    }
    let st = status(dir.path(), &masters[0].addr).unwrap();
    let voters = st["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["voter"] == true)
        .count();
    assert_eq!(voters, 3, "{st}");
    // Joining twice, or an address that is not one, is refused.
    let out = wasmos_with(&on(0), &["cluster", "join", "2", &masters[1].addr]);
    assert!(
        text(&out.stderr).contains("already a member"),
        "{}",
        text(&out.stderr)
    );
    let out = wasmos_with(&on(0), &["cluster", "join", "7", "nowhere"]);
    assert!(
        text(&out.stderr).contains("not HOST:PORT"),
        "{}",
        text(&out.stderr)
    );
    // The newcomer has the write made before it joined.
    let out = wasmos_with(&on(2), &["--stale", "role", "list", "-o", "json"]);
    let roles: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(roles[0]["role"], "team-a", "{roles}");

    // The leader (master 1) leaves; 2 and 3 elect a leader and accept writes.
    let out = wasmos_with(&on(1), &["cluster", "leave", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rest: Vec<&Master> = masters[1..].iter().collect();
    let next = agreed_leader(dir.path(), &rest, Some(1));
    assert!(next == 2 || next == 3);
    let out = wasmos_with(&on(1), &["role", "set", "team-b", "--weight", "2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let st = status(dir.path(), &masters[1].addr).unwrap();
    let ids: Vec<u64> = st["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![2, 3], "{st}");
}

fn not_after(pem: &Path) -> i64 {
    let pem = std::fs::read_to_string(pem).unwrap();
    pki::validity_of_der(&pki::der_of_pem(&pem).unwrap())
        .unwrap()
        .1
}

fn epoch_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Masters whose certificates live 30 s renew them two thirds in, without a restart: the one
/// given the CA key signs its own, the other two ask it over the peer channel. Each keeps its
/// identity; once the first certificates have expired every member still answers (new
/// handshakes, with the renewed certificates) and writes are replicated.
#[test]
fn masters_renew_their_own_certificates() {
    let (dir, ca, mut masters) = three_masters("renewing-masters");
    std::fs::write(dir.path().join("ca.key"), &ca.key_pem).unwrap();
    let peers: Vec<String> = masters
        .iter()
        .map(|m| format!("{}={}", m.id, m.addr))
        .collect();
    let peers = peers.join(",");
    let life = Some(Duration::from_secs(30));
    for m in &mut masters {
        let name = format!("m{}", m.id);
        let dns = [format!("{name}.example")];
        let who = Identity::Master(name.clone());
        let issued = pki::issue_for(&ca, &who, &dns, &[], life).unwrap();
        write_pem(dir.path(), &name, &issued.cert_pem, &issued.key_pem);
        let mut cmd = master_cmd(dir.path(), m, &peers);
        if m.id == 1 {
            cmd.args(["--ca-key", "ca.key", "--leaf-lifetime", "1h"]);
        }
        m.child = Some(cmd.spawn().unwrap());
    }
    let all: Vec<&Master> = masters.iter().collect();
    agreed_leader(dir.path(), &all, None);
    let pem = |m: &Master| dir.path().join(format!("m{}.pem", m.id));
    let logs = || {
        (1..=3)
            .map(|i| std::fs::read_to_string(dir.path().join(format!("m{i}.log"))).unwrap())
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    let first: Vec<i64> = masters.iter().map(|m| not_after(&pem(m))).collect();
    // Renewed for the hour master 1 signs for, not another 30 s.
    assert!(
        eventually(Duration::from_secs(45), || masters
            .iter()
            .zip(&first)
            .all(|(m, f)| not_after(&pem(m)) > f + 600)),
        "not every master renewed its certificate: {}",
        logs()
    );
    for m in &masters {
        let renewed = std::fs::read_to_string(pem(m)).unwrap();
        let want = Identity::Master(format!("m{}", m.id));
        assert_eq!(pki::identity_of_pem(&renewed), Some(want));
    }
    for i in [2, 3] {
        let log = std::fs::read_to_string(dir.path().join(format!("m{i}.log"))).unwrap();
        assert!(
            log.contains("master 1 renewed this master's certificate"),
            "{log}"
        );
    }

    // Past the first certificates' end: every member answers, and a write reaches them all.
    let end = first.iter().max().unwrap();
    std::thread::sleep(Duration::from_secs((end + 2 - epoch_now()).max(0) as u64));
    let leader = agreed_leader(dir.path(), &all, None);
    let on_leader = client_config(dir.path(), &masters[(leader - 1) as usize].addr);
    let out = wasmos_with(
        &on_leader,
        &["role", "set", "after-renewal", "--weight", "2"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let has_write = |m: &Master| {
        let on = client_config(dir.path(), &m.addr);
        eventually(Duration::from_secs(20), || {
            let out = wasmos_with(&on, &["--stale", "role", "list", "-o", "json"]);
            text(&out.stdout).contains("after-renewal")
        })
    };
    for m in &masters {
        assert!(has_write(m), "master {} lacks the write: {}", m.id, logs());
    }
    // Connections between masters made with the first certificates may still be up: a
    // restarted follower dials and is dialed anew, with the renewed certificates only.
    let follower = masters.iter_mut().find(|m| m.id != leader).unwrap();
    if let Some(mut old) = follower.child.take() {
        old.kill().unwrap();
        old.wait().unwrap();
    }
    let mut cmd = master_cmd(dir.path(), follower, &peers);
    if follower.id == 1 {
        cmd.args(["--ca-key", "ca.key", "--leaf-lifetime", "1h"]);
    }
    follower.child = Some(cmd.spawn().unwrap());
    let out = wasmos_with(
        &on_leader,
        &["role", "set", "after-restart", "--weight", "2"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let on = client_config(dir.path(), &follower.addr);
    assert!(
        eventually(Duration::from_secs(30), || {
            let out = wasmos_with(&on, &["--stale", "role", "list", "-o", "json"]);
            text(&out.stdout).contains("after-restart")
        }),
        "the restarted master did not catch up: {}",
        logs()
    );
}
