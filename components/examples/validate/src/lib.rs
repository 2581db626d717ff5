//! `validate`: checks its input against the JSON Schema in its config.
//!
//! Config: `{schema: <JSON Schema>}`. A valid input is returned unchanged, so
//! the step can sit in front of others; an invalid one fails the step
//! (permanently: a retry cannot fix it) with every violation, each with its
//! JSON pointer.

use sandflow_sdk::{Describe, Error, Step};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    schema: Value,
}

struct Validate;

impl Step for Validate {
    type Input = Value;
    type Output = Value;

    fn run(input: Value) -> Result<Value, Error> {
        let config: Option<Config> = sandflow_sdk::config()?;
        let config = config.ok_or_else(|| {
            Error::permanent("validate needs `config: { schema: ... }` on its component")
        })?;
        let validator = jsonschema::validator_for(&config.schema)
            .map_err(|e| Error::permanent(format!("config.schema is not a valid JSON Schema: {e}")))?;
        let problems: Vec<String> = validator
            .iter_errors(&input)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() { format!("(root): {e}") } else { format!("{at}: {e}") }
            })
            .collect();
        if problems.is_empty() {
            Ok(input)
        } else {
            Err(Error::permanent(format!("input does not match the schema: {}", problems.join("; "))))
        }
    }

    fn describe() -> Describe {
        Describe {
            description: "Passes its input through if it matches config.schema; fails otherwise."
                .into(),
            input_schema: None,
            output_schema: Some(json!(true)),
        }
    }
}

sandflow_sdk::export_step!(Validate);
