//! Returns an error marked not retryable. Expected: kind `component`,
//! `retryable: false`.
use sandflow_sdk::{Error, Step};
use serde_json::Value;

struct Fatal;

impl Step for Fatal {
    type Input = Value;
    type Output = Value;
    fn run(_: Value) -> Result<Value, Error> {
        Err(Error::permanent("the input can never be processed"))
    }
}

sandflow_sdk::export_step!(Fatal);
