//! The typed workflow: every key of SPEC §2, with where it was written.
//! Built by [`super::load`]; read by the planner.

use super::depends::Depends;
use super::diagnostic::Location;
use crate::expr::{CelExpr, Template};
use crate::sandbox::{Quota, QuotaKind};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A parsed workflow file.
#[derive(Debug, Clone)]
pub struct Workflow {
    /// The file as given on the command line (for messages).
    pub file: Arc<Path>,
    /// The directory relative paths in the file are resolved against.
    pub dir: PathBuf,
    /// Lowercase hex SHA-256 of the file's text.
    pub sha256: String,
    /// The file's text, as parsed: each run records it (by `sha256`), so a
    /// run's graph is drawn from what it ran.
    pub text: Arc<str>,
    /// `name`, or the file stem.
    pub name: String,
    /// `description`, shown by `sandflow workflow show` and the web view.
    pub description: Option<String>,
    /// JSON Schema the run input is checked against before any step starts.
    pub input_schema: Option<Value>,
    /// `defaults:`: each step's settings where it sets none of its own.
    pub defaults: StepSettings,
    /// The whole run's deadline.
    pub timeout: Option<Duration>,
    /// Most steps running at once.
    pub concurrency: Option<usize>,
    /// `fail_fast` (default true): a failure under `on_error: fail` stops
    /// new steps from starting. When false, independent branches still
    /// start and finish; the run still ends `failed`.
    pub fail_fast: bool,
    /// The time `finally` steps have, from when they start (default 60s).
    pub finally_timeout: Duration,
    /// The run's quotas (top-level `quota:`), over all its steps.
    pub quota: QuotaSettings,
    /// `components:`: named components, by name.
    pub components: BTreeMap<String, ComponentDecl>,
    /// The steps of `steps`, then those of `finally` (flagged `finally`).
    pub steps: Vec<StepDecl>,
    /// How the run output is built; `None`: SPEC §2.6's default.
    pub output: Option<Template>,
    /// `test.cases` (`sandflow test`).
    pub tests: Vec<TestCase>,
    /// `schedules:`: when runs start by themselves once the file is
    /// registered (`sandflow schedule add`).
    pub schedules: Vec<ScheduleDecl>,
    /// `triggers:`: webhooks that start runs once registered.
    pub triggers: Vec<TriggerDecl>,
    /// A StepFlow flow (a StepFlow-only key or value form is written): a
    /// step runs only when the output (or a step that runs) needs it, or
    /// it has `mustExecute`; the branch an `$if` does not take never runs.
    pub lazy: bool,
}

impl Workflow {
    /// Binds the names its steps use and `components:` does not declare to
    /// the components of a components file (`--components`): the
    /// workflow's own declarations win.
    pub fn bind(&mut self, bound: &BTreeMap<String, ComponentDecl>) {
        for step in &self.steps {
            if let Target::Named(name) = &step.target
                && !self.components.contains_key(name)
                && let Some(decl) = bound.get(name)
            {
                self.components.insert(name.clone(), decl.clone());
            }
        }
    }
}

/// Per-attempt settings a step can take from `defaults` or override.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepSettings {
    /// `timeout:`: each attempt's wall-clock deadline.
    pub timeout: Option<Duration>,
    /// `fuel:`: each attempt's fuel budget.
    pub fuel: Option<u64>,
    /// `memory:`: each attempt's memory cap, in bytes.
    pub memory: Option<u64>,
    /// `retry:`: how a failed attempt is tried again.
    pub retry: Option<RetryPolicy>,
    /// Per-attempt quotas (`quota:`), key by key.
    pub quota: QuotaSettings,
    /// `cache:`: a succeeded result is reused by later runs (memoization).
    pub cache: Option<CacheSpec>,
}

/// `cache: { ttl: 24h, key: "{{ input.url }}" }`.
#[derive(Debug, Clone)]
pub struct CacheSpec {
    /// How long an entry is reused after it is stored.
    pub ttl: Duration,
    /// What the result depends on instead of the whole resolved input: a
    /// value that may read `input` (the step's resolved input) and `secrets`.
    pub key: Option<Template>,
}

impl PartialEq for CacheSpec {
    /// Settings compare by what is written; a key by its text.
    fn eq(&self, other: &Self) -> bool {
        self.ttl == other.ttl && self.key.is_some() == other.key.is_some()
    }
}

impl StepSettings {
    /// `self`, with unset fields taken from `defaults`.
    pub fn or(&self, defaults: &StepSettings) -> StepSettings {
        StepSettings {
            timeout: self.timeout.or(defaults.timeout),
            fuel: self.fuel.or(defaults.fuel),
            memory: self.memory.or(defaults.memory),
            retry: self.retry.clone().or_else(|| defaults.retry.clone()),
            quota: self.quota.or(&defaults.quota),
            cache: self.cache.clone().or_else(|| defaults.cache.clone()),
        }
    }
}

/// `quota:` as written: the keys that are set. Per attempt under
/// `defaults` or a step, per run at the top level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaSettings([Option<u64>; QuotaKind::ALL.len()]);

impl QuotaSettings {
    /// The value of `kind`, if it is set.
    pub fn get(&self, kind: QuotaKind) -> Option<u64> {
        self.0[kind as usize]
    }

    /// Sets `kind` to `value`.
    pub fn set(&mut self, kind: QuotaKind, value: u64) {
        self.0[kind as usize] = Some(value);
    }

    /// `self`, with unset keys taken from `defaults`.
    pub fn or(&self, defaults: &QuotaSettings) -> QuotaSettings {
        QuotaSettings(std::array::from_fn(|i| self.0[i].or(defaults.0[i])))
    }

    /// `base` with the keys that are set here replaced.
    pub fn resolve(&self, mut base: Quota) -> Quota {
        for kind in QuotaKind::ALL {
            if let Some(v) = self.get(kind) {
                base.set(kind, v);
            }
        }
        base
    }
}

/// `retry: { max_attempts, backoff, delay, max_delay }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (at least 1).
    pub max_attempts: u32,
    /// How the wait between attempts grows.
    pub backoff: Backoff,
    /// The first wait (default 200 ms).
    pub delay: Duration,
    /// No wait is longer (default 10 s).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 1,
            backoff: Backoff::None,
            delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// How the wait between attempts grows (see [`RetryPolicy::delay_after`]).
pub enum Backoff {
    /// None: the next attempt starts at once.
    None,
    /// `delay × n` after attempt `n`.
    Linear,
    /// `delay × 2^(n-1)` after attempt `n`.
    Exponential,
}

impl RetryPolicy {
    /// The wait before attempt `n + 1`, after attempt `n` (from 1) failed:
    /// none 0; linear `delay × n`; exponential `delay × 2^(n-1)`; never
    /// above `max_delay`.
    pub fn delay_after(&self, n: u32) -> Duration {
        let n = n.max(1);
        let d = match self.backoff {
            Backoff::None => Duration::ZERO,
            Backoff::Linear => self.delay.saturating_mul(n),
            Backoff::Exponential => self.delay.saturating_mul(2u32.saturating_pow(n - 1)),
        };
        d.min(self.max_delay)
    }
}

/// A named component under `components:`.
#[derive(Debug, Clone)]
pub struct ComponentDecl {
    /// Its key under `components:`.
    pub name: String,
    /// The `.wasm` file, resolved against the workflow's directory.
    pub path: PathBuf,
    /// Expected lowercase hex SHA-256, if pinned.
    pub sha256: Option<String>,
    /// `config:`: the JSON the component reads with `get-config`.
    pub config: Value,
    /// `grants:`: what it may reach of the host.
    pub grants: GrantsDecl,
    /// Where it is declared.
    pub at: Location,
}

/// `grants:`: what the component may see of the host.
#[derive(Debug, Clone, Default)]
pub struct GrantsDecl {
    /// Environment variable names passed through.
    pub env: Vec<String>,
    /// `dirs`: host directories mapped into the guest.
    pub dirs: Vec<DirDecl>,
    /// `http`: outbound HTTP; `None` denies it.
    pub http: Option<crate::sandbox::HttpGrant>,
}

/// One granted directory.
#[derive(Debug, Clone)]
pub struct DirDecl {
    /// Resolved against the workflow's directory.
    pub host: PathBuf,
    /// The path the guest sees.
    pub guest: String,
    /// `mode: rw` (default read-only).
    pub writable: bool,
    /// Where it is written.
    pub at: Location,
}

/// What a step runs.
#[derive(Debug, Clone)]
pub enum Target {
    /// A name from `components:`.
    Named(String),
    /// A `.wasm` path, resolved against the workflow's directory.
    Path(PathBuf),
    /// `/builtin/NAME`.
    Builtin(Builtin),
    /// `workflow: FILE`: a nested run.
    Workflow(PathBuf),
}

/// The builtins (SPEC §3): they run in the host, without WebAssembly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// `{path}`: a file under the workflow's directory, as text.
    LoadFile,
    /// `{data}`: stores a blob in the run store; its id is the output.
    PutBlob,
    /// `{id}`: a stored blob's data.
    GetBlob,
    /// `{expr}`: a CEL expression's value.
    Eval,
    /// `{duration}` or `{until}`: waits, holding no worker slot (a durable timer).
    Sleep,
    /// `{name?, timeout?, schema?}`: waits for `sandflow signal`; its data is the output.
    Signal,
    /// `{message, approvers?, timeout?}`: waits for a person to approve or reject.
    Approval,
}

impl Builtin {
    /// Every builtin with its name after `/builtin/`.
    pub const ALL: [(&'static str, Builtin); 7] = [
        ("load_file", Builtin::LoadFile),
        ("put_blob", Builtin::PutBlob),
        ("get_blob", Builtin::GetBlob),
        ("eval", Builtin::Eval),
        ("sleep", Builtin::Sleep),
        ("signal", Builtin::Signal),
        ("approval", Builtin::Approval),
    ];

    /// Whether the step waits for a signal (`sandflow signal`) to end.
    pub fn takes_signals(self) -> bool {
        matches!(self, Builtin::Signal | Builtin::Approval)
    }

    /// Whether the step only waits (a timer or a signal): it holds no
    /// slot, and its driver ends it when it wakes (see `exec::core::woken`).
    pub fn waits(self) -> bool {
        matches!(self, Builtin::Sleep | Builtin::Signal | Builtin::Approval)
    }

    /// Its name after `/builtin/` (`load_file`).
    pub fn name(self) -> &'static str {
        Builtin::ALL.iter().find(|(_, b)| *b == self).map(|(n, _)| *n).expect("every builtin is listed")
    }
}

/// `on_error:`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OnError {
    /// What a failure does.
    pub action: ErrorAction,
    /// With `continue`: the failed step's output (null when absent).
    pub default_output: Option<Value>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
/// What a step's failure does to the run (`on_error:`).
pub enum ErrorAction {
    #[default]
    /// `fail` (default): the step fails, and so does the run.
    Fail,
    /// `continue`: the step fails; steps after it run with its `default_output`.
    Continue,
    /// `skip`: the step counts as skipped, and so do steps that need it.
    Skip,
}

/// One step.
#[derive(Debug, Clone)]
pub struct StepDecl {
    /// `id:`, unique in the workflow.
    pub id: String,
    /// Where the step's `id` is written.
    pub at: Location,
    /// What it runs: a component, a builtin or a nested workflow.
    pub target: Target,
    /// Where `component:` / `workflow:` is written.
    pub target_at: Location,
    /// `input:`: the template its input is built from.
    pub input: Template,
    /// `needs:`, each with where it is written.
    pub needs: Vec<(String, Location)>,
    /// `depends:`: the outcomes of the steps it names that let it run.
    /// (This and `when` are boxed: few steps have them, and a step stays
    /// small: a 10,000-step file holds 10,000 of them.)
    pub depends: Option<Box<Depends>>,
    /// `when:`: a CEL condition; false skips the step.
    pub when: Option<Box<CelExpr>>,
    /// StepFlow's `skipIf`: a value; true skips the step.
    pub skip_if: Option<Template>,
    /// `forEach:`: the items it runs once for each.
    pub for_each: Option<Template>,
    /// `concurrency:`: most `forEach` items running at once.
    pub concurrency: Option<usize>,
    /// Its attempt settings, over the workflow's `defaults`.
    pub settings: StepSettings,
    /// `on_error:`.
    pub on_error: OnError,
    /// `runs_on`: labels a worker must have to run the step (distributed
    /// runs only; a run in one process runs every step itself).
    pub runs_on: Vec<String>,
    /// `wait: { duration | until }`: a durable timer before the step starts.
    pub wait: Option<Template>,
    /// With Argo-style groups: the index of the step's group.
    pub group: Option<usize>,
    /// A step of `finally`: it starts once every step of `steps` has ended.
    pub finally: bool,
    /// StepFlow's `mustExecute`: in a StepFlow flow, it runs even when
    /// nothing the output needs reads it.
    pub must_execute: bool,
}

/// One entry of `schedules:`.
#[derive(Debug, Clone)]
pub struct ScheduleDecl {
    /// `name`, or its place in the list from 1.
    pub name: String,
    /// The cron expression as written, and parsed.
    pub cron: String,
    /// `cron`, parsed.
    pub parsed: crate::cron::Cron,
    /// An IANA time zone name (`UTC` unless given).
    pub timezone: String,
    /// The input of each run it starts.
    pub input: Value,
    /// `catchup:`: which missed ticks start runs.
    pub catchup: Catchup,
    /// `overlap:`: what a tick does while an earlier run runs.
    pub overlap: Overlap,
}

/// One entry of `triggers:`: a webhook, `POST /hooks/NAME` on `serve`.
#[derive(Debug, Clone)]
pub struct TriggerDecl {
    /// The hook's name: its URL's last part, unique in the store.
    pub webhook: String,
    /// The secret (by name) deliveries are signed with (HMAC-SHA256).
    pub secret: String,
    /// The run's input, from the request: `inputs.body` (its JSON) and
    /// `inputs.headers` (lower-case names); none: the body itself.
    pub input: Option<crate::expr::Template>,
}

/// Which ticks missed while no scheduler ran (a tick fired more than
/// [`crate::store::schedules::LATE`] after its time is missed) start runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Catchup {
    /// None: the schedule goes on from the next tick.
    None,
    /// One run, for the latest of them (as a Kubernetes CronJob or Argo's
    /// CronWorkflow does).
    #[default]
    One,
    /// A run for each.
    All,
}

/// What a tick does while a run the schedule started before is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Starts another (Argo's `Allow`).
    #[default]
    Allow,
    /// Starts none.
    Skip,
    /// Cancels the running ones, then starts one.
    CancelPrevious,
}

impl Catchup {
    /// Every value with its name as written.
    pub const ALL: [(&str, Catchup); 3] = [("none", Catchup::None), ("one", Catchup::One), ("all", Catchup::All)];
}

impl Overlap {
    /// Every value with its name as written.
    pub const ALL: [(&str, Overlap); 3] = [("allow", Overlap::Allow), ("skip", Overlap::Skip), ("cancel_previous", Overlap::CancelPrevious)];
}

/// One case of `test.cases`.
#[derive(Debug, Clone)]
pub struct TestCase {
    /// `name`, or its place in the list from 1.
    pub name: String,
    /// The run's input.
    pub input: Value,
    /// `target`: run only these steps and their dependencies (`run --target`).
    pub target: Vec<(String, Location)>,
    /// What the run must give.
    pub expect: Expectation,
    /// `signals`: what steps that wait for a signal or an approval are
    /// sent, at once (step id, data, where it is written).
    pub signals: Vec<(String, Value, Location)>,
    /// Where the case is written.
    pub at: Location,
}

/// What a test case expects.
#[derive(Debug, Clone, PartialEq)]
pub enum Expectation {
    /// The run completes with this output.
    Output(Value),
    /// The run fails.
    Failed,
    /// The run fails with an error containing this text.
    Error(String),
    /// StepFlow's older `outcome: skipped`: the run's output reads a skipped
    /// step, so the run completes with a null output.
    Skipped,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_schedules_match_the_spec_and_are_capped() {
        let p = |backoff| RetryPolicy {
            max_attempts: 6,
            backoff,
            delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(1),
        };
        let ms = |b| (1..=5).map(|n| p(b).delay_after(n).as_millis()).collect::<Vec<_>>();
        assert_eq!(ms(Backoff::None), [0, 0, 0, 0, 0]);
        assert_eq!(ms(Backoff::Linear), [200, 400, 600, 800, 1000]);
        assert_eq!(ms(Backoff::Exponential), [200, 400, 800, 1000, 1000]);
    }
}
