//! A JSON Schema of workflow files, for editors (`sandflow schema`, and the
//! committed `workflow.schema.json`). Its keys are the parser's own key
//! lists, so the two cannot drift: a key the parser learns must be given a
//! type here, or [`json_schema`] panics (and its test fails).
//!
//! The schema checks shapes an editor can complete and flag (keys, types,
//! the choices of an enum); the parser's checks (references, cycles,
//! components, durations' units) stay the parser's.

use super::parse::{
    CACHE_KEYS, CASE_KEYS, COMPONENT_KEYS, DEFAULTS_KEYS, DIR_KEYS, GRANTS_KEYS, HTTP_KEYS, ON_ERROR_KEYS, RETRY_KEYS, SCHEDULE_KEYS, STEP_KEYS,
    TEST_KEYS, TRIGGER_KEYS, WORKFLOW_KEYS,
};
use crate::sandbox::QuotaKind;
use serde_json::{Map, Value, json};

/// The schema, as `sandflow schema` prints it.
pub fn json_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "sandflow workflow",
        "description": "A sandflow workflow file (README: Workflows). Steps run WebAssembly components in a sandbox; StepFlow flow files are accepted as they are.",
        "type": "object",
        "properties": properties("workflow", WORKFLOW_KEYS),
        "required": ["steps"],
        "additionalProperties": false,
        "$defs": {
            "value": { "description": "A value: plain YAML, `{ $from: ... }`, `{ $input: ... }`, `{ $step: ... }`, `{ $if: ... }`, `{ $coalesce: [...] }`, `{ $literal: ... }` or a `{{ CEL }}` template." },
            "duration": { "type": "string", "pattern": "^\\s*([0-9]+(ms|s|m|h))+\\s*$", "description": "e.g. `30s`, `250ms`, `1h30m`" },
            "size": { "oneOf": [ { "type": "integer", "minimum": 0 }, { "type": "string", "pattern": "^\\s*[0-9]+\\s*(B|KiB|MiB|GiB|KB|MB|GB)?\\s*$" } ], "description": "bytes, or e.g. `64MiB`" },
            "ids": { "oneOf": [ { "type": "string" }, { "type": "array", "items": { "type": "string" } } ] },
            "schema": { "type": ["object", "boolean", "null"], "description": "a JSON Schema" },
            "step": {
                "type": "object",
                "properties": properties("step", STEP_KEYS),
                "required": ["id"],
                "anyOf": [ { "required": ["component"] }, { "required": ["workflow"] } ],
                "additionalProperties": false,
            },
            "steps": { "type": "array", "items": { "$ref": "#/$defs/step" } },
            "settings": { "type": "object", "properties": properties("defaults", DEFAULTS_KEYS), "additionalProperties": false },
            "quota": {
                "type": "object",
                "properties": QuotaKind::ALL.iter().map(|k| (k.key().to_string(), if k.is_size() { json!({ "$ref": "#/$defs/size" }) } else { json!({ "type": "integer", "minimum": 0 }) })).collect::<Map<_, _>>(),
                "additionalProperties": false,
            },
            "component": { "type": "object", "properties": properties("component", COMPONENT_KEYS), "required": ["path"], "additionalProperties": false },
        },
    })
}

/// The properties of an object whose keys are `keys`, each with its type.
fn properties(what: &str, keys: &[&str]) -> Value {
    Value::Object(keys.iter().map(|k| (k.to_string(), property(what, k))).collect())
}

fn property(what: &str, key: &str) -> Value {
    let r = |def: &str| json!({ "$ref": format!("#/$defs/{def}") });
    let string = json!({ "type": "string" });
    let boolean = json!({ "type": "boolean" });
    let count = json!({ "type": "integer", "minimum": 1 });
    let ignored = json!({ "description": "StepFlow's; accepted and ignored" });
    match (what, key) {
        ("workflow", "name" | "description" | "version") => string,
        ("workflow", "input" | "inputSchema" | "input_schema") => r("schema"),
        ("workflow", "outputSchema" | "output_schema" | "variables") => r("schema"),
        ("workflow", "schemas") => json!({ "type": "object", "description": "StepFlow's schemas: `properties.input` is the run input's" }),
        ("workflow", "schema") => json!({ "type": "string", "description": "StepFlow's flow schema URL; ignored" }),
        ("workflow", "examples" | "metadata") => ignored,
        ("workflow", "defaults") => r("settings"),
        ("workflow" | "defaults" | "step", "timeout") | ("workflow", "finally_timeout") => r("duration"),
        ("workflow" | "step", "concurrency") => count,
        ("workflow", "fail_fast") => boolean,
        ("workflow" | "defaults" | "step", "quota") => r("quota"),
        ("workflow", "components") => json!({ "type": "object", "additionalProperties": r("component") }),
        ("workflow", "steps") => json!({ "anyOf": [ r("steps"), { "type": "array", "items": r("steps"), "description": "Argo-style groups" } ] }),
        ("workflow", "finally") => r("steps"),
        ("workflow", "output") | ("step", "input" | "skipIf" | "skip_if" | "forEach") => r("value"),
        ("workflow", "test") => json!({
            "type": ["object", "null"],
            "properties": properties("test", TEST_KEYS),
            "additionalProperties": false,
        }),
        ("workflow", "schedules") => json!({
            "type": ["array", "null"],
            "items": { "type": "object", "properties": properties("schedule", SCHEDULE_KEYS), "required": ["cron"], "additionalProperties": false },
            "description": "runs that start by themselves once registered (`sandflow schedule add FILE`)",
        }),
        ("workflow", "triggers") => json!({
            "type": ["array", "null"],
            "items": { "type": "object", "properties": properties("trigger", TRIGGER_KEYS), "required": ["webhook", "secret"], "additionalProperties": false },
            "description": "webhooks that start runs once registered (`sandflow schedule add FILE`): POST /hooks/NAME on `serve`",
        }),
        ("trigger", "webhook") => json!({ "type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$" }),
        ("trigger", "secret") => json!({ "type": "string", "description": "the secret (by name) deliveries are signed with (HMAC-SHA256)" }),
        ("trigger", "input") => r("value"),
        ("schedule", "name") => json!({ "type": "string", "pattern": "^[A-Za-z0-9_.-]+$" }),
        ("schedule", "cron") => json!({ "type": "string", "description": "5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first; or @daily, @hourly, …" }),
        ("schedule", "timezone") => json!({ "type": "string", "description": "an IANA time zone, e.g. Europe/Berlin (default UTC)" }),
        ("schedule", "input") => json!({}),
        ("schedule", "catchup") => json!({ "enum": ["none", "one", "all"], "description": "ticks missed while no scheduler ran: none, one run for the latest (default), or one for each" }),
        ("schedule", "overlap") => json!({ "enum": ["allow", "skip", "cancel_previous"], "description": "a tick while an earlier run of the schedule runs (default allow)" }),
        ("test", "cases") => json!({
            "type": "array",
            "items": { "type": "object", "properties": properties("case", CASE_KEYS), "additionalProperties": false },
        }),
        ("test", "config" | "configFile" | "config_file") => ignored,
        ("case", "name" | "description" | "error") => string,
        ("case", "input" | "output") => json!({}),
        ("case", "target") => r("ids"),
        ("case", "signals") => json!({
            "type": "object",
            "additionalProperties": {},
            "description": "by step id: the data a step that waits for a signal is sent (an approval's: {approved, comment})",
        }),
        ("case", "outcome") => json!({ "enum": ["failed"] }),
        ("defaults" | "step", "fuel") => json!({ "type": "integer", "minimum": 1 }),
        ("defaults" | "step", "memory") => r("size"),
        ("defaults" | "step", "retry") => json!({ "type": "object", "properties": properties("retry", RETRY_KEYS), "additionalProperties": false }),
        ("defaults" | "step", "cache") => {
            json!({ "type": "object", "properties": properties("cache", CACHE_KEYS), "required": ["ttl"], "additionalProperties": false })
        }
        ("cache", "ttl") | ("retry", "delay" | "max_delay") => r("duration"),
        ("cache", "key") => r("value"),
        ("retry", "max_attempts") => count,
        ("retry", "backoff") => json!({ "enum": ["none", "linear", "exponential"] }),
        ("component", "path") => string,
        ("component", "sha256") => json!({ "type": "string", "pattern": "^[0-9a-fA-F]{64}$" }),
        ("component", "config") => json!({}),
        ("component", "grants") => {
            json!({ "type": "object", "properties": properties("grants", GRANTS_KEYS), "additionalProperties": false })
        }
        ("grants", "env") => json!({ "type": "array", "items": { "type": "string" } }),
        ("grants", "dirs") => json!({
            "type": "array",
            "items": { "type": "object", "properties": properties("dir", DIR_KEYS), "required": ["host", "guest"], "additionalProperties": false },
        }),
        ("grants", "http") => json!({
            "type": "object",
            "properties": properties("http", HTTP_KEYS),
            "required": ["allow"],
            "additionalProperties": false,
            "description": "outbound HTTP (wasi:http): only to these hosts",
        }),
        ("http", "allow") => json!({
            "type": "array",
            "items": { "type": "string", "description": "[http|https://]HOST[:PORT]; HOST may be *.domain or *; PORT may be *" },
        }),
        ("http", "max_response") => r("size"),
        ("http", "timeout") => r("duration"),
        ("dir", "host" | "guest") => string,
        ("dir", "mode") => json!({ "enum": ["ro", "rw"] }),
        ("step", "id") => json!({ "type": "string", "pattern": "^[A-Za-z0-9_-]+$" }),
        ("step", "component") => json!({ "type": "string", "description": "a name from `components`, a `.wasm` path, `/builtin/NAME`, or a name bound by `--components`" }),
        ("step", "workflow") => json!({ "type": "string", "description": "another workflow file, run as a nested run" }),
        ("step", "needs") => r("ids"),
        ("step", "depends") => json!({ "type": "string", "description": "e.g. `build && (test.failed || test.skipped)`" }),
        ("step", "when") => json!({ "type": ["string", "boolean"], "description": "a CEL condition" }),
        ("step", "on_error" | "onError") => {
            json!({ "type": ["object", "null"], "properties": properties("on_error", ON_ERROR_KEYS), "additionalProperties": false })
        }
        ("on_error", "action") => json!({ "enum": ["fail", "continue", "skip", "useDefault", "use_default", "retry"] }),
        ("on_error", "default_output" | "defaultValue" | "default_value") => json!({}),
        ("on_error", "maxRetries" | "max_retries") => json!({ "type": "integer", "minimum": 0 }),
        ("step", "runs_on") => r("ids"),
        ("step", "wait") => json!({
            "type": "object",
            "properties": properties("wait", super::wait::WAIT_KEYS),
            "additionalProperties": false,
            "description": "a durable timer before the step starts: exactly one of duration or until; it holds no worker slot",
        }),
        ("wait", "duration") => json!({ "type": ["string", "number"], "description": "e.g. `30s`, `1h30m`, or seconds" }),
        ("wait", "until") => json!({ "type": "string", "description": "an RFC 3339 time with its offset, e.g. `2026-12-24T09:00:00Z`" }),
        ("step", "mustExecute" | "must_execute") => json!({ "type": ["boolean", "null"] }),
        ("step", "inputSchema" | "outputSchema" | "input_schema" | "output_schema" | "metadata") => ignored,
        _ => panic!("the schema has no type for `{key}` of {what}: add it to workflow/schema.rs"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_the_parser_knows_has_a_type() {
        // Panics (naming the key) if one does not.
        let schema = json_schema();
        jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    }
}
