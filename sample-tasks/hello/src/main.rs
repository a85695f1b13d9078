//! Prints its arguments and environment: shows what a task can see (only what its spec gives).

fn main() {
    let args: Vec<String> = std::env::args().collect();
    println!("hello from a wasm component!");
    println!("args: {}", args[1..].join(" "));
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    env.sort();
    for (k, v) in env {
        println!("env: {k}={v}");
    }
    eprintln!("(this line went to stderr)");
}
