//! SHA-256 over N MiB (first argument, default 64) of generated data, chaining each block's
//! digest into the next: a CPU-bound benchmark task with realistic code (a real hash library).

use sha2::{Digest, Sha256};

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(64);
    let mut block = vec![0u8; 1 << 20];
    for (i, b) in block.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let mut digest = [0u8; 32];
    for _ in 0..mib {
        block[..32].copy_from_slice(&digest);
        digest = Sha256::digest(&block).into();
    }
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    println!("sha256 chain over {mib} MiB: {hex}");
}
