//! One run's state machine, shared by every driver.
//!
//! A run's bookkeeping — how many steps are still open, which became
//! ready, how each one ended and what that does to the run (its stop), the
//! move from `steps` to `finally` steps, steps that never started, and the
//! run's end — lives here once. Where the facts are kept is a [`Ledger`]'s
//! business: in memory for a run in this process (the dispatcher in
//! [`super`]), or in PostgreSQL rows read and written inside the
//! transaction that records a result, for runs on workers
//! ([`crate::store::queue`]). The decisions themselves are [`core`]'s pure
//! functions.
//!
//! What stays with each driver is how work runs: the dispatcher runs a
//! step's attempts and `forEach` items in a task; workers run them as jobs
//! (both by [`core::retry_after`] and [`core::Items`]).

use super::core::{self, Decision, Ending, ItemCounts, Outcome, RunFacts, Stop, Verdict, Wait, Work};
use super::{Event, RunState, StepState};
use crate::expr::Outputs;
use crate::failure::StepFailure;
use crate::plan::Plan;
use crate::sandbox::StepLog;
use serde_json::Value;
use std::collections::VecDeque;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// Where a run's facts are kept, and where its events go. Reads may wait
/// (on a database); writes are buffered by the ledger as it likes.
pub trait Ledger: Send {
    /// Why a read or a write failed (a database's error).
    type Error: Send;

    /// Makes the outputs and outcomes of `steps` readable through
    /// [`Ledger::outputs`] and [`Ledger::outcome`].
    fn load(&mut self, steps: Vec<usize>) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Makes the outcome of every ended step readable.
    fn load_ended(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// The outputs of ended steps, as templates read them (of those loaded).
    fn outputs(&self) -> &dyn Outputs;
    /// How step `i` ended, if it did (and was loaded).
    fn outcome(&self, i: usize) -> Option<Outcome>;
    /// The failure step `i` ended with, if any.
    fn failure(&mut self, i: usize) -> impl Future<Output = Result<Option<StepFailure>, Self::Error>> + Send;
    /// Each failed step of `range`, with its failure, in file order.
    fn failures(&mut self, range: Range<usize>) -> impl Future<Output = Result<Vec<(String, StepFailure)>, Self::Error>> + Send;
    /// Step `i` ended as `outcome` with `output` (`Some(None)`: skipped,
    /// `None`: neither an output nor skipped); `event` is its `StepFinished`.
    fn step_ended(&mut self, i: usize, outcome: Outcome, output: Option<Option<Arc<Value>>>, event: Event);
    /// Step `i` keeps the output it had in an earlier attempt of the run,
    /// and ends as `outcome` (no `StepFinished`: it did not run).
    fn step_restored(&mut self, i: usize, outcome: Outcome, output: Arc<Value>);
    /// Step `i` ended: counts down its dependents, and returns those that
    /// no longer wait for anything (in the plan's order of dependents, or
    /// ascending: the order they are decided in).
    fn count_down(&mut self, i: usize) -> impl Future<Output = Result<Vec<usize>, Self::Error>> + Send;
    /// Tells whoever watches the run.
    fn emit(&mut self, event: Event);
    /// Whether work of the run is still running or queued (attempts,
    /// retries, `forEach` items).
    fn in_flight(&mut self) -> impl Future<Output = Result<bool, Self::Error>> + Send;
    /// The steps of `steps` have all ended and the `finally` steps start:
    /// their deadline begins. Returns whether the run is to be taken as
    /// cancelled at once (a cancel that reaches them came already).
    fn finally_begins(&mut self, main_stop: Option<Stop>, ending: &Value) -> bool;
    /// How long the run has taken.
    fn elapsed(&mut self) -> impl Future<Output = Result<Duration, Self::Error>> + Send;
    /// A StepFlow flow's steps ([`super::demand`]): which were decided
    /// already, and which are ready but wait until they are needed. Asked
    /// once per machine, before its first decision.
    fn lazy_steps(&mut self) -> impl Future<Output = Result<Lazy, Self::Error>> + Send;
    /// What step `i` keeps from an earlier attempt of the run (`resume`,
    /// `retry`), asked when it is ready: it then ends so, without running.
    fn kept(&mut self, i: usize) -> impl Future<Output = Result<Option<Kept>, Self::Error>> + Send;
    /// The wake time a waiting step recorded in an earlier life of the run
    /// (`Some(None)`: it waited with no time), used instead of one computed
    /// again: a run whose processes died wakes its steps when it said.
    fn recorded_wake(&mut self, _i: usize) -> impl Future<Output = Result<Option<Option<jiff::Timestamp>>, Self::Error>> + Send {
        async { Ok(None) }
    }
    /// A failure a step is refused with, as this ledger's run explains it.
    fn refused(&self, failure: StepFailure) -> StepFailure {
        failure
    }
}

/// What a step that is decided to run starts: its work, and how it waits first.
#[derive(Debug, Clone)]
pub struct Launch {
    /// What it runs with.
    pub work: Work,
    /// Set when it waits ([`core::wait_of`]): a `wait:` step then runs its
    /// work; a builtin that only waits ends when it wakes ([`core::woken`]).
    pub wait: Option<Wait>,
}

/// What a step keeps from an earlier attempt of its run.
#[derive(Debug, Clone)]
pub enum Kept {
    /// It succeeded with this output (secrets put back): it is restored.
    Output(Value),
    /// It ended so while the run's `finally` steps ran, and the run was
    /// then killed: it is not run again (see [`super::RunOptions::ended`]).
    Ended(Ending),
}

/// What a step's attempts (or items) add up to, besides its result.
#[derive(Debug, Default)]
pub struct Tally {
    /// Attempts made (summed over items).
    pub attempts: u32,
    /// The fuel they used.
    pub fuel_used: u64,
    /// From the first attempt's start to the end.
    pub duration: Duration,
    /// The last attempt's log (every item's, for a `forEach` step).
    pub log: StepLog,
    /// The input it ran with (each item's, for a `forEach` step).
    pub input: Option<Value>,
    /// The fuel of its last attempt (none for a `forEach` step).
    pub last_fuel: Option<u64>,
    /// A `forEach` step's item counts.
    pub items: Option<ItemCounts>,
    /// The run whose stored result it reused (`cache:`).
    pub cached: Option<String>,
}

/// What a run's bookkeeping knows between calls: kept in memory by the
/// dispatcher, and in the run's row by workers.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// The run has begun: its first steps were made ready.
    pub started: bool,
    /// The run has not ended.
    pub running: bool,
    /// Why it stopped starting steps (of the current phase).
    pub stop: Option<Stop>,
    /// Once the `finally` steps began: what they read as `run.status` and
    /// `run.failures`.
    pub ending: Option<Value>,
    /// With `ending`: how the steps of `steps` stopped.
    pub main_stop: Option<Stop>,
    /// Steps that have not ended.
    pub open: usize,
}

/// A StepFlow flow's steps as its demand rule sees them ([`super::demand`]).
#[derive(Debug, Clone, Default)]
pub struct Lazy {
    /// Needed: it may be decided once its dependencies have ended.
    pub needed: Vec<bool>,
    /// Decided (it runs, or ran): never dropped as not needed.
    pub began: Vec<bool>,
    /// Ready, not decided: waiting to be needed.
    pub deferred: Vec<usize>,
}

impl Lazy {
    /// A run's, before anything was decided.
    pub fn new(steps: usize) -> Lazy {
        Lazy { needed: vec![true; steps], began: vec![false; steps], deferred: Vec::new() }
    }
}

/// The input a step's work runs with, as its record keeps it.
pub(crate) fn work_input(work: &Work) -> Option<Value> {
    match work {
        Work::One(input) => Some(input.clone()),
        Work::Each { inputs, .. } => Some(Value::Array(inputs.clone())),
    }
}

/// Where a run is, after [`RunMachine::settle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Steps of the run are still to end.
    Waiting,
    /// The `finally` steps became ready: start them, then settle again.
    FinallyBegan,
    /// Every step has ended: the run ends ([`RunMachine::end`]).
    Ended,
}

/// How a run ends, before it is told.
#[derive(Debug, Clone)]
pub struct RunEnd {
    /// How the run ends.
    pub state: RunState,
    /// Its output, for a run that completes.
    pub output: Option<Value>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
}

/// One run's bookkeeping over a ledger.
pub struct RunMachine<'a, L: Ledger> {
    /// The run's plan.
    pub plan: &'a Plan,
    /// What decisions read besides outputs (`ending` is the machine's).
    pub facts: RunFacts<'a>,
    /// What it knows between calls (kept by the driver).
    pub progress: Progress,
    /// Steps whose dependencies have all ended, not yet decided.
    pub ready: VecDeque<usize>,
    /// A StepFlow flow's demand, once asked.
    pub lazy: Option<Lazy>,
    /// A step ended since the demand was last asked.
    changed: bool,
    /// Where the run's facts are kept and its events go.
    pub ledger: L,
}

impl<'a, L: Ledger> RunMachine<'a, L> {
    /// A machine over `plan` that has decided nothing yet this call.
    pub fn new(plan: &'a Plan, facts: RunFacts<'a>, progress: Progress, ledger: L) -> Self {
        RunMachine { plan, facts, progress, ready: VecDeque::new(), lazy: None, changed: true, ledger }
    }

    /// Whether no new step may start.
    pub fn halted(&self) -> bool {
        Stop::halts(self.progress.stop)
    }

    /// The run begins: its root steps are ready.
    pub fn start(&mut self) {
        let (plan, p) = (self.plan, &mut self.progress);
        p.started = true;
        p.running = true;
        p.open = plan.workflow.steps.len();
        let event = Event::RunStarted { run_id: self.facts.run_id.to_string(), workflow: plan.workflow.name.clone(), steps: plan.workflow.steps.len() };
        self.ledger.emit(event);
        self.ready.extend((0..plan.main).filter(|&i| plan.deps[i].is_empty()));
    }

    /// A cancel was asked for: the run stops, unless it already did for
    /// something a cancel does not change. Whether it stopped.
    pub fn cancel(&mut self) -> bool {
        let applies = Stop::cancel_applies(self.progress.stop);
        if applies {
            self.progress.stop = Some(Stop::Cancelled);
        }
        applies
    }

    /// The phase's deadline passed: the run stops, unless it already
    /// halted. Whether it stopped.
    pub fn time_out(&mut self) -> bool {
        let halted = self.halted();
        if !halted {
            self.progress.stop = Some(Stop::TimedOut);
        }
        !halted
    }

    /// The run's record could not be kept: nothing more starts.
    pub fn unrecorded(&mut self) {
        self.progress.stop = Some(Stop::Unrecorded);
    }

    /// Makes what the ready steps read available (one read for all of them).
    pub async fn prefetch(&mut self) -> Result<(), L::Error> {
        let plan = self.plan;
        let steps: Vec<usize> = self.ready.iter().flat_map(|&i| plan.deps[i].iter().chain(&plan.reads_before[i]).copied()).collect();
        if steps.is_empty() {
            return Ok(());
        }
        self.ledger.load(steps).await
    }

    /// A StepFlow flow: asks its demand rule again while steps keep
    /// ending. Steps that will never be needed end skipped; deferred steps
    /// now needed become ready.
    pub async fn apply_demand(&mut self) -> Result<(), L::Error> {
        if !self.plan.workflow.lazy {
            return Ok(());
        }
        if self.lazy.is_none() {
            self.lazy = Some(self.ledger.lazy_steps().await?);
        }
        let n = self.plan.workflow.steps.len();
        while std::mem::take(&mut self.changed) {
            self.ledger.load((0..n).collect()).await?;
            let d = {
                let ledger = &self.ledger;
                let facts = RunFacts { ending: self.progress.ending.as_ref(), ..self.facts };
                let ended = core::Ended { plan: self.plan, outputs: ledger.outputs(), outcome: &|d| ledger.outcome(d), finally: false };
                super::demand::demand(&facts, &ended)
            };
            for (i, possible) in d.possible.iter().enumerate() {
                let began = self.lazy.as_ref().is_some_and(|l| l.began[i]);
                if !possible && !began && self.ledger.outcome(i).is_none() {
                    self.drop_unneeded(i).await?;
                }
            }
            let lazy = self.lazy.as_mut().expect("asked above");
            let (ledger, ready) = (&self.ledger, &mut self.ready);
            lazy.deferred.retain(|&i| match ledger.outcome(i).is_none() && d.needed[i] {
                true => {
                    ready.push_back(i);
                    false
                }
                false => ledger.outcome(i).is_none(),
            });
            lazy.needed = d.needed;
        }
        Ok(())
    }

    /// Whether ready step `i` is to be decided now: not when it ended
    /// already (a lazy run found it would never be needed) or was decided,
    /// nor while a lazy run does not need it yet (it waits, deferred).
    pub fn admit(&mut self, i: usize) -> bool {
        if self.ledger.outcome(i).is_some() {
            return false;
        }
        match &mut self.lazy {
            Some(lazy) if lazy.began[i] => false,
            Some(lazy) if !lazy.needed[i] => {
                if !lazy.deferred.contains(&i) {
                    lazy.deferred.push(i);
                }
                false
            }
            _ => true,
        }
    }

    /// Decides ready step `i` ([`core::decide_ready`]): the work it runs
    /// and how it waits first (told as `StepWaiting`), or `None` when it
    /// ended without running (skipped, blocked, refused, or a `forEach`
    /// over no items).
    pub async fn decide(&mut self, i: usize) -> Result<Option<Launch>, L::Error> {
        if self.keep(i).await? {
            return Ok(None);
        }
        let decl = &self.plan.workflow.steps[i];
        let decision = {
            let facts = RunFacts { ending: self.progress.ending.as_ref(), ..self.facts };
            let ledger = &self.ledger;
            let ended = core::Ended { plan: self.plan, outputs: ledger.outputs(), outcome: &|d| ledger.outcome(d), finally: decl.finally };
            core::decide_ready(&facts, i, &ended)
        };
        let ending = match decision {
            Decision::Run(Work::Each { inputs, .. }) if inputs.is_empty() => {
                let tally = Tally { input: Some(Value::Array(Vec::new())), items: Some(ItemCounts::default()), ..Tally::default() };
                self.finish(i, Ending::Ran(Ok(Value::Array(Vec::new()))), tally).await?;
                return Ok(None);
            }
            Decision::Run(work) => {
                let wait = {
                    let facts = RunFacts { ending: self.progress.ending.as_ref(), ..self.facts };
                    // Wake times are told to the millisecond.
                    let now = jiff::Timestamp::now();
                    let now = now.round(jiff::Unit::Millisecond).unwrap_or(now);
                    core::wait_of(&facts, decl, &work, self.ledger.outputs(), now)
                };
                let mut wait = match wait {
                    Ok(wait) => wait,
                    Err(f) => {
                        let tally = Tally { input: work_input(&work), ..Tally::default() };
                        self.finish(i, Ending::Refused(self.ledger.refused(f)), tally).await?;
                        return Ok(None);
                    }
                };
                if let Some(wait) = &mut wait {
                    if let Some(until) = self.ledger.recorded_wake(i).await? {
                        wait.until = until;
                    }
                    let input = match (&work, wait.kind.takes_signals()) {
                        (Work::One(input), true) => Some(Arc::new(input.clone())),
                        _ => None,
                    };
                    let (run_id, step) = (self.facts.run_id.to_string(), decl.id.clone());
                    let until = wait.until.map(|t| t.to_string());
                    self.ledger.emit(Event::StepWaiting { run_id, step, kind: wait.kind, until, input });
                }
                if let Some(lazy) = &mut self.lazy {
                    lazy.began[i] = true;
                }
                return Ok(Some(Launch { work, wait }));
            }
            Decision::Blocked => Ending::Blocked,
            Decision::Skip { reason, warning } => {
                if let Some(message) = warning {
                    self.ledger.emit(Event::StepWarning { run_id: self.facts.run_id.to_string(), step: decl.id.clone(), message });
                }
                Ending::Skipped(reason)
            }
            Decision::Fail(f) => Ending::Refused(self.ledger.refused(f)),
        };
        self.finish(i, ending, Tally::default()).await?;
        Ok(None)
    }

    /// Step `i` ended as `ending`: the verdict of [`core::verdict`],
    /// applied to the run and recorded. Returns the stop it asks for.
    pub async fn finish(&mut self, i: usize, ending: Ending, tally: Tally) -> Result<Option<Stop>, L::Error> {
        let verdict = core::verdict(self.plan, i, ending, self.progress.stop);
        let stop = verdict.stop;
        match stop {
            Some(Stop::Cancelled) => self.progress.stop = Some(Stop::Cancelled),
            Some(stop) => {
                self.progress.stop.get_or_insert(stop);
            }
            None => {}
        }
        self.settle_step(i, verdict, tally).await?;
        Ok(stop)
    }

    /// Records a step's final state, emits its `StepFinished`, and counts
    /// down its dependents whatever its end (whether they may run is
    /// [`core::gate`]'s to say once they are ready).
    async fn settle_step(&mut self, i: usize, verdict: Verdict, tally: Tally) -> Result<(), L::Error> {
        let Verdict { state, output, error, reason, releases, .. } = verdict;
        let (cached, reason) = core::cached(state, reason, tally.cached.as_deref());
        let outcome = Outcome { state, blocks: !releases, items: tally.items };
        let output = output.map(Arc::new);
        let recorded = match state {
            StepState::Skipped => Some(None),
            _ => output.clone().map(Some),
        };
        let event = Event::StepFinished {
            run_id: self.facts.run_id.to_string(),
            step: self.plan.workflow.steps[i].id.clone(),
            state,
            attempt: tally.attempts,
            items: tally.items.map(|c| c.total),
            duration: tally.duration,
            fuel_used: tally.fuel_used,
            error,
            reason,
            input: tally.input.map(Arc::new),
            output,
            output_secrets: None,
            last_fuel: tally.last_fuel,
            log: tally.log,
            cached,
        };
        self.changed = true;
        self.ledger.step_ended(i, outcome, recorded, event);
        self.ended(i).await
    }

    /// Step `i` has ended: one fewer open, and its dependents counted down.
    async fn ended(&mut self, i: usize) -> Result<(), L::Error> {
        self.progress.open -= 1;
        let ready = self.ledger.count_down(i).await?;
        self.ready.extend(ready);
        Ok(())
    }

    /// Step `i` ends as it did in an earlier attempt of the run, if the
    /// ledger kept that ([`Ledger::kept`]). Whether it did.
    pub async fn keep(&mut self, i: usize) -> Result<bool, L::Error> {
        if self.ledger.outcome(i).is_some() {
            return Ok(false);
        }
        match self.ledger.kept(i).await? {
            None => Ok(false),
            Some(Kept::Output(output)) => self.restore(i, output).await.map(|()| true),
            Some(Kept::Ended(ending)) => self.finish(i, ending, Tally::default()).await.map(|_| true),
        }
    }

    /// Step `i` succeeded in an earlier attempt of the run (`sandflow
    /// resume`): it keeps its output, and its dependents are counted down.
    async fn restore(&mut self, i: usize, output: Value) -> Result<(), L::Error> {
        let step = self.plan.workflow.steps[i].id.clone();
        self.ledger.emit(Event::StepRestored { run_id: self.facts.run_id.to_string(), step });
        let outcome = Outcome { state: StepState::Succeeded, blocks: false, items: None };
        self.ledger.step_restored(i, outcome, Arc::new(output));
        self.ended(i).await
    }

    /// A step that will never be needed (a StepFlow flow's demand rule):
    /// skipped, and what waits on it released (it does not read it either).
    pub async fn drop_unneeded(&mut self, i: usize) -> Result<(), L::Error> {
        let reason = Some(super::demand::NOT_NEEDED.to_string());
        let verdict = Verdict { state: StepState::Skipped, output: None, error: None, reason, releases: true, stop: None };
        self.settle_step(i, verdict, Tally::default()).await
    }

    /// Steps of `range` that never started and never will: their state, in
    /// file order, each blocked by a dependency that failed or never started.
    pub async fn settle_unstarted(&mut self, range: Range<usize>) -> Result<(), L::Error> {
        self.ledger.load_ended().await?;
        for i in range {
            if self.ledger.outcome(i).is_some() {
                continue;
            }
            let blocked = self.plan.deps[i].iter().any(|&d| self.ledger.outcome(d).is_none_or(|o| o.blocks));
            let (state, reason) = core::unstarted(self.progress.stop, blocked);
            let verdict = Verdict { state, output: None, error: None, reason: Some(reason.to_string()), releases: !blocked, stop: None };
            self.settle_step(i, verdict, Tally::default()).await?;
        }
        Ok(())
    }

    /// The steps of the current phase that can start have been started:
    /// settles those that never will once nothing runs, then moves the run
    /// on to its `finally` steps or its end.
    pub async fn settle(&mut self) -> Result<Settled, L::Error> {
        if !self.progress.running || !self.progress.started {
            return Ok(Settled::Waiting);
        }
        let plan = self.plan;
        let n = plan.workflow.steps.len();
        if self.halted() || plan.workflow.lazy {
            // Running steps (and, after a failure, `forEach` items still
            // to run) end first.
            if self.ledger.in_flight().await? {
                return Ok(Settled::Waiting);
            }
            let phase = match (self.progress.stop, &self.progress.ending) {
                (Some(Stop::Unrecorded), _) => 0..n,
                (_, Some(_)) => plan.main..n,
                (_, None) => 0..plan.main,
            };
            self.settle_unstarted(phase).await?;
        }
        let finally_left = n - plan.main;
        if self.progress.ending.is_none() && finally_left > 0 && self.progress.open == finally_left && self.progress.stop != Some(Stop::Unrecorded) {
            self.begin_finally().await?;
            return Ok(Settled::FinallyBegan);
        }
        if self.progress.open > 0 {
            return Ok(Settled::Waiting);
        }
        Ok(Settled::Ended)
    }

    /// Every step of `steps` has ended: the `finally` steps become ready,
    /// reading how the run would end without them.
    async fn begin_finally(&mut self) -> Result<(), L::Error> {
        let stop = self.progress.stop;
        let (state, _) = self.run_end(stop).await?;
        let failures = self.ledger.failures(0..self.plan.main).await?;
        let ending = core::ending(state, failures);
        self.progress.main_stop = self.progress.stop.take();
        if self.ledger.finally_begins(self.progress.main_stop, &ending) {
            self.progress.stop = Some(Stop::Cancelled);
        }
        self.progress.ending = Some(ending);
        let plan = self.plan;
        self.ready.extend((plan.main..plan.workflow.steps.len()).filter(|&i| plan.deps[i].is_empty()));
        Ok(())
    }

    /// [`core::run_end`] for a run stopped by `stop`.
    async fn run_end(&mut self, stop: Option<Stop>) -> Result<(RunState, Option<String>), L::Error> {
        let failure = self.failure_of(stop).await?;
        Ok(core::run_end(&self.plan.workflow, stop, |_| failure.clone()))
    }

    /// The failure of the step that stopped a phase, if one did.
    async fn failure_of(&mut self, stop: Option<Stop>) -> Result<Option<StepFailure>, L::Error> {
        match stop {
            Some(Stop::Failed(i) | Stop::Failing(i)) => self.ledger.failure(i).await,
            _ => Ok(None),
        }
    }

    /// How the run ends once every step has: its state, error and output
    /// (the output of the steps of `steps`; a `finally` step that failed
    /// fails the run all the same).
    pub async fn end(&mut self) -> Result<RunEnd, L::Error> {
        let p = &self.progress;
        // With `finally` steps begun: how the steps of `steps` stopped, and
        // how the `finally` ones did.
        let (stop, finally_stop) = match (&p.ending, p.stop) {
            (Some(_), stop) if stop != Some(Stop::Unrecorded) => (p.main_stop, stop),
            (_, stop) => (stop, None),
        };
        let (mut state, mut error) = self.run_end(stop).await?;
        let mut output = None;
        if state == RunState::Completed {
            self.ledger.load(core::output_reads(self.plan)).await?;
            let facts = RunFacts { ending: None, ..self.facts };
            match core::run_output(&facts, self.plan, self.ledger.outputs()) {
                Ok(v) => output = Some(v),
                Err(e) => {
                    state = RunState::Failed;
                    error = Some(format!("the run output could not be built: {e}"));
                }
            }
        }
        let finally_failure = self.failure_of(finally_stop).await?;
        (state, error) = core::with_finally(&self.plan.workflow, (state, error), finally_stop, |_| finally_failure.clone());
        Ok(RunEnd { state, output, error })
    }

    /// Tells the run's end; the run is no longer running.
    pub async fn finish_run(&mut self, end: RunEnd) -> Result<Option<Arc<Value>>, L::Error> {
        let duration = self.ledger.elapsed().await?;
        let output = end.output.map(Arc::new);
        let event = Event::RunFinished { run_id: self.facts.run_id.to_string(), state: end.state, duration, output: output.clone(), error: end.error };
        self.ledger.emit(event);
        self.progress.running = false;
        Ok(output)
    }
}
