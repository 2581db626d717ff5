//! Hostile: writes `input.mib` MiB (default 32) to stdout and to stderr,
//! then succeeds. Expected: success, with the step log capped and the
//! dropped bytes counted.
use sandflow_sdk::{Error, Step};
use serde::Deserialize;
use serde_json::{Value, json};
use std::io::Write;

#[derive(Deserialize, Default)]
struct Input {
    mib: Option<usize>,
}

struct Flood;

impl Step for Flood {
    type Input = Option<Input>;
    type Output = Value;
    fn run(input: Option<Input>) -> Result<Value, Error> {
        let input = input.unwrap_or_default();
        let mib = input.mib.unwrap_or(32);
        let line = [b'y'; 1023];
        let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
        for _ in 0..mib * 1024 {
            // Errors (a closed stream) are ignored: a flood does not stop.
            let _ = out.write_all(&line).and_then(|_| out.write_all(b"\n"));
            let _ = err.write_all(&line).and_then(|_| err.write_all(b"\n"));
        }
        Ok(json!({ "wrote_mib": mib }))
    }
}

sandflow_sdk::export_step!(Flood);
