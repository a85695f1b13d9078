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
