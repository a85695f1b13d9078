//! The demo job of `wasmos dev --demo`: the sample tasks submitted together, each showing one
//! thing the platform does (args and env, CPU work, exit codes, a timeout, a memory limit),
//! then the word-count map-reduce batch job of `sample-tasks/wordcount/job.toml`.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use wasmos_proto::{BlobKind, OutputStream, Reason, Resources, TaskSpec, TaskState};

use wasmos_client::{Client, ClientConfig};

struct DemoTask {
    file: &'static str,
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    mem: u64,
    timeout: Duration,
    expect: Expect,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    Exit(i32),
    Stopped(Reason),
}

const TASKS: &[DemoTask] = &[
    DemoTask {
        file: "hello.wasm",
        args: &["from", "the", "demo"],
        env: &[("GREETING", "hi")],
        mem: 64 << 20,
        timeout: Duration::from_secs(30),
        expect: Expect::Exit(0),
    },
    DemoTask {
        file: "primes.wasm",
        args: &["2000000"],
        env: &[],
        mem: 64 << 20,
        timeout: Duration::from_secs(60),
        expect: Expect::Exit(0),
    },
    DemoTask {
        file: "exit-code.wasm",
        args: &["3"],
        env: &[],
        mem: 64 << 20,
        timeout: Duration::from_secs(30),
        expect: Expect::Exit(3),
    },
    DemoTask {
        file: "spin.wasm",
        args: &[],
        env: &[],
        mem: 64 << 20,
        timeout: Duration::from_secs(2),
        expect: Expect::Stopped(Reason::Timeout),
    },
    DemoTask {
        file: "hog.wasm",
        args: &[],
        env: &[],
        mem: 32 << 20,
        timeout: Duration::from_secs(30),
        expect: Expect::Stopped(Reason::MemoryLimit),
    },
];

/// The word-count job file, beside the samples' build directory
/// (`sample-tasks/target/wasm32-wasip2/release` → `sample-tasks/wordcount/job.toml`).
fn job_file(dir: &Path) -> std::path::PathBuf {
    dir.join("../../../wordcount/job.toml")
}

/// Runs the word-count job and shows its progress and most frequent words.
async fn wordcount(client: &Client, dir: &Path) -> Result<bool> {
    let file = job_file(dir);
    let file = file.canonicalize().unwrap_or(file);
    println!("\n── the word-count batch job ({}) ──", file.display());
    let (info, top) = crate::job::submit_and_wait(client, &file).await?;
    let ok = info.state == wasmos_proto::JobState::Finished;
    for (word, n) in top.iter().take(5) {
        println!("  {n:>6} {word}");
    }
    println!(
        "  => {} ({})",
        info.state,
        if ok { "as expected" } else { "UNEXPECTED" }
    );
    Ok(ok)
}

pub fn check_dir(dir: &Path) -> Result<()> {
    if !job_file(dir).is_file() || !dir.join("wordcount.wasm").is_file() {
        bail!(
            "the word-count job (sample-tasks/wordcount/job.toml and wordcount.wasm) is not beside {} (build the samples with `cargo xtask samples`, or pass --demo-dir)",
            dir.display()
        );
    }
    for t in TASKS {
        if !dir.join(t.file).is_file() {
            bail!(
                "demo task {} not found in {} (build the samples with `cargo xtask samples`, or pass --demo-dir)",
                t.file,
                dir.display()
            );
        }
    }
    Ok(())
}

pub async fn run(cfg: &ClientConfig, dir: &Path) -> Result<ExitCode> {
    let client = Client::connect(cfg).await?;
    let mut submitted = Vec::new();
    for t in TASKS {
        let bytes = crate::bundle::load_component(&dir.join(t.file))?;
        let (hash, _) = client.push_blob(&bytes, BlobKind::Component).await?;
        let spec = TaskSpec {
            args: t.args.iter().map(|s| s.to_string()).collect(),
            env: t
                .env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            resources: Resources::new(500, t.mem, 0),
            timeout_ms: t.timeout.as_millis() as u64,
            ..TaskSpec::new(t.file, hash)
        };
        let id = client.submit(spec).await?;
        println!("submitted {id}: {} {}", t.file, t.args.join(" "));
        submitted.push(id);
    }
    // The tasks run concurrently; their output is shown one task after the other.
    let mut all_ok = true;
    for (t, id) in TASKS.iter().zip(submitted) {
        println!("\n── {id} {} ──", t.file);
        let mut text = String::new();
        let info = client
            .watch(id, true, |stream, data| {
                let s = String::from_utf8_lossy(data);
                for line in s.lines() {
                    let tag = if stream == OutputStream::Stderr {
                        "err"
                    } else {
                        "out"
                    };
                    text.push_str(&format!("  {tag}| {line}\n"));
                }
            })
            .await?;
        print!("{text}");
        let Some(info) = info else {
            bail!("{id} did not end")
        };
        let st = &info.status;
        let got = match (st.state, st.exit_code, st.reason) {
            (TaskState::Finished, code, _) => Expect::Exit(code.unwrap_or(0)),
            (_, _, Some(r)) => Expect::Stopped(r),
            _ => Expect::Stopped(Reason::Trap),
        };
        let verdict = if got == t.expect {
            "as expected"
        } else {
            "UNEXPECTED"
        };
        all_ok &= got == t.expect;
        match got {
            Expect::Exit(c) => println!("  => {} with exit code {c} ({verdict})", st.state),
            Expect::Stopped(r) => println!(
                "  => {} ({r}): {} ({verdict})",
                st.state,
                st.message.as_deref().unwrap_or("")
            ),
        }
    }
    all_ok &= wordcount(&client, dir).await?;
    client.close().await;
    println!(
        "\ndemo {}",
        if all_ok {
            "finished: every task ended as expected"
        } else {
            "FAILED"
        }
    );
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
