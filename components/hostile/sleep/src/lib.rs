//! Hostile: blocks in a WASI sleep for `input.ms` milliseconds, or
//! `input.secs` seconds (default an hour). Expected: kind `timeout` at the
//! step's deadline, though no wasm runs. Also a slow step for tests.
use sandflow_sdk::{Error, Step};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize, Default)]
struct Input {
    secs: Option<u64>,
    ms: Option<u64>,
}

struct Sleep;

impl Step for Sleep {
    type Input = Option<Input>;
    type Output = Value;
    fn run(input: Option<Input>) -> Result<Value, Error> {
        let input = input.unwrap_or_default();
        if let Some(ms) = input.ms {
            std::thread::sleep(std::time::Duration::from_millis(ms));
            return Ok(json!({ "slept_ms": ms }));
        }
        let secs = input.secs.unwrap_or(3600);
        std::thread::sleep(std::time::Duration::from_secs(secs));
        Ok(json!({ "slept_secs": secs }))
    }
}

sandflow_sdk::export_step!(Sleep);
