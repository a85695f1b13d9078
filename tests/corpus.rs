//! The hostile corpus (`sample-tasks/hostile/cases.txt`): its cases, each with the component,
//! arguments and `wasmos run` flags it runs with and the outcome it must have. `hostile.rs` runs
//! them all at once on one agent; `wine.rs` runs a subset on a Linux and a Windows agent.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every case runs with these limits, unless its own flags override one.
const BASE: &[(&str, &str)] = &[
    ("--timeout", "2s"),
    ("--mem", "32MiB"),
    ("--disk", "8MiB"),
    ("--max-output", "64KiB"),
    ("--on-output-limit", "stop"),
    ("--cpu", "100m"),
];
pub const LIMIT: Duration = Duration::from_secs(2);

pub struct Case {
    pub name: String,
    pub file: PathBuf,
    pub args: Vec<String>,
    pub flags: Vec<String>,
    pub code: i32,
    pub expect: String,
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sample-tasks/hostile")
}

/// Reads cases.txt, building the components it names into `work`.
pub fn load_cases(work: &Path) -> Vec<Case> {
    let input = work.join("input.txt");
    std::fs::write(&input, "the input file\n").unwrap();
    let table = std::fs::read_to_string(corpus_dir().join("cases.txt")).unwrap();
    let mut cases = Vec::new();
    for line in table
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        assert_eq!(cols.len(), 6, "malformed line in cases.txt: {line}");
        let file = match cols[1] {
            "hostile.wasm" => crate::sample("hostile"),
            "@truncated" => {
                let bytes = std::fs::read(crate::sample("hostile")).unwrap();
                let p = work.join("truncated.wasm");
                std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
                p
            }
            "@huge" => {
                // A component header followed by 65 MiB: over the 64 MiB cap.
                let mut bytes = vec![0u8, b'a', b's', b'm', 0x0d, 0, 1, 0];
                bytes.resize(65 << 20, 0);
                let p = work.join("huge.wasm");
                std::fs::write(&p, bytes).unwrap();
                p
            }
            "@compile-bomb" => {
                let p = work.join("compile-bomb.wasm");
                std::fs::write(&p, compile_bomb(12_000)).unwrap();
                p
            }
            "@text" => {
                let p = work.join("text.wasm");
                std::fs::write(&p, "(component) ;; text format is not accepted").unwrap();
                p
            }
            wat => {
                let src = corpus_dir().join(wat);
                let bytes = wat::parse_file(&src).unwrap();
                let p = work.join(Path::new(wat).with_extension("wasm").file_name().unwrap());
                std::fs::write(&p, bytes).unwrap();
                p
            }
        };
        let mut flags: Vec<String> = Vec::new();
        let own: Vec<String> = cols[3]
            .split_whitespace()
            .map(|f| f.replace("@input", input.to_str().unwrap()))
            .collect();
        for (k, v) in BASE {
            if !own.iter().any(|f| f == k) {
                flags.extend([k.to_string(), v.to_string()]);
            }
        }
        flags.extend(own);
        cases.push(Case {
            name: cols[0].to_string(),
            file,
            args: cols[2].split_whitespace().map(String::from).collect(),
            flags,
            code: cols[4].parse().unwrap(),
            expect: cols[5].to_string(),
        });
    }
    cases
}

/// A small, valid component that is costly to compile: one function with `n` i64 locals,
/// `n` conditional writes to them and a final read of every one. Cranelift's SSA construction
/// then does work (and keeps memory) proportional to n²: at n = 3,000 (45 KB) compiling takes
/// 3 s and 320 MB here, at 6,000 (90 KB) 11 s and 1.3 GB, and at 12,000 (180 KB) it runs into
/// the agent's default 2 GiB bound after 7 s.
fn compile_bomb(n: usize) -> Vec<u8> {
    let mut body = String::new();
    for j in 0..n {
        let k = j * 7919 % n + 1;
        body.push_str(&format!(
            "(if (local.get 0) (then (local.set {k} (i64.const {j}))))"
        ));
    }
    body.push_str("(i64.const 0)");
    for i in 1..=n {
        body.push_str(&format!("(local.get {i}) (i64.add)"));
    }
    let locals = vec!["i64"; n].join(" ");
    let wat = format!(
        "(component (core module (func (export \"f\") (param i32) (result i64) (local {locals}) {body})))"
    );
    wat::parse_str(wat).unwrap()
}
