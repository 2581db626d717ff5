//! What `run`, `validate` and `graph` share: loading, planning and
//! preparing a workflow, with every problem printed and exit code 2.

use super::render::say;
use super::{CliError, Output, exit, render};
use crate::exec::Prepared;
use crate::plan::Plan;
use crate::sandbox::Sandbox;
use crate::workflow::Diagnostics;
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
            say!("error: {p}");
        }
    }
    let n = diags.problems.len();
    CliError::invalid(format!("{}: {n} problem{}; nothing was run", diags.file.display(), if n == 1 { "" } else { "s" }))
}

/// Loads and plans `file`: every static check that needs no component.
pub(crate) fn plan(file: &Path, out: &Output) -> Result<Plan, CliError> {
    Plan::load(file).map_err(|d| report(out, d))
}

/// Loads, plans and prepares `file`, compiling components off the async
/// workers: every static check, all problems in one report.
pub(crate) async fn load(file: &Path, sandbox: &std::sync::Arc<Sandbox>, out: &Output) -> Result<Prepared, CliError> {
    let (sandbox, file) = (sandbox.clone(), file.to_path_buf());
    let prepared = tokio::task::spawn_blocking(move || crate::exec::load(&file, &sandbox))
        .await
        .map_err(|e| CliError { code: exit::FAILED, message: format!("loading components failed: {e}") })?;
    prepared.map_err(|d| report(out, d))
}
