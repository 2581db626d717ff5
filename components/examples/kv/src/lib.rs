//! `kv`: run-scoped state, blobs, config and logging, as steps.
//!
//! | `op` | input | output |
//! | --- | --- | --- |
//! | `set` | `{key, value}` | `{key, previous}`: the value it replaced, or null |
//! | `get` | `{key}` | `{key, value}`: null if unset |
//! | `put_blob` | `{text}` | `{blob_id}` |
//! | `get_blob` | `{blob_id}` | `{text}` (error if unknown) |
//! | `config` | `{}` | `{config}`: the component's static config |
//!
//! Every operation also writes an `info` line to the step log.

use sandflow_sdk::{Describe, Error, Step, blobs, log, state};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Input {
    Set { key: String, value: Value },
    Get { key: String },
    PutBlob { text: String },
    GetBlob { blob_id: String },
    Config {},
}

struct Kv;

impl Step for Kv {
    type Input = Input;
    type Output = Value;

    fn run(input: Input) -> Result<Value, Error> {
        match input {
            Input::Set { key, value } => {
                let previous: Option<Value> = state::get(&key)?;
                state::set(&key, &value)?;
                log::info(format!("set {key}"));
                Ok(json!({ "key": key, "previous": previous }))
            }
            Input::Get { key } => {
                let value: Option<Value> = state::get(&key)?;
                log::info(format!("get {key}: {}", if value.is_some() { "found" } else { "unset" }));
                Ok(json!({ "key": key, "value": value }))
            }
            Input::PutBlob { text } => {
                let blob_id = blobs::put(text.as_bytes())?;
                log::info(format!("put blob {blob_id} ({} bytes)", text.len()));
                Ok(json!({ "blob_id": blob_id }))
            }
            Input::GetBlob { blob_id } => {
                let bytes = blobs::get(&blob_id)
                    .ok_or_else(|| Error::permanent(format!("no blob with id {blob_id}")))?;
                log::info(format!("got blob {blob_id}"));
                let text = String::from_utf8(bytes)
                    .map_err(|_| Error::permanent(format!("blob {blob_id} is not UTF-8 text")))?;
                Ok(json!({ "text": text }))
            }
            Input::Config {} => {
                let config: Value = sandflow_sdk::config()?;
                log::info(format!("config has {} top-level keys", config.as_object().map_or(0, |m| m.len())));
                Ok(json!({ "config": config }))
            }
        }
    }

    fn describe() -> Describe {
        Describe {
            description: "Run-scoped key-value state and blobs: set, get, put_blob, get_blob, config."
                .into(),
            input_schema: Some(json!({
                "type": "object",
                "required": ["op"],
                "properties": { "op": { "enum": ["set", "get", "put_blob", "get_blob", "config"] } }
            })),
            output_schema: Some(json!({ "type": "object" })),
        }
    }
}

sandflow_sdk::export_step!(Kv);
