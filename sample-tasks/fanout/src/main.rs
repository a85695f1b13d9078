//! A task that fans out into child tasks (`wasmos:task/spawn`, through the `wasmos-task` crate)
//! and aggregates what they publish.
//!
//! - `fanout sum LO HI LEAF`: the sum of LO..=HI, split in two children while the range is
//!   longer than LEAF (a recursive parallel sum); publishes `sum`.
//! - `fanout pi CHILDREN SAMPLES [MS]`: a Monte Carlo estimate of pi from CHILDREN children of
//!   SAMPLES points each (each child first sleeps MS); publishes `pi`, `hits` and `children`.
//!   The estimate is the same on every run: each child's seed is fixed by its place.
//! - `fanout deep`: each level starts one more below it until the cluster refuses; publishes
//!   `levels`, how many levels below this one ran, and `refusal`.
//! - `fanout wide MS`: starts children that sleep MS until refused; publishes `started` and
//!   `refusal`, then ends (taking its children with it).
//! - `fanout retry CODE RETRIES`: one child that exits CODE, retried RETRIES times; publishes
//!   `attempts`, `state` and `exit`.
//! - `fanout hold CHILDREN MS`: starts CHILDREN children that sleep MS and waits for them.
//! - `fanout other SHA256`: one child running that bundle; publishes its `state`, or the
//!   `refusal`.
//! - `fanout bench N M`: N no-op children one after another (start, wait), then M at once
//!   (`start_all`);
//!   publishes `sequential_ms` (per child) and `fanout_per_s`.
//! - `fanout files CHILDREN`: CHILDREN children each write a part file and publish it by name
//!   (`put-file`); the parent writes an index of their files' sha256s and publishes that
//!   file as `index`. `fanout lost-file`: publishes a file it never writes (its task ends in
//!   error, naming it).
//! - `fanout leaf`, `fanout sleep MS`, `fanout exit CODE`, `fanout hits SAMPLES SEED [MS]`,
//!   `fanout part I`: what the children run.

use std::time::{Duration, Instant};

use wasmos_task::{Child, ChildSpec, Outcome};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let num = |i: usize, default: u64| arg(i).parse::<u64>().unwrap_or(default);
    match arg(0) {
        "sum" => sum(num(1, 1), num(2, 100), num(3, 10).max(1)),
        "pi" => pi(num(1, 4), num(2, 100_000), num(3, 0)),
        "hits" => {
            let (samples, mut seed) = (num(1, 1000), num(2, 1) | 1);
            // A pause first, so a test can act while every child is under way.
            std::thread::sleep(Duration::from_millis(num(3, 0)));
            let mut hits = 0u64;
            for _ in 0..samples {
                let x = next(&mut seed);
                let y = next(&mut seed);
                if x * x + y * y <= 1.0 {
                    hits += 1;
                }
            }
            publish("hits", hits);
        }
        "deep" => deep(),
        "wide" => wide(num(1, 60_000)),
        "retry" => {
            let child = start(
                ChildSpec::new()
                    .arg("exit")
                    .arg(arg(1))
                    .retries(num(2, 0) as u32),
            );
            let o = wait(&child);
            publish("attempts", o.attempts);
            publish("state", format!("{:?}", o.state).to_lowercase());
            publish("exit", o.exit_code.unwrap_or(-1));
            if let Some(m) = o.message {
                publish("message", m);
            }
        }
        "hold" => {
            let children: Vec<Child> = (0..num(1, 2))
                .map(|_| start(ChildSpec::new().arg("sleep").arg(arg(2))))
                .collect();
            println!("started {} children", children.len());
            for c in &children {
                wait(c);
            }
        }
        "bench" => bench(num(1, 100).max(1), num(2, 100).max(1)),
        "other" => match Child::start(&ChildSpec::new().bundle(arg(1)).arg("leaf")) {
            Ok(c) => publish("state", format!("{:?}", wait(&c).state).to_lowercase()),
            Err(e) => publish("refusal", e),
        },
        "files" => files(num(1, 3)),
        "part" => {
            let text = format!("part {} of the work\n", arg(1));
            put_file("part", "/part.txt", text.as_bytes());
        }
        "lost-file" => {
            if let Err(e) = wasmos_task::put_file("never", "/never/written.txt") {
                fail(&format!("cannot publish never: {e}"));
            }
        }
        "leaf" => {}
        "sleep" => {
            std::thread::sleep(Duration::from_millis(num(1, 1000)));
            publish("slept", num(1, 1000));
        }
        "exit" => std::process::exit(num(1, 1) as i32),
        _ => {
            eprintln!("usage: fanout sum|pi|deep|wide|retry|hold|bench ... (see its source)");
            std::process::exit(2);
        }
    }
}

/// Children that each publish a file; an index of them, published as a file too.
fn files(children: u64) {
    let specs: Vec<ChildSpec> = (0..children)
        .map(|i| ChildSpec::new().arg("part").arg(i.to_string()))
        .collect();
    let mut index = String::new();
    for child in start_all(&specs) {
        let o = wait(&child);
        match o.file("part") {
            Some(f) if o.succeeded() => {
                index.push_str(&format!("{} {} t-{}\n", f.sha256, f.size, o.task_id))
            }
            _ => fail(&format!(
                "child t-{} ended {:?} ({:?}) without its file",
                o.task_id, o.state, o.message
            )),
        }
    }
    print!("{index}");
    put_file("index", "/index.txt", index.as_bytes());
}

/// Writes `bytes` at `path` and publishes it as the file result `name`.
fn put_file(name: &str, path: &str, bytes: &[u8]) {
    if let Err(e) = std::fs::write(path, bytes) {
        fail(&format!("cannot write {path}: {e}"));
    }
    if let Err(e) = wasmos_task::put_file(name, path) {
        fail(&format!("cannot publish {name}: {e}"));
    }
}

fn start(spec: ChildSpec) -> Child {
    match Child::start(&spec) {
        Ok(c) => c,
        Err(e) => fail(&format!("cannot start a child: {e}")),
    }
}

/// Starts children together (one round of requests, not one after another).
fn start_all(specs: &[ChildSpec]) -> Vec<Child> {
    Child::start_all(specs)
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| fail(&format!("cannot start a child: {e}"))))
        .collect()
}

fn wait(child: &Child) -> Outcome {
    match child.wait() {
        Ok(o) => o,
        Err(e) => fail(&format!("cannot wait for a child: {e}")),
    }
}

/// A child's number result, or the end of this task naming what went wrong.
fn number(o: &Outcome, name: &str) -> u64 {
    let value = o
        .result(name)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse().ok());
    match value {
        Some(v) if o.succeeded() => v,
        _ => fail(&format!(
            "child t-{} ended {:?} (exit {:?}, {:?}) without `{name}`",
            o.task_id, o.state, o.exit_code, o.message
        )),
    }
}

fn fail(why: &str) -> ! {
    eprintln!("{why}");
    std::process::exit(1);
}

fn publish(name: &str, value: impl ToString) {
    let value = value.to_string();
    println!("{name} = {value}");
    if let Err(e) = wasmos_task::put_result(name, &value) {
        fail(&format!("cannot publish {name}: {e}"));
    }
}

fn sum(lo: u64, hi: u64, leaf: u64) {
    if hi < lo || hi - lo < leaf {
        return publish("sum", (lo..=hi).sum::<u64>());
    }
    let mid = lo + (hi - lo) / 2;
    let half = |a: u64, b: u64| {
        let spec = ChildSpec::new().arg("sum").arg(a.to_string());
        start(spec.arg(b.to_string()).arg(leaf.to_string()))
    };
    let (left, right) = (half(lo, mid), half(mid + 1, hi));
    let total = number(&wait(&left), "sum") + number(&wait(&right), "sum");
    publish("sum", total);
}

fn pi(children: u64, samples: u64, ms: u64) {
    let specs: Vec<ChildSpec> = (0..children)
        .map(|i| {
            let spec = ChildSpec::new().arg("hits").arg(samples.to_string());
            spec.arg((i * 7919 + 1).to_string()).arg(ms.to_string())
        })
        .collect();
    let started = start_all(&specs);
    let mut hits = 0;
    for (i, c) in started.iter().enumerate() {
        hits += number(&wait(c), "hits");
        wasmos_task::progress((i + 1) as f32 / children as f32, "children done");
    }
    let pi = 4.0 * hits as f64 / (children * samples) as f64;
    publish("hits", hits);
    publish("children", children);
    publish("pi", format!("{pi:.4}"));
}

fn deep() {
    match Child::start(&ChildSpec::new().arg("deep")) {
        Ok(child) => {
            let o = wait(&child);
            publish("levels", number(&o, "levels") + 1);
            if let Some(r) = o.result("refusal") {
                publish("refusal", String::from_utf8_lossy(r));
            }
        }
        Err(e) => {
            publish("levels", 0);
            publish("refusal", e);
        }
    }
}

fn wide(ms: u64) {
    let mut started = Vec::new();
    loop {
        match Child::start(
            &ChildSpec::new()
                .arg("sleep")
                .arg(ms.to_string())
                .cpu_millis(1),
        ) {
            Ok(c) => started.push(c),
            Err(e) => {
                publish("started", started.len());
                publish("refusal", e);
                return;
            }
        }
    }
}

fn bench(n: u64, wide: u64) {
    let leaf = || {
        let spec = ChildSpec::new().arg("leaf").cpu_millis(10);
        spec.mem_bytes(16 << 20).disk_bytes(1 << 20)
    };
    let t = Instant::now();
    for _ in 0..n {
        let o = wait(&start(leaf()));
        if !o.succeeded() {
            fail(&format!("child t-{} ended {:?}", o.task_id, o.state));
        }
    }
    let sequential = t.elapsed().as_secs_f64() * 1000.0 / n as f64;
    let t = Instant::now();
    let children = start_all(&(0..wide).map(|_| leaf()).collect::<Vec<_>>());
    for c in &children {
        let o = wait(c);
        if !o.succeeded() {
            fail(&format!("child t-{} ended {:?}", o.task_id, o.state));
        }
    }
    let per_s = wide as f64 / t.elapsed().as_secs_f64();
    publish("sequential_ms", format!("{sequential:.2}"));
    publish("fanout_per_s", format!("{per_s:.1}"));
}

/// A uniform number in [0, 1) (xorshift: deterministic per seed, no dependency).
fn next(seed: &mut u64) -> f64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    (*seed >> 11) as f64 / (1u64 << 53) as f64
}
