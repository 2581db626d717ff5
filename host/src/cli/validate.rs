//! `sandflow validate FILE`: every static check, components loaded and
//! their imports checked; nothing runs.

use super::render::say;
use super::{CliError, Output, exit, new_quick_sandbox, render, workflow_cmd};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, clap::Args)]
pub(crate) struct ValidateArgs {
    /// The workflow file(s) to check.
    #[arg(value_name = "FILE", required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    components: workflow_cmd::ComponentsArg,
}

pub(crate) async fn execute(args: ValidateArgs, state_dir: &Path, out: &Output) -> Result<u8, CliError> {
    // Components are loaded and checked, never instantiated: a small pool.
    let sandbox = Arc::new(new_quick_sandbox(state_dir, sandflow::sandbox::SandboxConfig::pool_for(Some(1)))?);
    let mut worst = exit::OK;
    for file in &args.files {
        let checked = workflow_cmd::load(file, &args.components, &sandbox, out).await;
        match checked {
            Ok(p) => {
                let wf = &p.plan.workflow;
                if out.json {
                    render::event("valid", json!({ "file": file.display().to_string(), "workflow": wf.name, "steps": wf.steps.len() }));
                } else if !out.quiet {
                    let components = p.components.iter().flatten().map(|c| c.sha256.as_str()).collect::<std::collections::BTreeSet<_>>().len();
                    say!("{}: valid ({} steps, {components} components)", file.display(), wf.steps.len());
                }
            }
            Err(e) => {
                render::error_line(out, &e.message);
                worst = worst.max(e.code);
            }
        }
    }
    Ok(worst)
}
