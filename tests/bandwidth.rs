//! Network bandwidth as a resource: a task's `net` request is the rate its sockets carry, each
//! way, measured over real loopback connections; a task that asked for none gets a trickle on an
//! agent that manages bandwidth; a request no agent has is never placed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use wasmos_tests::{DevCluster, sample, text};

const KIB: f64 = 1024.0;

/// A loopback listener that reads one connection to its end: bytes and seconds from accept to
/// the end of the stream.
fn sink() -> (u16, mpsc::Receiver<(u64, f64)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let start = Instant::now();
            let (mut buf, mut total) = (vec![0_u8; 64 << 10], 0_u64);
            while let Ok(n @ 1..) = s.read(&mut buf) {
                total += n as u64;
            }
            let _ = tx.send((total, start.elapsed().as_secs_f64()));
        }
    });
    (port, rx)
}

/// A loopback listener that writes `bytes` to one connection as fast as it is read.
fn source(bytes: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.write_all(&vec![0x5a_u8; bytes]);
        }
    });
    port
}

fn assert_near(what: &str, measured: f64, rate: f64) {
    let ratio = measured / rate;
    assert!(
        (0.9..=1.1).contains(&ratio),
        "{what}: {measured:.0} bytes/s is {ratio:.3} of the {rate:.0} bytes/s asked for"
    );
}

/// The rate the netio sample printed: "... bytes in S s: R bytes/s".
fn printed_rate(stdout: &str) -> f64 {
    let rate = stdout
        .rsplit(": ")
        .next()
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok());
    rate.unwrap_or_else(|| panic!("no rate in {stdout:?}"))
}

#[test]
fn tasks_get_the_bandwidth_they_asked_for() {
    let c = DevCluster::start_with(
        1,
        &[
            "--agent-resource",
            "net=8MiB",
            "--egress-allow",
            "127.0.0.1/32",
        ],
    )
    .unwrap();
    let netio = sample("netio");
    let rate = 512.0 * KIB;

    // `netio send` of `bytes` to a sink, with `request` (`--resource ...`, or none): the rate
    // measured where the bytes arrive.
    let send = |request: &[&str], bytes: u64| -> f64 {
        let (port, got) = sink();
        let target = format!("127.0.0.1:{port}");
        let out = c
            .cmd(&["run", "--net", &target])
            .args(request)
            .arg(&netio)
            .args(["--", "send", &target, &bytes.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let (total, secs) = got.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(total, bytes);
        total as f64 / secs
    };

    // Egress: 4 s at 512 KiB/s.
    let egress = send(&["--resource", "net=512KiB"], (4.0 * rate) as u64);
    assert_near("egress", egress, rate);

    // Ingress, measured by the task as it reads: the sender's socket buffers fill at once, so
    // only the reader sees the pace.
    let port = source((4.0 * rate) as usize);
    let target = format!("127.0.0.1:{port}");
    let out = c
        .cmd(&["run", "--net", &target, "--resource", "net=512KiB"])
        .arg(&netio)
        .args(["--", "recv", &target])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("recv {} bytes", 4 * 512 * 1024)),
        "{stdout}"
    );
    assert_near("ingress", printed_rate(&stdout), rate);

    // The request is part of the task's resources.
    let shown = text(&c.cli(&["task", "show", "t-1"]).unwrap().stdout);
    assert!(shown.contains("net 512KiB/s"), "{shown}");
    let agents = text(&c.cli(&["agent", "list"]).unwrap().stdout);
    assert!(agents.contains("0B/8MiB"), "{agents}");

    // Asking for none on an agent that manages bandwidth: 64 KiB/s, not the whole link.
    assert_near("unrequested", send(&[], 192 << 10), 64.0 * KIB);
}

#[test]
fn bandwidth_is_allocated_like_any_resource() {
    let c = DevCluster::start_with(1, &["--agent-resource", "net=1MiB"]).unwrap();
    // Two tasks of 600 KiB/s cannot share a 1 MiB/s agent: the second waits for the first.
    let first = c
        .cmd(&[
            "run",
            "--detach",
            "--resource",
            "net=600KiB",
            "--timeout",
            "4s",
        ])
        .arg(sample("spin"))
        .output()
        .unwrap();
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(wasmos_tests::eventually(Duration::from_secs(20), || {
        let a = text(&c.cli(&["agent", "list"]).unwrap().stdout);
        a.contains("600KiB/1MiB")
    }));
    let second = c
        .cmd(&["run", "--detach", "--resource", "net=600KiB"])
        .arg(sample("hello"))
        .output()
        .unwrap();
    assert!(second.status.success(), "{}", text(&second.stderr));
    thread::sleep(Duration::from_millis(1500));
    let state = |id: &str| {
        let t = c.json(&["task", "show", id, "-o", "json"]).unwrap();
        let placed = !t["agent"].is_null();
        let state = t["status"]["state"].as_str().unwrap_or_default();
        format!("{state}{}", if placed { "" } else { ", unplaced" })
    };
    assert_eq!(state("t-2"), "Staging, unplaced");
    assert!(wasmos_tests::eventually(Duration::from_secs(30), || {
        state("t-2") == "Finished"
    }));
    assert_eq!(state("t-1"), "Failed");

    // More than any agent has is refused or left waiting, never placed.
    let third = c
        .cmd(&["run", "--detach", "--resource", "net=2MiB"])
        .arg(sample("hello"))
        .output()
        .unwrap();
    assert!(third.status.success(), "{}", text(&third.stderr));
    assert!(wasmos_tests::eventually(Duration::from_secs(10), || {
        state("t-3") == "Error, unplaced"
    }));
    let t3 = c.json(&["task", "show", "t-3", "-o", "json"]).unwrap();
    let why = t3["status"]["message"].as_str().unwrap_or_default();
    assert!(why.contains("net"), "{why}");
}
