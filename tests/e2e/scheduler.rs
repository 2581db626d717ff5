//! The scheduler, through the library, with real components: what users
//! see in events, states and outputs.

use crate::support::{example, hostile};
use sandflow::exec::{self, Event, EventSink, Executor, RunOptions, RunReport, RunState, StepState};
use sandflow::failure::FailureKind;
use sandflow::sandbox::{CancellationToken, Sandbox, SandboxConfig};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

/// Keeps every event, in order.
#[derive(Default)]
pub struct Recorder(Mutex<Vec<Event>>);

impl EventSink for Recorder {
    fn emit(&self, e: &Event) {
        self.0.lock().unwrap().push(e.clone());
    }
}

impl Recorder {
    fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }
}

/// Writes `yaml` (with `{text}`, `{sleep}`, ... replaced by component
/// paths) to a temp file and runs it.
pub async fn run_yaml(yaml: &str, input: Value) -> (RunReport, Vec<Event>) {
    let dir = tempfile::tempdir().unwrap();
    let mut text = yaml.to_string();
    for name in ["text", "echo", "math", "json", "kv"] {
        text = text.replace(&format!("{{{name}}}"), &example(name).display().to_string());
    }
    for name in ["sleep", "spin", "fatal", "panic"] {
        text = text.replace(&format!("{{{name}}}"), &hostile(name).display().to_string());
    }
    let file = dir.path().join("wf.yaml");
    std::fs::write(&file, text).unwrap();
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());
    let prepared = Arc::new(exec::load(&file, &sandbox).unwrap_or_else(|d| panic!("{d}")));
    let recorder = Arc::new(Recorder::default());
    let report = Executor::new(sandbox, recorder.clone())
        .run(prepared, input, RunOptions { concurrency: Some(4), ..RunOptions::default() }, CancellationToken::new())
        .await;
    (report, recorder.events())
}

fn state_of<'a>(report: &'a RunReport, id: &str) -> &'a exec::StepReport {
    report.steps.iter().find(|s| s.id == id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_steps_run_at_the_same_time() {
    let (report, events) = run_yaml(
        "components: { sleep: { path: '{sleep}' } }\nsteps:\n  - { id: a, component: sleep, input: { secs: 1 } }\n  - { id: b, component: sleep, input: { secs: 1 } }\n",
        json!({}),
    )
    .await;
    assert_eq!(report.state, RunState::Completed, "{report:?}");
    // Both started before either finished: their running intervals overlap.
    let order: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::StepStarted { step, .. } => Some(format!("start {step}")),
            Event::StepFinished { step, .. } => Some(format!("end {step}")),
            _ => None,
        })
        .collect();
    let first_end = order.iter().position(|e| e.starts_with("end")).unwrap();
    assert!(order[..first_end].contains(&"start a".to_string()) && order[..first_end].contains(&"start b".to_string()), "{order:?}");
    assert_eq!(report.output, Some(json!({"a": {"slept_secs": 1}, "b": {"slept_secs": 1}})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_step_skips_its_dependents_and_fails_the_run() {
    let (report, events) = run_yaml(
        "components: { fatal: { path: '{fatal}' }, echo: { path: '{echo}' } }\nsteps:\n  \
         - { id: bad, component: fatal }\n  \
         - { id: after, component: echo, input: { $from: { step: bad } } }\n  \
         - { id: later, component: echo, needs: [after] }\n",
        json!({}),
    )
    .await;
    assert_eq!(report.state, RunState::Failed);
    assert_eq!(report.error.as_deref(), Some("step `bad` failed (component): the input can never be processed"));
    assert_eq!(report.output, None);
    let bad = state_of(&report, "bad");
    assert_eq!((bad.state, bad.error.as_ref().unwrap().kind, bad.attempts), (StepState::Failed, FailureKind::Component, 1));
    for id in ["after", "later"] {
        let s = state_of(&report, id);
        assert_eq!((s.state, s.reason.as_deref()), (StepState::Skipped, Some("dependency failed")), "{id}");
    }
    assert!(matches!(events.last(), Some(Event::RunFinished { state: RunState::Failed, .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_that_does_not_resolve_is_a_reference_failure() {
    let (report, _) = run_yaml(
        "components: { echo: { path: '{echo}' } }\nsteps:\n  - { id: a, component: echo, input: { x: 1 } }\n  \
         - { id: b, component: echo, input: { $from: { step: a }, path: y.z } }\n",
        json!({}),
    )
    .await;
    let b = state_of(&report, "b");
    let error = b.error.as_ref().unwrap();
    assert_eq!((b.state, error.kind), (StepState::Failed, FailureKind::Reference));
    assert_eq!(error.message, "the output of step `a` has nothing at path `y.z`; add `$default` to allow that");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtins_store_and_fetch_blobs_and_output_defaults_to_the_sinks() {
    let (report, _) = run_yaml(
        "steps:\n  - { id: put, component: /builtin/put_blob, input: { data: { $from: { workflow: input } } } }\n  \
         - { id: get, component: /builtin/get_blob, input: { blob_id: '{{ steps.put.output.blob_id }}' } }\n",
        json!({"b": 2, "a": 1}),
    )
    .await;
    assert_eq!(report.state, RunState::Completed, "{report:?}");
    assert_eq!(report.output, Some(json!({"data": {"a": 1, "b": 2}})));
    let id = state_of(&report, "put").output.as_ref().unwrap()["blob_id"].clone();
    assert_eq!(id, json!(sandflow::sandbox::sha256_hex(br#"{"a":1,"b":2}"#)));
}
