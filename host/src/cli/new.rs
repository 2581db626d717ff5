//! `sandflow new step NAME --lang rust|js|python`: a ready component project that
//! builds with its `build.sh` and passes `sandflow call` with no edits.
//! The templates are in `templates/`; the SDK, the WIT contract and the
//! pinned dependency versions are this repository's own, so a new project
//! builds what the examples build.

use super::render::say;
use super::{CliError, Output, exit};
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum NewCommand {
    /// A new step component project in directory NAME.
    Step(NewStepArgs),
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Lang {
    Rust,
    /// JavaScript, built with componentize-js (needs Node.js and npm).
    Js,
    /// Python, built with componentize-py (needs Python 3).
    Python,
}

impl Lang {
    fn name(self) -> &'static str {
        match self {
            Lang::Rust => "Rust",
            Lang::Js => "JavaScript",
            Lang::Python => "Python",
        }
    }
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  sandflow new step greet --lang rust && greet/build.sh && sandflow call greet/greet.wasm --input '{\"name\": \"Ada\"}'\n  sandflow new step greet --lang js      # step.js, built with componentize-js (Node.js and npm)\n  sandflow new step greet --lang python  # app.py, built with componentize-py (Python 3)")]
pub(crate) struct NewStepArgs {
    /// The step's name: lowercase letters, digits, `-` and `_`, starting with
    /// a letter. The project is made in a new directory of that name.
    name: String,
    /// The language of the step.
    #[arg(long, value_enum, default_value = "rust")]
    lang: Lang,
    /// Make the directory here instead of in the current directory.
    #[arg(long, value_name = "DIR", default_value = ".")]
    into: PathBuf,
}

/// The test workflow, one for every language: each template's step has the
/// same input and output (`{name}` → `{greeting}`).
const WORKFLOW: &str = include_str!("templates/workflow.yaml.in");
const SDK_LIB: &str = include_str!("../../../components/sdk/src/lib.rs");
const WIT: &str = include_str!("../../../wit/step.wit");
const LOCK: &str = include_str!("../../../components/Cargo.lock");
const JS_LIB: &str = include_str!("../../../components/js/sandflow.js");
const JS_BUILD: &str = include_str!("../../../components/js/build.mjs");
const JS_LOCK: &str = include_str!("../../../components/js/package-lock.json");
const PY_LIB: &str = include_str!("../../../components/python/sandflow.py");
const PY_REQUIREMENTS: &str = include_str!("../../../components/python/requirements.txt");

/// The files of a Rust step project named `name`: path and contents.
fn rust_files(name: &str) -> Vec<(&'static str, String)> {
    let fill = |t: &str| t.replace("@NAME@", name).replace("@CRATE@", &name.replace('-', "_"));
    vec![
        ("Cargo.toml", fill(include_str!("templates/rust/Cargo.toml.in"))),
        ("Cargo.lock", LOCK.to_string()),
        ("src/lib.rs", fill(include_str!("templates/rust/lib.rs.in"))),
        ("sdk/Cargo.toml", include_str!("templates/rust/sdk.Cargo.toml.in").to_string()),
        // The SDK finds the contract beside it.
        ("sdk/src/lib.rs", SDK_LIB.replace(r#"path: "../../wit""#, r#"path: "../wit""#)),
        ("wit/step.wit", WIT.to_string()),
        ("build.sh", fill(include_str!("templates/rust/build.sh.in"))),
        ("workflow.yaml", fill(WORKFLOW)),
        ("README.md", fill(include_str!("templates/rust/README.md.in"))),
        (".gitignore", include_str!("templates/rust/gitignore.in").to_string()),
    ]
}

/// The files of a JavaScript step project: the repository's guest library,
/// its pinned componentize-js (the lock file, renamed for the project) and
/// the build driver that keeps componentize-js's splice between builds.
fn js_files(name: &str) -> Vec<(&'static str, String)> {
    let fill = |t: &str| t.replace("@NAME@", name);
    vec![
        ("package.json", fill(include_str!("templates/js/package.json.in"))),
        ("package-lock.json", JS_LOCK.replace(r#""name": "sandflow-js-steps""#, &format!(r#""name": "{name}""#))),
        ("step.js", fill(include_str!("templates/js/step.js.in"))),
        ("sandflow.js", JS_LIB.to_string()),
        ("build.mjs", JS_BUILD.to_string()),
        ("wit/step.wit", WIT.to_string()),
        ("build.sh", fill(include_str!("templates/js/build.sh.in"))),
        ("workflow.yaml", fill(WORKFLOW)),
        ("README.md", fill(include_str!("templates/js/README.md.in"))),
        (".gitignore", include_str!("templates/js/gitignore.in").to_string()),
    ]
}

/// The files of a Python step project: the repository's guest library and
/// its pinned componentize-py.
fn python_files(name: &str) -> Vec<(&'static str, String)> {
    let fill = |t: &str| t.replace("@NAME@", name);
    vec![
        ("app.py", fill(include_str!("templates/python/app.py.in"))),
        ("sandflow.py", PY_LIB.to_string()),
        ("requirements.txt", PY_REQUIREMENTS.to_string()),
        ("wit/step.wit", WIT.to_string()),
        ("build.sh", fill(include_str!("templates/python/build.sh.in"))),
        ("workflow.yaml", fill(WORKFLOW)),
        ("README.md", fill(include_str!("templates/python/README.md.in"))),
        (".gitignore", include_str!("templates/python/gitignore.in").to_string()),
    ]
}

fn valid_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

pub(crate) fn execute(command: NewCommand, out: &Output) -> Result<u8, CliError> {
    let NewCommand::Step(args) = command;
    if !valid_name(&args.name) {
        return Err(CliError::invalid(format!(
            "`{}` cannot name a step: use lowercase letters, digits, `-` and `_`, starting with a letter (e.g. `word-count`)",
            args.name
        )));
    }
    let dir = args.into.join(&args.name);
    if dir.exists() {
        return Err(CliError::invalid(format!("{} already exists: choose another name or remove it", dir.display())));
    }
    let files = match args.lang {
        Lang::Rust => rust_files(&args.name),
        Lang::Js => js_files(&args.name),
        Lang::Python => python_files(&args.name),
    };
    write_all(&dir, &files).map_err(|e| CliError { code: exit::FAILED, message: format!("cannot write {}: {e}", dir.display()) })?;
    if !out.quiet {
        say!("made {} ({}): build it with {}/build.sh, then `sandflow call {}/{}.wasm --input '{{\"name\": \"Ada\"}}'`", dir.display(), args.lang.name(), dir.display(), dir.display(), args.name);
    }
    Ok(exit::OK)
}

fn write_all(dir: &Path, files: &[(&str, String)]) -> std::io::Result<()> {
    for (path, text) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("a file in the project"))?;
        std::fs::write(&path, text)?;
        if path.extension().is_some_and(|e| e == "sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    Ok(())
}
