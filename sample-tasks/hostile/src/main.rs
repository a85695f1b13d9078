//! Misbehaving on purpose: each case (first argument) attacks one limit or capability of the
//! sandbox. Probing cases exit 0 when everything they tried was denied and 1 when something
//! leaked; the others are meant to be stopped by the platform. See docs/tasks.md.

use std::io::{Read, Write};

fn main() {
    let case = std::env::args().nth(1).unwrap_or_default();
    match case.as_str() {
        "loop" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "recurse" => {
            println!("{}", recurse(std::hint::black_box(1)));
        }
        "alloc-huge" => {
            let v = vec![1u8; 1 << 30];
            println!("{}", std::hint::black_box(&v).len());
        }
        "alloc-loop" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 64 << 10]);
                std::hint::black_box(&hoard);
            }
        }
        "flood" => {
            let line = "x".repeat(1023);
            let mut out = std::io::stdout().lock();
            loop {
                let _ = writeln!(out, "{line}");
            }
        }
        "flood-stderr" => loop {
            eprintln!("{}", "e".repeat(4095));
        },
        "sleep" => std::thread::sleep(std::time::Duration::from_secs(3600)),
        "abort" => std::process::abort(),
        "panic" => panic!("hostile task panics on purpose"),
        "stdin" => {
            let mut buf = Vec::new();
            let n = std::io::stdin().read_to_end(&mut buf).unwrap_or(0);
            println!("read {n} bytes from stdin");
            std::process::exit(if n == 0 { 0 } else { 1 });
        }
        "env" => {
            let vars: Vec<(String, String)> = std::env::vars().collect();
            println!("{} environment variables", vars.len());
            std::process::exit(if vars.is_empty() { 0 } else { 1 });
        }
        "fs" => {
            let mut leaked = Vec::new();
            for path in ["/etc/passwd", "/", ".", "..", "../..", "/proc/self/environ", "C:\\Windows"] {
                if std::fs::read_dir(path).is_ok() || std::fs::read(path).is_ok() {
                    leaked.push(path);
                }
            }
            if std::fs::write("/tmp/hostile-was-here", b"x").is_ok() {
                leaked.push("write /tmp");
            }
            println!("reachable: {leaked:?}");
            std::process::exit(if leaked.is_empty() { 0 } else { 1 });
        }
        "net" => {
            let mut leaked = Vec::new();
            for addr in ["127.0.0.1:22", "127.0.0.1:7433", "[::1]:80"] {
                if std::net::TcpStream::connect(addr).is_ok() {
                    leaked.push(addr.to_string());
                }
            }
            if std::net::UdpSocket::bind("0.0.0.0:0").is_ok() {
                leaked.push("udp bind".to_string());
            }
            if std::net::TcpListener::bind("0.0.0.0:0").is_ok() {
                leaked.push("tcp listen".to_string());
            }
            println!("reachable: {leaked:?}");
            std::process::exit(if leaked.is_empty() { 0 } else { 1 });
        }
        "connect" => {
            // Not an attack: the probe tests use to check a network grant. Exit 0 connected,
            // 1 refused or denied.
            let addr = std::env::args().nth(2).unwrap_or_default();
            match std::net::TcpStream::connect(&addr) {
                Ok(mut s) => {
                    let _ = s.write_all(b"hello from a task");
                    println!("connected to {addr}");
                }
                Err(e) => {
                    println!("cannot connect to {addr}: {e}");
                    std::process::exit(1);
                }
            }
        }
        "cwd" => {
            let cwd = std::env::current_dir();
            println!("current dir: {cwd:?}");
            std::process::exit(if cwd.is_err() || cwd.is_ok_and(|p| p.as_os_str() == "/") { 0 } else { 1 });
        }
        "random" => {
            // Large random requests are served in bounded chunks by the host.
            let mut total = 0usize;
            let mut f = std::collections::hash_map::RandomState::new();
            for _ in 0..1000 {
                f = std::hint::black_box(std::collections::hash_map::RandomState::new());
                total += 1;
            }
            let _ = f;
            println!("{total} random seeds");
        }
        other => {
            eprintln!("hostile: unknown case `{other}`");
            std::process::exit(2);
        }
    }
}

fn recurse(n: u64) -> u64 {
    let pad = std::hint::black_box([n; 64]);
    if n == 0 { 0 } else { recurse(pad[1] + 1) + pad[63] }
}
