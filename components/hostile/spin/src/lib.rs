//! Hostile: spins forever. Expected: kind `fuel` (or `timeout` if the
//! deadline comes first).
//!
//! With `{"iterations": n}` it stops after `n` turns of the same loop and
//! returns `{"iterations": n}`: the benchmarks' CPU-bound step
//! (`bench/peers.sh`).
use sandflow_sdk::{Error, Step};
use serde_json::{Value, json};

struct Spin;

impl Step for Spin {
    type Input = Value;
    type Output = Value;
    fn run(input: Value) -> Result<Value, Error> {
        let limit = input.get("iterations").and_then(Value::as_u64).unwrap_or(u64::MAX);
        let mut n: u64 = 0;
        while n < limit {
            n = std::hint::black_box(n.wrapping_add(1));
        }
        Ok(json!({ "iterations": n }))
    }
}

sandflow_sdk::export_step!(Spin);
