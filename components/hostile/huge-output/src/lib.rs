//! Hostile: returns a valid JSON string of `input.mib` MiB (default 8),
//! over the host's default output cap. Expected: kind `output`.
use sandflow_sdk::{Error, Step};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize, Default)]
struct Input {
    mib: Option<usize>,
}

struct Huge;

impl Step for Huge {
    type Input = Option<Input>;
    type Output = Value;
    fn run(input: Option<Input>) -> Result<Value, Error> {
        let input = input.unwrap_or_default();
        Ok(Value::String("x".repeat(input.mib.unwrap_or(8) << 20)))
    }
}

sandflow_sdk::export_step!(Huge);
