//! WASI fidelity probe: each case (first argument) prints what a command component observes of
//! one part of WASI (args, env, stdin, output bytes, exit codes, clocks, random, files,
//! sockets) in a form that does not depend on the moment or the machine, so that
//! `tests/fidelity.rs` can require byte-identical results under `wasmos run` and `wasmtime run`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str).unwrap_or("") {
        "args" => {
            for (i, a) in args.iter().enumerate() {
                println!("argv[{i}] = {a:?}");
            }
        }
        "env" => {
            let mut vars: Vec<(String, String)> = std::env::vars().collect();
            vars.sort();
            println!("{} variables", vars.len());
            for (k, v) in vars {
                println!("{k:?} = {v:?}");
            }
        }
        "stdin" => {
            let mut buf = Vec::new();
            let n = io::stdin().read_to_end(&mut buf);
            println!(
                "read: {:?}, fnv1a {:016x}",
                n.map_err(|e| e.kind()),
                fnv1a(&buf)
            );
            println!(
                "head: {:?}",
                String::from_utf8_lossy(&buf[..buf.len().min(40)])
            );
        }
        "bytes" => bytes(),
        "exit" => {
            let code = args.get(2).and_then(|a| a.parse::<u8>().ok()).unwrap_or(0);
            print!("exiting with {code}");
            eprint!("(stderr before exit {code})");
            let _ = io::stdout().flush();
            wasip2::cli::exit::exit_with_code(code);
        }
        "std-exit" => {
            // Rust's std maps every failure status to 1 on wasip2.
            let code = args.get(2).and_then(|a| a.parse::<i32>().ok()).unwrap_or(0);
            println!("std::process::exit({code})");
            std::process::exit(code);
        }
        "panic" => {
            println!("about to panic");
            panic!("the fidelity probe panics on purpose");
        }
        "trap" => {
            println!("about to trap");
            let _ = io::stdout().flush();
            std::process::abort();
        }
        "clocks" => clocks(args.get(2).and_then(|a| a.parse().ok()).unwrap_or(0)),
        "random" => random(),
        "fs" => fs_semantics(),
        "net" => net(),
        other => {
            eprintln!("fidelity: unknown case {other:?}");
            std::process::exit(2);
        }
    }
}

/// A stable hash for comparing byte streams without printing them.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// Output that is not text: every byte value, invalid UTF-8, NULs, CR without LF, large writes
/// and no trailing newline, on both streams, interleaved.
fn bytes() {
    let all: Vec<u8> = (0..=255u8).collect();
    let mut out = io::stdout().lock();
    let mut err = io::stderr().lock();
    for i in 0..512 {
        let _ = out.write_all(&all);
        if i % 64 == 0 {
            let _ = err.write_all(b"\xff\xfe stderr \0 chunk\r");
            let _ = err.write_all(&[i as u8]);
        }
    }
    let _ = out.write_all(&vec![b'z'; 300_000]);
    let _ = out.write_all(b"\xc3\x28 no newline at the end");
    let _ = err.write_all(b"last stderr bytes, no newline");
}

fn clocks(host_now: u64) {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs());
    println!(
        "wall clock within 5 minutes of the host's: {}",
        wall.is_ok_and(|w| w.abs_diff(host_now) < 300)
    );
    let res = wasip2::clocks::wall_clock::resolution();
    println!(
        "wall clock resolution > 0: {}",
        res.seconds > 0 || res.nanoseconds > 0
    );
    let mono_res = wasip2::clocks::monotonic_clock::resolution();
    println!(
        "monotonic resolution in (0, 1ms]: {}",
        mono_res > 0 && mono_res <= 1_000_000
    );
    let mut last = wasip2::clocks::monotonic_clock::now();
    let mut monotonic = true;
    for _ in 0..10_000 {
        let now = wasip2::clocks::monotonic_clock::now();
        monotonic &= now >= last;
        last = now;
    }
    println!("monotonic clock never goes back: {monotonic}");
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(30));
    let slept = t0.elapsed();
    println!(
        "sleep(30ms) took at least 30ms: {}",
        slept >= Duration::from_millis(30)
    );
    println!(
        "sleep(30ms) took under 2s: {}",
        slept < Duration::from_secs(2)
    );
    let pollable = wasip2::clocks::monotonic_clock::subscribe_duration(0);
    println!("zero-duration pollable is ready: {}", pollable.ready());
    let far = wasip2::clocks::monotonic_clock::subscribe_duration(3_600_000_000_000);
    println!("one-hour pollable is ready: {}", far.ready());
}

fn random() {
    use wasip2::random::{insecure, insecure_seed, random as secure};
    let a = secure::get_random_bytes(32);
    let b = secure::get_random_bytes(32);
    println!(
        "secure: 32 bytes: {}, two draws differ: {}",
        a.len() == 32,
        a != b
    );
    let big = secure::get_random_bytes(1 << 20);
    let zeros = big.iter().filter(|b| **b == 0).count();
    println!(
        "secure: 1 MiB draw: {}, zero bytes about 1/256: {}",
        big.len() == 1 << 20,
        (2048..6144).contains(&zeros)
    );
    let (x, y) = (secure::get_random_u64(), secure::get_random_u64());
    println!("secure u64 draws differ: {}", x != y);
    let a = insecure::get_insecure_random_bytes(16);
    let b = insecure::get_insecure_random_bytes(16);
    println!(
        "insecure: 16 bytes: {}, two draws differ: {}",
        a.len() == 16,
        a != b
    );
    println!(
        "insecure u64 draws differ: {}",
        insecure::get_insecure_random_u64() != insecure::get_insecure_random_u64()
    );
    let (s1, s2) = (
        insecure_seed::insecure_seed(),
        insecure_seed::insecure_seed(),
    );
    println!("insecure seed is the same within one run: {}", s1 == s2);
    use std::hash::BuildHasher;
    let h = std::collections::hash_map::RandomState::new();
    println!(
        "std RandomState hashes consistently: {}",
        h.hash_one(1u8) == h.hash_one(1u8)
    );
}

/// Prints one result line: `Ok(value)` or the error's kind and WASI error number.
fn show<T: std::fmt::Debug>(what: &str, r: io::Result<T>) {
    match r {
        Ok(v) => println!("{what}: Ok({v:?})"),
        Err(e) => println!("{what}: Err({:?}, errno {:?})", e.kind(), e.raw_os_error()),
    }
}

/// The sorted entries of `dir` as `name/` for directories, `name@` for symlinks and
/// `name (N bytes)` for files.
fn listing(dir: &str) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ty = entry.file_type()?;
        names.push(if ty.is_dir() {
            format!("{name}/")
        } else if ty.is_symlink() {
            format!("{name}@")
        } else {
            format!("{name} ({} bytes)", entry.metadata()?.len())
        });
    }
    names.sort();
    Ok(names)
}

fn symlink(target: &str, link: &str) -> io::Result<()> {
    let t = std::ffi::CString::new(target).map_err(io::Error::other)?;
    let l = std::ffi::CString::new(link).map_err(io::Error::other)?;
    // SAFETY: both are valid NUL-terminated strings that live across the call.
    if unsafe { libc::symlink(t.as_ptr(), l.as_ptr()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Filesystem semantics inside a mount at /data (holding `hello.txt` and an empty `sub/`)
/// beneath the task's root: reads, writes, appends, seeks, truncation, renames, removals,
/// links, symlinks, escapes, odd names and timestamps, then a listing of what is left.
fn fs_semantics() {
    show(
        "read /data/hello.txt",
        fs::read_to_string("/data/hello.txt"),
    );
    show(
        "read relative data/hello.txt",
        fs::read_to_string("data/hello.txt"),
    );
    show("list /", listing("/"));
    show("list /data", listing("/data"));
    show("metadata / is dir", fs::metadata("/").map(|m| m.is_dir()));
    show(
        "write into a missing dir",
        fs::write("/data/out/x.txt", "x"),
    );
    show("create_dir /data/out", fs::create_dir("/data/out"));
    show("create_dir /data/out again", fs::create_dir("/data/out"));
    show(
        "create_dir_all /data/out/p/q",
        fs::create_dir_all("/data/out/p/q"),
    );
    show("write a.txt", fs::write("/data/out/a.txt", "alpha"));
    show(
        "append to a.txt",
        OpenOptions::new()
            .append(true)
            .open("/data/out/a.txt")
            .and_then(|mut f| f.write_all(b"beta")),
    );
    show("read a.txt", fs::read_to_string("/data/out/a.txt"));
    show(
        "create_new over a.txt",
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open("/data/out/a.txt")
            .map(|_| ()),
    );
    show("seeks and reads", seeks());
    show(
        "write through a read-only handle",
        File::open("/data/out/a.txt").and_then(|mut f| f.write_all(b"no")),
    );
    show(
        "set_len(2)",
        OpenOptions::new()
            .write(true)
            .open("/data/out/a.txt")
            .and_then(|f| f.set_len(2)),
    );
    show("read after set_len", fs::read_to_string("/data/out/a.txt"));
    show("write c.txt", fs::write("/data/out/c.txt", "gamma"));
    show(
        "rename a.txt -> b.txt",
        fs::rename("/data/out/a.txt", "/data/out/b.txt"),
    );
    show(
        "rename c.txt over b.txt",
        fs::rename("/data/out/c.txt", "/data/out/b.txt"),
    );
    show("read b.txt", fs::read_to_string("/data/out/b.txt"));
    show(
        "read a.txt after rename",
        fs::read_to_string("/data/out/a.txt"),
    );
    show(
        "rename a dir into itself",
        fs::rename("/data/out/p", "/data/out/p/q/p"),
    );
    show("write m.txt", fs::write("/data/out/m.txt", "moving"));
    show(
        "rename across preopens",
        fs::rename("/data/out/m.txt", "/moved.txt"),
    );
    show("remove_dir non-empty", fs::remove_dir("/data/out/p"));
    show("remove_file on a dir", fs::remove_file("/data/out/p"));
    show("remove_dir on a file", fs::remove_dir("/data/out/b.txt"));
    show("remove_file missing", fs::remove_file("/data/out/none"));
    show(
        "open a dir for writing",
        File::create("/data/out/p").map(|_| ()),
    );
    show(
        "read a dir as a file",
        File::open("/data/out/p").and_then(|mut f| f.read(&mut [0u8; 8])),
    );
    show(
        "hard link",
        fs::hard_link("/data/out/b.txt", "/data/out/l.txt"),
    );
    show("read the hard link", fs::read_to_string("/data/out/l.txt"));
    show("symlink b.txt", symlink("b.txt", "/data/out/s.txt"));
    show(
        "read through symlink",
        fs::read_to_string("/data/out/s.txt"),
    );
    show("read_link", fs::read_link("/data/out/s.txt"));
    show(
        "symlink_metadata is symlink",
        fs::symlink_metadata("/data/out/s.txt").map(|m| m.file_type().is_symlink()),
    );
    show(
        "symlink ../../../etc/passwd",
        symlink("../../../etc/passwd", "/data/out/up"),
    );
    show(
        "read through ../ symlink",
        fs::read_to_string("/data/out/up"),
    );
    show(
        "symlink /etc/passwd",
        symlink("/etc/passwd", "/data/out/abs"),
    );
    show(
        "read through absolute symlink",
        fs::read_to_string("/data/out/abs"),
    );
    show(
        "read /data/../../../etc/passwd",
        fs::read_to_string("/data/../../../etc/passwd"),
    );
    show("read /etc/passwd", fs::read_to_string("/etc/passwd"));
    show("canonicalize", fs::canonicalize("/data/out"));
    show(
        "set read-only",
        fs::metadata("/data/out/b.txt").and_then(|m| {
            let mut p = m.permissions();
            p.set_readonly(true);
            fs::set_permissions("/data/out/b.txt", p)
        }),
    );
    let odd = "/data/out/ünïcödé 🦀 .txt";
    show("write a unicode name", fs::write(odd, "crab"));
    show("read a unicode name", fs::read_to_string(odd));
    let long = format!("/data/out/{}", "n".repeat(255));
    show("255-byte name", fs::write(&long, "x"));
    show("256-byte name", fs::write(format!("{long}n"), "x"));
    show("empty name", fs::write("/data/out/", "x"));
    show("name with NUL", fs::write("/data/out/a\0b", "x"));
    let big: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    show("write 1 MiB", fs::write("/data/out/big", &big));
    show(
        "read 1 MiB back",
        fs::read("/data/out/big").map(|b| format!("{} bytes, fnv1a {:016x}", b.len(), fnv1a(&b))),
    );
    let stamp = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    show(
        "set_modified",
        File::options()
            .write(true)
            .open("/data/out/b.txt")
            .and_then(|f| f.set_modified(stamp)),
    );
    show(
        "modified after set_modified",
        fs::metadata("/data/out/b.txt")
            .and_then(|m| m.modified())
            .map(|t| t == stamp),
    );
    show(
        "new file's mtime is recent",
        fs::metadata("/data/out/big")
            .and_then(|m| m.modified())
            .map(|t| {
                SystemTime::now()
                    .duration_since(t)
                    .is_ok_and(|d| d < Duration::from_secs(300))
            }),
    );
    show("write at the root", fs::write("/root-file.txt", "top"));
    show("list / at the end", listing("/"));
    show("list /data at the end", listing("/data"));
    show("list /data/out at the end", listing("/data/out"));
}

/// Seeks from the start, the end and past the end of a.txt ("alphabeta").
fn seeks() -> io::Result<Vec<String>> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/data/out/a.txt")?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4];
    f.seek(SeekFrom::Start(3))?;
    f.read_exact(&mut buf)?;
    seen.push(String::from_utf8_lossy(&buf).into_owned());
    let pos = f.seek(SeekFrom::End(-2))?;
    let mut rest = String::new();
    f.read_to_string(&mut rest)?;
    seen.push(format!("{pos}: {rest}"));
    f.seek(SeekFrom::Start(12))?;
    f.write_all(b"!")?;
    let mut all = Vec::new();
    f.seek(SeekFrom::Start(0))?;
    f.read_to_end(&mut all)?;
    seen.push(format!("{all:?}"));
    seen.push(format!(
        "{:?}",
        f.seek(SeekFrom::Current(-100)).map_err(|e| e.kind())
    ));
    Ok(seen)
}

/// No network is granted: every attempt must fail, the same way.
fn net() {
    use std::net::{TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
    show(
        "tcp connect 127.0.0.1:9",
        TcpStream::connect("127.0.0.1:9").map(|_| ()),
    );
    show(
        "tcp connect [::1]:9",
        TcpStream::connect("[::1]:9").map(|_| ()),
    );
    show(
        "tcp listen 127.0.0.1:0",
        TcpListener::bind("127.0.0.1:0").map(|_| ()),
    );
    show(
        "udp bind 0.0.0.0:0",
        UdpSocket::bind("0.0.0.0:0").map(|_| ()),
    );
    show(
        "resolve localhost",
        ("localhost", 80).to_socket_addrs().map(|a| a.count()),
    );
}
