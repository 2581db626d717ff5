//! The scheduler over a fake step runner: no wasm, and tokio's paused
//! clock instead of real sleeps, so timings are exact. A "component" is a
//! one-word program in the file the workflow names (`echo`, `fail`,
//! `flaky`, `sleep`); the runner interprets it on the job's input.

use sandflow::exec::{self, Event, EventSink, Executor, Job, Loaded, Loader, RunOptions, RunReport, RunState, StepRunner, StepState};
use sandflow::failure::{FailureKind, StepFailure};
use sandflow::sandbox::{CancellationToken, HostServices, LoadError, StepLog, StepOutcome, sha256_hex};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Fake {
    programs: Mutex<HashMap<String, String>>,
    /// Attempts so far per (program, input).
    calls: Mutex<HashMap<String, u32>>,
    running: Mutex<(usize, usize)>,
}

impl Loader for Fake {
    fn load(&self, _origin: &str, bytes: &[u8]) -> Result<Loaded, LoadError> {
        let sha = sha256_hex(bytes);
        self.programs.lock().unwrap().insert(sha.clone(), String::from_utf8_lossy(bytes).trim().to_string());
        Ok(Loaded { sha256: sha, imports: Vec::new() })
    }
}

#[async_trait::async_trait]
impl StepRunner for Fake {
    async fn run(&self, job: Job, _services: Arc<dyn HostServices>, cancel: &CancellationToken) -> StepOutcome {
        let program = self.programs.lock().unwrap()[&job.component].clone();
        {
            let mut r = self.running.lock().unwrap();
            r.0 += 1;
            r.1 = r.1.max(r.0);
        }
        let calls = {
            let mut calls = self.calls.lock().unwrap();
            let n = calls.entry(format!("{program} {}", job.input)).or_default();
            *n += 1;
            *n
        };
        let ms = job.input["ms"].as_u64().unwrap_or(0);
        let result = tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => match program.as_str() {
                "echo" | "sleep" => Ok(job.input.clone()),
                "fail" => Err(StepFailure::component("it always fails", false)),
                "flaky" if calls < job.input["succeed_on"].as_u64().unwrap() as u32 => Err(StepFailure::component(format!("call {calls} fails"), true)),
                "flaky" => Ok(json!({"calls": calls})),
                other => panic!("unknown fake program {other}"),
            },
            _ = cancel.cancelled() => Err(StepFailure::new(FailureKind::Cancelled, "cancelled while running")),
        };
        self.running.lock().unwrap().0 -= 1;
        StepOutcome { result, fuel_used: 1, duration: Duration::from_millis(ms), log: StepLog::default() }
    }
}

#[derive(Default)]
struct Events(Mutex<Vec<Event>>);

impl EventSink for Events {
    fn emit(&self, e: &Event) {
        self.0.lock().unwrap().push(e.clone());
    }
}

/// Runs `yaml` (components `echo`, `fail`, `flaky`, `sleep`) on the fake
/// runner; returns the report, the events, the most steps that ran at
/// once, and the time it took on the paused clock.
async fn run(yaml: &str, concurrency: usize) -> (RunReport, Vec<Event>, usize, Duration) {
    let dir = tempfile::tempdir().unwrap();
    for program in ["echo", "fail", "flaky", "sleep"] {
        std::fs::write(dir.path().join(format!("{program}.wasm")), program).unwrap();
    }
    let header = "components:\n  echo: { path: echo.wasm }\n  fail: { path: fail.wasm }\n  flaky: { path: flaky.wasm }\n  sleep: { path: sleep.wasm }\n";
    let file = dir.path().join("wf.yaml");
    std::fs::write(&file, format!("{header}{yaml}")).unwrap();
    let fake = Arc::new(Fake::default());
    let prepared = Arc::new(exec::load(&file, fake.as_ref()).unwrap_or_else(|d| panic!("{d}")));
    let events = Arc::new(Events::default());
    let started = tokio::time::Instant::now();
    let options = RunOptions { concurrency: Some(concurrency), ..RunOptions::default() };
    let report = Executor::new(fake.clone(), events.clone()).run(prepared, json!({}), options, CancellationToken::new()).await;
    let elapsed = started.elapsed();
    let max = fake.running.lock().unwrap().1;
    let events = events.0.lock().unwrap().clone();
    (report, events, max, elapsed)
}

fn step<'a>(report: &'a RunReport, id: &str) -> &'a exec::StepReport {
    report.steps.iter().find(|s| s.id == id).unwrap()
}

#[tokio::test(start_paused = true)]
async fn ready_steps_run_up_to_the_limit_and_outputs_flow_down_the_graph() {
    let yaml = "steps:
  - { id: a, component: sleep, input: { ms: 100, v: 1 } }
  - { id: b, component: sleep, input: { ms: 100, v: 2 } }
  - { id: c, component: sleep, input: { ms: 100, v: 3 } }
  - { id: d, component: echo, input: { sum: [\"{{ steps.a.output.v }}\", \"{{ steps.b.output.v }}\", \"{{ steps.c.output.v }}\"] } }
";
    let (report, _, max, elapsed) = run(yaml, 2).await;
    assert_eq!(report.state, RunState::Completed, "{report:?}");
    assert_eq!(report.output, Some(json!({"sum": [1, 2, 3]})));
    assert_eq!(max, 2, "never more than the limit");
    assert_eq!(elapsed, Duration::from_millis(200), "three 100 ms steps two at a time, then an instant one");
    let (_, _, max, elapsed) = run(yaml, 3).await;
    assert_eq!((max, elapsed), (3, Duration::from_millis(100)));
}

#[tokio::test(start_paused = true)]
async fn retries_wait_their_backoff_and_count_attempts() {
    let yaml = "steps:
  - id: f
    component: flaky
    input: { succeed_on: 3 }
    retry: { max_attempts: 3, backoff: exponential, delay: 100ms, max_delay: 1s }
";
    let (report, events, _, elapsed) = run(yaml, 1).await;
    assert_eq!(report.state, RunState::Completed, "{report:?}");
    assert_eq!(report.output, Some(json!({"calls": 3})));
    assert_eq!(step(&report, "f").attempts, 3);
    let delays: Vec<Duration> = events
        .iter()
        .filter_map(|e| match e {
            Event::StepRetrying { delay, .. } => Some(*delay),
            _ => None,
        })
        .collect();
    assert_eq!(delays, [Duration::from_millis(100), Duration::from_millis(200)]);
    assert_eq!(elapsed, Duration::from_millis(300));
}

#[tokio::test(start_paused = true)]
async fn a_failure_skips_its_dependents_and_lets_running_steps_finish() {
    let yaml = "steps:
  - { id: bad, component: fail }
  - { id: after, component: echo, needs: [bad] }
  - { id: slow, component: sleep, input: { ms: 500 } }
  - { id: later, component: echo, needs: [slow] }
";
    let (report, _, _, elapsed) = run(yaml, 4).await;
    assert_eq!(report.state, RunState::Failed);
    assert_eq!(report.error.as_deref(), Some("step `bad` failed (component): it always fails"));
    assert_eq!(step(&report, "bad").state, StepState::Failed);
    assert_eq!((step(&report, "after").state, step(&report, "after").reason.as_deref()), (StepState::Skipped, Some("dependency failed")));
    assert_eq!(step(&report, "slow").state, StepState::Succeeded, "a running step finishes");
    assert_eq!(
        (step(&report, "later").state, step(&report, "later").reason.as_deref()),
        (StepState::Skipped, Some("not started: the run failed"))
    );
    assert_eq!(elapsed, Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn the_run_timeout_interrupts_running_steps_at_its_deadline() {
    let yaml = "timeout: 2s
steps:
  - { id: long, component: sleep, input: { ms: 60000 } }
  - { id: next, component: echo, needs: [long] }
";
    let (report, _, _, elapsed) = run(yaml, 2).await;
    assert_eq!(report.state, RunState::Failed);
    assert_eq!(elapsed, Duration::from_secs(2));
    let long = step(&report, "long");
    assert_eq!((long.state, long.error.as_ref().map(|e| e.kind)), (StepState::Failed, Some(FailureKind::Timeout)));
    assert_eq!(step(&report, "next").state, StepState::Cancelled);
}

#[tokio::test(start_paused = true)]
async fn for_each_items_run_at_the_step_s_own_concurrency() {
    let yaml = "steps:
  - id: each
    component: sleep
    forEach: [1, 2, 3, 4, 5]
    concurrency: 2
    input: { ms: 100, v: \"{{ item }}\" }
";
    let (report, _, max, elapsed) = run(yaml, 8).await;
    assert_eq!(report.state, RunState::Completed, "{report:?}");
    let values: Vec<Value> = report.output.unwrap().as_array().unwrap().iter().map(|o| o["v"].clone()).collect();
    assert_eq!(values, [json!(1), json!(2), json!(3), json!(4), json!(5)], "in item order");
    assert_eq!((max, elapsed), (2, Duration::from_millis(300)));
}
