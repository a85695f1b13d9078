//! Exits with the status code given as its first argument (0-255), after saying so; with a
//! second argument, waits that many milliseconds first (a task that is running for a while).

fn main() {
    let arg = std::env::args().nth(1).unwrap_or_else(|| "0".to_string());
    let Ok(code) = arg.parse::<u8>() else {
        eprintln!("exit-code: `{arg}` is not a number from 0 to 255");
        std::process::exit(2);
    };
    if let Some(wait) = std::env::args().nth(2) {
        let Ok(ms) = wait.parse::<u64>() else {
            eprintln!("exit-code: `{wait}` is not a number of milliseconds");
            std::process::exit(2);
        };
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    println!("exiting with code {code}");
    wasip2::cli::exit::exit_with_code(code);
}
