//! `sandflow runs list | show ID | logs ID [STEP]` and `sandflow resume ID`:
//! run history from the run store.

use super::render::say;
use super::{CliError, GlobalArgs, Output, exit, new_sandbox, render, run, store_error, workflow_cmd};
use sandflow::exec::{Redactor, RunState, enter};
use sandflow::runs::{Recorder, ResumeError, Rerun, Settings};
use sandflow::store::RunDetail;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum RunsCommand {
    /// The most recent runs, newest first.
    List {
        /// How many runs to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Only runs of this namespace.
        #[arg(long, value_name = "NS")]
        namespace: Option<String>,
    },
    /// One run: its status, input, output, and every step with state,
    /// attempts, duration, fuel and failure.
    Show {
        /// The run id (from `runs list`).
        id: String,
        /// Also draw the steps as a text Gantt chart: a bar per step from
        /// its start to its end.
        #[arg(long)]
        timeline: bool,
    },
    /// Show a run's progress as workers record it, until it ends (PostgreSQL
    /// store; exit code as `run`'s). Ctrl-C stops following; the run goes
    /// on (`sandflow cancel ID` stops it).
    Follow {
        /// The run id (from `submit` or `runs list`).
        id: String,
    },
    /// The captured logs of a run, or of one of its steps. A running
    /// step's lines are there as it writes them.
    #[command(after_help = "With --follow, lines are printed as the steps write them, until the run (or STEP) ends; \
        Ctrl-C stops following, not the run. A step that starts again (a retry) prints its log anew.")]
    Logs {
        /// The run id.
        id: String,
        /// Only this step.
        step: Option<String>,
        /// Keep printing lines as they are written, until the run (or
        /// STEP) ends (`--json`: one JSON line per log line).
        #[arg(long, short)]
        follow: bool,
    },
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    sandflow retry 01a2... --from load     # `load` and everything downstream run again\n  \
    sandflow retry 01a2...                 # what failed, was cancelled or skipped by a failure")]
pub(crate) struct RetryArgs {
    /// The finished run (completed, failed or cancelled) to run again.
    pub(crate) id: String,
    /// Run this step and every step downstream of it again; the others
    /// keep their recorded outputs.
    #[arg(long, value_name = "STEP")]
    pub(crate) from: Option<String>,
    /// Secrets as `NAME=value` lines; also read from `SANDFLOW_SECRET_<NAME>`.
    #[arg(long, value_name = "FILE")]
    pub(crate) secrets_file: Option<PathBuf>,
    /// Most steps running at once.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) concurrency: Option<u64>,
    #[command(flatten)]
    pub(crate) components: workflow_cmd::ComponentsArg,
    #[command(flatten)]
    pub(crate) vars: super::args::VarArgs,
    #[command(flatten)]
    pub(crate) work: super::args::WorkArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ResumeArgs {
    /// The run to continue (interrupted or failed).
    pub(crate) id: String,
    /// Secrets as `NAME=value` lines; also read from `SANDFLOW_SECRET_<NAME>`.
    #[arg(long, value_name = "FILE")]
    pub(crate) secrets_file: Option<PathBuf>,
    /// Most steps running at once.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) concurrency: Option<u64>,
    #[command(flatten)]
    pub(crate) components: workflow_cmd::ComponentsArg,
    #[command(flatten)]
    pub(crate) vars: super::args::VarArgs,
    #[command(flatten)]
    pub(crate) work: super::args::WorkArgs,
}

/// Spaces that make a `written`-character field `width` wide.
fn pad(line: &mut String, written: usize, width: usize) {
    line.extend(std::iter::repeat_n(' ', width.saturating_sub(written)));
}

/// `text` left-aligned in `width` characters, as `{:<width}` writes it but
/// without the formatter's fill, which it writes a character at a time (a
/// tenth of `runs show` of 100,000 steps).
fn left(line: &mut String, text: &str, width: usize) {
    line.push_str(text);
    pad(line, text.chars().count(), width);
}

/// A number left-aligned in `width` characters (see [`left`]).
fn left_number(line: &mut String, n: impl std::fmt::Display, width: usize) {
    let at = line.len();
    let _ = write!(line, "{n}");
    let written = line.len() - at;
    pad(line, written, width);
}

/// Other state dirs with runs near `state_dir` (a relative one): in the
/// directories above this one, and in those just below it.
fn nearby_state_dirs(state_dir: &Path) -> Vec<PathBuf> {
    let (Ok(cwd), true) = (std::env::current_dir(), state_dir.is_relative()) else { return Vec::new() };
    let name = state_dir.to_path_buf();
    let mut places: Vec<PathBuf> = cwd.ancestors().skip(1).take(4).map(Path::to_path_buf).collect();
    if let Ok(entries) = std::fs::read_dir(&cwd) {
        let mut below: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_dir()).collect();
        below.sort();
        places.extend(below);
    }
    places.into_iter().map(|p| p.join(&name)).filter(|d| d.join("sandflow.db").is_file()).take(5).collect()
}

fn print_json(value: &impl serde::Serialize) {
    println!("{}", render::json_pretty(value));
}

pub(crate) async fn execute(command: RunsCommand, global: &GlobalArgs, out: &Output) -> Result<u8, CliError> {
    if let RunsCommand::Follow { id } = command {
        return super::worker::follow_cmd(id, global, out).await;
    }
    let store = global.open_store().await?;
    match command {
        RunsCommand::List { limit, namespace } => {
            let query = sandflow::store::RunQuery { namespaces: namespace.map(|ns| vec![ns]), ..sandflow::store::RunQuery::newest(limit) };
            let runs = store.runs(&query).await.map_err(store_error)?;
            if runs.is_empty() && !out.json {
                say!("no runs yet in {}", store.location());
                // The default state dir is the current directory's: say
                // where else runs were recorded, nearby.
                if global.store.is_none() {
                    for dir in nearby_state_dirs(&global.state_dir) {
                        say!("  runs were recorded in {}: `sandflow --state-dir {} runs list` (or set SANDFLOW_STATE_DIR)", dir.display(), dir.display());
                    }
                }
            } else {
                print_runs(&runs, out);
            }
        }
        RunsCommand::Show { id, timeline } => {
            let id = super::run_id(store.as_ref(), &id).await?;
            let detail = if out.json { RunDetail::Full } else { RunDetail::Steps };
            let run = store.run(&id, detail).await.map_err(store_error)?;
            print_run(run, timeline, out);
        }
        RunsCommand::Follow { .. } => unreachable!("handled above"),
        RunsCommand::Logs { id, step, follow: true } => {
            let id = super::run_id(store.as_ref(), &id).await?;
            let store = &store;
            follow_logs(&id, step.as_deref(), out, || async {
                let run = store.run(&id, RunDetail::Steps).await.map_err(store_error)?;
                Ok((run, store.logs(&id, step.as_deref()).await.map_err(store_error)?))
            })
            .await?;
        }
        RunsCommand::Logs { id, step, follow: false } => {
            let id = super::run_id(store.as_ref(), &id).await?;
            let lines = store.logs(&id, step.as_deref()).await.map_err(store_error)?;
            // Nothing to print: say why, from the steps that ran.
            let ran = match lines.is_empty() {
                true => store.run(&id, RunDetail::Steps).await.map_err(store_error)?.steps.into_iter().map(|s| s.step).collect(),
                false => Vec::new(),
            };
            print_logs(&id, step.as_deref(), &lines, &ran, out)?;
        }
    }
    Ok(exit::OK)
}

/// `runs list`'s table (`--json`: the records).
pub(crate) fn print_runs(runs: &[sandflow::store::RunSummary], out: &Output) {
    if out.json {
        print_json(&runs);
        return;
    }
    // The namespace, when runs of several (or of one but `default`) are listed.
    let namespaced = runs.iter().any(|r| r.namespace != sandflow::store::DEFAULT_NAMESPACE);
    let namespace = |ns: &str| if namespaced { format!("{ns:<16} ") } else { String::new() };
    println!("{:<36} {}{:<20} {:<10} {:>5} {:>6} {:>7}  STARTED", "RUN", namespace("NAMESPACE"), "WORKFLOW", "STATUS", "OK", "FAILED", "SKIPPED");
    for r in runs {
        println!(
            "{:<36} {}{:<20} {:<10} {:>5} {:>6} {:>7}  {}",
            r.id,
            namespace(&r.namespace),
            r.workflow,
            r.status,
            r.succeeded_steps,
            r.failed_steps,
            r.skipped_steps,
            r.started_at
        );
    }
}

/// `runs show`'s page (`--json`: the record).
pub(crate) fn print_run(run: sandflow::store::RunRecord, timeline: bool, out: &Output) {
    if out.json {
        print_json(&run);
    } else {
        println!("run {} ({}, attempt {})", run.id, run.status, run.attempt);
        println!("  workflow: {} ({})", run.workflow, run.file);
        println!("  started:  {}", run.started_at);
        if let Some(t) = &run.trigger {
            let tick = t.scheduled_time.as_ref().map(|at| format!(", tick {at}")).unwrap_or_default();
            println!("  trigger:  {} {}{tick}", t.kind, t.source.as_deref().unwrap_or("?"));
        }
        if let Some(f) = &run.finished_at {
            println!("  finished: {f}");
        }
        println!("  input:    {}", run.input);
        if let Some(o) = &run.output {
            println!("  output:   {o}");
        }
        if let Some(e) = &run.error {
            println!("  error:    {}", render::printable(e));
        }
        println!("  steps:");
        // One write for all the steps, not one per line: a run of
        // 100,000 steps is shown in a fraction of the time.
        let mut lines = std::io::BufWriter::new(std::io::stdout().lock());
        let mut line = String::new();
        for s in &run.steps {
            // The line of `"    {:<20} {:<10} attempts {:<2} {:>10}  fuel {:<12}"`
            // (a `forEach` step: `items    {:<2}`, and its attempts
            // at the end when retries made more).
            line.clear();
            line.push_str("    ");
            left(&mut line, &s.step, 20);
            line.push(' ');
            left(&mut line, &s.state, 10);
            match s.items {
                Some(items) => {
                    line.push_str(" items    ");
                    left_number(&mut line, items, 2);
                }
                None => {
                    line.push_str(" attempts ");
                    left_number(&mut line, s.attempts, 2);
                }
            }
            line.push(' ');
            // A running step: how long its attempt has run so far.
            let running = s.started_at.as_deref().filter(|_| s.state == "running");
            let took = match running.and_then(|t| humantime::parse_rfc3339(t).ok()) {
                Some(since) => std::time::SystemTime::now().duration_since(since).unwrap_or_default(),
                None => std::time::Duration::from_secs_f64(s.duration_ms / 1000.0),
            };
            let took = render::duration(took);
            pad(&mut line, took.chars().count(), 10);
            line.push_str(&took);
            line.push_str("  fuel ");
            left_number(&mut line, s.fuel_used, 12);
            if s.items.is_some_and(|items| s.attempts > items) {
                let _ = write!(line, "  {} attempts", s.attempts);
            }
            let _ = match (&s.error_kind, &s.error_message, &s.reason) {
                (Some(k), Some(m), _) => write!(line, "  {k}: {m}"),
                (_, _, Some(r)) => write!(line, "  {r}"),
                _ => Ok(()),
            };
            if let Some(since) = running {
                let _ = write!(line, "  since {since}");
                if let Some(worker) = &s.worker {
                    let _ = write!(line, " on {worker}");
                }
            }
            // A waiting step: what it waits for, until when, and how a
            // person ends the wait.
            if s.state == "waiting"
                && let Some(kind) = s.wait_kind.as_deref().and_then(sandflow::exec::core::WaitKind::from_name)
            {
                let _ = write!(line, "  {}", super::display::waits_for(&run.id, &s.step, kind, s.wake_at.as_deref()));
            }
            let _ = writeln!(lines, "{}", render::printable(line.trim_end()));
        }
        let _ = lines.flush();
        drop(lines);
        if timeline {
            print!("\n{}", super::timeline::render(&run));
        }
        // The process ends next: freeing 100,000 step records one by
        // one would take a tenth of the command's time.
        std::mem::forget(run);
    }
}

/// How often `runs logs --follow` asks for new lines.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// `runs logs --follow`: prints each step's lines as they are written
/// (`--json`: a JSON line each), until the run ends, or `step` does.
/// `fetch` reads the run's record, then its lines: read in that order, the
/// lines of a step the record says ended are its whole log.
pub(crate) async fn follow_logs<F, Fut>(id: &str, step: Option<&str>, out: &Output, mut fetch: F) -> Result<(), CliError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(sandflow::store::RunRecord, Vec<(String, sandflow::sandbox::LogLine)>), CliError>>,
{
    // Lines printed so far, per step.
    let mut printed: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    loop {
        let (run, lines) = fetch().await?;
        let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        let mut new = Vec::new();
        for (s, line) in &lines {
            let k = seen.entry(s.as_str()).or_default();
            if *k >= printed.get(s.as_str()).copied().unwrap_or(0) {
                new.push((s, line));
            }
            *k += 1;
        }
        // Fewer lines than printed: the step started again (a retry's log
        // starts anew), and its lines are all new.
        for (s, n) in &seen {
            if *n < printed.get(*s).copied().unwrap_or(0) {
                if !out.json && !out.quiet {
                    say!("(step `{s}` of run {id} started again: its log anew)");
                }
                new.extend(lines.iter().filter(|(x, _)| x == s).map(|(x, l)| (x, l)));
            }
        }
        for (s, line) in new {
            if out.json {
                println!("{}", render::printable(&log_row(s, line).to_string()));
            } else {
                print_log_line(s, line);
            }
        }
        let _ = std::io::stdout().flush();
        printed = seen.into_iter().map(|(s, n)| (s.to_string(), n)).collect();
        let ended = run.status != RunState::Running.as_str()
            || step.is_some_and(|step| {
                run.steps.iter().any(|s| s.step == step && !matches!(s.state.as_str(), "pending" | "running" | "waiting"))
            });
        if ended {
            return Ok(());
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}

/// `runs logs`'s lines (`--json`: as records); when there are none, why,
/// from `ran`, the steps of the run that ran.
pub(crate) fn print_logs(id: &str, step: Option<&str>, lines: &[(String, sandflow::sandbox::LogLine)], ran: &[String], out: &Output) -> Result<(), CliError> {
    if out.json {
        let rows: Vec<serde_json::Value> = lines.iter().map(|(s, l)| log_row(s, l)).collect();
        print_json(&rows);
    } else if lines.is_empty() {
        // Nothing to print: say why, on stderr.
        match step {
            Some(step) if !ran.iter().any(|s| s == step) => {
                let hint = sandflow::workflow::diagnostic::nearest(step, ran.iter().map(String::as_str))
                    .map(|n| format!(" (did you mean `{n}`?)"))
                    .unwrap_or_default();
                return Err(CliError::invalid(format!("run {id} has no step `{step}` that ran{hint}")));
            }
            Some(step) if !out.quiet => say!("step `{step}` of run {id} wrote no log lines"),
            None if !out.quiet => say!("no step of run {id} wrote log lines"),
            _ => {}
        }
    } else {
        for (s, l) in lines {
            print_log_line(s, l);
        }
    }
    Ok(())
}

/// A log line of step `step` as `runs logs --json` and `GET
/// /api/runs/ID/logs` give it (what the remote client reads back).
pub(crate) fn log_row(step: &str, line: &sandflow::sandbox::LogLine) -> serde_json::Value {
    serde_json::json!({ "step": step, "source": line.source, "text": line.text })
}

/// A log line of step `step` as `runs logs` prints it: `STEP SOURCE | TEXT`.
fn print_log_line(step: &str, line: &sandflow::sandbox::LogLine) {
    println!("{step} {:>6} | {}", line.source.as_str(), render::printable(&line.text));
}

#[derive(Debug, clap::Args)]
#[command(after_help = "The process running the run sees the request within a second, cancels its running steps \
    (state `cancelled`) and exits 130; the run can be resumed later.")]
pub(crate) struct CancelArgs {
    /// The run to cancel.
    pub(crate) id: String,
    /// How long to wait for the run to end.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = sandflow::units::parse_duration)]
    pub(crate) wait: std::time::Duration,
}

/// `sandflow cancel ID`: asks through the store, then waits for the run's end.
pub(crate) async fn cancel(args: CancelArgs, global: &GlobalArgs, out: &Output) -> Result<u8, CliError> {
    let store = global.open_store().await?;
    let id = super::run_id(store.as_ref(), &args.id).await?;
    let args = CancelArgs { id, ..args };
    let status = store.request_cancel(&args.id).await.map_err(store_error)?;
    if status != RunState::Running.as_str() {
        return Err(CliError::invalid(format!("run {} is not running: it is {status}", args.id)));
    }
    let status = || async { Ok(store.run(&args.id, RunDetail::Run).await.map_err(store_error)?.status) };
    wait_cancelled(&args.id, args.wait, out, status).await
}

/// After a cancel was asked: waits up to `wait` for run `id` to end,
/// reading its status with `status`.
pub(crate) async fn wait_cancelled<F, Fut>(id: &str, wait: std::time::Duration, out: &Output, status: F) -> Result<u8, CliError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<String, CliError>>,
{
    let args = CancelArgs { id: id.to_string(), wait };
    let deadline = tokio::time::Instant::now() + args.wait;
    loop {
        let status = status().await?;
        if status != RunState::Running.as_str() {
            if !out.quiet {
                say!("run {} is {status}", args.id);
            }
            return Ok(exit::OK);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError {
                code: exit::FAILED,
                message: format!(
                    "run {} was asked to cancel but is still running after {}: its `finally` steps may be running (cancel it again to interrupt them); if the process that ran it was killed, the run stays `running` until `sandflow resume {}` takes it over",
                    args.id,
                    sandflow::units::format_duration(args.wait),
                    args.id
                ),
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// `sandflow retry ID [--from STEP]`: a new attempt of a finished run.
pub(crate) async fn retry(args: RetryArgs, global: &GlobalArgs, out: &Output) -> Result<u8, CliError> {
    let store = global.open_store().await?;
    let record = store.run(&super::run_id(store.as_ref(), &args.id).await?, RunDetail::Run).await.map_err(store_error)?;
    if record.status == RunState::Running.as_str() {
        return Err(CliError::invalid(format!(
            "run {} is running: `sandflow cancel {}` it first, or `sandflow resume {}` it if the process that ran it died",
            record.id, record.id, record.id
        )));
    }
    let from = args.from;
    let args = ResumeArgs {
        id: record.id,
        secrets_file: args.secrets_file,
        concurrency: args.concurrency,
        components: args.components,
        vars: args.vars,
        work: args.work,
    };
    rerun(args, Rerun::Retry { from }, global, out).await
}

/// `sandflow resume ID`.
pub(crate) async fn resume(args: ResumeArgs, global: &GlobalArgs, out: &Output) -> Result<u8, CliError> {
    rerun(args, Rerun::Resume, global, out).await
}

/// A new attempt of a recorded run: `resume` or `retry`.
async fn rerun(args: ResumeArgs, rerun: Rerun, global: &GlobalArgs, out: &Output) -> Result<u8, CliError> {
    let store = global.open_store().await?;
    let record = store.run(&super::run_id(store.as_ref(), &args.id).await?, RunDetail::Full).await.map_err(store_error)?;
    if record.status == RunState::Completed.as_str() && rerun == Rerun::Resume {
        if out.json {
            // `--json` stderr is JSON lines only.
            super::render::event("run_already_completed", serde_json::json!({ "run_id": record.id }));
        } else if !out.quiet {
            say!("run {} already completed; its output:", record.id);
        }
        let output: serde_json::Value = record.output.and_then(|o| serde_json::from_str(o.get()).ok()).unwrap_or_default();
        println!("{}", render::json_pretty(&output));
        return Ok(exit::OK);
    }
    // A run that workers ran goes on on workers.
    match global.store_url()? {
        sandflow::store::StoreUrl::Postgres(_) => {
            let pg = super::worker::pg_store(global, "resume").await?;
            if pg.is_queued(&record.id).await.map_err(store_error)? {
                return super::worker::rerun_queued(&pg, &record, args, rerun, global, out).await;
            }
        }
        sandflow::store::StoreUrl::Sqlite(_) => args.work.local()?,
    }
    let (cancel, skip_finally, watcher) = super::call::run_interrupts();
    let sandbox = Arc::new(new_sandbox(&global.state_dir)?);
    let variables = args.vars.read()?;
    let prepared = workflow_cmd::load(Path::new(&record.file), &args.components, &sandbox, out).await?;
    let secrets = super::args::read_secrets(args.secrets_file.as_deref())?;
    // A run limited by `--target` goes on limited the same way.
    let prepared = Arc::new(run::entered(enter(&prepared, &record.targets, &record.input, &secrets), out, true)?);
    let redactor = Redactor::new(&secrets);
    let recorder = Recorder { store, runner: sandbox };
    let settings = Settings {
        concurrency: args.concurrency.map(|n| n as usize),
        secrets,
        skip_finally,
        targets: record.targets.clone(),
        rerun,
        variables,
        otlp: global.otlp()?,
        trigger: Default::default(),
    };
    let report = recorder.resume(prepared, &record, settings, super::display::sink(out), cancel).await.map_err(|e| match e {
        ResumeError::Store(e) => store_error(e),
        e @ (ResumeError::Changed { .. } | ResumeError::From(_)) => CliError::invalid(e.to_string()),
    })?;
    watcher.abort();
    Ok(run::finish(&report, &redactor, out))
}
