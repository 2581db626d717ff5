//! The workflow language's second part with the real binary: `depends`,
//! `fail_fast`, `finally` and `--target`, on both run stores where the
//! store matters. Argo's own examples, translated in `workflows/argo-*`,
//! must end with the step states Argo documents for them.

use crate::support::{Backend, backends, example, hostile, newest_run, run, sandflow};
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

/// A child process killed when dropped (a failing assertion must not leave
/// a worker or a follower behind).
struct Reaped(std::process::Child);

impl Reaped {
    fn spawn(cmd: &mut std::process::Command) -> Reaped {
        Reaped(cmd.spawn().unwrap())
    }

    /// Waits for it to exit; returns its exit code.
    fn wait(&mut self) -> i32 {
        self.0.wait().unwrap().code().unwrap()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
            ("A", "succeeded"),
            ("B", "succeeded"),
            ("C", "failed"),
            ("should-execute-1", "succeeded"),
            ("should-execute-2", "succeeded"),
            ("should-not-execute", "skipped"),
            ("should-execute-3", "succeeded"),
        ] {
            assert_eq!(state_of(&steps, id), want, "{name}: {id}");
        }
        assert_eq!(steps["should-not-execute"].1, "depends not met: B && C", "{name}");
        // `should-execute-1` names `C.Failed`: the failure is handled.
        assert_eq!((code, end["state"].as_str()), (0, Some("completed")), "{name}: {end}");
    }
}

#[test]
fn argo_continue_on_fail_ends_as_argo_documents() {
    for backend in backends() {
        let (code, steps, end) = states(&backend, "workflows/argo-continue-on-fail.yaml", &[]);
        let name = backend.name();
        for (id, want) in [("A", "succeeded"), ("B", "failed"), ("C", "succeeded"), ("D", "succeeded"), ("E", "failed"), ("F", "succeeded"), ("G", "skipped")] {
            assert_eq!(state_of(&steps, id), want, "{name}: {id}");
        }
        assert_eq!(steps["G"].1, "depends not met: E && F");
        assert_eq!(code, 1, "{name}");
        assert_eq!(end["error"], "step `E` failed (component): the input can never be processed", "{name}");
    }
}

/// A flow where a step fails while an independent, slower branch runs.
fn fail_fast_flow(dir: &std::path::Path, fail_fast: bool) -> std::path::PathBuf {
    let file = dir.join("flow.yaml");
    let text = format!(
        "fail_fast: {fail_fast}\ncomponents:\n  fail: {{ path: {fatal} }}\n  pass: {{ path: {echo} }}\n  slow: {{ path: {sleep} }}\n\
         steps:\n  - {{ id: broken, component: fail }}\n  - {{ id: after, component: pass, needs: [broken] }}\n\
         \x20 - {{ id: other, component: slow, input: {{ ms: 700 }} }}\n  - {{ id: later, component: pass, needs: [other], input: 2 }}\n",
        fatal = hostile("fatal").display(),
        sleep = hostile("sleep").display(),
        echo = example("echo").display(),
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

/// Expression mistakes that would fail a step at run time (as
/// `reference`, hidden by `on_error: continue`) are caught by `validate`,
/// each at its place with a suggestion; the functions the README lists are
/// the ones CEL has here.
#[test]
fn validate_catches_unknown_names_and_functions_in_expressions() {
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("bad.yaml");
    std::fs::write(
        &file,
        "steps:\n  - { id: a, component: /builtin/eval, input: \"{{ input.numbers }}\", on_error: { action: continue } }\n\
         \x20 - { id: b, component: /builtin/eval, input: \"{{ inputs.words.join(' ') }}\" }\n\
         \x20 - { id: c, component: /builtin/eval, when: \"inputs.words.exists(w, w.startswith('a'))\" }\n\
         \x20 - { id: d, component: /builtin/eval, input: \"{{ item }}\" }\n\
         \x20 - { id: e, component: /builtin/eval, input: \"n = {{ inpts.n }}\", forEach: \"{{ inputs.words.map(w, w + '!') }}\" }\n",
    )
    .unwrap();
    let (code, _, err) = run(sandflow(&state).arg("validate").arg(&file));
    assert_eq!(code, 2, "{err}");
    for want in [
        "bad.yaml:2:47: `input.numbers` reads `input`, which is not defined here (did you mean `inputs`?",
        "bad.yaml:3:47: `inputs.words.join(' ')` calls `join`, which is not a CEL function (CEL's functions here: size, contains,",
        "bad.yaml:4:46: `inputs.words.exists(w, w.startswith('a'))` calls `startswith`, which is not a CEL function (did you mean `startsWith`?)",
        "bad.yaml:5:47: `item` reads `item`, which only a step with `forEach` has",
        "`inpts.n` reads `inpts`, which is not defined (did you mean `inputs`?)",
        "5 problems",
    ] {
        assert!(err.contains(want), "{want}\n---\n{err}");
    }
    let readme = std::fs::read_to_string(crate::support::root().join("README.md")).unwrap();
    let listed = readme.lines().find(|l| l.starts_with("The functions are CEL's")).expect("README lists the CEL functions");
    for f in sandflow::expr::FUNCTIONS {
        assert!(listed.contains(&format!("`{f}`")), "README's list lacks `{f}`: {listed}");
    }
}

#[test]
fn argo_exit_handler_ends_as_argo_documents() {
    for backend in backends() {
        let name = backend.name();
        let (code, steps, end) = states(&backend, "workflows/argo-exit-handler.yaml", &[]);
        for (id, want) in [("intentional-fail", "failed"), ("send-email", "succeeded"), ("celebrate", "skipped"), ("cry", "succeeded")] {
            assert_eq!(state_of(&steps, id), want, "{name}: {id}");
        }
        assert_eq!((code, end["state"].as_str()), (1, Some("failed")), "{name}");
        assert_eq!(end["error"], "step `intentional-fail` failed (component): the input can never be processed", "{name}");
    }
    // `graph` draws the `finally` steps apart.
    let state = tempfile::tempdir().unwrap();
    let (code, out, _) = run(sandflow(&state).args(["graph", "workflows/argo-exit-handler.yaml"]));
    assert_eq!(code, 0);
    assert!(out.contains("    subgraph finally\n        s_send_h_email[") && out.ends_with("    end\n"), "{out}");
}

/// A flow whose main step sleeps `main_ms` and whose `finally` step
/// reports the run's status after sleeping `finally_ms`.
fn finally_flow(dir: &std::path::Path, top: &str, main_ms: u64, finally_ms: u64) -> std::path::PathBuf {
    let file = dir.join("finally.yaml");
    let text = format!(
        "{top}components:\n  slow: {{ path: {sleep} }}\n  pass: {{ path: {echo} }}\n\
         steps:\n  - {{ id: work, component: slow, input: {{ ms: {main_ms} }}, timeout: 60s }}\n\
         finally:\n  - {{ id: wait, component: slow, input: {{ ms: {finally_ms} }}, timeout: 60s }}\n\
         \x20 - id: report\n    component: pass\n    needs: [wait]\n\
         \x20   input: {{ status: \"{{{{ run.status }}}}\", failures: \"{{{{ run.failures }}}}\", work: \"{{{{ steps.work.status }}}}\" }}\n",
        sleep = hostile("sleep").display(),
        echo = example("echo").display(),
    );
    std::fs::write(&file, text).unwrap();
    file
}

/// Runs `file` with `--json`, sends SIGINT `signals` times (after the
/// first step starts, then after the first `finally` step starts), and
/// returns the exit code and the events.
fn interrupted(file: &std::path::Path, signals: usize) -> (i32, Vec<Value>) {
    interrupted_by(file, signals, &|child, _, _| {
        assert!(std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    })
}

/// [`interrupted`], interrupting with `send(process, state dir, run id)`.
fn interrupted_by(file: &std::path::Path, signals: usize, send: &dyn Fn(&std::process::Child, &tempfile::TempDir, &str)) -> (i32, Vec<Value>) {
    let state = tempfile::tempdir().unwrap();
    let mut child = Reaped::spawn(sandflow(&state).args(["--json", "run"]).arg(file).stderr(std::process::Stdio::piped()));
    let mut stderr = std::io::BufReader::new(child.0.stderr.take().unwrap());
    let mut seen = String::new();
    for (n, wait_for) in ["\"step\":\"work\"", "\"step\":\"wait\""].iter().enumerate().take(signals) {
        let mut line = String::new();
        while !(line.contains("\"step_started\"") && line.contains(wait_for)) {
            line.clear();
            assert!(std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0, "no start of {wait_for} before signal {n}: {seen}");
            seen.push_str(&line);
        }
        let started: Value = serde_json::from_str(seen.lines().next().unwrap()).unwrap();
        send(&child.0, &state, started["run_id"].as_str().unwrap());
    }
    let code = child.wait();
    seen.push_str(&std::io::read_to_string(stderr).unwrap());
    (code, seen.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

fn finished<'e>(events: &'e [Value], step: &str) -> &'e Value {
    events.iter().find(|e| e["event"] == "step_finished" && e["step"] == step).unwrap_or_else(|| panic!("{step} did not finish: {events:?}"))
}

#[test]
fn finally_steps_run_after_a_cancel_and_a_second_interrupt_skips_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = finally_flow(dir.path(), "", 30_000, 200);
    let (code, events) = interrupted(&file, 1);
    assert_eq!(code, 130);
    assert_eq!(finished(&events, "work")["state"], "cancelled");
    let report = finished(&events, "report");
    assert_eq!(report["state"], "succeeded", "{report}");
    assert_eq!(report["output"], serde_json::json!({"status": "cancelled", "failures": [], "work": "cancelled"}));
    assert_eq!(events.last().unwrap()["state"], "cancelled");

    let file = finally_flow(dir.path(), "", 30_000, 30_000);
    let started = std::time::Instant::now();
    let (code, events) = interrupted(&file, 2);
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "the second interrupt stops the finally steps");
    assert_eq!(code, 130);
    assert_eq!(finished(&events, "wait")["state"], "cancelled");
    assert_eq!(finished(&events, "report")["state"], "cancelled");
}

#[test]
fn a_second_sandflow_cancel_interrupts_the_finally_steps() {
    let dir = tempfile::tempdir().unwrap();
    let file = finally_flow(dir.path(), "", 30_000, 30_000);
    let started = std::time::Instant::now();
    let (code, events) = interrupted_by(&file, 2, &|_, state, id| {
        // `--wait 0s`: ask and return (exit 1 while the run goes on).
        let (code, _, err) = run(sandflow(state).args(["cancel", id, "--wait", "0s"]));
        assert!(code == 0 || err.contains("cancel it again to interrupt them"), "{code}: {err}");
    });
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "the second cancel stops the finally steps");
    assert_eq!(code, 130);
    assert_eq!(finished(&events, "work")["state"], "cancelled");
    assert_eq!(finished(&events, "wait")["state"], "cancelled");
    assert_eq!(finished(&events, "report")["state"], "cancelled");
}

#[test]
fn a_cancel_that_comes_while_finally_steps_run_interrupts_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = finally_flow(dir.path(), "", 10, 30_000);
    // Wait for `wait` (a `finally` step) to start, then one SIGINT.
    let state = tempfile::tempdir().unwrap();
    let mut child = Reaped::spawn(sandflow(&state).args(["--json", "run"]).arg(&file).stderr(std::process::Stdio::piped()));
    let mut stderr = std::io::BufReader::new(child.0.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while !(line.contains("\"step_started\"") && line.contains("\"step\":\"wait\"")) {
        line.clear();
        assert!(std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0, "wait did not start: {seen}");
        seen.push_str(&line);
    }
    let sent = std::time::Instant::now();
    assert!(std::process::Command::new("kill").args(["-INT", &child.0.id().to_string()]).status().unwrap().success());
    let code = child.wait();
    assert!(sent.elapsed() < std::time::Duration::from_secs(10), "took {:?}", sent.elapsed());
    seen.push_str(&std::io::read_to_string(stderr).unwrap());
    let events: Vec<Value> = seen.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert_eq!(code, 130);
    assert_eq!(finished(&events, "work")["state"], "succeeded");
    assert_eq!(finished(&events, "wait")["state"], "cancelled");
    let end = events.last().unwrap();
    assert_eq!((end["state"].as_str(), end["error"].as_str()), (Some("cancelled"), Some("cancelled while its `finally` steps ran")));
}

#[test]
fn finally_steps_run_after_the_run_timeout_within_their_own() {
    let dir = tempfile::tempdir().unwrap();
    for backend in backends() {
        let name = backend.name();
        let file = finally_flow(dir.path(), "timeout: 300ms\nfinally_timeout: 5s\n", 30_000, 10);
        let (code, steps, end) = states(&backend, file.to_str().unwrap(), &[]);
        assert_eq!(code, 1, "{name}");
        assert_eq!(state_of(&steps, "work"), "failed", "{name}");
        assert_eq!(state_of(&steps, "report"), "succeeded", "{name}");
        assert_eq!(end["error"], "the run's 300ms timeout passed", "{name}");
        // Their own timeout: a `finally` step that overruns it fails the run.
        let file = finally_flow(dir.path(), "finally_timeout: 300ms\n", 10, 30_000);
        let (code, steps, end) = states(&backend, file.to_str().unwrap(), &[]);
        assert_eq!(code, 1, "{name}");
        assert_eq!((state_of(&steps, "work"), state_of(&steps, "wait")), ("succeeded".into(), "failed".into()), "{name}");
        assert_eq!(end["error"], "the `finally` steps' 300ms `finally_timeout` passed", "{name}");
    }
}

#[test]
fn a_failing_finally_step_fails_a_run_that_completed_and_keeps_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.yaml");
    std::fs::write(
        &file,
        format!(
            "components:\n  fail: {{ path: {} }}\n  pass: {{ path: {} }}\nsteps:\n  - {{ id: main, component: pass, input: 42 }}\n\
             finally:\n  - {{ id: notify, component: fail }}\n  - {{ id: also, component: pass, input: x }}\n",
            hostile("fatal").display(),
            example("echo").display()
        ),
    )
    .unwrap();
    for backend in backends() {
        let name = backend.name();
        let state = tempfile::tempdir().unwrap();
        let store = backend.url(state.path());
        let (code, out, err) = run(sandflow(&state).args(["--store", &store, "run"]).arg(&file));
        assert_eq!(code, 1, "{name}: {err}");
        assert_eq!(out.trim(), "42", "{name}: the run output is the main steps'");
        assert!(err.contains("`finally` step `notify` failed (component): the input can never be processed"), "{name}: {err}");
        let (_, steps, _) = states(&backend, file.to_str().unwrap(), &[]);
        assert_eq!(state_of(&steps, "also"), "succeeded", "{name}: one failing finally step stops none of the others");
    }
}

#[test]
fn on_workers_finally_steps_run_after_a_cancel_and_a_second_cancel_interrupts_them() {
    let Some(schema) = crate::support::PgSchema::create() else { return };
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let _worker = Reaped::spawn(sandflow(&state).args(["--store", &schema.url, "worker"]).stderr(std::process::Stdio::null()));
    // Submits `file`, follows its run, and `sandflow cancel`s it once the
    // step of each of `cancel_at` has started; returns the followed events.
    let cancelled = |file: &std::path::Path, cancel_at: &[&str]| -> (i32, Vec<Value>, Vec<(i32, String)>) {
        let (code, out, err) = run(sandflow(&state).args(["--store", &schema.url, "submit"]).arg(file));
        assert_eq!(code, 0, "{err}");
        let id = out.trim().to_string();
        let mut follower = Reaped::spawn(sandflow(&state).args(["--json", "--store", &schema.url, "runs", "follow", &id]).stderr(std::process::Stdio::piped()));
        let mut stderr = std::io::BufReader::new(follower.0.stderr.take().unwrap());
        let mut seen = String::new();
        let mut asked = Vec::new();
        for step in cancel_at {
            let mut line = String::new();
            while !(line.contains("\"step_started\"") && line.contains(&format!("\"step\":\"{step}\""))) {
                line.clear();
                assert!(std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0, "{step} did not start: {seen}");
                seen.push_str(&line);
            }
            let (code, _, err) = run(sandflow(&state).args(["--store", &schema.url, "cancel", "--wait", "2s", &id]));
            asked.push((code, err));
        }
        let code = follower.wait();
        seen.push_str(&std::io::read_to_string(stderr).unwrap());
        (code, seen.lines().filter_map(|l| serde_json::from_str(l).ok()).collect(), asked)
    };

    let (code, events, asked) = cancelled(&finally_flow(dir.path(), "", 30_000, 200), &["work"]);
    assert_eq!(code, 130);
    assert_eq!(asked[0].0, 0, "{asked:?}");
    assert_eq!(finished(&events, "work")["state"], "cancelled");
    let report = finished(&events, "report");
    assert_eq!(report["state"], "succeeded", "{report}");
    assert_eq!(report["output"], serde_json::json!({"status": "cancelled", "failures": [], "work": "cancelled"}));

    // On workers a cancel asked for while the `finally` steps run interrupts them.
    let (code, events, asked) = cancelled(&finally_flow(dir.path(), "", 30_000, 30_000), &["work", "wait"]);
    assert_eq!(code, 130);
    assert_eq!(asked[0].0, 1, "the run is still running its `finally` steps");
    assert!(asked[0].1.contains("its `finally` steps may be running (cancel it again to interrupt them)"), "{asked:?}");
    assert_eq!(asked[1].0, 0, "{asked:?}");
    assert_eq!(finished(&events, "wait")["state"], "cancelled");
    assert_eq!(finished(&events, "report")["state"], "cancelled");
}

#[test]
fn a_step_cannot_read_a_finally_step() {
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("bad.yaml");
    std::fs::write(
        &file,
        "steps:\n  - { id: a, component: /builtin/eval, input: { x: { $from: { step: z } } } }\n\
         finally:\n  - { id: z, component: /builtin/eval, needs: [a] }\n",
    )
    .unwrap();
    let (code, _, err) = run(sandflow(&state).arg("validate").arg(&file));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("step `a` reads `finally` step `z`, which runs after every step of `steps`"), "{err}");
}

#[test]
fn target_runs_only_the_named_steps_and_their_dependencies() {
    for backend in backends() {
        let name = backend.name();
        let (code, steps, end) = states(&backend, "workflows/argo-targets.yaml", &["--target", "E"]);
        assert_eq!(code, 0, "{name}: {end}");
        // Argo's documented run: A, C and E; the others are not shown at all.
        assert_eq!(steps.keys().collect::<Vec<_>>(), ["A", "C", "E"], "{name}");
        assert!(steps.values().all(|(s, _)| s == "succeeded"), "{name}: {steps:?}");
        assert_eq!(end["output"], "E", "{name}");
        let (code, steps, end) = states(&backend, "workflows/argo-targets.yaml", &["--target", "B,E"]);
        assert_eq!(code, 0, "{name}");
        assert_eq!(steps.keys().collect::<Vec<_>>(), ["A", "B", "C", "E"], "{name}");
        assert_eq!(end["output"], serde_json::json!({"B": "B", "E": "E"}), "{name}");
    }
    let state = tempfile::tempdir().unwrap();
    let (code, _, err) = run(sandflow(&state).args(["run", "workflows/argo-targets.yaml", "--target", "F"]));
    assert_eq!(code, 2);
    assert!(err.contains("--target: the workflow has no step `F`"), "{err}");
    // Ids are case-sensitive: `e` is not `E`.
    let (code, _, err) = run(sandflow(&state).args(["run", "workflows/argo-targets.yaml", "--target", "e"]));
    assert_eq!(code, 2);
    assert!(err.contains("--target: the workflow has no step `e`"), "{err}");
    let (code, out, _) = run(sandflow(&state).args(["graph", "workflows/argo-targets.yaml", "--target", "E", "--format", "dot"]));
    assert_eq!(code, 0);
    assert!(out.contains("\"C\" -> \"E\"") && !out.contains("\"B\""), "{out}");
}

#[test]
fn a_targeted_run_resumes_with_the_same_targets() {
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("t.yaml");
    // `c` fails on the first attempt of the run (it reads `run.attempt`).
    std::fs::write(
        &file,
        format!(
            "components:\n  pass: {{ path: {} }}\n  fail: {{ path: {} }}\nsteps:\n  - {{ id: a, component: pass, input: A }}\n\
             \x20 - {{ id: b, component: pass, needs: [a], input: B }}\n\
             \x20 - {{ id: c, component: pass, needs: [a], when: \"run.attempt > 1\", input: C }}\n\
             \x20 - {{ id: gate, component: fail, needs: [a], when: \"run.attempt == 1\" }}\n\
             \x20 - {{ id: e, component: pass, needs: [c, gate], input: E }}\n",
            example("echo").display(),
            hostile("fatal").display()
        ),
    )
    .unwrap();
    let (code, _, _) = run(sandflow(&state).args(["run"]).arg(&file).args(["--target", "e"]));
    assert_eq!(code, 1);
    let id = newest_run(sandflow(&state));
    let (code, out, err) = run(sandflow(&state).args(["resume", &id]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "\"E\"");
    let (_, record, _) = run(sandflow(&state).args(["--json", "runs", "show", &id]));
    let record: Value = serde_json::from_str(&record).unwrap();
    assert_eq!(record["targets"], serde_json::json!(["e"]));
    let shown: Vec<&str> = record["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert!(!shown.contains(&"b"), "b is outside the target, in the resume too: {shown:?}");
}

#[test]
fn retry_from_a_step_runs_it_and_everything_downstream_again() {
    for backend in backends() {
        let name = backend.name();
        let state = tempfile::tempdir().unwrap();
        let store = backend.url(state.path());
        let (code, first, err) = run(sandflow(&state).args(["--store", &store, "run", "workflows/diamond.yaml", "--set", "text=Hi"]));
        assert_eq!(code, 0, "{name}: {err}");
        let id = newest_run(sandflow(&state).args(["--store", &store]));
        let (code, out, err) = run(sandflow(&state).args(["--json", "--store", &store, "retry", &id, "--from", "upper"]));
        assert_eq!(code, 0, "{name}: {err}");
        assert_eq!(out, first, "{name}: the same output");
        let events: Vec<Value> = err.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let of = |kind: &str| -> Vec<String> {
            let mut v: Vec<String> = events.iter().filter(|e| e["event"] == kind).map(|e| e["step"].as_str().unwrap().to_string()).collect();
            v.sort();
            v
        };
        assert_eq!(of("step_restored"), ["lower", "split"], "{name}");
        assert_eq!(of("step_started"), ["join", "upper"], "{name}");
        let (_, record, _) = run(sandflow(&state).args(["--json", "--store", &store, "runs", "show", &id]));
        let record: Value = serde_json::from_str(&record).unwrap();
        assert_eq!((record["attempt"].as_u64(), record["status"].as_str()), (Some(2), Some("completed")), "{name}");
        let (code, _, err) = run(sandflow(&state).args(["--store", &store, "retry", &id, "--from", "uper"]));
        assert_eq!(code, 2, "{name}");
        assert!(err.contains("--from: the run's workflow has no step `uper` (did you mean `upper`?)"), "{name}: {err}");
    }
}

#[test]
fn retry_without_from_runs_what_failed_and_the_finally_steps_again() {
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("r.yaml");
    std::fs::write(
        &file,
        format!(
            "components:\n  pass: {{ path: {} }}\n  fail: {{ path: {} }}\nsteps:\n  - {{ id: ok, component: pass, input: 1 }}\n\
             \x20 - {{ id: flaky, component: fail, needs: [ok], when: \"run.attempt == 1\" }}\n\
             \x20 - {{ id: last, component: pass, needs: [flaky], input: 2 }}\n\
             finally:\n  - {{ id: tell, component: pass, input: \"{{{{ run.attempt }}}}\" }}\n",
            example("echo").display(),
            hostile("fatal").display()
        ),
    )
    .unwrap();
    let (code, _, _) = run(sandflow(&state).arg("run").arg(&file));
    assert_eq!(code, 1);
    let id = newest_run(sandflow(&state));
    let (code, out, err) = run(sandflow(&state).args(["--json", "retry", &id]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "2");
    let events: Vec<Value> = err.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let restored: Vec<&str> = events.iter().filter(|e| e["event"] == "step_restored").map(|e| e["step"].as_str().unwrap()).collect();
    assert_eq!(restored, ["ok"]);
    assert_eq!(finished(&events, "tell")["output"], 2, "the finally step ran again, in attempt 2");
}

/// A workflow whose `up` step is cached and whose `broken` step (cached
/// too) fails.
fn cached_flow(dir: &std::path::Path, ttl: &str) -> std::path::PathBuf {
    let file = dir.join("cached.yaml");
    let text = format!(
        "components:\n  text: {{ path: {text} }}\n  fail: {{ path: {fatal} }}\ndefaults:\n  cache: {{ ttl: {ttl} }}\n\
         steps:\n  - {{ id: up, component: text, input: {{ op: lower, text: \"{{{{ inputs.t }}}} {{{{ secrets.TOKEN }}}}\" }} }}\n\
         \x20 - {{ id: broken, component: fail, on_error: {{ action: continue }} }}\n\
         \x20 - {{ id: always, component: /builtin/eval, input: {{ workflow: {{ $literal: {{ steps: [] }} }} }}, on_error: {{ action: continue }} }}\n",
        text = example("text").display(),
        fatal = hostile("fatal").display(),
    );
    std::fs::write(&file, text).unwrap();
    file
}

#[test]
fn a_cached_result_is_reused_by_later_runs_until_its_ttl_passes() {
    for backend in backends() {
        let name = backend.name();
        let dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let store = backend.url(state.path());
        let file = cached_flow(dir.path(), "2s");
        let run_it = |t: &str| -> BTreeMap<String, Value> {
            let (code, out, err) = run(sandflow(&state)
                .args(["--json", "--store", &store, "run"])
                .arg(&file)
                .args(["--set", &format!("t={t}")])
                .env("SANDFLOW_SECRET_TOKEN", "tok-3141"));
            assert_eq!(code, 0, "{name}: {err}");
            // The reused output has the secret's value back: the run's output is as fresh.
            let output: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(output["up"]["text"], format!("{} ***", t.to_lowercase()), "{name}: printed masked");
            err.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|e| e["event"] == "step_finished")
                .map(|e| (e["step"].as_str().unwrap().to_string(), e))
                .collect()
        };
        let first = run_it("hi");
        assert!(first["up"].get("cached").is_none(), "{name}: {}", first["up"]);
        assert_eq!(first["up"]["output"]["text"], "hi ***", "{name}: masked in events");
        let second = run_it("hi");
        let up = &second["up"];
        assert_eq!((up["state"].as_str(), up["cached"].as_bool(), up["fuel_used"].as_u64()), (Some("succeeded"), Some(true), Some(0)), "{name}: {up}");
        assert!(up["reason"].as_str().unwrap().starts_with("cached: the result of run "), "{name}: {up}");
        assert_eq!(up["output"]["text"], "hi ***", "{name}");
        // Failures are never stored; builtins never cached.
        assert_eq!(second["broken"]["state"], "failed", "{name}");
        assert!(second["broken"].get("cached").is_none() && second["always"].get("cached").is_none(), "{name}");
        // Another input is another key.
        assert!(run_it("ho")["up"].get("cached").is_none(), "{name}");
        // `cache list` shows the entries; no secret is stored in clear text.
        let (code, list, _) = run(sandflow(&state).args(["--json", "--store", &store, "cache", "list"]));
        assert_eq!(code, 0);
        let entries: Vec<Value> = serde_json::from_str(&list).unwrap();
        assert_eq!(entries.len(), 2, "{name}: {list}");
        assert!(entries.iter().all(|e| e["step"] == "up" && e["expired"] == false), "{name}: {list}");
        if let Backend::Sqlite = backend {
            let db = std::fs::read(state.path().join("sandflow.db")).unwrap();
            assert!(!db.windows(8).any(|w| w == b"tok-3141"), "a secret reached the store in clear text");
        }
        // After the ttl the step runs again.
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert!(run_it("hi")["up"].get("cached").is_none(), "{name}: expired");
        let (_, out, err) = run(sandflow(&state).args(["--store", &store, "cache", "clear"]));
        assert!(err.contains("dropped 2 cached results"), "{name}: {out}{err}");
    }
}

#[test]
fn cache_on_a_builtin_step_is_refused_where_it_is_written() {
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("bad.yaml");
    std::fs::write(&file, "steps:\n  - { id: b, component: /builtin/put_blob, cache: { ttl: 1h } }\n  - { id: c, component: /builtin/eval, cache: {} }\n").unwrap();
    let (code, _, err) = run(sandflow(&state).arg("validate").arg(&file));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad.yaml:2:51: step `b` cannot be cached: only component steps are"), "{err}");
    assert!(err.contains("bad.yaml:3:47: `cache` needs `ttl`"), "{err}");
}

#[test]
fn a_cache_key_chooses_what_the_result_depends_on() {
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("k.yaml");
    std::fs::write(
        &file,
        format!(
            "components:\n  echo: {{ path: {} }}\nsteps:\n  - id: fetch\n    component: echo\n    cache: {{ ttl: 1h, key: \"{{{{ input.url }}}}\" }}\n\
             \x20   input: {{ url: \"{{{{ inputs.url }}}}\", trace: \"{{{{ inputs.trace }}}}\" }}\n",
            example("echo").display()
        ),
    )
    .unwrap();
    let out = |url: &str, trace: &str| -> Value {
        let (code, out, err) = run(sandflow(&state).arg("run").arg(&file).args(["--set", &format!("url={url}"), "--set", &format!("trace={trace}")]));
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    assert_eq!(out("a", "t1"), serde_json::json!({"url": "a", "trace": "t1"}));
    // `trace` is not part of the key: the first result is reused.
    assert_eq!(out("a", "t2"), serde_json::json!({"url": "a", "trace": "t1"}));
    assert_eq!(out("b", "t3"), serde_json::json!({"url": "b", "trace": "t3"}));

    let bad = state.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "components:\n  echo: { path: x.wasm }\nsteps:\n  - { id: a, component: /builtin/eval }\n\
         \x20 - { id: b, component: echo, cache: { ttl: 1h, key: \"{{ steps.a.output }}\" } }\n",
    )
    .unwrap();
    let (code, _, err) = run(sandflow(&state).arg("validate").arg(&bad));
    assert_eq!(code, 2);
    assert!(err.contains("`cache.key` of step `b` reads step `a` (a key reads `input`, the step's resolved input"), "{err}");
}

#[test]
fn depends_reads_the_items_of_a_for_each_step() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("items.yaml");
    // Every item of `some` fails (under `on_error: continue` the step goes
    // on); every item of `none` succeeds.
    std::fs::write(
        &file,
        format!(
            "components:\n  pass: {{ path: {echo} }}\n  fail: {{ path: {fatal} }}\n\
             steps:\n  - {{ id: some, component: fail, forEach: \"{{{{ [1, 2, 3] }}}}\", on_error: {{ action: continue }} }}\n\
             \x20 - {{ id: none, component: pass, forEach: \"{{{{ [1, 2] }}}}\", input: \"{{{{ item }}}}\" }}\n\
             \x20 - {{ id: all-failed, component: pass, depends: \"some.all_failed\", input: yes }}\n\
             \x20 - {{ id: any-ok, component: pass, depends: \"none.AnySucceeded && !none.all_failed\", input: yes }}\n\
             \x20 - {{ id: not-any, component: pass, depends: \"some.any_succeeded\", input: no }}\n",
            echo = example("echo").display(),
            fatal = hostile("fatal").display(),
        ),
    )
    .unwrap();
    for backend in backends() {
        let name = backend.name();
        let (code, steps, _) = states(&backend, file.to_str().unwrap(), &[]);
        assert_eq!(code, 0, "{name}: {steps:?}");
        assert_eq!(state_of(&steps, "all-failed"), "succeeded", "{name}");
        assert_eq!(state_of(&steps, "any-ok"), "succeeded", "{name}");
        assert_eq!(steps["not-any"], ("skipped".into(), "depends not met: some.any_succeeded".into()), "{name}");
    }
}

#[test]
fn a_run_killed_while_its_finally_steps_run_resumes_only_what_had_not_ended() {
    use std::io::BufRead;
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("k.yaml");
    std::fs::write(
        &file,
        format!(
            "components:\n  pass: {{ path: {} }}\n  fail: {{ path: {} }}\n  slow: {{ path: {} }}\n\
             steps:\n  - {{ id: ok, component: pass, input: 1 }}\n\
             \x20 - {{ id: broken, component: fail, needs: [ok], when: \"run.attempt == 1\" }}\n\
             finally:\n  - {{ id: quick, component: pass, input: \"{{{{ run.attempt }}}}\" }}\n\
             \x20 - {{ id: slow, component: slow, needs: [quick], input: {{ ms: \"{{{{ run.attempt == 1 ? 60000 : 10 }}}}\" }} }}\n\
             \x20 - {{ id: report, component: pass, needs: [slow], input: {{ status: \"{{{{ run.status }}}}\", failed: \"{{{{ run.failures.map(f, f.step) }}}}\" }} }}\n",
            example("echo").display(),
            hostile("fatal").display(),
            hostile("sleep").display(),
        ),
    )
    .unwrap();
    let mut child = sandflow(&state)
        .args(["--json", "run"])
        .arg(&file)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut run_id = String::new();
    for line in std::io::BufReader::new(child.stderr.take().unwrap()).lines() {
        let e: Value = serde_json::from_str(&line.unwrap()).unwrap_or_default();
        if e["event"] == "run_started" {
            run_id = e["run_id"].as_str().unwrap().to_string();
        }
        if e["event"] == "step_started" && e["step"] == "slow" {
            break;
        }
    }
    // Killed while `slow`, a `finally` step, runs: the record says `running`.
    child.kill().unwrap();
    child.wait().unwrap();

    let (code, _, err) = run(sandflow(&state).args(["--json", "resume", &run_id]));
    let events: Vec<Value> = err.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let started: Vec<&str> = events.iter().filter(|e| e["event"] == "step_started").map(|e| e["step"].as_str().unwrap()).collect();
    let restored: Vec<&str> = events.iter().filter(|e| e["event"] == "step_restored").map(|e| e["step"].as_str().unwrap()).collect();
    // `broken` keeps its failure (decided again, its `when` would skip it),
    // `quick` its output; only `slow` and `report` run.
    assert_eq!(started, ["slow", "report"], "{err}");
    assert_eq!(restored, ["ok", "quick"], "{err}");
    assert_eq!(finished(&events, "broken")["state"], "failed");
    assert_eq!(finished(&events, "report")["output"], serde_json::json!({"status": "failed", "failed": ["broken"]}));
    let end = events.iter().find(|e| e["event"] == "run_finished").unwrap();
    assert_eq!((code, end["state"].as_str()), (1, Some("failed")), "{err}");
    assert!(end["error"].as_str().unwrap().contains("step `broken` failed"), "{end}");
}
