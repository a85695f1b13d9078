//! Exits with the status code given as its first argument (0-255), after saying so.

fn main() {
    let arg = std::env::args().nth(1).unwrap_or_else(|| "0".to_string());
    let Ok(code) = arg.parse::<u8>() else {
        eprintln!("exit-code: `{arg}` is not a number from 0 to 255");
        std::process::exit(2);
    };
    println!("exiting with code {code}");
    wasip2::cli::exit::exit_with_code(code);
}
