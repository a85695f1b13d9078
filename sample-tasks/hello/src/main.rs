//! Prints its arguments, environment and stdin: shows what a task can see (only what its spec
//! gives).

use std::io::Read;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    println!("hello from a wasm component!");
    println!("args: {}", args[1..].join(" "));
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    env.sort();
    for (k, v) in env {
        println!("env: {k}={v}");
    }
    let mut input = String::new();
    if std::io::stdin().read_to_string(&mut input).is_ok() && !input.is_empty() {
        for line in input.lines() {
            println!("stdin: {line}");
        }
    }
    eprintln!("(this line went to stderr)");
}
