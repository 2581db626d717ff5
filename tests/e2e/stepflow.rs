//! StepFlow flow files, run as they are: StepFlow's value forms and keys,
//! its rule that only what the output needs runs, `--components` binding
//! its `/plugin/name` components, and `--var` for `$variable`.

use crate::support::{example, run, sandflow};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

const COMPONENTS: &str = "workflows/stepflow/components.yml";

/// Each step's (state, reason, attempts).
type Steps = BTreeMap<String, (String, String, u64)>;

/// Runs `args` after `--json run`; returns the exit code, each step's
/// end, the run's end event and stderr.
fn run_json(state: &tempfile::TempDir, args: &[&str]) -> (i32, Steps, Value, String) {
    let (code, _, err) = run(sandflow(state).args(["--json", "run"]).args(args));
    let events: Vec<Value> = err.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let steps = events
        .iter()
        .filter(|e| e["event"] == "step_finished")
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
            (s("step"), (s("state"), s("reason"), e["attempt"].as_u64().unwrap_or(0)))
        })
        .collect();
    let end = events.iter().find(|e| e["event"] == "run_finished").cloned().unwrap_or(Value::Null);
    (code, steps, end, err)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn the_stepflow_examples_pass_their_test_cases() {
    let state = tempfile::tempdir().unwrap();
    let (code, out, err) = run(sandflow(&state).args([
        "test",
        "--components",
        COMPONENTS,
        "workflows/stepflow/text-report.yaml",
        "workflows/stepflow/geocode.yaml",
    ]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.ends_with("7 passed, 0 failed\n"), "{out}");
}

#[test]
fn only_the_steps_the_output_needs_run_and_an_untaken_branch_never_does() {
    let state = tempfile::tempdir().unwrap();
    let flow = "workflows/stepflow/geocode.yaml";
    let not_needed = "not needed: nothing the output reads uses it";

    // Not strict: the `$if` takes `else`, so `lookup` never runs; `audit`
    // runs because of `mustExecute`; `unused` never runs.
    let (code, steps, end, err) = run_json(&state, &[flow, "--components", COMPONENTS, "--input", r#"{"city":"Atlantis","strict":false}"#]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(end["output"], serde_json::json!({"position": {"lat": 0, "lon": 0}}));
    assert_eq!(steps["lookup"].0, "skipped");
    assert!(steps["lookup"].1.starts_with(not_needed), "{:?}", steps["lookup"]);
    assert_eq!(steps["unused"].0, "skipped");
    assert_eq!(steps["audit"].0, "succeeded");
    // `useDefault`: the step failed, its default (null) was passed on.
    assert_eq!(steps["lookup_or_null"].0, "failed");

    // Strict: `lookup` runs (tried twice: `maxRetries: 1`) and fails the
    // run; the other lookup is never needed.
    let (code, steps, end, err) = run_json(&state, &[flow, "--components", COMPONENTS, "--input", r#"{"city":"Atlantis","strict":true}"#]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(end["state"], "failed");
    assert!(end["error"].as_str().unwrap().contains("no such city (code 404)"), "{end}");
    assert_eq!((steps["lookup"].0.as_str(), steps["lookup"].2), ("failed", 2));
    assert!(steps["lookup_or_null"].1.starts_with(not_needed), "{:?}", steps["lookup_or_null"]);
}

#[test]
fn a_components_file_binds_names_the_workflow_does_not_declare() {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path();
    let echo = example("echo");
    let mock = example("mock");
    let components = write(
        dir,
        "components.yml",
        &format!(
            "components:\n  /mock/answer:\n    path: {}\n    config: {{ behaviors: [ {{ input: {{ q: x }}, outcome: success, result: {{ from: file }} }} ] }}\n",
            mock.display()
        ),
    );
    let flow = |own: &str| {
        format!(
            "schema: https://stepflow.org/schemas/v1/flow.json\n{own}steps:\n  - id: ask\n    component: /mock/answer\n    input: {{ q: x }}\noutput: {{ $step: ask }}\n"
        )
    };
    let bound = write(dir, "bound.yaml", &flow(""));
    let (code, out, err) = run(sandflow(&state).args(["-q", "run", &bound, "--components", &components]));
    assert_eq!((code, serde_json::from_str::<Value>(&out).ok()), (0, Some(serde_json::json!({"from": "file"}))), "{err}");

    // The workflow's own declaration wins.
    let own = write(dir, "own.yaml", &flow(&format!("components:\n  /mock/answer: {{ path: {} }}\n", echo.display())));
    let (code, out, err) = run(sandflow(&state).args(["-q", "run", &own, "--components", &components]));
    assert_eq!((code, serde_json::from_str::<Value>(&out).ok()), (0, Some(serde_json::json!({"q": "x"}))), "{err}");

    // Without the file, the name is unknown: said where it is used.
    let (code, _, err) = run(sandflow(&state).args(["validate", &bound]));
    assert_eq!(code, 2);
    assert!(err.contains("bound.yaml:4:16: step `ask` uses component `/mock/answer`, which is not in `components`"), "{err}");

    // A components file's own problems are reported with its place.
    let broken = write(dir, "broken.yml", "components:\n  /mock/answer: { path: nowhere.wasm, confg: {} }\n");
    let (code, _, err) = run(sandflow(&state).args(["validate", &bound, "--components", &broken]));
    assert_eq!(code, 2);
    assert!(err.contains("broken.yml:2:39: unknown key `confg` in component `/mock/answer`"), "{err}");
}

#[test]
fn variables_come_from_var_and_vars_files() {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path();
    let echo = example("echo");
    let flow = write(
        dir,
        "vars.yaml",
        &format!(
            "schema: https://stepflow.org/schemas/v1/flow.json\nsteps:\n  - id: greet\n    component: {}\n    input: {{ model: {{ $variable: model.name }} }}\noutput:\n  model: {{ $step: greet, path: model }}\n  temperature: {{ $variable: temperature, default: 0.5 }}\n",
            echo.display()
        ),
    );
    let vars = write(dir, "vars.json", r#"{"model": {"name": "from-file"}, "temperature": 0.9}"#);
    let (code, out, err) = run(sandflow(&state).args(["-q", "run", &flow, "--var", "model={\"name\":\"m1\"}"]));
    assert_eq!((code, serde_json::from_str::<Value>(&out).ok()), (0, Some(serde_json::json!({"model": "m1", "temperature": 0.5}))), "{err}");
    let (code, out, err) = run(sandflow(&state).args(["-q", "run", &flow, "--vars", &vars]));
    assert_eq!((code, serde_json::from_str::<Value>(&out).ok()), (0, Some(serde_json::json!({"model": "from-file", "temperature": 0.9}))), "{err}");
    let (code, _, err) = run(sandflow(&state).args(["run", &flow]));
    assert_eq!(code, 1);
    assert!(err.contains("variable `model.name` is not set: pass `--var model=VALUE`"), "{err}");
}

#[test]
fn stepflow_keys_are_checked_with_their_place() {
    let state = tempfile::tempdir().unwrap();
    let flow = write(
        state.path(),
        "bad.yaml",
        "schema: https://stepflow.org/schemas/v1/flow.json\nsteps:\n  - id: a\n    component: /builtin/eval\n    onError: { action: explode }\n    mustExecute: sometimes\n    input: { $if: { $input: x } }\n",
    );
    let (code, _, err) = run(sandflow(&state).args(["validate", &flow]));
    assert_eq!(code, 2);
    for want in ["bad.yaml:5:24: unknown `action`", "bad.yaml:6:18: `mustExecute` must be true or false", "bad.yaml:7:12: `$if` needs `then`"] {
        assert!(err.contains(want), "{want}: {err}");
    }
}
