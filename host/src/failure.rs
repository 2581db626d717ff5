//! How a step attempt fails: a [`FailureKind`] that callers match on, and a
//! one-line message for people. The kinds are those of SPEC §2.7.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a step attempt failed. Callers decide on this (retry, exit code,
/// display), never on the message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum FailureKind {
    /// The guest returned an error from `run`.
    Component,
    /// The guest crashed: a wasm trap such as `unreachable` or stack overflow.
    Trap,
    /// The guest ran out of its fuel (instruction) budget.
    Fuel,
    /// The attempt passed its wall-clock deadline.
    Timeout,
    /// The guest hit its memory cap.
    Memory,
    /// The output was not valid JSON, was over the size cap, or did not
    /// match the component's declared output schema.
    Output,
    /// An input reference did not resolve, or the input did not match the
    /// component's declared input schema.
    Reference,
    /// The component could not be instantiated (for example it imports
    /// something that is not granted).
    Instantiate,
    /// The run was cancelled while the attempt was running.
    Cancelled,
    /// The step went over a quota on what it may make the host hold (blobs,
    /// state, host handles), per attempt or per run. Never retried.
    Quota,
    /// The worker running the attempt stopped (its lease expired): the
    /// attempt is run again by another worker, without counting against
    /// `max_attempts`, until it has been lost too often.
    Lost,
}

impl FailureKind {
    /// The lowercase name used in events, the run store and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Component => "component",
            FailureKind::Trap => "trap",
            FailureKind::Fuel => "fuel",
            FailureKind::Timeout => "timeout",
            FailureKind::Memory => "memory",
            FailureKind::Output => "output",
            FailureKind::Reference => "reference",
            FailureKind::Instantiate => "instantiate",
            FailureKind::Cancelled => "cancelled",
            FailureKind::Quota => "quota",
            FailureKind::Lost => "lost",
        }
    }

    /// The kind named by [`FailureKind::as_str`].
    pub fn from_name(name: &str) -> Option<FailureKind> {
        use FailureKind::*;
        [Component, Trap, Fuel, Timeout, Memory, Output, Reference, Instantiate, Cancelled, Quota, Lost].into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed step attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct StepFailure {
    /// What kind of failure this is.
    pub kind: FailureKind,
    /// One line saying what went wrong, for people.
    pub message: String,
    /// Whether the guest allows a retry. Only meaningful for `component`
    /// failures; for other kinds the retry policy decides by kind.
    pub retryable: bool,
}

impl StepFailure {
    /// A failure of `kind`; retryable unless the kind is one a retry cannot fix.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        StepFailure { kind, message: message.into(), retryable: kind.is_retryable() }
    }

    /// The same failure, never retried.
    pub fn not_retryable(self) -> Self {
        StepFailure { retryable: false, ..self }
    }

    /// A `component` failure with the guest's own retry flag.
    pub fn component(message: impl Into<String>, retryable: bool) -> Self {
        StepFailure { kind: FailureKind::Component, message: message.into(), retryable }
    }
}

impl FailureKind {
    /// Whether failures of this kind are retried (SPEC §2.7): `component`
    /// (unless the guest says otherwise), `trap`, `timeout` and `fuel`.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            FailureKind::Component | FailureKind::Trap | FailureKind::Timeout | FailureKind::Fuel
        )
    }
}
