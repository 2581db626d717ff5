//! `mock`: a stand-in for a component that is not written yet, or that
//! should not run in a test. Its config lists behaviours: for an input
//! equal to `input`, succeed with `result` or fail with `error`.
//!
//! ```yaml
//! components:
//!   /mock/one_output:
//!     path: ../components/dist/mock.wasm
//!     config:
//!       behaviors:
//!         - { input: { input: a }, outcome: success, result: { output: b } }
//!         - { input: { mode: error }, outcome: failed, error: { message: boom } }
//! ```
//!
//! An input no behaviour lists fails the step with a permanent error that
//! shows the input. The shape follows StepFlow's mock plugin, so its test
//! flows run against this component.

use sandflow_sdk::{Describe, Error, Step, config, log};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Config {
    behaviors: Vec<Behavior>,
}

#[derive(Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case", deny_unknown_fields)]
enum Behavior {
    Success {
        input: Value,
        #[serde(default)]
        result: Value,
    },
    Failed {
        input: Value,
        error: Failure,
    },
}

#[derive(Deserialize)]
struct Failure {
    message: String,
    /// StepFlow's error code; shown in the message.
    #[serde(default)]
    code: Option<Value>,
}

struct Mock;

impl Step for Mock {
    type Input = Value;
    type Output = Value;

    fn run(input: Value) -> Result<Value, Error> {
        let config: Option<Config> = config()?;
        let behaviors = config.unwrap_or_default().behaviors;
        let found = behaviors.into_iter().find(|b| match b {
            Behavior::Success { input: want, .. } | Behavior::Failed { input: want, .. } => *want == input,
        });
        match found {
            Some(Behavior::Success { result, .. }) => Ok(result),
            Some(Behavior::Failed { error, .. }) => {
                log::info(format!("failing as configured for {input}"));
                Err(match error.code {
                    Some(code) => Error::new(format!("{} (code {code})", error.message)),
                    None => Error::new(error.message),
                })
            }
            None => Err(Error::permanent(format!("no behavior defined for input {input}"))),
        }
    }

    fn describe() -> Describe {
        Describe { description: "Answers inputs with the results its config lists (a mock for tests).".into(), ..Describe::default() }
    }
}

sandflow_sdk::export_step!(Mock);
