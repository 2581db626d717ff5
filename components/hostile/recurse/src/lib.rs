//! Hostile: recurses without bound. Expected: kind `trap` (stack overflow).
//! Frames are small and keep nothing in linear memory, so the wasm stack
//! (limited by the host) overflows, not Rust's shadow stack.
use sandflow_sdk::{Error, Step};
use serde_json::{Value, json};

struct Recurse;

#[inline(never)]
fn dive(depth: u64) -> u64 {
    1 + dive(std::hint::black_box(depth + 1))
}

impl Step for Recurse {
    type Input = Value;
    type Output = Value;
    fn run(_: Value) -> Result<Value, Error> {
        Ok(json!(dive(0)))
    }
}

sandflow_sdk::export_step!(Recurse);
