//! The scheduler over a fake step runner: no wasm, and tokio's paused
//! clock instead of real sleeps, so timings are exact. A "component" is a
//! one-word program in the file the workflow names (`echo`, `fail`,
//! `flaky`, `sleep`); the runner interprets it on the job's input.

use sandflow::exec::{self, Event, EventSink, Executor, Job, Loaded, Loader, RunOptions, RunReport, RunState, StepRunner, StepState};
use sandflow::failure::{FailureKind, StepFailure};
use sandflow::sandbox::{CancellationToken, HostServices, LoadError, LogLine, LogSource, StepLog, StepOutcome, sha256_hex};
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
    async fn run(&self, job: Job, services: Arc<dyn HostServices>, cancel: &CancellationToken) -> StepOutcome {
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
        // `flaky` says which call it is, as a step writes its log.
        let mut log = StepLog::default();
        if program == "flaky" {
            let line = LogLine { source: LogSource::Stdout, text: format!("call {calls}") };
            services.log_line(0, &line);
            log.lines.push(line);
        }
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
        StepOutcome { result, fuel_used: 1, duration: Duration::from_millis(ms), log }
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
    let options = RunOptions { concurrency: Some(concurrency), ..RunOptions::default() };
    run_with(yaml, options, CancellationToken::new()).await
}

/// [`run`] with `options` and `cancel` of the caller's.
async fn run_with(yaml: &str, options: RunOptions, cancel: CancellationToken) -> (RunReport, Vec<Event>, usize, Duration) {
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
    let report = Executor::new(fake.clone(), events.clone()).run(prepared, json!({}), options, cancel).await;
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
    // Each attempt's log line is told as it is written, between the
    // attempt's start and its end; the step's log is its last attempt's.
    let told: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::StepStarted { attempt, .. } => Some(format!("start {attempt}")),
            Event::StepLogLine { attempt, seq, line, .. } => Some(format!("{attempt}#{seq}: {}", line.text)),
            Event::StepRetrying { attempt, .. } => Some(format!("retry {attempt}")),
            Event::StepFinished { log, .. } => Some(format!("log {:?}", log.lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>())),
            _ => None,
        })
        .collect();
    assert_eq!(told, ["start 1", "1#0: call 1", "retry 1", "start 2", "2#0: call 2", "retry 2", "start 3", "3#0: call 3", r#"log ["call 3"]"#]);
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

/// [`run_with`], handed off after `after`.
async fn run_handed_off(yaml: &str, after: Duration) -> (RunReport, Vec<Event>, usize, Duration) {
    let hand_off = CancellationToken::new();
    let fire = hand_off.clone();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        fire.cancel();
    });
    let options = RunOptions { concurrency: Some(2), hand_off, ..RunOptions::default() };
    run_with(yaml, options, CancellationToken::new()).await
}

/// A run handed off (a stopping worker's) starts no step after that: the
/// steps running end as they would, and it returns `running`, its end not
/// told, with the steps that ended.
#[tokio::test(start_paused = true)]
async fn a_run_handed_off_starts_nothing_more_and_returns_once_its_running_steps_end() {
    let yaml = "steps:
  - { id: a, component: sleep, input: { ms: 1000 } }
  - { id: b, component: sleep, input: { ms: 3000 } }
  - { id: c, component: echo, needs: [a] }
  - { id: d, component: echo, needs: [b] }
";
    let (report, events, _, elapsed) = run_handed_off(yaml, Duration::from_millis(500)).await;
    assert_eq!(report.state, RunState::Running, "{report:?}");
    assert_eq!(elapsed, Duration::from_secs(3), "b's end, not c's or d's");
    let ended: Vec<(&str, StepState)> = report.steps.iter().map(|s| (s.id.as_str(), s.state)).collect();
    assert_eq!(ended, [("a", StepState::Succeeded), ("b", StepState::Succeeded)]);
    assert_eq!(step(&report, "b").output, Some(json!({"ms": 3000})));
    let started: Vec<&str> = events.iter().filter_map(|e| if let Event::StepStarted { step, .. } = e { Some(step.as_str()) } else { None }).collect();
    assert_eq!(started, ["a", "b"], "c was ready at 1s, after the hand-off");
    assert!(!events.iter().any(|e| matches!(e, Event::RunFinished { .. })), "its end is not told: {events:?}");

    // Handed off while its last step runs, a run has nothing left to hand over: it ends.
    let chain = "steps:
  - { id: a, component: sleep, input: { ms: 1000 } }
  - { id: b, component: echo, needs: [a], input: { v: 1 } }
";
    let (report, events, _, _) = run_handed_off(chain, Duration::from_millis(1500)).await;
    assert_eq!((report.state, step(&report, "b").state), (RunState::Completed, StepState::Succeeded), "{report:?}");
    assert!(events.iter().any(|e| matches!(e, Event::RunFinished { .. })));
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

/// A mailbox whose signals arrive at set times on the paused clock.
struct Letters {
    since: tokio::time::Instant,
    /// (after, step, data, by)
    letters: Vec<(Duration, &'static str, Value, &'static str)>,
    asked: Mutex<u32>,
}

#[async_trait::async_trait]
impl exec::Mailbox for Letters {
    async fn signals(&self, _run: &str, steps: &[String]) -> Result<Vec<(String, exec::core::Signal)>, String> {
        *self.asked.lock().unwrap() += 1;
        let now = self.since.elapsed();
        Ok(self
            .letters
            .iter()
            .filter(|(after, step, ..)| *after <= now && steps.iter().any(|s| s == step))
            .map(|(_, step, data, by)| (step.to_string(), exec::core::Signal { data: data.clone(), by: by.to_string(), at: "2026-12-05T10:00:00Z".into() }))
            .collect())
    }
}

fn waiting(events: &[Event]) -> Vec<(String, exec::core::WaitKind)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::StepWaiting { step, kind, .. } => Some((step.clone(), *kind)),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_sleeping_step_holds_no_slot_and_wakes_on_time() {
    // One slot: the sleep does not hold it, so `work` runs during it; a
    // `wait:` step waits its time, then runs in the slot.
    let yaml = "steps:
  - { id: nap, component: /builtin/sleep, input: { duration: 1h } }
  - { id: work, component: sleep, input: { ms: 100, v: 1 } }
  - { id: later, component: echo, wait: { duration: 10m }, input: { v: 2 } }
  - { id: after, component: echo, needs: [nap, later], input: { woke: \"{{ steps.nap.output.until }}\" } }
";
    let (report, events, max, elapsed) = run(yaml, 1).await;
    assert_eq!(report.state, RunState::Completed, "{report:?}");
    assert_eq!(max, 1);
    assert!(elapsed >= Duration::from_secs(3599) && elapsed <= Duration::from_secs(3601), "woke after the hour: {elapsed:?}");
    assert_eq!(waiting(&events), [("nap".to_string(), exec::core::WaitKind::Sleep), ("later".to_string(), exec::core::WaitKind::Wait)]);
    let woke = report.output.as_ref().unwrap()["after"]["woke"].as_str().unwrap().to_string();
    assert!(woke.parse::<jiff::Timestamp>().is_ok(), "the sleep's output says until when: {woke}");
    // `work` ended long before the hour: its end comes before the nap's.
    let ends: Vec<&str> = events.iter().filter_map(|e| match e { Event::StepFinished { step, .. } => Some(step.as_str()), _ => None }).collect();
    assert_eq!(ends, ["work", "later", "nap", "after"]);
}

#[tokio::test(start_paused = true)]
async fn a_signal_ends_its_step_with_the_data_and_a_timeout_fails_it_as_timeout() {
    let yaml = "steps:
  - { id: go, component: /builtin/signal, input: { name: go, timeout: 1h } }
  - { id: ok, component: /builtin/approval, input: { message: ship?, timeout: 2h } }
  - id: late
    component: /builtin/approval
    input: { message: anyone?, timeout: 30m }
    on_error: { action: continue, default_output: { approved: false } }
  - { id: no, component: /builtin/approval, input: { message: really? } }
  - { id: after, component: echo, needs: [go, ok, late], input: { go: \"{{ steps.go.output }}\", by: \"{{ steps.ok.output.by }}\", late: \"{{ steps.late.output }}\" } }
";
    let letters = Letters {
        since: tokio::time::Instant::now(),
        letters: vec![
            (Duration::from_secs(60), "go", json!({"n": 7}), "ci"),
            (Duration::from_secs(90 * 60), "ok", json!({"approved": true, "comment": "fine"}), "alice"),
            (Duration::from_secs(100 * 60), "no", json!({"approved": false, "comment": "not today"}), "bob"),
        ],
        asked: Mutex::new(0),
    };
    let options = RunOptions { mailbox: Some(Arc::new(letters)), ..RunOptions::default() };
    let (report, _, _, elapsed) = run_with(yaml, options, CancellationToken::new()).await;
    assert_eq!(report.state, RunState::Failed, "`no` was rejected: {report:?}");
    assert_eq!(step(&report, "go").output, Some(json!({"n": 7})));
    let late = step(&report, "late");
    assert_eq!((late.state, late.error.as_ref().map(|e| e.kind)), (StepState::Failed, Some(FailureKind::Timeout)), "{late:?}");
    assert!(late.error.as_ref().unwrap().message.contains("nobody approved or rejected it within 30m"), "{late:?}");
    let no = step(&report, "no");
    assert_eq!(no.error.as_ref().unwrap().message, "rejected by bob: not today");
    let after = step(&report, "after").output.clone().unwrap();
    assert_eq!(after, json!({"go": {"n": 7}, "by": "alice", "late": {"approved": false}}), "on_error's default for the timed-out approval");
    // Each signal is seen within the mailbox's poll of its arrival.
    assert!(elapsed >= Duration::from_secs(100 * 60) && elapsed < Duration::from_secs(100 * 60 + 1), "{elapsed:?}");
}

#[tokio::test(start_paused = true)]
async fn a_cancel_ends_waiting_steps_at_once_and_a_run_with_no_store_refuses_signals() {
    let yaml = "steps:
  - { id: nap, component: /builtin/sleep, input: { duration: 1d } }
  - { id: next, component: echo, needs: [nap] }
";
    let cancel = CancellationToken::new();
    let later = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        later.cancel();
    });
    let (report, _, _, elapsed) = run_with(yaml, RunOptions::default(), cancel).await;
    assert_eq!(report.state, RunState::Cancelled, "{report:?}");
    assert_eq!(elapsed, Duration::from_secs(5));
    let nap = step(&report, "nap");
    assert_eq!((nap.state, nap.reason.as_deref()), (StepState::Cancelled, Some("the run was cancelled before it started")), "{nap:?}");
    assert_eq!(step(&report, "next").state, StepState::Cancelled);

    let yaml = "steps:\n  - { id: go, component: /builtin/signal }\n";
    let (report, _, _, elapsed) = run(yaml, 1).await;
    assert_eq!((report.state, elapsed), (RunState::Failed, Duration::ZERO));
    assert!(step(&report, "go").error.as_ref().unwrap().message.contains("not recorded in a run store"), "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn a_bad_time_from_a_template_fails_the_step_and_a_recorded_wake_time_is_kept() {
    let yaml = "steps:
  - { id: past, component: /builtin/sleep, input: { until: \"{{ '2001-01-01T00:00:00Z' }}\" }, on_error: { action: continue } }
  - { id: word, component: echo, wait: { duration: \"{{ 'soon' }}\" } }
";
    let (report, _, _, _) = run(yaml, 2).await;
    let past = step(&report, "past");
    assert_eq!(past.error.as_ref().map(|e| e.kind), Some(FailureKind::Reference));
    assert!(past.error.as_ref().unwrap().message.contains("is in the past"), "{past:?}");
    assert!(step(&report, "word").error.as_ref().unwrap().message.contains("`wait`'s `duration`"), "{report:?}");

    // A resumed run wakes a step when its record said, not a day from now.
    let yaml = "steps:\n  - { id: nap, component: /builtin/sleep, input: { duration: 1d } }\n";
    let at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(90);
    let options = RunOptions { waits: [("nap".to_string(), Some(at))].into(), ..RunOptions::default() };
    let (report, _, _, elapsed) = run_with(yaml, options, CancellationToken::new()).await;
    assert_eq!(report.state, RunState::Completed);
    assert!(elapsed >= Duration::from_secs(88) && elapsed <= Duration::from_secs(90), "{elapsed:?}");
    assert_eq!(report.output, Some(json!({"until": at.to_string()})));
}
