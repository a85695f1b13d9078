//! Mutual TLS is enforced: a client whose certificate another CA signed is refused, and so is a
//! master that the client's CA did not sign; both sides say so. The client library reports a
//! refusal, a master's rejection and a lost master as different errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use wasmos_net::Identity;
use wasmos_net::pki;
use wasmos_tests::{DevCluster, assert_clean_error};

fn write_config(
    dir: &std::path::Path,
    master: &str,
    ca: &str,
    cert: &str,
    key: &str,
) -> std::path::PathBuf {
    std::fs::write(dir.join("ca.pem"), ca).unwrap();
    std::fs::write(dir.join("me.pem"), cert).unwrap();
    std::fs::write(dir.join("me.key"), key).unwrap();
    let path = dir.join("client.toml");
    std::fs::write(
        &path,
        format!("master = \"{master}\"\nca = \"ca.pem\"\ncert = \"me.pem\"\nkey = \"me.key\"\n"),
    )
    .unwrap();
    path
}

#[test]
fn certificates_from_another_ca_are_refused_on_both_sides() {
    let mut c = DevCluster::start(1).unwrap();
    let cfg = std::fs::read_to_string(c.config()).unwrap();
    let master = cfg
        .lines()
        .find_map(|l| l.strip_prefix("master = "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    let real_ca = std::fs::read_to_string(c.dir.path().join("pki/ca.pem")).unwrap();

    let rogue_ca = pki::new_ca("rogue").unwrap();
    let rogue = pki::issue(&rogue_ca, &Identity::Operator("admin".into()), &[], &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();

    // Our certificate is from the wrong CA: the master refuses it.
    let path = write_config(
        dir.path(),
        &master,
        &real_ca,
        &rogue.cert_pem,
        &rogue.key_pem,
    );
    // The refusal is final: no retrying at the next leader, the command says why at once
    // (it used to retry for 30 s).
    let started = Instant::now();
    let out = wasmos_tests::wasmos_with(&path, &["task", "list"]);
    assert_clean_error(&out, "certificate");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a refused client took {:?} to give up",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.log_text().contains("refused connection") {
        assert!(
            Instant::now() < deadline,
            "master did not log the refusal:\n{}",
            c.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A peer that keeps dialling with a refused certificate gets one log line per window,
    // not one per attempt.
    for _ in 0..10 {
        let out = wasmos_tests::wasmos_with(&path, &["agent", "list"]);
        assert!(!out.status.success());
    }
    std::thread::sleep(Duration::from_millis(500));
    let lines = c.log_text().matches("refused connection").count();
    assert!(
        lines <= 2,
        "{lines} refusal lines for 11 attempts:\n{}",
        c.log_text()
    );

    // We do not trust the master's CA: we refuse it.
    let path = write_config(
        dir.path(),
        &master,
        &rogue_ca.cert_pem,
        &rogue.cert_pem,
        &rogue.key_pem,
    );
    let out = wasmos_tests::wasmos_with(&path, &["agent", "list"]);
    assert_clean_error(&out, "certificate");

    // The cluster is unharmed.
    assert!(c.is_running());
    assert!(c.run(&[], "hello", &[]).unwrap().status.success());
}

/// `wasmos-client` against a real master: a refused certificate is `Refused` (final, not
/// retryable), a request the master turns down is `Rejected` with its kind, and a good one
/// answers; many concurrent requests share one client.
#[test]
fn the_client_library_tells_refusals_from_rejections() {
    use wasmos_client::{Client, ClientConfig, ClientError, ConnectOptions};
    use wasmos_proto::{ClientRequest, ClientResponse, ErrorKind, TaskId};

    let c = DevCluster::start(1).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let cfg = ClientConfig::load(Some(&c.config())).unwrap();
        let client = std::sync::Arc::new(Client::connect(&cfg).await.unwrap());
        assert_eq!(client.master(), c.master_addr());

        let unknown: TaskId = "t-999".parse().unwrap();
        let err = client
            .request(ClientRequest::GetTask { id: unknown })
            .await
            .unwrap_err();
        assert_eq!(err.rejection(), Some(ErrorKind::NotFound), "{err}");
        assert!(!err.retryable(), "{err}");
        assert!(err.to_string().contains("t-999"), "{err}");

        let asks = (0..50).map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.request(ClientRequest::ListAgents).await })
        });
        for ask in futures_join(asks).await {
            assert!(matches!(ask, Ok(ClientResponse::Agents(a)) if a.len() == 1));
        }

        let rogue_ca = pki::new_ca("rogue").unwrap();
        let rogue = pki::issue(&rogue_ca, &Identity::Operator("admin".into()), &[], &[]).unwrap();
        let real_ca = std::fs::read_to_string(c.dir.path().join("pki/ca.pem")).unwrap();
        let creds =
            wasmos_net::Credentials::from_pem(&real_ca, &rogue.cert_pem, &rogue.key_pem).unwrap();
        let refused = async {
            let client =
                Client::connect_to(&creds, &[c.master_addr()], ConnectOptions::default()).await?;
            client.request(ClientRequest::ListAgents).await
        };
        match refused.await {
            Err(e @ ClientError::Refused(_)) => {
                assert!(!e.retryable());
                assert!(e.to_string().contains("certificate"), "{e}");
            }
            other => panic!("a certificate from another CA got {other:?}"),
        }
    });
}

/// Awaits every spawned task, in order.
async fn futures_join<T>(tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// What an agent asks another for, spelled by hand: a hostile peer is not bound to send a
/// valid hash.
#[derive(serde::Serialize)]
enum RawPeerRequest {
    Fetch { hash: String },
}

#[test]
fn agents_serve_kept_outputs_to_agents_only_and_only_kept_files() {
    use sha2::Digest;
    use wasmos_proto::{AgentPeerRequest, AgentPeerResponse, BundleHash, ErrorKind, alpn};
    let c = DevCluster::start(2).unwrap();
    let job = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../sample-tasks/wordcount/job.toml"
    );
    let out = c.cli(&["job", "submit", job, "--wait"]).unwrap();
    assert!(out.status.success(), "{}", wasmos_tests::text(&out.stderr));
    let tasks = c.json(&["task", "list", "-o", "json"]).unwrap();
    let map = tasks
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["spec"]["args"][0] == "map" && t["status"]["state"] == "Finished")
        .unwrap();
    let output = &map["status"]["outputs"][0];
    let holder = output["held_by"].as_str().unwrap().to_string();
    assert_eq!(holder, map["agent"].as_str().unwrap());
    let hash = BundleHash::parse(output["blob"].as_str().unwrap()).unwrap();
    let agents = c.json(&["agent", "list", "-o", "json"]).unwrap();
    let addr: std::net::SocketAddr = agents
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == holder.as_str())
        .and_then(|a| a["peer_addr"].as_str())
        .unwrap()
        .parse()
        .unwrap();
    // Tenants are not told where agents serve.
    let tenant = c.user_config("wasmos://tenant/acme/alice");
    let seen = wasmos_tests::wasmos_with(&tenant, &["agent", "list", "-o", "json"]);
    let seen: serde_json::Value = serde_json::from_slice(&seen.stdout).unwrap();
    assert!(
        seen.as_array()
            .unwrap()
            .iter()
            .all(|a| a["peer_addr"].is_null()),
        "{seen}"
    );
    // The master will not hand out what it does not have, and says where it is.
    let got = c.cli(&["blob", "get", hash.as_str()]).unwrap();
    assert_clean_error(&got, "kept on agent");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // Another agent gets the bytes, and they are what the state says.
        let other = c.credentials_for("wasmos://agent/some-other-agent");
        let ep = wasmos_net::agent_peer_client(&other, alpn::AGENT_PEER, addr).unwrap();
        let conn = wasmos_net::connect_agent(&ep, addr, &holder).await.unwrap();
        let fetch = AgentPeerRequest::Fetch { hash: hash.clone() };
        let (head, bytes) = wasmos_tests::peer_ask(&conn, &fetch).await.unwrap();
        assert_eq!(
            head,
            AgentPeerResponse::Blob {
                size: bytes.len() as u64
            }
        );
        assert_eq!(bytes.len() as u64, output["size"].as_u64().unwrap());
        assert_eq!(hex_of(&sha2::Sha256::digest(&bytes)), hash.as_str());
        // A hash it does not keep, and a "hash" that is a path, get an error and no bytes.
        let unknown = AgentPeerRequest::Fetch {
            hash: BundleHash::parse(&"ab".repeat(32)).unwrap(),
        };
        let (head, bytes) = wasmos_tests::peer_ask(&conn, &unknown).await.unwrap();
        assert!(
            matches!(
                &head,
                AgentPeerResponse::Error {
                    kind: ErrorKind::NotFound,
                    ..
                }
            ),
            "{head:?}"
        );
        assert!(bytes.is_empty());
        for path in ["../../pki/ca.key", "../artifacts", "/etc/passwd", ""] {
            let raw = RawPeerRequest::Fetch { hash: path.into() };
            match wasmos_tests::peer_ask(&conn, &raw).await {
                Ok((AgentPeerResponse::Error { .. }, bytes)) => assert!(bytes.is_empty()),
                Ok(other) => panic!("{path}: {other:?}"),
                Err(_) => {}
            }
        }
        // Dialing for one agent and reaching another is refused by the dialer.
        let wrong = wasmos_net::connect_agent(&ep, addr, "agent-that-is-not-there").await;
        let err = wrong.err().unwrap().to_string();
        assert!(err.contains("not agent agent-that-is-not-there"), "{err}");
        // A tenant's (or an operator's) certificate is refused by the serving agent.
        for who in ["wasmos://tenant/acme/alice", "wasmos://operator/ops"] {
            let creds = c.credentials_for(who);
            let ep = wasmos_net::agent_peer_client(&creds, alpn::AGENT_PEER, addr).unwrap();
            let answer = match wasmos_net::connect_agent(&ep, addr, &holder).await {
                Ok(conn) => wasmos_tests::peer_ask(&conn, &fetch).await,
                Err(e) => Err(e.to_string()),
            };
            let err = answer
                .err()
                .unwrap_or_else(|| panic!("{who} got an answer"));
            assert!(
                err.contains("only agents fetch kept outputs"),
                "{who}: {err}"
            );
        }
    });
}

#[test]
fn an_agent_registering_with_a_peer_address_that_is_not_one_is_refused() {
    use wasmos_proto::{AgentToMaster, MasterToAgent, Resources, alpn};
    let c = DevCluster::start(1).unwrap();
    let addr = c.master_addr();
    let creds = c.credentials_for("wasmos://agent/rogue");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // A name to resolve (other agents would dial wherever it points), a long string, and an
    // address without a port: each refused, naming what is wrong.
    for bad in ["files.example.com:9000", &"9".repeat(5_000), "127.0.0.1"] {
        let answer = runtime.block_on(async {
            let ep = wasmos_net::client_endpoint(&creds, alpn::AGENT, addr).unwrap();
            let conn = wasmos_net::connect(&ep, addr).await.unwrap();
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let register = AgentToMaster::Register {
                resources: Resources::new(1000, 1 << 30, 0),
                attributes: Default::default(),
                fuel_per_core_second: 0,
                reserved: Default::default(),
                running: Vec::new(),
                pending: Vec::new(),
                peer_addr: Some(bad.to_string()),
            };
            wasmos_net::send_frame(&mut send, &register).await.unwrap();
            wasmos_net::recv_frame::<MasterToAgent>(&mut recv).await
        });
        match answer {
            Ok(Some(MasterToAgent::Error { message })) => {
                assert!(
                    message.contains("is not an IP address and port"),
                    "{message}"
                );
                // Quoted within bounds, not echoed whole.
                assert!(message.len() < 200, "{} bytes", message.len());
            }
            other => panic!("registration with {bad:.40} was answered {other:?}"),
        }
    }
    // It was not recorded: the cluster has its one real agent.
    let agents = c.json(&["agent", "list", "-o", "json"]).unwrap();
    let ids: Vec<&str> = agents
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["id"].as_str())
        .collect();
    assert!(!ids.contains(&"rogue"), "{ids:?}");
    assert_eq!(ids.len(), 1, "{ids:?}");
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
