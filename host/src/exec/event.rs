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
    Pending,
    Running,
    /// Waiting for a time or a signal (`wait:`, `/builtin/sleep`,
    /// `/builtin/signal`, `/builtin/approval`): it holds no slot.
    Waiting,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl StepState {
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
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl RunState {
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
    RunStarted {
        run_id: String,
        workflow: String,
        steps: usize,
    },
    /// An attempt of a step (or of one `forEach` item) started.
    StepStarted {
        run_id: String,
        step: String,
        attempt: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        item: Option<usize>,
        /// The worker that runs it (runs on workers).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        worker: Option<String>,
    },
    /// A step waits (see [`super::core::Wait`]): until a time, for a
    /// signal, or both. Recorded, so a run that comes back wakes it on time.
    StepWaiting {
        run_id: String,
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
        run_id: String,
        step: String,
        attempt: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        item: Option<usize>,
        error: StepFailure,
        #[serde(rename = "delay_ms", with = "millis")]
        delay: Duration,
        /// The fuel the failed attempt used.
        fuel_used: u64,
    },
    /// A step reached its final state.
    StepFinished {
        run_id: String,
        step: String,
        state: StepState,
        /// Attempts made (summed over `forEach` items); 0 if it never ran.
        attempt: u32,
        /// A `forEach` step's number of items (each may take attempts).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        items: Option<u32>,
        #[serde(rename = "duration_ms", with = "millis")]
        duration: Duration,
        fuel_used: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
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
        run_id: String,
        step: String,
        attempt: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<usize>,
        seq: usize,
        #[serde(flatten)]
        line: crate::sandbox::LogLine,
    },
    /// A step that succeeded in an earlier attempt of this run (before a
    /// `sandflow resume`): its recorded output is used, it does not run.
    StepRestored {
        run_id: String,
        step: String,
    },
    /// A warning about a step, e.g. a `when` that did not give a boolean.
    StepWarning {
        run_id: String,
        step: String,
        message: String,
    },
    RunFinished {
        run_id: String,
        state: RunState,
        #[serde(rename = "duration_ms", with = "millis")]
        duration: Duration,
        /// Shared with the sinks that keep it, not copied: it can hold
        /// every step's output.
        #[serde(skip_serializing_if = "Option::is_none")]
        output: Option<Arc<Value>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// Receives a run's events. Called by the scheduler, in order, before it
/// goes on: a sink that persists a step's result has it committed before
/// any dependent step starts.
#[async_trait::async_trait]
pub trait EventSink: Send + Sync {
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
