//! Does nothing and exits 0: the cheapest possible task, for launch-rate benchmarks.

fn main() {}
