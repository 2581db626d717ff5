//! What `run`, `validate` and `graph` share: loading, planning and
//! preparing a workflow, with every problem printed and exit code 2.

use super::{CliError, Output, exit, render};
use crate::exec::{Prepared, prepare};
use crate::plan::Plan;
use crate::sandbox::Sandbox;
use crate::workflow::{self, Diagnostics};
use serde_json::json;
use std::path::Path;

/// Prints every problem (or `validation_error` events with `--json`) and
/// returns the exit-2 error.
pub(crate) fn report(out: &Output, diags: Diagnostics) -> CliError {
    if out.json {
        for p in &diags.problems {
            render::event(
                "validation_error",
                json!({
                    "file": p.location.file.display().to_string(),
                    "line": p.location.line,
                    "column": p.location.column,
                    "message": p.message,
                    "hint": p.hint,
                }),
            );
        }
    } else {
        for p in &diags.problems {
            eprintln!("error: {p}");
        }
    }
    let n = diags.problems.len();
    CliError::invalid(format!("{}: {n} problem{}; nothing was run", diags.file.display(), if n == 1 { "" } else { "s" }))
}

/// Loads and plans `file`: every static check that needs no component.
pub(crate) fn plan(file: &Path, out: &Output) -> Result<Plan, CliError> {
    let wf = workflow::load(file).map_err(|d| report(out, d))?;
    Plan::new(wf).map_err(|d| report(out, d))
}

/// Loads every component and nested workflow (compiling off the async workers).
pub(crate) async fn prepare_plan(plan: Plan, sandbox: &std::sync::Arc<Sandbox>, out: &Output) -> Result<Prepared, CliError> {
    let sandbox = sandbox.clone();
    let prepared = tokio::task::spawn_blocking(move || prepare(plan, &sandbox))
        .await
        .map_err(|e| CliError { code: exit::FAILED, message: format!("loading components failed: {e}") })?;
    prepared.map_err(|d| report(out, d))
}
