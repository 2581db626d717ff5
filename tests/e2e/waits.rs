//! Durable timers, signals and approvals on real processes: `sandflow run`
//! killed while a step sleeps and `sandflow resume` waking it when its
//! record said; a worker with one slot lending it to another run during a
//! sleep, killed, and a fresh worker waking the step once, on time; an
//! approval ended by `sandflow signal`, refused when it does not fit, and
//! timed out into its `on_error`.

use crate::distributed::pg;
use crate::support::{PgSchema, example, newest_run, run, sandflow};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A workflow file in `dir`, its components from `components/dist/`.
fn workflow(dir: &Path, name: &str, steps: &str) -> PathBuf {
    let file = dir.join(format!("{name}.yaml"));
    let text = format!("name: {name}\ncomponents:\n  text: {{ path: {} }}\nsteps:\n{steps}", example("text").display());
    std::fs::write(&file, text).unwrap();
    file
}

fn show(mut cmd: Command, id: &str) -> Value {
    let (code, out, err) = run(cmd.args(["--json", "runs", "show", id]));
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn step<'a>(record: &'a Value, id: &str) -> &'a Value {
    record["steps"].as_array().unwrap().iter().find(|s| s["step"] == id).unwrap_or(&Value::Null)
}

/// Polls `show` until `done` holds of the run's record.
fn wait_for(what: &str, limit: Duration, mut show: impl FnMut() -> Value, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let record = show();
        if done(&record) {
            return record;
        }
        assert!(started.elapsed() < limit, "{what}: not after {limit:?}: {record:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn at(text: &Value) -> jiff::Timestamp {
    text.as_str().unwrap_or_else(|| panic!("a time: {text}")).parse().unwrap()
}

/// How far `later` is after `earlier`, in seconds (negative: before).
fn after(later: jiff::Timestamp, earlier: jiff::Timestamp) -> f64 {
    later.duration_since(earlier).as_secs_f64()
}

/// A `sandflow` child process, SIGKILLed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sandflow run` of a 3 s sleep, killed while the step sleeps: `resume`
/// before the wake time wakes it when its record said (not 3 s after the
/// resume); `resume` after the wake time wakes it at once. Either way the
/// step ends once, with the wake time it recorded.
#[test]
fn a_sleep_killed_with_its_process_wakes_on_resume_when_its_record_said() {
    let state = tempfile::tempdir().unwrap();
    let file = workflow(state.path(), "nap", "  - { id: nap, component: /builtin/sleep, input: { duration: 3s } }\n  - { id: after, component: text, needs: [nap], input: { op: upper, text: woke } }\n");
    let mut before = String::new();
    for resume_late in [false, true] {
        let child = Killed(sandflow(&state).args(["-q", "run"]).arg(&file).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
        let id = wait_for("a run", Duration::from_secs(60), || Value::String(try_newest(&state)), |v| !v.as_str().unwrap().is_empty() && *v != before);
        let id = id.as_str().unwrap().to_string();
        before = id.clone();
        let record = wait_for("the sleep recorded", Duration::from_secs(60), || show(sandflow(&state), &id), |r| step(r, "nap")["state"] == "waiting");
        let wake = at(&step(&record, "nap")["wake_at"]);
        assert_eq!(step(&record, "nap")["wait_kind"], "sleep");
        drop(child);
        // The run's process is gone: the run says `running`, its step `waiting`.
        let record = show(sandflow(&state), &id);
        assert_eq!((record["status"].as_str(), step(&record, "nap")["state"].as_str()), (Some("running"), Some("waiting")));
        if resume_late {
            std::thread::sleep(Duration::from_secs_f64(after(wake, jiff::Timestamp::now()).max(0.0) + 0.5));
        }
        let (code, out, err) = run(sandflow(&state).args(["-q", "resume", &id]));
        let ended = jiff::Timestamp::now();
        assert_eq!(code, 0, "{err}");
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["text"], "WOKE");
        let late = after(ended, wake);
        match resume_late {
            // It woke at once: the resume took well under the sleep's 3 s.
            true => assert!(late < 2.5, "woke {late:.2}s after its time, resumed after it"),
            false => assert!((0.0..2.0).contains(&late), "ended {late:.2}s after its wake time"),
        }
        let record = show(sandflow(&state), &id);
        let nap = step(&record, "nap");
        assert_eq!((nap["state"].as_str(), nap["attempts"].as_u64()), (Some("succeeded"), Some(1)), "{nap}");
        assert_eq!(at(&nap["output"]["until"]), wake, "the wake time it recorded before the kill");
    }
}

/// The newest run's id, or "" before there is one.
fn try_newest(state: &tempfile::TempDir) -> String {
    let (code, list, _) = run(sandflow(state).args(["--json", "runs", "list", "--limit", "1"]));
    match code {
        0 => serde_json::from_str::<Value>(&list).ok().and_then(|v| v[0]["id"].as_str().map(str::to_string)).unwrap_or_default(),
        _ => String::new(),
    }
}

/// The example's approval, approved with `sandflow signal` from another
/// process; signals that do not fit are refused with what to do, and a
/// second signal is refused naming the first.
#[test]
fn an_approval_is_approved_once_with_sandflow_signal() {
    let state = tempfile::tempdir().unwrap();
    let child = sandflow(&state).args(["run", "workflows/release.yaml", "--set", "version=v9"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let id = wait_for("a run", Duration::from_secs(60), || Value::String(try_newest(&state)), |v| !v.as_str().unwrap().is_empty());
    let id = id.as_str().unwrap().to_string();
    // Before it waits: refused, saying why.
    let (code, _, err) = run(sandflow(&state).args(["signal", &id, "build", "--approve"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not waiting for a signal"), "{err}");
    let record = wait_for("the approval waits", Duration::from_secs(30), || show(sandflow(&state), &id), |r| step(r, "approve")["state"] == "waiting");
    let approve = step(&record, "approve");
    assert_eq!((approve["wait_kind"].as_str(), approve["input"]["message"].as_str()), (Some("approval"), Some("Ship v9?")));
    let (code, text, _) = run(sandflow(&state).args(["runs", "show", &id]));
    assert_eq!(code, 0);
    assert!(text.contains(&format!("waits for approval (timeout {}): sandflow signal {id} approve --approve (or --reject)", approve["wake_at"].as_str().unwrap())), "{text}");
    // Data an approval does not take: invalid (2), nothing recorded.
    let (code, _, err) = run(sandflow(&state).args(["signal", &id, "approve", "--data", r#"{"yes": 1}"#]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("an approval takes `{\"approved\": true|false"), "{err}");
    let (code, _, err) = run(sandflow(&state).args(["signal", &id[..13], "approve", "--approve", "--comment", "ship it"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&format!("signal sent to step `approve` of run {id}")), "{err}");
    let (code, _, err) = run(sandflow(&state).args(["signal", &id, "approve", "--reject"]));
    assert!(code == 1 && (err.contains("was signalled already, by local") || err.contains("is not waiting for a signal: it is succeeded")), "{code}: {err}");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let output: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(output["approved"], true);
    assert!(output["announced"].as_str().unwrap().starts_with("release v9 approved by local"), "{output}");
    let record = show(sandflow(&state), &id);
    assert_eq!(step(&record, "approve")["output"]["comment"], "ship it");
    // The timer before `announce` ran before it did.
    assert_eq!(step(&record, "announce")["state"], "succeeded");
}

/// No answer within its timeout: the approval fails with kind `timeout`,
/// and its `on_error` goes on without the announcement.
#[test]
fn an_approval_nobody_answers_times_out_into_its_on_error() {
    let state = tempfile::tempdir().unwrap();
    let file = workflow(
        state.path(),
        "unanswered",
        "  - id: approve
    component: /builtin/approval
    input: { message: anyone?, timeout: 1s }
    on_error: { action: continue, default_output: { approved: false } }
  - { id: announce, component: text, needs: [approve], when: steps.approve.output.approved, input: { op: upper, text: go } }
  - { id: fallback, component: text, needs: [approve], when: '!steps.approve.output.approved', input: { op: upper, text: nobody answered } }
",
    );
    let started = Instant::now();
    let (code, out, err) = run(sandflow(&state).args(["-q", "run"]).arg(&file));
    assert_eq!(code, 0, "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
    let output: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(output["fallback"]["text"], "NOBODY ANSWERED", "{output}");
    let record = show(sandflow(&state), &newest_run(sandflow(&state)));
    let approve = step(&record, "approve");
    assert_eq!((approve["state"].as_str(), approve["error_kind"].as_str()), (Some("failed"), Some("timeout")), "{approve}");
    assert!(approve["error_message"].as_str().unwrap().contains("nobody approved or rejected it within 1s"), "{approve}");
    assert_eq!(step(&record, "announce")["state"], "skipped");
}

/// A worker with one slot: while a run's step sleeps, another run's steps
/// use that slot; the worker is killed during the sleep and a fresh one
/// started: the step wakes once, within a second or so of its time, and
/// the run completes.
#[test]
fn a_sleep_on_a_worker_holds_no_slot_and_survives_the_worker() {
    let Some(schema) = PgSchema::create() else { return };
    let state = tempfile::tempdir().unwrap();
    let sleeper = workflow(state.path(), "sleeper", "  - { id: nap, component: /builtin/sleep, input: { duration: 6s } }\n  - { id: after, component: text, needs: [nap], input: { op: upper, text: woke } }\n");
    let busy = workflow(
        state.path(),
        "busy",
        "  - { id: a, component: text, input: { op: upper, text: a } }\n  - { id: b, component: text, needs: [a], input: { op: upper, text: b } }\n  - { id: c, component: text, needs: [b], input: { op: upper, text: c } }\n",
    );
    let submit = |file: &Path| {
        let (code, out, err) = run(pg(&schema, &state).arg("submit").arg(file));
        assert_eq!(code, 0, "{err}");
        out.trim().to_string()
    };
    let one_slot = |state: &tempfile::TempDir| {
        Killed(pg(&schema, state).args(["-q", "worker", "--concurrency", "1", "--lease", "3s"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap())
    };
    let sleeping = submit(&sleeper);
    let worker = one_slot(&state);
    let record = wait_for("the sleep recorded", Duration::from_secs(60), || show(pg(&schema, &state), &sleeping), |r| step(r, "nap")["state"] == "waiting");
    let wake = at(&step(&record, "nap")["wake_at"]);
    let other = submit(&busy);
    let done = wait_for("the other run", Duration::from_secs(30), || show(pg(&schema, &state), &other), |r| r["status"] != "running");
    assert_eq!(done["status"], "completed", "{done:#}");
    let finished = at(&done["finished_at"]);
    assert!(after(wake, finished) > 0.0, "the other run ended during the sleep, in the slot the sleep does not hold ({finished} < {wake})");
    // Every worker killed during the sleep; a fresh one after a while.
    drop(worker);
    assert_eq!(step(&show(pg(&schema, &state), &sleeping), "nap")["state"], "waiting");
    std::thread::sleep(Duration::from_secs(1));
    let _worker = one_slot(&state);
    let record = wait_for("the sleeper", Duration::from_secs(60), || show(pg(&schema, &state), &sleeping), |r| r["status"] != "running");
    assert_eq!(record["status"], "completed", "{record:#}");
    let nap = step(&record, "nap");
    assert_eq!((nap["attempts"].as_u64(), at(&nap["output"]["until"])), (Some(1), wake), "{nap}");
    // On time: the step's end is recorded within a second of its wake time
    // on a quiet machine (a worker sleeps until its soonest due job); the
    // bound leaves room for a CI machine running other tests beside it.
    let woke = after(at(&nap["finished_at"]), wake);
    eprintln!("the sleep's end was recorded {woke:.3}s after its wake time");
    assert!((0.0..1.5).contains(&woke), "woke {woke:.2}s after its time");
    let ended = schema.strings("SELECT step FROM attempts WHERE run_id = $1 AND step = 'nap'", &sleeping);
    assert_eq!(ended.len(), 1, "it ended once: {ended:?}");
}

/// A failure stops a run (fail fast): its steps that wait never wake, in
/// one process as on workers: they end at once as steps that never
/// started (not after the approval's five minutes).
#[test]
fn a_failure_ends_the_steps_that_wait_in_process_and_on_workers() {
    let Some(schema) = PgSchema::create() else { return };
    let state = tempfile::tempdir().unwrap();
    let file = workflow(
        state.path(),
        "failfast",
        "  - { id: approve, component: /builtin/approval, input: { message: ok?, timeout: 5m } }\n  - { id: nap, component: /builtin/sleep, input: { duration: 1h } }\n  - { id: broken, component: text, needs: [nap], input: { op: nope, text: x } }\n  - { id: bad, component: text, input: { op: nope, text: x } }\n",
    );
    let _workers = crate::distributed::Workers::start(&schema, &state, 1, "5s");
    let sqlite = format!("sqlite:{}", state.path().join("local.db").display());
    for store in [sqlite.as_str(), schema.url.as_str()] {
        let started = Instant::now();
        let (code, _, err) = run(sandflow(&state).args(["-q", "--store", store, "run"]).arg(&file));
        assert_eq!(code, 1, "{err}");
        assert!(started.elapsed() < Duration::from_secs(30), "{store}: the run waited for its waiting steps");
        let mut cmd = sandflow(&state);
        cmd.args(["--store", store]);
        let mut again = sandflow(&state);
        again.args(["--store", store]);
        let record = show(cmd, &newest_run(again));
        assert_eq!(record["status"], "failed", "{record:#}");
        // They never started: as every step that never started.
        for id in ["approve", "nap"] {
            let s = step(&record, id);
            assert_eq!((s["state"].as_str(), s["reason"].as_str()), (Some("skipped"), Some("not started: the run failed")), "{store}: {s}");
        }
        assert_eq!(step(&record, "broken")["state"], "skipped", "{store}: {record:#}");
    }
}

/// A signal step, in one process and on workers: data its `schema` refuses
/// is refused (exit 2, nothing recorded), and `sandflow cancel` while it
/// waits ends the run at once, the step `cancelled`.
#[test]
fn a_waiting_signal_refuses_data_its_schema_does_not_take_and_a_cancel_ends_it() {
    let Some(schema) = PgSchema::create() else { return };
    let state = tempfile::tempdir().unwrap();
    let file = workflow(state.path(), "deploy", "  - { id: go, component: /builtin/signal, input: { name: go, timeout: 10m, schema: { type: object, required: [ref] } } }\n");
    let _workers = crate::distributed::Workers::start(&schema, &state, 1, "5s");
    let sqlite = format!("sqlite:{}", state.path().join("local.db").display());
    for store in [sqlite.as_str(), schema.url.as_str()] {
        let on = |mut cmd: Command| {
            cmd.args(["--store", store]);
            cmd
        };
        let child = Killed(on(sandflow(&state)).args(["-q", "run"]).arg(&file).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
        let id = wait_for("a run", Duration::from_secs(60), || {
            let (_, list, _) = run(on(sandflow(&state)).args(["--json", "runs", "list", "--limit", "1"]));
            let runs: Value = serde_json::from_str(&list).unwrap_or(Value::Null);
            runs[0].clone()
        }, |r| r["status"] == "running");
        let id = id["id"].as_str().unwrap().to_string();
        wait_for("the signal step waits", Duration::from_secs(30), || show(on(sandflow(&state)), &id), |r| step(r, "go")["state"] == "waiting");
        let (code, _, err) = run(on(sandflow(&state)).args(["signal", &id, "go", "--data", r#"{"branch": "main"}"#]));
        assert_eq!(code, 2, "{store}: {err}");
        assert!(err.contains("the data does not match the step's `schema`") && err.contains("ref"), "{store}: {err}");
        let started = Instant::now();
        let (code, _, err) = run(on(sandflow(&state)).args(["cancel", &id]));
        assert_eq!(code, 0, "{store}: {err}");
        assert!(started.elapsed() < Duration::from_secs(5), "{store}: the cancel took {:?}", started.elapsed());
        let record = show(on(sandflow(&state)), &id);
        assert_eq!(record["status"], "cancelled", "{store}: {record:#}");
        assert_eq!(step(&record, "go")["state"], "cancelled", "{store}: {record:#}");
        drop(child);
    }
}
