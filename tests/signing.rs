//! Signed bundles against a real `wasmos dev` cluster: keys made and registered with the CLI, a
//! role that requires them, and what is refused (unsigned, tampered, unregistered, wrongly
//! keyed, revoked) and what runs (signed by a trusted key; the agent checks it again before
//! it compiles).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Output;

use wasmos_tests::{DevCluster, assert_clean_error, ok, sample, text, wasmos_with};

const ALICE: &str = "wasmos://tenant/acme/alice";
const BOB: &str = "wasmos://tenant/evil/bob";

/// A copy of the hello sample under `name` in `dir`, its bytes changed by `salt` (a custom
/// section appended, which keeps it a valid component) so each copy is its own bundle.
fn component(dir: &Path, name: &str, salt: &str) -> PathBuf {
    component_of("hello", dir, name, salt)
}

/// [`component`] of another sample.
fn component_of(sample_name: &str, dir: &Path, name: &str, salt: &str) -> PathBuf {
    let mut bytes = std::fs::read(sample(sample_name)).unwrap();
    let payload = [&[4u8][..], b"salt", salt.as_bytes()].concat();
    bytes.push(0); // a custom section
    bytes.push(payload.len() as u8);
    bytes.extend_from_slice(&payload);
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn run(config: &Path, file: &Path) -> Output {
    let file = file.to_str().unwrap();
    wasmos_with(config, &["run", file, "--", "signed"])
}

#[test]
fn a_role_runs_only_bundles_signed_by_its_keys() {
    let c = DevCluster::start(1).unwrap();
    let op = c.config();
    let alice = c.user_config(ALICE);
    let bob = c.user_config(BOB);
    let dir = tempfile::tempdir().unwrap();
    let d = |f: &str| dir.path().join(f);
    let p = |f: &str| d(f).to_str().unwrap().to_string();

    // Keys: alice's (registered and required), `next` (registered later, for the rotation)
    // and mallory's (never registered).
    let keygen = |name: &str| ok(&wasmos_with(&alice, &["bundle", "keygen", &p(name)]));
    let alice_key = keygen("alice").trim().to_string();
    let next_key = keygen("next").trim().to_string();
    keygen("mallory");
    assert!(alice_key.starts_with("ed25519:"), "{alice_key}");
    assert_clean_error(
        &wasmos_with(&alice, &["bundle", "keygen", &p("alice")]),
        "exists already",
    );

    // Registering is for operators; the id the master gives is the one keygen printed.
    assert_clean_error(
        &wasmos_with(&alice, &["signing-key", "add", &p("alice.pub")]),
        "only operators may register signing keys",
    );
    assert_clean_error(
        &wasmos_with(&bob, &["signing-key", "list"]),
        "only operators may list signing keys",
    );
    assert_clean_error(
        &wasmos_with(&bob, &["signing-key", "revoke", "ed25519:00"]),
        "only operators may revoke signing keys",
    );
    // A tenant renewing gets its own identity back, whatever its request says.
    ok(&wasmos_with(&bob, &["cert", "renew"]));
    let renewed = std::fs::read_to_string(bob.with_file_name("me.pem")).unwrap();
    assert_eq!(
        wasmos_net::pki::identity_of_pem(&renewed).map(|i| i.to_uri()),
        Some(BOB.to_string())
    );
    assert_clean_error(
        &wasmos_with(&op, &["signing-key", "add", &p("alice.key")]),
        "not a PEM public key",
    );
    let added = ok(&wasmos_with(&op, &["signing-key", "add", &p("alice.pub")]));
    assert_eq!(added.trim(), alice_key);
    assert_clean_error(
        &wasmos_with(
            &op,
            &["role", "set", "acme", "--require-signed-by", "ed25519:00"],
        ),
        "no signing key ed25519:00 is registered",
    );
    ok(&wasmos_with(
        &op,
        &["role", "set", "acme", "--require-signed-by", &alice_key],
    ));
    let shown = ok(&wasmos_with(&op, &["role", "show", "acme"]));
    assert!(
        shown.contains(&format!("signed bundles    by {alice_key}")),
        "{shown}"
    );

    // Unsigned: refused by the master, saying which keys the role wants.
    let unsigned = component(dir.path(), "unsigned.wasm", "u");
    let out = run(&alice, &unsigned);
    assert_clean_error(
        &out,
        &format!("is not signed by a key role acme requires ({alice_key})"),
    );

    // Signed by alice's key: runs (the agent verified the signature before compiling).
    let signed = component(dir.path(), "signed.wasm", "s");
    ok(&wasmos_with(
        &alice,
        &[
            "bundle",
            "sign",
            &p("signed.wasm"),
            "--key",
            &p("alice.key"),
        ],
    ));
    assert!(d("signed.wasm.sig").is_file());
    let out = run(&alice, &signed);
    assert!(
        text(&out.stdout).contains("signed"),
        "{}",
        text(&out.stderr)
    );
    ok(&out);

    // Tampered: a signature of other bytes is caught before anything is sent...
    let other = component(dir.path(), "other.wasm", "o");
    assert_clean_error(
        &wasmos_with(
            &alice,
            &[
                "bundle",
                "push",
                &p("other.wasm"),
                "--signature",
                &p("signed.wasm.sig"),
            ],
        ),
        "not this file",
    );
    // ...and a signature whose bytes were changed is refused by the master.
    ok(&wasmos_with(
        &alice,
        &["bundle", "sign", &p("other.wasm"), "--key", &p("alice.key")],
    ));
    let sig = std::fs::read_to_string(d("other.wasm.sig")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&sig).unwrap();
    let hex = json["signature"].as_str().unwrap().to_string();
    let flipped = if hex.starts_with('0') { "1" } else { "0" };
    json["signature"] = format!("{flipped}{}", &hex[1..]).into();
    std::fs::write(d("other.wasm.sig"), json.to_string()).unwrap();
    assert_clean_error(
        &wasmos_with(&alice, &["bundle", "push", &p("other.wasm")]),
        &format!("is not {alice_key}'s signature of bundle"),
    );
    // `run` says it skipped the bad `.sig`, and the role's requirement then refuses the task.
    let refused_both = |out: &Output, first: &str| {
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains(first), "{err}");
        assert!(
            err.contains("is not signed by a key role acme requires"),
            "{err}"
        );
    };
    refused_both(&run(&alice, &other), "signature of bundle");

    // A key nobody registered.
    let stray = component(dir.path(), "stray.wasm", "m");
    ok(&wasmos_with(
        &alice,
        &[
            "bundle",
            "sign",
            &p("stray.wasm"),
            "--key",
            &p("mallory.key"),
        ],
    ));
    refused_both(&run(&alice, &stray), "is registered");

    // Registered, but not a key this role requires.
    ok(&wasmos_with(&op, &["signing-key", "add", &p("next.pub")]));
    let wrong = component(dir.path(), "wrong.wasm", "w");
    ok(&wasmos_with(
        &alice,
        &["bundle", "sign", &p("wrong.wasm"), "--key", &p("next.key")],
    ));
    assert_clean_error(
        &run(&alice, &wrong),
        "is not signed by a key role acme requires",
    );

    // Another tenant's roles are untouched, and it cannot sign what it cannot read: the
    // answer is the one an unknown bundle gets.
    ok(&run(&bob, &unsigned));
    let signed_hash = ok(&wasmos_with(&alice, &["bundle", "push", &p("signed.wasm")]));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use wasmos_client::{Client, ClientConfig};
        use wasmos_proto::{BundleHash, BundleSignature, ClientRequest};
        let cfg = ClientConfig::load(Some(&bob)).unwrap();
        let client = Client::connect(&cfg).await.unwrap();
        let sig: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d("signed.wasm.sig")).unwrap()).unwrap();
        let hex = sig["signature"].as_str().unwrap();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        for hash in [signed_hash.trim().to_string(), "ab".repeat(32)] {
            let err = client
                .request(ClientRequest::SignBundle {
                    hash: BundleHash::parse(&hash).unwrap(),
                    signature: BundleSignature {
                        key: alice_key.clone(),
                        signature: bytes.clone(),
                    },
                })
                .await
                .unwrap_err()
                .to_string();
            assert!(err.contains("has not been uploaded"), "{err}");
        }
        client.close().await;
    });

    // Rotation: the role trusts both keys, the old one is revoked; what only it signed no
    // longer runs, what the new key signed does.
    ok(&wasmos_with(
        &op,
        &[
            "role",
            "set",
            "acme",
            "--require-signed-by",
            &format!("{alice_key},{next_key}"),
        ],
    ));
    ok(&run(&alice, &wrong));
    ok(&wasmos_with(&op, &["signing-key", "revoke", &alice_key]));
    // The `.sig` beside the file is refused (its key is revoked) and said so; the task then
    // meets the role's requirement without it.
    let out = run(&alice, &signed);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("signing key") && err.contains("is revoked"),
        "{err}"
    );
    assert!(err.contains("is signed only by revoked keys"), "{err}");
    let keys = c.json(&["signing-key", "list", "-o", "json"]).unwrap();
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    let old = keys.iter().find(|k| k["id"] == alice_key.as_str()).unwrap();
    assert!(old["revoked"].is_array(), "{old}");
    assert_eq!(old["roles"][0], "acme");
    assert_clean_error(
        &wasmos_with(&op, &["signing-key", "add", &p("alice.pub")]),
        "cannot be trusted again",
    );
    ok(&wasmos_with(
        &alice,
        &["bundle", "sign", &p("signed.wasm"), "--key", &p("next.key")],
    ));
    ok(&run(&alice, &signed));

    // The audit log names who signed and revoked what.
    let audit = |action: &str| -> Vec<serde_json::Value> {
        let out = ok(&wasmos_with(
            &op,
            &["audit", "--action", action, "-o", "json"],
        ));
        serde_json::from_str(&out).unwrap()
    };
    let revokes = audit("revoke-signing-key");
    // Bob's refused attempt, then the operator's revocation.
    assert_eq!(revokes.len(), 2, "{revokes:?}");
    assert_eq!(revokes[0]["identity"], BOB);
    assert!(
        revokes[0]["result"]
            .as_str()
            .unwrap()
            .starts_with("refused")
    );
    assert_eq!(revokes[1]["object"], alice_key.as_str());
    assert_eq!(revokes[1]["result"], "ok");
    assert!(
        audit("sign-bundle")
            .iter()
            .any(|e| e["identity"] == BOB && e["result"].as_str().unwrap().contains("refused")),
        "bob's refused signatures are in the log"
    );

    // A job whose next group's only signing key is revoked while its first group runs
    // fails, saying why, instead of retrying a launch no retry can make.
    let keygen_third = ok(&wasmos_with(&alice, &["bundle", "keygen", &p("third")]));
    let third_key = keygen_third.trim().to_string();
    ok(&wasmos_with(&op, &["signing-key", "add", &p("third.pub")]));
    let both = format!("{next_key},{third_key}");
    ok(&wasmos_with(
        &op,
        &["role", "set", "acme", "--require-signed-by", &both],
    ));
    component_of("exit-code", dir.path(), "first.wasm", "j1");
    component(dir.path(), "second.wasm", "j2");
    for f in ["first.wasm", "second.wasm"] {
        ok(&wasmos_with(
            &alice,
            &["bundle", "sign", &p(f), "--key", &p("third.key")],
        ));
    }
    let job = format!(
        "name = \"signed\"\n[[group]]\nname = \"first\"\nbundle = \"{}\"\nargs = [\"0\", \"4000\"]\n\n[[group]]\nname = \"second\"\nbundle = \"{}\"\ndepends_on = [\"first\"]\n",
        p("first.wasm"),
        p("second.wasm")
    );
    std::fs::write(d("job.toml"), job).unwrap();
    let id = ok(&wasmos_with(&alice, &["job", "submit", &p("job.toml")]));
    let id = id.lines().next().unwrap().trim().to_string();
    let status = || {
        let out = wasmos_with(&alice, &["job", "status", &id, "-o", "json"]);
        serde_json::from_str::<serde_json::Value>(&ok(&out)).unwrap()
    };
    assert!(
        wasmos_tests::eventually(std::time::Duration::from_secs(20), || status()["groups"][0]
            ["running"]
            == 1),
        "{}",
        status()
    );
    ok(&wasmos_with(&op, &["signing-key", "revoke", &third_key]));
    assert!(
        wasmos_tests::eventually(std::time::Duration::from_secs(30), || {
            status()["state"]
                .to_string()
                .contains("group second cannot launch")
        }),
        "{}",
        status()
    );
    let why = status()["state"].to_string();
    assert!(why.contains("is signed only by revoked keys"), "{why}");
    assert_eq!(status()["groups"][0]["done"], 1, "{}", status());

    // Lifting the requirement runs unsigned bundles again.
    ok(&wasmos_with(
        &op,
        &["role", "set", "acme", "--require-signed-by", "none"],
    ));
    ok(&run(&alice, &unsigned));
}
