//! Network partitions between three `wasmos master` processes, each in a Linux network
//! namespace of its own joined by a bridge (in a namespace of its own too, as is the client):
//! taking a master's bridge port down cuts it off. A cut-off follower does not stop the
//! majority and catches up once healed. A cut-off leader cannot commit: it refuses writes with
//! a "no quorum" error while the majority elects a leader in a later term and accepts them;
//! once healed the old leader steps down, its unacknowledged write is gone and every master
//! converges on the same state. Needs root (CAP_NET_ADMIN) and `ip`; skipped, saying so,
//! where network namespaces cannot be created.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use wasmos_net::{Identity, pki};
use wasmos_tests::{text, wasmos_bin};

/// The namespaces of one test run, deleted (with everything in them) when dropped.
struct Net {
    tag: String,
    children: Vec<Child>,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Net {
    fn ns(&self, who: &str) -> String {
        format!("{}{who}", self.tag)
    }

    /// Bridge namespace `b`, client namespace `c` (10.77.0.100) and masters `1`..`3`
    /// (10.77.0.1-3), each linked to the bridge by a veth pair.
    fn create() -> Option<Net> {
        let tag = format!("wp{}", std::process::id() % 100_000);
        let net = Net {
            tag,
            children: Vec::new(),
        };
        if !ip(&["netns", "add", &net.ns("b")]) {
            return None;
        }
        let b = net.ns("b");
        assert!(ip(&["-n", &b, "link", "add", "br0", "type", "bridge"]));
        assert!(ip(&["-n", &b, "link", "set", "br0", "up"]));
        for (who, host) in [("1", 1), ("2", 2), ("3", 3), ("c", 100)] {
            let ns = net.ns(who);
            assert!(ip(&["netns", "add", &ns]));
            let port = format!("p{who}");
            assert!(ip(&[
                "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
                &b,
            ]));
            assert!(ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.77.0.{host}/24"),
                "dev",
                "eth0"
            ]));
            assert!(ip(&["-n", &ns, "link", "set", "eth0", "up"]));
            assert!(ip(&["-n", &ns, "link", "set", "lo", "up"]));
            assert!(ip(&["-n", &b, "link", "set", &port, "master", "br0"]));
            assert!(ip(&["-n", &b, "link", "set", &port, "up"]));
        }
        Some(net)
    }

    /// Cuts master `id` off the bridge (`up: false`) or reconnects it.
    fn link(&self, id: u64, up: bool) {
        let state = if up { "up" } else { "down" };
        assert!(ip(&[
            "-n",
            &self.ns("b"),
            "link",
            "set",
            &format!("p{id}"),
            state
        ]));
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for who in ["1", "2", "3", "c", "b"] {
            ip(&["netns", "del", &self.ns(who)]);
        }
    }
}

fn addr(id: u64) -> String {
    format!("10.77.0.{id}:7433")
}

/// A client config (operator) naming the given masters.
fn config(dir: &Path, ids: &[u64]) -> PathBuf {
    let names: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    let path = dir.join(format!("client-{}.toml", names.join("-")));
    let quoted: Vec<String> = ids.iter().map(|i| format!("\"{}\"", addr(*i))).collect();
    std::fs::write(
        &path,
        format!(
            "master = \"{}\"\nmasters = [{}]\nca = \"ca.pem\"\ncert = \"operator.pem\"\nkey = \"operator.key\"\n",
            addr(ids[0]),
            quoted.join(", ")
        ),
    )
    .unwrap();
    path
}

/// `wasmos ARGS` with `cfg`, run inside namespace `ns`.
fn cli(ns: &str, cfg: &Path, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(wasmos_bin())
        .arg("--config")
        .arg(cfg)
        .args(args)
        .env_remove("WASMOS_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// The status master `id` gives of itself (asked from the client namespace, stale).
fn status_of(net: &Net, dir: &Path, id: u64) -> Option<serde_json::Value> {
    let out = cli(
        &net.ns(&id.to_string()),
        &config(dir, &[id]),
        &["cluster", "status", "-o", "json"],
    );
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

/// Waits until every master in `ids` names the same leader, one of `ids`.
fn agreed_leader(net: &Net, dir: &Path, ids: &[u64]) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st: Vec<Option<serde_json::Value>> =
            ids.iter().map(|i| status_of(net, dir, *i)).collect();
        let leaders: Vec<Option<u64>> = st
            .iter()
            .map(|s| s.as_ref().and_then(|s| s["leader"].as_u64()))
            .collect();
        if let Some(Some(l)) = leaders.first()
            && ids.contains(l)
            && leaders.iter().all(|x| x == &Some(*l))
        {
            let term = st[0].as_ref().unwrap()["term"].as_u64().unwrap();
            return (*l, term);
        }
        assert!(Instant::now() < deadline, "no agreed leader: {leaders:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The role names master `id` holds in its own (stale) state.
fn roles_on(net: &Net, dir: &Path, id: u64) -> Vec<String> {
    let out = cli(
        &net.ns(&id.to_string()),
        &config(dir, &[id]),
        &["--stale", "role", "list", "-o", "json"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let roles: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    roles
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["role"].as_str().unwrap().to_string())
        .collect()
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn partitions_never_give_two_leaders_and_heal() {
    let Some(mut net) = Net::create() else {
        eprintln!("SKIPPED: cannot create network namespaces here (needs root and `ip`)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = pki::new_ca("partition-test").unwrap();
    std::fs::write(d.join("ca.pem"), &ca.cert_pem).unwrap();
    let op = pki::issue(&ca, &Identity::Operator("admin".into()), &[], &[]).unwrap();
    std::fs::write(d.join("operator.pem"), &op.cert_pem).unwrap();
    std::fs::write(d.join("operator.key"), &op.key_pem).unwrap();
    let peers = "1=10.77.0.1:7433,2=10.77.0.2:7433,3=10.77.0.3:7433";
    for id in 1..=3u64 {
        let name = format!("m{id}");
        let issued = pki::issue(&ca, &Identity::Master(name.clone()), &[], &[]).unwrap();
        std::fs::write(d.join(format!("{name}.pem")), &issued.cert_pem).unwrap();
        std::fs::write(d.join(format!("{name}.key")), &issued.key_pem).unwrap();
        let log = std::fs::File::create(d.join(format!("{name}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &net.ns(&id.to_string())])
            .arg(wasmos_bin())
            .current_dir(d)
            .args(["master", "--id", &id.to_string(), "--listen", &addr(id)])
            .args(["--peers", peers, "--data-dir", &name])
            .args(["--ca", "ca.pem", "--cert", &format!("{name}.pem")])
            .args(["--key", &format!("{name}.key")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        net.children.push(child);
    }
    let client = net.ns("c");
    let all = config(d, &[1, 2, 3]);
    let (leader, _) = agreed_leader(&net, d, &[1, 2, 3]);
    let write = |cfg: &Path, role: &str| cli(&client, cfg, &["role", "set", role, "--weight", "2"]);
    let out = write(&all, "team-a");
    assert!(out.status.success(), "{}", text(&out.stderr));

    // A follower cut off: the majority goes on; healed, it catches up.
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    net.link(follower, false);
    let out = write(&all, "team-b");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!roles_on(&net, d, follower).contains(&"team-b".to_string()));
    net.link(follower, true);
    wait_for("the healed follower to catch up", || {
        roles_on(&net, d, follower).contains(&"team-b".to_string())
    });

    // The leader cut off: it cannot commit, and says so; the other two elect a leader in a
    // later term, which accepts writes.
    let (old, old_term) = agreed_leader(&net, d, &[1, 2, 3]);
    net.link(old, false);
    let rest: Vec<u64> = (1..=3).filter(|i| *i != old).collect();
    let (new, new_term) = agreed_leader(&net, d, &rest);
    assert_ne!(new, old);
    assert!(
        new_term > old_term,
        "new leader in term {new_term}, old in {old_term}"
    );
    let out = write(&config(d, &rest), "team-c");
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Asked from its own namespace, the cut-off master refuses the write.
    let out = cli(
        &net.ns(&old.to_string()),
        &config(d, &[old]),
        &["role", "set", "team-x", "--weight", "2"],
    );
    assert!(!out.status.success(), "the cut-off leader accepted a write");
    let err = text(&out.stderr);
    eprintln!("the cut-off leader's answer: {err}");
    assert!(
        err.contains("no quorum") || err.contains("no leader") || err.contains("not the leader"),
        "{err}"
    );
    // It never led in a term later than the one it had; the new leader's term is later.
    let st = status_of(&net, d, old).unwrap();
    assert!(
        st["term"].as_u64().unwrap() < new_term || st["leader"] != old,
        "{st}"
    );

    // Healed: one leader, the write it could not commit is gone, every master has the same
    // roles.
    net.link(old, true);
    let (after, _) = agreed_leader(&net, d, &[1, 2, 3]);
    assert!(rest.contains(&after) || after == old);
    wait_for("every master to converge", || {
        let r: Vec<Vec<String>> = (1..=3).map(|i| roles_on(&net, d, i)).collect();
        r.iter().all(|x| x == &r[0]) && r[0].contains(&"team-c".to_string())
    });
    let roles = roles_on(&net, d, old);
    assert!(!roles.contains(&"team-x".to_string()), "{roles:?}");
    assert_eq!(roles, vec!["team-a", "team-b", "team-c"]);
}
