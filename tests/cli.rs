//! End to end through real processes: `wasmos run`, `task`, `logs` and `agent` commands against a
//! `wasmos dev` cluster on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use wasmos_tests::{DevCluster, assert_clean_error, sample, text};

#[test]
fn run_streams_output_and_exit_codes_and_reads_work() {
    let c = DevCluster::start(2).unwrap();

    // hello: sees exactly its args and env, on stdout and stderr.
    let out = c
        .run(
            &["--env", "GREETING=hi", "--env", "EMPTY="],
            "hello",
            &["a", "b c"],
        )
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("args: a b c"), "{stdout}");
    let env: Vec<&str> = stdout.lines().filter(|l| l.starts_with("env: ")).collect();
    assert_eq!(env, ["env: EMPTY=", "env: GREETING=hi"], "{stdout}");
    assert!(text(&out.stderr).contains("(this line went to stderr)"));

    // stdin: from a file, or piped through `--stdin -`; uploaded as a data blob.
    let input = c.dir.path().join("input.txt");
    std::fs::write(&input, "first line\nsecond line\n").unwrap();
    let out = c
        .cmd(&["run", "--stdin", input.to_str().unwrap()])
        .arg(wasmos_tests::sample("hello"))
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("stdin: first line\nstdin: second line"),
        "{stdout}"
    );
    let mut child = c
        .cmd(&["run", "--stdin", "-"])
        .arg(wasmos_tests::sample("hello"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"piped in").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        text(&out.stdout).contains("stdin: piped in"),
        "{}",
        text(&out.stdout)
    );

    // exit-code: the task's code becomes ours.
    let out = c.run(&[], "exit-code", &["3"]).unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("exiting with code 3"));
    let out = c.run(&[], "exit-code", &["0"]).unwrap();
    assert_eq!(out.status.code(), Some(0));

    // Limits: one line naming the reason, and a non-zero exit.
    let out = c.run(&["--timeout", "1s"], "spin", &[]).unwrap();
    assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("(timeout)"),
        "{}",
        text(&out.stderr)
    );
    let out = c.run(&["--cpu-budget", "200ms"], "spin", &[]).unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("(cpu_limit)"),
        "{}",
        text(&out.stderr)
    );
    let out = c.run(&["--mem", "32MiB"], "hog", &[]).unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("(memory_limit)"),
        "{}",
        text(&out.stderr)
    );

    // Past --max-output, by default the stream is cut with a marker and the task goes on.
    let out = c
        .cmd(&["run", "--max-output", "1KiB", "--timeout", "1s"])
        .arg(wasmos_tests::sample("hostile"))
        .arg("--")
        .arg("flood")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.ends_with("\n[wasmos: stdout truncated after 1024 bytes]\n"),
        "{}",
        &stdout[stdout.len().saturating_sub(200)..]
    );
    assert_eq!(
        stdout.len(),
        1024 + "\n[wasmos: stdout truncated after 1024 bytes]\n".len()
    );

    // task list: every task with its final state and result, as JSON and as a table.
    let tasks = c.json(&["task", "list", "-o", "json"]).unwrap();
    let tasks = tasks.as_array().unwrap();
    assert_eq!(tasks.len(), 9);
    let states: Vec<&str> = tasks
        .iter()
        .map(|t| t["status"]["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        [
            "Finished", "Finished", "Finished", "Finished", "Finished", "Failed", "Failed",
            "Failed", "Failed"
        ]
    );
    assert_eq!(tasks[3]["status"]["exit_code"], 3);
    assert!(tasks[1]["spec"]["stdin"].is_string());
    assert_eq!(tasks[5]["status"]["reason"], "Timeout");
    assert_eq!(tasks[6]["status"]["reason"], "CpuLimit");
    assert_eq!(tasks[7]["status"]["reason"], "MemoryLimit");
    assert_eq!(tasks[8]["status"]["reason"], "Timeout");
    let table = text(&c.cli(&["task", "list"]).unwrap().stdout);
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains("t-4") && table.contains("exit 3"), "{table}");
    assert!(table.contains("memory_limit"), "{table}");

    // task show, both forms.
    let shown = c.json(&["task", "show", "t-4", "-o", "json"]).unwrap();
    assert_eq!(shown["spec"]["name"], "exit-code.wasm");
    assert_eq!(shown["spec"]["args"][0], "3");
    let shown = text(&c.cli(&["task", "show", "4"]).unwrap().stdout);
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("exit code:") && l.ends_with(" 3")),
        "{shown}"
    );
    assert!(
        shown.contains("peak mem:") && shown.contains("cpu used:"),
        "{shown}"
    );

    // logs of a finished task, with and without -f.
    let logs = c.cli(&["logs", "t-1"]).unwrap();
    assert!(text(&logs.stdout).contains("args: a b c"));
    assert!(text(&logs.stderr).contains("(this line went to stderr)"));
    let logs = c.cli(&["logs", "-f", "t-1"]).unwrap();
    assert!(logs.status.success());
    assert!(text(&logs.stdout).contains("args: a b c"));

    // agent list: both agents, active, with their attributes.
    let agents = c.json(&["agent", "list", "-o", "json"]).unwrap();
    let agents = agents.as_array().unwrap();
    assert_eq!(agents.len(), 2);
    assert!(agents.iter().all(|a| a["state"] == "Active"));
    assert_eq!(agents[0]["attributes"]["dev"], "true");
    // Agents meter CPU by the thread clock unless told to use fuel: no fuel rate.
    assert_eq!(agents[0]["fuel_per_core_second"], 0);
    let table = text(&c.cli(&["agent", "list"]).unwrap().stdout);
    assert!(
        table.contains("agent-2") && table.contains("active") && table.contains("cpu-time"),
        "{table}"
    );

    // Two tasks that cannot share one agent's 2 cores run side by side on both agents.
    let spawn = || {
        c.cmd(&["run", "--cpu", "1500m", "--timeout", "2s"])
            .arg(wasmos_tests::sample("spin"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (spawn(), spawn());
    assert_eq!(a.wait().unwrap().code(), Some(124));
    assert_eq!(b.wait().unwrap().code(), Some(124));
    let tasks = c.json(&["task", "list", "-o", "json"]).unwrap();
    let placed: Vec<&str> = tasks.as_array().unwrap()[9..]
        .iter()
        .map(|t| t["agent"].as_str().unwrap())
        .collect();
    assert_eq!(placed.len(), 2);
    assert_ne!(placed[0], placed[1], "both landed on one agent");
}

#[test]
fn output_streams_live_and_identical_uploads_are_not_resent() {
    let c = DevCluster::start(1).unwrap();
    // spin prints one line, then loops until its timeout: the line must arrive while it runs.
    let mut child = c
        .cmd(&["run", "--timeout", "20s"])
        .arg(wasmos_tests::sample("spin"))
        .env("RUST_LOG", "wasmos=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "spinning");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        child.try_wait().unwrap().is_none(),
        "should still be running"
    );
    // Kill it through the CLI; the run then ends with the kill reason.
    c.cli(&["task", "kill", "t-1"]).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert!(err.contains("killed"), "{err}");
    assert!(err.contains("uploaded bundle"), "{err}");

    // The same bytes again: no upload.
    let mut cmd = c.cmd(&["run", "--timeout", "1s"]);
    cmd.arg(wasmos_tests::sample("spin"))
        .env("RUST_LOG", "wasmos=info");
    let out = cmd.output().unwrap();
    let err = text(&out.stderr);
    assert!(err.contains("already on the master"), "{err}");
    assert!(!err.contains("uploaded bundle"), "{err}");
}

#[test]
fn mounts_are_writable_copies_within_the_disk_quota() {
    let c = DevCluster::start(1).unwrap();
    let local = tempfile::tempdir().unwrap();
    std::fs::write(local.path().join("hello.txt"), "hi from the host\n").unwrap();
    std::fs::create_dir(local.path().join("sub")).unwrap();
    let mount = format!("{}:/data", local.path().display());

    let out = c
        .run(
            &["--mount", &mount, "--disk", "1MiB"],
            "hostile",
            &["mount"],
        )
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        r#"hello.txt: hi from the host; wrote: true; /data: ["hello.txt", "new.txt", "sub"]"#
    );
    // The task wrote to its copy, never to the user's directory.
    assert!(!local.path().join("new.txt").exists());
    let shown = text(&c.cli(&["task", "show", "t-1"]).unwrap().stdout);
    let mounts = shown.lines().find(|l| l.starts_with("mounts:"));
    assert!(
        mounts.is_some_and(|l| l.contains("/data (archive ")),
        "{shown}"
    );
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("inputs:") && l.ends_with(" -")),
        "{shown}"
    );

    // A mount larger than the quota is refused before the task runs.
    std::fs::write(local.path().join("big"), vec![0u8; 200 << 10]).unwrap();
    let out = c
        .run(
            &["--mount", &mount, "--disk", "100KiB"],
            "hostile",
            &["mount"],
        )
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("(disk_limit)"),
        "{}",
        text(&out.stderr)
    );

    // Bad layouts are refused by the CLI, naming the flag.
    let out = c
        .run(
            &["--mount", &format!("{}:data", local.path().display())],
            "hostile",
            &["mount"],
        )
        .unwrap();
    assert_clean_error(&out, "--mount");
    let out = c
        .run(&["--input", "/no/such/file:/in/x"], "hostile", &["mount"])
        .unwrap();
    assert_clean_error(&out, "not a file");
}

#[test]
fn tasks_beyond_the_agents_instance_slots_wait_for_one() {
    // One pooling-allocator slot: the second task waits in `starting` until the first ends,
    // instead of failing to instantiate.
    let c = DevCluster::start_with(1, &["--max-tasks", "1"]).unwrap();
    let spawn = || {
        let mut cmd = c.cmd(&["run", "--timeout", "1s", "--cpu", "100m"]);
        cmd.arg(wasmos_tests::sample("spin"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd.spawn().unwrap()
    };
    let start = Instant::now();
    let (a, b) = (spawn(), spawn());
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));
    }
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn custom_resources_are_offered_and_requested() {
    let c = DevCluster::start_with(1, &["--agent-resource", "gpu=1"]).unwrap();
    let agents = c.json(&["agent", "list", "-o", "json"]).unwrap();
    assert_eq!(agents[0]["total"]["scalars"]["gpu"], 1, "{agents}");

    let out = c.run(&["--resource", "gpu=1"], "hello", &[]).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // More than any agent has, or a kind no agent has: refused as unschedulable, saying why.
    for ask in ["gpu=2", "fpga=1"] {
        let out = c.run(&["--resource", ask], "hello", &[]).unwrap();
        assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(err.contains("(unschedulable)"), "{err}");
        assert!(err.contains(&ask.replace('=', " ")), "{err}");
    }
    // Malformed requests are refused by the CLI, naming the flag.
    for bad in ["gpu", "cpu=1", "GPU=1", "gpu=-1"] {
        let out = c.run(&["--resource", bad], "hello", &[]).unwrap();
        assert_clean_error(&out, "--resource");
    }
}

/// `--outputs DIR`: the files a task leaves there (finished with exit code 0) are stored as
/// blobs, listed by `task show` and downloaded with `blob get`; a failed task's are not.
#[test]
fn outputs_of_a_finished_task_are_stored_and_downloaded() {
    let c = DevCluster::start(1).unwrap();
    let local = tempfile::tempdir().unwrap();
    let input = local.path().join("a.txt");
    std::fs::write(&input, "the cat the dog\nA cat!\n").unwrap();
    let input_flag = format!("{}:/in/a.txt", input.display());
    let args = ["map", "--reducers", "2", "--out", "/out", "/in"];
    let out = c
        .run(
            &["--input", &input_flag, "--outputs", "/out"],
            "wordcount",
            &args,
        )
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let info = c.json(&["task", "show", "t-1", "-o", "json"]).unwrap();
    let outputs = info["status"]["outputs"].as_array().unwrap().clone();
    let paths: Vec<&str> = outputs
        .iter()
        .map(|o| o["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["part-0", "part-1"]);
    let mut words = String::new();
    for o in &outputs {
        let got = c
            .cli(&["blob", "get", o["blob"].as_str().unwrap()])
            .unwrap();
        assert!(got.status.success(), "{}", text(&got.stderr));
        assert_eq!(got.stdout.len() as u64, o["size"].as_u64().unwrap());
        words.push_str(&text(&got.stdout));
    }
    let mut lines: Vec<&str> = words.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["a\t1", "cat\t2", "dog\t1", "the\t2"]);
    let shown = text(&c.cli(&["task", "show", "t-1"]).unwrap().stdout);
    assert!(shown.contains("outputs:    /out (2 files)"), "{shown}");

    // A task that fails leaves no outputs; an unknown hash is a clean error.
    let out = c
        .run(&["--outputs", "/out"], "wordcount", &["reduce"])
        .unwrap();
    assert!(!out.status.success());
    let info = c.json(&["task", "show", "t-2", "-o", "json"]).unwrap();
    assert_eq!(info["status"]["outputs"].as_array().map(Vec::len), Some(0));
    let missing = c.cli(&["blob", "get", &"ab".repeat(32)]).unwrap();
    assert_clean_error(&missing, "no blob");
    // A task that makes its outputs directory a link out of its scratch space gets nothing
    // stored: the agent does not follow it to host files.
    let out = c
        .run(&["--outputs", "/up"], "hostile", &["symlink"])
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let info = c.json(&["task", "show", "t-3", "-o", "json"]).unwrap();
    assert_eq!(info["status"]["state"], "Error", "{info}");
    let why = info["status"]["message"].as_str().unwrap_or_default();
    assert!(why.contains("symbolic link"), "{why}");
    assert_eq!(info["status"]["outputs"].as_array().map(Vec::len), Some(0));
    let bad = c
        .cli(&["run", "--outputs", "out", sample("hello").to_str().unwrap()])
        .unwrap();
    assert_clean_error(&bad, "outputs directory");
}
