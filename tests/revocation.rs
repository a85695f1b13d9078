//! Revocation with real processes: an operator revokes a tenant's certificate (by serial) or
//! identity; the master refuses it at the next handshake, cuts its open `logs -f` at once,
//! and still refuses it after a hard restart. Tenants may not revoke.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use wasmos_tests::{DevCluster, assert_clean_error, sample, text, wait_exit, wasmos_cmd};

/// One POST to the HTTPS/JSON API with the certificate of client config `config`: the HTTP
/// status, or the TLS error that refused it.
fn https_probe(config: &std::path::Path) -> String {
    let probe = format!(
        "{}{}",
        wasmos_tests::PYTHON_HTTPS_CLIENT,
        r#"
try:
    c = connect()
    c.request("POST", "/api/v1/scheduler", "{}", {})
    print("status", c.getresponse().status)
except (ssl.SSLError, ConnectionError) as e:
    print("refused", e)
"#
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &probe])
        .arg(config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn a_revoked_tenant_is_refused_and_cut_off() {
    let mut c = DevCluster::start(1).unwrap();
    let bob = c.user_config("wasmos://tenant/acme/bob");
    let carol = c.user_config("wasmos://tenant/acme/carol");
    let as_user =
        |config: &std::path::Path, args: &[&str]| wasmos_cmd(config, args).output().unwrap();

    // A tenant may not revoke, not even itself.
    let serial_of = |who: &str| {
        let out = c
            .cli(&[
                "cert",
                "serial",
                c.dir
                    .path()
                    .join("users")
                    .join(who)
                    .join("me.pem")
                    .to_str()
                    .unwrap(),
            ])
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let bob_serial = serial_of("tenant-acme-bob");
    let tried = as_user(&bob, &["cert", "revoke", "--serial", &bob_serial]);
    assert_clean_error(&tried, "only operators");
    let listed = as_user(&bob, &["cert", "list-revoked"]);
    assert_clean_error(&listed, "only operators");

    // Bob follows his task's output; the revocation cuts it within a second.
    let detached = as_user(
        &bob,
        &[
            "run",
            "--detach",
            sample("spin").to_str().unwrap(),
            "--",
            "60",
        ],
    );
    assert!(detached.status.success(), "{}", text(&detached.stderr));
    let id = text(&detached.stdout).trim().to_string();
    // Connected and following: the task's first line ("waiting 60s") came through.
    let mut follow = wasmos_tests::follow_logs(&bob, &id, "waiting");
    let out = c.cli(&["cert", "revoke", "--serial", &bob_serial]).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let revoked_at = Instant::now();
    let ended = wait_exit(&mut follow, Duration::from_secs(10));
    let cut_after = revoked_at.elapsed();
    assert!(ended.is_some_and(|s| !s.success()), "{ended:?}");
    // Well under a second here; the margin is for a loaded machine.
    assert!(
        cut_after < Duration::from_secs(3),
        "cut after {cut_after:?}"
    );
    let mut said = String::new();
    std::io::Read::read_to_string(&mut follow.stderr.take().unwrap(), &mut said).unwrap();
    assert!(said.contains("revoked"), "{said}");

    // Refused at the handshake from now on, on QUIC and HTTPS, naming why; carol is not
    // affected.
    let refused = as_user(&bob, &["task", "list"]);
    assert_clean_error(&refused, "revoked");
    assert!(as_user(&carol, &["task", "list"]).status.success());
    let https = https_probe(&bob);
    assert!(
        https.starts_with("refused") && https.contains("REVOKED"),
        "{https}"
    );
    assert!(
        https_probe(&carol).starts_with("status 400"),
        "{}",
        https_probe(&carol)
    );

    // Identities too, and the list says who did what.
    let out = c
        .cli(&["cert", "revoke", "--identity", "wasmos://tenant/acme/carol"])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_clean_error(&as_user(&carol, &["task", "list"]), "revoked");
    let list = c.json(&["cert", "list-revoked", "-o", "json"]).unwrap();
    let entries: Vec<(String, String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_string(),
                r["value"].as_str().unwrap().to_string(),
                r["by"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        [
            (
                "serial".into(),
                bob_serial.clone(),
                "wasmos://operator/admin".into()
            ),
            (
                "identity".into(),
                "wasmos://tenant/acme/carol".into(),
                "wasmos://operator/admin".into()
            ),
        ]
    );
    // Masters leave the group rather than being revoked, and an operator cannot lock
    // themselves out.
    assert_clean_error(
        &c.cli(&["cert", "revoke", "--identity", "wasmos://master/m1"])
            .unwrap(),
        "cluster leave",
    );
    assert_clean_error(
        &c.cli(&["cert", "revoke", "--identity", "wasmos://operator/admin"])
            .unwrap(),
        "themselves",
    );
    // Bad input is named, and nothing is recorded.
    assert_clean_error(
        &c.cli(&["cert", "revoke", "--serial", "xyz"]).unwrap(),
        "xyz",
    );
    assert_clean_error(
        &c.cli(&["cert", "revoke", "--identity", "tenant/acme/x"])
            .unwrap(),
        "tenant/acme/x",
    );

    // A hard restart keeps the revocations and refuses at once.
    c.kill_hard().unwrap();
    c.spawn().unwrap();
    // The restarted master listens on a new port: bob's config follows it, same certificate.
    let operator = std::fs::read_to_string(c.config()).unwrap();
    let master = operator.lines().find(|l| l.starts_with("master")).unwrap();
    let mine = std::fs::read_to_string(&bob).unwrap();
    let mine: Vec<&str> = mine
        .lines()
        .map(|l| if l.starts_with("master") { master } else { l })
        .collect();
    std::fs::write(&bob, mine.join("\n")).unwrap();
    assert_clean_error(&as_user(&bob, &["task", "list"]), "revoked");
    assert_eq!(
        c.json(&["cert", "list-revoked", "-o", "json"]).unwrap(),
        list
    );
}

/// Asks the agent `holder` at `addr`, as `who`, for a blob it does not keep: the connection when
/// it is served at all (the answer is `NotFound`), or why not.
async fn fetch_from_agent(
    who: wasmos_net::Credentials,
    addr: std::net::SocketAddr,
    holder: String,
) -> Result<(wasmos_net::Endpoint, wasmos_net::Connection), String> {
    use wasmos_proto::{AgentPeerRequest, AgentPeerResponse, BundleHash, ErrorKind, alpn};
    let unknown = AgentPeerRequest::Fetch {
        hash: BundleHash::parse(&"ab".repeat(32)).unwrap(),
    };
    let ep = wasmos_net::agent_peer_client(&who, alpn::AGENT_PEER, addr).unwrap();
    let conn = wasmos_net::connect_agent(&ep, addr, &holder)
        .await
        .map_err(|e| e.to_string())?;
    match wasmos_tests::peer_ask(&conn, &unknown).await {
        Ok((
            AgentPeerResponse::Error {
                kind: ErrorKind::NotFound,
                ..
            },
            _,
        )) => Ok((ep, conn)),
        other => Err(format!("{other:?}")),
    }
}

/// The one agent of a dev cluster, and where it serves other agents.
fn serving_agent(c: &DevCluster) -> (String, std::net::SocketAddr) {
    let agents = c.json(&["agent", "list", "-o", "json"]).unwrap();
    let a = &agents.as_array().unwrap()[0];
    (
        a["id"].as_str().unwrap().to_string(),
        a["peer_addr"].as_str().unwrap().parse().unwrap(),
    )
}

fn revoke(c: &DevCluster, how: &str, what: &str) {
    let out = c.cli(&["cert", "revoke", how, what]).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

fn assert_revoked(refused: Result<impl std::fmt::Debug, String>) {
    let why = refused.unwrap_err();
    assert!(why.to_lowercase().contains("revoked"), "{why}");
}

/// Agents follow the masters' list: another agent's certificate, once revoked, is refused on
/// the agent peer channel, its open connection closed, and still refused after the agents
/// restart (they get the whole list when they register).
#[test]
fn agents_refuse_revoked_agents_on_their_peer_channel() {
    let mut c = DevCluster::start(1).unwrap();
    let serving = serving_agent;
    let (holder, addr) = serving(&c);
    let intruder = c.issue("wasmos://agent/intruder");
    let by_serial = c.issue("wasmos://agent/lost-laptop");
    let bystander = c.credentials_for("wasmos://agent/bystander");
    let ca = std::fs::read_to_string(c.dir.path().join("pki").join("ca.pem")).unwrap();
    let creds = |i: &wasmos_net::pki::Issued| {
        wasmos_net::Credentials::from_pem(&ca, &i.cert_pem, &i.key_pem).unwrap()
    };
    let (intruder, by_serial) = (creds(&intruder), (creds(&by_serial), by_serial));
    let ask = |who: &wasmos_net::Credentials, addr, holder: &str| {
        fetch_from_agent(who.clone(), addr, holder.to_string())
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let held = runtime.block_on(async {
        ask(&bystander, addr, &holder).await.unwrap();
        [
            ask(&intruder, addr, &holder).await.unwrap(),
            ask(&by_serial.0, addr, &holder).await.unwrap(),
        ]
    });

    let serial = wasmos_net::pki::serial_of_pem(&by_serial.1.cert_pem).unwrap();
    revoke(&c, "--identity", "wasmos://agent/intruder");
    revoke(&c, "--serial", &serial);
    runtime.block_on(async {
        // The open connections are closed by the serving agent, saying why.
        for (_, conn) in &held {
            let closed = tokio::time::timeout(Duration::from_secs(3), conn.closed()).await;
            let reason = closed.expect("the revoked agent's connection stays open");
            assert!(
                wasmos_net::describe(&reason).contains("revoked"),
                "{reason}"
            );
        }
        for who in [&intruder, &by_serial.0] {
            assert_revoked(ask(who, addr, &holder).await);
        }
        ask(&bystander, addr, &holder).await.unwrap();
    });

    // A restarted agent has the list again before it serves anyone.
    c.kill_hard().unwrap();
    c.spawn().unwrap();
    // The state may show the agent's last address until it registers again.
    let before = addr;
    let mut now = serving(&c);
    assert!(wasmos_tests::eventually(Duration::from_secs(20), || {
        now = serving(&c);
        now.1 != before
    }));
    let (holder, addr) = now;
    runtime.block_on(async {
        assert_revoked(ask(&intruder, addr, &holder).await);
        ask(&bystander, addr, &holder).await.unwrap();
    });
}

/// A list longer than one answer holds comes a page at a time, whole and in order.
#[test]
fn a_long_revocation_list_is_listed_whole() {
    use wasmos_client::{Client, ClientConfig};
    use wasmos_proto::{ClientRequest, ClientResponse, MAX_REVOKED_PAGE};
    let c = DevCluster::start(1).unwrap();
    let serials: Vec<String> = (0..MAX_REVOKED_PAGE + 700)
        .map(|i| format!("a{i:05x}"))
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let cfg = ClientConfig::load(Some(&c.config())).unwrap();
        let client = std::sync::Arc::new(Client::connect(&cfg).await.unwrap());
        // Concurrently, so the master batches them into few raft entries.
        let mut all = tokio::task::JoinSet::new();
        for chunk in serials.chunks(500) {
            let (client, chunk) = (client.clone(), chunk.to_vec());
            all.spawn(async move {
                for serial in chunk {
                    let done = client
                        .request(ClientRequest::Revoke {
                            serial: Some(serial),
                            identity: None,
                        })
                        .await;
                    assert!(matches!(done, Ok(ClientResponse::Ok)), "{done:?}");
                }
            });
        }
        while let Some(done) = all.join_next().await {
            done.unwrap();
        }
        let first = client
            .request(ClientRequest::ListRevoked { after: None })
            .await
            .unwrap();
        assert!(matches!(first, ClientResponse::Revoked(p) if p.len() == MAX_REVOKED_PAGE));
    });
    let out = c
        .cli(&["cert", "revoke", "--identity", "wasmos://tenant/acme/last"])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list = c.json(&["cert", "list-revoked", "-o", "json"]).unwrap();
    let listed: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"].as_str().unwrap())
        .collect();
    let mut expected: Vec<&str> = serials.iter().map(String::as_str).collect();
    expected.push("wasmos://tenant/acme/last");
    assert_eq!(listed, expected);
}

/// A revocation outlives the leader that applied it: after `kill -9` of the leader, the new one
/// and its agents refuse the certificate, and a revocation applied by the new leader reaches
/// the agents that moved to it.
#[test]
fn revocations_hold_across_a_leader_failover() {
    let c = DevCluster::start_with(1, &["--masters", "3"]).unwrap();
    let bob = c.user_config("wasmos://tenant/acme/bob");
    let early = c.credentials_for("wasmos://agent/early");
    let late = c.credentials_for("wasmos://agent/late");
    let bystander = c.credentials_for("wasmos://agent/bystander");
    revoke(&c, "--identity", "wasmos://tenant/acme/bob");
    revoke(&c, "--identity", "wasmos://agent/early");
    assert_clean_error(
        &wasmos_cmd(&bob, &["task", "list"]).output().unwrap(),
        "revoked",
    );

    let (old, _) = c.leader(None).unwrap();
    let (before, _) = serving_agent(&c);
    wasmos_tests::kill_dash_nine(c.master_pid(old).unwrap());
    let (new, _) = c.leader(Some(old)).unwrap();
    assert_ne!(new, old);
    // Every master bob can reach refuses him, the new leader among them.
    assert_clean_error(
        &wasmos_cmd(&bob, &["task", "list"]).output().unwrap(),
        "revoked",
    );

    // The agent registers with the new leader, which revokes another agent; the agent refuses
    // both, the one revoked before the failover and the one after.
    let mut holder = None;
    assert!(wasmos_tests::eventually(Duration::from_secs(30), || {
        let agents = c.json(&["agent", "list", "-o", "json"]).unwrap();
        let a = &agents.as_array().unwrap()[0];
        let back = a["state"] == "Active";
        holder = a["peer_addr"]
            .as_str()
            .map(|p| (a["id"].as_str().unwrap().to_string(), p.parse().unwrap()));
        back
    }));
    let (agent, addr): (String, std::net::SocketAddr) = holder.unwrap();
    assert_eq!(agent, before);
    revoke(&c, "--identity", "wasmos://agent/late");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let ask =
            |who: &wasmos_net::Credentials| fetch_from_agent(who.clone(), addr, agent.clone());
        assert_revoked(ask(&early).await);
        // The addition reaches the agent once it is registered with the new leader (at once
        // if it already is; with the whole list when it registers, if not).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match ask(&late).await {
                Err(why) if why.to_lowercase().contains("revoked") => break,
                other => assert!(Instant::now() < deadline, "{other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        fetch_from_agent(bystander.clone(), addr, agent.clone())
            .await
            .unwrap();
    });
}
