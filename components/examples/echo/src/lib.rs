//! `echo`: returns its input unchanged. The smallest possible step; the
//! benchmarks use it to measure the host's per-step overhead.

use sandflow_sdk::{Describe, Error, Step};
use serde_json::Value;

struct Echo;

impl Step for Echo {
    type Input = Value;
    type Output = Value;

    fn run(input: Value) -> Result<Value, Error> {
        Ok(input)
    }

    fn describe() -> Describe {
        Describe { description: "Returns its input unchanged.".into(), ..Describe::default() }
    }
}

sandflow_sdk::export_step!(Echo);
