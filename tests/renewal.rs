//! Short-lived certificates, renewal and CA rollover against real processes: an agent renews
//! its own certificate from the masters and keeps running tasks through the reload; an
//! operator renews theirs with `wasmos cert renew`; the CA is rolled over (old and new trusted
//! side by side, then the old dropped) while agents run, without restarting anything.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use wasmos_tests::{DevCluster, Logged, eventually, ok, text, wasmos_bin, wasmos_with};

fn pki(c: &DevCluster) -> PathBuf {
    c.dir.path().join("pki")
}

fn not_after(pem_path: &Path) -> i64 {
    let pem = std::fs::read_to_string(pem_path).unwrap();
    let der = wasmos_net::pki::der_of_pem(&pem).unwrap();
    wasmos_net::pki::validity_of_der(&der).unwrap().1
}

fn task_state(c: &DevCluster, id: &str) -> String {
    c.json(&["task", "show", id, "-o", "json"]).unwrap()["status"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A task that idles (10 minutes) on the dev cluster's agent, once it runs: its id.
fn idle_task(c: &DevCluster) -> String {
    let spin = wasmos_tests::sample("spin");
    let flags = ["run", "--detach", "--timeout", "10m"];
    let mut args: Vec<&str> = flags.to_vec();
    args.extend([spin.to_str().unwrap(), "--", "600"]);
    let id = ok(&c.cli(&args).unwrap()).trim().to_string();
    assert!(eventually(Duration::from_secs(20), || task_state(c, &id) == "Running"));
    id
}

/// An agent whose certificate lives 30 s renews it at 20 s, from the masters, with a key it
/// made; a task started before runs on through the reload, and tasks start after the old
/// certificate expired. The master renews its own (30 s too) with its CA key, and the
/// operator theirs with `wasmos cert renew`.
#[test]
fn a_renewed_agent_keeps_running_tasks() {
    let c = DevCluster::start_with(1, &["--leaf-lifetime", "30s"]).unwrap();
    let agent_pem = pki(&c).join("agent-1.pem");
    let master_pem = pki(&c).join("master.pem");
    let first = not_after(&agent_pem);
    let master_first = not_after(&master_pem);
    let key_before = std::fs::read(pki(&c).join("agent-1.key")).unwrap();
    let id = idle_task(&c);

    // Renewed two thirds into its life: a later expiry, a new key.
    assert!(
        eventually(Duration::from_secs(40), || not_after(&agent_pem) > first),
        "the agent did not renew: {}",
        c.log_text()
    );
    assert_ne!(
        std::fs::read(pki(&c).join("agent-1.key")).unwrap(),
        key_before
    );
    assert!(c.log_text().contains("renewed this agent's certificate"));
    // The master's, with the same identity and the names it serves under.
    assert!(
        eventually(Duration::from_secs(20), || not_after(&master_pem)
            > master_first),
        "the master did not renew its certificate: {}",
        c.log_text()
    );
    let renewed = std::fs::read_to_string(&master_pem).unwrap();
    assert_eq!(
        wasmos_net::pki::identity_of_pem(&renewed),
        Some(wasmos_net::Identity::Master("m1".into()))
    );
    assert!(c.log_text().contains("renewed this master's certificate"));

    // The operator's certificate lives 30 s too: renewed here, it outlives the first one.
    let op_pem = pki(&c).join("operator.pem");
    let op_first = not_after(&op_pem);
    let said = ok(&c.cli(&["cert", "renew"]).unwrap());
    assert!(said.contains("renewed"), "{said}");
    assert!(not_after(&op_pem) > op_first);

    // Past the first certificates' end: the task that ran through the reload is still
    // running, and new ones run.
    let wait = (first.max(master_first) + 2 - now()).max(0) as u64;
    std::thread::sleep(Duration::from_secs(wait));
    assert_eq!(task_state(&c, &id), "Running", "{}", c.log_text());
    let hello = wasmos_tests::sample("hello");
    let out = ok(&c
        .cli(&["run", hello.to_str().unwrap(), "--", "after"])
        .unwrap());
    assert!(out.contains("args: after"), "{out}");
    ok(&c.cli(&["task", "kill", &id]).unwrap());
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `wasmos cert issue --pki DIR --agent NAME` (DIR's CA, created if missing): (cert, key).
fn issue(dir: &Path, flag: &str, name: &str) -> (PathBuf, PathBuf) {
    let out = Command::new(wasmos_bin())
        .args(["cert", "issue", "--pki"])
        .arg(dir)
        .args([flag, name])
        .output()
        .unwrap();
    let out = ok(&out);
    let mut lines = out.lines();
    let cert = PathBuf::from(lines.next().unwrap());
    let key = PathBuf::from(lines.next().unwrap());
    (cert, key)
}

fn agent_process(c: &DevCluster, ca: &Path, cert: &Path, key: &Path, work: &Path) -> Logged {
    let mut agent = Command::new(wasmos_bin());
    agent
        .args(["agent", "--master", &c.master_addr().to_string(), "--ca"])
        .arg(ca)
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .arg("--work-dir")
        .arg(work)
        .args(["--cpu", "1", "--mem", "512MiB", "--attr", "ca=new"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    Logged::spawn(agent)
}

fn active_agents(c: &DevCluster) -> Vec<String> {
    c.json(&["agent", "list", "-o", "json"])
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["state"] == "Active")
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect()
}

/// The CA rollover of docs/security.md, with live agents and nothing restarted: trust both
/// CAs, move the master and the renewals to the new one, bring an agent of the new CA,
/// renew, then drop the old CA, whose certificates are refused from then on and whose open
/// sessions are ended.
#[test]
fn a_ca_rollover_with_live_agents() {
    let c = DevCluster::start(1).unwrap();
    let pki = pki(&c);
    let new = tempfile::tempdir().unwrap();
    let id = idle_task(&c);
    // A tenant of the old CA, for the end.
    let old_tenant = c.user_config("wasmos://tenant/acme/old");

    // 1. A new CA beside the old: every node's CA file holds both.
    let (new_agent_cert, new_agent_key) = issue(new.path(), "--agent", "agent-new");
    let old_ca = std::fs::read_to_string(pki.join("ca.pem")).unwrap();
    let new_ca = std::fs::read_to_string(new.path().join("ca.pem")).unwrap();
    std::fs::write(pki.join("ca.pem"), format!("{old_ca}{new_ca}")).unwrap();
    // The master follows its files (every 2 s); an agent of the new CA is then let in.
    let work = tempfile::tempdir().unwrap();
    let mut new_agent = agent_process(
        &c,
        &pki.join("ca.pem"),
        &new_agent_cert,
        &new_agent_key,
        work.path(),
    );
    assert!(
        eventually(Duration::from_secs(30), || active_agents(&c)
            .contains(&"agent-new".to_string())),
        "{}\n{}",
        new_agent.log(),
        c.log_text()
    );

    // 2. The master serves a certificate of the new CA and renews with the new CA's key.
    let (m_cert, m_key) = issue(new.path(), "--master", "m1");
    std::fs::copy(pki.join("master.pem"), pki.join("master.pem.old")).unwrap();
    std::fs::copy(&m_key, pki.join("master.key.new")).unwrap();
    std::fs::copy(&m_cert, pki.join("master.pem.new")).unwrap();
    std::fs::rename(pki.join("master.key.new"), pki.join("master.key")).unwrap();
    std::fs::rename(pki.join("master.pem.new"), pki.join("master.pem")).unwrap();
    std::fs::copy(new.path().join("ca.key"), pki.join("ca.key")).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // The operator (old CA, trusting both) still gets in, and renews under the new CA.
    assert_eq!(active_agents(&c).len(), 2);
    let said = ok(&c.cli(&["cert", "renew"]).unwrap());
    assert!(said.contains("renewed"), "{said}");
    let names = |p: &Path| {
        let pem = std::fs::read_to_string(p).unwrap();
        wasmos_net::pki::names_of_pem(&pem).unwrap()
    };
    let (new_ca_name, _) = names(&new.path().join("ca.pem"));
    let (_, old_ca_name) = names(&pki.join("master.pem.old"));
    assert_ne!(new_ca_name, old_ca_name);
    assert_eq!(names(&pki.join("operator.pem")).1, new_ca_name);

    // The agents are asked to renew now (operators only), and so move to the new CA. The
    // dev agent's session to the master stays the one made with its old certificate.
    let asked = wasmos_with(&old_tenant, &["cert", "renew", "--agents"]);
    wasmos_tests::assert_clean_error(&asked, "only operators");
    let said = ok(&c.cli(&["cert", "renew", "--agents"]).unwrap());
    assert!(said.contains("asked 2 agent(s)"), "{said}");
    assert!(
        eventually(Duration::from_secs(15), || names(&pki.join("agent-1.pem"))
            .1
            == new_ca_name),
        "the dev agent did not renew under the new CA: {}",
        c.log_text()
    );
    // The old-CA tenant follows a task of its own's output.
    let spin = wasmos_tests::sample("spin");
    let flags = [
        "run",
        "--detach",
        "--timeout",
        "10m",
        spin.to_str().unwrap(),
    ];
    let detached = wasmos_with(&old_tenant, &[&flags[..], &["--", "600"]].concat());
    let old_id = ok(&detached).trim().to_string();
    let mut follow = wasmos_tests::follow_logs(&old_tenant, &old_id, "waiting");
    std::thread::sleep(Duration::from_secs(3));

    // 3. The old CA is dropped everywhere. Its leaves are refused, and the sessions they
    // hold are ended: the old tenant's `logs -f` and the agent's session made with its old
    // certificate (it registers again, with its new one). The renewed operator, the new
    // agent and the running task carry on.
    let registrations = || c.log_text().matches("agent registered").count();
    let registered = registrations();
    std::fs::write(pki.join("ca.pem"), &new_ca).unwrap();
    let ended = wasmos_tests::wait_exit(&mut follow, Duration::from_secs(10));
    assert!(ended.is_some_and(|s| !s.success()), "{ended:?}");
    let mut said = String::new();
    std::io::Read::read_to_string(&mut follow.stderr.take().unwrap(), &mut said).unwrap();
    assert!(said.contains("no longer trusted"), "{said}");
    assert!(
        eventually(Duration::from_secs(10), || c.log_text().contains(
            "closed connections whose certificates the trusted CAs no longer vouch for"
        )),
        "{}",
        c.log_text()
    );
    let refused = wasmos_with(&old_tenant, &["task", "list"]);
    assert!(!refused.status.success(), "an old-CA certificate got in");
    assert!(
        text(&refused.stderr).contains("not signed by this cluster's CA")
            || text(&refused.stderr).contains("certificate"),
        "{}",
        text(&refused.stderr)
    );
    assert!(active_agents(&c).contains(&"agent-new".to_string()));
    assert!(
        eventually(Duration::from_secs(20), || registrations() > registered
            && active_agents(&c).len() == 2),
        "the dev agent did not come back with its new certificate: {}",
        c.log_text()
    );
    assert_eq!(task_state(&c, &id), "Running");
    let hello = wasmos_tests::sample("hello");
    let out = ok(&c
        .cli(&[
            "run",
            "--constraint",
            "ca=new",
            hello.to_str().unwrap(),
            "--",
            "rolled",
        ])
        .unwrap());
    assert!(out.contains("args: rolled"), "{out}");
    ok(&c.cli(&["task", "kill", &id]).unwrap());
    new_agent.child().kill().unwrap();
}
