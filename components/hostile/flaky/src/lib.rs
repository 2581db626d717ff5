//! Fails (retryably) until it has been called `input.succeed_on` times in
//! the run (default 3), counting calls in run-scoped state under
//! `input.key` (default `flaky`). Each attempt is a fresh instance, so the
//! count lives in state, not memory. Shows retries and backoff.
use sandflow_sdk::{Error, Step, log, state};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize, Default)]
struct Input {
    succeed_on: Option<u64>,
    key: Option<String>,
}

struct Flaky;

impl Step for Flaky {
    type Input = Option<Input>;
    type Output = Value;
    fn run(input: Option<Input>) -> Result<Value, Error> {
        let input = input.unwrap_or_default();
        let key = input.key.unwrap_or_else(|| "flaky".to_string());
        let calls = state::get::<u64>(&key)?.unwrap_or(0) + 1;
        state::set(&key, &calls)?;
        let succeed_on = input.succeed_on.unwrap_or(3);
        if calls < succeed_on {
            log::warn(format!("call {calls} of {succeed_on}: failing on purpose"));
            return Err(Error::new(format!("flaky failure on call {calls}")));
        }
        Ok(json!({ "calls": calls }))
    }
}

sandflow_sdk::export_step!(Flaky);
