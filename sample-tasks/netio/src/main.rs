//! Moves bytes over one TCP connection and reports the rate the task saw: the sample for network
//! bandwidth (`--resource net=RATE`) and the socket-heavy task of its benchmark.
//!
//! ```text
//! netio send HOST:PORT BYTES   write BYTES to HOST:PORT, then close
//! netio recv HOST:PORT         read from HOST:PORT until it closes
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Instant;

const CHUNK: usize = 64 << 10;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (mode, addr) = match (args.get(1), args.get(2)) {
        (Some(m), Some(a)) => (m.as_str(), a.as_str()),
        _ => return usage(),
    };
    let mut stream = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("netio: cannot connect to {addr}: {e}");
            return ExitCode::from(1);
        }
    };
    let start = Instant::now();
    let moved = match mode {
        "send" => {
            let Some(Ok(total)) = args.get(3).map(|b| b.parse::<u64>()) else {
                return usage();
            };
            let chunk = vec![0x5a_u8; CHUNK];
            let mut left = total;
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                if let Err(e) = stream.write_all(&chunk[..n]) {
                    eprintln!("netio: sending to {addr}: {e}");
                    return ExitCode::from(1);
                }
                left -= n as u64;
            }
            total
        }
        "recv" => {
            let mut buf = vec![0_u8; CHUNK];
            let mut total = 0_u64;
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(e) => {
                        eprintln!("netio: receiving from {addr}: {e}");
                        return ExitCode::from(1);
                    }
                }
            }
            total
        }
        _ => return usage(),
    };
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{mode} {moved} bytes in {secs:.3} s: {:.0} bytes/s",
        moved as f64 / secs.max(1e-9)
    );
    ExitCode::SUCCESS
}

fn usage() -> ExitCode {
    eprintln!("usage: netio send HOST:PORT BYTES | netio recv HOST:PORT");
    ExitCode::from(2)
}
