//! Runs recorded in a run store: start one, resume one. The command line,
//! `serve` and workers all go through here; the scheduler
//! ([`crate::exec`]) knows nothing of the store beyond its events.

use crate::exec::{Ending, Event, EventSink, Executor, Prepared, RunOptions, RunReport, RunState, SinkError, StepRunner, StepState, new_run_id, unmask};
use crate::failure::{FailureKind, StepFailure};
use crate::sandbox::CancellationToken;
use crate::store::{NewRun, RunRecord, RunStore, StoreError, StoreMailbox, StoreServices, StoreSink};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How a recorded run is run.
#[derive(Clone, Default)]
pub struct Settings {
    /// Overrides the workflow's `concurrency`.
    pub concurrency: Option<usize>,
    /// Values for `secrets.NAME`. Never written to the store.
    pub secrets: BTreeMap<String, String>,
    /// Interrupts the `finally` steps (see [`RunOptions::skip_finally`]).
    pub skip_finally: CancellationToken,
    /// `--target`, recorded with a new run (the prepared plan is already
    /// limited to them: see [`Prepared::target`]).
    pub targets: Vec<String>,
    /// For [`Recorder::resume`]: which recorded outputs are kept.
    pub rerun: Rerun,
    /// The run's variables (`$variable`). Not recorded, like secrets.
    pub variables: Value,
    /// `--otlp`: where the run's trace goes.
    pub otlp: Option<crate::trace::Endpoint>,
    /// What started the run (`run.trigger`, `run.scheduled_time`).
    pub trigger: crate::exec::RunTrigger,
}

/// What a new attempt of a recorded run runs again.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rerun {
    /// `sandflow resume`: every step that did not succeed.
    #[default]
    Resume,
    /// `sandflow retry [--from STEP]`: as `Resume`, and also `STEP` and
    /// every step downstream of it; `finally` steps always run again.
    Retry {
        /// The step to run again with everything downstream of it.
        from: Option<String>,
    },
}

/// Where runs are recorded and how their steps run.
#[derive(Clone)]
pub struct Recorder {
    /// Where runs are recorded.
    pub store: Arc<dyn RunStore>,
    /// What runs each step (the [`crate::sandbox::Sandbox`] in sandflow).
    pub runner: Arc<dyn StepRunner>,
}

/// Why a run could not be resumed.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "{file} changed since run {run} started (its SHA-256 was {sha256}); resuming would mix two versions of the workflow: start a new run instead"
    )]
    /// The workflow file is not what the run started with.
    Changed {
        /// The workflow file.
        file: String,
        /// The run's id.
        run: String,
        /// The SHA-256 the run recorded.
        sha256: String,
    },
    /// `--from` names no step of the workflow.
    #[error("--from: {0}")]
    From(String),
}

impl Recorder {
    /// Records a new run of `prepared` (read from `file`) and runs it to
    /// its end; `display` sees every event after the store has it.
    pub async fn start(
        &self,
        prepared: Arc<Prepared>,
        file: &Path,
        input: Value,
        settings: Settings,
        display: Arc<dyn EventSink>,
        cancel: CancellationToken,
    ) -> Result<RunReport, StoreError> {
        let wf = &prepared.plan.workflow;
        let run_id = new_run_id();
        let record = NewRun {
            id: run_id.clone(),
            workflow: wf.name.clone(),
            file: file.display().to_string(),
            sha256: wf.sha256.clone(),
            input: input.clone(),
            targets: settings.targets.clone(),
            text: Some(wf.text.clone()),
        };
        self.store.begin_run(&record).await?;
        Ok(self.run_begun(prepared, run_id, input, settings, display, cancel).await)
    }

    /// Runs to its end a run of `prepared` whose record was begun (by
    /// [`Recorder::start`], or by a schedule's tick in the transaction
    /// that recorded the tick).
    pub async fn run_begun(
        &self,
        prepared: Arc<Prepared>,
        run_id: String,
        input: Value,
        settings: Settings,
        display: Arc<dyn EventSink>,
        cancel: CancellationToken,
    ) -> RunReport {
        let options = RunOptions {
            run_id: run_id.clone(),
            concurrency: settings.concurrency,
            secrets: settings.secrets,
            services: Arc::new(StoreServices { store: self.store.clone(), run_id }),
            skip_finally: settings.skip_finally,
            memo: Some(self.store.clone()),
            variables: settings.variables,
            mailbox: Some(Arc::new(StoreMailbox(self.store.clone()))),
            trigger: settings.trigger,
            ..RunOptions::default()
        };
        self.execute(prepared, input, options, display, settings.otlp, cancel).await
    }

    /// Continues a recorded run that did not complete: steps that
    /// succeeded keep their recorded outputs (with the current values of
    /// the secrets put back where they were masked) and do not run again.
    /// `prepared` must be the workflow the run started with.
    pub async fn resume(
        &self,
        prepared: Arc<Prepared>,
        record: &RunRecord,
        settings: Settings,
        display: Arc<dyn EventSink>,
        cancel: CancellationToken,
    ) -> Result<RunReport, ResumeError> {
        if prepared.plan.workflow.sha256 != record.sha256 {
            return Err(ResumeError::Changed { file: record.file.clone(), run: record.id.clone(), sha256: record.sha256.clone() });
        }
        // Outputs were recorded with secrets masked: put the current values
        // back, or run again a step whose output cannot be rebuilt exactly.
        let again = rerun_steps(&prepared.plan, &settings.rerun).map_err(ResumeError::From)?;
        let restored = self
            .store
            .succeeded_outputs(&record.id)
            .await?
            .into_iter()
            .filter(|(step, _)| !again.contains(step))
            .filter_map(|(step, recorded)| match &recorded.secrets {
                None => Some((step, recorded.output)),
                Some(spans) => unmask(&recorded.output, spans, &settings.secrets).map(|v| (step, v)),
            })
            .collect();
        let ended = if settings.rerun == Rerun::Resume { ended_in_finally(&prepared.plan, record, &restored) } else { BTreeMap::new() };
        let attempt = self.store.resume_run(&record.id).await?;
        let options = RunOptions {
            run_id: record.id.clone(),
            concurrency: settings.concurrency,
            secrets: settings.secrets,
            services: Arc::new(StoreServices { store: self.store.clone(), run_id: record.id.clone() }),
            restored,
            attempt,
            skip_finally: settings.skip_finally,
            memo: Some(self.store.clone()),
            variables: settings.variables,
            ended,
            nested_events: None,
            // A retry is one; a resume goes on with what started the run.
            trigger: match (&settings.rerun, &record.trigger) {
                (Rerun::Retry { .. }, _) => crate::exec::RunTrigger { kind: Some("retry".into()), scheduled_time: None },
                (Rerun::Resume, Some(t)) => crate::exec::RunTrigger { kind: Some(t.kind.clone()), scheduled_time: t.scheduled_time.clone() },
                (Rerun::Resume, None) => crate::exec::RunTrigger::default(),
            },
            waits: recorded_waits(record),
            mailbox: Some(Arc::new(StoreMailbox(self.store.clone()))),
            hand_off: CancellationToken::new(),
        };
        Ok(self.execute(prepared, record.input.clone(), options, display, settings.otlp, cancel).await)
    }

    async fn execute(
        &self,
        prepared: Arc<Prepared>,
        input: Value,
        mut options: RunOptions,
        display: Arc<dyn EventSink>,
        otlp: Option<crate::trace::Endpoint>,
        cancel: CancellationToken,
    ) -> RunReport {
        let mut sinks: Vec<Arc<dyn EventSink>> = vec![Arc::new(StoreSink::new(self.store.clone())), display];
        // `--otlp`: the tracer sees the run's events and its nested runs'.
        if let Some(endpoint) = otlp {
            let tracer: Arc<dyn EventSink> = Arc::new(crate::trace::TraceSink::new(prepared.clone(), endpoint));
            options.nested_events = Some(tracer.clone());
            sinks.push(tracer);
        }
        let sink = Arc::new(Tee(sinks));
        let watcher = tokio::spawn(watch_cancel(self.store.clone(), options.run_id.clone(), cancel.clone(), options.skip_finally.clone(), true));
        let report = Executor::new(self.runner.clone(), sink).run(prepared, input, options, cancel).await;
        watcher.abort();
        report
    }
}

/// The wake times of the steps a run's record says wait: a resumed run
/// wakes them when they said (at once if that time passed), not later.
pub fn recorded_waits(record: &RunRecord) -> BTreeMap<String, Option<jiff::Timestamp>> {
    let waiting = record.steps.iter().filter(|s| s.state == StepState::Waiting.as_str());
    waiting.map(|s| (s.step.clone(), s.wake_at.as_deref().and_then(|t| t.parse().ok()))).collect()
}

/// How often a running run looks for `sandflow cancel`.
pub const CANCEL_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// Cancels the run when the store says someone asked to (`sandflow
/// cancel`, from any process or machine). A store that cannot answer is
/// asked again at the next tick: it does not stop the run.
/// `now`: the first look is at once (else a poll later: the caller looked).
pub(crate) async fn watch_cancel(store: Arc<dyn RunStore>, run_id: String, cancel: CancellationToken, skip_finally: CancellationToken, now: bool) {
    let first = tokio::time::Instant::now() + if now { std::time::Duration::ZERO } else { CANCEL_POLL };
    let mut tick = tokio::time::interval_at(first, CANCEL_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match store.take_cancel_request(&run_id).await {
            // The first request cancels the run (its `finally` steps still
            // run); a second interrupts them, as a second Ctrl-C does.
            Ok(true) if !cancel.is_cancelled() => {
                tracing::info!("run {run_id}: cancel requested through the run store");
                cancel.cancel();
            }
            Ok(true) => {
                tracing::info!("run {run_id}: cancel requested again: its `finally` steps are interrupted");
                skip_finally.cancel();
                return;
            }
            Ok(false) => {}
            Err(e) => tracing::debug!("run {run_id}: cannot read the cancel flag: {e}"),
        }
    }
}

/// Sends every event to each sink in turn (the store first, so a step is
/// committed before it is shown).
pub struct Tee(pub Vec<Arc<dyn EventSink>>);

#[async_trait::async_trait]
impl EventSink for Tee {
    fn emit(&self, event: &Event) {
        for sink in &self.0 {
            sink.emit(event);
        }
    }

    async fn barrier(&self) -> Result<(), SinkError> {
        for sink in &self.0 {
            sink.barrier().await?;
        }
        Ok(())
    }
}

/// For a run killed while its `finally` steps ran (every step of `steps`
/// has ended, the run has not): how each step that ended without success
/// ended, so that `resume` runs only what had not ended. Empty for any
/// other run, or when a succeeded step of `steps` cannot be restored.
fn ended_in_finally(plan: &crate::plan::Plan, record: &RunRecord, restored: &BTreeMap<String, Value>) -> BTreeMap<String, Ending> {
    let steps = &plan.workflow.steps;
    if record.status != RunState::Running.as_str() || plan.main == steps.len() {
        return BTreeMap::new();
    }
    let recorded: BTreeMap<&str, Ending> = record
        .steps
        .iter()
        .filter_map(|r| {
            let state = StepState::from_name(&r.state)?;
            let failure = r.error_kind.as_deref().and_then(FailureKind::from_name).map(|kind| StepFailure {
                kind,
                message: r.error_message.clone().unwrap_or_default(),
                retryable: false,
            });
            Some((r.step.as_str(), Ending::recorded(state, failure, r.reason.clone())?))
        })
        .collect();
    let main_ended = steps[..plan.main].iter().all(|s| restored.contains_key(&s.id) || recorded.contains_key(s.id.as_str()));
    if !main_ended {
        return BTreeMap::new();
    }
    recorded.into_iter().map(|(id, e)| (id.to_string(), e)).collect()
}

/// The steps `rerun` runs again even if they succeeded: for a retry, the
/// `finally` steps, and `--from` STEP with every step downstream of it.
pub fn rerun_steps(plan: &crate::plan::Plan, rerun: &Rerun) -> Result<std::collections::BTreeSet<String>, String> {
    let Rerun::Retry { from } = rerun else { return Ok(Default::default()) };
    let steps = &plan.workflow.steps;
    let mut again: std::collections::BTreeSet<String> = steps[plan.main..].iter().map(|s| s.id.clone()).collect();
    if let Some(from) = from {
        let Some(&start) = plan.index.get(from.as_str()) else {
            let hint = crate::workflow::diagnostic::nearest(from, steps.iter().map(|s| s.id.as_str()))
                .map(|n| format!(" (did you mean `{n}`?)"))
                .unwrap_or_default();
            return Err(format!("the run's workflow has no step `{from}`{hint}"));
        };
        let mut stack = vec![start];
        while let Some(i) = stack.pop() {
            if again.insert(steps[i].id.clone()) || i == start {
                stack.extend(&plan.dependents[i]);
            }
        }
    }
    Ok(again)
}

/// Loads the workflow at `file` to be submitted to workers: parsed,
/// planned and every component checked without compiling it (workers
/// compile what they run), with every file it read (the workflow, nested
/// workflows, components), which [`submit`] records with the run so that
/// each worker runs exactly these bytes. `components` is a StepFlow
/// `--components` file. Blocks while it reads and checks: call it from
/// `spawn_blocking` in async code.
pub fn load_for_submit(file: &Path, components: Option<&Path>) -> Result<(Prepared, crate::store::queue::RunFiles), crate::workflow::Diagnostics> {
    let files = crate::exec::Recording { inner: crate::exec::Disk, seen: Default::default() };
    let prepared = crate::exec::load_from_with(file, &crate::exec::ComponentCheck::default(), &files, components)?;
    Ok((prepared, files.seen.into_inner().unwrap_or_else(|e| e.into_inner())))
}

/// Queues a run of `prepared` (read from `file`, with `files` as read) in a
/// PostgreSQL store for workers; returns its id at once.
pub async fn submit(
    store: &crate::store::PgStore,
    prepared: &Prepared,
    file: &Path,
    files: &crate::store::queue::RunFiles,
    input: Value,
    targets: &[String],
    binding: &crate::store::queue::Binding,
) -> Result<String, StoreError> {
    let record = queued_run(prepared, file, input, targets);
    store.submit(&record, files, binding).await?;
    Ok(record.id)
}

/// [`submit`] for a run whose files the store keeps already for its
/// namespace (`files`: each one's path and SHA-256): what `serve` queues
/// after [`PgStore::files_by_hash`](crate::store::PgStore::files_by_hash)
/// found them all.
pub async fn submit_held(
    store: &crate::store::PgStore,
    prepared: &Prepared,
    file: &Path,
    files: &[(String, String)],
    input: Value,
    targets: &[String],
    binding: &crate::store::queue::Binding,
) -> Result<String, StoreError> {
    let record = queued_run(prepared, file, input, targets);
    store.submit_held(&record, files, binding).await?;
    Ok(record.id)
}

/// The record of a run of `prepared` to queue.
fn queued_run(prepared: &Prepared, file: &Path, input: Value, targets: &[String]) -> NewRun {
    let wf = &prepared.plan.workflow;
    NewRun {
        id: new_run_id(),
        workflow: wf.name.clone(),
        file: file.display().to_string(),
        sha256: wf.sha256.clone(),
        input,
        targets: targets.to_vec(),
        // Recorded among the run's files.
        text: None,
    }
}

/// Why a run that workers ran cannot be queued again.
#[derive(Debug, thiserror::Error)]
pub enum QueueAgainError {
    /// It is running: it must be cancelled first.
    #[error("run {0} is running: cancel it first")]
    Running(String),
    /// Its workflow cannot be had, or `--from` names no step of it.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A new attempt (`resume`, `retry [--from STEP]`) of run `record`, which
/// workers ran and which has ended: checked against its recorded workflow,
/// then queued for workers; returns the attempt's number. `concurrency`
/// and `vars`, when given, replace what the run was bound to.
pub async fn queue_again(
    store: &crate::store::PgStore,
    record: &crate::store::RunRecord,
    rerun: &Rerun,
    concurrency: Option<usize>,
    vars: Option<&Value>,
) -> Result<u32, QueueAgainError> {
    let id = &record.id;
    let plan = recorded_plan(store, record).await.map_err(|e| QueueAgainError::Invalid(format!("run {id} cannot run again: {e}")))?;
    rerun_steps(&plan, rerun).map_err(|e| QueueAgainError::Invalid(format!("--from: {e}")))?;
    let vars = vars.filter(|v| v.as_object().is_some_and(|v| !v.is_empty()));
    store.requeue(id, rerun, concurrency, vars).await?.ok_or_else(|| QueueAgainError::Running(id.clone()))
}

/// The plan of the workflow run `run` ran, `--target` applied: from the
/// text the store recorded with it (by SHA-256), whatever became of its
/// file since; for a run recorded before runs kept their workflow, from its
/// file if that is unchanged. The error says why it cannot be had.
pub async fn recorded_plan(store: &dyn crate::store::RunStore, run: &crate::store::RunRecord) -> Result<crate::plan::Plan, String> {
    let recorded = store.file(&run.sha256).await.map_err(|e| e.to_string())?;
    let (file, sha256, targets) = (PathBuf::from(&run.file), run.sha256.clone(), run.targets.clone());
    tokio::task::spawn_blocking(move || {
        let problems = |d: crate::workflow::Diagnostics| d.problems.iter().map(|p| p.message.clone()).collect::<Vec<_>>().join("; ");
        let plan = match recorded {
            Some(bytes) => {
                let wf = crate::workflow::load_str(&file, &String::from_utf8_lossy(&bytes))
                    .map_err(|d| format!("the workflow this run recorded no longer loads: {}", problems(d)))?;
                crate::plan::Plan::new(wf).map_err(|d| format!("the workflow this run recorded no longer plans: {}", problems(d)))?
            }
            None => {
                let older = "this run was recorded before sandflow kept each run's workflow";
                let plan = crate::plan::Plan::load(&file).map_err(|_| format!("{older}, and {} cannot be read as it was", file.display()))?;
                if plan.workflow.sha256 != sha256 {
                    return Err(format!("{older}, and {} has changed since", file.display()));
                }
                plan
            }
        };
        match targets.is_empty() {
            true => Ok(plan),
            false => plan.targeted(&targets).map(|(plan, _)| plan),
        }
    })
    .await
    .map_err(|e| e.to_string())?
}

/// A run's DAG as SVG, each step coloured by its recorded state.
pub fn run_svg(plan: &crate::plan::Plan, run: &crate::store::RunRecord) -> String {
    let steps: std::collections::HashMap<&str, &crate::store::StepRecord> = run.steps.iter().map(|s| (s.step.as_str(), s)).collect();
    let record = |i: usize| steps.get(plan.workflow.steps[i].id.as_str()).copied();
    // Each step that ran: how long it took.
    let took = |i: usize| {
        let s = record(i).filter(|s| s.state != "running" && s.state != "skipped" && s.attempts > 0)?;
        Some(match s.duration_ms {
            ms if ms < 1.0 => "<1ms".to_string(),
            ms => crate::units::format_duration(std::time::Duration::from_secs_f64(ms / 1000.0)),
        })
    };
    plan.to_svg_noted(&|i| Some(record(i).map_or("pending", |s| s.state.as_str()).to_string()), &took)
}

/// How a followed run ended.
#[derive(Debug, Clone)]
pub struct Followed {
    /// How it ended.
    pub state: crate::exec::RunState,
    /// Secrets masked, as recorded.
    pub output: Option<Value>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
}

/// Shows a queued run's events to `display` as workers record them, from
/// the first, until the run ends (or `stop` fires: `None`). Any process may
/// follow any run; a store that cannot be reached is retried.
pub async fn follow(
    store: Arc<crate::store::PgStore>,
    run_id: &str,
    display: Arc<dyn EventSink>,
    stop: CancellationToken,
) -> Result<Option<Followed>, StoreError> {
    let wake = Arc::new(tokio::sync::Notify::new());
    let listening = CancellationToken::new();
    let notify = wake.clone();
    let listener = tokio::spawn(crate::store::queue::listen_with(
        store.clone(),
        crate::store::queue::EVENTS_CHANNEL,
        move |_: &str| notify.notify_one(),
        listening.clone(),
    ));
    let _stop_listening = listening.drop_guard();
    // The run's current attempt: a retried run's earlier attempts ended.
    let mut last = store.attempt_events(run_id).await?;
    let mut failures = 0u32;
    loop {
        match store.events_after(run_id, last).await {
            Ok(events) => {
                failures = 0;
                for (seq, event) in events {
                    last = seq;
                    display.emit(&event);
                    if let Event::RunFinished { state, output, error, .. } = event {
                        listener.abort();
                        return Ok(Some(Followed { state, output: output.map(Arc::unwrap_or_clone), error }));
                    }
                }
            }
            Err(e @ StoreError::Backend(_)) if failures < 30 => {
                failures += 1;
                tracing::warn!("following run {run_id}: {e}; retrying");
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            // Events come in bursts: read them together.
            _ = wake.notified() => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            _ = stop.cancelled() => {
                listener.abort();
                return Ok(None);
            }
        }
    }
}

/// A signal to a waiting step of a recorded run (`sandflow signal`, the
/// API, the web view's buttons).
#[derive(Debug, Clone)]
pub struct SignalRequest {
    /// The waiting step's id.
    pub step: String,
    /// The data: a signal step's output; an approval's
    /// `{approved, comment?}`.
    pub data: Value,
    /// Who sends it, as the step's output and record say.
    pub by: String,
    /// The names the sender goes by for an approval's `approvers` (its
    /// token's name and role); none: the store's own user, who may.
    pub names: Option<Vec<String>>,
}

/// Why a signal was not applied. Nothing was recorded.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The step is not waiting for a signal (it ended, or never waits for one).
    #[error("step `{step}` of run {run} is not waiting for a signal: {why}")]
    NotWaiting {
        /// The run's id.
        run: String,
        /// The step's id.
        step: String,
        /// Why not.
        why: String,
    },
    /// The data does not fit the step (its `schema`, an approval's form).
    #[error("step `{step}` of run {run} cannot take this signal: {why}")]
    Refused {
        /// The run's id.
        run: String,
        /// The step's id.
        step: String,
        /// What is wrong with the data.
        why: String,
    },
    /// The sender is none of an approval's `approvers`.
    #[error("step `{step}` of run {run} may be approved only by {approvers}; you are {names}")]
    NotApprover {
        /// The run's id.
        run: String,
        /// The step's id.
        step: String,
        /// Who may approve, as the step lists them.
        approvers: String,
        /// The names the sender goes by.
        names: String,
    },
    /// Another signal reached the step first.
    #[error("step `{step}` of run {run} was signalled already, by {by} at {at}: a step takes one signal")]
    Already {
        /// The run's id.
        run: String,
        /// The step's id.
        step: String,
        /// Who sent the first.
        by: String,
        /// When (RFC 3339).
        at: String,
    },
}

/// Sends `request` to a step of run `run_id` that waits for a signal or
/// an approval: checked against what the step said it takes, then
/// recorded once (a second signal is refused, saying who sent the first).
/// The process or worker that runs the step ends it with the signal.
pub async fn signal(store: &dyn RunStore, run_id: &str, request: SignalRequest) -> Result<crate::exec::core::Signal, SignalError> {
    use crate::exec::core::WaitKind;
    let record = store.run(run_id, crate::store::RunDetail::Full).await?;
    let (run, step) = (record.id.clone(), request.step.clone());
    let not_waiting = |why: String| SignalError::NotWaiting { run: run.clone(), step: step.clone(), why };
    if record.status != RunState::Running.as_str() {
        return Err(not_waiting(format!("the run is {}", record.status)));
    }
    let Some(row) = record.steps.iter().find(|s| s.step == step) else {
        return Err(not_waiting("it has not started (a step takes a signal once it waits: `sandflow runs show` says `waiting`)".into()));
    };
    // A signal already sent is said first: it is why the step may be
    // about to end.
    if let Some((_, first)) = store.signals(&run, std::slice::from_ref(&step)).await?.pop() {
        return Err(SignalError::Already { run, step, by: first.by, at: first.at });
    }
    if row.state != StepState::Waiting.as_str() {
        return Err(not_waiting(format!("it is {}", row.state)));
    }
    let kind = row.wait_kind.as_deref().and_then(WaitKind::from_name);
    let builtin = match kind {
        Some(WaitKind::Signal) => crate::workflow::Builtin::Signal,
        Some(WaitKind::Approval) => crate::workflow::Builtin::Approval,
        _ => {
            let until = row.wake_at.as_deref().map(|u| format!(" until {u}")).unwrap_or_default();
            return Err(not_waiting(format!("it waits for a time{until}, not a signal")));
        }
    };
    let input = row.input.clone().unwrap_or(Value::Null);
    let data = crate::workflow::wait::accept(builtin, &input, request.data).map_err(|why| SignalError::Refused { run: run.clone(), step: step.clone(), why })?;
    if let (crate::workflow::Builtin::Approval, Some(names)) = (builtin, &request.names) {
        let names_ref: Vec<&str> = names.iter().map(String::as_str).collect();
        if !crate::workflow::wait::may_approve(&input, &names_ref) {
            let list = |v: Vec<String>| v.join(", ");
            let approvers = input["approvers"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect();
            return Err(SignalError::NotApprover { run, step, approvers: list(approvers), names: list(names.clone()) });
        }
    }
    let signal = crate::exec::core::Signal { data, by: request.by, at: crate::store::now() };
    if store.put_signal(&run, &step, &signal).await? {
        return Ok(signal);
    }
    // Another signal, or the step's end, came in between.
    match store.signals(&run, std::slice::from_ref(&step)).await?.pop() {
        Some((_, first)) => Err(SignalError::Already { run, step, by: first.by, at: first.at }),
        None => Err(not_waiting("it ended meanwhile (its timeout, or a cancel)".into())),
    }
}

/// Applies one `KEY=VALUE` assignment (`--set a.b=value`, `--var`) to
/// `input`: VALUE is read as JSON, else taken as a string; a dotted KEY
/// makes the objects on its way. The error says what to write instead.
pub fn set_path(input: &mut Value, assignment: &str) -> Result<(), String> {
    let (key, raw) = assignment.split_once('=').ok_or_else(|| format!("--set `{assignment}`: write KEY=VALUE"))?;
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(format!("--set `{assignment}`: the key must be a name or a dotted path like `a.b`"));
    }
    let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
    let mut cur = input;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if !cur.is_object() {
            if cur.is_null() {
                *cur = Value::Object(serde_json::Map::new());
            } else {
                return Err(format!("--set `{assignment}`: `{}` is not an object", parts[..i].join(".")));
            }
        }
        let map = cur.as_object_mut().expect("made an object above");
        if i == parts.len() - 1 {
            map.insert(part.to_string(), value);
            return Ok(());
        }
        cur = map.entry(part.to_string()).or_insert(Value::Null);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::set_path;
    use serde_json::json;

    #[test]
    fn set_reads_json_values_and_nested_keys() {
        let mut v = json!({});
        for a in ["n=3", "ok=true", "list=[1]", "name=Ada Lovelace", "user.id=42", "user.tags=[\"a\"]", "empty="] {
            set_path(&mut v, a).unwrap();
        }
        assert_eq!(v, json!({"n": 3, "ok": true, "list": [1], "name": "Ada Lovelace", "user": {"id": 42, "tags": ["a"]}, "empty": ""}));
        assert!(set_path(&mut v, "n.x=1").unwrap_err().contains("`n` is not an object"));
        assert!(set_path(&mut v, "novalue").is_err());
        assert!(set_path(&mut v, "a..b=1").is_err());
    }
}
