//! Revocation with real processes: an operator revokes a tenant's certificate (by serial) or
//! identity; the master refuses it at the next handshake, cuts its open `logs -f` at once,
//! and still refuses it after a hard restart. Tenants may not revoke.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use wasmos_tests::{DevCluster, assert_clean_error, sample, text, wait_exit, wasmos_cmd};

/// One POST to the HTTPS/JSON API with the certificate of client config `config`: the HTTP
/// status, or the TLS error that refused it.
fn https_probe(config: &std::path::Path) -> String {
    let probe = r#"
import http.client, ssl, sys, tomllib, os, socket
cfg_path = sys.argv[1]
cfg = tomllib.load(open(cfg_path, "rb"))
base = os.path.dirname(cfg_path)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(os.path.join(base, cfg["ca"]))
ctx.load_cert_chain(os.path.join(base, cfg["cert"]), os.path.join(base, cfg["key"]))
host, _, port = cfg["http"].rpartition(":")
try:
    c = http.client.HTTPSConnection(host, int(port), context=ctx)
    c.sock = ctx.wrap_socket(socket.create_connection((host, int(port))), server_hostname="master.wasmos")
    c.request("POST", "/api/v1/scheduler", "{}", {})
    print("status", c.getresponse().status)
except (ssl.SSLError, ConnectionError) as e:
    print("refused", e)
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", probe])
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
    let mut follow = wasmos_cmd(&bob, &["logs", "-f", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Connected and following: the task's first line ("waiting 60s") came through.
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(follow.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(first.contains("waiting"), "{first:?}");
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
