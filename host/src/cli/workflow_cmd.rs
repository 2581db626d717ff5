//! What `run`, `validate` and `graph` share: loading, planning and
//! preparing a workflow, with every problem printed and exit code 2.

use super::render::say;
use super::{CliError, Output, exit, render};
use sandflow::exec::{Parsed, Prepared};
use sandflow::plan::Plan;
use sandflow::sandbox::Sandbox;
use sandflow::workflow::Diagnostics;
use serde_json::json;
use std::path::{Path, PathBuf};

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

/// `--components FILE`: binds the component names a workflow uses and
/// does not declare (StepFlow's `/plugin/name`) to `.wasm` files.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct ComponentsArg {
    /// A components file: a `components:` section as in a workflow (paths
    /// relative to it), binding names the workflow uses and does not
    /// declare, such as StepFlow's `/mock/one_output`.
    #[arg(long = "components", id = "components", value_name = "FILE")]
    pub(crate) file: Option<PathBuf>,
}

/// Loads and plans `file`: every static check that needs no component.
pub(crate) fn plan(file: &Path, components: &ComponentsArg, out: &Output) -> Result<Plan, CliError> {
    Plan::load_with(file, components.file.as_deref()).map_err(|d| report(out, d))
}

/// Loads, plans and prepares `file`, compiling components off the async
/// workers: every static check, all problems in one report.
pub(crate) async fn load(file: &Path, components: &ComponentsArg, sandbox: &std::sync::Arc<Sandbox>, out: &Output) -> Result<Prepared, CliError> {
    prepare(parse(file, components).await?, sandbox, out).await
}

/// Reads and parses `file`, off the async workers; its problems are
/// reported by [`prepare`], with everything else found.
pub(crate) async fn parse(file: &Path, components: &ComponentsArg) -> Result<Parsed, CliError> {
    let (file, components) = (file.to_path_buf(), components.file.clone());
    tokio::task::spawn_blocking(move || Parsed::read(&file, components.as_deref()))
        .await
        .map_err(|e| CliError { code: exit::FAILED, message: format!("reading the workflow failed: {e}") })
}

/// Plans and prepares a parsed workflow, compiling components off the
/// async workers: every static check, all problems in one report.
pub(crate) async fn prepare(parsed: Parsed, sandbox: &std::sync::Arc<Sandbox>, out: &Output) -> Result<Prepared, CliError> {
    let sandbox = sandbox.clone();
    let prepared = tokio::task::spawn_blocking(move || parsed.prepare(&*sandbox))
        .await
        .map_err(|e| CliError { code: exit::FAILED, message: format!("loading components failed: {e}") })?;
    prepared.map_err(|d| report(out, d))
}
