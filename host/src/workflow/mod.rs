//! Workflow files: the YAML model (SPEC §2), parsed with line and column
//! for every problem, all problems gathered at once.
//!
//! ```no_run
//! let wf = sandflow::workflow::load("workflows/hello.yaml".as_ref())?;
//! println!("{} has {} steps", wf.name, wf.steps.len());
//! # Ok::<(), sandflow::workflow::Diagnostics>(())
//! ```

pub mod diagnostic;
pub mod model;
mod parse;
pub mod yaml;

pub use diagnostic::{Diagnostic, Diagnostics, Location};
pub use model::*;

use std::path::Path;
use std::sync::Arc;

/// Reads and parses a workflow file.
pub fn load(path: &Path) -> Result<Workflow, Diagnostics> {
    let file: Arc<Path> = Arc::from(path);
    let text = std::fs::read_to_string(path).map_err(|e| Diagnostics {
        file: path.to_path_buf(),
        problems: vec![Diagnostic::new(&Location::file_start(&file), format!("cannot read the workflow: {e}"))],
    })?;
    load_str(path, &text)
}

/// Parses workflow text; `path` names it in messages and anchors relative paths.
pub fn load_str(path: &Path, text: &str) -> Result<Workflow, Diagnostics> {
    let file: Arc<Path> = Arc::from(path);
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let fail = |problems| Diagnostics { file: path.to_path_buf(), problems }.sorted();
    let root = yaml::parse(&file, text).map_err(|d| fail(vec![d]))?;
    let mut cx = parse::Cx { file: file.clone(), dir, diags: Vec::new() };
    let wf = parse::workflow(&mut cx, &root, crate::sandbox::sha256_hex(text.as_bytes()));
    match wf {
        Some(wf) if cx.diags.is_empty() => Ok(wf),
        _ => Err(fail(cx.diags)),
    }
}
