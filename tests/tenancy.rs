//! Tenants cannot read, starve or reach each other: two tenants (`acme` with users alice and
//! carol, `evil` with bob) and an operator against a real `wasmos dev` cluster. Each test is a
//! table of (identity × action × path) → expected answer, or one abuse case from issue 15
//! (reserve-all is in `tests/framework.rs`): read by hash, existence oracle, disk and log
//! flood, hold-all, egress to a loopback listener, submission flood.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use wasmos_tests::{DevCluster, assert_clean_error, ok, sample, text, wasmos_cmd, wasmos_with};

const ALICE: &str = "wasmos://tenant/acme/alice";
const CAROL: &str = "wasmos://tenant/acme/carol";
const BOB: &str = "wasmos://tenant/evil/bob";

/// One row of a table: what is tried, as whom, the command, and `Ok` or the refusal (`unknown`:
/// exactly what an id nobody has gets).
type Case<'a> = (&'a str, &'a Path, &'a [&'a str], Result<(), &'a str>);

/// The clients of one cluster: the operator's config and one per user.
struct Users {
    op: PathBuf,
    alice: PathBuf,
    carol: PathBuf,
    bob: PathBuf,
}

fn users(c: &DevCluster) -> Users {
    Users {
        op: c.config(),
        alice: c.user_config(ALICE),
        carol: c.user_config(CAROL),
        bob: c.user_config(BOB),
    }
}

/// `wasmos run` as a user: flags, then the sample, then its arguments.
fn run_as(config: &Path, flags: &[&str], task: &str, args: &[&str]) -> Output {
    wasmos_cmd(config, &["run"])
        .args(flags)
        .arg(sample(task))
        .arg("--")
        .args(args)
        .output()
        .unwrap()
}

/// The one `error:` line, with every 64-hex-digit hash replaced by HASH: two refusals that
/// differ only in the hash they name read the same.
fn refusal(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a refusal: {}",
        text(&out.stdout)
    );
    let err = text(&out.stderr);
    let mut words: Vec<String> = Vec::new();
    for w in err.trim().split(' ') {
        let hex = w.trim_matches(|c: char| !c.is_ascii_hexdigit());
        if hex.len() == 64 {
            words.push(w.replace(hex, "HASH"));
        } else {
            words.push(w.to_string());
        }
    }
    words.join(" ")
}

fn json_of(out: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).unwrap()
}

fn task_id(out: &Output) -> String {
    ok(out).trim().to_string()
}

/// Waits until task `id` reaches one of `states` (as `task show -o json` names them).
fn wait_state(config: &Path, id: &str, states: &[&str]) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = json_of(&wasmos_with(config, &["task", "show", id, "-o", "json"]));
        if states.iter().any(|s| info["status"]["state"] == *s) {
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never reached {states:?}: {info}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn blobs_tasks_and_secrets_stay_within_their_tenant() {
    let c = DevCluster::start(1).unwrap();
    let u = users(&c);
    let scratch = tempfile::tempdir().unwrap();
    assert!(c.dir.path().join("pki").is_dir());

    // alice's private bundle and an output of hers (a file only her task wrote).
    let pushed = wasmos_with(
        &u.alice,
        &["bundle", "push", sample("exit-code").to_str().unwrap()],
    );
    let bundle = ok(&pushed).trim().to_string();
    let input = scratch.path().join("secret.txt");
    std::fs::write(&input, "alice's secret input\n").unwrap();
    let out = run_as(
        &u.alice,
        &[
            "--input",
            &format!("{}:/in/secret.txt", input.display()),
            "--outputs",
            "/out",
        ],
        "wordcount",
        &["map", "--reducers", "1", "--out", "/out", "/in"],
    );
    ok(&out);
    let mine = json_of(&wasmos_with(&u.alice, &["task", "list", "-o", "json"]));
    let wc = mine
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["spec"]["name"] == "wordcount.wasm")
        .unwrap()
        .clone();
    let output = wc["status"]["outputs"][0]["blob"]
        .as_str()
        .unwrap()
        .to_string();
    let nowhere = "ab".repeat(32);

    // Reading a blob by hash: alice's own tenant and operators may; bob gets exactly the
    // answer a hash nobody stored gets.
    for (who, config, may) in [
        ("alice", &u.alice, true),
        ("carol (same tenant)", &u.carol, true),
        ("operator", &u.op, true),
        ("bob", &u.bob, false),
    ] {
        let out = wasmos_with(config, &["blob", "get", &output]);
        if may {
            assert!(ok(&out).contains("secret"), "{who} got other bytes");
        } else {
            let missing = wasmos_with(config, &["blob", "get", &nowhere]);
            assert_eq!(refusal(&out), refusal(&missing), "{who}");
            assert!(out.stdout.is_empty());
        }
    }

    // Naming alice's blobs in bob's work: job file (bundle), `run --stdin`-style names are
    // hashes the master checks; every refusal reads like a hash nobody stored.
    let job = |bundle: &str| {
        let path = scratch.path().join(format!("job-{}.toml", &bundle[..8]));
        std::fs::write(
            &path,
            format!("name = \"steal\"\n[[group]]\nname = \"g\"\nbundle = \"{bundle}\"\n"),
        )
        .unwrap();
        wasmos_with(&u.bob, &["job", "submit", path.to_str().unwrap()])
    };
    for (what, hash) in [("alice's bundle", &bundle), ("alice's output", &output)] {
        let tried = job(hash);
        let missing = job(&nowhere);
        assert_eq!(refusal(&tried), refusal(&missing), "job naming {what}");
        assert!(refusal(&tried).contains("has not been uploaded"));
    }
    // Over the HTTPS framework API (Launch with alice's bundle, then with her output as
    // stdin), from Python as another language would: refused like a missing hash.
    let probe = format!(
        r#"
import json, sys
sys.path.insert(0, {examples:?})
import framework as fw
host, port, files = fw.load_config(sys.argv[1])
api = fw.Scheduler(host, port, fw.tls_context(files))
events = api.subscribe({{"Subscribe": {{"name": "thief", "role": None, "revocable": False,
                        "framework": None, "failover_timeout_ms": None}}}})
attempts = [({bundle:?}, None), ({output:?}, None), ({exit:?}, {output:?}), ({nowhere:?}, None)]
# One accept at a time: its answer comes once the master has decided, and offers of what it
# left may come before that.
answered = True
for line in events:
    if not line.strip():
        continue
    ev = json.loads(line)
    kind, body = (ev, None) if isinstance(ev, str) else next(iter(ev.items()))
    if kind == "Offers" and attempts and answered:
        answered = False
        bundle, stdin = attempts.pop(0)
        spec = fw.spec(bundle, [])
        spec["stdin"] = stdin
        api.call({{"Accept": {{"request": len(attempts), "offers": [body[0]["id"]],
                  "operations": [{{"Launch": [spec]}}], "refuse_ms": 0}}}})
    elif kind == "Error":
        answered = True
        print("ERROR", body["message"], flush=True)
        if not attempts:
            break
    elif kind == "Accepted":
        print("ACCEPTED", flush=True)
        break
"#,
        examples = c_examples(),
        exit = bundle_of_bob(&u),
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &probe])
        .arg(&u.bob)
        .output()
        .unwrap();
    let said = text(&out.stdout);
    let lines: Vec<String> = said
        .lines()
        .map(|l| {
            let words: Vec<String> = l
                .split(' ')
                .map(|w| {
                    if w.len() == 64 {
                        "HASH".into()
                    } else {
                        w.to_string()
                    }
                })
                .collect();
            words.join(" ")
        })
        .collect();
    assert_eq!(lines.len(), 4, "{said}{}", text(&out.stderr));
    assert_eq!(
        lines[0], lines[3],
        "a foreign bundle reads like a missing one"
    );
    assert_eq!(lines[1], lines[3], "a foreign output as bundle likewise");
    assert!(
        lines[2].contains("stdin blob HASH has not been uploaded"),
        "{said}"
    );

    // Existence oracle: bob pushing alice's exact bytes sends them, as a first upload does;
    // only his own second push is "already there".
    for (file, says) in [
        ("exit-code", ": uploaded"),
        ("exit-code", ": already there"),
    ] {
        let out = wasmos_with(&u.bob, &["bundle", "push", sample(file).to_str().unwrap()]);
        assert_eq!(ok(&out).trim(), bundle, "same content, same hash");
        assert!(
            text(&out.stderr).trim().ends_with(says),
            "{}",
            text(&out.stderr)
        );
    }

    // Tasks: alice's are hers to change, her tenant's to see, invisible to bob (an unknown id).
    let secret = "hunter2-correct-horse";
    let long = run_as(
        &u.alice,
        &["-d", "--secret-env", &format!("DB_PASSWORD={secret}")],
        "exit-code",
        &["0", "600000"],
    );
    let id = task_id(&long);
    wait_state(&u.alice, &id, &["Running"]);
    let unknown = "t-99999";
    let cases: &[Case] = &[
        ("alice shows", &u.alice, &["task", "show", &id], Ok(())),
        ("carol shows", &u.carol, &["task", "show", &id], Ok(())),
        ("operator shows", &u.op, &["task", "show", &id], Ok(())),
        ("bob shows", &u.bob, &["task", "show", &id], Err("unknown")),
        ("bob logs", &u.bob, &["logs", &id], Err("unknown")),
        ("alice usage", &u.alice, &["task", "usage", &id], Ok(())),
        ("bob usage", &u.bob, &["task", "usage", &id], Err("unknown")),
        ("bob kills", &u.bob, &["task", "kill", &id], Err("unknown")),
        (
            "carol kills",
            &u.carol,
            &["task", "kill", &id],
            Err("only its owner"),
        ),
    ];
    for (what, config, args, expected) in cases {
        let out = wasmos_with(config, args);
        match expected {
            Ok(()) => {
                let shown = ok(&out);
                assert!(
                    !shown.contains(secret),
                    "{what} printed the secret: {shown}"
                );
            }
            Err("unknown") => {
                let mut same = args.to_vec();
                let pos = same.iter().position(|a| *a == id.as_str()).unwrap();
                same[pos] = unknown;
                let control = wasmos_with(config, &same);
                assert_eq!(
                    refusal(&out).replace(&id, "ID"),
                    refusal(&control).replace(unknown, "ID"),
                    "{what}"
                );
            }
            Err(says) => assert_clean_error(&out, says),
        }
    }
    // Its usage over time comes with the heartbeats, for those who may see it.
    let usage =
        |config: &Path| json_of(&wasmos_with(config, &["task", "usage", &id, "-o", "json"]));
    assert!(
        wasmos_tests::eventually(Duration::from_secs(20), || {
            usage(&u.alice).as_array().is_some_and(|s| {
                s.len() >= 2 && s.iter().all(|x| x["mem_bytes"].as_u64() > Some(0))
            })
        }),
        "{}",
        usage(&u.alice)
    );
    assert_eq!(usage(&u.op).as_array().map(|s| s.is_empty()), Some(false));
    // Over HTTPS, bob's reads of alice's output file, task output and usage read exactly as
    // those of a hash or task nobody has; alice's own succeed.
    let probe = format!(
        "{}{}",
        wasmos_tests::PYTHON_HTTPS_CLIENT,
        r#"
def get(path):
    c = connect()
    c.request("GET", path)
    r = c.getresponse()
    print(r.status, r.read().decode()[:200].replace("\n", " "))
def post(body):
    c = connect()
    c.request("POST", "/api/v1/client", json.dumps(body))
    r = c.getresponse()
    print(r.status, r.read().decode()[:200])
blob, task = sys.argv[2], int(sys.argv[3])
get(f"/api/v1/blobs/{blob}")
get(f"/api/v1/tasks/{task}/logs")
post({"TaskUsage": {"id": task}})
"#
    );
    let https = |config: &Path, blob: &str, task: &str| -> Vec<String> {
        let out = std::process::Command::new("python3")
            .args(["-c", &probe])
            .arg(config)
            .args([blob, task.trim_start_matches("t-")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .map(|l| l.replace(blob, "HASH").replace(task, "TASK"))
            .collect()
    };
    let tried = https(&u.bob, &output, &id);
    let control = https(&u.bob, &nowhere, unknown);
    assert_eq!(tried.len(), 3, "{tried:?}");
    assert_eq!(tried, control, "bob over HTTPS tells alice's from nobody's");
    assert!(tried.iter().all(|l| l.starts_with("404 ")), "{tried:?}");
    let own = https(&u.alice, &output, &id);
    assert!(
        own[0].starts_with("200 ") && own[0].contains("secret"),
        "{own:?}"
    );
    assert!(own[1].starts_with("200 "), "{own:?}");
    assert!(
        own[2].starts_with("200 ") && own[2].contains("mem_bytes"),
        "{own:?}"
    );

    // Listings: bob's is empty of acme's work; nothing prints the secret, in any format.
    let bobs = json_of(&wasmos_with(&u.bob, &["task", "list", "-o", "json"]));
    assert!(bobs.as_array().unwrap().is_empty(), "{bobs}");
    for config in [&u.alice, &u.carol, &u.op] {
        for args in [
            &["task", "list"][..],
            &["task", "list", "-o", "json"],
            &["task", "show", &id, "-o", "json"],
        ] {
            let out = ok(&wasmos_with(config, args));
            assert!(!out.contains(secret), "{args:?}: {out}");
        }
    }
    assert!(
        !c.log_text().contains(secret),
        "the cluster's log printed it"
    );
    // At rest: no file under the cluster's data dir holds the secret in clear, and the
    // masters' and agents' state is private to their user.
    for f in files_under(c.dir.path()) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{} holds the secret",
            f.display()
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in files_under(c.dir.path()) {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            if name == "raft.redb" || name.ends_with(".log") || name == "secrets.key" {
                let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", f.display());
            }
        }
    }
    // The task itself gets the secret as an ordinary variable.
    let out = run_as(
        &u.alice,
        &["--secret-env", &format!("DB_PASSWORD={secret}")],
        "fidelity",
        &["env"],
    );
    assert!(ok(&out).contains(&format!("\"DB_PASSWORD\" = \"{secret}\"")));
    ok(&wasmos_with(&u.alice, &["task", "kill", &id]));
}

/// Where `examples/framework.py` is, for probes that import it.
fn c_examples() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .display()
        .to_string()
}

/// A bundle bob uploaded himself (so a launch naming only alice's stdin is refused for that).
fn bundle_of_bob(u: &Users) -> String {
    let out = wasmos_with(
        &u.bob,
        &["bundle", "push", sample("hello").to_str().unwrap()],
    );
    ok(&out).trim().to_string()
}

#[test]
fn ceilings_quotas_and_paging_bound_what_a_tenant_takes() {
    let c = DevCluster::start(1).unwrap();
    let u = users(&c);
    let big = "x".repeat(100 << 10);
    // Ceilings (defaults first, then one an operator sets), each refusal naming it.
    let cases: &[(&str, &[&str], &str)] = &[
        ("a 100000h timeout", &["--timeout", "100000h"], "timeout"),
        ("a 4GiB output cap", &["--max-output", "4GiB"], "output cap"),
        (
            "300KiB of args and env",
            &[
                "--env",
                &format!("A={big}"),
                "--env",
                &format!("B={big}"),
                "--env",
                &format!("C={big}"),
            ],
            "arguments and environment",
        ),
    ];
    for (what, flags, says) in cases {
        let out = run_as(&u.alice, flags, "hello", &[]);
        assert!(!out.status.success(), "{what} was accepted");
        assert_clean_error(&out, says);
    }
    // Logs are read a chunk at a time, and every chunk reaches the reader: all 2 MiB here.
    let noisy = task_id(&run_as(
        &u.alice,
        &[
            "-d",
            "--max-output",
            "2MiB",
            "--on-output-limit",
            "stop",
            "--timeout",
            "20s",
        ],
        "hostile",
        &["flood"],
    ));
    wait_state(&u.alice, &noisy, &["Failed"]);
    let out = wasmos_with(&u.alice, &["logs", &noisy]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        out.stdout.len() >= 2 << 20,
        "got {} bytes",
        out.stdout.len()
    );

    ok(&wasmos_with(
        &u.op,
        &[
            "role",
            "set",
            "acme",
            "--max-tasks",
            "1",
            "--max-timeout",
            "1h",
        ],
    ));
    let shown = ok(&wasmos_with(&u.alice, &["role", "show", "acme"]));
    assert!(shown.contains("1h"), "{shown}");
    // bob sees nothing of acme's role: not its ceilings, not that it exists; and he cannot
    // touch acme's reservations.
    let theirs = wasmos_with(&u.bob, &["role", "show", "acme"]);
    let nobodys = wasmos_with(&u.bob, &["role", "show", "nosuch"]);
    assert_eq!(
        refusal(&theirs).replace("acme", "R"),
        refusal(&nobodys).replace("nosuch", "R")
    );
    let roles = ok(&wasmos_with(&u.bob, &["role", "list", "-o", "json"]));
    assert!(!roles.contains("acme"), "{roles}");
    let reservations = ok(&wasmos_with(&u.bob, &["reservation", "list", "-o", "json"]));
    assert!(!reservations.contains("acme"), "{reservations}");
    assert_clean_error(
        &wasmos_with(&u.bob, &["reservation", "remove", "agent-1", "acme"]),
        "only operators",
    );
    assert_clean_error(
        &run_as(&u.alice, &["--timeout", "2h"], "hello", &[]),
        "timeout 2h",
    );
    let first = task_id(&run_as(&u.alice, &["-d"], "exit-code", &["0", "600000"]));
    assert_clean_error(&run_as(&u.carol, &["-d"], "hello", &[]), "its ceiling");
    // Tenants cannot raise their own ceilings.
    let out = wasmos_with(&u.alice, &["role", "set", "acme", "--max-tasks", "100"]);
    assert!(!out.status.success());
    ok(&wasmos_with(&u.alice, &["task", "kill", &first]));
    // An operator can take the ceilings off again: the defaults hold.
    ok(&wasmos_with(
        &u.op,
        &["role", "set", "acme", "--default-ceilings"],
    ));
    let shown = ok(&wasmos_with(
        &u.alice,
        &["role", "show", "acme", "-o", "json"],
    ));
    assert!(!shown.contains("3600000"), "{shown}");
    ok(&run_as(&u.alice, &["--timeout", "2h"], "hello", &[]));

    // Disk flood: bob's uploads stop at his storage quota, refused with the figures.
    ok(&wasmos_with(
        &u.op,
        &["role", "set", "evil", "--storage-quota", "512KiB"],
    ));
    for s in ["hostile", "fidelity"] {
        ok(&wasmos_with(
            &u.bob,
            &["bundle", "push", sample(s).to_str().unwrap()],
        ));
    }
    let out = wasmos_with(
        &u.bob,
        &["bundle", "push", sample("wordcount").to_str().unwrap()],
    );
    assert_clean_error(&out, "storage quota");
    assert!(
        text(&out.stderr).contains("512KiB"),
        "{}",
        text(&out.stderr)
    );
    // Log flood: his task's output is kept only up to the quota, then his submissions stop.
    let flood = task_id(&run_as(
        &u.bob,
        &["-d", "--max-output", "64MiB", "--timeout", "4s"],
        "hostile",
        &["flood"],
    ));
    wait_state(&u.bob, &flood, &["Failed", "Finished", "Killed"]);
    let stored: u64 = files_under(c.dir.path())
        .iter()
        .filter(|f| {
            f.file_name()
                .is_some_and(|n| n == format!("{flood}.log").as_str())
        })
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .sum();
    assert!(stored < 2 << 20, "{flood} stored {stored} bytes of log");
    let out = run_as(&u.bob, &["-d"], "hostile", &["flood"]);
    assert_clean_error(&out, "storage quota");
    // alice, another tenant, is not touched by bob's full quota.
    ok(&run_as(&u.alice, &[], "hello", &[]));

    // Paging: no answer is unbounded; --limit and --after walk the list.
    let all = json_of(&wasmos_with(&u.op, &["task", "list", "-o", "json"]));
    let total = all.as_array().unwrap().len();
    assert!(total >= 3, "{all}");
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut args = vec!["task", "list", "-o", "json", "--limit", "2"];
        if let Some(a) = &after {
            args.extend(["--after", a.as_str()]);
        }
        let page = json_of(&wasmos_with(&u.op, &args));
        let page = page.as_array().unwrap();
        assert!(page.len() <= 2);
        if page.is_empty() {
            break;
        }
        for t in page {
            seen.push(t["id"].as_u64().unwrap());
        }
        after = Some(format!("t-{}", seen.last().unwrap()));
    }
    assert_eq!(seen.len(), total);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    let running = json_of(&wasmos_with(
        &u.op,
        &["task", "list", "-o", "json", "--state", "killed"],
    ));
    assert!(
        running
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["status"]["state"] == "Killed"),
        "{running}"
    );
}

#[test]
fn a_role_below_its_guarantee_gets_it_back_from_tasks_holding_everything() {
    let c = DevCluster::start_with(2, &["--agent-cpu", "2", "--preemption-grace", "2s"]).unwrap();
    let u = users(&c);
    // bob holds every core with hour-long sleepers.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(task_id(&run_as(
            &u.bob,
            &["-d", "--cpu", "1", "--timeout", "1h"],
            "exit-code",
            &["0", "3600000"],
        )));
    }
    for id in &held {
        wait_state(&u.bob, id, &["Running"]);
    }
    // acme is guaranteed a core: alice's task waits the grace, then one of bob's goes.
    ok(&wasmos_with(
        &u.op,
        &["role", "set", "acme", "--guarantee", "cpu=1"],
    ));
    let back = task_id(&run_as(&u.alice, &["-d", "--cpu", "1"], "hello", &["back"]));
    let info = wait_state(&u.alice, &back, &["Finished", "Failed", "Killed", "Lost"]);
    assert_eq!(info["status"]["state"], "Finished", "{info}");
    let mut preempted = Vec::new();
    let mut agent_of = std::collections::BTreeMap::new();
    for id in &held {
        let info = json_of(&wasmos_with(&u.bob, &["task", "show", id, "-o", "json"]));
        agent_of.insert(info["id"].as_u64().unwrap(), info["agent"].clone());
        if info["status"]["reason"] == "Preempted" {
            preempted.push(info["id"].as_u64().unwrap());
        } else {
            assert_eq!(info["status"]["state"], "Running", "{info}");
        }
    }
    assert_eq!(preempted.len(), 1, "{preempted:?}");
    // Newest first among equal priorities: the newest of bob's tasks on its agent.
    let newest_there = agent_of
        .iter()
        .filter(|(_, a)| **a == agent_of[&preempted[0]])
        .map(|(id, _)| *id)
        .max();
    assert_eq!(newest_there, Some(preempted[0]), "{agent_of:?}");
    // A job says what it waits for: bob takes the free core again, alice's one-task job
    // waits the grace, then another of bob's goes.
    held.push(task_id(&run_as(
        &u.bob,
        &["-d", "--cpu", "1", "--timeout", "1h"],
        "exit-code",
        &["0", "3600000"],
    )));
    wait_state(&u.bob, held.last().unwrap(), &["Running"]);
    let scratch = tempfile::tempdir().unwrap();
    let job = scratch.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"back\"\n[[group]]\nname = \"g\"\nbundle = \"{}\"\ncpu = \"1\"\n",
            sample("hello").display()
        ),
    )
    .unwrap();
    let id = task_id(&wasmos_with(
        &u.alice,
        &["job", "submit", job.to_str().unwrap()],
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = json_of(&wasmos_with(
            &u.alice,
            &["job", "status", &id, "-o", "json"],
        ));
        if status["state"] == "Finished" {
            break;
        }
        assert!(Instant::now() < deadline, "the job never ran: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let gone: Vec<&String> = held
        .iter()
        .filter(|id| {
            json_of(&wasmos_with(&u.bob, &["task", "show", id, "-o", "json"]))["status"]["reason"]
                == "Preempted"
        })
        .collect();
    assert_eq!(gone.len(), 2, "{gone:?}");
    // Without a guarantee, nobody is preempted for carol's role: her task just waits (one
    // core is free now, on one agent; she asks for two).
    ok(&wasmos_with(
        &u.op,
        &["role", "set", "acme", "--guarantee", "cpu=0"],
    ));
    let waiting = task_id(&run_as(&u.carol, &["-d", "--cpu", "2"], "hello", &[]));
    std::thread::sleep(Duration::from_secs(4));
    let info = json_of(&wasmos_with(
        &u.carol,
        &["task", "show", &waiting, "-o", "json"],
    ));
    assert_eq!(info["status"]["state"], "Staging", "{info}");
    for id in held.iter().chain([&waiting]) {
        let _ = wasmos_with(&u.op, &["task", "kill", id]);
    }
}

#[test]
fn tasks_reach_the_agent_host_only_where_an_operator_allows_it() {
    let c = DevCluster::start(1).unwrap();
    let u = users(&c);
    let (port, rx) = wasmos_tests::loopback_listener();
    let target = format!("127.0.0.1:{port}");
    let connect = |grant: &str| run_as(&u.bob, &["--net", grant], "hostile", &["connect", &target]);
    // Granted by its own submitter, the loopback service is still out of reach.
    for grant in [target.as_str(), "127.0.0.1:*", &format!("localhost:{port}")] {
        let out = connect(grant);
        assert_eq!(out.status.code(), Some(1), "{grant}: {}", text(&out.stdout));
        assert!(
            text(&out.stdout).contains("cannot connect"),
            "{}",
            text(&out.stdout)
        );
    }
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "a connection arrived"
    );
    // Tenants cannot open the door themselves.
    let out = wasmos_with(
        &u.bob,
        &["role", "set", "evil", "--egress-allow", "127.0.0.1/32"],
    );
    assert!(!out.status.success());
    // An operator allows that one port for evil: it connects; acme is still kept out.
    let rule = format!("127.0.0.1/32:{port}");
    ok(&wasmos_with(
        &u.op,
        &["role", "set", "evil", "--egress-allow", &rule],
    ));
    let out = connect(&target);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        "hello from a task"
    );
    let out = run_as(
        &u.alice,
        &["--net", &target],
        "hostile",
        &["connect", &target],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    // A deny rule wins over what the task was granted, even off the protected ranges.
    ok(&wasmos_with(
        &u.op,
        &["role", "set", "evil", "--egress-deny", &rule],
    ));
    assert_eq!(connect(&target).status.code(), Some(1));
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
}

#[test]
fn a_submission_flood_waits_in_its_own_tenants_line() {
    let c = DevCluster::start_with(1, &["--tenant-write-rate", "5", "--agent-cpu", "4"]).unwrap();
    let u = users(&c);
    // Bundles first, so the flood is of submissions alone.
    for s in ["noop", "hello"] {
        ok(&wasmos_with(
            &u.bob,
            &["bundle", "push", sample(s).to_str().unwrap()],
        ));
        ok(&wasmos_with(
            &u.alice,
            &["bundle", "push", sample(s).to_str().unwrap()],
        ));
    }
    let flood: Vec<_> = (0..30)
        .map(|_| {
            let bob = u.bob.clone();
            std::thread::spawn(move || {
                let out = run_as(&bob, &["-d", "--cpu", "10m"], "noop", &[]);
                (out, Instant::now())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let out = run_as(&u.alice, &["--cpu", "10m"], "hello", &["through"]);
    let alice_done = Instant::now();
    assert!(ok(&out).contains("through"));
    let mut last = None;
    for t in flood {
        let (out, at) = t.join().unwrap();
        ok(&out);
        last = Some(last.map_or(at, |l: Instant| l.max(at)));
    }
    // Five writes a second: bob's thirty take about six seconds, and alice's run, sent after
    // them, was not queued behind them.
    assert!(
        alice_done < last.unwrap(),
        "alice's run waited for bob's whole flood"
    );
}

#[test]
fn certificates_are_issued_only_for_valid_names_and_never_hand_back_another() {
    let c = DevCluster::start(1).unwrap();
    let pki = c.dir.path().join("pki");
    let issue = |who: &[&str]| {
        let mut args = vec!["cert", "issue", "--pki", pki.to_str().unwrap()];
        args.extend(who);
        wasmos_with(&c.config(), &args)
    };
    for bad in [
        &["--tenant", "ACME/x"][..],
        &["--tenant", "acme/.."],
        &["--tenant", "acme/./x"],
        &["--tenant", "acme//x"],
        &["--tenant", "default/x"],
        &["--agent", "ca"],
        &["--operator", "secrets"],
    ] {
        let out = issue(bad);
        assert!(
            !out.status.success(),
            "{bad:?} was issued: {}",
            text(&out.stdout)
        );
        assert!(!text(&out.stdout).contains(".key"), "{bad:?}");
    }
    // Dotted names are names (`host.example`), valid at issuance as at the handshake.
    let out = issue(&["--agent", "web.example"]);
    assert!(ok(&out).contains("web.example.pem"));
    // Names of different identities can meet in one file name: never the other's files.
    for (first, second, uri) in [
        (
            ["--agent", "acme-x"],
            ["--tenant", "acme/x"],
            "wasmos://tenant/acme/x",
        ),
        (
            ["--tenant", "web/1"],
            ["--agent", "web-1"],
            "wasmos://agent/web-1",
        ),
    ] {
        ok(&issue(&first));
        let out = issue(&second);
        if out.status.success() {
            let cert = ok(&out).lines().next().unwrap().to_string();
            let pem = std::fs::read_to_string(cert).unwrap();
            let held = wasmos_net::pki::identity_of_pem(&pem).map(|i| i.to_uri());
            assert_eq!(held.as_deref(), Some(uri));
        } else {
            assert_clean_error(&out, "already holds");
        }
    }
}

/// `wasmos framework list/teardown`: a tenant's users see its frameworks, other tenants see
/// nothing of them (a teardown reads as for an unknown id); only the owner or an operator tears
/// one down, which kills its tasks; the master's own frameworks are not torn down.
#[test]
fn operators_and_owners_tear_down_frameworks_that_others_cannot_see() {
    let c = DevCluster::start(1).unwrap();
    let u = users(&c);
    let hash = ok(&wasmos_with(
        &u.alice,
        &["bundle", "push", sample("exit-code").to_str().unwrap()],
    ))
    .trim()
    .to_string();
    let mut framework = std::process::Command::new(wasmos_tests::example_bin("framework"))
        .arg("--config")
        .arg(&u.alice)
        .args([hash.as_str(), "1", "0", "600000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = framework.stdout.take().unwrap();
    let (mut id, mut task) = (None, None);
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("subscribed as ") {
            id = rest.split_whitespace().next().map(str::to_string);
        }
        if let Some(rest) = line.strip_prefix("launched ") {
            task = Some(rest.trim().to_string());
            break;
        }
    }
    let (id, task) = (id.unwrap(), task.unwrap());
    wait_state(&u.alice, &task, &["Running"]);
    // alice's `wasmos run` makes the master's own framework for role acme.
    ok(&run_as(&u.alice, &[], "hello", &[]));

    let listed = |who: &Path| json_of(&wasmos_with(who, &["framework", "list", "-o", "json"]));
    let ids = |list: &serde_json::Value| -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|f| format!("fw-{}", f["id"]))
            .collect()
    };
    let theirs = listed(&u.alice);
    assert!(ids(&theirs).contains(&id), "{theirs}");
    let mine = theirs
        .as_array()
        .unwrap()
        .iter()
        .find(|f| format!("fw-{}", f["id"]) == id)
        .unwrap();
    assert_eq!(mine["live_tasks"], 1, "{mine}");
    assert_eq!(mine["owner"], "wasmos://tenant/acme/alice");
    assert!(ids(&listed(&u.carol)).contains(&id));
    assert!(ids(&listed(&u.bob)).is_empty(), "{}", listed(&u.bob));
    let builtin = theirs
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["owner"] == "wasmos://master/builtin")
        .map(|f| format!("fw-{}", f["id"]))
        .expect("the master's framework for acme is listed");

    // bob learns nothing: his refusal reads like one for an id nobody has.
    let probe = wasmos_with(&u.bob, &["framework", "teardown", &id]);
    let nobody = wasmos_with(&u.bob, &["framework", "teardown", "fw-999"]);
    assert_eq!(
        refusal(&probe).replace(&id, "ID"),
        refusal(&nobody).replace("fw-999", "ID")
    );
    assert_clean_error(
        &wasmos_with(&u.carol, &["framework", "teardown", &id]),
        "only its owner or an operator",
    );
    assert_clean_error(
        &wasmos_with(&u.alice, &["framework", "teardown", &builtin]),
        "the master's own",
    );
    assert_eq!(
        json_of(&wasmos_with(
            &u.alice,
            &["task", "show", &task, "-o", "json"]
        ))["status"]["state"],
        "Running"
    );

    // An operator ends it: its task is killed, it is gone from the list, and the process,
    // whose subscription is refused from then on, exits.
    ok(&wasmos_with(&u.op, &["framework", "teardown", &id]));
    let info = wait_state(&u.alice, &task, &["Killed", "Failed", "Finished", "Lost"]);
    assert_eq!(info["status"]["state"], "Killed", "{info}");
    assert_eq!(info["status"]["reason"], "FrameworkRemoved", "{info}");
    assert!(!ids(&listed(&u.alice)).contains(&id));
    let deadline = Instant::now() + Duration::from_secs(30);
    while framework.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = framework.kill();
            panic!("the torn-down framework kept running");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_clean_error(
        &wasmos_with(&u.op, &["framework", "teardown", &id]),
        "was removed",
    );
    let probe = wasmos_with(&u.bob, &["framework", "teardown", &id]);
    let nobody = wasmos_with(&u.bob, &["framework", "teardown", "fw-999"]);
    assert_eq!(
        refusal(&probe).replace(&id, "ID"),
        refusal(&nobody).replace("fw-999", "ID"),
        "a removed framework of another tenant reads as unknown too"
    );
}

/// Reads and `logs -f` streams are bounded per tenant too: bob's burst of listings past his
/// read rate is refused, saying so, while alice's reads go through; his second follow is
/// refused until the first reader goes away.
#[test]
fn reads_and_log_streams_wait_in_their_own_tenants_line() {
    let c =
        DevCluster::start_with(1, &["--tenant-read-rate", "2", "--tenant-follows", "1"]).unwrap();
    let u = users(&c);
    let sleeper = task_id(&run_as(&u.bob, &["-d"], "exit-code", &["0", "600000"]));
    let follow = || {
        wasmos_cmd(&u.bob, &["logs", "-f", &sleeper])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = follow();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first follow ended"
    );
    let second = follow().wait_with_output().unwrap();
    assert_clean_error(&second, "already follows 1 logs or event streams");
    // An attached `wasmos run` is not failed for it: it waits for its task to end, then
    // prints the output.
    let attached = run_as(&u.bob, &[], "hello", &["over", "the", "limit"]);
    assert!(ok(&attached).contains("over the limit"));
    assert!(text(&attached.stderr).contains("already follows 1 logs or event streams"));
    // The reader goes away: its place comes back (at the latest when its connection times
    // out).
    let _ = first.kill();
    let _ = first.wait();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let mut again = follow();
        std::thread::sleep(Duration::from_secs(1));
        let running = again.try_wait().unwrap().is_none();
        let _ = again.kill();
        let _ = again.wait();
        if running {
            break;
        }
        assert!(Instant::now() < deadline, "the place never came back");
    }

    // A burst of 30 listings: past a few seconds' worth of bob's read rate they are refused.
    std::thread::sleep(Duration::from_secs(3));
    let burst: Vec<_> = (0..30)
        .map(|_| {
            let bob = u.bob.clone();
            std::thread::spawn(move || wasmos_with(&bob, &["task", "list"]))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    ok(&wasmos_with(&u.alice, &["task", "list"]));
    let alice_took = started.elapsed();
    let outs: Vec<Output> = burst.into_iter().map(|t| t.join().unwrap()).collect();
    let refused: Vec<&Output> = outs.iter().filter(|o| !o.status.success()).collect();
    assert!(
        !refused.is_empty(),
        "every one of bob's 30 reads went through"
    );
    assert!(refused.len() < 30, "none of bob's reads went through");
    for out in refused {
        assert_clean_error(out, "reads per second");
    }
    assert!(
        alice_took < Duration::from_secs(3),
        "alice's read waited behind bob's: {alice_took:?}"
    );
    ok(&wasmos_with(&u.bob, &["task", "kill", &sleeper]));
}
