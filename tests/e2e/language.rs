//! The workflow language's second part with the real binary: `depends`,
//! `fail_fast`, `finally` and `--target`, on both run stores where the
//! store matters. Argo's own examples, translated in `workflows/argo-*`,
//! must end with the step states Argo documents for them.

use crate::support::{Backend, backends, root, run, sandflow};
use serde_json::Value;
use std::collections::BTreeMap;

/// Runs `file` with `--json` on `backend`; returns the exit code, each
/// step's (state, reason) and the run's end event.
fn states(backend: &Backend, file: &str, extra: &[&str]) -> (i32, BTreeMap<String, (String, String)>, Value) {
    let state = tempfile::tempdir().unwrap();
    let store = backend.url(state.path());
    let (code, _, err) = run(sandflow(&state).args(["--json", "--store", &store, "run", file]).args(extra));
    let events: Vec<Value> = err.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let steps = events
        .iter()
        .filter(|e| e["event"] == "step_finished")
        .map(|e| (e["step"].as_str().unwrap().to_string(), (e["state"].as_str().unwrap().to_string(), e["reason"].as_str().unwrap_or("").to_string())))
        .collect();
    let end = events.iter().find(|e| e["event"] == "run_finished").cloned().unwrap_or_else(|| panic!("no run_finished: {err}"));
    (code, steps, end)
}

fn state_of(steps: &BTreeMap<String, (String, String)>, id: &str) -> String {
    steps.get(id).map(|(s, _)| s.clone()).unwrap_or_else(|| format!("absent from {steps:?}"))
}

#[test]
fn argo_enhanced_depends_ends_as_argo_documents() {
    for backend in backends() {
        let (code, steps, end) = states(&backend, "workflows/argo-depends.yaml", &[]);
        let name = backend.name();
        for (id, want) in [
            ("a", "succeeded"),
            ("b", "succeeded"),
            ("c", "failed"),
            ("should-execute-1", "succeeded"),
            ("should-execute-2", "succeeded"),
            ("should-not-execute", "skipped"),
            ("should-execute-3", "succeeded"),
        ] {
            assert_eq!(state_of(&steps, id), want, "{name}: {id}");
        }
        assert_eq!(steps["should-not-execute"].1, "depends not met: b && c", "{name}");
        // `should-execute-1` names `c.Failed`: the failure is handled.
        assert_eq!((code, end["state"].as_str()), (0, Some("completed")), "{name}: {end}");
    }
}

#[test]
fn argo_continue_on_fail_ends_as_argo_documents() {
    for backend in backends() {
        let (code, steps, end) = states(&backend, "workflows/argo-continue-on-fail.yaml", &[]);
        let name = backend.name();
        for (id, want) in [("a", "succeeded"), ("b", "failed"), ("c", "succeeded"), ("d", "succeeded"), ("e", "failed"), ("f", "succeeded"), ("g", "skipped")] {
            assert_eq!(state_of(&steps, id), want, "{name}: {id}");
        }
        assert_eq!(steps["g"].1, "depends not met: e && f");
        assert_eq!(code, 1, "{name}");
        assert_eq!(end["error"], "step `e` failed (component): the input can never be processed", "{name}");
    }
}

/// A flow where a step fails while an independent, slower branch runs.
fn fail_fast_flow(dir: &std::path::Path, fail_fast: bool) -> std::path::PathBuf {
    let file = dir.join("flow.yaml");
    let text = format!(
        "fail_fast: {fail_fast}\ncomponents:\n  fail: {{ path: {fatal} }}\n  pass: {{ path: {echo} }}\n  slow: {{ path: {sleep} }}\n\
         steps:\n  - {{ id: broken, component: fail }}\n  - {{ id: after, component: pass, needs: [broken] }}\n\
         \x20 - {{ id: other, component: slow, input: {{ ms: 700 }} }}\n  - {{ id: later, component: pass, needs: [other], input: 2 }}\n",
        fatal = root().join("components/dist/hostile/fatal.wasm").display(),
        sleep = root().join("components/dist/hostile/sleep.wasm").display(),
        echo = root().join("components/dist/echo.wasm").display(),
    );
    std::fs::write(&file, text).unwrap();
    file
}

#[test]
fn fail_fast_false_lets_independent_branches_finish_and_still_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    for backend in backends() {
        let file = fail_fast_flow(dir.path(), false);
        let (code, steps, end) = states(&backend, file.to_str().unwrap(), &[]);
        let name = backend.name();
        assert_eq!((state_of(&steps, "other"), state_of(&steps, "later")), ("succeeded".into(), "succeeded".into()), "{name}");
        assert_eq!(steps["after"], ("skipped".into(), "dependency failed".into()), "{name}");
        assert_eq!((code, end["state"].as_str()), (1, Some("failed")), "{name}");
        assert_eq!(end["error"], "step `broken` failed (component): the input can never be processed", "{name}");
        // By default the failure stops new steps from starting.
        let file = fail_fast_flow(dir.path(), true);
        let (code, steps, _) = states(&backend, file.to_str().unwrap(), &[]);
        assert_eq!(code, 1);
        assert_eq!(steps["later"], ("skipped".into(), "not started: the run failed".into()), "{name}");
    }
}

#[test]
fn depends_problems_are_reported_at_their_place_all_at_once() {
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("bad.yaml");
    std::fs::write(
        &file,
        "steps:\n  - { id: a, component: /builtin/eval }\n  - { id: b, component: /builtin/eval, depends: \"a.failde\" }\n\
         \x20 - { id: c, component: /builtin/eval, depends: \"a && nope.failed\" }\n  - { id: d, component: /builtin/eval, depends: \"(a\" }\n",
    )
    .unwrap();
    let (code, _, err) = run(sandflow(&state).arg("validate").arg(&file));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad.yaml:3:49: invalid `depends` `a.failde` at character 3: `a.failde` is not a condition; did you mean `failed`?"), "{err}");
    assert!(err.contains("bad.yaml:4:49: step `c` depends on step `nope`, which does not exist"), "{err}");
    assert!(err.contains("bad.yaml:5:49: invalid `depends` `(a` at character 3: the `(` at character 1 is not closed"), "{err}");
}
