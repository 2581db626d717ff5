//! The `sandflow` command line. Raw flags (clap) become the library's
//! types here and nowhere else; each subcommand has its own file.
//! [`run_with_args`] runs the whole CLI in-process, for tests.

pub(crate) mod args;
mod api;
mod cache;
mod call;
mod dev;
mod display;
mod graph;
mod guard;
mod hooks;
mod new;
mod parse;
pub(crate) mod inspect;
mod remote;
mod render;
pub(crate) mod run;
mod runs;
mod schedule;
mod signal;
mod serve;
mod test_cmd;
mod timeline;
mod token;
mod validate;
mod worker;
mod workflow_cmd;

use render::say;

/// Locks `m`, also when another thread panicked while holding it: what the
/// command line guards (a live view's rows, a cache of plans) stays valid
/// between statements, so a poisoned lock is still safe to use.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit codes (SPEC §4).
pub mod exit {
    /// The run (or call) completed.
    pub const OK: u8 = 0;
    /// The run (or call) failed.
    pub const FAILED: u8 = 1;
    /// Invalid workflow, input, component or usage.
    pub const INVALID: u8 = 2;
    /// Cancelled by SIGINT or SIGTERM.
    pub const CANCELLED: u8 = 130;
}

#[derive(Debug, Parser)]
#[command(
    name = "sandflow",
    version,
    about = "Run YAML workflows whose steps are sandboxed WebAssembly components",
    long_about = "Run YAML workflows whose steps are sandboxed WebAssembly components.\n\n\
        Every step runs in a fresh wasmtime instance with a fuel budget, a deadline and a \
        memory cap, and sees nothing of the host it was not granted.\n\n\
        Exit codes: 0 completed, 1 failed, 2 invalid workflow, input or usage, 130 cancelled."
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Flags every subcommand takes.
#[derive(Debug, clap::Args)]
pub(crate) struct GlobalArgs {
    /// Where compiled components are cached, and runs are recorded unless --store says otherwise.
    #[arg(long, global = true, value_name = "DIR", default_value = ".sandflow", env = "SANDFLOW_STATE_DIR")]
    state_dir: PathBuf,
    /// The run store: `sqlite:PATH`, or `postgres://USER@HOST[:PORT]/DATABASE` to share runs
    /// between machines [default: sqlite:DIR/sandflow.db under --state-dir].
    #[arg(long, global = true, value_name = "URL", env = "SANDFLOW_STORE", hide_env_values = true)]
    store: Option<String>,
    /// Events as JSON lines on stderr instead of the human display.
    #[arg(long, global = true)]
    json: bool,
    /// More detail on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// A `sandflow serve` to talk to instead of a run store: `run`,
    /// `submit`, `runs`, `cancel`, `signal`, `retry`, `resume`, `schedule`
    /// and `workers` go
    /// through its API (no database credentials here; the server's workers
    /// run the steps); other commands work on this machine as usual.
    #[arg(long, global = true, value_name = "URL", env = "SANDFLOW_SERVER", value_parser = server_url)]
    server: Option<url::Url>,
    /// The token `--server` takes (`Authorization: Bearer`), or that every
    /// request to `sandflow serve` must carry.
    #[arg(long, global = true, value_name = "TOKEN", env = "SANDFLOW_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Export a trace of each run (`run`, `resume`, `retry`) to this
    /// OpenTelemetry collector's OTLP/HTTP endpoint, e.g. http://127.0.0.1:4318
    /// [default: OTEL_EXPORTER_OTLP_ENDPOINT, if set].
    #[arg(long, global = true, value_name = "URL")]
    otlp: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a workflow: its output as JSON on stdout, progress on stderr.
    ///
    /// Ctrl-C (SIGINT) or SIGTERM cancels the run; its `finally` steps still
    /// run, within `finally_timeout`, and a signal while they run (a second
    /// one, after a cancel) interrupts them.
    Run(run::RunArgs),
    /// Check workflows without running them: every static check, components loaded.
    Validate(validate::ValidateArgs),
    /// Print a workflow's step graph (Mermaid, Graphviz DOT, or an SVG picture).
    Graph(graph::GraphArgs),
    /// Run the `test.cases` of workflows; ends with a line `N passed, N failed`.
    Test(test_cmd::TestArgs),
    /// Run history from the run store.
    #[command(subcommand)]
    Runs(runs::RunsCommand),
    /// Continue an interrupted or failed run; steps that succeeded are not run again.
    Resume(runs::ResumeArgs),
    /// Run a finished run again as a new attempt: what failed, or `--from STEP` and everything downstream.
    Retry(runs::RetryArgs),
    /// The memoized step results (`cache:`) in the run store: list or clear them.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// Cancel a running run, from any process that shares its run store.
    Cancel(runs::CancelArgs),
    /// Send a signal to a step that waits for one (`/builtin/signal`), or
    /// approve or reject one that waits for approval (`/builtin/approval`).
    Signal(signal::SignalArgs),
    /// Queue a run for workers (in a PostgreSQL run store, or through
    /// `--server`); print its id and return.
    Submit(worker::SubmitArgs),
    /// Run steps of queued runs from a PostgreSQL run store, until interrupted.
    Worker(worker::WorkerArgs),
    /// The workers of a PostgreSQL run store: alive or not, labels, slots,
    /// the steps each holds now.
    Workers,
    /// Run one component once and print its output: the plugin author's inner loop.
    Call(call::CallArgs),
    /// Watch a step project: rebuild it on every change, then run its
    /// workflow's test cases (or call it with an input).
    Dev(dev::DevArgs),
    /// Work with component files.
    #[command(subcommand)]
    Component(ComponentCommand),
    /// Start a new step component project from a template.
    #[command(subcommand)]
    New(new::NewCommand),
    /// The tokens `sandflow serve` takes, each scoped to namespaces and a
    /// role (PostgreSQL store): create, list, revoke.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Each namespace's limits (runs in flight, bytes kept) and what it
    /// uses (PostgreSQL store): set, list.
    #[command(subcommand)]
    Namespace(token::NamespaceCommand),
    /// Runs that start by themselves: register a workflow file's
    /// `schedules:`, list, pause, resume, remove (PostgreSQL: `serve` and
    /// `worker --scheduler` fire them; SQLite: `sandflow scheduler`).
    #[command(subcommand)]
    Schedule(schedule::ScheduleCommand),
    /// Fire the schedules of a SQLite store and run what they start, in
    /// this process, until interrupted (with PostgreSQL, `serve` and
    /// `worker --scheduler` fire them).
    Scheduler(schedule::SchedulerArgs),
    /// Serve the run store over HTTP: the web view (runs, each run's graph,
    /// steps and logs, live) and the API that `--server` clients submit and
    /// follow runs through (http://127.0.0.1:7878 by default).
    Serve(serve::ServeArgs),
    /// (Internal) compile a component read from stdin, the compiled code on
    /// stdout: the child process a worker compiles components of others in,
    /// under its limits; with --into, an artifact file for the cache: the
    /// background compile of a component first compiled quickly.
    #[command(name = "compile-component", hide = true)]
    CompileComponent {
        #[arg(long)]
        memory_init_cow: bool,
        #[arg(long)]
        winch: bool,
        #[arg(long)]
        into: Option<std::path::PathBuf>,
        #[arg(long, requires = "into")]
        replaces: Option<std::path::PathBuf>,
    },
    /// Print a JSON Schema of workflow files, for editors (also committed as
    /// workflow.schema.json): put `# yaml-language-server: $schema=PATH` at
    /// the top of a workflow file.
    Schema,
}

#[derive(Debug, Subcommand)]
enum ComponentCommand {
    /// Show a component's WIT world, imports, exports, size, SHA-256 and `describe` metadata.
    Inspect(inspect::InspectArgs),
}

/// A failure of a command: what to print and the exit code.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    /// Invalid workflow, input, component or usage: exit 2.
    pub fn invalid(message: impl Into<String>) -> Self {
        CliError { code: exit::INVALID, message: message.into() }
    }
}

/// Output settings shared by every command.
pub(crate) struct Output {
    pub json: bool,
    pub quiet: bool,
    pub verbose: u8,
}

/// Runs the CLI on the process's arguments and exits with its code.
pub fn main() -> ExitCode {
    quiet_on_closed_stdout();
    ExitCode::from(run_with_args(std::env::args_os()))
}

/// `sandflow runs list | head -1`: when the reader of stdout goes away,
/// exit at once and quietly (status 141, as a process killed by SIGPIPE),
/// as `cat` and `grep` do, instead of panicking on the failed print. The
/// signal itself stays ignored: the server and the store's connections
/// must see a closed socket as an error, not die of it.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied()).unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info)
    }));
}

/// Runs the CLI on `args` (the first is the program name) and returns the
/// exit code. Prints to stdout and stderr.
pub fn run_with_args<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString>,
{
    let cli = match parse::parse(args.into_iter().map(Into::into).collect()) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { exit::INVALID } else { exit::OK };
        }
    };
    if let Command::CompileComponent { memory_init_cow, winch, into, replaces } = cli.command {
        // No runtime, no store: only the compiler.
        return sandflow::sandbox::compile_child(&sandflow::sandbox::ChildCompile { memory_init_cow, winch, into, replaces });
    }
    init_tracing(&cli.global);
    // A component that takes more than a second to compile is told, not
    // silent (a Python step's first compile takes tens of seconds).
    if !cli.global.quiet && !cli.global.json {
        sandflow::sandbox::on_slow_compile(std::time::Duration::from_secs(1), |line| render::say!("{line}"));
    }
    let out = Output { json: cli.global.json, quiet: cli.global.quiet, verbose: cli.global.verbose };
    // `call` runs one instance, on this thread: one worker is enough for
    // what runs beside it (the Ctrl-C watch, which must run while this
    // thread compiles), where a worker per core would be started and
    // joined for nothing.
    let workers = match cli.command {
        Command::Call(_) => 1,
        _ => sandflow::exec::cpu_count(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            say!("error: cannot start the async runtime: {e}");
            return exit::FAILED;
        }
    };
    let result = runtime.block_on(async {
        let command = match &cli.global.server {
            Some(server) => match remote::execute(server, cli.command, &cli.global, &out).await {
                Ok(result) => return result,
                // Not a command of the server's: it works here.
                Err(command) => command,
            },
            None => cli.command,
        };
        match command {
            Command::Run(args) => run::execute(args, &cli.global, &out).await,
            Command::Validate(args) => validate::execute(args, &cli.global.state_dir, &out).await,
            Command::Graph(args) => graph::execute(args, &cli.global, &out).await,
            Command::Test(args) => test_cmd::execute(args, &cli.global.state_dir, &out).await,
            Command::Runs(command) => runs::execute(command, &cli.global, &out).await,
            Command::Resume(args) => runs::resume(args, &cli.global, &out).await,
            Command::Retry(args) => runs::retry(args, &cli.global, &out).await,
            Command::Cache(command) => cache::execute(command, &cli.global, &out).await,
            Command::Cancel(args) => runs::cancel(args, &cli.global, &out).await,
            Command::Signal(args) => signal::execute(args, &cli.global, &out).await,
            Command::Submit(args) => worker::submit_cmd(args, &cli.global, &out).await,
            Command::Worker(args) => worker::worker_cmd(args, &cli.global, &out).await,
            Command::Call(args) => call::execute(args, &cli.global.state_dir, &out).await,
            Command::Workers => worker::workers_cmd(&cli.global, &out).await,
            Command::Dev(args) => dev::execute(args, &cli.global, &out).await,
            Command::Component(ComponentCommand::Inspect(args)) => {
                inspect::execute(args, &cli.global.state_dir, &out).await
            }
            Command::Serve(args) => serve::execute(args, &cli.global, &out).await,
            Command::Token(command) => token::execute(command, &cli.global, &out).await,
            Command::Namespace(command) => token::namespaces(command, &cli.global, &out).await,
            Command::Schedule(command) => schedule::schedules(command, &cli.global, &out).await,
            Command::Scheduler(args) => schedule::scheduler(args, &cli.global, &out).await,
            Command::New(command) => new::execute(command, &out),
            Command::CompileComponent { .. } => unreachable!("handled before the runtime starts"),
            Command::Schema => {
                let schema = sandflow::workflow::schema::json_schema();
                println!("{}", serde_json::to_string_pretty(&schema).expect("a Value always serializes"));
                Ok(exit::OK)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            render::error_line(&out, &e.message);
            e.code
        }
    }
}

fn init_tracing(global: &GlobalArgs) {
    let level = match (global.quiet, global.verbose) {
        (true, _) => tracing::Level::ERROR,
        (false, 0) => tracing::Level::WARN,
        (false, 1) => tracing::Level::INFO,
        (false, 2) => tracing::Level::DEBUG,
        (false, _) => tracing::Level::TRACE,
    };
    // wasmtime's WASI crates warn about what guests do (a malformed HTTP
    // request, say): a guest must not be able to fill the host's stderr,
    // so those show only with -vv. What a step did is in its own log.
    let guest_driven = if global.verbose >= 2 { level } else { tracing::Level::ERROR };
    let filter = tracing_subscriber::filter::Targets::new()
        .with_default(level)
        .with_target("wasmtime_wasi_http", guest_driven)
        .with_target("wasmtime_wasi", guest_driven);
    use tracing_subscriber::layer::SubscriberExt;
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(|| render::PrintableStderr)
        .with_target(false)
        .without_time()
        .finish()
        .with(filter);
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// `--server`: an http(s) URL with a host.
fn server_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|e| format!("not a URL: {e} (e.g. http://127.0.0.1:7878)"))?;
    match (url.scheme(), url.host_str()) {
        ("http" | "https", Some(_)) => Ok(url),
        _ => Err("must be an http:// or https:// address with a host, e.g. http://127.0.0.1:7878".into()),
    }
}

impl GlobalArgs {
    /// Opens the run store `--store` names (every problem with it is exit 2,
    /// but a query that fails later is exit 1).
    pub(crate) async fn open_store(&self) -> Result<std::sync::Arc<dyn sandflow::store::RunStore>, CliError> {
        sandflow::store::open(&self.store_url()?).await.map_err(store_error)
    }

    /// Where run traces go: `--otlp` (a bad URL is a usage error), else
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (one sandflow cannot use is a warning:
    /// the variable may be meant for other programs), else nowhere.
    pub(crate) fn otlp(&self) -> Result<Option<sandflow::trace::Endpoint>, CliError> {
        if let Some(url) = &self.otlp {
            return sandflow::trace::Endpoint::parse(url).map(Some).map_err(CliError::invalid);
        }
        match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            Ok(url) if !url.is_empty() => match sandflow::trace::Endpoint::parse(&url) {
                Ok(e) => Ok(Some(e)),
                Err(why) => {
                    tracing::warn!("OTEL_EXPORTER_OTLP_ENDPOINT is ignored: {}", why.replacen("--otlp", "", 1).trim_start());
                    Ok(None)
                }
            },
            _ => Ok(None),
        }
    }

    /// The store `--store` names (the SQLite file under the state dir by default).
    pub(crate) fn store_url(&self) -> Result<sandflow::store::StoreUrl, CliError> {
        match &self.store {
            Some(text) => sandflow::store::StoreUrl::parse(text).map_err(|e| CliError::invalid(e.to_string())),
            None => Ok(sandflow::store::StoreUrl::default_for(&self.state_dir)),
        }
    }
}

/// A store error as a CLI failure: a query that failed is exit 1; a store
/// that cannot be used, or an unknown run, is exit 2.
/// The run id `given` means: the id, or a unique start of one.
pub(crate) async fn run_id(store: &dyn sandflow::store::RunStore, given: &str) -> Result<String, CliError> {
    sandflow::store::resolve_run(store, given).await.map_err(store_error)
}

pub(crate) fn store_error(e: sandflow::store::StoreError) -> CliError {
    match e {
        sandflow::store::StoreError::Backend(_) => CliError { code: exit::FAILED, message: e.to_string() },
        other => CliError::invalid(other.to_string()),
    }
}

/// The path of this program, for the processes it starts of itself.
pub(crate) fn this_program() -> Result<std::path::PathBuf, CliError> {
    std::env::current_exe().map_err(|e| CliError { code: exit::FAILED, message: format!("cannot find this program: {e}") })
}

/// The process-wide sandbox, with the artifact cache under the state dir.
pub(crate) fn new_sandbox(state_dir: &std::path::Path) -> Result<sandflow::sandbox::Sandbox, CliError> {
    new_sandbox_for(state_dir, sandflow::sandbox::SandboxConfig::default().max_instances)
}

/// The sandbox of a worker, which runs components of others: each new
/// component is compiled by a process of this program's own, within
/// `time` and `memory` ([`sandflow::sandbox::CompileLimits`]).
pub(crate) fn new_untrusting_sandbox(state_dir: &std::path::Path, time: std::time::Duration, memory: u64) -> Result<sandflow::sandbox::Sandbox, CliError> {
    let limits = sandflow::sandbox::CompileLimits { program: this_program()?, args: vec!["compile-component".into()], time, memory };
    open_sandbox(state_dir, sandflow::sandbox::SandboxConfig { compile_limits: Some(limits), ..Default::default() })
}

/// A sandbox whose instance pool holds `instances` slots: commands that run
/// one component at a time (`call`, `component inspect`) ask for few, since
/// setting up each slot (its async stack's guard pages above all) is most
/// of a short process's start-up otherwise.
pub(crate) fn new_sandbox_for(state_dir: &std::path::Path, instances: u32) -> Result<sandflow::sandbox::Sandbox, CliError> {
    open_sandbox(state_dir, sandflow::sandbox::SandboxConfig { max_instances: instances, ..Default::default() })
}

/// A sandbox for the plugin author's loop (`call`, `component inspect`,
/// `validate`, `test --quick-compile`, so `dev`): commands that record no
/// run. A large component not compiled before is compiled quickly
/// with Winch for this process, and optimized in the background by a
/// process of this program's own for the next ones
/// ([`sandflow::sandbox::QuickCompile`]).
pub(crate) fn new_quick_sandbox(state_dir: &std::path::Path, instances: u32) -> Result<sandflow::sandbox::Sandbox, CliError> {
    let quick = sandflow::sandbox::QuickCompile { program: this_program()?, args: vec!["compile-component".into()], min_size: sandflow::sandbox::QuickCompile::MIN_SIZE };
    open_sandbox(state_dir, sandflow::sandbox::SandboxConfig { max_instances: instances, quick_compile: Some(quick), ..Default::default() })
}

/// `config`'s sandbox, its compiled components cached under the state dir.
fn open_sandbox(state_dir: &std::path::Path, config: sandflow::sandbox::SandboxConfig) -> Result<sandflow::sandbox::Sandbox, CliError> {
    let config = sandflow::sandbox::SandboxConfig { cache_dir: Some(state_dir.join("cache").join("components")), ..config };
    sandflow::sandbox::Sandbox::new(config).map_err(|e| CliError { code: exit::FAILED, message: e.to_string() })
}
