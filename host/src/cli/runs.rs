//! `sandflow runs list | show ID | logs ID [STEP]` and `sandflow resume ID`:
//! run history from the run store.

use super::render::say;
use super::{CliError, Output, exit, new_sandbox, render, run, workflow_cmd};
use crate::exec::{EventSink, Redactor, RunOptions, RunState, check_input, check_secrets};
use crate::sandbox::CancellationToken;
use crate::store::{Store, StoreError, StoreServices};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum RunsCommand {
    /// The most recent runs, newest first.
    List {
        /// How many runs to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// One run: its status, input, output, and every step with state,
    /// attempts, duration, fuel and failure.
    Show {
        /// The run id (from `runs list`).
        id: String,
    },
    /// The captured logs of a run, or of one of its steps.
    Logs {
        /// The run id.
        id: String,
        /// Only this step.
        step: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct ResumeArgs {
    /// The run to continue (interrupted or failed).
    id: String,
    /// Secrets as `NAME=value` lines; also read from `SANDFLOW_SECRET_<NAME>`.
    #[arg(long, value_name = "FILE")]
    secrets_file: Option<PathBuf>,
    /// Most steps running at once.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    concurrency: Option<u64>,
}

/// Opens the store; every problem with it is exit 2.
pub(crate) fn open_store(state_dir: &Path) -> Result<Arc<Store>, CliError> {
    Store::open(state_dir).map(Arc::new).map_err(store_error)
}

pub(crate) fn store_error(e: StoreError) -> CliError {
    match e {
        StoreError::Sql(_) => CliError { code: exit::FAILED, message: e.to_string() },
        other => CliError::invalid(other.to_string()),
    }
}

/// Sends every event to each sink in turn (the store first, so a step is
/// committed before it is shown).
pub(crate) struct Tee(pub Vec<Arc<dyn EventSink>>);

impl EventSink for Tee {
    fn emit(&self, event: &crate::exec::Event) {
        for sink in &self.0 {
            sink.emit(event);
        }
    }

    fn barrier(&self) -> Result<(), crate::exec::SinkError> {
        self.0.iter().try_for_each(|sink| sink.barrier())
    }
}

fn print_json(value: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(value).expect("records serialize"));
}

pub(crate) fn execute(command: RunsCommand, state_dir: &Path, out: &Output) -> Result<u8, CliError> {
    let store = open_store(state_dir)?;
    match command {
        RunsCommand::List { limit } => {
            let runs = store.runs(limit).map_err(store_error)?;
            if out.json {
                print_json(&runs);
            } else if runs.is_empty() {
                say!("no runs yet in {}", store.path().display());
            } else {
                println!("{:<22} {:<20} {:<10} {:>5} {:>6}  STARTED", "RUN", "WORKFLOW", "STATUS", "OK", "FAILED");
                for r in runs {
                    println!(
                        "{:<22} {:<20} {:<10} {:>5} {:>6}  {}",
                        r.id, r.workflow, r.status, r.succeeded_steps, r.failed_steps, r.started_at
                    );
                }
            }
        }
        RunsCommand::Show { id } => {
            let run = store.run(&id).map_err(store_error)?;
            if out.json {
                print_json(&run);
            } else {
                println!("run {} ({}, attempt {})", run.id, run.status, run.attempt);
                println!("  workflow: {} ({})", run.workflow, run.file);
                println!("  started:  {}", run.started_at);
                if let Some(f) = &run.finished_at {
                    println!("  finished: {f}");
                }
                println!("  input:    {}", run.input);
                if let Some(o) = &run.output {
                    println!("  output:   {o}");
                }
                if let Some(e) = &run.error {
                    println!("  error:    {e}");
                }
                println!("  steps:");
                for s in &run.steps {
                    let failure = match (&s.error_kind, &s.error_message, &s.reason) {
                        (Some(k), Some(m), _) => format!("  {k}: {m}"),
                        (_, _, Some(r)) => format!("  {r}"),
                        _ => String::new(),
                    };
                    println!(
                        "    {:<20} {:<10} attempts {:<2} {:>10}  fuel {:<12}{failure}",
                        s.step,
                        s.state,
                        s.attempts,
                        render::duration(std::time::Duration::from_secs_f64(s.duration_ms / 1000.0)),
                        s.fuel_used
                    );
                }
            }
        }
        RunsCommand::Logs { id, step } => {
            let lines = store.logs(&id, step.as_deref()).map_err(store_error)?;
            if out.json {
                let rows: Vec<serde_json::Value> = lines
                    .iter()
                    .map(|(s, l)| serde_json::json!({ "step": s, "source": l.source, "text": l.text }))
                    .collect();
                print_json(&rows);
            } else {
                for (s, l) in lines {
                    println!("{s} {:>6} | {}", l.source.as_str(), l.text);
                }
            }
        }
    }
    Ok(exit::OK)
}

/// `sandflow resume ID`.
pub(crate) async fn resume(args: ResumeArgs, state_dir: &Path, out: &Output) -> Result<u8, CliError> {
    let cancel = CancellationToken::new();
    let watcher = tokio::spawn(super::call::cancel_on_signal(cancel.clone()));
    let store = open_store(state_dir)?;
    let record = store.run(&args.id).map_err(store_error)?;
    if record.status == RunState::Completed.as_str() {
        if out.json {
            // `--json` stderr is JSON lines only.
            super::render::event("run_already_completed", serde_json::json!({ "run_id": record.id }));
        } else if !out.quiet {
            say!("run {} already completed; its output:", record.id);
        }
        println!("{}", serde_json::to_string_pretty(&record.output.unwrap_or_default()).expect("a Value always serializes"));
        return Ok(exit::OK);
    }
    let file = PathBuf::from(&record.file);
    let sandbox = Arc::new(new_sandbox(state_dir)?);
    let prepared = Arc::new(workflow_cmd::load(&file, &sandbox, out).await?);
    if prepared.plan.workflow.sha256 != record.sha256 {
        return Err(CliError::invalid(format!(
            "{} changed since run {} started (its SHA-256 was {}); resuming would mix two versions of the workflow: start a new run instead",
            record.file, record.id, record.sha256
        )));
    }
    let secrets = run::read_secrets(args.secrets_file.as_deref())?;
    check_input(&prepared.plan.workflow, &record.input).map_err(CliError::invalid)?;
    check_secrets(&prepared.plan, &secrets).map_err(|d| workflow_cmd::report(out, d))?;
    // Outputs were recorded with secrets masked: put the current values
    // back, or run again a step whose output cannot be rebuilt exactly.
    let restored = store
        .succeeded_outputs(&record.id)
        .map_err(store_error)?
        .into_iter()
        .filter_map(|(step, recorded)| match &recorded.secrets {
            None => Some((step, recorded.output)),
            Some(spans) => crate::exec::unmask(&recorded.output, spans, &secrets).map(|v| (step, v)),
        })
        .collect();
    let attempt = store.resume_run(&record.id).map_err(store_error)?;
    let redactor = Redactor::new(&secrets);
    let options = RunOptions {
        run_id: record.id.clone(),
        concurrency: args.concurrency.map(|n| n as usize),
        secrets,
        services: Arc::new(StoreServices { store: store.clone(), run_id: record.id.clone() }),
        restored,
        attempt,
    };
    let recorded = run::Recorded { sandbox, prepared, input: record.input, options, store, redactor, cancel };
    let code = run::execute_recorded(recorded, out).await;
    watcher.abort();
    Ok(code)
}
