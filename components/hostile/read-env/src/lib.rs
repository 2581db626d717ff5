//! Hostile: tries to read an environment variable (`input.name`, default
//! `HOME`) and lists every variable it can see. Without a grant it sees none:
//! kind `component`.
use sandflow_sdk::{Error, Step};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize, Default)]
struct Input {
    name: Option<String>,
}

struct ReadEnv;

impl Step for ReadEnv {
    type Input = Option<Input>;
    type Output = Value;
    fn run(input: Option<Input>) -> Result<Value, Error> {
        let input = input.unwrap_or_default();
        let name = input.name.unwrap_or_else(|| "HOME".to_string());
        let visible: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
        match std::env::var(&name) {
            Ok(value) => Ok(json!({ "name": name, "value": value, "visible": visible })),
            Err(e) => Err(Error::permanent(format!(
                "could not read ${name}: {e} (visible: {visible:?})"
            ))),
        }
    }
}

sandflow_sdk::export_step!(ReadEnv);
