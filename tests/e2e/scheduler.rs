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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_over_its_timeout_fails_with_kind_timeout_while_its_siblings_succeed() {
    let (report, _) = run_yaml(
        "components: { sleep: { path: '{sleep}' }, echo: { path: '{echo}' } }\nsteps:\n  \
         - { id: slow, component: sleep, timeout: 300ms, input: { secs: 30 } }\n  \
         - { id: one, component: echo, input: 1 }\n  - { id: two, component: echo, input: 2 }\n",
        json!({}),
    )
    .await;
    let slow = state_of(&report, "slow");
    assert_eq!((slow.state, slow.error.as_ref().unwrap().kind), (StepState::Failed, FailureKind::Timeout));
    assert!(slow.duration < std::time::Duration::from_millis(600), "{:?}", slow.duration);
    for id in ["one", "two"] {
        assert_eq!(state_of(&report, id).state, StepState::Succeeded, "{id}");
    }
    assert_eq!(report.state, RunState::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_timeout_interrupts_running_steps_and_cancels_the_rest() {
    let (report, _) = run_yaml(
        "timeout: 400ms\ncomponents: { spin: { path: '{spin}' }, echo: { path: '{echo}' } }\nsteps:\n  \
         - { id: spin, component: spin, fuel: 1000000000000 }\n  - { id: after, component: echo, needs: [spin] }\n",
        json!({}),
    )
    .await;
    assert_eq!(report.state, RunState::Failed);
    assert_eq!(report.error.as_deref(), Some("the run's 400ms timeout passed"));
    let spin = state_of(&report, "spin");
    assert_eq!((spin.state, spin.error.as_ref().unwrap().kind), (StepState::Failed, FailureKind::Timeout));
    assert_eq!(state_of(&report, "after").state, StepState::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_events_with_attempt_numbers_and_only_retryable_kinds_retry() {
    let (report, events) = run_yaml(
        "components: { fatal: { path: '{fatal}' }, panic: { path: '{panic}' } }\nsteps:\n  \
         - { id: fatal, component: fatal, retry: { max_attempts: 4 }, on_error: { action: continue } }\n  \
         - { id: crash, component: panic, retry: { max_attempts: 3, backoff: linear, delay: 10ms }, on_error: { action: continue } }\n",
        json!({}),
    )
    .await;
    assert_eq!(report.state, RunState::Completed, "continue keeps the run going");
    assert_eq!(state_of(&report, "fatal").attempts, 1, "a non-retryable component error is not retried");
    let crash = state_of(&report, "crash");
    assert_eq!((crash.state, crash.attempts, crash.output.clone()), (StepState::Failed, 3, Some(Value::Null)));
    let retries: Vec<(u32, u128)> = events
        .iter()
        .filter_map(|e| match e {
            Event::StepRetrying { step, attempt, delay, error, .. } if step == "crash" => {
                assert_eq!(error.kind, FailureKind::Trap);
                Some((*attempt, delay.as_millis()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(retries, [(1, 10), (2, 20)]);
    let starts: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            Event::StepStarted { step, attempt, .. } if step == "crash" => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(starts, [1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn for_each_items_fail_fast_or_continue_per_item() {
    let yaml = "components: { text: { path: '{text}' } }\nsteps:\n  \
        - id: each\n    component: text\n    forEach: '{{ inputs.items }}'\n    concurrency: 1\n    \
          input: { op: ACTION, text: '{{ item }}' }\n    on_error: ON_ERROR\n";
    // `text` with op `upper` needs a string: the number 2 fails that item.
    let continued = yaml.replace("ACTION", "upper").replace("ON_ERROR", "{ action: continue, default_output: { text: '?' } }");
    let (report, _) = run_yaml(&continued, json!({"items": ["a", 2, "c"]})).await;
    assert_eq!(report.state, RunState::Completed);
    assert_eq!(report.output, Some(json!([{"text": "A"}, {"text": "?"}, {"text": "C"}])));

    let failing = yaml.replace("ACTION", "upper").replace("ON_ERROR", "{ action: fail }");
    let (report, events) = run_yaml(&failing, json!({"items": ["a", 2, "c", "d"]})).await;
    assert_eq!(report.state, RunState::Failed);
    let each = state_of(&report, "each");
    assert!(each.error.as_ref().unwrap().message.starts_with("item 1: invalid input"), "{:?}", each.error);
    let started_items: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            Event::StepStarted { item, .. } => *item,
            _ => None,
        })
        .collect();
    assert_eq!(started_items, [0, 1], "items after the failure are not started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_when_that_is_not_boolean_skips_with_a_warning() {
    let (report, events) = run_yaml(
        "components: { echo: { path: '{echo}' } }\nsteps:\n  - { id: a, component: echo, input: 1 }\n  \
         - { id: b, component: echo, when: 'steps.a.output + 1', input: 2 }\n  \
         - { id: c, component: echo, needs: [b], input: 3 }\n",
        json!({}),
    )
    .await;
    let b = state_of(&report, "b");
    assert_eq!(b.state, StepState::Skipped);
    let warning = events.iter().find_map(|e| match e {
        Event::StepWarning { step, message, .. } if step == "b" => Some(message.clone()),
        _ => None,
    });
    assert_eq!(warning.as_deref(), Some("`when` of step `b` could not be evaluated, so it is skipped: `steps.a.output + 1` gave 2, not true or false"));
    assert_eq!(state_of(&report, "c").state, StepState::Succeeded, "`needs` on a skipped step does not skip");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_are_masked_in_events_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wf.yaml");
    std::fs::write(
        &file,
        "steps:\n  - { id: leak, component: /builtin/get_blob, input: { blob_id: 'id-{{ secrets.TOKEN }}' } }\n",
    )
    .unwrap();
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());
    let prepared = Arc::new(exec::load(&file, &sandbox).unwrap());
    let recorder = Arc::new(Recorder::default());
    let secrets = std::collections::BTreeMap::from([("TOKEN".to_string(), "tok-12345".to_string())]);
    let report = Executor::new(sandbox, recorder.clone())
        .run(prepared, json!({}), RunOptions { secrets, ..RunOptions::default() }, CancellationToken::new())
        .await;
    assert_eq!(report.error.as_deref(), Some("step `leak` failed (component): /builtin/get_blob: no blob with id id-***"));
    let all = serde_json::to_string(&recorder.events()).unwrap();
    assert!(!all.contains("tok-12345") && all.contains("id-***"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_and_limits_in_the_workflow_reach_the_sandbox() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("note.txt"), "granted line\n").unwrap();
    // SAFETY of the test: the variable is this test's own.
    unsafe_env_set("SANDFLOW_TEST_GRANTED", "yes");
    let yaml = format!(
        "defaults: {{ memory: 16MiB }}\ncomponents:\n  \
           env: {{ path: '{env}', grants: {{ env: [SANDFLOW_TEST_GRANTED] }} }}\n  \
           noenv: {{ path: '{env}' }}\n  \
           files: {{ path: '{file}', grants: {{ dirs: [ {{ host: '{dir}', guest: /data }} ] }} }}\n  \
           bomb: {{ path: '{bomb}' }}\n  \
           spin: {{ path: '{{spin}}' }}\n\
         steps:\n  \
           - {{ id: env, component: env, input: {{ name: SANDFLOW_TEST_GRANTED }} }}\n  \
           - {{ id: noenv, component: noenv, input: {{ name: SANDFLOW_TEST_GRANTED }}, on_error: {{ action: continue }} }}\n  \
           - {{ id: file, component: files, input: {{ path: /data/note.txt }} }}\n  \
           - {{ id: bomb, component: bomb, on_error: {{ action: continue }} }}\n  \
           - {{ id: spin, component: spin, fuel: 1000000, on_error: {{ action: continue }} }}\n",
        env = hostile("read-env").display(),
        file = hostile("read-file").display(),
        dir = data.path().display(),
        bomb = hostile("memory-bomb").display(),
    );
    let (report, _) = run_yaml(&yaml, json!({})).await;
    assert_eq!(report.state, RunState::Completed, "{report:?}");
    let out = |id| state_of(&report, id).output.clone().unwrap();
    assert_eq!(out("env")["value"], "yes");
    assert_eq!(out("env")["visible"], json!(["SANDFLOW_TEST_GRANTED"]));
    assert_eq!(out("file")["first_line"], "granted line");
    let kind = |id| state_of(&report, id).error.as_ref().map(|e| e.kind);
    assert_eq!(kind("noenv"), Some(FailureKind::Component), "no grant, no variable");
    assert_eq!(kind("bomb"), Some(FailureKind::Memory), "defaults.memory applies");
    assert!(state_of(&report, "bomb").error.as_ref().unwrap().message.contains("memory cap of 16MiB"));
    assert_eq!(kind("spin"), Some(FailureKind::Fuel), "the step's fuel applies");
}

/// Sets a variable for this test process; no other test reads it.
fn unsafe_env_set(name: &str, value: &str) {
    // `set_var` is unsafe in edition 2024 because other threads may read
    // the environment; only the sandbox reads this name, after this call.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var(name, value)
    };
}
