//! A task that talks to the platform through `wasmos:task` (the `wasmos-task` crate): it prints
//! its context, reports progress and publishes results.
//!
//! `platform steps N MS`: N steps of MS milliseconds each, reporting progress after each,
//! then the result `steps` = N and the file result `log` (one line a step). `platform
//! linger`: waits to be asked to stop (up to a minute), then publishes `stopped` and returns
//! within its grace period. `platform flaky`: fails its job slot's first attempt, and
//! publishes `attempt` on the next. `platform stubborn` ignores being asked to stop.

use std::time::Duration;

fn main() {
    let me = wasmos_task::context();
    println!(
        "task t-{} role {} attempt {} job {:?} group {:?} index {:?} deadline {}",
        me.task_id, me.role, me.attempt, me.job_id, me.group, me.index, me.deadline_ms
    );
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("steps") => {
            let n: u32 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);
            let ms: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1000);
            for i in 1..=n {
                std::thread::sleep(Duration::from_millis(ms));
                wasmos_task::progress(i as f32 / n as f32, &format!("step {i} of {n}"));
                println!("step {i} of {n}");
            }
            report(wasmos_task::put_result("steps", n.to_string()));
            // A file result: read by the agent once the task has ended.
            let log: String = (1..=n).map(|i| format!("step {i} of {n}\n")).collect();
            match std::fs::write("/steps.log", log) {
                Ok(()) => report(wasmos_task::put_file("log", "/steps.log")),
                Err(e) => println!("cannot write /steps.log: {e}"),
            }
            report(wasmos_task::put_file("bad", "steps.log"));
            report(wasmos_task::put_result("bad name!", "x"));
            report(wasmos_task::put_result("huge", vec![0u8; 20_000]));
        }
        Some("linger") => {
            wasmos_task::progress(0.5, "waiting to be asked to stop");
            println!("lingering");
            if wasmos_task::wait_for_cancel(Duration::from_secs(60)) {
                println!(
                    "asked to stop, {} ms to finish",
                    wasmos_task::grace().as_millis()
                );
                report(wasmos_task::put_result("stopped", "cleanly"));
            }
        }
        // Asked to stop, it carries on regardless: it is stopped at the end of its grace.
        Some("stubborn") => {
            println!("ignoring requests to stop");
            loop {
                std::thread::sleep(Duration::from_millis(100));
                if wasmos_task::cancel_requested() {
                    wasmos_task::progress(0.9, "asked to stop, carrying on");
                }
            }
        }
        // Fails its slot's first attempt: a job's retry runs it again as attempt 2.
        Some("flaky") if me.attempt < 2 => {
            eprintln!("attempt {} fails on purpose", me.attempt);
            std::process::exit(1);
        }
        Some("flaky") => report(wasmos_task::put_result("attempt", me.attempt.to_string())),
        _ => eprintln!("usage: platform steps N MS | linger | stubborn | flaky"),
    }
}

fn report(r: Result<(), wasmos_task::ResultError>) {
    match r {
        Ok(()) => println!("result published"),
        Err(e) => println!("result refused: {e}"),
    }
}
