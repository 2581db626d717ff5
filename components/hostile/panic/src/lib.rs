//! Hostile: panics (with panic=abort, a wasm `unreachable` trap). Expected:
//! kind `trap`.
use sandflow_sdk::{Error, Step};
use serde_json::Value;

struct Panic;

impl Step for Panic {
    type Input = Value;
    type Output = Value;
    fn run(_: Value) -> Result<Value, Error> {
        panic!("this step always panics");
    }
}

sandflow_sdk::export_step!(Panic);
