//! Hostile: blocks in a WASI sleep for `input.ms` milliseconds, or
//! `input.secs` seconds (default an hour). Expected: kind `timeout` at the
//! step's deadline, though no wasm runs. Also a slow step for tests; with
//! `input.lines` it prints that many lines to stdout, `ms` apart (`line 1
//! of 3`), as a step whose log grows while it runs.
use sandflow_sdk::{Error, Step};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize, Default)]
struct Input {
    secs: Option<u64>,
    ms: Option<u64>,
    lines: Option<u64>,
}

struct Sleep;

impl Step for Sleep {
    type Input = Option<Input>;
    type Output = Value;
    fn run(input: Option<Input>) -> Result<Value, Error> {
        let input = input.unwrap_or_default();
        if let Some(lines) = input.lines {
            let ms = input.ms.unwrap_or(1000);
            for i in 1..=lines {
                println!("line {i} of {lines}");
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
            return Ok(json!({ "lines": lines, "slept_ms": ms * lines }));
        }
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
