//! Running a prepared plan: the scheduler.
//!
//! One dispatcher drives the run: the run's books are a [`machine`] over an
//! in-memory ledger (the same state machine workers keep in PostgreSQL
//! rows). It starts every step whose dependencies are done, up to the
//! concurrency limit; each step runs as a task (its attempts, retries and
//! `forEach` items) that only reports back over a channel. The dispatcher
//! alone emits the run's [`Event`]s besides a step's start and retries, in
//! order, and a step's `StepFinished` is emitted before any of its
//! dependents start.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use sandflow::{exec, plan::Plan, sandbox::*, workflow};
//! use std::sync::Arc;
//! let sandbox = Arc::new(Sandbox::new(SandboxConfig::default())?);
//! let plan = Plan::new(workflow::load("workflows/hello.yaml".as_ref())?)?;
//! let prepared = Arc::new(exec::prepare(plan, &sandbox)?);
//! let executor = exec::Executor::new(sandbox, Arc::new(exec::NoEvents));
//! let report = executor
//!     .run(prepared, serde_json::json!({"name": "Ada"}), exec::RunOptions::default(), CancellationToken::new())
//!     .await;
//! println!("{:?}: {:?}", report.state, report.output);
//! # Ok(()) }
//! ```

mod builtin;
pub mod core;
pub mod demand;
mod event;
pub mod machine;
mod memo;
mod prepare;
mod redact;
mod runner;

pub use builtin::canonical_json;
pub use event::{Event, EventSink, RunState, SinkError, StepState};
pub use self::core::Ending;
pub use prepare::{Disk, Files, MAX_NESTING, Parsed, Prepared, PreparedComponent, Recording, load, load_from, load_from_with, load_with, plain_path, prepare};
pub use redact::{MASK, MaskedString, Redactor, SecretSpans, unmask};
pub use memo::{MemoEntry, MemoHit, Memos, memo_key};
pub use runner::{ComponentCheck, Job, Loaded, Loader, StepRunner};

use self::core::{Items, Outcome, RunFacts, Signal, Stop, Wait, Work};
use self::machine::{Kept, Launch, Lazy, Ledger, Progress, RunMachine, Settled, Tally, work_input};

use crate::failure::{FailureKind, StepFailure};
use crate::sandbox::{CancellationToken, HostServices, Limits, MemoryServices, Quota, RunMeter, StepLog};
use crate::workflow::{Builtin, StepDecl, Target, Workflow};
use serde_json::Value;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A sink that drops every event (for nested runs and tests).
pub struct NoEvents;

impl EventSink for NoEvents {
    fn emit(&self, _: &Event) {}
}

/// How one run is set up.
#[derive(Clone)]
pub struct RunOptions {
    /// The run's id (a new one by default: see [`new_run_id`]).
    pub run_id: String,
    /// Overrides the workflow's `concurrency` (default: the CPU count).
    pub concurrency: Option<usize>,
    /// Values for `secrets.NAME`.
    pub secrets: BTreeMap<String, String>,
    /// Where the run's key-value state and blobs live.
    pub services: Arc<dyn HostServices>,
    /// Outputs of steps that succeeded in an earlier attempt of this run
    /// (`sandflow resume`): they are not run again.
    pub restored: BTreeMap<String, Value>,
    /// This attempt of the run: 1, plus one per resume (`run.attempt`).
    pub attempt: u32,
    /// Interrupts the `finally` steps, which the run's cancel does not
    /// (the CLI cancels it on a second SIGINT).
    pub skip_finally: CancellationToken,
    /// Where `cache:` results are kept and looked up (none: never cached).
    pub memo: Option<Arc<dyn Memos>>,
    /// The run's variables (`$variable`; `--var`, `--vars`): an object.
    pub variables: Value,
    /// Steps that ended without success in an earlier attempt of this run
    /// and keep that end: a run killed while its `finally` steps ran goes
    /// on with only the steps that had not ended (`sandflow resume`).
    pub ended: BTreeMap<String, Ending>,
    /// Where the events of nested runs go (a tracer, so a trace covers
    /// them); by default nowhere: they are part of their step.
    pub nested_events: Option<Arc<dyn EventSink>>,
    /// What started the run (`run.trigger`, `run.scheduled_time`).
    pub trigger: RunTrigger,
    /// Wake times steps recorded while they waited in an earlier life of
    /// this run (`sandflow resume`), by step id (`None`: no time).
    pub waits: BTreeMap<String, Option<jiff::Timestamp>>,
    /// Where signals to the run's waiting steps arrive (`sandflow signal`);
    /// none: a run no store records, which no signal can reach.
    pub mailbox: Option<Arc<dyn Mailbox>>,
    /// Hands the run over, unfinished: once it fires, no step starts; the
    /// steps running end as they would, and once none runs the run
    /// returns as it stands, `running`, its end not told (a stopping
    /// worker hands the runs it runs whole to other workers so).
    pub hand_off: CancellationToken,
}

/// Where signals sent to a run's waiting steps are found: the run's store.
#[async_trait::async_trait]
pub trait Mailbox: Send + Sync {
    /// Signals sent to steps of `steps` of run `run_id` and not yet taken
    /// (a step takes its signal when it ends), by step id.
    async fn signals(&self, run_id: &str, steps: &[String]) -> Result<Vec<(String, Signal)>, String>;
}

/// How often a run in this process looks for signals to its waiting steps.
pub const MAILBOX_EVERY: Duration = Duration::from_millis(250);

/// What started a run, as its templates read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunTrigger {
    /// `schedule`, `webhook` or `retry`; none: `manual`.
    pub kind: Option<String>,
    /// The tick a schedule started it for (RFC 3339).
    pub scheduled_time: Option<String>,
}

impl RunTrigger {
    /// `{trigger, scheduled_time}`, merged into `run` (see [`crate::expr`]).
    pub fn facts(&self) -> Value {
        serde_json::json!({ "trigger": self.kind.as_deref().unwrap_or("manual"), "scheduled_time": self.scheduled_time })
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            run_id: new_run_id(),
            concurrency: None,
            secrets: BTreeMap::new(),
            services: Arc::new(MemoryServices::new()),
            restored: BTreeMap::new(),
            attempt: 1,
            skip_finally: CancellationToken::new(),
            memo: None,
            variables: Value::Object(Default::default()),
            ended: BTreeMap::new(),
            nested_events: None,
            trigger: RunTrigger::default(),
            waits: BTreeMap::new(),
            mailbox: None,
            hand_off: CancellationToken::new(),
        }
    }
}

/// A fresh run id: a UUIDv7, time-ordered and unique across machines.
pub fn new_run_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// How a step ended.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// The step's id.
    pub id: String,
    /// Its final state.
    pub state: StepState,
    /// Attempts made (summed over `forEach` items).
    pub attempts: u32,
    /// Its output, for a step that succeeded.
    pub output: Option<Value>,
    /// Why it failed.
    pub error: Option<StepFailure>,
    /// Why it was skipped.
    pub reason: Option<String>,
    /// The fuel its attempts used.
    pub fuel_used: u64,
    /// From its first attempt's start to its end.
    pub duration: Duration,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The run's id.
    pub run_id: String,
    /// How it ended; `running` for a run handed off unfinished
    /// ([`RunOptions::hand_off`]).
    pub state: RunState,
    /// Its output, for a run that completed.
    pub output: Option<Value>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    /// Set when the end of the run could not be recorded (the record says
    /// it is still running): the run is `failed` with this message.
    pub unrecorded: Option<String>,
    /// Every step, in file order (of a run handed off, those that ended).
    pub steps: Vec<StepReport>,
}

/// A run that may start: its workflow limited to its targets, and the
/// secrets it reads that this process lacks (whether that stops it is the
/// caller's to say: a process that runs steps needs them, `submit` does not).
pub struct Entry {
    /// The workflow, limited to the run's targets.
    pub prepared: Prepared,
    /// The secrets it reads that this process does not have, each with where it is read.
    pub missing_secrets: Option<crate::workflow::Diagnostics>,
}

/// Why a run cannot start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `--target` names a step the workflow does not have.
    Target(String),
    /// The input does not match the workflow's `input` schema.
    Input(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Target(m) | Refusal::Input(m) => f.write_str(m),
        }
    }
}

/// A run's entry, the same wherever a run starts (`run`, `submit`, a
/// worker, `resume`, `retry`, `test`): the prepared workflow limited to
/// `targets`, `input` checked against its schema, and the secrets it reads
/// looked up in `secrets`.
pub fn enter(prepared: &Prepared, targets: &[String], input: &Value, secrets: &BTreeMap<String, String>) -> Result<Entry, Refusal> {
    let prepared = prepared.target(targets).map_err(Refusal::Target)?;
    check_input(&prepared.plan.workflow, input).map_err(Refusal::Input)?;
    let missing_secrets = check_secrets(&prepared.plan, secrets).err();
    Ok(Entry { prepared, missing_secrets })
}

/// Checks a run input against the workflow's `input` schema.
pub fn check_input(workflow: &Workflow, input: &Value) -> Result<(), String> {
    let Some(schema) = &workflow.input_schema else { return Ok(()) };
    let validator = jsonschema::validator_for(schema).map_err(|e| format!("the workflow's `input` schema is invalid: {e}"))?;
    match crate::sandbox::schema_problems(&validator, input, 10) {
        None => Ok(()),
        Some(problems) => Err(format!("the run input does not match the workflow's `input` schema: {problems}")),
    }
}

/// Checks that every `secrets.NAME` the workflow reads is set.
pub fn check_secrets(plan: &crate::plan::Plan, secrets: &BTreeMap<String, String>) -> Result<(), crate::workflow::Diagnostics> {
    let problems: Vec<crate::workflow::Diagnostic> = plan
        .secret_refs()
        .into_iter()
        .filter(|(name, _)| !secrets.contains_key(name))
        .map(|(name, at)| {
            crate::workflow::Diagnostic::new(&at, format!("secret `{name}` is not set"))
                .with_hint(format!("set SANDFLOW_SECRET_{name}, or add `{name}=...` to a --secrets-file"))
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(crate::workflow::Diagnostics { file: plan.workflow.file.to_path_buf(), problems }.sorted())
    }
}

/// Runs prepared plans.
pub struct Executor {
    runner: Arc<dyn StepRunner>,
    sink: Arc<dyn EventSink>,
}

/// The result of all of a step's attempts (and items), and what they add up to.
struct StepEnd {
    result: Result<Value, StepFailure>,
    tally: Tally,
}

/// A running step: its index and how it ended.
type StepFuture = Pin<Box<dyn Future<Output = (usize, StepEnd)> + Send>>;

/// Shared by a run's step tasks.
struct Ctx {
    runner: Arc<dyn StepRunner>,
    prepared: Arc<Prepared>,
    /// The run's state and blobs, counted against the run's quotas.
    services: Arc<RunMeter>,
    secrets: Arc<BTreeMap<String, String>>,
    run_id: String,
    depth: usize,
    /// Most steps (and, by default, `forEach` items) running at once.
    limit: usize,
    cel: crate::expr::CelCache,
    restored: BTreeMap<String, Value>,
    attempt: u32,
    /// See [`RunOptions::skip_finally`].
    skip_finally: CancellationToken,
    /// See [`RunOptions::memo`].
    memo: Option<Arc<dyn Memos>>,
    /// See [`RunOptions::variables`].
    variables: Value,
    /// See [`RunOptions::ended`].
    ended: BTreeMap<String, Ending>,
    /// See [`RunOptions::nested_events`].
    nested_events: Option<Arc<dyn EventSink>>,
    /// [`RunOptions::trigger`]'s facts.
    trigger: Value,
    /// See [`RunOptions::waits`].
    waits: BTreeMap<String, Option<jiff::Timestamp>>,
    /// See [`RunOptions::mailbox`].
    mailbox: Option<Arc<dyn Mailbox>>,
}

impl Executor {
    /// Runs steps with `runner` (the [`Sandbox`](crate::sandbox::Sandbox)
    /// runs them in this process) and tells `sink` what happens.
    pub fn new(runner: Arc<dyn StepRunner>, sink: Arc<dyn EventSink>) -> Self {
        Executor { runner, sink }
    }

    /// Runs `prepared` with `input` until it completes, fails or `cancel`
    /// fires. Secret values are masked in every event and in the report's
    /// errors; outputs in the report are the run's data and are left as
    /// they are.
    pub async fn run(&self, prepared: Arc<Prepared>, input: Value, options: RunOptions, cancel: CancellationToken) -> RunReport {
        let redactor = Redactor::new(&options.secrets);
        let sink: Arc<dyn EventSink> = if redactor.is_empty() {
            self.sink.clone()
        } else {
            Arc::new(redact::RedactingSink { inner: self.sink.clone(), redactor: redactor.clone() })
        };
        let run_quota = prepared.plan.workflow.quota.resolve(Quota::RUN);
        let ctx = Arc::new(Ctx {
            runner: self.runner.clone(),
            prepared: prepared.clone(),
            services: Arc::new(RunMeter::new(options.services.clone(), run_quota)),
            secrets: Arc::new(options.secrets.clone()),
            run_id: options.run_id.clone(),
            depth: 0,
            limit: run_limit(&prepared.plan.workflow, options.concurrency),
            cel: Default::default(),
            restored: options.restored.clone(),
            attempt: options.attempt,
            skip_finally: options.skip_finally.clone(),
            memo: options.memo.clone(),
            variables: options.variables.clone(),
            ended: options.ended.clone(),
            // Nested runs' events are masked as the run's own are.
            nested_events: options.nested_events.clone().map(|inner| match redactor.is_empty() {
                true => inner,
                false => Arc::new(redact::RedactingSink { inner, redactor: redactor.clone() }) as Arc<dyn EventSink>,
            }),
            trigger: options.trigger.facts(),
            waits: options.waits.clone(),
            mailbox: options.mailbox.clone(),
        });
        // The dispatcher runs as a task of its own, so the step tasks it
        // spawns start on its worker (tokio's LIFO slot) and report back
        // without a thread hand-off per step.
        let mut report = tokio::spawn(dispatch(ctx, input, sink, cancel, options.hand_off))
            .await
            .expect("the dispatcher does not panic");
        if !redactor.is_empty() {
            report.error = report.error.map(|e| redactor.text(&e));
            for s in &mut report.steps {
                s.error = s.error.as_ref().map(|f| redactor.failure(f));
                s.reason = s.reason.as_ref().map(|r| redactor.text(r));
            }
        }
        report
    }
}

/// What the steps of one run need to run outside this process's
/// dispatcher: a distributed worker runs each claimed attempt through one.
/// Builtins and `workflow:` steps run in the worker, as they would here.
pub struct RunContext(Arc<Ctx>);

impl RunContext {
    /// The run as `options` describe it (`concurrency` is the run's step
    /// concurrency: a `forEach` step's default item concurrency).
    pub fn new(runner: Arc<dyn StepRunner>, prepared: Arc<Prepared>, options: RunOptions) -> RunContext {
        let run_quota = prepared.plan.workflow.quota.resolve(Quota::RUN);
        RunContext(Arc::new(Ctx {
            runner,
            limit: run_limit(&prepared.plan.workflow, options.concurrency),
            services: Arc::new(RunMeter::new(options.services, run_quota)),
            prepared,
            secrets: Arc::new(options.secrets),
            run_id: options.run_id,
            depth: 0,
            cel: Default::default(),
            restored: options.restored,
            attempt: options.attempt,
            skip_finally: options.skip_finally,
            memo: options.memo,
            variables: options.variables,
            ended: options.ended,
            nested_events: options.nested_events,
            trigger: options.trigger.facts(),
            waits: options.waits,
            mailbox: options.mailbox,
        }))
    }

    /// The run's prepared workflow.
    pub fn prepared(&self) -> &Arc<Prepared> {
        &self.0.prepared
    }

    /// The run's secrets' values.
    pub fn secrets(&self) -> &BTreeMap<String, String> {
        &self.0.secrets
    }

    /// What the run's decisions read, for the run's `input`.
    pub fn facts<'a>(&'a self, input: &'a Value) -> RunFacts<'a> {
        self.0.facts(input)
    }

    /// One attempt of step `step` with `input`: its result, fuel and log,
    /// or a result reused. The log is whole, up to the attempt's quota: the
    /// run's `log` quota counts it where it is recorded, across workers
    /// (the queue's commit). Each
    /// line the step writes goes to `follow` (its index in the attempt's
    /// log, the line) as it writes it.
    pub async fn attempt(&self, step: usize, input: &Value, cancel: &CancellationToken, follow: Option<Follow>) -> Attempted {
        let wf = &self.0.prepared.plan.workflow;
        let settings = wf.steps[step].settings.or(&wf.defaults);
        let services = following(self.0.services.clone(), follow);
        execute(&self.0, step, input, Which::default(), &settings, services, cancel).await
    }
}

/// The run id of the nested run of attempt `attempt` of step `step` (item
/// `item`) of run `parent`: `PARENT/STEP@ATTEMPT`, or
/// `PARENT/STEP#ITEM@ATTEMPT`. A tracer finds the attempt a nested run
/// belongs to by it.
pub fn nested_run_id(parent: &str, step: &str, item: Option<usize>, attempt: u32) -> String {
    match item {
        None => format!("{parent}/{step}@{attempt}"),
        Some(i) => format!("{parent}/{step}#{i}@{attempt}"),
    }
}

/// What [`nested_run_id`] says: the parent run, the step, item and attempt.
pub fn parse_nested_run_id(id: &str) -> Option<(&str, &str, Option<usize>, u32)> {
    let (parent, tail) = id.rsplit_once('/')?;
    let (which, attempt) = tail.rsplit_once('@')?;
    let attempt = attempt.parse().ok()?;
    match which.split_once('#') {
        Some((step, item)) => Some((parent, step, Some(item.parse().ok()?), attempt)),
        None => Some((parent, which, None, attempt)),
    }
}

/// A nested run (`workflow:` steps, `/builtin/eval`) of step `of` (and
/// item): the same dispatcher, sharing the parent's services and secrets;
/// its events go only to [`RunOptions::nested_events`] (a tracer), if any.
fn nested_run(
    parent: &Ctx,
    of: (&str, Which),
    prepared: Arc<Prepared>,
    input: Value,
    cancel: CancellationToken,
) -> Pin<Box<dyn Future<Output = RunReport> + Send>> {
    let ctx = Arc::new(Ctx {
        runner: parent.runner.clone(),
        prepared: prepared.clone(),
        services: parent.services.clone(),
        secrets: parent.secrets.clone(),
        run_id: nested_run_id(&parent.run_id, of.0, of.1.item, of.1.attempt),
        depth: parent.depth + 1,
        limit: run_limit(&prepared.plan.workflow, None),
        cel: Default::default(),
        restored: BTreeMap::new(),
        attempt: 1,
        skip_finally: parent.skip_finally.clone(),
        memo: parent.memo.clone(),
        variables: parent.variables.clone(),
        ended: BTreeMap::new(),
        nested_events: parent.nested_events.clone(),
        // A nested run was started by its parent's start.
        trigger: parent.trigger.clone(),
        waits: BTreeMap::new(),
        // A signal names a run the store knows: a nested run is not one.
        mailbox: None,
    });
    let sink = parent.nested_events.clone().unwrap_or_else(|| Arc::new(NoEvents));
    // A nested run is part of its step: it is not handed off by itself.
    Box::pin(dispatch(ctx, input, sink, cancel, CancellationToken::new()))
}

/// The CPUs this process may use (its cgroup's quota counts), 4 when that
/// cannot be told. Read once: each reading opens the cgroup's files.
pub fn cpu_count() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(4, |n| n.get()))
}

/// Most steps a run of `workflow` runs at once: `concurrency` (the run's
/// override, [`RunOptions::concurrency`]), else the workflow's, else the
/// CPU count; at least 1.
fn run_limit(workflow: &Workflow, concurrency: Option<usize>) -> usize {
    concurrency.or(workflow.concurrency).unwrap_or_else(cpu_count).max(1)
}

/// Most component steps a run of `workflow` can have running at once (so
/// most sandbox instances it holds): its limit (`concurrency` overrides the
/// workflow's, as [`RunOptions::concurrency`] does) times the most one step
/// holds, the items a `forEach` step runs at once (by default the run's
/// limit). `None` when the file alone cannot tell: a nested workflow has a
/// limit of its own.
pub fn steps_at_once(workflow: &Workflow, concurrency: Option<usize>) -> Option<usize> {
    let limit = run_limit(workflow, concurrency);
    let mut widest = 0;
    for step in &workflow.steps {
        let instances = match step.target {
            Target::Workflow(_) => return None,
            Target::Builtin(_) => 0,
            Target::Named(_) | Target::Path(_) => 1,
        };
        let items = if step.for_each.is_some() { core::item_concurrency(step, limit) } else { 1 };
        widest = widest.max(instances * items);
    }
    Some(limit.saturating_mul(widest))
}

impl Ctx {
    /// What this run's decisions read, for a run with `input`.
    fn facts<'a>(&'a self, input: &'a Value) -> RunFacts<'a> {
        RunFacts {
            input,
            run_id: &self.run_id,
            attempt: self.attempt,
            secrets: &self.secrets,
            cel: &self.cel,
            limit: self.limit,
            ending: None,
            variables: &self.variables,
            trigger: Some(&self.trigger),
        }
    }
}

async fn dispatch(ctx: Arc<Ctx>, input: Value, sink: Arc<dyn EventSink>, cancel: CancellationToken, hand_off: CancellationToken) -> RunReport {
    let plan = ctx.prepared.plan.clone();
    let wf = &plan.workflow;
    let n = wf.steps.len();
    let run_id = ctx.run_id.clone();
    let limit = ctx.limit;
    let book = Book {
        plan: &plan,
        sink: &sink,
        waiting: plan.deps.iter().map(Vec::len).collect(),
        outputs: BTreeMap::new(),
        reports: vec![None; n],
        outcomes: vec![None; n],
        unrecorded: None,
        barriers: 0,
        ended_at: vec![None; n],
        flush_all: false,
        running: 0,
        parked: Vec::new(),
        woken: Default::default(),
        waits: &ctx.waits,
        started: Instant::now(),
        phase: Phase {
            run: cancel.clone(),
            skip_finally: ctx.skip_finally.clone(),
            current: cancel.clone(),
            steps: cancel.child_token(),
            ours: None,
            deadline: wf.timeout.map(|t| tokio::time::Instant::now() + t),
            finally_timeout: wf.finally_timeout,
        },
        restored: &ctx.restored,
        ended: &ctx.ended,
    };
    let mut m = RunMachine::new(&plan, ctx.facts(&input), Progress::default(), book);
    m.start();
    let mut inline: Option<StepFuture> = None;
    // Step tasks report here when they end: (step, how it ended).
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, StepEnd)>();

    // Resumed while its `finally` steps ran: the steps of `steps` keep how
    // they ended.
    if !ctx.ended.is_empty() {
        settle_recorded(&mut m, 0..plan.main).await;
    }
    loop {
        // A StepFlow flow's steps run only when needed (see `demand`).
        infallible(m.apply_demand().await);
        let handing_off = hand_off.is_cancelled();
        while !handing_off && !m.halted() && m.ledger.running < limit {
            // `wait:` steps whose time came start first: they were ready
            // before any step that became ready while they waited.
            let (i, work) = match m.ledger.woken.pop_front() {
                Some(woken) => woken,
                None => {
                    let Some(i) = m.ready.pop_front() else { break };
                    if !m.admit(i) {
                        continue;
                    }
                    // A step's dependencies are durable before it starts
                    // (only those that ended since the last barrier may not be).
                    let book = &m.ledger;
                    let deps = &plan.deps[i];
                    if (book.flush_all && !deps.is_empty()) || deps.iter().any(|&d| book.ended_at[d] == Some(book.barriers)) {
                        m.ledger.flush_all = false;
                        m.ledger.barriers += 1;
                        if let Err(e) = sink.barrier().await {
                            m.ready.push_front(i);
                            lose_record(&mut m, e);
                            m.ledger.phase.steps.cancel();
                            break;
                        }
                    }
                    let Some(Launch { work, wait }) = infallible(m.decide(i).await) else { continue };
                    if let Some(wait) = wait {
                        park(&mut m, &ctx, i, work, wait).await;
                        continue;
                    }
                    (i, work)
                }
            };
            m.ledger.running += 1;
            let (ctx, step_sink, cancel) = (ctx.clone(), sink.clone(), m.ledger.phase.steps.clone());
            let step = async move { (i, run_step(&ctx, i, work, &step_sink, &cancel).await) };
            // When steps run one at a time, the dispatcher drives the step
            // itself: no task hand-off at all. (It yields at every epoch
            // tick, so a cancel is seen within one.) Otherwise every step
            // is a task of its own: a task spawned while the dispatcher
            // drove a step inline would wait in its worker's LIFO slot,
            // which other workers cannot steal from, and the run would use
            // one core.
            if limit == 1 && inline.is_none() {
                inline = Some(Box::pin(step));
            } else {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let (step, end) = step.await;
                    let _ = tx.send((step, end));
                });
            }
        }
        // A stopped run's waiting steps never wake: they end now.
        if m.halted() {
            stop_waiting(&mut m);
        }
        if m.ledger.running == 0 && !m.ledger.holds_waiting() {
            match infallible(m.settle().await) {
                Settled::FinallyBegan => {
                    if !ctx.ended.is_empty() {
                        settle_recorded(&mut m, plan.main..n).await;
                    }
                    continue;
                }
                Settled::Ended => break,
                // Steps are left that this process does not start.
                Settled::Waiting if handing_off => {}
                // Nothing runs and nothing can start: every step has ended.
                Settled::Waiting => break,
            }
        }
        if handing_off && m.ledger.running == 0 {
            return handed_off(m, &sink, &run_id).await;
        }
        let (phase_cancel, deadline) = (m.ledger.phase.current.clone(), m.ledger.phase.deadline);
        let wake = m.ledger.parked.iter().filter_map(|p| p.wake).min();
        let listening = ctx.mailbox.is_some() && m.ledger.parked.iter().any(|p| p.wait.kind.takes_signals());
        tokio::select! {
            _ = async { tokio::time::sleep_until(wake.expect("guarded")).await }, if wake.is_some() => {
                wake_due(&mut m, &ctx).await;
            }
            _ = tokio::time::sleep(MAILBOX_EVERY), if listening => {
                take_signals(&mut m, &ctx).await;
            }
            (step, end) = async { inline.as_mut().expect("guarded").await }, if inline.is_some() => {
                inline = None;
                let _ = tx.send((step, end));
            }
            done = rx.recv() => {
                let (step, StepEnd { result, tally }) = done.expect("the dispatcher holds a sender");
                m.ledger.running -= 1;
                if infallible(m.finish(step, Ending::Ran(result), tally).await) == Some(Stop::Cancelled) {
                    m.ledger.phase.steps.cancel();
                }
            }
            _ = hand_off.cancelled(), if !handing_off => {}
            _ = phase_cancel.cancelled(), if Stop::cancel_applies(m.progress.stop) => {
                m.cancel();
                m.ledger.phase.steps.cancel();
            }
            _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() && !m.halted() => {
                m.time_out();
                m.ledger.phase.steps.cancel();
            }
        }
    }
    infallible(m.settle_unstarted(0..n).await);
    if let Some(token) = m.ledger.phase.ours.take() {
        token.cancel();
    }
    // Every step's result is durable before the run's end is decided.
    if let Err(e) = sink.barrier().await {
        lose_record(&mut m, e);
    }
    let mut end = infallible(m.end().await);
    let lost = m.progress.stop == Some(Stop::Unrecorded);
    if lost {
        end.error = m.ledger.unrecorded.as_ref().map(|e| unrecorded_message(e, &run_id));
    }
    // The output is shared with the sinks, not copied: it can hold every
    // step's output. It is the report's again once they let it go.
    let (mut state, mut error) = (end.state, end.error.clone());
    let output = infallible(m.finish_run(end).await);
    let Book { mut outputs, reports, .. } = m.ledger;
    // The end itself could not be recorded: the run's result stands, but
    // its record says `running` (a resume finishes it), so the run fails.
    // (A record lost earlier is already the run's error.)
    let recorded = sink.barrier().await;
    let unrecorded = recorded.err().filter(|_| !lost).map(|e| unrecorded_message(&e, &run_id));
    if let Some(message) = &unrecorded {
        state = RunState::Failed;
        error = Some(message.clone());
    }
    let steps = reports.into_iter().map(|r| with_output(r.expect("every step has a report"), &mut outputs)).collect();
    RunReport { run_id, state, output: output.map(Arc::unwrap_or_clone), error, unrecorded, steps }
}

/// The run, handed off ([`RunOptions::hand_off`]) with no step running:
/// what it recorded is made durable, and it returns `running`, with the
/// steps that ended (its waiting steps stay recorded as waiting). Whoever
/// goes on with it reads the rest from the run's record.
async fn handed_off(mut m: RunMachine<'_, Book<'_>>, sink: &Arc<dyn EventSink>, run_id: &str) -> RunReport {
    if let Some(token) = m.ledger.phase.ours.take() {
        token.cancel();
    }
    let unrecorded = sink.barrier().await.err().map(|e| unrecorded_message(&e, run_id));
    let Book { mut outputs, reports, .. } = m.ledger;
    let steps = reports.into_iter().flatten().map(|r| with_output(r, &mut outputs)).collect();
    RunReport { run_id: run_id.to_string(), state: RunState::Running, output: None, error: unrecorded.clone(), unrecorded, steps }
}

/// Step report `r` with its output, taken from the run's `outputs` (the
/// sinks are done with the run's events: taken, not copied).
fn with_output(mut r: StepReport, outputs: &mut BTreeMap<String, Option<Arc<Value>>>) -> StepReport {
    r.output = outputs.remove(&r.id).flatten().map(|v| Arc::try_unwrap(v).unwrap_or_else(|v| (*v).clone()));
    r
}

/// A step that waits ([`Wait`]), in this process: it holds no slot.
struct Parked {
    step: usize,
    work: Work,
    wait: Wait,
    /// When its time comes (none: only a signal ends it).
    wake: Option<tokio::time::Instant>,
    since: Instant,
}

/// Step `i` waits before its `work`: until its time, or a signal.
async fn park(m: &mut RunMachine<'_, Book<'_>>, ctx: &Ctx, i: usize, work: Work, wait: Wait) {
    if wait.kind.takes_signals() && ctx.mailbox.is_none() {
        let why = StepFailure::new(FailureKind::Reference, "no signal can reach this run: it is not recorded in a run store (run it without --no-store)").not_retryable();
        let tally = Tally { input: work_input(&work), ..Tally::default() };
        infallible(m.finish(i, Ending::Refused(why), tally).await);
        return;
    }
    // Wall-clock time, on tokio's clock (so a paused clock in tests moves it).
    let wake = wait.until.map(|until| {
        let left = until.duration_since(jiff::Timestamp::now());
        tokio::time::Instant::now() + Duration::try_from(left).unwrap_or(Duration::ZERO)
    });
    m.ledger.parked.push(Parked { step: i, work, wait, wake, since: Instant::now() });
}

/// Waiting steps whose time came: a `wait:` step is to run; a builtin
/// that only waits ends ([`core::woken`]), a signal that came meanwhile
/// taken first.
async fn wake_due(m: &mut RunMachine<'_, Book<'_>>, ctx: &Ctx) {
    let now = tokio::time::Instant::now();
    let (due, left): (Vec<Parked>, Vec<Parked>) = std::mem::take(&mut m.ledger.parked).into_iter().partition(|p| p.wake.is_some_and(|w| w <= now));
    m.ledger.parked = left;
    let mut signals = BTreeMap::new();
    let asking = awaiting_signals(m.plan, &due);
    if let (Some(mailbox), false) = (&ctx.mailbox, asking.is_empty()) {
        signals = mailbox.signals(&ctx.run_id, &asking).await.unwrap_or_default().into_iter().collect();
    }
    for p in due {
        match p.wait.kind {
            core::WaitKind::Wait => m.ledger.woken.push_back((p.step, p.work)),
            _ => {
                let signal = signals.remove(&m.plan.workflow.steps[p.step].id);
                end_waiting(m, p, signal).await;
            }
        }
    }
}

/// The ids of the steps of `parked` that a signal ends.
fn awaiting_signals(plan: &crate::plan::Plan, parked: &[Parked]) -> Vec<String> {
    parked.iter().filter(|p| p.wait.kind.takes_signals()).map(|p| plan.workflow.steps[p.step].id.clone()).collect()
}

/// Signals sent to waiting steps: each ends the step it was sent to.
async fn take_signals(m: &mut RunMachine<'_, Book<'_>>, ctx: &Ctx) {
    let Some(mailbox) = &ctx.mailbox else { return };
    let asking = awaiting_signals(m.plan, &m.ledger.parked);
    let signals = match mailbox.signals(&ctx.run_id, &asking).await {
        Ok(signals) => signals,
        Err(e) => {
            tracing::warn!("run {}: cannot read signals: {e}", ctx.run_id);
            return;
        }
    };
    for (step, signal) in signals {
        let Some(k) = m.ledger.parked.iter().position(|p| m.plan.workflow.steps[p.step].id == step) else { continue };
        let p = m.ledger.parked.remove(k);
        end_waiting(m, p, Some(signal)).await;
    }
}

/// A builtin that only waits ends, as [`core::woken`] says.
async fn end_waiting(m: &mut RunMachine<'_, Book<'_>>, p: Parked, signal: Option<Signal>) {
    let input = work_input(&p.work).unwrap_or_default();
    let until = p.wait.until.map(|t| t.to_string());
    let result = core::woken(p.wait.kind, &input, until.as_deref(), signal);
    let tally = Tally { attempts: 1, duration: p.since.elapsed(), input: Some(input), last_fuel: Some(0), ..Tally::default() };
    if infallible(m.finish(p.step, Ending::Ran(result), tally).await) == Some(Stop::Cancelled) {
        m.ledger.phase.steps.cancel();
    }
}

/// The run stopped: its waiting steps never wake. They never started, and
/// end as every step that never started does ([`core::unstarted`]).
fn stop_waiting(m: &mut RunMachine<'_, Book<'_>>) {
    m.ledger.parked.clear();
    m.ledger.woken.clear();
}

/// The sink failed: no step starts any more, and the run fails with the
/// first reason.
fn lose_record(m: &mut RunMachine<'_, Book<'_>>, e: SinkError) {
    m.ledger.unrecorded.get_or_insert(e);
    m.unrecorded();
}

/// The value of a result that cannot fail.
fn infallible<T>(result: Result<T, Infallible>) -> T {
    match result {
        Ok(v) => v,
        Err(never) => match never {},
    }
}

/// Settles the steps of `range` that keep how they ended in an earlier
/// attempt of the run ([`RunMachine::keep`]): a run resumed while its
/// `finally` steps ran settles the steps of `steps` at once.
async fn settle_recorded(m: &mut RunMachine<'_, Book<'_>>, range: std::ops::Range<usize>) {
    for i in range {
        infallible(m.keep(i).await);
    }
}

/// A token cancelled when `a` or `b` is (or when it is cancelled itself,
/// which ends the task that watches `a`).
fn either(a: &CancellationToken, b: &CancellationToken) -> CancellationToken {
    let token = b.child_token();
    let (a, done) = (a.clone(), token.clone());
    tokio::spawn(async move {
        tokio::select! {
            _ = a.cancelled() => done.cancel(),
            _ = done.cancelled() => {}
        }
    });
    token
}

/// What a user reads when the run's record could not be made durable.
fn unrecorded_message(e: &SinkError, run_id: &str) -> String {
    format!("{e}; what it recorded before is intact: fix the problem, then `sandflow resume {run_id}`")
}

/// The dispatcher's [`Ledger`]: a run in progress, in memory.
struct Book<'a> {
    plan: &'a crate::plan::Plan,
    sink: &'a Arc<dyn EventSink>,
    /// Dependencies of each step not yet finished.
    waiting: Vec<usize>,
    /// Outputs of finished steps (`None`: skipped), for templates.
    /// Shared with the `StepFinished` event that recorded each, not copied.
    outputs: BTreeMap<String, Option<Arc<Value>>>,
    reports: Vec<Option<StepReport>>,
    /// How each ended step turned out (`depends`, `steps.ID.status`).
    outcomes: Vec<Option<Outcome>>,
    /// Why the run's record could not be made durable.
    unrecorded: Option<SinkError>,
    /// How many barriers the run asked of the sink so far.
    barriers: u64,
    /// For each step that ended: how many barriers there had been. It is
    /// durable once there was one more.
    ended_at: Vec<Option<u64>>,
    /// The `finally` steps began: the next step with dependencies waits
    /// for a barrier whatever ended.
    flush_all: bool,
    /// Steps running now.
    running: usize,
    /// Steps waiting for a time or a signal (they hold no slot).
    parked: Vec<Parked>,
    /// `wait:` steps whose time came, to run as slots free.
    woken: std::collections::VecDeque<(usize, Work)>,
    /// See [`RunOptions::waits`].
    waits: &'a BTreeMap<String, Option<jiff::Timestamp>>,
    started: Instant,
    phase: Phase,
    /// What steps keep from an earlier attempt of the run
    /// ([`RunOptions::restored`], [`RunOptions::ended`]).
    restored: &'a BTreeMap<String, Value>,
    ended: &'a BTreeMap<String, Ending>,
}

impl Book<'_> {
    /// Whether steps wait (for a time or a signal), or woke and wait for a slot.
    fn holds_waiting(&self) -> bool {
        !self.parked.is_empty() || !self.woken.is_empty()
    }
}

/// What stops the steps of the current phase. Those of `steps` stop on
/// the run's cancel and its timeout; those of `finally` only on
/// `skip_finally` (or a cancel that comes while they run) and their own
/// timeout.
struct Phase {
    run: CancellationToken,
    skip_finally: CancellationToken,
    /// Cancels the phase.
    current: CancellationToken,
    /// Cancels the phase's running steps (a child of `current`).
    steps: CancellationToken,
    /// A token of this run's own, cancelled when it ends (see `either`).
    ours: Option<CancellationToken>,
    deadline: Option<tokio::time::Instant>,
    finally_timeout: Duration,
}

impl Ledger for Book<'_> {
    type Error = Infallible;

    async fn load(&mut self, _: Vec<usize>) -> Result<(), Infallible> {
        Ok(())
    }

    async fn load_ended(&mut self) -> Result<(), Infallible> {
        Ok(())
    }

    fn outputs(&self) -> &dyn crate::expr::Outputs {
        &self.outputs
    }

    fn outcome(&self, i: usize) -> Option<Outcome> {
        self.outcomes[i]
    }

    async fn failure(&mut self, i: usize) -> Result<Option<StepFailure>, Infallible> {
        Ok(self.reports[i].as_ref().and_then(|r| r.error.clone()))
    }

    async fn failures(&mut self, range: std::ops::Range<usize>) -> Result<Vec<(String, StepFailure)>, Infallible> {
        let failed = self.reports[range].iter().flatten().filter(|r| r.state == StepState::Failed);
        Ok(failed.filter_map(|r| Some((r.id.clone(), r.error.clone()?))).collect())
    }

    fn step_ended(&mut self, i: usize, outcome: Outcome, output: Option<Option<Arc<Value>>>, event: Event) {
        let id = &self.plan.workflow.steps[i].id;
        if let Some(output) = output {
            self.outputs.insert(id.clone(), output);
        }
        if let Event::StepFinished { state, attempt, duration, fuel_used, error, reason, .. } = &event {
            // The report's output is filled from `outputs` when the run
            // ends (see `dispatch`): one copy of each output lives through
            // the run.
            let (state, attempts, duration, fuel_used) = (*state, *attempt, *duration, *fuel_used);
            self.reports[i] = Some(StepReport { id: id.clone(), state, attempts, output: None, error: error.clone(), reason: reason.clone(), fuel_used, duration });
        }
        self.ended_at[i] = Some(self.barriers);
        self.sink.emit(&event);
        self.outcomes[i] = Some(outcome);
    }

    async fn kept(&mut self, i: usize) -> Result<Option<Kept>, Infallible> {
        let id = &self.plan.workflow.steps[i].id;
        Ok(match self.restored.get(id) {
            Some(output) => Some(Kept::Output(output.clone())),
            None => self.ended.get(id).cloned().map(Kept::Ended),
        })
    }

    fn step_restored(&mut self, i: usize, outcome: Outcome, output: Arc<Value>) {
        let id = &self.plan.workflow.steps[i].id;
        self.outputs.insert(id.clone(), Some(output));
        self.reports[i] = Some(StepReport {
            id: id.clone(),
            state: StepState::Succeeded,
            attempts: 0,
            // Filled from `outputs` when the run ends (see `dispatch`).
            output: None,
            error: None,
            reason: Some("restored: it succeeded in an earlier attempt of this run".into()),
            fuel_used: 0,
            duration: Duration::ZERO,
        });
        self.outcomes[i] = Some(outcome);
    }

    async fn count_down(&mut self, i: usize) -> Result<Vec<usize>, Infallible> {
        let mut ready = Vec::new();
        for &d in &self.plan.dependents[i] {
            self.waiting[d] -= 1;
            if self.waiting[d] == 0 {
                ready.push(d);
            }
        }
        Ok(ready)
    }

    fn emit(&mut self, event: Event) {
        self.sink.emit(&event);
    }

    async fn in_flight(&mut self) -> Result<bool, Infallible> {
        Ok(self.running > 0 || self.holds_waiting())
    }

    async fn recorded_wake(&mut self, i: usize) -> Result<Option<Option<jiff::Timestamp>>, Infallible> {
        Ok(self.waits.get(&self.plan.workflow.steps[i].id).copied())
    }

    fn finally_begins(&mut self, _: Option<Stop>, _: &Value) -> bool {
        let p = &mut self.phase;
        // A cancel that came before does not reach them; one that comes
        // while they run does, as does `skip_finally`.
        p.current = match p.run.is_cancelled() {
            true => p.skip_finally.clone(),
            false => p.ours.insert(either(&p.run, &p.skip_finally)).clone(),
        };
        p.steps = p.current.child_token();
        p.deadline = Some(tokio::time::Instant::now() + p.finally_timeout);
        self.flush_all = true;
        p.current.is_cancelled()
    }

    async fn elapsed(&mut self) -> Result<Duration, Infallible> {
        Ok(self.started.elapsed())
    }

    /// Asked as the run begins: nothing was decided yet.
    async fn lazy_steps(&mut self) -> Result<Lazy, Infallible> {
        Ok(Lazy::new(self.plan.workflow.steps.len()))
    }
}

/// Runs a step: one input, or every `forEach` item.
async fn run_step(ctx: &Arc<Ctx>, step: usize, work: Work, sink: &Arc<dyn EventSink>, cancel: &CancellationToken) -> StepEnd {
    let (mut end, input) = match work {
        Work::One(input) => (attempts(ctx, step, input.clone(), None, sink, cancel).await, input),
        Work::Each { inputs, concurrency } => {
            // Each item's input is copied as it starts, and dropped when it
            // ends: one copy of the list lives through the step, not two.
            let end = for_each(ctx, step, &inputs, concurrency, sink, cancel).await;
            (end, Value::Array(inputs))
        }
    };
    end.tally.input = Some(input);
    end
}

async fn for_each(ctx: &Arc<Ctx>, step: usize, inputs: &[Value], concurrency: usize, sink: &Arc<dyn EventSink>, cancel: &CancellationToken) -> StepEnd {
    let decl = &ctx.prepared.plan.workflow.steps[step];
    let started = Instant::now();
    let mut items = Items::new(inputs.len());
    let mut total = Tally::default();
    let mut set = tokio::task::JoinSet::new();
    let mut pending = inputs.iter().cloned().enumerate();
    loop {
        while items.may_start() && set.len() < concurrency.max(1) {
            let Some((index, input)) = pending.next() else { break };
            let (ctx, sink, cancel) = (ctx.clone(), sink.clone(), cancel.clone());
            set.spawn(async move { (index, attempts(&ctx, step, input, Some(index), &sink, &cancel).await) });
        }
        let Some(joined) = set.join_next().await else { break };
        let (index, StepEnd { result, tally }) = joined.expect("step tasks do not panic");
        total.attempts += tally.attempts;
        total.fuel_used += tally.fuel_used;
        total.log.lines.extend(tally.log.lines);
        total.log.dropped_bytes += tally.log.dropped_bytes;
        items.record(decl, index, result);
    }
    total.duration = started.elapsed();
    total.items = Some(items.counts());
    StepEnd { result: items.result(), tally: total }
}

/// Runs attempts of one input until one succeeds, a failure is final, or
/// the retry policy runs out.
/// A step's own task emits its `StepStarted` and `StepRetrying` events:
/// a message to the dispatcher would wake it on this worker, where it
/// would wait (in the worker's LIFO slot, which no other worker steals
/// from) until this step yields, while the other core idles.
async fn attempts(ctx: &Ctx, step: usize, input: Value, item: Option<usize>, sink: &Arc<dyn EventSink>, cancel: &CancellationToken) -> StepEnd {
    let wf = &ctx.prepared.plan.workflow;
    let decl = &wf.steps[step];
    let settings = decl.settings.or(&wf.defaults);
    let started = Instant::now();
    let mut fuel_used = 0;
    let mut attempt = 0;
    loop {
        attempt += 1;
        sink.emit(&Event::StepStarted { run_id: ctx.run_id.clone(), step: decl.id.clone(), attempt, item, worker: None });
        // Each line as the step writes it, for the run store's followers.
        let (events, run_id, id) = (sink.clone(), ctx.run_id.clone(), decl.id.clone());
        let follow: Follow = Arc::new(move |seq, line| {
            events.emit(&Event::StepLogLine { run_id: run_id.clone(), step: id.clone(), attempt, item, seq, line: line.clone() })
        });
        let services = following(ctx.services.clone(), Some(follow));
        let Attempted { result, fuel_used: fuel, log, cached } = execute(ctx, step, &input, Which { item, attempt }, &settings, services, cancel).await;
        fuel_used += fuel;
        // Only the last attempt's log is kept, and counted against the run's `log` quota.
        let end = |result| StepEnd {
            result,
            tally: Tally {
                last_fuel: Some(fuel),
                cached: cached.clone().filter(|_| item.is_none()),
                attempts: attempt,
                fuel_used,
                duration: started.elapsed(),
                log: ctx.services.keep_log(log),
                ..Tally::default()
            },
        };
        let retry = match &result {
            Err(f) => core::retry_after(decl, wf, f, attempt, cancel.is_cancelled()),
            Ok(_) => None,
        };
        match (result, retry) {
            (Err(f), Some(delay)) => {
                sink.emit(&Event::StepRetrying { run_id: ctx.run_id.clone(), step: decl.id.clone(), attempt, item, error: f, delay, fuel_used: fuel });
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => {
                        return end(Err(StepFailure::new(FailureKind::Cancelled, "cancelled while waiting to retry")));
                    }
                }
            }
            (result, _) => return end(result),
        }
    }
}

/// How one attempt of a step ended.
pub struct Attempted {
    /// Its output, or why it failed.
    pub result: Result<Value, StepFailure>,
    /// The fuel it used.
    pub fuel_used: u64,
    /// Its log.
    pub log: StepLog,
    /// Set when a stored result was reused (`cache:`): the run that stored it.
    pub cached: Option<String>,
}

/// Which attempt of a step (of which `forEach` item) an execution is: a
/// nested run's id says it, so a tracer puts it under that attempt. A
/// worker's attempts do not say (item none, attempt 0).
#[derive(Debug, Clone, Copy, Default)]
struct Which {
    item: Option<usize>,
    attempt: u32,
}

/// Who follows an attempt's log: called with each line's index in the
/// attempt's log and the line, on the step's thread as it writes it (see
/// [`HostServices::log_line`]), so it must not block.
pub type Follow = Arc<dyn Fn(usize, &crate::sandbox::LogLine) + Send + Sync>;

/// A run's services for one attempt, whose log lines go to a [`Follow`].
struct Following {
    services: Arc<dyn HostServices>,
    follow: Follow,
}

fn following(services: Arc<dyn HostServices>, follow: Option<Follow>) -> Arc<dyn HostServices> {
    match follow {
        Some(follow) => Arc::new(Following { services, follow }),
        None => services,
    }
}

#[async_trait::async_trait]
impl HostServices for Following {
    async fn state_get(&self, key: &str) -> Result<Option<String>, crate::sandbox::HostError> {
        self.services.state_get(key).await
    }
    async fn state_set(&self, key: &str, json: &str) -> Result<(), crate::sandbox::HostError> {
        self.services.state_set(key, json).await
    }
    async fn blob_put(&self, id: &str, data: &[u8]) -> Result<(), crate::sandbox::HostError> {
        self.services.blob_put(id, data).await
    }
    async fn blob_get(&self, id: &str) -> Result<Option<Vec<u8>>, crate::sandbox::HostError> {
        self.services.blob_get(id).await
    }
    async fn state_usage(&self) -> Result<(u64, u64), crate::sandbox::HostError> {
        self.services.state_usage().await
    }
    async fn state_set_within(
        &self,
        key: &str,
        json: &str,
        max_keys: u64,
        max_bytes: u64,
    ) -> Result<Option<Result<(), crate::sandbox::QuotaKind>>, crate::sandbox::HostError> {
        self.services.state_set_within(key, json, max_keys, max_bytes).await
    }
    async fn blob_put_within(
        &self,
        id: &str,
        data: &[u8],
        max_blobs: u64,
        max_bytes: u64,
    ) -> Result<Option<Result<(), crate::sandbox::QuotaKind>>, crate::sandbox::HostError> {
        self.services.blob_put_within(id, data, max_blobs, max_bytes).await
    }
    fn log_line(&self, seq: usize, line: &crate::sandbox::LogLine) {
        (self.follow)(seq, line)
    }
}

/// One attempt of a step's target; with `cache:`, a stored result when
/// there is one. A component runs with `services`: the run's, or the run's
/// with its log [`Following`].
async fn execute(
    ctx: &Ctx,
    step: usize,
    input: &Value,
    which: Which,
    settings: &crate::workflow::StepSettings,
    services: Arc<dyn HostServices>,
    cancel: &CancellationToken,
) -> Attempted {
    let ran = |(result, fuel_used, log)| Attempted { result, fuel_used, log, cached: None };
    let wf = &ctx.prepared.plan.workflow;
    let decl = &wf.steps[step];
    match &decl.target {
        Target::Named(_) | Target::Path(_) => {
            let c = ctx.prepared.components[step].as_ref().expect("prepare loads every component step");
            let memo = match settings.cache.as_ref().zip(ctx.memo.as_ref()) {
                None => None,
                Some((spec, store)) => match memo::memo_key(c, input, spec, &ctx.secrets) {
                    Ok(key) => Some((spec, store, key)),
                    Err(f) => return ran((Err(f), 0, StepLog::default())),
                },
            };
            if let Some((_, store, key)) = &memo
                && let Some((output, run)) = memo::recall(store.as_ref(), key, &ctx.secrets).await
            {
                return Attempted { result: Ok(output), fuel_used: 0, log: StepLog::default(), cached: Some(run) };
            }
            let d = Limits::default();
            let limits = Limits {
                fuel: settings.fuel.unwrap_or(d.fuel),
                timeout: settings.timeout.unwrap_or(d.timeout),
                memory: settings.memory.unwrap_or(d.memory),
                quota: settings.quota.resolve(d.quota),
                ..d
            };
            let job = Job { component: c.sha256.clone(), input: input.clone(), config: c.config.clone(), limits, grants: c.grants() };
            let outcome = ctx.runner.run(job, services, cancel).await;
            if let (Some((spec, store, key)), Ok(output)) = (memo, &outcome.result) {
                let kept = memo::Kept { key, workflow: &wf.name, step: &decl.id, component: &c.sha256, run_id: &ctx.run_id, ttl: spec.ttl };
                memo::keep(store.as_ref(), kept, output, &ctx.secrets).await;
            }
            ran((outcome.result, outcome.fuel_used, outcome.log))
        }
        Target::Builtin(b) => {
            let result = match b {
                Builtin::PutBlob => builtin::put_blob(input, ctx.services.as_ref()).await,
                Builtin::GetBlob => builtin::get_blob(input, ctx.services.as_ref()).await,
                Builtin::LoadFile => {
                    let granted: Vec<std::path::PathBuf> =
                        wf.components.values().flat_map(|c| c.grants.dirs.iter().map(|d| d.host.clone())).collect();
                    builtin::load_file(input, &wf.dir, &granted)
                }
                Builtin::Eval => eval_builtin(ctx, decl, input, which, cancel).await,
                // Both drivers end these themselves (the dispatcher when it
                // wakes them, a worker when it claims their job, with what
                // was recorded), so neither comes here; answered as a step
                // that woke with nothing recorded.
                Builtin::Sleep | Builtin::Signal | Builtin::Approval => {
                    let kind = core::WaitKind::of_builtin(*b).expect("a builtin that waits");
                    core::woken(kind, input, None, None)
                }
            };
            ran((result, 0, StepLog::default()))
        }
        Target::Workflow(path) => {
            let nested = ctx.prepared.nested[step].clone().expect("prepare loads every nested workflow");
            let report = nested_run(ctx, (&decl.id, which), nested, input.clone(), cancel.clone()).await;
            ran((nested_result(&path.display().to_string(), report), 0, StepLog::default()))
        }
    }
}

/// A nested run's outcome as a step result.
fn nested_result(what: &str, report: RunReport) -> Result<Value, StepFailure> {
    match report.state {
        RunState::Completed => Ok(report.output.unwrap_or(Value::Null)),
        RunState::Cancelled => Err(StepFailure::new(FailureKind::Cancelled, format!("nested workflow {what} was cancelled"))),
        _ => {
            let failed = report.steps.iter().find(|s| s.state == StepState::Failed && s.error.is_some());
            let kind = failed.and_then(|s| s.error.as_ref()).map_or(FailureKind::Component, |e| e.kind);
            let message = format!("nested workflow {what} failed: {}", report.error.unwrap_or_default());
            Err(StepFailure { kind, message, retryable: false })
        }
    }
}

/// `/builtin/eval`: `{workflow, input}`, the workflow inline or as a blob id.
async fn eval_builtin(ctx: &Ctx, decl: &StepDecl, input: &Value, which: Which, cancel: &CancellationToken) -> Result<Value, StepFailure> {
    let fail = |m: String| StepFailure::component(m, false);
    if ctx.depth >= MAX_NESTING {
        return Err(fail(format!("/builtin/eval: nested runs go deeper than {MAX_NESTING}")));
    }
    let definition = match input.get("workflow") {
        Some(Value::String(id)) => {
            let bytes = ctx
                .services
                .blob_get(id)
                .await
                .map_err(|e| fail(format!("/builtin/eval: {e}")))?
                .ok_or_else(|| fail(format!("/builtin/eval: no blob with id {id}")))?;
            serde_json::from_slice::<Value>(&bytes).map_err(|e| fail(format!("/builtin/eval: blob {id} is not a workflow: {e}")))?
        }
        Some(v @ Value::Object(_)) => v.clone(),
        _ => return Err(fail("/builtin/eval needs `workflow`: an inline workflow (use `$literal`) or a blob id".into())),
    };
    let text = serde_yaml::to_string(&definition).map_err(|e| fail(format!("/builtin/eval: {e}")))?;
    let path = ctx.prepared.plan.workflow.dir.join(format!("<eval in step {}>.yaml", decl.id));
    let runner = ctx.runner.clone();
    let prepared = tokio::task::block_in_place(|| {
        let wf = crate::workflow::load_str(&path, &text)?;
        let plan = crate::plan::Plan::new(wf)?;
        prepare(plan, runner.as_ref())
    })
    .map_err(|d| fail(format!("/builtin/eval: the workflow is invalid: {}", d.problems.iter().map(|p| p.message.clone()).collect::<Vec<_>>().join("; "))))?;
    let nested_input = input.get("input").cloned().unwrap_or(Value::Null);
    check_input(&prepared.plan.workflow, &nested_input).map_err(|e| fail(format!("/builtin/eval: {e}")))?;
    let report = nested_run(ctx, (&decl.id, which), Arc::new(prepared), nested_input, cancel.clone()).await;
    nested_result("(eval)", report)
}

#[cfg(test)]
mod tests {
    use super::steps_at_once;
    use crate::sandbox::SandboxConfig;

    fn workflow(text: &str) -> crate::workflow::Workflow {
        crate::workflow::load_str(std::path::Path::new("w.yaml"), text).expect("a valid workflow")
    }

    #[test]
    fn steps_at_once_is_the_limit_times_the_widest_step() {
        let wide = "concurrency: 3\ncomponents: { c: { path: c.wasm } }\nsteps:\n  - { id: a, component: c }\n  - { id: b, component: c }\n";
        assert_eq!(steps_at_once(&workflow(wide), None), Some(3));
        assert_eq!(steps_at_once(&workflow(wide), Some(5)), Some(5), "--concurrency overrides the file");
        assert_eq!(steps_at_once(&workflow(wide), Some(0)), Some(1));

        // A forEach step runs its items `concurrency` at once, by default the run's limit.
        let each = "concurrency: 3\ncomponents: { c: { path: c.wasm } }\nsteps:\n  - { id: a, component: c, forEach: '{{ input }}', concurrency: 10 }\n  - { id: b, component: c, forEach: '{{ input }}' }\n";
        assert_eq!(steps_at_once(&workflow(each), None), Some(30));
        let each = "concurrency: 4\ncomponents: { c: { path: c.wasm } }\nsteps:\n  - { id: b, component: c, forEach: '{{ input }}' }\n";
        assert_eq!(steps_at_once(&workflow(each), None), Some(16));

        // Builtins run in the host: no instance.
        let builtins = "steps:\n  - { id: a, component: /builtin/eval, input: { expr: '1' } }\n";
        assert_eq!(steps_at_once(&workflow(builtins), Some(8)), Some(0));

        // A nested workflow has its own limit: the file alone cannot tell.
        let nested = "steps:\n  - { id: a, workflow: other.yaml }\n";
        assert_eq!(steps_at_once(&workflow(nested), Some(2)), None);
    }

    #[test]
    fn the_pool_holds_twice_the_steps_between_4_and_256_slots() {
        assert_eq!(SandboxConfig::pool_for(Some(0)), 4);
        assert_eq!(SandboxConfig::pool_for(Some(1)), 4);
        assert_eq!(SandboxConfig::pool_for(Some(3)), 6);
        assert_eq!(SandboxConfig::pool_for(Some(100)), 200);
        assert_eq!(SandboxConfig::pool_for(Some(128)), 256);
        assert_eq!(SandboxConfig::pool_for(Some(usize::MAX)), 256);
        assert_eq!(SandboxConfig::pool_for(None), 256, "a run whose bound is not known gets the full pool");
    }
}
