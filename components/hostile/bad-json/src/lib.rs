//! Hostile: returns text that is not JSON, bypassing the SDK's serializer.
//! Expected: kind `output`.
#[doc(hidden)]
pub struct BadJson;

impl sandflow_sdk::bindings::Guest for BadJson {
    fn run(
        _input: String,
    ) -> Result<String, sandflow_sdk::bindings::sandflow::step::types::StepError> {
        Ok("{\"unterminated\": ".to_string())
    }

    fn describe() -> sandflow_sdk::bindings::sandflow::step::types::Metadata {
        sandflow_sdk::__private::describe::<Never>("bad-json", env!("CARGO_PKG_VERSION"))
    }
}

struct Never;
impl sandflow_sdk::Step for Never {
    type Input = serde_json::Value;
    type Output = serde_json::Value;
    fn run(_: serde_json::Value) -> Result<serde_json::Value, sandflow_sdk::Error> {
        unreachable!("never exported")
    }
}

sandflow_sdk::bindings::__export_step_bindings!(BadJson);
