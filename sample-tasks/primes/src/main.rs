//! Counts the primes below N (first argument, default 1000000) with a sieve: a CPU-bound demo task.

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let mut composite = vec![false; n.max(2)];
    let mut count = 0;
    let mut last = 0;
    for i in 2..n {
        if !composite[i] {
            count += 1;
            last = i;
            let mut j = i * i;
            while j < n {
                composite[j] = true;
                j += i;
            }
        }
    }
    println!("{count} primes below {n}; the largest is {last}");
}
