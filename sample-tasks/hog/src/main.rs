//! Grows its memory 1 MiB at a time until the memory limit stops it.

fn main() {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 1 << 20]);
        if hoard.len() % 16 == 0 {
            println!("holding {} MiB", hoard.len());
        }
        std::hint::black_box(&hoard);
    }
}
