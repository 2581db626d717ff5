//! `sandflow signal RUN STEP`: ends a step that waits for a signal
//! (`/builtin/signal`) or an approval (`/builtin/approval`), through the
//! run store or `--server` ([`sandflow::runs::signal`] decides, once).

use super::render::say;
use super::{CliError, GlobalArgs, Output, exit, store_error};
use sandflow::runs::{SignalError, SignalRequest};
use serde_json::{Value, json};

#[derive(Debug, clap::Args)]
#[command(after_help = "A step that waits says so in `sandflow runs show` (state `waiting`) and in the run's \
    progress, with the command to send. The signal is recorded once; the process or worker that runs the step \
    ends it within a second, the data as its output. A second signal to the same step is refused.")]
#[command(group = clap::ArgGroup::new("what").required(true).args(["data", "approve", "reject"]))]
pub(crate) struct SignalArgs {
    /// The run (an id, or the start of one).
    pub(crate) id: String,
    /// The step that waits.
    pub(crate) step: String,
    /// A signal step's data (JSON): it becomes the step's output, and must
    /// match the step's `schema` if it has one.
    #[arg(long, value_name = "JSON")]
    pub(crate) data: Option<String>,
    /// Approve an approval step (it succeeds).
    #[arg(long)]
    pub(crate) approve: bool,
    /// Reject an approval step (it fails, so its `on_error` applies).
    #[arg(long)]
    pub(crate) reject: bool,
    /// A note kept with an approval or a rejection.
    #[arg(long, value_name = "TEXT", requires = "what")]
    pub(crate) comment: Option<String>,
}

impl SignalArgs {
    /// What is sent: `--data`'s JSON, or an approval's decision.
    pub(crate) fn data(&self) -> Result<Value, CliError> {
        match &self.data {
            Some(text) => serde_json::from_str(text).map_err(|e| CliError::invalid(format!("--data is not JSON: {e}"))),
            None => {
                let mut decision = json!({ "approved": self.approve });
                if let Some(c) = &self.comment {
                    decision["comment"] = json!(c);
                }
                Ok(decision)
            }
        }
    }
}

/// `sandflow signal` on the run store.
pub(crate) async fn execute(args: SignalArgs, global: &GlobalArgs, out: &Output) -> Result<u8, CliError> {
    let data = args.data()?;
    let store = global.open_store().await?;
    let id = super::run_id(store.as_ref(), &args.id).await?;
    let by = std::env::var("USER").ok().filter(|u| !u.is_empty()).map_or_else(|| "local".to_string(), |u| format!("local:{u}"));
    let request = SignalRequest { step: args.step.clone(), data, by, names: None };
    match sandflow::runs::signal(store.as_ref(), &id, request).await {
        Ok(signal) => {
            sent(&id, &args.step, &signal.by, out);
            Ok(exit::OK)
        }
        Err(e) => Err(signal_error(e)),
    }
}

/// Says a signal was taken.
pub(crate) fn sent(run: &str, step: &str, by: &str, out: &Output) {
    if out.json {
        super::render::event("signal_sent", json!({ "run_id": run, "step": step, "by": by }));
    } else if !out.quiet {
        say!("signal sent to step `{step}` of run {run} (as {by}); the step ends with it within a second");
    }
}

/// A refused signal as the CLI says it: data that does not fit is invalid
/// input (exit 2); a step that does not wait, or waits for someone else,
/// is a failure (exit 1).
pub(crate) fn signal_error(e: SignalError) -> CliError {
    match e {
        SignalError::Store(e) => store_error(e),
        SignalError::Refused { .. } => CliError::invalid(e.to_string()),
        other => CliError { code: exit::FAILED, message: other.to_string() },
    }
}
