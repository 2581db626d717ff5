//! The decisions of a run, in one place.
//!
//! A run is a DAG of steps; what happens to a step when its dependencies
//! are done, how a step's attempts end it, when the run stops starting
//! steps and how it ends are decided here, by pure functions of the
//! workflow and what is known of the run so far. One bookkeeper asks them,
//! [`super::machine`], for both drivers: the in-process dispatcher, which
//! keeps the run in memory, and distributed workers, which keep it in
//! PostgreSQL rows and apply these decisions inside the transaction that
//! records a result. No driver makes a scheduling decision of its own.

use crate::expr::{CelCache, EvalError, Outputs, Scope};
use crate::failure::{FailureKind, StepFailure};
use crate::units::format_duration;
use crate::plan::Plan;
use crate::workflow::{Cond, ErrorAction, StepDecl, Workflow};
use super::{RunState, StepState};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// What a run's decisions read besides the step outputs: the same for
/// every step of the run.
#[derive(Clone, Copy)]
pub struct RunFacts<'a> {
    /// The run's input.
    pub input: &'a Value,
    /// The run's id (`run.id`).
    pub run_id: &'a str,
    /// `run.attempt`: 1, plus one per resume.
    pub attempt: u32,
    /// The secrets' values (`secrets.NAME`).
    pub secrets: &'a BTreeMap<String, String>,
    /// Compiled CEL programs, shared by the run's decisions.
    pub cel: &'a CelCache,
    /// The run's step concurrency: a `forEach` step's default item concurrency.
    pub limit: usize,
    /// Once every step of `steps` has ended: `{status, failures}` for the
    /// `finally` steps (see [`ending`]).
    pub ending: Option<&'a Value>,
    /// The run's variables (`$variable`).
    pub variables: &'a Value,
    /// What started the run (see [`crate::exec::RunTrigger`]).
    pub trigger: Option<&'a Value>,
}

impl<'a> RunFacts<'a> {
    /// The scope templates of this run are evaluated in.
    pub fn scope(&'a self, outputs: &'a dyn Outputs, item: Option<(&'a Value, usize)>) -> Scope<'a> {
        Scope {
            inputs: self.input,
            cache: self.cel,
            outputs,
            item: item.map(|(v, _)| v),
            index: item.map(|(_, i)| i),
            run_id: self.run_id,
            attempt: self.attempt,
            secrets: self.secrets,
            ending: self.ending,
            step_input: None,
            variables: self.variables,
            trigger: self.trigger,
        }
    }
}

/// What a step runs with, once it is ready.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// One input: the step runs once.
    One(Value),
    /// A `forEach` step: one input per item, at most `concurrency` at once.
    Each {
        /// Each item's input, in item order.
        inputs: Vec<Value>,
        /// Most items running at once.
        concurrency: usize,
    },
}

/// What happens to a step whose dependencies are all done.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// It runs.
    Run(Work),
    /// It is skipped, with this reason; `warning` is worth telling the user.
    Skip {
        /// Why, as the step's record says.
        reason: String,
        /// A problem with the workflow worth telling (a `when` that was not a boolean).
        warning: Option<String>,
    },
    /// It fails without running (a reference it reads cannot be resolved).
    Fail(StepFailure),
    /// A dependency failed (or was cancelled, or skipped because one of
    /// its own did) and its `depends` does not name it: skipped, and its
    /// own dependents are blocked in turn.
    Blocked,
}

/// Whether a step that ended as `state` reused a stored result (`cache:`)
/// of run `from`, and the reason it then shows.
pub fn cached(state: StepState, reason: Option<String>, from: Option<&str>) -> (bool, Option<String>) {
    match from {
        Some(run) if state == StepState::Succeeded => (true, Some(super::memo::cached_reason(run))),
        _ => (false, reason),
    }
}

/// How an ended step turned out, as `depends` reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Its final state.
    pub state: StepState,
    /// It does not let steps that merely need it run (see [`Verdict::releases`]).
    pub blocks: bool,
    /// A `forEach` step's items: how many succeeded and failed, of how many.
    pub items: Option<ItemCounts>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
/// A `forEach` step's items by how they ended.
pub struct ItemCounts {
    /// Items that succeeded.
    pub succeeded: u32,
    /// Items that failed.
    pub failed: u32,
    /// All its items.
    pub total: u32,
}

impl Outcome {
    /// Whether the step meets `cond` of a `depends` expression.
    pub fn meets(&self, cond: Cond) -> bool {
        match cond {
            Cond::Allows => !self.blocks,
            Cond::Succeeded => self.state == StepState::Succeeded,
            Cond::Failed => self.state == StepState::Failed,
            Cond::Skipped => self.state == StepState::Skipped,
            Cond::Cancelled => self.state == StepState::Cancelled,
            Cond::AnySucceeded => self.items.map_or(self.state == StepState::Succeeded, |n| n.succeeded > 0),
            Cond::AllFailed => self.items.map_or(self.state == StepState::Failed, |n| n.total > 0 && n.failed == n.total),
        }
    }

    /// How an outcome is written down (the distributed store keeps it in a
    /// column beside `blocks`): the state, then the item counts.
    pub fn encode(&self) -> String {
        match self.items {
            None => self.state.as_str().to_string(),
            Some(n) => format!("{}/{}/{}/{}", self.state.as_str(), n.succeeded, n.failed, n.total),
        }
    }

    /// The outcome [`Outcome::encode`] wrote; `None` for any other text.
    pub fn decode(text: &str, blocks: bool) -> Option<Outcome> {
        let mut parts = text.split('/');
        let state = StepState::from_name(parts.next()?).filter(|s| !matches!(s, StepState::Pending | StepState::Running))?;
        let mut n = || parts.next().and_then(|p| p.parse::<u32>().ok());
        let items = match n() {
            None => None,
            Some(succeeded) => Some(ItemCounts { succeeded, failed: n()?, total: n()? }),
        };
        Some(Outcome { state, blocks, items })
    }
}

/// Whether a step whose dependencies have all ended may go on to
/// [`decide`]: `outcome` gives each dependency's. A dependency that blocks
/// blocks the step unless its `depends` names it; then `depends` must hold.
pub fn gate(plan: &Plan, i: usize, outcome: &dyn Fn(usize) -> Option<Outcome>) -> Option<Decision> {
    let decl = &plan.workflow.steps[i];
    let named: Vec<(&str, Cond)> = decl.depends.as_ref().map(|d| d.refs()).unwrap_or_default();
    let blocked = plan.deps[i]
        .iter()
        .any(|&d| outcome(d).is_some_and(|o| o.blocks) && !named.iter().any(|(id, _)| *id == plan.workflow.steps[d].id));
    if blocked {
        return Some(Decision::Blocked);
    }
    let depends = decl.depends.as_ref()?;
    let holds = depends.eval(&|id, cond| plan.index.get(id).and_then(|&d| outcome(d)).is_some_and(|o| o.meets(cond)));
    (!holds).then(|| Decision::Skip { reason: format!("depends not met: {}", depends.text), warning: None })
}

/// Why a run stopped starting steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A step failed under `on_error: fail`.
    Failed(usize),
    /// A step failed under `on_error: fail` in a workflow with
    /// `fail_fast: false`: the run will fail, but steps that do not depend
    /// on it still start.
    Failing(usize),
    /// The run was cancelled.
    Cancelled,
    /// The run's `timeout` passed.
    TimedOut,
    /// The run's record could not be made durable.
    Unrecorded,
}

impl Stop {
    /// Whether a cancel request still changes the run: a failure does not
    /// stop running steps, a cancel does.
    pub fn cancel_applies(stop: Option<Stop>) -> bool {
        matches!(stop, None | Some(Stop::Failed(_) | Stop::Failing(_)))
    }

    /// Whether no new step may start.
    pub fn halts(stop: Option<Stop>) -> bool {
        matches!(stop, Some(s) if !matches!(s, Stop::Failing(_)))
    }

    /// How a stop is written down (the distributed store keeps it in a column).
    pub fn encode(self) -> String {
        match self {
            Stop::Failed(i) => format!("failed:{i}"),
            Stop::Failing(i) => format!("failing:{i}"),
            Stop::Cancelled => "cancelled".into(),
            Stop::TimedOut => "timed_out".into(),
            Stop::Unrecorded => "unrecorded".into(),
        }
    }

    /// The stop [`Stop::encode`] wrote; `None` for any other text.
    pub fn decode(text: &str) -> Option<Stop> {
        match text {
            "cancelled" => Some(Stop::Cancelled),
            "timed_out" => Some(Stop::TimedOut),
            "unrecorded" => Some(Stop::Unrecorded),
            other => match other.split_once(':')? {
                ("failed", i) => i.parse().ok().map(Stop::Failed),
                ("failing", i) => i.parse().ok().map(Stop::Failing),
                _ => None,
            },
        }
    }
}

/// What a ready step is decided from: the outputs of ended steps and how
/// each ended (`steps.ID.status`, `depends`). For a `finally` step, a step
/// of `steps` that ended without an output (it failed, or was cancelled)
/// reads as skipped, so `$on_skip` applies.
pub struct Ended<'a> {
    /// The run's plan.
    pub plan: &'a Plan,
    /// The ended steps' outputs.
    pub outputs: &'a dyn Outputs,
    /// Each ended step's outcome, by index.
    pub outcome: &'a dyn Fn(usize) -> Option<Outcome>,
    /// The step being decided is a `finally` step.
    pub finally: bool,
}

impl Ended<'_> {
    fn state(&self, id: &str) -> Option<StepState> {
        self.plan.index.get(id).and_then(|&d| (self.outcome)(d)).map(|o| o.state)
    }
}

impl Outputs for Ended<'_> {
    fn lookup(&self, id: &str) -> crate::expr::Lookup<'_> {
        match self.outputs.lookup(id) {
            crate::expr::Lookup::Unknown if self.finally && self.state(id).is_some() => crate::expr::Lookup::Skipped,
            found => found,
        }
    }

    fn status(&self, id: &str) -> Option<&str> {
        self.state(id).map(StepState::as_str)
    }
}

/// What `finally` steps read as `run.status` and `run.failures`: the state
/// the run would have without them and each failed step's `{step, kind,
/// message}`, in file order.
pub fn ending(state: RunState, failures: impl IntoIterator<Item = (String, StepFailure)>) -> Value {
    let failures: Vec<Value> = failures
        .into_iter()
        .map(|(step, f)| serde_json::json!({ "step": step, "kind": f.kind.to_string(), "message": f.message }))
        .collect();
    serde_json::json!({ "status": state.as_str(), "failures": failures })
}

/// The run's end once its `finally` steps have ended: a `finally` step that
/// failed (or their timeout) fails a run that would have completed, and is
/// added to the error of one that failed; a cancelled run stays cancelled,
/// and a run that would have completed is cancelled when they are.
pub fn with_finally(wf: &Workflow, main: (RunState, Option<String>), stop: Option<Stop>, failure: impl Fn(usize) -> Option<StepFailure>) -> (RunState, Option<String>) {
    let problem = match stop {
        Some(Stop::Failed(i) | Stop::Failing(i)) => format!("`finally` {}", step_failed(wf, i, failure(i))),
        Some(Stop::TimedOut) => format!("the `finally` steps' {} `finally_timeout` passed", format_duration(wf.finally_timeout)),
        Some(Stop::Cancelled) if main.0 == RunState::Completed => {
            return (RunState::Cancelled, Some("cancelled while its `finally` steps ran".to_string()));
        }
        _ => return main,
    };
    match main {
        (RunState::Completed, _) => (RunState::Failed, Some(problem)),
        (RunState::Failed, error) => (RunState::Failed, Some(error.map_or(problem.clone(), |e| format!("{e}; {problem}")))),
        other => other,
    }
}

/// What happens to step `i` once its dependencies have all ended: [`gate`],
/// then [`decide`].
pub fn decide_ready(facts: &RunFacts<'_>, i: usize, ended: &Ended<'_>) -> Decision {
    gate(ended.plan, i, ended.outcome).unwrap_or_else(|| decide(facts, &ended.plan.workflow.steps[i], ended))
}

/// Evaluates `when`, `skipIf`, `forEach` and the input of a ready step.
pub fn decide(facts: &RunFacts<'_>, decl: &StepDecl, outputs: &dyn Outputs) -> Decision {
    let skip = |reason: String| Decision::Skip { reason, warning: None };
    let reference = |e: EvalError| match e {
        EvalError::Skipped(id) => skip(format!("step `{id}` was skipped")),
        other => Decision::Fail(StepFailure::new(FailureKind::Reference, other.to_string())),
    };
    let s = facts.scope(outputs, None);
    if let Some(when) = &decl.when {
        match when.eval_bool(&s) {
            Ok(true) => {}
            Ok(false) => return skip("`when` is false".into()),
            Err(EvalError::Skipped(id)) => return skip(format!("step `{id}` was skipped")),
            Err(e) => {
                let message = format!("`when` of step `{}` could not be evaluated, so it is skipped: {e}", decl.id);
                return Decision::Skip { reason: message.clone(), warning: Some(message) };
            }
        }
    }
    if let Some(skip_if) = &decl.skip_if {
        match skip_if.eval(&s) {
            Ok(v) if truthy(&v) => return skip("`skipIf` is true".into()),
            Ok(_) => {}
            Err(e) => return reference(e),
        }
    }
    let Some(for_each) = &decl.for_each else {
        return match decl.input.eval(&s) {
            Ok(v) => Decision::Run(Work::One(v)),
            Err(e) => reference(e),
        };
    };
    let items = match for_each.eval(&s) {
        Ok(Value::Array(items)) => items,
        Ok(other) => {
            let kind = match other {
                Value::Object(_) => "an object",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                Value::Bool(_) => "a boolean",
                _ => "null",
            };
            return Decision::Fail(StepFailure::new(FailureKind::Reference, format!("`forEach` gave {kind}, not an array")));
        }
        Err(e) => return reference(e),
    };
    let mut inputs = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        match decl.input.eval(&facts.scope(outputs, Some((item, index)))) {
            Ok(v) => inputs.push(v),
            Err(e) => return reference(e),
        }
    }
    Decision::Run(Work::Each { inputs, concurrency: item_concurrency(decl, facts.limit) })
}

/// How a step waits before it runs or ends: `wait:` (a timer, then it
/// runs), or a builtin that only waits (`/builtin/sleep`, `/builtin/signal`,
/// `/builtin/approval`), which its driver ends when it wakes ([`woken`]).
/// A waiting step holds no slot and no instance; its wake time is recorded
/// (`StepWaiting`), and read back rather than computed again when the run
/// comes back after its processes died.
#[derive(Debug, Clone, PartialEq)]
pub struct Wait {
    /// What it waits for.
    pub kind: WaitKind,
    /// When it wakes: its timer, or a signal's timeout (none: it waits for
    /// a signal however long it takes).
    pub until: Option<jiff::Timestamp>,
}

/// What a waiting step waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WaitKind {
    /// `wait:`: a time, then the step runs.
    Wait,
    /// `/builtin/sleep`: a time, then the step succeeds.
    Sleep,
    /// `/builtin/signal`: `sandflow signal`'s data, or its timeout.
    Signal,
    /// `/builtin/approval`: a person's approval or rejection, or its timeout.
    Approval,
}

impl WaitKind {
    /// Its name as recorded (`approval`).
    pub fn as_str(self) -> &'static str {
        match self {
            WaitKind::Wait => "wait",
            WaitKind::Sleep => "sleep",
            WaitKind::Signal => "signal",
            WaitKind::Approval => "approval",
        }
    }

    /// The kind named by [`WaitKind::as_str`].
    pub fn from_name(name: &str) -> Option<WaitKind> {
        [WaitKind::Wait, WaitKind::Sleep, WaitKind::Signal, WaitKind::Approval].into_iter().find(|k| k.as_str() == name)
    }

    /// What a builtin that only waits waits for.
    pub fn of_builtin(b: crate::workflow::Builtin) -> Option<WaitKind> {
        use crate::workflow::Builtin;
        match b {
            Builtin::Sleep => Some(WaitKind::Sleep),
            Builtin::Signal => Some(WaitKind::Signal),
            Builtin::Approval => Some(WaitKind::Approval),
            _ => None,
        }
    }

    /// Whether a signal ends it (`sandflow signal`).
    pub fn takes_signals(self) -> bool {
        matches!(self, WaitKind::Signal | WaitKind::Approval)
    }
}

/// Why a run is not run whole by the worker that starts it, if it is not.
///
/// On workers, a run is normally recorded step by step: each result is a
/// job committed in a PostgreSQL transaction that decides what runs next,
/// so any worker may run any step. For many small runs that is most of
/// their cost (BENCHMARKS.md, "Small runs run whole"). A run that ends
/// soon and needs nothing the one worker lacks is instead run whole by the
/// worker that starts it: the in-process dispatcher runs it in the
/// worker's memory, the store records it in a few transactions (its
/// events, batched as a local run's are), and the worker holds the run
/// while it runs; if the hold lapses (the worker was lost), another worker
/// goes on with the run step by step, keeping what succeeded.
///
/// A run is run whole when it is its first attempt (a `retry`, `resume`,
/// or a run whose holder was lost goes step by step), and it has at most
/// `max_steps` steps (`worker --whole-runs`; 0: none) or is a chain of
/// any length ([`one_at_a_time`]: more workers cannot run it sooner, and
/// one runs it without a transaction per step deciding what is next;
/// BENCHMARKS.md, "Chains run whole, batches in one round trip, results
/// committed together"), and none of its steps waits
/// (`wait:`, `/builtin/sleep`, `/builtin/signal`, `/builtin/approval`: a
/// waiting step holds no worker), runs `forEach` items (how many is only
/// known as it runs) or a nested `workflow:`, or needs a `runs_on` label
/// the worker does not offer. A namespace with a step limit
/// (`max_steps`) has its runs recorded step by step too, so the limit
/// counts every attempt across workers; the store decides that as the
/// run starts.
pub fn runs_whole(plan: &Plan, attempt: u32, labels: &[String], max_steps: usize) -> Result<(), String> {
    let steps = &plan.workflow.steps;
    if attempt > 1 {
        return Err(format!("attempt {attempt} of the run goes step by step"));
    }
    if steps.len() > max_steps && (max_steps == 0 || !one_at_a_time(plan)) {
        return Err(format!("{} steps, more than --whole-runs {max_steps}", steps.len()));
    }
    for s in steps.iter() {
        let why = if s.wait.is_some() || matches!(s.target, crate::workflow::Target::Builtin(b) if WaitKind::of_builtin(b).is_some()) {
            "waits"
        } else if s.for_each.is_some() {
            "runs forEach items"
        } else if matches!(s.target, crate::workflow::Target::Workflow(_)) {
            "runs a nested workflow"
        } else if !s.runs_on.iter().all(|l| labels.contains(l)) {
            "needs a runs_on label this worker does not offer"
        } else {
            continue;
        };
        return Err(format!("step `{}` {why}", s.id));
    }
    Ok(())
}

/// Whether `plan`'s steps can only ever run one at a time: in each
/// phase (`steps`, then `finally`), each step needs the one before it, so
/// that whatever ends, at most one step is ready.
pub fn one_at_a_time(plan: &Plan) -> bool {
    let order = plan.topological();
    [0..plan.main, plan.main..plan.workflow.steps.len()].into_iter().all(|phase| {
        // A chain's topological order is its only one: each step in it
        // needs the one before.
        let steps: Vec<usize> = order.iter().copied().filter(|i| phase.contains(i)).collect();
        steps.windows(2).all(|w| plan.deps[w[1]].binary_search(&w[0]).is_ok())
    })
}

/// A signal sent to a waiting step (`sandflow signal`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Signal {
    /// What was sent, as the step accepted it ([`crate::workflow::wait::accept`]).
    pub data: Value,
    /// Who sent it: a token's name, or `local` for the store's own user.
    pub by: String,
    /// When (RFC 3339).
    pub at: String,
}

/// How step `decl`, about to run `work`, waits first, at `now`: `None`
/// when it does not. A `wait:` or builtin input that gives no valid time
/// fails the step (kind `reference`), as a reference that does not resolve.
pub fn wait_of(facts: &RunFacts<'_>, decl: &StepDecl, work: &Work, outputs: &dyn Outputs, now: jiff::Timestamp) -> Result<Option<Wait>, StepFailure> {
    use crate::workflow::wait;
    let bad = |m: String| StepFailure::new(FailureKind::Reference, m).not_retryable();
    if let Some(spec) = &decl.wait {
        let spec = spec.eval(&facts.scope(outputs, None)).map_err(|e| bad(format!("`wait`: {e}")))?;
        let until = wait::wake_time(&spec, "`wait`", now).map_err(bad)?;
        return Ok(Some(Wait { kind: WaitKind::Wait, until: Some(until) }));
    }
    let crate::workflow::Target::Builtin(b) = decl.target else { return Ok(None) };
    let Some(kind) = WaitKind::of_builtin(b) else { return Ok(None) };
    let Work::One(input) = work else { return Err(bad(format!("/builtin/{} cannot run with `forEach`", b.name()))) };
    wait::check_input(b, input, now).map_err(bad)?;
    let until = match kind {
        WaitKind::Sleep => Some(wait::wake_time(input, "/builtin/sleep's input", now).map_err(bad)?),
        _ => match input.get("timeout") {
            None | Some(Value::Null) => None,
            Some(t) => Some(wait::duration(t, "`timeout`").and_then(|d| wait::after(now, d, "`timeout`")).map_err(bad)?),
        },
    };
    Ok(Some(Wait { kind, until }))
}

/// How a builtin that only waits ends once it wakes: a sleep succeeds; a
/// signal gives its data; an approval gives `{approved, by, comment, at}`
/// or fails as rejected; with no signal, a signal's or an approval's
/// timeout fails it with kind `timeout` (so `on_error` applies). Never
/// retried: a retry could not wait again.
pub fn woken(kind: WaitKind, input: &Value, until: Option<&str>, signal: Option<Signal>) -> Result<Value, StepFailure> {
    let timeout = input.get("timeout").map(|t| match t {
        Value::String(s) => s.clone(),
        other => format!("{other}s"),
    });
    let within = timeout.map(|t| format!("within {t}")).unwrap_or_else(|| "before the run stopped".into());
    match (kind, signal) {
        (WaitKind::Wait, _) => Ok(Value::Null),
        (WaitKind::Sleep, _) => Ok(serde_json::json!({ "until": until })),
        (WaitKind::Signal, Some(s)) => Ok(s.data),
        (WaitKind::Approval, Some(s)) => {
            let approved = s.data.get("approved").and_then(Value::as_bool) == Some(true);
            let comment = s.data.get("comment").cloned().unwrap_or(Value::Null);
            if approved {
                return Ok(serde_json::json!({ "approved": true, "by": s.by, "comment": comment, "at": s.at }));
            }
            let why = comment.as_str().map(|c| format!(": {c}")).unwrap_or_default();
            Err(StepFailure::component(format!("rejected by {}{why}", s.by), false))
        }
        (WaitKind::Signal, None) => {
            let name = input.get("name").and_then(Value::as_str).map(|n| format!(" `{n}`")).unwrap_or_default();
            Err(StepFailure::new(FailureKind::Timeout, format!("no signal{name} came {within}")).not_retryable())
        }
        (WaitKind::Approval, None) => Err(StepFailure::new(FailureKind::Timeout, format!("nobody approved or rejected it {within}")).not_retryable()),
    }
}

/// How many of a `forEach` step's items run at once: its `concurrency`,
/// by default as many as steps may (the run's `limit`); at least 1.
pub(crate) fn item_concurrency(decl: &StepDecl, limit: usize) -> usize {
    decl.concurrency.unwrap_or(limit).max(1)
}

pub use crate::expr::truthy;

/// How a step ended, with `on_error` applied, and what that does to the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The step's final state.
    pub state: StepState,
    /// What later steps read: its output, or `on_error: continue`'s default.
    pub output: Option<Value>,
    /// Why it failed.
    pub error: Option<StepFailure>,
    /// Why it was skipped.
    pub reason: Option<String>,
    /// Its dependents may start. When false they are skipped with reason
    /// `dependency failed` (or cancelled, if the run is).
    pub releases: bool,
    /// The run stops starting steps (unless it already stopped).
    pub stop: Option<Stop>,
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// Its attempts (or items) gave this.
    Ran(Result<Value, StepFailure>),
    /// [`decide`] skipped it.
    Skipped(String),
    /// [`decide`] failed it before it ran.
    Refused(StepFailure),
    /// [`gate`] found a dependency that blocks it.
    Blocked,
}

impl Ending {
    /// How a step that ended without success in an earlier attempt of the
    /// run ended, from its record (see [`super::RunOptions::ended`]).
    /// `None`: a state that is no end of a step.
    pub fn recorded(state: StepState, failure: Option<StepFailure>, reason: Option<String>) -> Option<Ending> {
        let failure = || failure.clone().unwrap_or_else(|| StepFailure::new(FailureKind::Lost, "failed in an earlier attempt of the run"));
        match state {
            StepState::Failed => Some(Ending::Ran(Err(failure()))),
            StepState::Cancelled => Some(Ending::Ran(Err(StepFailure { kind: FailureKind::Cancelled, ..failure() }))),
            StepState::Skipped if reason.as_deref() == Some(BLOCKED) => Some(Ending::Blocked),
            StepState::Skipped => Some(Ending::Skipped(reason.unwrap_or_default())),
            _ => None,
        }
    }
}

/// The reason of a step skipped because a dependency blocks it.
pub const BLOCKED: &str = "dependency failed";

/// The verdict on step `i` that ended as `ending` while the run is stopped
/// for `stop` (if at all).
pub fn verdict(plan: &Plan, i: usize, ending: Ending, stop: Option<Stop>) -> Verdict {
    let wf = &plan.workflow;
    let decl = &wf.steps[i];
    let (state, error, output, reason) = match ending {
        Ending::Ran(Ok(v)) => (StepState::Succeeded, None, Some(v), None),
        Ending::Ran(Err(f)) if f.kind == FailureKind::Cancelled && stop == Some(Stop::TimedOut) => {
            let f = match decl.finally {
                false => StepFailure::new(FailureKind::Timeout, format!("interrupted: the run's {} timeout passed", wf.timeout.map(format_duration).unwrap_or_default())),
                true => StepFailure::new(FailureKind::Timeout, format!("interrupted: the {} `finally_timeout` passed", format_duration(wf.finally_timeout))),
            };
            (StepState::Failed, Some(f), None, None)
        }
        Ending::Ran(Err(f)) if f.kind == FailureKind::Cancelled => {
            // Only the run's token cancels a step; the step may see it
            // before the bookkeeper does.
            let stop = Stop::cancel_applies(stop).then_some(Stop::Cancelled);
            return Verdict { state: StepState::Cancelled, output: None, error: Some(f), reason: None, releases: false, stop };
        }
        Ending::Ran(Err(f)) | Ending::Refused(f) => (StepState::Failed, Some(f), None, None),
        Ending::Skipped(reason) => (StepState::Skipped, None, None, Some(reason)),
        Ending::Blocked => {
            let reason = Some(BLOCKED.to_string());
            return Verdict { state: StepState::Skipped, output: None, error: None, reason, releases: false, stop: None };
        }
    };
    if state != StepState::Failed {
        return Verdict { state, output, error, reason, releases: true, stop: None };
    }
    match decl.on_error.action {
        ErrorAction::Fail => {
            // A failure some `depends` names is handled there; with
            // `fail_fast: false` the run fails but goes on.
            // `finally` steps all run: one failing stops none of the others.
            let stop = match () {
                _ if plan.handled[i] => None,
                _ if wf.fail_fast && !decl.finally => Some(Stop::Failed(i)),
                _ => Some(Stop::Failing(i)),
            };
            Verdict { state, output: None, error, reason, releases: false, stop }
        }
        ErrorAction::Continue => Verdict {
            state,
            output: Some(decl.on_error.default_output.clone().unwrap_or(Value::Null)),
            error,
            reason,
            releases: true,
            stop: None,
        },
        ErrorAction::Skip => Verdict {
            state: StepState::Skipped,
            output: None,
            error,
            reason: Some("it failed and `on_error` is `skip`".to_string()),
            releases: true,
            stop: None,
        },
    }
}

/// A step that never started, once nothing else can run: its state and
/// reason. `blocked` is true when a dependency failed, was cancelled or
/// never started.
pub fn unstarted(stop: Option<Stop>, blocked: bool) -> (StepState, &'static str) {
    match stop {
        Some(Stop::Cancelled) => (StepState::Cancelled, "the run was cancelled before it started"),
        Some(Stop::TimedOut) => (StepState::Cancelled, "the run's timeout passed before it started"),
        Some(Stop::Unrecorded) => (StepState::Cancelled, "not started: the run could not be recorded"),
        _ if blocked => (StepState::Skipped, BLOCKED),
        _ => (StepState::Skipped, "not started: the run failed"),
    }
}

/// Whether an attempt that failed with `failure` is tried again, and after
/// how long: `attempt` is the number of the one that failed.
pub fn retry_after(decl: &StepDecl, wf: &Workflow, failure: &StepFailure, attempt: u32, cancelled: bool) -> Option<Duration> {
    let policy = decl.settings.or(&wf.defaults).retry.unwrap_or_default();
    (failure.retryable && attempt < policy.max_attempts.max(1) && !cancelled).then(|| policy.delay_after(attempt))
}

/// The results of a `forEach` step's items, gathered in item order.
#[derive(Debug, Clone, Default)]
pub struct Items {
    results: Vec<Value>,
    failure: Option<StepFailure>,
    counts: ItemCounts,
}

impl Items {
    /// No results yet, for a step of `count` items.
    pub fn new(count: usize) -> Items {
        Items { results: vec![Value::Null; count], failure: None, counts: ItemCounts { total: count as u32, ..ItemCounts::default() } }
    }

    /// Whether an item that ended with `result` fails the step (so no
    /// further item starts), rather than giving a value.
    pub fn fails_step(decl: &StepDecl, result: &Result<Value, StepFailure>) -> bool {
        match result {
            Ok(_) => false,
            Err(f) => decl.on_error.action != ErrorAction::Continue || f.kind == FailureKind::Cancelled,
        }
    }

    /// Item `index` ended with `result`.
    pub fn record(&mut self, decl: &StepDecl, index: usize, result: Result<Value, StepFailure>) {
        let fails = Items::fails_step(decl, &result);
        match &result {
            Ok(_) => self.counts.succeeded += 1,
            Err(_) => self.counts.failed += 1,
        }
        match result {
            Ok(v) => self.results[index] = v,
            Err(f) if fails => {
                if self.failure.is_none() {
                    self.failure = Some(StepFailure { message: format!("item {index}: {}", f.message), ..f });
                }
            }
            Err(_) => self.results[index] = decl.on_error.default_output.clone().unwrap_or(Value::Null),
        }
    }

    /// Whether more items may start: not after one failed the step.
    pub fn may_start(&self) -> bool {
        self.failure.is_none()
    }

    /// How many items succeeded and failed so far.
    pub fn counts(&self) -> ItemCounts {
        self.counts
    }

    /// The step's result once every started item has ended.
    pub fn result(self) -> Result<Value, StepFailure> {
        match self.failure {
            Some(f) => Err(f),
            None => Ok(Value::Array(self.results)),
        }
    }
}

/// How the run ends, before its output is built: its state and error.
/// `failure` gives the error of a step that stopped it.
pub fn run_end(wf: &Workflow, stop: Option<Stop>, failure: impl Fn(usize) -> Option<StepFailure>) -> (RunState, Option<String>) {
    match stop {
        None => (RunState::Completed, None),
        Some(Stop::Cancelled) => (RunState::Cancelled, Some("cancelled".to_string())),
        Some(Stop::TimedOut) => (RunState::Failed, Some(format!("the run's {} timeout passed", wf.timeout.map(format_duration).unwrap_or_default()))),
        Some(Stop::Failed(i) | Stop::Failing(i)) => (RunState::Failed, Some(step_failed(wf, i, failure(i)))),
        Some(Stop::Unrecorded) => (RunState::Failed, None),
    }
}

/// `step `ID` failed (kind): message`: the run's error when a step stopped it.
fn step_failed(wf: &Workflow, i: usize, failure: Option<StepFailure>) -> String {
    let what = failure.map(|f| format!(" ({}): {}", f.kind, f.message)).unwrap_or_default();
    format!("step `{}` failed{what}", wf.steps[i].id)
}

/// The run output (SPEC §2.6): the `output` template, or the outputs of
/// the steps nothing depends on.
pub fn run_output(facts: &RunFacts<'_>, plan: &crate::plan::Plan, outputs: &dyn Outputs) -> Result<Value, EvalError> {
    let value_of = |i: usize| match outputs.lookup(&plan.workflow.steps[i].id) {
        crate::expr::Lookup::Done(v) => v.clone(),
        _ => Value::Null,
    };
    match &plan.workflow.output {
        Some(t) => match t.eval(&facts.scope(outputs, None)) {
            Err(EvalError::Skipped(_)) => Ok(Value::Null),
            other => other,
        },
        None => {
            let sinks = plan.sinks();
            if let [only] = sinks.as_slice() {
                Ok(value_of(*only))
            } else {
                Ok(Value::Object(sinks.into_iter().map(|i| (plan.workflow.steps[i].id.clone(), value_of(i))).collect::<Map<_, _>>()))
            }
        }
    }
}

/// The steps whose outputs [`run_output`] reads.
pub fn output_reads(plan: &crate::plan::Plan) -> Vec<usize> {
    match &plan.workflow.output {
        Some(t) => t.step_refs().into_iter().filter_map(|r| plan.index.get(&r.id).copied()).collect(),
        None => plan.sinks(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn workflow(text: &str) -> crate::plan::Plan {
        let wf = crate::workflow::load_str("core.yaml".as_ref(), text).expect("valid");
        crate::plan::Plan::new(wf).expect("plans")
    }

    const FLOW: &str = r#"
name: core
steps:
  - id: a
    component: /builtin/eval
  - id: keep
    component: /builtin/eval
    on_error: { action: continue, default_output: { fallback: true } }
  - id: drop
    component: /builtin/eval
    on_error: { action: skip }
  - id: each
    component: /builtin/eval
    forEach: "{{ inputs.items }}"
    input: { n: "{{ item }}" }
    concurrency: 3
  - id: gated
    component: /builtin/eval
    when: "{{ inputs.go }} == true"
    input: { x: "{{ steps.a.output }}" }
"#;

    fn facts<'a>(input: &'a Value, secrets: &'a BTreeMap<String, String>, cel: &'a CelCache) -> RunFacts<'a> {
        RunFacts { input, run_id: "r", attempt: 1, secrets, cel, limit: 4, ending: None, variables: &Value::Null, trigger: None }
    }

    #[test]
    fn a_chain_is_a_run_whose_steps_run_one_at_a_time_in_each_phase() {
        let cases = [
            ("  - { id: a, component: /builtin/eval }\n", true),
            ("  - { id: a, component: /builtin/eval }\n  - { id: b, component: /builtin/eval }\n", false),
            // Dependencies beyond the one before do not widen it.
            ("  - { id: a, component: /builtin/eval }\n  - { id: b, component: /builtin/eval, needs: [a] }\n  - { id: c, component: /builtin/eval, needs: [a, b] }\n", true),
            // A diamond has two steps that may run at once.
            (
                "  - { id: a, component: /builtin/eval }\n  - { id: b, component: /builtin/eval, needs: [a] }\n  - { id: c, component: /builtin/eval, needs: [a] }\n  - { id: d, component: /builtin/eval, needs: [b, c] }\n",
                false,
            ),
            // Listed in any order.
            ("  - { id: b, component: /builtin/eval, needs: [a] }\n  - { id: a, component: /builtin/eval }\n", true),
            // `finally` is a phase of its own: a chain after a chain.
            ("  - { id: a, component: /builtin/eval }\nfinally:\n  - { id: f, component: /builtin/eval }\n  - { id: g, component: /builtin/eval, needs: [f] }\n", true),
            ("  - { id: a, component: /builtin/eval }\nfinally:\n  - { id: f, component: /builtin/eval }\n  - { id: g, component: /builtin/eval }\n", false),
        ];
        for (steps, chain) in cases {
            assert_eq!(one_at_a_time(&workflow(&format!("name: c\nsteps:\n{steps}"))), chain, "{steps}");
        }
    }

    #[test]
    fn a_small_run_that_needs_nothing_else_runs_whole() {
        let small = workflow("name: s\nsteps:\n  - { id: a, component: /builtin/eval }\n  - { id: b, component: /builtin/eval, runs_on: [gpu] }\n");
        let gpu = ["gpu".to_string()];
        assert_eq!(runs_whole(&small, 1, &gpu, 64), Ok(()));
        assert_eq!(runs_whole(&small, 1, &gpu, 2), Ok(()));
        assert_eq!(runs_whole(&small, 1, &gpu, 1).unwrap_err(), "2 steps, more than --whole-runs 1");
        assert_eq!(runs_whole(&small, 1, &gpu, 0).unwrap_err(), "2 steps, more than --whole-runs 0");
        assert_eq!(runs_whole(&small, 1, &[], 64).unwrap_err(), "step `b` needs a runs_on label this worker does not offer");
        assert_eq!(runs_whole(&small, 2, &gpu, 64).unwrap_err(), "attempt 2 of the run goes step by step");
        // A chain, however long, runs whole (but with --whole-runs 0).
        let chain = |n: usize| {
            let steps: String = (0..n).map(|i| format!("  - {{ id: s{i}, component: /builtin/eval{} }}\n", if i > 0 { format!(", needs: [s{}]", i - 1) } else { String::new() })).collect();
            workflow(&format!("name: c\nsteps:\n{steps}"))
        };
        assert_eq!(runs_whole(&chain(500), 1, &[], 64), Ok(()));
        assert_eq!(runs_whole(&chain(500), 1, &[], 0).unwrap_err(), "500 steps, more than --whole-runs 0");
        // FLOW's `each` runs forEach items.
        assert_eq!(runs_whole(&workflow(FLOW), 1, &[], 64).unwrap_err(), "step `each` runs forEach items");
        let waits = [
            ("{ id: w, component: /builtin/eval, wait: { duration: 1s } }", "step `w` waits"),
            ("{ id: w, component: /builtin/sleep, input: { duration: 1s } }", "step `w` waits"),
            ("{ id: w, component: /builtin/approval, input: { message: ok } }", "step `w` waits"),
            ("{ id: w, component: /builtin/signal, input: {} }", "step `w` waits"),
        ];
        for (step, why) in waits {
            let plan = workflow(&format!("name: w\nsteps:\n  - {step}\n"));
            assert_eq!(runs_whole(&plan, 1, &[], 64).unwrap_err(), why, "{step}");
        }
    }

    #[test]
    fn truthiness_of_skip_if_values() {
        for v in [json!(null), json!(false), json!(0), json!(""), json!([]), json!({})] {
            assert!(!truthy(&v), "{v}");
        }
        for v in [json!(true), json!(1), json!("no"), json!([0]), json!({"a": null})] {
            assert!(truthy(&v), "{v}");
        }
    }

    #[test]
    fn on_error_decides_what_a_failure_does_to_the_run() {
        let plan = workflow(FLOW);
        let boom = || Ending::Ran(Err(StepFailure::new(FailureKind::Trap, "boom")));
        let v = verdict(&plan, 0, boom(), None);
        assert_eq!((v.state, v.releases, v.stop), (StepState::Failed, false, Some(Stop::Failed(0))));
        let v = verdict(&plan, 1, boom(), None);
        assert_eq!((v.state, v.releases, v.stop, v.output), (StepState::Failed, true, None, Some(json!({"fallback": true}))));
        let v = verdict(&plan, 2, boom(), None);
        assert_eq!((v.state, v.releases, v.reason.as_deref()), (StepState::Skipped, true, Some("it failed and `on_error` is `skip`")));
        let v = verdict(&plan, 0, Ending::Ran(Ok(json!(1))), Some(Stop::Failed(3)));
        assert_eq!((v.state, v.releases, v.stop, v.output), (StepState::Succeeded, true, None, Some(json!(1))));
    }

    #[test]
    fn a_cancelled_attempt_cancels_the_run_unless_it_already_stopped() {
        let plan = workflow(FLOW);
        let cancelled = || Ending::Ran(Err(StepFailure::new(FailureKind::Cancelled, "cancelled")));
        let v = verdict(&plan, 0, cancelled(), None);
        assert_eq!((v.state, v.stop), (StepState::Cancelled, Some(Stop::Cancelled)));
        let v = verdict(&plan, 0, cancelled(), Some(Stop::Unrecorded));
        assert_eq!((v.state, v.stop), (StepState::Cancelled, None));
        let v = verdict(&plan, 0, cancelled(), Some(Stop::TimedOut));
        assert_eq!(v.state, StepState::Failed);
        assert_eq!(v.error.map(|e| e.kind), Some(FailureKind::Timeout));
    }

    #[test]
    fn ready_steps_are_decided_from_the_outputs_they_read() {
        let plan = workflow(FLOW);
        let wf = &plan.workflow;
        let (secrets, cel) = (BTreeMap::new(), CelCache::default());
        let input = json!({"items": [1, 2], "go": false});
        let f = facts(&input, &secrets, &cel);
        let mut outputs: BTreeMap<String, Option<Value>> = BTreeMap::new();
        outputs.insert("a".into(), Some(json!("A")));
        assert_eq!(
            decide(&f, &wf.steps[3], &outputs),
            Decision::Run(Work::Each { inputs: vec![json!({"n": 1}), json!({"n": 2})], concurrency: 3 })
        );
        assert!(matches!(decide(&f, &wf.steps[4], &outputs), Decision::Skip { ref reason, warning: None } if reason == "`when` is false"));
        // A run's CEL conversions are cached per run: a new input is a new cache.
        let (input, cel) = (json!({"items": "no", "go": true}), CelCache::default());
        let f = facts(&input, &secrets, &cel);
        assert_eq!(decide(&f, &wf.steps[4], &outputs), Decision::Run(Work::One(json!({"x": "A"}))));
        assert!(matches!(decide(&f, &wf.steps[3], &outputs), Decision::Fail(ref e) if e.message == "`forEach` gave a string, not an array"));
        outputs.insert("a".into(), None);
        assert!(matches!(decide(&f, &wf.steps[4], &outputs), Decision::Skip { ref reason, .. } if reason == "step `a` was skipped"));
    }

    #[test]
    fn items_keep_their_order_and_the_first_failure() {
        let plan = workflow(FLOW);
        let decl = &plan.workflow.steps[3];
        let mut items = Items::new(3);
        items.record(decl, 2, Ok(json!("c")));
        items.record(decl, 0, Ok(json!("a")));
        assert!(items.may_start());
        items.record(decl, 1, Ok(json!("b")));
        assert_eq!(items.result(), Ok(json!(["a", "b", "c"])));
        let mut items = Items::new(2);
        items.record(decl, 1, Err(StepFailure::new(FailureKind::Trap, "x")));
        items.record(decl, 0, Err(StepFailure::new(FailureKind::Fuel, "y")));
        assert!(!items.may_start());
        assert_eq!(items.result().map_err(|e| e.message), Err("item 1: x".to_string()));
    }

    const DEPENDS: &str = r#"
name: depends
steps:
  - { id: build, component: /builtin/eval }
  - { id: test, component: /builtin/eval, needs: [build] }
  - { id: cleanup, component: /builtin/eval, depends: "build && (test.failed || test.Skipped)" }
  - { id: report, component: /builtin/eval, needs: [test] }
  - { id: each, component: /builtin/eval, forEach: "{{ inputs.items }}" }
  - { id: any, component: /builtin/eval, depends: "each.any_succeeded && !each.AllFailed" }
"#;

    fn ended(state: StepState, blocks: bool) -> Option<Outcome> {
        Some(Outcome { state, blocks, items: None })
    }

    #[test]
    fn depends_gates_on_outcomes_and_a_blocking_dependency_blocks_the_rest() {
        let plan = workflow(DEPENDS);
        let failed = |i| match i {
            0 => ended(StepState::Succeeded, false),
            1 => ended(StepState::Failed, true),
            _ => None,
        };
        // `cleanup` names the failure: it runs, and never `dependency failed`.
        assert_eq!(gate(&plan, 2, &failed), None);
        // `report` only needs `test`: blocked, skipped as `dependency failed`.
        assert_eq!(gate(&plan, 3, &failed), Some(Decision::Blocked));
        let passed = |i| ended(StepState::Succeeded, false).filter(|_| i < 2);
        assert_eq!(
            gate(&plan, 2, &passed),
            Some(Decision::Skip { reason: "depends not met: build && (test.failed || test.Skipped)".into(), warning: None })
        );
        assert_eq!(gate(&plan, 3, &passed), None);
        // A failure `depends` names is handled: it does not stop the run.
        assert!(plan.handled[1] && !plan.handled[0]);
        let v = verdict(&plan, 1, Ending::Ran(Err(StepFailure::new(FailureKind::Trap, "boom"))), None);
        assert_eq!((v.state, v.releases, v.stop), (StepState::Failed, false, None));
        let v = verdict(&plan, 0, Ending::Blocked, None);
        assert_eq!((v.state, v.releases, v.reason.as_deref()), (StepState::Skipped, false, Some("dependency failed")));
    }

    #[test]
    fn for_each_outcomes_count_items() {
        let plan = workflow(DEPENDS);
        let each = |succeeded, failed| {
            move |i| (i == 4).then_some(Outcome { state: StepState::Succeeded, blocks: false, items: Some(ItemCounts { succeeded, failed, total: 3 }) })
        };
        assert_eq!(gate(&plan, 5, &each(1, 2)), None);
        assert!(matches!(gate(&plan, 5, &each(0, 3)), Some(Decision::Skip { .. })));
        let o = Outcome { state: StepState::Failed, blocks: true, items: Some(ItemCounts { succeeded: 1, failed: 2, total: 3 }) };
        assert_eq!(Outcome::decode(&o.encode(), true), Some(o));
        let o = Outcome { state: StepState::Skipped, blocks: false, items: None };
        assert_eq!(Outcome::decode(&o.encode(), false), Some(o));
    }

    #[test]
    fn without_fail_fast_a_failure_fails_the_run_but_does_not_halt_it() {
        let plan = workflow(&FLOW.replace("name: core", "name: core\nfail_fast: false"));
        let v = verdict(&plan, 0, Ending::Ran(Err(StepFailure::new(FailureKind::Trap, "boom"))), None);
        assert_eq!(v.stop, Some(Stop::Failing(0)));
        assert!(!Stop::halts(v.stop) && Stop::halts(Some(Stop::Failed(0))) && Stop::cancel_applies(v.stop));
        let (state, error) = run_end(&plan.workflow, v.stop, |_| Some(StepFailure::new(FailureKind::Trap, "boom")));
        assert_eq!((state, error.as_deref()), (RunState::Failed, Some("step `a` failed (trap): boom")));
    }

    #[test]
    fn stops_round_trip_through_their_encoding() {
        for stop in [Stop::Failed(12), Stop::Failing(3), Stop::Cancelled, Stop::TimedOut, Stop::Unrecorded] {
            assert_eq!(Stop::decode(&stop.encode()), Some(stop));
        }
        assert_eq!(Stop::decode("nonsense"), None);
    }

    #[test]
    fn the_run_end_names_the_step_that_stopped_it() {
        let plan = workflow(FLOW);
        let wf = &plan.workflow;
        let (state, error) = run_end(wf, Some(Stop::Failed(0)), |_| Some(StepFailure::new(FailureKind::Trap, "boom")));
        assert_eq!((state, error.as_deref()), (RunState::Failed, Some("step `a` failed (trap): boom")));
        assert_eq!(run_end(wf, None, |_| None), (RunState::Completed, None));
        assert_eq!(run_end(wf, Some(Stop::Cancelled), |_| None).0, RunState::Cancelled);
    }
}
