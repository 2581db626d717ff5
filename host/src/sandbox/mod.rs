//! Everything wasmtime: running one untrusted step component, once, safely.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use sandflow::sandbox::{Sandbox, SandboxConfig, StepRequest};
//! let sandbox = Sandbox::new(SandboxConfig::default())?;
//! let upper = sandbox.load_file("components/dist/text.wasm".as_ref())?;
//! let request = StepRequest::new(serde_json::json!({"op": "upper", "text": "hi"}));
//! let outcome = sandbox.run(&upper, request, &Default::default()).await;
//! assert_eq!(outcome.result?, serde_json::json!({"text": "HI"}));
//! # Ok(()) }
//! ```
//!
//! One [`Sandbox`] per process holds the engine, the linker and the compiled
//! components. Every [`Sandbox::run`] gets a fresh store, denied everything
//! by default:
//!
//! - **fuel**: at most [`Limits::fuel`] units (about one per wasm instruction),
//!   then kind `fuel`;
//! - **deadline**: [`Limits::timeout`] of wall-clock time for instantiation
//!   and the call together, including time blocked in host calls such as a
//!   WASI sleep, then kind `timeout`;
//! - **memory**: linear memory may not grow past [`Limits::memory`]; a trap
//!   after a refused growth is kind `memory`;
//! - **output**: at most [`Limits::max_output`] bytes of valid JSON, else kind
//!   `output`;
//! - **log**: stdout, stderr and `log` lines share the `log` quota
//!   ([`Quota::log`]); the rest is dropped and counted, never an error;
//! - **quotas**: blobs, state and host handles are counted per attempt
//!   ([`Limits::quota`]) and, through a [`RunMeter`], per run; past one the
//!   call traps and the step fails with kind `quota`;
//! - **WASI**: clocks and random; no environment variables, no preopened
//!   directories, empty stdin, unless [`Grants`] says otherwise. wasi:sockets
//!   is linked (CPython and other runtimes import it) but every socket,
//!   connection and name lookup is denied;
//! - **HTTP**: a component that imports wasi:http runs only with
//!   [`Grants::http`], and then reaches only the hosts it allows (see
//!   [`HttpGrant`]), at most [`Quota::http_requests`] times.
//!
//! A component that imports anything else is refused at load time, naming
//! the import.

mod bindings;
mod cache;
mod component;
mod compile;
mod engine;
mod host;
mod http;
mod log;
mod quota;

pub use self::component::{DecodedWorld, LoadError, LoadErrorKind, STEP_WORLD, StepComponent, check_component, check_header as check_component_header, decode_world, http_import};
pub use self::compile::{ChildCompile, CompileLimits, compile_child};
pub use self::engine::{AllocatorChoice, AllocatorKind, Compiler, EPOCH_TICK, MAX_WASM_STACK};
pub use self::http::{AllowedHost, DEFAULT_HTTP_TIMEOUT, DEFAULT_MAX_RESPONSE, HttpGrant};
pub use self::host::{HostError, HostServices, MAX_BLOB, MAX_STATE_KEY, MAX_STATE_VALUE, MemoryServices, sha256_hex};
pub use self::quota::{Quota, QuotaExceeded, QuotaKind, QuotaScope, RunMeter};
pub use self::log::{LogLine, LogSource, StepLog};
pub use tokio_util::sync::CancellationToken;

use self::bindings::Metadata;
use self::cache::ArtifactCache;
use self::component::{check_header, origin_of, read_file, ungranted_imports};
pub(crate) use self::component::checked_imports;
use self::engine::EpochTicker;
use self::host::{MemoryCap, StepState};
use self::quota::AttemptMeter;
pub(crate) use self::quota::LogUsage;
use self::log::{CapturedStream, LogSink, Stream};
use crate::failure::{FailureKind, StepFailure};
use crate::lock;
use crate::units::format_size;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OnceCell, Semaphore};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

/// Per-attempt limits. Every one is enforced by the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Fuel budget: roughly the number of wasm instructions. Default 10 billion.
    pub fuel: u64,
    /// Wall-clock deadline for one attempt. Default 30 s.
    pub timeout: Duration,
    /// Most bytes of linear memory the instance may have. Default 128 MiB.
    pub memory: u64,
    /// Most bytes of output JSON. Default 4 MiB.
    pub max_output: usize,
    /// What the attempt may make the host hold: blobs, state, log, handles.
    /// Default [`Quota::ATTEMPT`].
    pub quota: Quota,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 10_000_000_000,
            timeout: Duration::from_secs(30),
            memory: 128 << 20,
            max_output: 4 << 20,
            quota: Quota::ATTEMPT,
        }
    }
}

/// What a step may see of the host. The default grants nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Environment variables the guest sees, with their values.
    pub env: Vec<(String, String)>,
    /// Host directories the guest sees.
    pub dirs: Vec<DirGrant>,
    /// Outbound HTTP: where requests may go. `None`: a component that
    /// imports wasi:http is refused before it is instantiated.
    pub http: Option<Arc<HttpGrant>>,
}

/// One host directory made visible to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGrant {
    /// The directory on the host.
    pub host: PathBuf,
    /// Where the guest sees it, e.g. `/data`.
    pub guest: String,
    /// Whether the guest may create, change and delete files in it.
    pub writable: bool,
}

/// One attempt's input and its sandbox.
#[derive(Clone)]
pub struct StepRequest {
    /// The step's input.
    pub input: Value,
    /// The component's static config (`config.get()` in the guest).
    pub config: Value,
    /// Fuel, memory, deadline and quotas.
    pub limits: Limits,
    /// What the guest may reach of the host.
    pub grants: Grants,
    /// Where the guest's key-value state and blobs go.
    pub services: Arc<dyn HostServices>,
}

impl StepRequest {
    /// `input` with default limits, no grants, no config and in-memory services.
    pub fn new(input: Value) -> Self {
        StepRequest {
            input,
            config: Value::Null,
            limits: Limits::default(),
            grants: Grants::default(),
            services: Arc::new(MemoryServices::new()),
        }
    }
}

/// What one attempt did.
#[derive(Debug, Clone)]
pub struct StepOutcome {
    /// The output, or why there is none.
    pub result: Result<Value, StepFailure>,
    /// Fuel consumed (instantiation and the call).
    pub fuel_used: u64,
    /// Wall-clock time of the attempt.
    pub duration: Duration,
    /// Captured stdout, stderr and `log` lines.
    pub log: StepLog,
}

/// What a component says about itself through `describe`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComponentInfo {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// What it does.
    pub description: String,
    /// The JSON Schema its input meets.
    pub input_schema: Option<Value>,
    /// The JSON Schema its output meets.
    pub output_schema: Option<Value>,
}

/// `describe`'s answer for one component, computed at most once per process.
type DescribeCell = Arc<OnceCell<Result<Option<Arc<Described>>, StepFailure>>>;

struct Described {
    info: ComponentInfo,
    input: Option<jsonschema::Validator>,
    output: Option<jsonschema::Validator>,
}

/// Where a compile that takes more than a second is told, if anywhere
/// (the command line: a line on stderr). See [`on_slow_compile`].
type SlowNote = (std::time::Duration, Box<dyn Fn(&str) + Send + Sync>);
static SLOW_COMPILE: std::sync::OnceLock<SlowNote> = std::sync::OnceLock::new();

/// Tells `note` of every compile that takes longer than `after`, once it
/// has ("compiling x.wasm (18.2 MiB)…") and when it ends. The first call
/// wins.
pub fn on_slow_compile(after: std::time::Duration, note: impl Fn(&str) + Send + Sync + 'static) {
    let _ = SLOW_COMPILE.set((after, Box::new(note)));
}

/// A compile under watch: after a second, it is told ([`on_slow_compile`]).
struct SlowCompile {
    done: Option<std::sync::mpsc::Sender<()>>,
    watcher: Option<std::thread::JoinHandle<bool>>,
    origin: String,
    began: std::time::Instant,
    compiler: Compiler,
}

impl SlowCompile {
    fn watch(origin: &str, size: usize, cached: bool, compiler: Compiler) -> SlowCompile {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let watcher = SLOW_COMPILE.get().map(|(after, note)| {
            let after = *after;
            let once = match (compiler, cached) {
                (Compiler::Winch, _) => " quickly (Winch; optimized code is being made in the background for later runs)",
                (Compiler::Cranelift, true) => ", once: later runs read it compiled from the cache",
                (Compiler::Cranelift, false) => "",
            };
            let line = format!("compiling {origin} ({:.1} MiB){once}…", size as f64 / (1024.0 * 1024.0));
            std::thread::spawn(move || match rx.recv_timeout(after) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    note(&line);
                    true
                }
                _ => false,
            })
        });
        SlowCompile { done: Some(tx), watcher, origin: origin.to_string(), began: std::time::Instant::now(), compiler }
    }

    /// The compile ended (`cached`: its compiled form was kept).
    fn done(mut self, cached: bool) {
        drop(self.done.take());
        let told = self.watcher.take().is_some_and(|w| w.join().unwrap_or(false));
        if let (true, Some((_, note))) = (told, SLOW_COMPILE.get()) {
            let took = self.began.elapsed().as_secs_f64();
            let then = match (self.compiler, cached) {
                (Compiler::Winch, _) => " with Winch; later runs get optimized code",
                (Compiler::Cranelift, true) => "; cached for the next run",
                (Compiler::Cranelift, false) => "",
            };
            note(&format!("compiled {} in {took:.1}s{then}", self.origin));
        }
    }
}

/// How the process-wide sandbox is set up.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Pooling (fast instantiation) or on-demand allocation.
    pub allocator: AllocatorChoice,
    /// Where compiled components are cached; `None` compiles every process.
    pub cache_dir: Option<PathBuf>,
    /// Most instances alive at once (the pool size); further attempts wait.
    pub max_instances: u32,
    /// Compile each new component in a child process under these limits
    /// (workers, which run components of others); `None` compiles in this
    /// process.
    pub compile_limits: Option<CompileLimits>,
    /// Compile large components that are not in the cache yet with Winch
    /// for this process and with Cranelift in the background for the next
    /// ones (needs `cache_dir`); `None` always compiles with Cranelift.
    pub quick_compile: Option<QuickCompile>,
}

/// How a sandbox makes a large component's first run fast (the plugin
/// author's edit loop: `sandflow call`, `sandflow dev`). A component of at
/// least `min_size` bytes with no optimized code in the artifact cache is
/// compiled with Winch, wasmtime's baseline compiler (5-6× faster to
/// compile; its code 10-40% slower), and runs on that code for the rest of
/// this process: one compiler per component per process, so its fuel
/// readings compare within a run. A detached child (`program` with `args`,
/// then [`ChildCompile`]'s options) compiles it with Cranelift into the
/// cache at the lowest CPU priority, and later processes run that code.
/// The quickly compiled code is cached too, for the processes that start
/// before the optimized code is ready.
///
/// Fuel is metered at slightly different points by the two compilers (a
/// call's fuel differs by about 1%), so recorded runs (`sandflow run`,
/// workers) do not use this: their fuel readings compare across runs.
#[derive(Debug, Clone)]
pub struct QuickCompile {
    /// The program that compiles in the background (this sandflow binary).
    pub program: PathBuf,
    /// Its arguments, before the [`ChildCompile`] options.
    pub args: Vec<std::ffi::OsString>,
    /// Components smaller than this compile with Cranelift directly (a
    /// Rust step of 200 KiB compiles in a third of a second).
    pub min_size: usize,
}

impl QuickCompile {
    /// The size from which a component is compiled quickly first: 1 MiB
    /// (an interpreter's component is 10-20 MiB and takes Cranelift 8-16 s).
    pub const MIN_SIZE: usize = 1 << 20;
}

impl SandboxConfig {
    /// The pool size for at most `steps` steps running at once (`None`:
    /// not known, the default 256): twice as many slots, since a slot a
    /// step frees waits in wasmtime's decommit queue before it can be
    /// reused (a full pool makes the next step flush that queue first); at
    /// least 4, at most 256. A smaller pool starts faster: every slot's
    /// fiber stack gets its own guard page when the pool is made (256
    /// slots cost a one-step run about 2 ms).
    pub fn pool_for(steps: Option<usize>) -> u32 {
        let most = SandboxConfig::default().max_instances;
        steps.map_or(most, |n| u32::try_from(n.saturating_mul(2)).unwrap_or(most).clamp(4, most))
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig { allocator: AllocatorChoice::Auto, cache_dir: None, max_instances: 256, compile_limits: None, quick_compile: None }
    }
}

/// The sandbox could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the WebAssembly sandbox: {0}")]
pub struct SandboxError(String);

/// The process-wide runtime for step components.
pub struct Sandbox {
    engine: Engine,
    allocator: AllocatorKind,
    linker: Linker<StepState>,
    cache: Option<ArtifactCache>,
    compile_limits: Option<CompileLimits>,
    quick: Option<QuickSetup>,
    loaded: Mutex<HashMap<String, Arc<StepComponent>>>,
    described: Mutex<HashMap<String, DescribeCell>>,
    slots: Semaphore,
    ticker: EpochTicker,
}

/// A sandbox's [`QuickCompile`]: Winch's engine, its linker and its
/// cache are made the first time a component is compiled quickly (a
/// `call` of a small or cached component does not pay for them).
struct QuickSetup {
    config: QuickCompile,
    dir: PathBuf,
    made: std::sync::OnceLock<Option<Quick>>,
}

/// What a sandbox compiling quickly holds for it: Winch's engine, a
/// linker for it, and the cache of its code.
struct Quick {
    engine: Engine,
    linker: Linker<StepState>,
    cache: ArtifactCache,
}

/// A linker with everything a step may import, for `engine`.
fn step_linker(engine: &Engine) -> wasmtime::Result<Linker<StepState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    bindings::Step::add_to_linker::<StepState, HasSelf<StepState>>(&mut linker, |s| s)?;
    Ok(linker)
}

/// Limits for calling `describe`, which must be cheap.
fn describe_limits() -> Limits {
    Limits { fuel: 1_000_000_000, timeout: Duration::from_secs(5), ..Limits::default() }
}

impl Sandbox {
    /// Builds the engine and linker and starts the epoch ticker.
    pub fn new(config: SandboxConfig) -> Result<Self, SandboxError> {
        let err = |e: wasmtime::Error| SandboxError(format!("{e:#}"));
        let (engine, allocator) = engine::new_engine(config.allocator, config.max_instances).map_err(err)?;
        let linker = step_linker(&engine).map_err(err)?;
        let quick = match (config.quick_compile, &config.cache_dir) {
            (Some(config), Some(dir)) => Some(QuickSetup { config, dir: dir.clone(), made: Default::default() }),
            // Without a cache every process compiles: quickly compiled
            // code would never be replaced by optimized code.
            _ => None,
        };
        let ticker = EpochTicker::start(&engine).map_err(|e| SandboxError(e.to_string()))?;
        Ok(Sandbox {
            cache: config.cache_dir.map(|dir| ArtifactCache::new(dir, &engine, Compiler::Cranelift)),
            compile_limits: config.compile_limits,
            quick,
            engine,
            allocator,
            linker,
            loaded: Mutex::new(HashMap::new()),
            described: Mutex::new(HashMap::new()),
            slots: Semaphore::new(config.max_instances as usize),
            ticker,
        })
    }

    /// The allocator in use.
    pub fn allocator(&self) -> AllocatorKind {
        self.allocator
    }

    /// Loads a component file (compiling it, or reading the artifact cache).
    pub fn load_file(&self, path: &Path) -> Result<Arc<StepComponent>, LoadError> {
        let bytes = read_file(path)?;
        self.load_bytes(&origin_of(path), &bytes)
    }

    /// Loads a component from bytes; `origin` names it in messages. Each
    /// distinct component is compiled at most once per process.
    pub fn load_bytes(&self, origin: &str, bytes: &[u8]) -> Result<Arc<StepComponent>, LoadError> {
        let fail = |kind| LoadError { origin: origin.to_string(), kind };
        check_header(bytes).map_err(fail)?;
        let sha256 = sha256_hex(bytes);
        if let Some(c) = lock(&self.loaded).get(&sha256) {
            return Ok(c.clone());
        }
        let (component, compiler) = self.compile(origin, &sha256, bytes).map_err(fail)?;
        let (engine, linker) = match (compiler, self.made_quick()) {
            (Compiler::Winch, Some(quick)) => (&quick.engine, &quick.linker),
            _ => (&self.engine, &self.linker),
        };
        let ty = component.component_type();
        let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
        let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
        // Not a step at all (another world) comes before a step asking
        // for more than it may have (an `instantiate` failure of the step).
        let ungranted = ungranted_imports(&imports);
        if component.get_export_index(None, "run").is_none() {
            return Err(fail(LoadErrorKind::NotAStep(ungranted)));
        }
        if !ungranted.is_empty() {
            return Err(fail(LoadErrorKind::UngrantedImports(ungranted)));
        }
        let instance_pre = linker
            .instantiate_pre(&component)
            .map_err(|e| fail(LoadErrorKind::WrongWorld(format!("its imports do not match: {e:#}"))))?;
        let pre = bindings::StepPre::new(instance_pre)
            .map_err(|e| fail(LoadErrorKind::WrongWorld(format!("its `run` export has the wrong type: {e:#}"))))?;
        let describe = component.get_export_index(None, "describe");
        let loaded = Arc::new(StepComponent {
            origin: origin.to_string(),
            sha256: sha256.clone(),
            size: bytes.len(),
            compiler,
            pre,
            describe,
            imports,
            exports,
        });
        lock(&self.loaded).insert(sha256, loaded.clone());
        Ok(loaded)
    }

    /// A component this sandbox loaded, by its SHA-256.
    pub fn loaded(&self, sha256: &str) -> Option<Arc<StepComponent>> {
        lock(&self.loaded).get(sha256).cloned()
    }

    /// The component's code, from the cache or compiled, and which
    /// compiler made it: Cranelift's cached code first; then, under
    /// [`QuickCompile`], Winch's (cached, or compiled now while Cranelift's
    /// is made in the background); else Cranelift's, compiled now.
    fn compile(&self, origin: &str, sha256: &str, bytes: &[u8]) -> Result<(Component, Compiler), LoadErrorKind> {
        if let Some(c) = self.cache.as_ref().and_then(|c| c.load(&self.engine, sha256)) {
            return Ok((c, Compiler::Cranelift));
        }
        let large = self.quick.as_ref().filter(|q| bytes.len() >= q.config.min_size);
        if let (Some(QuickSetup { config, .. }), Some(cache)) = (large, &self.cache)
            && let Some(quick) = self.made_quick()
        {
            // Its optimized code is made in the background (unless that is
            // under way already), whether the quick code is cached or not:
            // an earlier background compile may have died.
            let (optimized, quick_code) = (cache.path_for(sha256), quick.cache.path_for(sha256));
            compile::optimize_in_background(&config.program, &config.args, self.engine.get_memory_init_cow(), bytes, &optimized, &quick_code);
            if let Some(c) = quick.cache.load(&quick.engine, sha256) {
                return Ok((c, Compiler::Winch));
            }
            match self.compile_with(origin, bytes, &quick.engine, Compiler::Winch, true) {
                Ok(component) => {
                    quick.cache.store(sha256, &component);
                    return Ok((component, Compiler::Winch));
                }
                // Winch lacks a few proposals Cranelift has (wasmtime's
                // tiers): Cranelift compiles it, or says why it cannot.
                Err(e) => tracing::debug!("{origin}: not compiled quickly ({e}); compiling it with Cranelift"),
            }
        }
        let component = self.compile_with(origin, bytes, &self.engine, Compiler::Cranelift, self.cache.is_some())?;
        if let Some(cache) = &self.cache {
            cache.store(sha256, &component);
        }
        Ok((component, Compiler::Cranelift))
    }

    /// Winch's engine, linker and cache, made at the first call; `None`
    /// without [`QuickCompile`], or if Winch's engine cannot be made (then
    /// everything compiles with Cranelift).
    fn made_quick(&self) -> Option<&Quick> {
        let setup = self.quick.as_ref()?;
        setup
            .made
            .get_or_init(|| {
                let made = engine::quick_engine(self.engine.get_memory_init_cow()).and_then(|engine| {
                    let linker = step_linker(&engine)?;
                    Ok(Quick { cache: ArtifactCache::new(setup.dir.clone(), &engine, Compiler::Winch), linker, engine })
                });
                match made {
                    Ok(quick) => {
                        self.ticker.add(&quick.engine);
                        Some(quick)
                    }
                    Err(e) => {
                        tracing::warn!("cannot set up Winch, compiling everything with Cranelift: {e:#}");
                        None
                    }
                }
            })
            .as_ref()
    }

    /// Compiles `bytes` for `engine` with `compiler`: here, or in a child
    /// process under the sandbox's [`CompileLimits`].
    fn compile_with(&self, origin: &str, bytes: &[u8], engine: &Engine, compiler: Compiler, cached: bool) -> Result<Component, LoadErrorKind> {
        let slow = SlowCompile::watch(origin, bytes.len(), cached, compiler);
        let component = match &self.compile_limits {
            None => Component::new(engine, bytes).map_err(|e| LoadErrorKind::Invalid(format!("{e:#}"))),
            Some(limits) => {
                let options = ChildCompile { memory_init_cow: engine.get_memory_init_cow(), winch: compiler == Compiler::Winch, ..ChildCompile::default() };
                compile::in_child(limits, &options, bytes).and_then(|code| {
                    // SAFETY: the code is what `compile_child` (this program,
                    // the same wasmtime) compiled and handed back through a
                    // pipe only this process reads; wasmtime checks that it
                    // was compiled for an engine compatible with this one.
                    #[allow(unsafe_code)]
                    let component = unsafe { Component::deserialize(engine, &code) };
                    component.map_err(|e| LoadErrorKind::Invalid(format!("the compiled code of the compiling process does not load: {e:#}")))
                })
            }
        };
        slow.done(cached && component.is_ok());
        component
    }

    /// Compiles `bytes` without caching or linking: for benchmarks.
    #[doc(hidden)]
    pub fn compile_uncached(&self, bytes: &[u8]) -> Result<(), String> {
        Component::new(&self.engine, bytes).map(drop).map_err(|e| format!("{e:#}"))
    }

    /// What the component says about itself, if it exports `describe`.
    /// Called once per component per process, in its own fresh instance.
    pub async fn describe(&self, component: &StepComponent) -> Result<Option<ComponentInfo>, StepFailure> {
        Ok(self.described(component).await?.map(|d| d.info.clone()))
    }

    async fn described(&self, component: &StepComponent) -> Result<Option<Arc<Described>>, StepFailure> {
        let Some(export) = component.describe else { return Ok(None) };
        let known = lock(&self.described).get(&component.sha256).cloned();
        let cell = match known {
            Some(cell) => cell,
            None => lock(&self.described).entry(component.sha256.clone()).or_default().clone(),
        };
        cell.get_or_init(|| async {
            let request = StepRequest { limits: describe_limits(), ..StepRequest::new(Value::Null) };
            let sink = LogSink::new(&request.limits.quota, None);
            let meta = match self.in_fresh_store(component, &request, &sink, &CancellationToken::new(), Call::Describe(export)).await.0 {
                Ok(Returned::Describe(meta)) => meta,
                Ok(Returned::Run(_)) => unreachable!("describe returns metadata"),
                Err(f) => return Err(StepFailure { message: format!("describe: {}", f.message), ..f }),
            };
            Ok(Some(Arc::new(Described::from_metadata(meta)?)))
        })
        .await
        .clone()
    }

    /// Runs one attempt of a step: a fresh instance, `run(input)`, checks.
    pub async fn run(&self, component: &StepComponent, request: StepRequest, cancel: &CancellationToken) -> StepOutcome {
        let started = Instant::now();
        let sink = LogSink::new(&request.limits.quota, Some(request.services.clone()));
        let (result, fuel_used) = self.attempt(component, &request, &sink, cancel).await;
        StepOutcome { result, fuel_used, duration: started.elapsed(), log: sink.finish() }
    }

    async fn attempt(
        &self,
        component: &StepComponent,
        request: &StepRequest,
        sink: &LogSink,
        cancel: &CancellationToken,
    ) -> (Result<Value, StepFailure>, u64) {
        let described = match self.described(component).await {
            Ok(d) => d,
            Err(f) => return (Err(f), 0),
        };
        if let Some(schema) = described.as_ref().and_then(|d| d.input.as_ref())
            && let Some(problems) = schema_problems(schema, &request.input, 5)
        {
            let message = format!("input does not match the component's input schema: {problems}");
            return (Err(StepFailure::component(message, false)), 0);
        }
        if request.grants.http.is_none()
            && let Some(import) = component.http_import()
        {
            return (Err(StepFailure::new(FailureKind::Instantiate, http_not_granted(import))), 0);
        }
        let call = Call::Run(request.input.to_string());
        let (raw, fuel_used) = self.in_fresh_store(component, request, sink, cancel, call).await;
        let result = raw.and_then(|r| match r {
            Returned::Run(Ok(json)) => check_output(&json, &request.limits, described.as_deref()),
            Returned::Run(Err(e)) => Err(StepFailure::component(e.message, e.retryable)),
            Returned::Describe(_) => unreachable!("run returns its result"),
        });
        (result, fuel_used)
    }

    /// How long a step holding a slot waits for the pool to return one
    /// being reset (see `in_fresh_store`), and how often it tries.
    const POOL_WAIT: Duration = Duration::from_secs(1);
    const POOL_RETRY: Duration = Duration::from_millis(1);

    /// Instantiates `component` in a new store set up from `request`, runs
    /// `call` on it under the deadline and `cancel`, and classifies failures.
    /// Returns the result and the fuel used.
    async fn in_fresh_store(
        &self,
        component: &StepComponent,
        request: &StepRequest,
        sink: &LogSink,
        cancel: &CancellationToken,
        call: Call,
    ) -> (Result<Returned, StepFailure>, u64) {
        let limits = &request.limits;
        let _slot = tokio::select! {
            biased;
            _ = cancel.cancelled() => return (Err(cancelled()), 0),
            slot = self.slots.acquire() => slot.expect("the semaphore is never closed"),
        };
        let mut waited = Duration::ZERO;
        loop {
            let mut store = match self.new_store(component, request, sink) {
                Ok(s) => s,
                Err(f) => return (Err(f), 0),
            };
            enum Raw {
                Done(Result<Returned, (wasmtime::Error, bool)>),
                TimedOut,
                Cancelled,
            }
            let raw = {
                let (store, call) = (&mut store, &call);
                let work = async move {
                    let instance = component.instance_pre().instantiate_async(&mut *store).await.map_err(|e| (e, true))?;
                    call.invoke(store, &instance).await.map_err(|e| (e, false))
                };
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => Raw::Cancelled,
                    r = tokio::time::timeout(limits.timeout, work) => match r {
                        Ok(r) => Raw::Done(r),
                        Err(_) => Raw::TimedOut,
                    },
                }
            };
            // The pool is full although this step holds one of its slots: a
            // slot a step just freed is still queued for reset, or being reset
            // by another thread (wasmtime resets slots in batches). It is back
            // within microseconds: try again in a fresh store.
            if let Raw::Done(Err((e, true))) = &raw
                && e.is::<wasmtime::PoolConcurrencyLimitError>()
                && waited < Self::POOL_WAIT
            {
                drop(store);
                tokio::time::sleep(Self::POOL_RETRY).await;
                waited += Self::POOL_RETRY;
                continue;
            }
            let fuel_used = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
            let over_http_quota = store.data().http_hooks.exceeded();
            let result = match raw {
                // Requests past the quota were refused; however the guest took
                // that, flooding the host is the attempt's failure.
                Raw::Done(_) if let Some(q) = over_http_quota => Err(StepFailure::new(FailureKind::Quota, q.to_string())),
                Raw::Done(Ok(r)) => Ok(r),
                Raw::Done(Err((e, instantiating))) => Err(classify(e, instantiating, store.data(), limits, sink)),
                Raw::TimedOut => Err(StepFailure::new(
                    FailureKind::Timeout,
                    format!(
                        "did not finish within its {} timeout; raise `timeout` if it needs longer",
                        crate::units::format_duration(limits.timeout)
                    ),
                )),
                Raw::Cancelled => Err(cancelled()),
            };
            return (result, fuel_used);
        }
    }

    fn new_store(&self, component: &StepComponent, request: &StepRequest, sink: &LogSink) -> Result<Store<StepState>, StepFailure> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(CapturedStream { sink: sink.clone(), stream: Stream::Stdout })
            .stderr(CapturedStream { sink: sink.clone(), stream: Stream::Stderr })
            .envs(&request.grants.env)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for dir in &request.grants.dirs {
            let perms = if dir.writable { FsPerms::ReadWrite } else { FsPerms::ReadOnly };
            wasi.preopened_dir(&dir.host, &dir.guest, perms).map_err(|e| {
                StepFailure::new(
                    FailureKind::Instantiate,
                    format!("cannot grant directory {} as {}: {e:#}", dir.host.display(), dir.guest),
                )
            })?;
        }
        let mut table = wasmtime::component::ResourceTable::new();
        table.set_max_capacity(usize::try_from(request.limits.quota.handles).unwrap_or(usize::MAX));
        let state = StepState {
            wasi: wasi.build(),
            table,
            limiter: MemoryCap { cap: usize::try_from(request.limits.memory).unwrap_or(usize::MAX), denied: None },
            log: sink.clone(),
            config_json: request.config.to_string().into(),
            services: request.services.clone(),
            meter: AttemptMeter::new(request.limits.quota),
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            http_hooks: http::HttpHooks::new(request.grants.http.clone(), request.limits.quota.http_requests, sink.clone()),
        };
        // The engine its code was compiled for (Cranelift's, or Winch's).
        let mut store = Store::new(component.instance_pre().engine(), state);
        store.limiter(|s| &mut s.limiter);
        store.set_fuel(request.limits.fuel).expect("fuel is enabled in the engine config");
        // Yield to the executor at every epoch tick, so the deadline and
        // cancellation (which drop the call) are seen within one tick; a
        // guest past its HTTP request quota is stopped there too.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|cx| {
            if let Some(q) = cx.data().http_hooks.exceeded() {
                return Err(q.into());
            }
            Ok(UpdateDeadline::Yield(1))
        });
        Ok(store)
    }
}

/// The export an attempt calls.
enum Call {
    Run(String),
    Describe(wasmtime::component::ComponentExportIndex),
}

/// What the called export returned.
enum Returned {
    Run(Result<String, bindings::sandflow::step::types::StepError>),
    Describe(Metadata),
}

impl Call {
    async fn invoke(
        &self,
        store: &mut Store<StepState>,
        instance: &wasmtime::component::Instance,
    ) -> wasmtime::Result<Returned> {
        match self {
            Call::Run(input) => {
                let step = bindings::Step::new(&mut *store, instance)?;
                Ok(Returned::Run(step.call_run(&mut *store, input).await?))
            }
            Call::Describe(export) => {
                let func = instance.get_typed_func::<(), (Metadata,)>(&mut *store, export)?;
                Ok(Returned::Describe(func.call_async(&mut *store, ()).await?.0))
            }
        }
    }
}

/// Why a component that imports wasi:http may not run without a grant.
pub fn http_not_granted(import: &str) -> String {
    format!(
        "imports `{import}`, but HTTP is not granted to it; allow the hosts it may reach with `grants: {{ http: {{ allow: [HOST] }} }}` on its component (`--allow-http HOST` with `sandflow call`)"
    )
}

fn cancelled() -> StepFailure {
    StepFailure::new(FailureKind::Cancelled, "cancelled while running")
}

/// Turns a wasmtime error into a typed step failure.
fn classify(err: wasmtime::Error, instantiating: bool, state: &StepState, limits: &Limits, sink: &LogSink) -> StepFailure {
    if let Some(q) = err.downcast_ref::<QuotaExceeded>() {
        return StepFailure::new(FailureKind::Quota, q.to_string());
    }
    if let Some(e) = err.downcast_ref::<host::StoreUnavailable>() {
        // The host's fault, not the guest's: worth another attempt.
        return StepFailure::component(format!("the run store could not answer: {e}"), true);
    }
    if let Some(wasmtime::component::ResourceTableError::Full) = err.downcast_ref() {
        let q = QuotaExceeded { kind: QuotaKind::Handles, scope: QuotaScope::Attempt, limit: limits.quota.handles };
        return StepFailure::new(FailureKind::Quota, q.to_string());
    }
    if let Some(asked) = state.limiter.denied {
        return StepFailure::new(
            FailureKind::Memory,
            format!(
                "hit its memory cap of {} (it asked for {}); raise `memory` if it needs more",
                format_size(limits.memory),
                format_size(asked as u64)
            ),
        );
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => StepFailure::new(
            FailureKind::Fuel,
            format!("ran out of fuel (budget {}); raise `fuel` if it needs more", limits.fuel),
        ),
        Some(Trap::Interrupt) => StepFailure::new(FailureKind::Timeout, "interrupted at its deadline"),
        Some(Trap::StackOverflow) => StepFailure::new(
            FailureKind::Trap,
            format!("stack overflow (the wasm stack is limited to {})", format_size(MAX_WASM_STACK as u64)),
        ),
        Some(trap) => {
            // A Rust guest's panic message is the last thing it wrote to stderr.
            let hint = sink.finish().crash_hint().map(|l| format!(" ({l})")).unwrap_or_default();
            let what = trap.to_string();
            StepFailure::new(FailureKind::Trap, format!("crashed: {}{hint}", what.trim_start_matches("wasm trap: ")))
        }
        None if instantiating => StepFailure::new(FailureKind::Instantiate, format!("could not instantiate: {err:#}")),
        None => match err.downcast_ref::<wasmtime_wasi::I32Exit>() {
            Some(exit) => StepFailure::new(
                FailureKind::Trap,
                format!("exited the process (code {}) instead of returning from `run`", exit.0),
            ),
            None => StepFailure::new(FailureKind::Trap, format!("crashed: {err:#}")),
        },
    }
}

/// Checks the text `run` returned: size cap, JSON, output schema.
fn check_output(json: &str, limits: &Limits, described: Option<&Described>) -> Result<Value, StepFailure> {
    if json.len() > limits.max_output {
        return Err(StepFailure::new(
            FailureKind::Output,
            format!(
                "output is {} bytes, over the cap of {}; return less, or put large data in a blob",
                json.len(),
                format_size(limits.max_output as u64)
            ),
        ));
    }
    let value: Value = serde_json::from_str(json).map_err(|e| {
        StepFailure::new(FailureKind::Output, format!("output is not valid JSON: {e}"))
    })?;
    if let Some(problems) = described.and_then(|d| d.output.as_ref()).and_then(|s| schema_problems(s, &value, 5)) {
        return Err(StepFailure::new(
            FailureKind::Output,
            format!("output does not match the component's output schema: {problems}"),
        ));
    }
    Ok(value)
}

/// The first `max` JSON Schema violations of `value` (`/path: what`),
/// joined, or `None` if it is valid.
pub fn schema_problems(schema: &jsonschema::Validator, value: &Value, max: usize) -> Option<String> {
    let problems: Vec<String> = schema
        .iter_errors(value)
        .take(max)
        .map(|e| {
            let at = e.instance_path().to_string();
            format!("{}: {e}", if at.is_empty() { "(root)" } else { &at })
        })
        .collect();
    (!problems.is_empty()).then(|| problems.join("; "))
}

impl Described {
    fn from_metadata(meta: Metadata) -> Result<Self, StepFailure> {
        let parse = |which: &str, text: Option<String>| -> Result<(Option<Value>, Option<jsonschema::Validator>), StepFailure> {
            let Some(text) = text else { return Ok((None, None)) };
            let bad = |e: String| {
                StepFailure::component(format!("describe: the {which} schema is not a valid JSON Schema: {e}"), false)
            };
            let schema: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
            let validator = jsonschema::validator_for(&schema).map_err(|e| bad(e.to_string()))?;
            Ok((Some(schema), Some(validator)))
        };
        let (input_schema, input) = parse("input", meta.input_schema)?;
        let (output_schema, output) = parse("output", meta.output_schema)?;
        Ok(Described {
            info: ComponentInfo {
                name: meta.name,
                version: meta.version,
                description: meta.description,
                input_schema,
                output_schema,
            },
            input,
            output,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A compile longer than the threshold is told when it is, and when
    /// it ends; a component read from the cache is not compiled at all.
    #[test]
    fn a_slow_compile_is_told() {
        let told = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = told.clone();
        on_slow_compile(std::time::Duration::ZERO, move |line| sink.lock().unwrap().push(line.to_string()));
        let cache = tempfile::tempdir().unwrap();
        let sandbox = Sandbox::new(SandboxConfig { cache_dir: Some(cache.path().to_path_buf()), max_instances: 4, ..Default::default() }).unwrap();
        let echo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../components/dist/echo.wasm");
        sandbox.load_file(&echo).unwrap();
        let lines = told.lock().unwrap().clone();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("compiling ") && lines[0].contains("echo.wasm (") && lines[0].ends_with("later runs read it compiled from the cache…"), "{lines:?}");
        assert!(lines[1].contains("echo.wasm in ") && lines[1].ends_with("s; cached for the next run"), "{lines:?}");
        // Another process (a sandbox of its own) reads it from the cache.
        let again = Sandbox::new(SandboxConfig { cache_dir: Some(cache.path().to_path_buf()), max_instances: 4, ..Default::default() }).unwrap();
        again.load_file(&echo).unwrap();
        assert_eq!(told.lock().unwrap().len(), 2, "read from the cache: not compiled");
    }
}
