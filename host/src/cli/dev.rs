//! `sandflow dev`: the plugin author's watch loop, as `cargo watch` and
//! `spin watch` are. It builds a step project (its `build.sh`), then runs
//! its workflow's test cases (or `call`s its component with an input), and
//! does it again whenever a source file changes. Each build and each run
//! is a process of its own (this program, with the same state dir), so a
//! broken step never takes the loop down, and the compiled-component cache
//! is shared with every other command.

use super::render::say;
use super::{CliError, GlobalArgs, Output};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    sandflow new step greet --lang js && sandflow dev greet          # rebuild and test on every change\n  \
    sandflow dev greet --call '{\"name\": \"Ada\"}'                  # rebuild and call it\n  \
    sandflow dev workflows/diamond.yaml                             # re-test a workflow when it or a component changes\n\n\
    A step project is a directory with `build.sh` (run on every change) and `workflow.yaml` (its test cases); \
    target/, node_modules/, .venv/, .sandflow/ and built .wasm files are not watched. \
    `--call` prints each output on stdout, as `sandflow call` does.")]
pub(crate) struct DevArgs {
    /// A step project's directory, or a workflow file.
    #[arg(value_name = "PATH", default_value = ".")]
    path: PathBuf,
    /// Call the project's component with this input (JSON) instead of
    /// running the workflow's test cases.
    #[arg(long, value_name = "JSON")]
    call: Option<String>,
    /// How often to look for changes.
    #[arg(long, value_name = "DURATION", default_value = "300ms", value_parser = sandflow::units::parse_duration)]
    poll: Duration,
}

/// What `dev` watches, builds and runs.
struct Project {
    /// Watched: a project's directory (recursively), or a workflow's files.
    watch: Watch,
    build: Option<PathBuf>,
    workflow: Option<PathBuf>,
    dir: PathBuf,
}

enum Watch {
    Tree(PathBuf),
    Files(Vec<PathBuf>),
}

/// Directories that hold what builds make, never sources.
const NOT_WATCHED: &[&str] = &["target", "node_modules", ".venv", ".sandflow", "__pycache__", ".git"];

pub(crate) async fn execute(args: DevArgs, global: &GlobalArgs, out: &Output) -> Result<u8, CliError> {
    let project = project(&args.path)?;
    if args.call.is_some() && project.build.is_none() {
        return Err(CliError::invalid(format!("--call needs a step project (a directory with build.sh); {} is not one", args.path.display())));
    }
    if let Some(input) = &args.call {
        serde_json::from_str::<serde_json::Value>(input).map_err(|e| CliError::invalid(format!("--call: not JSON: {e}")))?;
    }
    let exe = super::this_program()?;
    let mut seen = fingerprint(&project.watch);
    loop {
        cycle(&project, &args, &exe, global, out).await;
        if !out.quiet {
            say!("watching {} for changes (Ctrl-C to stop)", project.dir.display());
        }
        // A change, then quiet for one more look (an editor writes a file
        // in several steps).
        loop {
            tokio::time::sleep(args.poll).await;
            let now = fingerprint(&project.watch);
            if now != seen {
                seen = now;
                loop {
                    tokio::time::sleep(args.poll).await;
                    let settled = fingerprint(&project.watch);
                    if settled == seen {
                        break;
                    }
                    seen = settled;
                }
                break;
            }
        }
        if !out.quiet {
            say!("changed: running again");
        }
    }
}

fn project(path: &Path) -> Result<Project, CliError> {
    if path.is_dir() {
        let build = Some(path.join("build.sh")).filter(|b| b.is_file());
        let workflow = Some(path.join("workflow.yaml")).filter(|w| w.is_file());
        if build.is_none() && workflow.is_none() {
            return Err(CliError::invalid(format!(
                "{} has neither build.sh nor workflow.yaml: give a step project (`sandflow new step NAME`) or a workflow file",
                path.display()
            )));
        }
        return Ok(Project { watch: Watch::Tree(path.to_path_buf()), build, workflow, dir: path.to_path_buf() });
    }
    // A workflow: it, and the components it names.
    let wf = sandflow::workflow::load(path).map_err(|d| CliError::invalid(d.to_string()))?;
    let mut files = vec![path.to_path_buf()];
    files.extend(wf.components.values().map(|c| c.path.clone()));
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(Project { watch: Watch::Files(files), build: None, workflow: Some(path.to_path_buf()), dir })
}

/// One build and run; what happened is on the terminal.
async fn cycle(project: &Project, args: &DevArgs, exe: &Path, global: &GlobalArgs, out: &Output) {
    if let Some(build) = &project.build {
        let began = Instant::now();
        if !out.quiet {
            say!("building {}…", project.dir.display());
        }
        let built = tokio::process::Command::new("bash").arg(build).current_dir(&project.dir).stdin(std::process::Stdio::null()).output().await;
        match built {
            Ok(o) if o.status.success() => {
                if !out.quiet {
                    say!("built in {:.1}s", began.elapsed().as_secs_f64());
                }
            }
            Ok(o) => {
                let log = String::from_utf8_lossy(&o.stderr);
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                say!("build failed ({}):", o.status);
                for line in tail.into_iter().rev() {
                    say!("  {line}");
                }
                return;
            }
            Err(e) => {
                say!("cannot run {}: {e}", build.display());
                return;
            }
        }
    }
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("--state-dir").arg(&global.state_dir);
    if out.quiet {
        cmd.arg("-q");
    }
    match (&args.call, &project.workflow) {
        (Some(input), _) => match newest_wasm(&project.dir) {
            Some(wasm) => {
                cmd.arg("call").arg(wasm).args(["--input", input]);
            }
            None => {
                say!("the build made no .wasm file in {}", project.dir.display());
                return;
            }
        },
        (None, Some(workflow)) => {
            // Quickly compiled code first: the edit loop waits for no
            // optimizing compile.
            cmd.arg("test").arg("--quick-compile").arg(workflow);
        }
        (None, None) => {
            say!("nothing to run: {} has no workflow.yaml (give --call JSON to call the component)", project.dir.display());
            return;
        }
    }
    let _ = cmd.stdin(std::process::Stdio::null()).status().await;
}

/// The `.wasm` file a project's build wrote last.
fn newest_wasm(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
}

/// What the watched files look like: names, sizes and times, as one hash.
fn fingerprint(watch: &Watch) -> u64 {
    let mut files = Vec::new();
    match watch {
        Watch::Tree(dir) => collect(dir, &mut files),
        Watch::Files(list) => files.extend(list.iter().cloned()),
    }
    files.sort();
    let mut h = DefaultHasher::new();
    for f in files {
        f.hash(&mut h);
        if let Ok(m) = f.metadata() {
            m.len().hash(&mut h);
            m.modified().ok().hash(&mut h);
        }
    }
    h.finish()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.filter_map(Result::ok) {
        let path = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        match e.file_type() {
            Ok(t) if t.is_dir() && !NOT_WATCHED.contains(&name.as_ref()) => collect(&path, out),
            Ok(t) if t.is_file() && !name.ends_with(".wasm") => out.push(path),
            _ => {}
        }
    }
}
