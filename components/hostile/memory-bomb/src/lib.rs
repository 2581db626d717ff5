//! Hostile: allocates without bound (and touches what it gets). Expected:
//! kind `memory`.
use sandflow_sdk::{Error, Step};
use serde_json::{Value, json};

struct Bomb;

impl Step for Bomb {
    type Input = Value;
    type Output = Value;
    fn run(_: Value) -> Result<Value, Error> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![0xAB; 1 << 20]);
            if hoard.len() == usize::MAX {
                return Ok(json!(hoard.len()));
            }
        }
    }
}

sandflow_sdk::export_step!(Bomb);
