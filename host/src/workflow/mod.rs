//! Workflow files: the YAML model (SPEC §2), parsed with line and column
//! for every problem, all problems gathered at once.
//!
//! ```no_run
//! let wf = sandflow::workflow::load("workflows/hello.yaml".as_ref())?;
//! println!("{} has {} steps", wf.name, wf.steps.len());
//! # Ok::<(), sandflow::workflow::Diagnostics>(())
//! ```

pub mod depends;
pub mod diagnostic;
pub mod model;
mod parse;
pub mod schema;
pub mod wait;
pub(crate) mod yaml;

pub use depends::{Cond, Depends};
pub use diagnostic::{Diagnostic, Diagnostics, Location};
pub use model::*;

use std::path::Path;
use std::sync::Arc;

/// Reads and parses a workflow file.
pub fn load(path: &Path) -> Result<Workflow, Diagnostics> {
    into_result(path, load_partial(path))
}

/// Parses workflow text; `path` names it in messages and anchors relative paths.
pub fn load_str(path: &Path, text: &str) -> Result<Workflow, Diagnostics> {
    into_result(path, load_str_partial(path, text))
}

fn into_result(path: &Path, (wf, problems): (Option<Workflow>, Vec<Diagnostic>)) -> Result<Workflow, Diagnostics> {
    match wf {
        Some(wf) if problems.is_empty() => Ok(wf),
        _ => Err(Diagnostics { file: path.to_path_buf(), problems }.sorted()),
    }
}

/// Like [`load`], but also returns what could be parsed of a workflow with
/// problems, so later checks (the plan, the components) can report theirs
/// in the same report. A workflow with problems must not be run.
pub fn load_partial(path: &Path) -> (Option<Workflow>, Vec<Diagnostic>) {
    load_partial_with(path, None)
}

/// How workflow and components files are read: the disk, or the files a
/// submitted run was recorded with.
pub type Reader<'a> = &'a dyn Fn(&Path) -> std::io::Result<Vec<u8>>;

/// [`load_partial`], with the components of a components file
/// (`--components`) bound to the names the workflow uses and does not
/// declare itself (see [`Workflow::bind`]); the file's problems come first.
pub fn load_partial_with(path: &Path, components: Option<&Path>) -> (Option<Workflow>, Vec<Diagnostic>) {
    read_partial(path, components, &|p| std::fs::read(p))
}

/// [`load_partial_with`], reading through `read`.
pub fn read_partial(path: &Path, components: Option<&Path>, read: Reader<'_>) -> (Option<Workflow>, Vec<Diagnostic>) {
    let (bound, mut problems) = match components.map(|extra| (extra, read(extra))) {
        None => Default::default(),
        Some((extra, Ok(bytes))) => load_components_str(extra, &String::from_utf8_lossy(&bytes)),
        Some((extra, Err(e))) => (Default::default(), vec![components_unreadable(extra, &e)]),
    };
    let (wf, more) = match read(path) {
        Ok(bytes) => load_str_partial(path, &String::from_utf8_lossy(&bytes)),
        Err(e) => (None, vec![Diagnostic::new(&Location::file_start(&Arc::from(path)), format!("cannot read the workflow: {e}"))]),
    };
    problems.extend(more);
    let wf = wf.map(|mut wf| {
        if components.is_some() {
            wf.bind(&bound);
        }
        wf
    });
    (wf, problems)
}

/// The directory relative paths in a workflow file are resolved against.
/// `flow.yaml` has the empty path as its parent, which names no directory
/// (it cannot be canonicalized, joined paths lose their anchor): it is `.`.
fn workflow_dir(path: &Path) -> std::path::PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    }
}

/// Like [`load_str`], with what could be parsed (see [`load_partial`]).
pub fn load_str_partial(path: &Path, text: &str) -> (Option<Workflow>, Vec<Diagnostic>) {
    let file: Arc<Path> = Arc::from(path);
    let dir = workflow_dir(path);
    let root = match yaml::parse(&file, text) {
        Ok(root) => root,
        Err(d) => return (None, vec![d]),
    };
    let mut cx = parse::Cx { file: file.clone(), dir, diags: Vec::new() };
    let wf = parse::workflow(&mut cx, &root, crate::sandbox::sha256_hex(text.as_bytes()), Arc::from(text));
    (wf, cx.diags)
}

/// Reads a components file (`--components FILE`): a `components:` section
/// of the same shape as a workflow's, paths relative to the file.
pub fn load_components(path: &Path) -> (std::collections::BTreeMap<String, ComponentDecl>, Vec<Diagnostic>) {
    match std::fs::read_to_string(path) {
        Ok(text) => load_components_str(path, &text),
        Err(e) => (Default::default(), vec![components_unreadable(path, &e)]),
    }
}

/// Why a components file could not be read.
fn components_unreadable(path: &Path, e: &std::io::Error) -> Diagnostic {
    Diagnostic::new(&Location::file_start(&Arc::from(path)), format!("cannot read the components file: {e}"))
}

/// Parses a components file's text (see [`load_components`]); `path`
/// names it and anchors its relative paths.
pub fn load_components_str(path: &Path, text: &str) -> (std::collections::BTreeMap<String, ComponentDecl>, Vec<Diagnostic>) {
    let file: Arc<Path> = Arc::from(path);
    let root = match yaml::parse(&file, text) {
        Ok(root) => root,
        Err(d) => return (Default::default(), vec![d]),
    };
    let mut cx = parse::Cx { file: file.clone(), dir: workflow_dir(path), diags: Vec::new() };
    let components = parse::components_file(&mut cx, &root);
    (components, cx.diags)
}
