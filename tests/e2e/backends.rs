//! The run store's behaviour, the same tests against both backends: SQLite
//! and PostgreSQL (a fresh schema per test; see `support::backends`).

use crate::support::{Backend, backends};
use sandflow::exec::{Event, MaskedString, RunState, SecretSpans, StepState};
use sandflow::failure::{FailureKind, StepFailure};
use sandflow::sandbox::{LogLine, LogSource, StepLog};
use sandflow::store::{NewRun, RunDetail, RunStore, StoreError, StoreUrl, open};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

async fn store(backend: &Backend, dir: &tempfile::TempDir) -> Arc<dyn RunStore> {
    open(&StoreUrl::parse(&backend.url(dir.path())).unwrap()).await.unwrap_or_else(|e| panic!("{}: {e}", backend.name()))
}

fn new_run(id: &str) -> NewRun {
    NewRun { id: id.into(), workflow: "wf".into(), file: "wf.yaml".into(), sha256: "abc".into(), input: json!({"n": 1}), targets: Vec::new(), text: None }
}

fn finished(run: &str, step: &str, state: StepState, output: Option<Value>, log: &[&str]) -> Event {
    Event::StepFinished {
        run_id: run.into(),
        step: step.into(),
        state,
        attempt: 1,
        items: None,
        duration: Duration::from_millis(12),
        fuel_used: 345,
        error: (state == StepState::Failed).then(|| StepFailure::new(FailureKind::Component, "it broke")),
        reason: None,
        output: output.map(Arc::new),
        output_secrets: None,
        input: None,
        last_fuel: Some(246),
        log: StepLog {
            lines: log.iter().map(|t| LogLine { source: LogSource::Info, text: t.to_string() }).collect(),
            dropped_bytes: 0,
        },
        cached: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_recorded_listed_shown_and_logged() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&backend, &dir).await;
        let name = backend.name();
        s.begin_run(&new_run("r1")).await.unwrap();
        s.record(vec![
            Event::StepRetrying {
                run_id: "r1".into(),
                step: "a".into(),
                attempt: 1,
                item: None,
                error: StepFailure::new(FailureKind::Trap, "crashed"),
                delay: Duration::from_millis(5),
                fuel_used: 99,
            },
            finished("r1", "a", StepState::Succeeded, Some(json!({"b": 2, "a": 1})), &["one", "two\0nul"]),
            finished("r1", "b", StepState::Failed, None, &[]),
            Event::RunFinished { run_id: "r1".into(), state: RunState::Failed, duration: Duration::ZERO, output: None, error: Some("step `b` failed".into()) },
        ])
        .await
        .unwrap();
        let runs = s.runs(&sandflow::store::RunQuery::newest(10)).await.unwrap();
        assert_eq!(runs.len(), 1, "{name}");
        assert_eq!((runs[0].status.as_str(), runs[0].succeeded_steps, runs[0].failed_steps), ("failed", 1, 1), "{name}");
        let run = s.run("r1", RunDetail::Full).await.unwrap();
        assert_eq!(run.input, json!({"n": 1}), "{name}");
        assert_eq!(run.error.as_deref(), Some("step `b` failed"), "{name}");
        let steps: Vec<(&str, &str)> = run.steps.iter().map(|x| (x.step.as_str(), x.state.as_str())).collect();
        assert_eq!(steps, [("a", "succeeded"), ("b", "failed")], "{name}: in the order they finished");
        let attempts: Vec<String> = s
            .attempts("r1", None)
            .await
            .unwrap()
            .into_iter()
            .map(|a| format!("{} {} {} {:?} {:?}", a.step, a.attempt, a.state, a.error_kind, a.fuel_used))
            .collect();
        assert_eq!(
            attempts,
            [
                r#"a 1 failed Some("trap") Some(99)"#,
                "a 1 succeeded None Some(246)",
                r#"b 1 failed Some("component") Some(246)"#
            ],
            "{name}"
        );
        assert_eq!(s.attempts("r1", Some("b")).await.unwrap().len(), 1, "{name}");
        assert_eq!(run.steps[0].output, Some(json!({"a": 1, "b": 2})), "{name}");
        assert_eq!((run.steps[0].fuel_used, run.steps[0].run_attempt), (345, 1), "{name}");
        assert_eq!(run.steps[1].error_message.as_deref(), Some("it broke"), "{name}");
        let logs = s.logs("r1", Some("a")).await.unwrap();
        let texts: Vec<&str> = logs.iter().map(|(_, l)| l.text.as_str()).collect();
        // PostgreSQL text cannot hold NUL: it is replaced, not lost.
        let nul = if name == "postgres" { "two\u{fffd}nul" } else { "two\0nul" };
        assert_eq!(texts, ["one", nul], "{name}");
        assert_eq!(backend.count(dir.path(), "SELECT COUNT(*) FROM attempts WHERE run_id = $1", "r1"), 3, "{name}");
        assert!(matches!(s.run("nope", RunDetail::Full).await, Err(StoreError::UnknownRun(_))), "{name}");
        assert!(matches!(s.logs("nope", None).await, Err(StoreError::UnknownRun(_))), "{name}");
    }
}

/// A batch that holds a step's start, the lines it logged live and its end
/// records what the end says (the start and live lines are replaced, not
/// written first); a step whose end is not in the batch shows `running`
/// with its live lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_a_step_s_start_and_end_records_the_end() {
    let started = |step: &str, attempt| Event::StepStarted { run_id: "r5".into(), step: step.into(), attempt, item: None, worker: None };
    let line = |step: &str, attempt, seq, text: &str| Event::StepLogLine {
        run_id: "r5".into(),
        step: step.into(),
        attempt,
        item: None,
        seq,
        line: LogLine { source: LogSource::Info, text: text.into() },
    };
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&backend, &dir).await;
        let name = backend.name();
        s.begin_run(&new_run("r5")).await.unwrap();
        let retried = Event::StepRetrying {
            run_id: "r5".into(),
            step: "a".into(),
            attempt: 1,
            item: None,
            error: StepFailure::new(FailureKind::Trap, "crashed"),
            delay: Duration::ZERO,
            fuel_used: 7,
        };
        s.record(vec![
            started("a", 1),
            line("a", 1, 0, "first try"),
            retried,
            started("b", 1),
            line("b", 1, 0, "b is at work"),
            started("a", 2),
            line("a", 2, 0, "live"),
            finished("r5", "a", StepState::Succeeded, Some(json!(1)), &["kept"]),
        ])
        .await
        .unwrap();
        let run = s.run("r5", RunDetail::Full).await.unwrap();
        let steps: Vec<(&str, &str)> = run.steps.iter().map(|x| (x.step.as_str(), x.state.as_str())).collect();
        assert_eq!(steps, [("b", "running"), ("a", "succeeded")], "{name}");
        let texts = |step| {
            let s = s.clone();
            async move { s.logs("r5", Some(step)).await.unwrap().into_iter().map(|(_, l)| l.text).collect::<Vec<_>>() }
        };
        assert_eq!(texts("a").await, ["kept"], "{name}");
        assert_eq!(texts("b").await, ["b is at work"], "{name}");
        let attempts: Vec<String> = s.attempts("r5", Some("a")).await.unwrap().into_iter().map(|a| format!("{} {}", a.attempt, a.state)).collect();
        assert_eq!(attempts, ["1 failed", "1 succeeded"], "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_counts_attempts_in_the_store_and_keeps_masked_outputs() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&backend, &dir).await;
        let name = backend.name();
        s.begin_run(&new_run("r2")).await.unwrap();
        let spans = SecretSpans { strings: vec![MaskedString { at: "/token".into(), spans: vec![(0, "TOKEN".into())] }], in_keys: false };
        let Event::StepFinished { run_id, step, state, attempt, duration, fuel_used, error, reason, output, log, .. } =
            finished("r2", "a", StepState::Succeeded, Some(json!({"token": "***"})), &["first log"])
        else {
            unreachable!()
        };
        let masked = Event::StepFinished {
            run_id,
            step,
            state,
            attempt,
            items: None,
            duration,
            fuel_used,
            error,
            reason,
            input: None,
            output,
            output_secrets: Some(spans.clone()),
            last_fuel: None,
            log,
            cached: false,
        };
        s.record(vec![masked, finished("r2", "b", StepState::Failed, None, &["old"])]).await.unwrap();

        // A second process resumes: the attempt number comes from the store.
        let other = store(&backend, &dir).await;
        assert_eq!(other.resume_run("r2").await.unwrap(), 2, "{name}");
        assert_eq!(s.resume_run("r2").await.unwrap(), 3, "{name}");
        let outputs = s.succeeded_outputs("r2").await.unwrap();
        assert_eq!(outputs.keys().collect::<Vec<_>>(), ["a"], "{name}");
        assert_eq!((&outputs["a"].output, &outputs["a"].secrets), (&json!({"token": "***"}), &Some(spans)), "{name}");
        other.record(vec![finished("r2", "b", StepState::Succeeded, Some(json!(1)), &["new"])]).await.unwrap();
        let run = s.run("r2", RunDetail::Full).await.unwrap();
        assert_eq!((run.status.as_str(), run.attempt), ("running", 3), "{name}");
        let b = run.steps.iter().find(|x| x.step == "b").unwrap();
        assert_eq!((b.state.as_str(), b.run_attempt), ("succeeded", 3), "{name}");
        let logs: Vec<String> = s.logs("r2", Some("b")).await.unwrap().into_iter().map(|(_, l)| l.text).collect();
        assert_eq!(logs, ["new"], "{name}: a step run again replaces its log");
        assert!(matches!(s.resume_run("nope").await, Err(StoreError::UnknownRun(_))), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_blobs_are_per_run_and_per_content() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&backend, &dir).await;
        let name = backend.name();
        assert_eq!(s.state_get("r", "k").await.unwrap(), None, "{name}");
        s.state_set("r", "k", "[1,2]").await.unwrap();
        s.state_set("r", "k", "\"é\"").await.unwrap();
        s.state_set("other", "k", "1").await.unwrap();
        assert_eq!(s.state_get("r", "k").await.unwrap().as_deref(), Some("\"é\""), "{name}");
        // Bytes, not characters: "k" + "\"é\"" is 1 + 4.
        assert_eq!(s.state_usage("r").await.unwrap(), (1, 5), "{name}");
        assert_eq!(s.state_usage("empty").await.unwrap(), (0, 0), "{name}");
        let data = vec![0u8, 255, 7];
        s.blob_put("id1", &data).await.unwrap();
        s.blob_put("id1", &data).await.unwrap();
        assert_eq!(s.blob_get("id1").await.unwrap(), Some(data), "{name}");
        assert_eq!(s.blob_get("id2").await.unwrap(), None, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_processes_may_open_a_new_store_at_once() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let url = StoreUrl::parse(&backend.url(dir.path())).unwrap();
        let opens: Vec<_> = (0..6).map(|_| tokio::spawn({
            let url = url.clone();
            async move { open(&url).await.map(drop) }
        })).collect();
        for o in opens {
            o.await.unwrap().unwrap_or_else(|e| panic!("{}: {e}", backend.name()));
        }
    }
}

#[test]
fn store_urls_name_a_backend_or_say_what_is_wrong() {
    assert_eq!(StoreUrl::parse("sqlite:runs.db").unwrap(), StoreUrl::Sqlite("runs.db".into()));
    assert_eq!(StoreUrl::parse("sqlite:///tmp/x.db").unwrap(), StoreUrl::Sqlite("/tmp/x.db".into()));
    assert!(matches!(StoreUrl::parse("postgresql://u@h/db").unwrap(), StoreUrl::Postgres(_)));
    let e = StoreUrl::parse("mysql://h/db").unwrap_err().to_string();
    assert_eq!(e, "`mysql://h/db` is not a run store URL: use sqlite:PATH or postgres://USER@HOST[:PORT]/DATABASE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_store_migrates_an_older_schema_and_refuses_a_newer_one() {
    let Some(schema) = crate::support::PgSchema::create() else { return };
    let url = StoreUrl::parse(&schema.url).unwrap();
    let s = open(&url).await.unwrap();
    s.begin_run(&new_run("old")).await.unwrap();
    drop(s);
    let (client, conn) = tokio_postgres::connect(&schema.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    // Back to what schema version 1 was.
    client
        .batch_execute(
            "DROP TABLE events, jobs, dag, run_files, files, memo, workers, tokens, namespace_files, audit, namespaces, schedule_files, schedule_ticks, schedules, hook_files, hook_deliveries, hooks, signals, run_blobs;
             ALTER TABLE runs DROP COLUMN namespace, DROP COLUMN priority, DROP COLUMN triggered_by, DROP COLUMN trigger_source, DROP COLUMN scheduled_time;
             ALTER TABLE runs DROP COLUMN queued, DROP COLUMN run_started, DROP COLUMN stop, DROP COLUMN open_steps,
                 DROP COLUMN deadline, DROP COLUMN concurrency, DROP COLUMN events, DROP COLUMN began,
                 DROP COLUMN main_stop, DROP COLUMN ending, DROP COLUMN targets, DROP COLUMN components, DROP COLUMN vars,
                 DROP COLUMN rerun, DROP COLUMN attempt_events, DROP COLUMN held_by, DROP COLUMN held_until,
                 DROP COLUMN log_bytes, DROP COLUMN log_lines;
             ALTER TABLE runs DROP COLUMN cancel_requested; ALTER TABLE steps DROP COLUMN input, DROP COLUMN started_at, DROP COLUMN worker, DROP COLUMN items, DROP COLUMN wake_at, DROP COLUMN wait_kind; ALTER TABLE attempts DROP COLUMN fuel_used;
             DROP INDEX runs_by_workflow, runs_by_status; UPDATE sandflow_schema SET version = 1",
        )
        .await
        .unwrap();
    let s = open(&url).await.unwrap();
    assert_eq!(s.run("old", RunDetail::Full).await.unwrap().status, "running", "kept its runs");
    assert_eq!(s.request_cancel("old").await.unwrap(), "running");
    assert!(s.take_cancel_request("old").await.unwrap());
    assert!(!s.take_cancel_request("old").await.unwrap(), "a request is taken once");
    let version: i64 = client.query_one("SELECT version FROM sandflow_schema", &[]).await.unwrap().get(0);
    assert_eq!(version, sandflow::store::PgStore::SCHEMA_VERSION);
    client.batch_execute("UPDATE sandflow_schema SET version = 99").await.unwrap();
    let e = open(&url).await.err().expect("a newer schema is refused").to_string();
    assert!(e.contains("has schema version 99, newer than this sandflow knows"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_listed_newest_first_filtered_and_paged() {
    use sandflow::store::RunQuery;
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&backend, &dir).await;
        let name = backend.name();
        // Seven runs, most in the same millisecond: the order still holds.
        for i in 0..7 {
            let id = format!("r{i}");
            let workflow = if i % 2 == 0 { "even" } else { "odd" };
            s.begin_run(&NewRun { workflow: workflow.into(), ..new_run(&id) }).await.unwrap();
            if i % 3 == 0 {
                let end = Event::RunFinished { run_id: id, state: RunState::Failed, duration: Duration::ZERO, output: None, error: None };
                s.record(vec![end]).await.unwrap();
            }
        }
        let ids = |runs: Vec<sandflow::store::RunSummary>| runs.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(s.runs(&RunQuery::newest(3)).await.unwrap()), ["r6", "r5", "r4"], "{name}");
        let even = RunQuery { limit: 10, workflow: Some("even".into()), ..RunQuery::default() };
        assert_eq!(ids(s.runs(&even).await.unwrap()), ["r6", "r4", "r2", "r0"], "{name}");
        let failed_even = RunQuery { status: Some("failed".into()), ..even.clone() };
        assert_eq!(ids(s.runs(&failed_even).await.unwrap()), ["r6", "r0"], "{name}");
        // Pages of two, each after the last run of the one before.
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = ids(s.runs(&RunQuery { limit: 2, after: after.clone(), ..RunQuery::default() }).await.unwrap());
            if page.is_empty() {
                break;
            }
            after = page.last().cloned();
            all.extend(page);
        }
        assert_eq!(all, ["r6", "r5", "r4", "r3", "r2", "r1", "r0"], "{name}");
        let page = RunQuery { limit: 10, after: Some("r4".into()), workflow: Some("odd".into()), ..RunQuery::default() };
        assert_eq!(ids(s.runs(&page).await.unwrap()), ["r3", "r1"], "{name}");
    }
}

/// A run's blob quota holds across processes: on PostgreSQL, where
/// workers on many machines put one run's blobs, each worker's meter of
/// the run counts every worker's blobs (a blob put again is free), and
/// another run has a quota of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_s_blob_quota_counts_what_every_worker_put() {
    use sandflow::sandbox::{HostError, HostServices, Quota, QuotaKind, QuotaScope, RunMeter, sha256_hex};
    use sandflow::store::StoreServices;
    let Some(schema) = crate::support::PgSchema::create() else { return };
    let s = open(&StoreUrl::parse(&schema.url).unwrap()).await.unwrap();
    let quota = Quota { blob_bytes: 10, blobs: 2, ..Quota::RUN };
    let meter = |run: &str| RunMeter::new(Arc::new(StoreServices { store: s.clone(), run_id: run.into() }), quota);
    // Two workers' meters of run `r`.
    let (a, b) = (meter("r"), meter("r"));
    let over = |r: Result<(), HostError>| match r {
        Err(HostError::Quota(q)) if q.scope == QuotaScope::Run => q.kind,
        other => panic!("not over the run's quota: {other:?}"),
    };
    a.blob_put(&sha256_hex(b"123456"), b"123456").await.unwrap();
    b.blob_put(&sha256_hex(b"123456"), b"123456").await.expect("a blob the run put is free");
    assert_eq!(over(b.blob_put(&sha256_hex(b"abcde"), b"abcde").await), QuotaKind::BlobBytes, "6 + 5 bytes of 10");
    b.blob_put(&sha256_hex(b"abc"), b"abc").await.unwrap();
    assert_eq!(over(a.blob_put(&sha256_hex(b"z"), b"z").await), QuotaKind::Blobs, "2 blobs of 2");
    assert_eq!(s.blob_get(&sha256_hex(b"abcde")).await.unwrap(), None, "a blob over the quota is not kept");
    assert_eq!(s.blob_get(&sha256_hex(b"abc")).await.unwrap().as_deref(), Some(&b"abc"[..]));
    // Another run counts its own.
    meter("other").blob_put(&sha256_hex(b"abcde"), b"abcde").await.unwrap();
}
