//! Hostile: spins forever. Expected: kind `fuel` (or `timeout` if the
//! deadline comes first).
use sandflow_sdk::{Error, Step};
use serde_json::Value;

struct Spin;

impl Step for Spin {
    type Input = Value;
    type Output = Value;
    fn run(_: Value) -> Result<Value, Error> {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

sandflow_sdk::export_step!(Spin);
