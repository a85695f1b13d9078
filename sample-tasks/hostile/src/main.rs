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
        "sleep" => {
            println!("sleeping");
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
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
            // The task's own scratch space at / is fine; nothing of the host may show.
            let mut leaked = Vec::new();
            for path in [
                "/etc/passwd",
                "/proc/self/environ",
                "/etc",
                "/proc",
                "/home",
                "C:\\Windows",
            ] {
                if std::fs::read_dir(path).is_ok() || std::fs::read(path).is_ok() {
                    leaked.push(path.to_string());
                }
            }
            let root: Vec<String> = std::fs::read_dir("/")
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            if !root.is_empty() {
                leaked.push(format!("scratch space not empty: {root:?}"));
            }
            println!("reachable: {leaked:?}");
            std::process::exit(if leaked.is_empty() { 0 } else { 1 });
        }
        "dotdot" => {
            let mut leaked = Vec::new();
            for path in [
                "../etc/passwd",
                "../../../../etc/passwd",
                "/../etc/passwd",
                "/..",
                "..",
                "/../..",
            ] {
                let listing: Option<Vec<_>> = std::fs::read_dir(path)
                    .ok()
                    .map(|d| d.flatten().map(|e| e.file_name()).collect());
                if std::fs::read(path).is_ok() || listing.is_some_and(|l| !l.is_empty()) {
                    leaked.push(path);
                }
            }
            println!("reachable: {leaked:?}");
            std::process::exit(if leaked.is_empty() { 0 } else { 1 });
        }
        "symlink" => {
            // Links may be created inside the scratch space, but never followed out of it.
            let mut leaked = Vec::new();
            let symlink_path = |target: &str, link: &str| {
                let (Ok(t), Ok(l)) = (std::ffi::CString::new(target), std::ffi::CString::new(link))
                else {
                    return -1;
                };
                // SAFETY: both are valid NUL-terminated strings for the duration of the call.
                unsafe { libc::symlink(t.as_ptr(), l.as_ptr()) }
            };
            for (link, target) in [
                ("up", "../../../../.."),
                ("abs", "/etc"),
                ("pw", "/etc/passwd"),
                ("deep", "../../../../etc/passwd"),
            ] {
                let _ = symlink_path(target, link);
                if std::fs::read(link).is_ok()
                    || std::fs::read(format!("{link}/passwd")).is_ok()
                    || std::fs::read_dir(link).is_ok_and(|mut d| d.next().is_some())
                {
                    leaked.push(link);
                }
            }
            if std::fs::write("up/hostile-was-here", b"x").is_ok() {
                leaked.push("write through a link");
            }
            println!("reachable: {leaked:?}");
            std::process::exit(if leaked.is_empty() { 0 } else { 1 });
        }
        "input-write" => {
            // Run with an --input at /input/data.txt: readable, never writable.
            let mut leaked = Vec::new();
            match std::fs::read("/input/data.txt") {
                Ok(d) if !d.is_empty() => {}
                _ => leaked.push("cannot read the input"),
            }
            if std::fs::write("/input/data.txt", b"changed").is_ok() {
                leaked.push("overwrote the input");
            }
            if std::fs::write("/input/new.txt", b"x").is_ok() {
                leaked.push("created a file among the inputs");
            }
            if std::fs::remove_file("/input/data.txt").is_ok() {
                leaked.push("deleted the input");
            }
            println!("problems: {leaked:?}");
            std::process::exit(if leaked.is_empty() { 0 } else { 1 });
        }
        "disk-fill" => {
            let chunk = vec![7u8; 1 << 20];
            let mut f = std::fs::File::create("/fill").unwrap_or_else(|e| {
                eprintln!("cannot create /fill: {e}");
                std::process::exit(2)
            });
            loop {
                if let Err(e) = f.write_all(&chunk) {
                    eprintln!("write failed: {e}");
                    std::process::exit(3);
                }
            }
        }
        "file-bomb" => {
            for i in 0u64.. {
                let _ = std::fs::write(format!("/f{i}"), b"");
            }
        }
        "sparse" => {
            let f = std::fs::File::create("/sparse");
            let _ = f.map(|f| f.set_len(1 << 40));
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
        "fd-exhaust" => {
            let _ = std::fs::write("/f", b"x");
            let mut open = Vec::new();
            loop {
                match std::fs::File::open("/f") {
                    Ok(f) => open.push(f),
                    Err(e) => {
                        println!("refused after {} open files: {e}", open.len());
                        std::process::exit(0);
                    }
                }
            }
        }
        "sleep-loop" => loop {
            std::thread::sleep(std::time::Duration::from_millis(1));
        },
        "yield-loop" => loop {
            std::thread::yield_now();
        },
        "clock-poll" => {
            let mut n = 0u64;
            loop {
                n = n.wrapping_add(
                    std::hint::black_box(std::time::Instant::now())
                        .elapsed()
                        .as_nanos() as u64,
                );
                std::hint::black_box(n);
            }
        }
        "random-burn" => loop {
            std::hint::black_box(std::collections::hash_map::RandomState::new());
        },
        "div-zero" => {
            let zero = std::hint::black_box(0u32);
            println!("{}", 1 / zero);
        }
        "oob" => {
            // SAFETY: none; reading far past linear memory is the point of this case.
            let v = unsafe { std::ptr::read_volatile(0xFFFF_FFF0usize as *const u64) };
            println!("{v}");
        }
        "unreachable" => core::arch::wasm32::unreachable(),
        "exit-42" => std::process::exit(42),
        "grow-raw" => {
            let got = core::arch::wasm32::memory_grow(0, 65_000);
            println!("memory.grow(65000 pages) returned {got}");
            std::process::exit(if got == usize::MAX { 0 } else { 1 });
        }
        "stack-huge" => println!("{}", stack_huge()),
        "long-line" => {
            let line = "y".repeat(10 << 20);
            let _ = std::io::stdout().write_all(line.as_bytes());
        }
        "dns" => {
            use std::net::ToSocketAddrs;
            let mut leaked = Vec::new();
            for host in ["localhost:80", "example.com:443"] {
                if host.to_socket_addrs().is_ok_and(|mut a| a.next().is_some()) {
                    leaked.push(host);
                }
            }
            println!("resolved: {leaked:?}");
            std::process::exit(if leaked.is_empty() { 0 } else { 1 });
        }
        "mount" => {
            // Not an attack: what tests use to check a --mount at /data. Reads data/hello.txt,
            // writes a file next to it, and lists the directory.
            let text = std::fs::read_to_string("/data/hello.txt").unwrap_or_default();
            let wrote = std::fs::write("/data/new.txt", b"written by the task").is_ok();
            let mut names: Vec<String> = std::fs::read_dir("/data")
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            println!(
                "hello.txt: {}; wrote: {wrote}; /data: {names:?}",
                text.trim()
            );
            std::process::exit(if wrote && !text.is_empty() { 0 } else { 1 });
        }
        "clocks" => {
            // Not an attack: WASI's clocks are there and behave.
            let wall = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let t0 = std::time::Instant::now();
            std::thread::sleep(std::time::Duration::from_millis(20));
            let slept = t0.elapsed();
            println!("wall {wall}, slept {slept:?}");
            std::process::exit(if wall > 1_700_000_000 && slept.as_millis() >= 20 {
                0
            } else {
                1
            });
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
            std::process::exit(if cwd.is_err() || cwd.is_ok_and(|p| p.as_os_str() == "/") {
                0
            } else {
                1
            });
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

/// An 8 MiB stack frame, far past the 1 MiB shadow stack. In a function of its own: in `main`
/// the frame would be allocated on entry, for every case.
#[inline(never)]
fn stack_huge() -> u8 {
    let big = std::hint::black_box([7u8; 8 << 20]);
    big[std::hint::black_box(12345)]
}

fn recurse(n: u64) -> u64 {
    let pad = std::hint::black_box([n; 64]);
    if n == 0 {
        0
    } else {
        recurse(pad[1] + 1) + pad[63]
    }
}
