//! Hostile: tries to read `/etc/passwd` (or `input.path`). Without a grant
//! it must fail: kind `component` with the OS error. It returns the file's
//! first line if it ever gets it, which a test treats as an escape.
use sandflow_sdk::{Error, Step};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize, Default)]
struct Input {
    path: Option<String>,
}

struct ReadFile;

impl Step for ReadFile {
    type Input = Option<Input>;
    type Output = Value;
    fn run(input: Option<Input>) -> Result<Value, Error> {
        let input = input.unwrap_or_default();
        let path = input.path.unwrap_or_else(|| "/etc/passwd".to_string());
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(json!({ "path": path, "first_line": text.lines().next() })),
            Err(e) => Err(Error::permanent(format!("could not read {path}: {e}"))),
        }
    }
}

sandflow_sdk::export_step!(ReadFile);
