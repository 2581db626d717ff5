//! Embedding sandflow in a Rust program: load a workflow, run it with an
//! input (each step in its own sandbox, with the workflow's limits), see
//! each step end as it does, and read the run's output or why it failed;
//! the same run recorded in a run store, or submitted to workers.
//!
//! ```sh
//! # In this process, nothing recorded:
//! cargo run -p sandflow --example embed -- workflows/diamond.yaml '{"text": "Hello World"}'
//! # Recorded in a SQLite store (`sandflow runs show ID` reads it):
//! cargo run -p sandflow --example embed -- workflows/diamond.yaml '{"text": "Hi"}' sqlite:runs.db
//! # Submitted to the workers of a PostgreSQL store (`sandflow worker`), followed to its end:
//! cargo run -p sandflow --example embed -- workflows/diamond.yaml '{"text": "Hi"}' postgres://postgres@127.0.0.1/test
//! ```
//!
//! The library is a dependency with `default-features = false` (no command
//! line). `cargo test -p sandflow --example embed` runs all three ways.

use sandflow::exec::{self, Event, EventSink, Executor, RunOptions, RunState};
use sandflow::runs::{Recorder, Settings};
use sandflow::sandbox::{CancellationToken, Sandbox, SandboxConfig};
use sandflow::store::{PgStore, StoreUrl};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;

/// Tells each step's end, as the run goes (every event comes here: a
/// program may record them, show them, or export them).
struct Steps;

#[async_trait::async_trait]
impl EventSink for Steps {
    fn emit(&self, event: &Event) {
        if let Event::StepFinished { step, state, .. } = event {
            eprintln!("{step}: {}", state.as_str());
        }
    }
}

/// A run's output, or why it did not complete.
fn ended(state: RunState, output: Option<Value>, error: Option<String>) -> Result<Value, String> {
    match state {
        RunState::Completed => Ok(output.unwrap_or(Value::Null)),
        state => Err(format!("the run {}: {}", state.as_str(), error.unwrap_or_default())),
    }
}

/// The workflow at `path` ready to run with `input` in this process, in
/// its own sandbox: parsed, planned, every component loaded (compiled) and
/// checked against its grants, and the input against the workflow's schema
/// (no secrets here). A workflow that does not load says each problem's place.
fn prepare(path: &Path, input: &Value) -> Result<(Arc<Sandbox>, Arc<exec::Prepared>), String> {
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).map_err(|e| e.to_string())?);
    let prepared = exec::load(path, sandbox.as_ref()).map_err(|problems| problems.to_string())?;
    let entry = exec::enter(&prepared, &[], input, &Default::default()).map_err(|refused| refused.to_string())?;
    Ok((sandbox, Arc::new(entry.prepared)))
}

/// Runs the workflow at `path` with `input` in this process: its output,
/// or why it did not complete.
async fn run(path: &Path, input: Value) -> Result<Value, String> {
    let (sandbox, prepared) = prepare(path, &input)?;
    let executor = Executor::new(sandbox, Arc::new(Steps));
    let report = executor.run(prepared, input, RunOptions::default(), CancellationToken::new()).await;
    ended(report.state, report.output, report.error)
}

/// The same run recorded in the store at `url` (a SQLite file; a
/// PostgreSQL store is given to [`submit_and_follow`] instead): its id with
/// its output, or why it did not complete.
async fn run_recorded(url: &StoreUrl, path: &Path, input: Value) -> Result<(String, Value), String> {
    let store = sandflow::store::open(url).await.map_err(|e| e.to_string())?;
    let (sandbox, prepared) = prepare(path, &input)?;
    let recorder = Recorder { store, runner: sandbox };
    let report = recorder
        .start(prepared, path, input, Settings::default(), Arc::new(Steps), CancellationToken::new())
        .await
        .map_err(|e| e.to_string())?;
    Ok((report.run_id.clone(), ended(report.state, report.output, report.error)?))
}

/// The same run submitted to the workers of the PostgreSQL store at `url`,
/// then followed (its events, from whichever worker ran each step) to its
/// end: its id with its output, or why it did not complete.
async fn submit_and_follow(url: &str, path: &Path, input: Value) -> Result<(String, Value), String> {
    let store = Arc::new(PgStore::connect(url).await.map_err(|e| e.to_string())?);
    // Checked, not compiled (workers compile what they run), with every
    // file it reads, which the run records for the workers.
    let file = path.to_path_buf();
    let (prepared, files) = tokio::task::spawn_blocking(move || sandflow::runs::load_for_submit(&file, None))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|problems| problems.to_string())?;
    exec::enter(&prepared, &[], &input, &Default::default()).map_err(|refused| refused.to_string())?;
    let id = sandflow::runs::submit(&store, &prepared, path, &files, input, &[], &Default::default()).await.map_err(|e| e.to_string())?;
    let followed = sandflow::runs::follow(store, &id, Arc::new(Steps), CancellationToken::new()).await.map_err(|e| e.to_string())?;
    let followed = followed.ok_or("stopped following")?;
    Ok((id, ended(followed.state, followed.output, followed.error)?))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (path, input, store) = match args.as_slice() {
        [path, input] => (path, input, None),
        [path, input, store] => (path, input, Some(store.as_str())),
        _ => {
            eprintln!("usage: embed WORKFLOW.yaml INPUT_JSON [sqlite:PATH | postgres://URL]");
            return std::process::ExitCode::from(2);
        }
    };
    let input = match serde_json::from_str(input) {
        Ok(input) => input,
        Err(e) => {
            eprintln!("the input is not JSON: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let path = Path::new(path);
    // Which way the run goes is the store URL's kind, as `--store` reads it.
    let result = match store.map(StoreUrl::parse).transpose() {
        Err(bad) => Err(bad.to_string()),
        Ok(None) => run(path, input).await.map(|output| (None, output)),
        Ok(Some(StoreUrl::Postgres(url))) => submit_and_follow(&url, path, input).await.map(|(id, output)| (Some(id), output)),
        Ok(Some(url)) => run_recorded(&url, path, input).await.map(|(id, output)| (Some(id), output)),
    };
    match result {
        Ok((id, output)) => {
            if let Some(id) = id {
                eprintln!("run {id}");
            }
            println!("{output}");
            std::process::ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("{why}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use std::path::PathBuf;
    use std::sync::Arc;

    fn diamond() -> PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../workflows/diamond.yaml")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_diamond_runs_embedded_and_a_failed_run_says_why() {
        assert_eq!(super::run(&diamond(), json!({ "text": " Hello World " })).await, Ok(json!({ "text": "HELLO WORLD / hello world" })));
        let failed = super::run(&diamond(), json!({ "words": 3 })).await.unwrap_err();
        assert!(failed.starts_with("the run failed: step `split` failed (reference): the run input has nothing at path `text`"), "{failed}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_recorded_run_is_in_the_store_with_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let url = sandflow::store::StoreUrl::Sqlite(dir.path().join("runs.db"));
        let (id, output) = super::run_recorded(&url, &diamond(), json!({ "text": "Hi" })).await.unwrap();
        assert_eq!(output, json!({ "text": "HI / hi" }));
        let store = sandflow::store::open(&url).await.unwrap();
        let record = store.run(&id, sandflow::store::RunDetail::Full).await.unwrap();
        assert_eq!(record.status, "completed");
        assert_eq!(record.steps.len(), 4, "{:?}", record.steps);
        assert!(record.steps.iter().all(|s| s.state == "succeeded"), "{:?}", record.steps);
    }

    /// Submitted to a worker (here one in this process, on a schema of its
    /// own on the test server: `SANDFLOW_TEST_POSTGRES`), and followed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_submitted_run_is_run_by_a_worker_and_followed_to_its_end() {
        let base = std::env::var("SANDFLOW_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        if std::env::var("SANDFLOW_SKIP").is_ok_and(|v| v.split(',').any(|s| matches!(s.trim(), "postgres" | "all"))) {
            eprintln!("notice: skipped (SANDFLOW_SKIP=postgres)");
            return;
        }
        let schema = format!("embed_{}", uuid::Uuid::now_v7().simple());
        let (admin, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {base} (SANDFLOW_TEST_POSTGRES): {e}; start it, or set SANDFLOW_SKIP=postgres"));
        tokio::spawn(conn);
        admin.batch_execute(&format!("CREATE SCHEMA {schema}")).await.unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-csearch_path%3D{schema}");

        let store = Arc::new(sandflow::store::PgStore::connect(&url).await.unwrap());
        let sandbox = Arc::new(sandflow::sandbox::Sandbox::new(sandflow::sandbox::SandboxConfig::default()).unwrap());
        let config = sandflow::worker::WorkerConfig {
            name: "embedded".into(),
            concurrency: 4,
            lease: std::time::Duration::from_secs(30),
            secrets: Default::default(),
            namespace_secrets: Default::default(),
            labels: Vec::new(),
            care_every: std::time::Duration::from_secs(5),
            whole_runs: sandflow::worker::WorkerConfig::WHOLE_RUNS,
            only_run: None,
        };
        let worker = sandflow::worker::Worker::new(store, sandbox, config);
        let stop = sandflow::sandbox::CancellationToken::new();
        let working = tokio::spawn({
            let stop = stop.clone();
            async move { worker.run(stop).await }
        });

        let result = super::submit_and_follow(&url, &diamond(), json!({ "text": "Hi" })).await;
        let failed = super::submit_and_follow(&url, &diamond(), json!({ "words": 3 })).await;
        stop.cancel();
        working.await.unwrap();
        admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();

        let (_, output) = result.unwrap();
        assert_eq!(output, json!({ "text": "HI / hi" }));
        let failed = failed.unwrap_err();
        assert!(failed.starts_with("the run failed: step `split` failed (reference): the run input has nothing at path `text`"), "{failed}");
    }
}
