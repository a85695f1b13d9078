//! deploy/ works as written: the commands in the compose file, the systemd units and the
//! launchd plists are run as they are, as real processes on loopback (only addresses and paths
//! are moved into a temporary directory), with certificates from deploy/issue-certs.sh, and
//! each forms a cluster that runs a task. The units pass `systemd-analyze verify` with no
//! warning and a hardening exposure of at most 2.0 (`--threshold=20`: systemd counts in tenths),
//! and the plists are property lists.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use wasmos_tests::{Logged, sample, text, wasmos_bin, wasmos_cmd};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Runs deploy/issue-certs.sh into `pki` for these masters.
fn issue_certs(pki: &Path, masters: &str) {
    let out = Command::new("sh")
        .arg(deploy().join("issue-certs.sh"))
        .arg(pki)
        .arg(masters)
        .arg("2")
        .env("WASMOS", wasmos_bin())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    for f in [
        "ca.pem",
        "m1.pem",
        "agent-2.key",
        "admin.pem",
        "secrets.key",
    ] {
        assert!(pki.join(f).is_file(), "{f} was not issued");
    }
    // Run again, it keeps what exists: the CA (and so every certificate) stays valid.
    let ca = std::fs::read(pki.join("ca.pem")).unwrap();
    let again = Command::new("sh")
        .arg(deploy().join("issue-certs.sh"))
        .arg(pki)
        .arg(masters)
        .env("WASMOS", wasmos_bin())
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(std::fs::read(pki.join("ca.pem")).unwrap(), ca);
}

/// Starts `wasmos ARGS` with its stderr collected.
fn start(args: &[String]) -> Logged {
    let mut cmd = Command::new(wasmos_bin());
    cmd.args(args)
        .env("RUST_LOG", "info")
        .env_remove("WASMOS_CONFIG");
    Logged::spawn(cmd)
}

/// Waits until `agents` agents are active, then runs the hello sample through the cluster.
fn cluster_works(config: &Path, agents: usize, procs: &[Logged]) {
    let logs = || {
        procs
            .iter()
            .map(Logged::log)
            .collect::<Vec<_>>()
            .join("\n=====\n")
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = wasmos_cmd(config, &["agent", "list", "-o", "json"])
            .output()
            .unwrap();
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let active = v
                .as_array()
                .map_or(0, |a| a.iter().filter(|x| x["state"] == "Active").count());
            if active == agents {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{agents} agents not active in 60 s: {}\n{}",
            text(&out.stderr),
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = wasmos_cmd(config, &["run"])
        .arg(sample("hello"))
        .args(["--", "deploy"])
        .output()
        .unwrap();
    assert!(
        out.status.success() && text(&out.stdout).contains("deploy"),
        "{}{}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        logs()
    );
}

/// The `command:` lists of compose.yaml's services, by service name.
fn compose_commands(compose: &str) -> Vec<(String, Vec<String>)> {
    let mut service = String::new();
    let mut out = Vec::new();
    for line in compose.lines() {
        if let Some(name) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':'))
            && !name.starts_with(' ')
        {
            service = name.to_string();
        }
        if let Some(list) = line.trim().strip_prefix("command: ") {
            out.push((service.clone(), serde_json::from_str(list).unwrap()));
        }
    }
    out
}

#[test]
fn the_compose_files_group_of_three_masters_and_two_agents_forms() {
    let compose = std::fs::read_to_string(deploy().join("container/compose.yaml")).unwrap();
    let work = tempfile::tempdir().unwrap();
    let pki = work.path().join("pki");
    // The compose network 172.28.0.0/24, moved to loopback.
    let moved = |s: &str| {
        s.replace("172.28.0.", "127.28.0.")
            .replace("/pki/", &format!("{}/", pki.display()))
    };
    let commands = compose_commands(&compose);
    let (_, certs_args) = commands.iter().find(|(s, _)| s == "certs").unwrap();
    issue_certs(&pki, &moved(&certs_args[1]));

    let mut procs = Vec::new();
    for (service, args) in &commands {
        if service == "certs" {
            continue;
        }
        let state = work.path().join(service);
        let args: Vec<String> = args
            .iter()
            .map(|a| moved(a).replace("/var/lib/wasmos", state.to_str().unwrap()))
            .collect();
        procs.push(start(&args));
    }
    assert_eq!(procs.len(), 5, "{commands:?}");
    cluster_works(&pki.join("client.toml"), 2, &procs);
    let status = wasmos_cmd(&pki.join("client.toml"), &["cluster", "status"])
        .output()
        .unwrap();
    let shown = text(&status.stdout);
    assert_eq!(shown.matches("127.28.0.1").count(), 3, "{shown}");
}

/// `ExecStart=` of a unit, its continuation lines joined, split into words.
fn exec_start(unit: &str) -> Vec<String> {
    let joined = unit.replace("\\\n", " ");
    let line = joined
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    line.split_whitespace().map(String::from).collect()
}

#[test]
fn the_systemd_units_verify_and_run() {
    let work = tempfile::tempdir().unwrap();
    let pki = work.path().join("pki");
    let master_addr = "127.29.0.1:7433";
    issue_certs(&pki, master_addr);
    // The paths the units name, moved here; the master's certificate is m1's.
    let moved = |w: &str, state: &Path| {
        w.replace("/usr/local/bin/wasmos", wasmos_bin().to_str().unwrap())
            .replace("${STATE_DIRECTORY}", state.to_str().unwrap())
            .replace("/etc/wasmos/master.", &format!("{}/m1.", pki.display()))
            .replace("/etc/wasmos/agent.", &format!("{}/agent-1.", pki.display()))
            .replace("/etc/wasmos/", &format!("{}/", pki.display()))
            .replace("0.0.0.0:7433", master_addr)
            .replace("${WASMOS_MASTERS}", master_addr)
    };
    let mut procs = Vec::new();
    for name in ["wasmos-master.service", "wasmos-agent.service"] {
        let unit = std::fs::read_to_string(deploy().join("systemd").join(name)).unwrap();
        let state = work.path().join("state").join(name);
        let words: Vec<String> = exec_start(&unit)
            .iter()
            .filter(|w| !w.starts_with("$WASMOS_"))
            .map(|w| moved(w, &state))
            .collect();
        assert_eq!(words[0], wasmos_bin().to_str().unwrap());
        procs.push(start(&words[1..]));

        // systemd's own checks, on the unit with its binary moved to the one built here.
        if Path::new("/usr/bin/systemd-analyze").is_file() {
            let copy = work.path().join(name);
            std::fs::write(
                &copy,
                unit.replace("/usr/local/bin/wasmos", wasmos_bin().to_str().unwrap()),
            )
            .unwrap();
            let verify = Command::new("systemd-analyze")
                .arg("verify")
                .arg(&copy)
                .output()
                .unwrap();
            assert!(
                verify.status.success() && verify.stderr.is_empty(),
                "{name}: {}",
                text(&verify.stderr)
            );
            let security = Command::new("systemd-analyze")
                .args(["security", "--offline=true", "--threshold=20"])
                .arg(&copy)
                .output()
                .unwrap();
            assert!(
                security.status.success(),
                "{name}: {}",
                text(&security.stdout)
            );
        } else {
            assert_ne!(
                std::env::var("WASMOS_DEPLOY").as_deref(),
                Ok("required"),
                "systemd-analyze is missing"
            );
        }
    }
    let config = work.path().join("pki/client.toml");
    cluster_works(&config, 1, &procs);
}

/// The `<string>`s of a plist's ProgramArguments array.
fn program_arguments(plist: &str) -> Vec<String> {
    let start = plist.find("<key>ProgramArguments</key>").unwrap();
    let array = &plist[start..plist[start..].find("</array>").unwrap() + start];
    array
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("<string>")?
                .strip_suffix("</string>")
                .map(String::from)
        })
        .collect()
}

#[test]
fn the_launchd_plists_are_property_lists_that_run() {
    let work = tempfile::tempdir().unwrap();
    let pki = work.path().join("pki");
    let master_addr = "127.30.0.1:7433";
    issue_certs(&pki, master_addr);
    let mut procs = Vec::new();
    for (name, certs) in [("master", "m1"), ("agent", "agent-1")] {
        let path = deploy().join(format!("launchd/dev.wasmos.{name}.plist"));
        // A property list, by Python's own reader, with the keys launchd needs.
        let check = Command::new("python3")
            .arg("-c")
            .arg(
                "import plistlib,sys; p=plistlib.load(open(sys.argv[1],'rb')); \
                 assert p['Label'].startswith('dev.wasmos.'), p; \
                 assert p['ProgramArguments'][0]=='/usr/local/bin/wasmos', p; \
                 assert p['RunAtLoad'] is True and p['UserName']=='_wasmos', p",
            )
            .arg(&path)
            .output()
            .unwrap();
        assert!(check.status.success(), "{name}: {}", text(&check.stderr));

        let plist = std::fs::read_to_string(&path).unwrap();
        let state = work.path().join(name);
        let args: Vec<String> = program_arguments(&plist)
            .iter()
            .map(|a| {
                a.replace("/usr/local/var/wasmos", state.to_str().unwrap())
                    .replace(
                        &format!("/usr/local/etc/wasmos/{name}."),
                        &format!("{}/{certs}.", pki.display()),
                    )
                    .replace("/usr/local/etc/wasmos/", &format!("{}/", pki.display()))
                    .replace("0.0.0.0:7433", master_addr)
                    .replace("10.0.0.1:7433", master_addr)
                    .replace("10.0.0.", "127.30.1.")
            })
            .collect();
        procs.push(start(&args[1..]));
    }
    cluster_works(&pki.join("client.toml"), 1, &procs);
}
