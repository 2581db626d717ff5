//! What the scheduler tells the world: the only way out of a run. The
//! terminal display, `--json` lines and (later) the run store consume these;
//! none of them take part in running.

use crate::failure::StepFailure;
use crate::sandbox::StepLog;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// A step's state (SPEC §2.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    /// Not started yet: its dependencies have not all ended.
    Pending,
    /// An attempt is running.
    Running,
    /// Waiting for a time or a signal (`wait:`, `/builtin/sleep`,
    /// `/builtin/signal`, `/builtin/approval`): it holds no slot.
    Waiting,
    /// Ended with an output.
    Succeeded,
    /// Ended with an error, after its last attempt.
    Failed,
    /// Did not run: its `when` was false, or what it needed did not succeed.
    Skipped,
    /// Stopped by a cancel, a deadline or the run's failure.
    Cancelled,
}

impl StepState {
    /// Its name as written in events, the store and the web view (`succeeded`).
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Running => "running",
            StepState::Waiting => "waiting",
            StepState::Succeeded => "succeeded",
            StepState::Failed => "failed",
            StepState::Skipped => "skipped",
            StepState::Cancelled => "cancelled",
        }
    }

    /// The state named by [`StepState::as_str`].
    pub fn from_name(name: &str) -> Option<StepState> {
        use StepState::*;
        [Pending, Running, Waiting, Succeeded, Failed, Skipped, Cancelled].into_iter().find(|s| s.as_str() == name)
    }
}

/// A run's state (SPEC §2.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Recorded, not started (queued for workers).
    Pending,
    /// Started; some step has not ended.
    Running,
    /// Every step ended and the run has its output.
    Completed,
    /// A step failed (and nothing caught it), or the run's own checks did.
    Failed,
    /// Cancelled (`sandflow cancel`, Ctrl-C) or past its timeout.
    Cancelled,
}

impl RunState {
    /// Its name as written in events, the store and the web view (`completed`).
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Pending => "pending",
            RunState::Running => "running",
            RunState::Completed => "completed",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }
}

/// Something that happened in a run, in the order it happened.
/// Events deserialize from their JSON lines (the distributed store keeps
/// them so `runs follow` can replay them), without the step's log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A run started (or a resumed run started again).
    RunStarted {
        /// The run's id.
        run_id: String,
        /// The workflow's `name`.
        workflow: String,
        /// How many steps its plan has.
        steps: usize,
    },
    /// An attempt of a step (or of one `forEach` item) started.
    StepStarted {
        /// The run's id.
        run_id: String,
        /// The step's id.
        step: String,
        /// Which attempt this is, from 1.
        attempt: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        /// The `forEach` item's index, for a step over items.
        item: Option<usize>,
        /// The worker that runs it (runs on workers).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        worker: Option<String>,
    },
    /// A step waits (see [`super::core::Wait`]): until a time, for a
    /// signal, or both. Recorded, so a run that comes back wakes it on time.
    StepWaiting {
        /// The run's id.
        run_id: String,
        /// The step's id.
        step: String,
        /// `wait` (then it runs), `sleep`, `signal` or `approval`.
        kind: super::core::WaitKind,
        /// When it wakes (RFC 3339): its timer, or a signal's timeout.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<String>,
        /// What a signal or approval step asks (its input; secrets masked).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input: Option<Arc<Value>>,
    },
    /// An attempt failed and will be retried after `delay`.
    StepRetrying {
        /// The run's id.
        run_id: String,
        /// The step's id.
        step: String,
        /// The attempt that failed, from 1.
        attempt: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        /// The `forEach` item's index, for a step over items.
        item: Option<usize>,
        /// Why the attempt failed.
        error: StepFailure,
        #[serde(rename = "delay_ms", with = "millis")]
        /// How long until the next attempt (`delay_ms` in JSON).
        delay: Duration,
        /// The fuel the failed attempt used.
        fuel_used: u64,
    },
    /// A step reached its final state.
    StepFinished {
        /// The run's id.
        run_id: String,
        /// The step's id.
        step: String,
        /// Its final state.
        state: StepState,
        /// Attempts made (summed over `forEach` items); 0 if it never ran.
        attempt: u32,
        /// A `forEach` step's number of items (each may take attempts).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        items: Option<u32>,
        #[serde(rename = "duration_ms", with = "millis")]
        /// From its first attempt's start to its end (`duration_ms` in JSON).
        duration: Duration,
        /// The fuel its attempts used, all together.
        fuel_used: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        /// Why it failed (the last attempt's error), for a failed step.
        error: Option<StepFailure>,
        /// Why a skipped step was skipped.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// The input it ran with (a `forEach` step: each item's); none if
        /// it never ran. Shared, not copied, by the sinks that keep it (a
        /// `forEach` step's may hold 100,000 items), as is `output`.
        #[serde(skip_serializing_if = "Option::is_none")]
        input: Option<Arc<Value>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        /// Its output, for a step that succeeded (a `forEach` step: the items' outputs in order).
        output: Option<Arc<Value>>,
        /// Where secrets were masked in `output` (set by the masking sink),
        /// so a resume can put them back.
        #[serde(skip, default)]
        output_secrets: Option<super::redact::SecretSpans>,
        /// The fuel of its last attempt (`fuel_used` is all attempts'), for
        /// the store's record of attempts; none for a `forEach` step.
        #[serde(skip, default)]
        last_fuel: Option<u64>,
        #[serde(skip, default)]
        /// Its log: each line it kept, with what was dropped past its quota. Not in the JSON line.
        log: StepLog,
        /// Its result is one a run stored before (`cache:`): it did not run.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        cached: bool,
    },
    /// A line a running step just wrote to its log (`seq`: its index in
    /// the attempt's log), for following the step as it runs. The step's
    /// whole log still comes with its [`Event::StepFinished`], and replaces
    /// these: a sink that shows or keeps them need not keep them long.
    StepLogLine {
        /// The run's id.
        run_id: String,
        /// The step's id.
        step: String,
        /// The attempt that wrote it, from 1.
        attempt: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        /// The `forEach` item's index, for a step over items.
        item: Option<usize>,
        /// The line's index in the attempt's log, from 0.
        seq: usize,
        #[serde(flatten)]
        /// The line (its source and text; secrets masked).
        line: crate::sandbox::LogLine,
    },
    /// A step that succeeded in an earlier attempt of this run (before a
    /// `sandflow resume`): its recorded output is used, it does not run.
    StepRestored {
        /// The run's id.
        run_id: String,
        /// The step's id.
        step: String,
    },
    /// A warning about a step, e.g. a `when` that did not give a boolean.
    StepWarning {
        /// The run's id.
        run_id: String,
        /// The step's id.
        step: String,
        /// What is wrong, for a person to read.
        message: String,
    },
    /// The run ended: the last event of a run.
    RunFinished {
        /// The run's id.
        run_id: String,
        /// How it ended.
        state: RunState,
        #[serde(rename = "duration_ms", with = "millis")]
        /// From its start to its end (`duration_ms` in JSON).
        duration: Duration,
        /// Shared with the sinks that keep it, not copied: it can hold
        /// every step's output.
        #[serde(skip_serializing_if = "Option::is_none")]
        output: Option<Arc<Value>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        /// Why it failed or was cancelled.
        error: Option<String>,
    },
}

/// Receives a run's events. Called by the scheduler, in order, before it
/// goes on: a sink that persists a step's result has it committed before
/// any dependent step starts.
#[async_trait::async_trait]
pub trait EventSink: Send + Sync {
    /// Takes one event. It must not block: a sink that writes somewhere slow queues the event and makes it durable by [`EventSink::barrier`].
    fn emit(&self, event: &Event);

    /// Returns once everything emitted so far is durable. The scheduler
    /// calls it before starting a step whose dependencies finished since
    /// the last barrier, and when the run ends, so a sink may write in the
    /// background and batch. The default has nothing to wait for.
    ///
    /// An error means some events could not be made durable: the run stops
    /// starting steps and ends `failed` with this message, because a step
    /// must never start on a result that is not recorded.
    async fn barrier(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// A sink could not make events durable (a full disk, a lost database).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64((d.as_secs_f64() * 1e6).round() / 1e3)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms = f64::deserialize(d)?;
        Ok(Duration::try_from_secs_f64(ms.max(0.0) / 1e3).unwrap_or_default())
    }
}
