//! The audit log with real processes: a scripted session of two tenants and an operator on a
//! group of three masters, then `wasmos audit` lists exactly the calls that changed something
//! or were refused (who, over what, what, and what came of it), also after the leader that
//! recorded them was killed (and a refused read a follower answered, which the leader records);
//! filters and `-f` follow it; tenants may not read it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead;
use std::process::Stdio;
use std::time::Duration;

use wasmos_tests::{DevCluster, assert_clean_error, sample, text, wasmos_cmd};

/// The entries as (identity, channel, action, object, result), the result cut at its first
/// colon so a refusal's wording may change.
fn entries(v: &serde_json::Value) -> Vec<(String, String, String, String, String)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap().to_string();
            let result = s("result");
            let result = result.split(':').next().unwrap().to_string();
            (
                s("identity"),
                s("channel"),
                s("action"),
                s("object"),
                result,
            )
        })
        .collect()
}

fn e(
    identity: &str,
    action: &str,
    object: &str,
    result: &str,
) -> (String, String, String, String, String) {
    (
        identity.into(),
        "quic".into(),
        action.into(),
        object.into(),
        result.into(),
    )
}

#[test]
fn the_audit_log_lists_exactly_the_session_also_after_a_failover() {
    let c = DevCluster::start_with(1, &["--masters", "3"]).unwrap();
    let alice = c.user_config("wasmos://tenant/acme/alice");
    let bob = c.user_config("wasmos://tenant/acme/bob");
    let mallory = c.user_config("wasmos://tenant/evil/mallory");
    let as_user =
        |config: &std::path::Path, args: &[&str]| wasmos_cmd(config, args).output().unwrap();
    let spin = sample("spin");
    let hash: String = {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(std::fs::read(&spin).unwrap());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    };

    // Alice starts a task; bob, of her tenant, may not kill it, and she does; mallory, of
    // another tenant, cannot even see it, nor revoke anyone, nor read the log; the operator
    // revokes mallory.
    let out = as_user(
        &alice,
        &["run", "--detach", spin.to_str().unwrap(), "--", "60"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let task = text(&out.stdout).trim().to_string();
    assert_clean_error(&as_user(&bob, &["task", "kill", &task]), "only its owner");
    let out = as_user(&alice, &["task", "kill", &task]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_clean_error(&as_user(&mallory, &["task", "kill", &task]), "no task");
    assert_clean_error(
        &as_user(
            &mallory,
            &["cert", "revoke", "--identity", "wasmos://tenant/acme/alice"],
        ),
        "only operators",
    );
    assert_clean_error(&as_user(&mallory, &["audit"]), "only operators");
    // Streamed reads too: her output, the bundle's bytes.
    assert_clean_error(&as_user(&mallory, &["logs", &task]), "no task");
    assert_clean_error(&as_user(&mallory, &["blob", "get", &hash]), "no blob");
    // Reads are not recorded unless refused.
    assert!(as_user(&alice, &["task", "list"]).status.success());
    assert!(as_user(&alice, &["logs", &task]).status.success());
    let out = c
        .cli(&[
            "cert",
            "revoke",
            "--identity",
            "wasmos://tenant/evil/mallory",
        ])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    let alice_id = "wasmos://tenant/acme/alice";
    let mallory_id = "wasmos://tenant/evil/mallory";
    let admin = "wasmos://operator/admin";
    let mut expected = vec![
        e(alice_id, "push-bundle", &hash, "ok"),
        e(alice_id, "submit", &task, "ok"),
        e("wasmos://tenant/acme/bob", "kill", &task, "refused"),
        e(alice_id, "kill", &task, "ok"),
        e(mallory_id, "kill", &task, "refused"),
        e(mallory_id, "revoke", alice_id, "refused"),
        e(mallory_id, "audit", "", "refused"),
        e(mallory_id, "logs", &task, "refused"),
        e(mallory_id, "get-blob", &hash, "refused"),
        e(admin, "revoke", mallory_id, "ok"),
    ];
    assert_eq!(
        entries(&c.json(&["audit", "-o", "json"]).unwrap()),
        expected
    );

    // The leader that recorded them dies; its successor has every entry and records on.
    let (old, _) = c.leader(None).unwrap();
    wasmos_tests::kill_dash_nine(c.master_pid(old).unwrap());
    c.leader(Some(old)).unwrap();
    let mut follow = c
        .cmd(&["audit", "-f", "-o", "json", "--action", "set-role"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = c.cli(&["role", "set", "acme", "--weight", "3"]).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    expected.push(e(admin, "set-role", "acme", "ok"));
    // A refused `--stale` read that a follower answered itself: the leader records it.
    let (leader, st) = c.leader(Some(old)).unwrap();
    let follower = st["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] != leader && m["id"] != old)
        .unwrap()["addr"]
        .as_str()
        .unwrap()
        .to_string();
    let eve = c.user_config("wasmos://tenant/other/eve");
    let on_follower = eve.with_file_name("follower.toml");
    let config: Vec<String> = std::fs::read_to_string(&eve)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("masters"))
        .map(|l| match l.starts_with("master ") {
            true => format!("master = \"{follower}\""),
            false => l.to_string(),
        })
        .collect();
    std::fs::write(&on_follower, config.join("\n")).unwrap();
    assert_clean_error(
        &as_user(&on_follower, &["--stale", "task", "show", &task]),
        "no task",
    );
    expected.push(e("wasmos://tenant/other/eve", "get-task", &task, "refused"));
    assert_eq!(
        entries(&c.json(&["audit", "-o", "json"]).unwrap()),
        expected
    );
    // The entries name their caller's address.
    let all = c.json(&["audit", "-o", "json"]).unwrap();
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .all(|e| e["peer"].as_str().unwrap().starts_with("127.0.0.1:")),
        "{all}"
    );

    // `-f` printed the new entry as a JSON line, and only the action asked for.
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("audit -f printed nothing")
        .unwrap();
    let got: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(got["action"], "set-role");
    assert_eq!(got["object"], "acme");
    let _ = follow.kill();
    let _ = follow.wait();

    // Filters.
    let by_mallory = c
        .json(&["audit", "-o", "json", "--identity", mallory_id])
        .unwrap();
    assert_eq!(entries(&by_mallory).len(), 5);
    let kills = c
        .json(&["audit", "-o", "json", "--action", "kill"])
        .unwrap();
    assert_eq!(entries(&kills).len(), 3);
    let recent = c.json(&["audit", "-o", "json", "--since", "10m"]).unwrap();
    assert_eq!(entries(&recent).len(), expected.len());
    // A framework's subscription and its launches (over QUIC, through the SDK).
    let mut framework = std::process::Command::new(wasmos_tests::example_bin("framework"))
        .arg("--config")
        .arg(c.config())
        .args([hash.as_str(), "1", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ended = wasmos_tests::wait_exit(&mut framework, Duration::from_secs(60));
    assert!(ended.is_some_and(|s| s.success()), "{ended:?}");
    let of = |action: &str| {
        entries(
            &c.json(&["audit", "-o", "json", "--action", action])
                .unwrap(),
        )
    };
    let subscribed = of("subscribe");
    assert_eq!(subscribed.len(), 1, "{subscribed:?}");
    assert_eq!(
        (subscribed[0].0.as_str(), subscribed[0].4.as_str()),
        (admin, "ok")
    );
    assert!(wasmos_tests::eventually(Duration::from_secs(5), || {
        of("accept")
            .iter()
            .any(|e| e.0 == admin && e.4 == "ok" && e.3.contains("offers"))
    }));

    let table = c.cli(&["audit", "--action", "kill"]).unwrap();
    let table = text(&table.stdout);
    assert!(
        table.contains("IDENTITY") && table.contains("wasmos://tenant/acme/bob"),
        "{table}"
    );
}
