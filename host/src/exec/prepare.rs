//! Before a run: every component of a plan loaded (compiled or read from
//! the artifact cache), its SHA-256 pin checked and its imports checked;
//! every nested workflow loaded and planned. Problems are diagnostics at
//! the place the component or workflow is named.

use crate::plan::Plan;
use super::Loader;
use crate::sandbox::{DirGrant, Grants, HttpGrant, http_import, http_not_granted, sha256_hex};
use crate::workflow::{self, ComponentDecl, Diagnostic, Diagnostics, Location, Target, Workflow};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How deep `workflow:` steps may nest.
pub const MAX_NESTING: usize = 8;

/// A component ready to run, with its config and grants.
pub struct PreparedComponent {
    /// Its SHA-256: how the step runner knows it.
    pub sha256: String,
    /// `config:`: what it reads with `get-config`.
    pub config: Value,
    /// Env grants hold names; values are read from the host when a step starts.
    pub env: Vec<String>,
    /// Granted directories.
    pub dirs: Vec<DirGrant>,
    /// Outbound HTTP, when granted.
    pub http: Option<Arc<HttpGrant>>,
}

impl PreparedComponent {
    /// The grants with the host's current values of the granted variables.
    pub fn grants(&self) -> Grants {
        let env = self.env.iter().filter_map(|n| std::env::var(n).ok().map(|v| (n.clone(), v))).collect();
        Grants { env, dirs: self.dirs.clone(), http: self.http.clone() }
    }
}

/// A plan with everything it needs loaded.
pub struct Prepared {
    /// The plan.
    pub plan: Arc<Plan>,
    /// For each step: its component, when it runs one.
    pub components: Vec<Option<Arc<PreparedComponent>>>,
    /// For each `workflow:` step: the nested run, prepared.
    pub nested: Vec<Option<Arc<Prepared>>>,
}

impl Prepared {
    /// Only the steps `targets` name and everything they depend on: see
    /// [`Plan::targeted`]. No targets: the whole workflow.
    pub fn target(&self, targets: &[String]) -> Result<Prepared, String> {
        if targets.is_empty() {
            return Ok(Prepared { plan: self.plan.clone(), components: self.components.clone(), nested: self.nested.clone() });
        }
        let (plan, keep) = self.plan.targeted(targets)?;
        fn pick<T: Clone>(v: &[T], keep: &[bool]) -> Vec<T> {
            v.iter().zip(keep).filter(|(_, k)| **k).map(|(c, _)| c.clone()).collect()
        }
        Ok(Prepared { plan: Arc::new(plan), components: pick(&self.components, &keep), nested: pick(&self.nested, &keep) })
    }
}

impl Prepared {
    /// What the run would read of the machine that runs its steps, one line
    /// each, nested workflows included: `/builtin/load_file` steps (files
    /// beside the workflow) and components granted directories or
    /// environment variables. A server refuses such runs from clients it
    /// does not trust with its workers' files.
    pub fn host_access(&self) -> Vec<String> {
        let mut uses = Vec::new();
        for (i, step) in self.plan.workflow.steps.iter().enumerate() {
            let at = format!("{}:{}:{}", step.at.file.display(), step.at.line, step.at.column);
            if matches!(step.target, workflow::Target::Builtin(workflow::Builtin::LoadFile)) {
                uses.push(format!("{at}: step `{}` reads files with /builtin/load_file", step.id));
            }
            if let Some(c) = &self.components[i] {
                if !c.dirs.is_empty() {
                    uses.push(format!("{at}: step `{}`'s component is granted directories", step.id));
                }
                if !c.env.is_empty() {
                    uses.push(format!("{at}: step `{}`'s component is granted environment variables ({})", step.id, c.env.join(", ")));
                }
            }
            if let Some(nested) = &self.nested[i] {
                uses.extend(nested.host_access());
            }
        }
        uses
    }
}

/// Where preparing reads workflow files and components: the local disk, or
/// (on a worker) the files a submitted run was recorded with.
pub trait Files: Sync {
    /// The file's bytes.
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>>;
}

/// The local file system.
pub struct Disk;

impl Files for Disk {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        std::fs::read(path)
    }
}

/// Reads through another [`Files`] and keeps what was read, by path: the
/// files a run needs, for the store.
#[derive(Default)]
pub struct Recording<F> {
    /// Where files are read.
    pub inner: F,
    /// Every file read, by path.
    pub seen: std::sync::Mutex<std::collections::BTreeMap<PathBuf, Vec<u8>>>,
}

impl<F: Files> Files for Recording<F> {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        let bytes = self.inner.read(path)?;
        self.seen.lock().expect("not poisoned").insert(path.to_path_buf(), bytes.clone());
        Ok(bytes)
    }
}

/// A run's file path as its recorded files are looked up by: `./a.wasm`
/// and `a.wasm` are one path (a workflow in the current directory names
/// its components with `./`).
pub fn plain_path(path: &Path) -> PathBuf {
    path.components().filter(|c| !matches!(c, std::path::Component::CurDir)).collect()
}

/// Files by path, held in memory, looked up by [`plain_path`].
impl Files for std::collections::BTreeMap<PathBuf, Vec<u8>> {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        let wanted = plain_path(path);
        self.get(path)
            .or_else(|| self.iter().find(|(p, _)| plain_path(p) == wanted).map(|(_, bytes)| bytes))
            .cloned()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "not among the run's recorded files"))
    }
}

/// Loads everything `plan` needs through `runner`.
pub fn prepare(plan: Plan, runner: &dyn Loader) -> Result<Prepared, Diagnostics> {
    let mut stack = vec![canonical(&plan.workflow.file)];
    let (resolved, problems) = resolve(&plan.workflow, runner, &Disk, &mut stack);
    if !problems.is_empty() {
        return Err(Diagnostics { file: plan.workflow.file.to_path_buf(), problems }.sorted());
    }
    Ok(Prepared { plan: Arc::new(plan), components: resolved.components, nested: resolved.nested })
}

/// Reads, plans and prepares the workflow at `path`: every problem of
/// every stage (the file, the plan, the components, nested workflows) in
/// one report.
pub fn load(path: &Path, runner: &dyn Loader) -> Result<Prepared, Diagnostics> {
    load_nested(path, runner, &Disk, &mut Vec::new())
}

/// [`load`], with the components of a components file (`--components`)
/// bound to the names the workflow uses and does not declare itself.
pub fn load_with(path: &Path, runner: &dyn Loader, components: Option<&Path>) -> Result<Prepared, Diagnostics> {
    Parsed::read(path, components).prepare(runner)
}

/// A workflow file read and parsed (with what could be parsed, and its
/// problems), not yet planned or prepared: what a caller can look at
/// before it sets up the sandbox the components load into.
pub struct Parsed {
    path: PathBuf,
    workflow: Option<Workflow>,
    problems: Vec<Diagnostic>,
}

impl Parsed {
    /// Reads and parses the workflow at `path`, with the components of a
    /// components file (`--components`) bound as [`load_with`] does.
    pub fn read(path: &Path, components: Option<&Path>) -> Parsed {
        let (workflow, problems) = workflow::load_partial_with(path, components);
        Parsed { path: path.to_path_buf(), workflow, problems }
    }

    /// The workflow, if the file parsed far enough to have one.
    pub fn workflow(&self) -> Option<&Workflow> {
        self.workflow.as_ref()
    }

    /// Plans and prepares it: every problem of every stage in one report.
    pub fn prepare(self, runner: &dyn Loader) -> Result<Prepared, Diagnostics> {
        prepare_parsed(&self.path, self.workflow, self.problems, runner, &Disk, &mut Vec::new())
    }
}

/// [`load`], reading files through `files`.
pub fn load_from(path: &Path, runner: &dyn Loader, files: &dyn Files) -> Result<Prepared, Diagnostics> {
    load_nested(path, runner, files, &mut Vec::new())
}

/// [`load_with`], reading files (the components file too) through `files`:
/// what a submitted run is recorded with, and what a worker loads it from.
pub fn load_from_with(path: &Path, runner: &dyn Loader, files: &dyn Files, components: Option<&Path>) -> Result<Prepared, Diagnostics> {
    let (wf, problems) = workflow::read_partial(path, components, &|p| files.read(p));
    prepare_parsed(path, wf, problems, runner, files, &mut Vec::new())
}

fn load_nested(path: &Path, runner: &dyn Loader, files: &dyn Files, stack: &mut Vec<PathBuf>) -> Result<Prepared, Diagnostics> {
    let (wf, problems) = parse_file(path, files);
    prepare_parsed(path, wf, problems, runner, files, stack)
}

fn parse_file(path: &Path, files: &dyn Files) -> (Option<Workflow>, Vec<Diagnostic>) {
    workflow::read_partial(path, None, &|p| files.read(p))
}

/// Plans and prepares a parsed workflow, adding to the problems found so far.
fn prepare_parsed(
    path: &Path,
    wf: Option<Workflow>,
    mut problems: Vec<Diagnostic>,
    runner: &dyn Loader,
    files: &dyn Files,
    stack: &mut Vec<PathBuf>,
) -> Result<Prepared, Diagnostics> {
    let fail = |problems| Diagnostics { file: path.to_path_buf(), problems }.sorted();
    let Some(wf) = wf else { return Err(fail(problems)) };
    stack.push(canonical(path));
    let (resolved, more) = resolve(&wf, runner, files, stack);
    stack.pop();
    problems.extend(more);
    match Plan::new(wf) {
        Ok(plan) if problems.is_empty() => {
            Ok(Prepared { plan: Arc::new(plan), components: resolved.components, nested: resolved.nested })
        }
        Ok(_) => Err(fail(problems)),
        Err(d) => {
            problems.extend(d.problems);
            Err(fail(problems))
        }
    }
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

/// What `resolve` loads for each step.
struct Resolved {
    components: Vec<Option<Arc<PreparedComponent>>>,
    nested: Vec<Option<Arc<Prepared>>>,
}

/// Loads the components and nested workflows of `wf`'s steps.
fn resolve(wf: &Workflow, runner: &dyn Loader, files: &dyn Files, stack: &mut Vec<PathBuf>) -> (Resolved, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let mut named: HashMap<&str, Arc<PreparedComponent>> = HashMap::new();
    for (name, decl) in &wf.components {
        // Declared but unused components are still checked: a typo'd path
        // is worth knowing about before it is used.
        match load_component(decl.path.as_path(), decl, runner, files) {
            Ok(c) => {
                named.insert(name.as_str(), Arc::new(c));
            }
            Err(d) => diags.push(d),
        }
    }
    let mut components = Vec::with_capacity(wf.steps.len());
    let mut nested = Vec::with_capacity(wf.steps.len());
    let mut by_path: HashMap<PathBuf, Arc<PreparedComponent>> = HashMap::new();
    for step in &wf.steps {
        let mut component = None;
        let mut sub = None;
        match &step.target {
            Target::Named(name) => component = named.get(name.as_str()).cloned(),
            Target::Path(path) => {
                if let Some(c) = by_path.get(path) {
                    component = Some(c.clone());
                } else {
                    let decl = ComponentDecl {
                        name: path.display().to_string(),
                        path: path.clone(),
                        sha256: None,
                        config: Value::Null,
                        grants: Default::default(),
                        at: step.target_at.clone(),
                    };
                    match load_component(path, &decl, runner, files) {
                        Ok(c) => {
                            let c = Arc::new(c);
                            by_path.insert(path.clone(), c.clone());
                            component = Some(c);
                        }
                        Err(d) => diags.push(d),
                    }
                }
            }
            Target::Builtin(_) => {}
            Target::Workflow(path) => match nested_workflow(path, &step.target_at, runner, files, stack) {
                Ok(p) => sub = Some(Arc::new(p)),
                Err(d) => diags.extend(d),
            },
        }
        components.push(component);
        nested.push(sub);
    }
    (Resolved { components, nested }, diags)
}

/// Loads and prepares a nested workflow, refusing cycles and deep nesting.
fn nested_workflow(path: &Path, at: &Location, runner: &dyn Loader, files: &dyn Files, stack: &mut Vec<PathBuf>) -> Result<Prepared, Vec<Diagnostic>> {
    if stack.contains(&canonical(path)) {
        return Err(vec![Diagnostic::new(at, format!("workflow {} runs itself (through `workflow:` steps)", path.display()))]);
    }
    if stack.len() > MAX_NESTING {
        return Err(vec![Diagnostic::new(at, format!("`workflow:` steps nest more than {MAX_NESTING} deep"))]);
    }
    load_nested(path, runner, files, stack).map_err(|d| {
        let n = d.problems.len();
        let mut out = vec![Diagnostic::new(at, format!("nested workflow {} has {n} problem{}, listed with its own file", path.display(), if n == 1 { "" } else { "s" }))];
        out.extend(d.problems);
        out
    })
}

fn load_component(path: &Path, decl: &ComponentDecl, runner: &dyn Loader, files: &dyn Files) -> Result<PreparedComponent, Diagnostic> {
    let bytes = files.read(path).map_err(|e| {
        Diagnostic::new(&decl.at, format!("component `{}`: cannot read {}: {e}", decl.name, path.display()))
            .with_hint("paths are relative to the file that declares them; build components with components/build.sh")
    })?;
    if let Some(pin) = &decl.sha256 {
        let actual = sha256_hex(&bytes);
        if &actual != pin {
            return Err(Diagnostic::new(
                &decl.at,
                format!("component `{}`: {} has SHA-256 {actual}, but the workflow pins {pin}", decl.name, path.display()),
            )
            .with_hint("update the pin if the component changed on purpose"));
        }
    }
    let loaded = runner
        .load(&path.display().to_string(), &bytes)
        .map_err(|e| Diagnostic::new(&decl.at, format!("component `{}`: {e}", decl.name)))?;
    if decl.grants.http.is_none()
        && let Some(import) = http_import(&loaded.imports)
    {
        return Err(Diagnostic::new(&decl.at, format!("component `{}`: {}", decl.name, http_not_granted(import))));
    }
    for dir in &decl.grants.dirs {
        if !dir.host.is_dir() {
            return Err(Diagnostic::new(&dir.at, format!("granted directory {} does not exist", dir.host.display())));
        }
    }
    Ok(PreparedComponent {
        sha256: loaded.sha256,
        config: decl.config.clone(),
        env: decl.grants.env.clone(),
        dirs: decl
            .grants
            .dirs
            .iter()
            .map(|d| DirGrant { host: d.host.clone(), guest: d.guest.clone(), writable: d.writable })
            .collect(),
        http: decl.grants.http.clone().map(Arc::new),
    })
}
