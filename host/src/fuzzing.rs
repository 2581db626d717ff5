//! Fuzz targets: everything that parses untrusted text, one function each,
//! called by the coverage-guided targets under `fuzz/` (cargo-fuzz) and by
//! the bounded run in the tests (`tests/e2e/fuzz.rs`).
//!
//! Each target takes arbitrary bytes and must return normally: a panic is a
//! bug. Where a parser refuses its input, the refusal must be a diagnostic
//! a person can act on (a place and a message), never a crash.

use crate::expr::{CelCache, Scope};
use crate::workflow::{Diagnostics, Location};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// A fuzz target: its name and the function that takes one input.
pub type Target = (&'static str, fn(&[u8]));

/// The targets, by name (as `fuzz/fuzz_targets/NAME.rs`).
pub const TARGETS: &[Target] = &[
    ("workflow", workflow),
    ("template", template),
    ("condition", condition),
    ("path", path),
    ("set", set),
    ("component", component),
];

/// A refused workflow has at least one problem, each with a place and words.
fn check(d: &Diagnostics) {
    assert!(!d.problems.is_empty(), "a refusal without a diagnostic");
    for p in &d.problems {
        assert!(p.location.line >= 1 && p.location.column >= 1, "a diagnostic without a place: {p}");
        assert!(!p.message.trim().is_empty(), "a diagnostic without a message at {}", p.location);
    }
    let _ = d.to_string();
}

/// Sample data for evaluating what parsed.
fn with_scope(f: impl FnOnce(&Scope<'_>)) {
    let inputs = json!({"text": "hi", "n": 3, "list": [1, {"a": null}], "nested": {"x": [true]}});
    let outputs: BTreeMap<String, Option<Value>> =
        BTreeMap::from([("a".into(), Some(json!({"text": "A", "items": [1, 2]}))), ("skipped".into(), None)]);
    let secrets = BTreeMap::from([("TOKEN".to_string(), "s3cr3t".to_string())]);
    let cache = CelCache::default();
    let scope = Scope {
        inputs: &inputs,
        cache: &cache,
        outputs: &outputs,
        item: Some(&inputs["list"]),
        index: Some(1),
        run_id: "fuzz",
        attempt: 1,
        secrets: &secrets,
        ending: None,
        step_input: None,
        variables: &serde_json::Value::Null,
        trigger: None,
    };
    f(&scope)
}

/// A whole workflow file: YAML, the model, the plan (cycles, references),
/// and the graph renderings of one that plans.
pub fn workflow(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match crate::workflow::load_str(Path::new("fuzz.yaml"), text) {
        Ok(wf) => match crate::plan::Plan::new(wf) {
            Ok(plan) => {
                let _ = (plan.to_mermaid(), plan.to_dot(), plan.secret_refs(), plan.sinks());
            }
            Err(d) => check(&d),
        },
        Err(d) => check(&d),
    }
}

/// A value with `{{ }}` templates and `$from` forms, as a step's input:
/// the text is the value of one YAML key, parsed, then evaluated.
pub fn template(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let file: Arc<Path> = Arc::from(Path::new("fuzz.yaml"));
    let Ok(root) = crate::workflow::yaml::parse(&file, text) else { return };
    let mut diags = Vec::new();
    let template = crate::expr::parse(&root, &file, &mut diags);
    for d in &diags {
        assert!(d.location.line >= 1 && !d.message.is_empty(), "{d}");
    }
    if diags.is_empty() {
        let _ = (template.step_refs(), template.is_const());
        with_scope(|s| {
            let _ = template.eval(s);
        });
    }
}

/// A `when` condition: CEL with the `{{ }}` compatibility forms.
pub fn condition(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let at = Location::file_start(&Arc::from(Path::new("fuzz.yaml")));
    match crate::expr::parse_condition(text, &at) {
        Ok(cond) => with_scope(|s| {
            let _ = cond.eval_bool(s);
        }),
        Err(d) => assert!(!d.message.is_empty(), "{d}"),
    }
}

/// A `$from` path (`a.b[0]`, `$.a["b"]`), applied to a value.
pub fn path(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(p) = crate::expr::path::JsonPath::parse(text) {
        let v = json!({"a": {"b": [1, {"c": "d"}]}, "": [null]});
        let _ = p.get(&v);
    }
}

/// A `--set KEY=VALUE` argument, applied twice (the second may meet what
/// the first made).
pub fn set(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut input = json!({"user": {"id": 1}, "n": 2});
    let _ = crate::runs::set_path(&mut input, text);
    let _ = crate::runs::set_path(&mut input, text);
}

/// Bytes handed to `sandflow component inspect`: the header checks and the
/// decoding of a WIT world.
pub fn component(data: &[u8]) {
    if crate::sandbox::check_component_header(data).is_ok() {
        let _ = crate::sandbox::decode_world(data);
    }
}
