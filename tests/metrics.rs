//! Prometheus metrics against a real dev cluster and a real Prometheus server (Debian's
//! `prometheus` package): `promtool check metrics` passes on the master's and the agents'
//! endpoints, Prometheus scrapes both (the master's over mutual TLS with an operator
//! certificate) and answers queries over its HTTP API with the cluster's figures, and a tenant
//! is refused the master's metrics.
//!
//! Without Prometheus these tests say so and pass, unless `WASMOS_PROMETHEUS=required` (as
//! `.ci/run` sets it after installing the package).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use wasmos_tests::{
    DevCluster, Logged, PYTHON_HTTPS_CLIENT, eventually, free_tcp_port, ok, sample, text,
    tool_present,
};

fn have(tool: &str) -> bool {
    tool_present(tool, "WASMOS_PROMETHEUS", "prometheus")
}

/// `GET path` on the master's HTTPS address as `config`'s identity: status and body.
fn https_get(config: &Path, path: &str) -> (u16, String) {
    let probe = format!(
        "{PYTHON_HTTPS_CLIENT}{}",
        r#"
c = connect()
c.request("GET", sys.argv[2])
r = c.getresponse()
sys.stdout.write(str(r.status) + "\n" + r.read().decode())
"#
    );
    let out = Command::new("python3")
        .args(["-c", &probe])
        .arg(config)
        .arg(path)
        .output()
        .unwrap();
    let said = ok(&out);
    let (status, body) = said.split_once('\n').unwrap();
    (status.parse().unwrap(), body.to_string())
}

fn http_get(url: &str) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())",
            url,
        ])
        .output()
        .unwrap();
    ok(&out)
}

/// `promtool check metrics` on `text`: its complaints, if any.
fn promtool_check(text_in: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text_in.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", text(&out.stdout), text(&out.stderr)))
    }
}

/// The value of `name{labels}` in a metrics text (the first series whose line starts so).
fn sample_value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn prometheus_scrapes_the_masters_and_agents_metrics() {
    if !have("prometheus") || !have("promtool") {
        return;
    }
    let c = DevCluster::start_with(1, &["--agent-metrics-listen", "127.0.0.1:0"]).unwrap();
    let agent_metrics = {
        let log = c.log_text();
        let at = log
            .find("agents' metrics on ")
            .expect("the banner names the agents' metrics");
        log[at + "agents' metrics on ".len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    for _ in 0..2 {
        let out = c.run(&[], "hello", &[]).unwrap();
        ok(&out);
    }
    let out = c.run(&[], "exit-code", &["3"]).unwrap();
    assert_eq!(out.status.code(), Some(3));
    // Tasks end on the agent a moment before the master records it.
    assert!(eventually(Duration::from_secs(10), || {
        let (_, m) = https_get(&c.config(), "/metrics");
        sample_value(&m, r#"wasmos_tasks{state="finished",reason=""}"#) == Some(3.0)
    }));

    // Both endpoints pass promtool, and say what happened.
    let (status, master) = https_get(&c.config(), "/metrics");
    assert_eq!(status, 200, "{master}");
    promtool_check(&master).unwrap_or_else(|e| panic!("{e}\n{master}"));
    assert_eq!(sample_value(&master, "wasmos_raft_leader"), Some(1.0));
    assert_eq!(
        sample_value(&master, r#"wasmos_agent_connected{agent="agent-1"}"#),
        Some(1.0)
    );
    assert!(
        master.contains("wasmos_raft_write_seconds_bucket"),
        "{master}"
    );
    assert!(
        master.contains("wasmos_task_start_seconds_count"),
        "{master}"
    );
    assert!(
        master.contains(r#"wasmos_role_weight{role="default"} 1"#),
        "{master}"
    );
    let agent = http_get(&agent_metrics);
    promtool_check(&agent).unwrap_or_else(|e| panic!("{e}\n{agent}"));
    assert_eq!(
        sample_value(
            &agent,
            r#"wasmos_agent_tasks_ended_total{agent="agent-1",state="finished",reason=""}"#
        ),
        Some(3.0),
        "{agent}"
    );
    // hello twice (the second found compiled), exit-code once.
    assert_eq!(
        sample_value(
            &agent,
            r#"wasmos_agent_compile_cache_hits_total{agent="agent-1"}"#
        ),
        Some(1.0),
        "{agent}"
    );
    assert_eq!(
        sample_value(&agent, r#"wasmos_agent_compiles_total{agent="agent-1"}"#),
        Some(2.0),
        "{agent}"
    );

    // Metrics name every tenant and agent: not for tenants.
    let tenant = c.user_config("wasmos://tenant/acme/alice");
    let (status, body) = https_get(&tenant, "/metrics");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("for operators"), "{body}");

    // A real Prometheus scrapes both, the master over mutual TLS as the operator.
    let dir = tempfile::tempdir().unwrap();
    let pki = c.dir.path().join("pki");
    let cfg_text = std::fs::read_to_string(c.config()).unwrap();
    let https = cfg_text
        .lines()
        .find_map(|l| l.strip_prefix("http = "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    let port = free_tcp_port();
    let config = format!(
        r#"
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: wasmos-master
    scheme: https
    tls_config:
      ca_file: {ca}
      cert_file: {cert}
      key_file: {key}
      server_name: master.wasmos
    static_configs:
      - targets: ["{https}"]
  - job_name: wasmos-agent
    static_configs:
      - targets: ["{agent}"]
"#,
        ca = pki.join("ca.pem").display(),
        cert = pki.join("operator.pem").display(),
        key = pki.join("operator.key").display(),
        agent = agent_metrics
            .trim_start_matches("http://")
            .trim_end_matches("/metrics"),
    );
    let config_file = dir.path().join("prometheus.yml");
    std::fs::write(&config_file, config).unwrap();
    let check = Command::new("promtool")
        .args(["check", "config"])
        .arg(&config_file)
        .output()
        .unwrap();
    ok(&check);
    let mut prom = Command::new("prometheus");
    prom.arg(format!("--config.file={}", config_file.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
    let prom = Logged::spawn(prom);
    let query = |q: &str| -> Vec<Value> {
        let url = format!(
            "http://127.0.0.1:{port}/api/v1/query?query={}",
            q.replace('{', "%7B")
                .replace('}', "%7D")
                .replace('"', "%22")
                .replace('=', "%3D")
                .replace(' ', "%20")
        );
        let out = Command::new("python3")
            .args([
                "-c",
                "import sys, urllib.request\ntry:\n  sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())\nexcept Exception as e:\n  sys.stdout.write('{}')",
                &url,
            ])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    };
    let value = |r: &Value| -> f64 { r["value"][1].as_str().unwrap().parse().unwrap() };
    assert!(
        eventually(Duration::from_secs(60), || {
            let up = query("up");
            up.len() == 2 && up.iter().all(|r| value(r) == 1.0)
        }),
        "Prometheus did not scrape both targets: {:?}\n{}",
        query("up"),
        prom.log()
    );
    let finished = query(r#"wasmos_tasks{state="finished"}"#);
    assert_eq!(finished.iter().map(value).sum::<f64>(), 3.0, "{finished:?}");
    let ended = query("sum(wasmos_agent_tasks_ended_total)");
    assert_eq!(ended.first().map(value), Some(3.0), "{ended:?}");
    let leader = query("wasmos_raft_leader");
    assert_eq!(leader.first().map(value), Some(1.0), "{leader:?}");
    let started = query("wasmos_task_start_seconds_count");
    assert_eq!(started.first().map(value), Some(3.0), "{started:?}");

    // Every series the Grafana dashboard in deploy/ plots is one the endpoints serve (with a
    // tenant's task running, so there is a tenant and a task to count).
    let out = Command::new(wasmos_tests::wasmos_bin())
        .arg("--config")
        .arg(&tenant)
        .args(["run", "-d", "--timeout", "60s"])
        .arg(sample("spin"))
        .output()
        .unwrap();
    let spinning = ok(&out).trim().to_string();
    let mut agent = String::new();
    assert!(eventually(Duration::from_secs(20), || {
        agent = http_get(&agent_metrics);
        agent.contains("wasmos_agent_task_cpu_seconds_total{")
    }));
    let (_, master) = https_get(&c.config(), "/metrics");
    let dashboard = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/wasmos.json"),
    )
    .unwrap();
    let dashboard: Value = serde_json::from_str(&dashboard).unwrap();
    let mut names = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("wasmos_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                names.insert(name);
            }
        }
    }
    assert!(names.len() > 10, "{names:?}");
    for name in &names {
        let served = |text: &str| {
            text.lines()
                .any(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
        };
        assert!(
            served(&master) || served(&agent),
            "the dashboard plots {name}, which no endpoint serves"
        );
    }
    ok(&c.cli(&["task", "kill", &spinning]).unwrap());
}
