//! Embedding sandflow in a Rust program: load a workflow, run it in this
//! process with an input (each step in its own sandbox, with the
//! workflow's limits), see each step end as it does, and read the run's
//! output or why it failed.
//!
//! ```sh
//! cargo run -p sandflow --example embed -- workflows/diamond.yaml '{"text": "Hello World"}'
//! ```
//!
//! `cargo test -p sandflow --example embed` runs it on that workflow.

use sandflow::exec::{self, Event, EventSink, Executor, RunOptions, RunState};
use sandflow::sandbox::{CancellationToken, Sandbox, SandboxConfig};
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

/// Runs the workflow at `path` with `input`: its output, or why it did not
/// complete (a workflow that does not load says each problem's place).
async fn run(path: &Path, input: Value) -> Result<Value, String> {
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).map_err(|e| e.to_string())?);
    // Parse, plan, and load (compile) every component, checked against its grants.
    let prepared = exec::load(path, sandbox.as_ref()).map_err(|problems| problems.to_string())?;
    // The input against the workflow's schema; no secrets here.
    let entry = exec::enter(&prepared, &[], &input, &Default::default()).map_err(|refused| refused.to_string())?;
    let executor = Executor::new(sandbox, Arc::new(Steps));
    let report = executor.run(Arc::new(entry.prepared), input, RunOptions::default(), CancellationToken::new()).await;
    match report.state {
        RunState::Completed => Ok(report.output.unwrap_or(Value::Null)),
        state => Err(format!("the run {}: {}", state.as_str(), report.error.unwrap_or_default())),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, input] = args.as_slice() else {
        eprintln!("usage: embed WORKFLOW.yaml INPUT_JSON");
        return std::process::ExitCode::from(2);
    };
    let input = match serde_json::from_str(input) {
        Ok(input) => input,
        Err(e) => {
            eprintln!("the input is not JSON: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(Path::new(path), input).await {
        Ok(output) => {
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_diamond_runs_embedded_and_a_failed_run_says_why() {
        let diamond = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../workflows/diamond.yaml");
        assert_eq!(super::run(&diamond, json!({ "text": " Hello World " })).await, Ok(json!({ "text": "HELLO WORLD / hello world" })));
        let failed = super::run(&diamond, json!({ "words": 3 })).await.unwrap_err();
        assert!(failed.starts_with("the run failed: step `split` failed (reference): the run input has nothing at path `text`"), "{failed}");
    }
}
