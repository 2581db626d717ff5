//! `sandflow run FILE`: run a workflow; its output as JSON on stdout,
//! progress on stderr.

use super::args::{InputArgs, VarArgs, WorkArgs, read_secrets};
use super::display::sink;
use super::render::{print_end, say};
use super::worker::{binding, load_for_submit, pg_store, work_and_follow, worker_config};
use super::{CliError, GlobalArgs, Output, exit, new_sandbox, new_sandbox_for, store_error, workflow_cmd};
use sandflow::exec::{Redactor, RunReport, enter};
use sandflow::runs::{Recorder, Settings, submit};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    sandflow run workflows/text-pipeline.yaml --input '{\"text\": \"hello world\"}'\n  \
    sandflow run workflows/etl.yaml --input-file workflows/data/users.json\n  \
    sandflow run workflows/report.yaml --set user.id=42 --set verbose=true")]
pub(crate) struct RunArgs {
    /// The workflow file.
    #[arg(value_name = "FILE")]
    pub(crate) file: PathBuf,
    #[command(flatten)]
    pub(crate) input: InputArgs,
    /// Most steps running at once [default: the workflow's `concurrency`,
    /// else the CPU count; on workers, else only the workers' slots bound it].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) concurrency: Option<u64>,
    /// Secrets as `NAME=value` lines (`#` comments allowed); also read from
    /// `SANDFLOW_SECRET_<NAME>` environment variables.
    #[arg(long, value_name = "FILE")]
    pub(crate) secrets_file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) work: WorkArgs,
    /// Run only these steps and every step they depend on (Argo's
    /// `target`); the others are left out. `finally` steps still run.
    #[arg(long, value_name = "STEP[,STEP...]", value_delimiter = ',')]
    pub(crate) target: Vec<String>,
    #[command(flatten)]
    pub(crate) components: workflow_cmd::ComponentsArg,
    #[command(flatten)]
    pub(crate) vars: VarArgs,
    /// On workers (a PostgreSQL store, or --server): the namespace (tenant)
    /// the run belongs to [default: `default`, or the token's only one].
    #[arg(long, value_name = "NS")]
    pub(crate) namespace: Option<String>,
    /// On workers: the run's priority within its namespace (higher first).
    #[arg(long, value_name = "N", default_value_t = 0, allow_negative_numbers = true)]
    pub(crate) priority: i32,
}

pub(crate) async fn execute(args: RunArgs, global: &super::GlobalArgs, out: &Output) -> Result<u8, CliError> {
    let url = global.store_url()?;
    match &url {
        sandflow::store::StoreUrl::Postgres(_) => {
            return run_queued(&args, global, out).await;
        }
        sandflow::store::StoreUrl::Sqlite(_) => args.work.local()?,
    }
    // A store that exists opens (SQLite reads its schema) while the
    // workflow is read and its sandbox made; a problem with the workflow is
    // still the one reported first. A new one is made only for a run that
    // starts: a mistyped file name leaves no state dir behind.
    let early = match &url {
        sandflow::store::StoreUrl::Sqlite(path) if path.exists() => {
            let url = url.clone();
            Some(tokio::spawn(async move { sandflow::store::open(&url).await }))
        }
        _ => None,
    };
    let (cancel, skip_finally, watcher) = super::call::run_interrupts();
    let input = args.input.read()?;
    let secrets = read_secrets(args.secrets_file.as_deref())?;
    let variables = args.vars.read()?;
    let parsed = workflow_cmd::parse(&args.file, &args.components).await?;
    // The pool holds what this run can use at once, not the 256 slots a
    // server needs: fewer slots to set up and tear down.
    let concurrency = args.concurrency.map(|n| n as usize);
    let steps = parsed.workflow().and_then(|wf| sandflow::exec::steps_at_once(wf, concurrency));
    let sandbox = Arc::new(new_sandbox_for(&global.state_dir, sandflow::sandbox::SandboxConfig::pool_for(steps))?);
    let prepared = workflow_cmd::prepare(parsed, &sandbox, out).await?;
    let prepared = Arc::new(entered(enter(&prepared, &args.target, &input, &secrets), out, true)?);
    let redactor = Redactor::new(&secrets);
    let store = match early {
        Some(opening) => opening.await.map_err(|e| CliError { code: exit::FAILED, message: format!("opening the run store failed: {e}") })?,
        None => sandflow::store::open(&url).await,
    };
    let recorder = Recorder { store: store.map_err(store_error)?, runner: sandbox };
    let settings = Settings {
        concurrency,
        secrets,
        skip_finally,
        targets: args.target.clone(),
        rerun: Default::default(),
        variables,
        otlp: global.otlp()?,
        trigger: Default::default(),
    };
    let report = recorder.start(prepared, &args.file, input, settings, sink(out), cancel).await.map_err(store_error)?;
    watcher.abort();
    Ok(finish(&report, &redactor, out))
}

/// A run's entry as the CLI reports it: a refusal is exit 2, and so are
/// missing secrets when this process is to run steps (`need_secrets`),
/// with each secret's place.
pub(crate) fn entered(entry: Result<sandflow::exec::Entry, sandflow::exec::Refusal>, out: &Output, need_secrets: bool) -> Result<sandflow::exec::Prepared, CliError> {
    let entry = entry.map_err(|r| CliError::invalid(r.to_string()))?;
    match entry.missing_secrets {
        Some(d) if need_secrets => Err(workflow_cmd::report(out, d)),
        _ => Ok(entry.prepared),
    }
}

/// Prints a finished run's output (masked) and returns the exit code.
/// Shared by `run` and `resume`.
pub(crate) fn finish(report: &RunReport, redactor: &Redactor, out: &Output) -> u8 {
    if let Some(message) = &report.unrecorded {
        // The display has shown the run's end; this says it is not on disk.
        super::render::error_line(out, message);
    }
    print_end(report.state, report.output.as_ref(), redactor)
}

/// `sandflow run FILE` with a PostgreSQL store: the run is queued, this
/// process works on it too unless `--no-work`, and follows it to its end.
async fn run_queued(args: &RunArgs, global: &GlobalArgs, out: &Output) -> Result<u8, CliError> {
    let (file, input, concurrency, secrets_file) = (&args.file, &args.input, args.concurrency, args.secrets_file.as_deref());
    let (detach, work) = (args.work.detach, !args.work.no_work);
    let store = pg_store(global, "`sandflow run --detach`").await?;
    let input = input.read()?;
    let sandbox = Arc::new(new_sandbox(&global.state_dir)?);
    let (prepared, files) = load_for_submit(file, &args.components, out).await?;
    let mut config = worker_config(concurrency, None, Duration::from_secs(30), secrets_file, Vec::new())?;
    // This process's secrets are the run's, whatever its namespace.
    if let Some(ns) = args.namespace.as_deref().filter(|ns| *ns != sandflow::store::DEFAULT_NAMESPACE) {
        config.namespace_secrets.insert(ns.to_string(), config.secrets.clone());
    }
    // Workers limit the run to its targets as they load it: check them
    // here. This process runs steps unless `--no-work`: then it needs the
    // secrets, as a local run does.
    let targeted = entered(enter(&prepared, &args.target, &input, &config.secrets), out, work)?;
    let redactor = Redactor::new(&config.secrets);
    let otlp = global.otlp()?;
    let binding = binding(concurrency, &args.components, &args.vars, args.namespace.as_deref(), args.priority)?;
    let id = submit(&store, &prepared, file, &files, input, &args.target, &binding).await.map_err(store_error)?;
    if detach {
        if otlp.is_some() {
            say!("warning: --otlp: no trace of run {id} is exported: a distributed run's trace comes from the process that follows it (`sandflow run` without --detach)");
        }
        println!("{id}");
        return Ok(exit::OK);
    }
    // The follower sees every event of the run, from every worker: it builds the trace.
    let tracer = otlp.map(|e| Arc::new(sandflow::trace::TraceSink::new(Arc::new(targeted), e)));
    work_and_follow(&store, sandbox, work.then_some(config), &id, out, &redactor, tracer).await
}
