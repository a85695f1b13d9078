//! Builds a JSON document of N records (first argument, default 20000), then parses and
//! re-serializes it 10 times: a CPU-bound benchmark task that allocates like real services do.

use serde_json::{Value, json};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let records: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "id": i,
                "name": format!("record-{i}"),
                "tags": ["alpha", "beta", "gamma"],
                "score": i as f64 * 0.5,
                "nested": {"ok": i % 2 == 0, "weights": [1, 2, 3, 4]},
            })
        })
        .collect();
    let mut text = serde_json::to_string(&Value::Array(records)).unwrap_or_default();
    let mut total = 0usize;
    for _ in 0..10 {
        let parsed: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("parse error: {e}");
                std::process::exit(1);
            }
        };
        total += parsed.as_array().map_or(0, Vec::len);
        text = serde_json::to_string(&parsed).unwrap_or_default();
    }
    println!("parsed {total} records in {} bytes of JSON", text.len());
}
