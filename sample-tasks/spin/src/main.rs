//! Spins forever: only a CPU limit, a timeout or a kill stops it. `spin SECONDS` idles that
//! long first (a task whose use grows, for the revocable-resources test).

fn main() {
    if let Some(secs) = std::env::args().nth(1).and_then(|a| a.parse::<u64>().ok()) {
        println!("waiting {secs}s");
        std::thread::sleep(std::time::Duration::from_secs(secs));
    }
    println!("spinning");
    let mut x: u64 = 1;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}
