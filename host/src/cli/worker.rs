//! Running across machines with a PostgreSQL run store: `sandflow submit`,
//! `sandflow worker`, `sandflow runs follow`, and `sandflow run` when
//! `--store` is a PostgreSQL URL.

use super::args::{InputArgs, VarArgs, read_secrets};
use super::call::cancel_on_signal;
use super::display::sink;
use super::render::{print_end, say};
use super::{CliError, GlobalArgs, Output, exit, new_sandbox, store_error, workflow_cmd};
use sandflow::exec::{EventSink, Redactor, enter};
use sandflow::runs::{Followed, follow, submit};
use sandflow::sandbox::{CancellationToken, Sandbox};
use sandflow::store::queue::Binding;
use sandflow::store::{PgStore, StoreUrl};
use sandflow::worker::{Worker, WorkerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, clap::Args)]
#[command(after_help = "Needs a PostgreSQL run store (--store or SANDFLOW_STORE), or a `sandflow serve` to submit through \
    (--server and --token, or SANDFLOW_SERVER and SANDFLOW_TOKEN). The workflow is checked here (components validated, \
    not compiled). Prints the run id and returns; workers run it. Follow it with `sandflow runs follow ID`.\n\nExamples:\n  \
    sandflow --store postgres://postgres@127.0.0.1/sandflow submit workflows/etl.yaml --input-file workflows/data/users.json\n  \
    sandflow --server https://runs.example.com --token $T submit workflows/etl.yaml --input-file workflows/data/users.json --namespace team-a")]
pub(crate) struct SubmitArgs {
    /// The workflow file.
    #[arg(value_name = "FILE")]
    pub(crate) file: PathBuf,
    #[command(flatten)]
    pub(crate) input: InputArgs,
    /// Most steps of the run running at once across all workers (and a
    /// `forEach` step's items, by default) [default: the workflow's
    /// `concurrency`, else only the workers' slots bound it].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) concurrency: Option<u64>,
    /// Run only these steps and every step they depend on (Argo's
    /// `target`); the others are left out. `finally` steps still run.
    #[arg(long, value_name = "STEP[,STEP...]", value_delimiter = ',')]
    pub(crate) target: Vec<String>,
    #[command(flatten)]
    pub(crate) components: workflow_cmd::ComponentsArg,
    #[command(flatten)]
    pub(crate) vars: VarArgs,
    /// The namespace (tenant) the run belongs to [default: `default`, or
    /// with --server the token's only one].
    #[arg(long, value_name = "NS")]
    pub(crate) namespace: Option<String>,
    /// Its priority within its namespace: workers start and take the steps
    /// of higher ones first.
    #[arg(long, value_name = "N", default_value_t = 0, allow_negative_numbers = true)]
    pub(crate) priority: i32,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Claims ready steps of runs in a PostgreSQL run store and runs them in its own sandbox, \
    until SIGINT or SIGTERM (it then finishes the steps it holds; a second signal exits at once). \
    Start as many as you like, on any machine that reaches the server.\n\n\
    Secrets come from this worker, never from the store: runs of the `default` namespace get its SANDFLOW_SECRET_<NAME> variables \
    and --secrets-file, runs of another namespace NS those of NS.env in its --secrets-dir, and no other's; \
    `dirs` grants and /builtin/load_file read this machine's paths.\n\nExample:\n  \
    sandflow --store postgres://postgres@127.0.0.1/sandflow worker --concurrency 4")]
pub(crate) struct WorkerArgs {
    /// Most steps running at once [default: 16, or the CPU count if more].
    /// Steps share the CPUs (they yield at every epoch tick), so more slots
    /// than CPUs hide the store's round trips; each may use its memory limit.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    concurrency: Option<u64>,
    /// The worker's name in the store [default: HOST-PID-RANDOM].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// How long a claimed step stays this worker's without a heartbeat;
    /// after it, another worker runs the step again.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = sandflow::units::parse_duration)]
    lease: Duration,
    /// Secrets as `NAME=value` lines; also read from `SANDFLOW_SECRET_<NAME>`.
    /// Runs of the `default` namespace get these.
    #[arg(long, value_name = "FILE")]
    secrets_file: Option<PathBuf>,
    /// Each namespace's secrets: `DIR/NAMESPACE.env` (`NAME=value` lines).
    /// A run gets its namespace's secrets and no other's (`default.env` adds
    /// to the `default` namespace's).
    #[arg(long, value_name = "DIR")]
    secrets_dir: Option<PathBuf>,
    /// A label this worker offers (repeatable): steps with `runs_on: [LABEL, …]`
    /// run only on workers that have every label they name.
    #[arg(long = "label", value_name = "LABEL")]
    labels: Vec<String>,
    /// Most connections to PostgreSQL this worker holds at once, besides
    /// the one it listens on: its commits, claims and steps' state and
    /// blobs wait for a free one rather than fail. The server's
    /// `max_connections` (100 by default) bounds the sum over all workers.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    connections: u64,
    /// How long compiling a component may take. Components are compiled
    /// once per worker (then cached), each in a process of its own, so
    /// that one built to be slow or huge to compile fails its run instead
    /// of holding the worker. A large Python component takes 10-45 s.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = sandflow::units::parse_duration)]
    compile_time: Duration,
    /// Serve this worker's metrics (Prometheus text) at
    /// `http://ADDR/metrics`: its slots, the attempts it runs, those that
    /// ended by outcome and failure kind, and how long they took.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// How much memory (address space) compiling a component may map.
    #[arg(long, value_name = "SIZE", default_value = "4GiB", value_parser = sandflow::units::parse_size)]
    compile_memory: u64,
    /// Also fire the store's schedules (`sandflow schedule`), as `serve`
    /// does: any number of schedulers may run, each tick starts one run.
    #[arg(long)]
    scheduler: bool,
    /// Runs of at most N steps, or chains of any length (each step needs
    /// the one before), none of which waits, runs `forEach` items or a
    /// nested workflow or needs a label this worker lacks, run whole on
    /// the worker that starts them: in its memory, recorded in a few
    /// transactions instead of one per step, under a hold another worker
    /// takes over if this one is lost. A worker that stops hands them
    /// over once their running steps end. 0: every run goes step by step.
    #[arg(long, value_name = "N", default_value_t = WorkerConfig::WHOLE_RUNS)]
    whole_runs: usize,
}

/// The PostgreSQL store `--store` names, or why this command needs one.
pub(crate) async fn pg_store(global: &GlobalArgs, what: &str) -> Result<Arc<PgStore>, CliError> {
    pg_store_with(global, what, &Default::default()).await
}

/// [`pg_store`], holding at most `connections`.
async fn pg_store_with(global: &GlobalArgs, what: &str, connections: &sandflow::store::Connections) -> Result<Arc<PgStore>, CliError> {
    match global.store_url()? {
        StoreUrl::Postgres(url) => Ok(Arc::new(PgStore::connect_with(&url, connections).await.map_err(store_error)?)),
        StoreUrl::Sqlite(path) => Err(CliError::invalid(format!(
            "{what} needs a PostgreSQL run store shared by the workers, and the store is {}: pass --store postgres://USER@HOST/DATABASE (or set SANDFLOW_STORE)",
            path.display()
        ))),
    }
}

pub(crate) fn worker_config(
    concurrency: Option<u64>,
    name: Option<String>,
    lease: Duration,
    secrets_file: Option<&Path>,
    labels: Vec<String>,
) -> Result<WorkerConfig, CliError> {
    if lease < Duration::from_millis(300) {
        return Err(CliError::invalid("--lease must be at least 300ms"));
    }
    Ok(WorkerConfig {
        name: name.unwrap_or_else(WorkerConfig::default_name),
        concurrency: concurrency.map_or_else(WorkerConfig::default_concurrency, |n| n as usize),
        lease,
        secrets: read_secrets(secrets_file)?,
        namespace_secrets: Default::default(),
        labels,
        care_every: (lease / 3).min(Duration::from_secs(1)),
        whole_runs: WorkerConfig::WHOLE_RUNS,
        only_run: None,
    })
}

/// Loads a workflow as `run` does (its components file too), keeping every
/// file it read for the store. Components are checked, not compiled
/// ([`sandflow::exec::ComponentCheck`]): the workers compile them.
pub(crate) async fn load_for_submit(
    file: &Path,
    components: &workflow_cmd::ComponentsArg,
    out: &Output,
) -> Result<(sandflow::exec::Prepared, sandflow::store::queue::RunFiles), CliError> {
    let (path, components) = (file.to_path_buf(), components.file.clone());
    tokio::task::spawn_blocking(move || sandflow::runs::load_for_submit(&path, components.as_deref()))
        .await
        .map_err(|e| CliError { code: exit::FAILED, message: format!("loading components failed: {e}") })?
        .map_err(|d| workflow_cmd::report(out, d))
}

/// What a submitted run is bound to, from the flags `submit` and `run`
/// share: recorded with the run for every worker.
pub(crate) fn binding(concurrency: Option<u64>, components: &workflow_cmd::ComponentsArg, vars: &VarArgs, namespace: Option<&str>, priority: i32) -> Result<Binding, CliError> {
    let namespace = namespace_arg(namespace)?;
    Ok(Binding { concurrency: concurrency.map(|n| n as usize), components: components.file.clone(), vars: vars.read()?, namespace, priority })
}

/// `--namespace NS`, checked (`default` when not given).
pub(crate) fn namespace_arg(namespace: Option<&str>) -> Result<String, CliError> {
    match namespace {
        Some(ns) => sandflow::store::tokens::namespace_name(ns).map_err(|e| CliError::invalid(format!("--namespace: {e}"))),
        None => Ok(sandflow::store::DEFAULT_NAMESPACE.to_string()),
    }
}

/// `sandflow submit FILE`.
pub(crate) async fn submit_cmd(args: SubmitArgs, global: &GlobalArgs, out: &Output) -> Result<u8, CliError> {
    let store = pg_store(global, "`sandflow submit`").await?;
    let input = args.input.read()?;
    let (prepared, files) = load_for_submit(&args.file, &args.components, out).await?;
    // Workers limit the run to its targets and look up its secrets; here,
    // the targets and the input are checked.
    enter(&prepared, &args.target, &input, &Default::default()).map_err(|r| CliError::invalid(r.to_string()))?;
    let binding = binding(args.concurrency, &args.components, &args.vars, args.namespace.as_deref(), args.priority)?;
    let id = submit(&store, &prepared, &args.file, &files, input, &args.target, &binding).await.map_err(store_error)?;
    if global.otlp()?.is_some() {
        say!("warning: --otlp: no trace of run {id} is exported: a distributed run's trace comes from the process that follows it (`sandflow run` without --detach)");
    }
    println!("{id}");
    Ok(exit::OK)
}

/// `sandflow worker`.
pub(crate) async fn worker_cmd(args: WorkerArgs, global: &GlobalArgs, out: &Output) -> Result<u8, CliError> {
    let mut config = worker_config(args.concurrency, args.name, args.lease, None, args.labels)?;
    config.whole_runs = args.whole_runs;
    let mut namespaces = super::args::namespace_secrets(args.secrets_file.as_deref(), args.secrets_dir.as_deref())?;
    config.secrets = namespaces.remove(sandflow::store::DEFAULT_NAMESPACE).unwrap_or_default();
    config.namespace_secrets = namespaces;
    let connections = sandflow::store::Connections { max: args.connections as usize, name: format!("sandflow worker {}", config.name) };
    let store = pg_store_with(global, "`sandflow worker`", &connections).await?;
    let sandbox = Arc::new(super::new_untrusting_sandbox(&global.state_dir, args.compile_time, args.compile_memory)?);
    let worker = Worker::new(store.clone(), sandbox, config);
    let metrics = match args.metrics {
        Some(addr) => Some(serve_metrics(worker.clone(), addr, out).await?),
        None => None,
    };
    if !out.quiet {
        say!("worker {} is waiting for steps in {}", worker.name(), sandflow::store::RunStore::location(store.as_ref()));
    }
    let stop = CancellationToken::new();
    let signals = tokio::spawn(cancel_on_signal(stop.clone()));
    // What it did, a line every 10 s while it works (`-v`: a line per step).
    let summary = (!out.quiet).then(|| tokio::spawn(summarize(worker.clone(), Duration::from_secs(10))));
    // Schedules, fired from here too (`--scheduler`).
    let scheduler = args.scheduler.then(|| tokio::spawn(sandflow::store::schedules::scheduler(store.clone(), stop.clone())));
    let graceful = worker.run(stop.clone());
    // A second signal stops at once: leases of held steps then expire.
    tokio::select! {
        _ = graceful => {}
        _ = async { stop.cancelled().await; tokio::signal::ctrl_c().await.ok() } => {
            say!("worker {} stopped without finishing its steps; other workers take them over when their leases expire", worker.name());
        }
    }
    signals.abort();
    if let Some(summary) = summary {
        summary.abort();
    }
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    if let Some(scheduler) = scheduler {
        scheduler.abort();
    }
    Ok(exit::OK)
}

/// Serves `worker`'s metrics at `http://ADDR/metrics` (and `/healthz`).
async fn serve_metrics(worker: Arc<Worker>, addr: std::net::SocketAddr, out: &Output) -> Result<tokio::task::JoinHandle<()>, CliError> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| CliError::invalid(format!("--metrics {addr}: {e}")))?;
    let bound = listener.local_addr().map_err(|e| CliError { code: exit::FAILED, message: e.to_string() })?;
    if !out.quiet {
        // Tests read the address from this line (with `--metrics 127.0.0.1:0`).
        say!("worker {} serves its metrics on http://{bound}/metrics", worker.name());
    }
    let router = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let worker = worker.clone();
                async move { ([(axum::http::header::CONTENT_TYPE, sandflow::metrics::CONTENT_TYPE)], sandflow::metrics::render(&worker.metrics())) }
            }),
        )
        .route("/healthz", get(|| async { axum::Json(serde_json::json!({ "ok": true })) }));
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            say!("worker metrics stopped: {e}");
        }
    }))
}

/// `sandflow workers`.
pub(crate) async fn workers_cmd(global: &GlobalArgs, out: &Output) -> Result<u8, CliError> {
    let store = global.open_store().await?;
    let Some(workers) = store.workers().await.map_err(store_error)? else {
        return Err(CliError::invalid(format!(
            "{} is a SQLite store, which runs steps in the process that runs the run: workers need a PostgreSQL run store (--store postgres://…)",
            store.location()
        )));
    };
    print_workers(&workers, store.location(), out);
    Ok(exit::OK)
}

/// `sandflow workers`'s table (`--json`: the records) of the workers of
/// the store at `location`.
pub(crate) fn print_workers(workers: &[sandflow::store::WorkerRecord], location: &str, out: &Output) {
    if out.json {
        println!("{}", serde_json::to_string_pretty(&workers).expect("records serialize"));
    } else if workers.is_empty() {
        say!("no worker has worked on {location} yet (start one with `sandflow worker`)");
    } else {
        println!("{:<32} {:<7} {:>5} {:>7} {:>4}  {:<24} LABELS", "WORKER", "STATE", "SLOTS", "RUNNING", "RUNS", "LAST SEEN");
        for w in workers {
            println!("{:<32} {:<7} {:>5} {:>7} {:>4}  {:<24} {}", w.name, w.state(), w.slots, w.running, w.runs, w.seen_at, w.labels.join(","));
        }
    }
}

/// Says every `every` how many steps `worker` ran since the last line,
/// when it ran any.
async fn summarize(worker: Arc<Worker>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let mut last = (0, 0);
    loop {
        tick.tick().await;
        let now = worker.counts();
        if now != last {
            let (ok, failed) = (now.0 - last.0, now.1 - last.1);
            say!(
                "worker {}: {} attempt(s) ended in the last {} ({ok} succeeded, {failed} failed); {} in all",
                worker.name(),
                ok + failed,
                sandflow::units::format_duration(every),
                now.0 + now.1
            );
            last = now;
        }
    }
}

/// Follows run `id` to its end, working on its steps (and no other run's)
/// meanwhile when `worker` is given; the output is printed.
pub(crate) async fn work_and_follow(
    store: &Arc<PgStore>,
    sandbox: Arc<Sandbox>,
    worker: Option<WorkerConfig>,
    id: &str,
    out: &Output,
    redactor: &Redactor,
    tracer: Option<Arc<sandflow::trace::TraceSink>>,
) -> Result<u8, CliError> {
    let stop_work = CancellationToken::new();
    let worker = worker.map(|config| {
        let config = WorkerConfig { only_run: Some(id.to_string()), ..config };
        let worker = Worker::new(store.clone(), sandbox, config);
        let stop = stop_work.clone();
        tokio::spawn(async move { worker.run(stop).await })
    });
    let display = match &tracer {
        Some(t) => Arc::new(sandflow::runs::Tee(vec![sink(out), t.clone()])) as Arc<dyn EventSink>,
        None => sink(out),
    };
    let followed = follow_to_end(&RunSource::Store(store.clone()), id, display, out, OnInterrupt::Cancel).await;
    if let Some(t) = tracer {
        // The trace is sent once the run has ended; never an error.
        let _ = sandflow::exec::EventSink::barrier(t.as_ref()).await;
    }
    stop_work.cancel();
    if let Some(worker) = worker {
        let _ = worker.await;
    }
    let followed = followed?;
    Ok(print_end(followed.state, followed.output.as_ref(), redactor))
}

/// `sandflow resume ID` or `retry ID` of a run that workers ran. A run
/// still running (its process killed) is followed, and worked on here too:
/// steps its killed predecessor held run again once their leases expire.
/// A run that ended is queued again as a new attempt, for workers (and
/// this process, unless `--no-work`) to run; it keeps what it was bound
/// to at submit, but for the `--concurrency` and `--var` given here.
pub(crate) async fn rerun_queued(
    store: &Arc<PgStore>,
    record: &sandflow::store::RunRecord,
    args: super::runs::ResumeArgs,
    rerun: sandflow::runs::Rerun,
    global: &GlobalArgs,
    out: &Output,
) -> Result<u8, CliError> {
    let id = &record.id;
    let detached = |what: String| {
        if !out.quiet {
            say!("{what}; follow it with `sandflow runs follow {id}`");
        }
        println!("{id}");
        Ok(exit::OK)
    };
    if record.status == sandflow::exec::RunState::Running.as_str() {
        if args.work.detach {
            return detached(format!("run {id} is running on workers"));
        }
    } else {
        if args.components.file.is_some() {
            return Err(CliError::invalid(format!(
                "--components: run {id} ran on workers with the components it was submitted with, and a new attempt keeps them: submit a new run to use others"
            )));
        }
        let vars = args.vars.read()?;
        let attempt = match sandflow::runs::queue_again(store, record, &rerun, args.concurrency.map(|n| n as usize), Some(&vars)).await {
            Ok(attempt) => attempt,
            Err(sandflow::runs::QueueAgainError::Running(_)) => return Err(CliError::invalid(format!("run {id} is running: `sandflow cancel {id}` it first"))),
            Err(sandflow::runs::QueueAgainError::Invalid(why)) => return Err(CliError::invalid(why)),
            Err(sandflow::runs::QueueAgainError::Store(e)) => return Err(store_error(e)),
        };
        if args.work.detach {
            return detached(format!("run {id} is queued for workers (attempt {attempt})"));
        }
    }
    let config = worker_config(args.concurrency, None, Duration::from_secs(30), args.secrets_file.as_deref(), Vec::new())?;
    let redactor = Redactor::new(&config.secrets);
    let sandbox = Arc::new(new_sandbox(&global.state_dir)?);
    if global.otlp()?.is_some() {
        say!("warning: --otlp: the trace of a run that workers resume or retry is not exported");
    }
    work_and_follow(store, sandbox, (!args.work.no_work).then_some(config), id, out, &redactor, None).await
}

/// What SIGINT/SIGTERM does to a process that follows a run.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnInterrupt {
    /// The process started the run (`run`, `retry`, `resume`): the first
    /// signal asks (through the store) to cancel it and goes on following,
    /// a second asks again (it interrupts the run's `finally` steps), a
    /// third stops following, as for a run in one process.
    Cancel,
    /// It only watches (`runs follow`, as `kubectl logs -f`): the first
    /// signal stops following; the run goes on.
    Detach,
}

/// Where a followed run's events come from: the PostgreSQL store, or a
/// `sandflow serve` (`--server`).
#[derive(Clone)]
pub(crate) enum RunSource {
    Store(Arc<PgStore>),
    Server(Arc<super::remote::Remote>),
}

impl RunSource {
    /// Asks the run to cancel.
    async fn request_cancel(&self, id: &str) -> Result<(), String> {
        match self {
            RunSource::Store(store) => sandflow::store::RunStore::request_cancel(store.as_ref(), id).await.map(drop).map_err(|e| e.to_string()),
            RunSource::Server(server) => server.cancel(id).await.map(drop).map_err(|e| e.message),
        }
    }

    /// Shows the run's events until it ends (`None`: `stop` fired first).
    async fn follow(&self, id: &str, display: Arc<dyn EventSink>, stop: CancellationToken) -> Result<Option<Followed>, CliError> {
        match self {
            RunSource::Store(store) => follow(store.clone(), id, display, stop).await.map_err(store_error),
            RunSource::Server(server) => server.follow(id, display, stop).await,
        }
    }
}

/// Follows a run until it ends, or a signal says otherwise (`on_interrupt`).
pub(crate) async fn follow_to_end(source: &RunSource, id: &str, display: Arc<dyn EventSink>, out: &Output, on_interrupt: OnInterrupt) -> Result<Followed, CliError> {
    let interrupted = CancellationToken::new();
    let signals = tokio::spawn(cancel_on_signal(interrupted.clone()));
    let give_up = CancellationToken::new();
    let asker = if on_interrupt == OnInterrupt::Detach {
        let (interrupted, give_up) = (interrupted.clone(), give_up.clone());
        tokio::spawn(async move {
            interrupted.cancelled().await;
            give_up.cancel();
        })
    } else {
        let (source, id, interrupted, give_up) = (source.clone(), id.to_string(), interrupted.clone(), give_up.clone());
        let quiet = out.quiet;
        tokio::spawn(async move {
            interrupted.cancelled().await;
            if !quiet {
                say!("cancelling run {id} (interrupt again to interrupt its `finally` steps too)");
            }
            if let Err(e) = source.request_cancel(&id).await {
                say!("error: {e}");
            }
            let _ = tokio::signal::ctrl_c().await;
            if !quiet {
                say!("interrupting the `finally` steps of run {id} (interrupt again to stop following it)");
            }
            if let Err(e) = source.request_cancel(&id).await {
                say!("error: {e}");
            }
            let _ = tokio::signal::ctrl_c().await;
            give_up.cancel();
        })
    };
    let result = source.follow(id, display, give_up).await;
    signals.abort();
    asker.abort();
    match result? {
        Some(followed) => Ok(followed),
        None => Err(CliError {
            code: exit::CANCELLED,
            message: format!("stopped following run {id}; it goes on (`sandflow runs follow {id}` to watch it again, `sandflow cancel {id}` to stop it)"),
        }),
    }
}

/// `sandflow runs follow ID`.
pub(crate) async fn follow_cmd(id: String, global: &GlobalArgs, out: &Output) -> Result<u8, CliError> {
    let store = pg_store(global, "`sandflow runs follow`").await?;
    let id = super::run_id(store.as_ref(), &id).await?;
    if !store.is_queued(&id).await.map_err(store_error)? {
        let status = sandflow::store::RunStore::run(store.as_ref(), &id, sandflow::store::RunDetail::Run).await.map_err(store_error)?.status;
        return Err(CliError::invalid(format!(
            "run {id} was run by a `sandflow run` process, not by workers, so it has no event stream to follow (it is {status}); see `sandflow runs show {id}`"
        )));
    }
    let followed = follow_to_end(&RunSource::Store(store), &id, sink(out), out, OnInterrupt::Detach).await?;
    Ok(print_end(followed.state, followed.output.as_ref(), &Redactor::default()))
}
