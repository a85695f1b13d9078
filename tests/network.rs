//! Network grants: a task reaches exactly the `--net` destinations it was given, over real
//! loopback sockets, and nothing without one. Agents protect loopback whatever a task is
//! granted, so this cluster's agent is told to allow it (`--egress-allow`); `tests/tenancy.rs`
//! checks the protection itself.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use wasmos_tests::{DevCluster, assert_clean_error, sample, text};

#[test]
fn tasks_connect_only_where_granted() {
    let c = DevCluster::start_with(1, &["--egress-allow", "127.0.0.1/32"]).unwrap();
    let (port, rx) = wasmos_tests::loopback_listener();
    let target = format!("127.0.0.1:{port}");
    let connect = |net: &[&str]| {
        let mut cmd = c.cmd(&["run"]);
        for n in net {
            cmd.args(["--net", n]);
        }
        cmd.arg(sample("hostile")).args(["--", "connect", &target]);
        cmd.output().unwrap()
    };

    // Granted by exact address, by any-port rule and by name.
    for grant in [target.as_str(), "127.0.0.1:*", &format!("localhost:{port}")] {
        let out = connect(&[grant]);
        assert_eq!(out.status.code(), Some(0), "{grant}: {}", text(&out.stdout));
        let got = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(got, "hello from a task");
    }
    // No grant, or a grant for another port: denied inside the sandbox, nothing arrives.
    for net in [&[][..], &["127.0.0.1:1"][..]] {
        let out = connect(net);
        assert_eq!(out.status.code(), Some(1), "{net:?}: {}", text(&out.stdout));
        assert!(text(&out.stdout).contains("cannot connect"));
    }
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());

    // The grant is shown, and a malformed one is refused before anything is sent.
    let shown = text(&c.cli(&["task", "show", "t-1"]).unwrap().stdout);
    assert!(shown.contains(&format!("network:    {target}")), "{shown}");
    let out = c
        .cmd(&["run", "--net", "nowhere"])
        .arg(sample("hello"))
        .output()
        .unwrap();
    assert_clean_error(&out, "not a network grant");
}
