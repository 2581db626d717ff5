//! `sandflow new step NAME --lang rust`: a ready component project that
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
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  sandflow new step greet --lang rust && greet/build.sh && sandflow call greet/greet.wasm --input '{\"name\": \"Ada\"}'")]
pub(crate) struct NewStepArgs {
    /// The step's name: lowercase letters, digits, `-` and `_`, starting with
    /// a letter. The project is made in a new directory of that name.
    name: String,
    /// The language of the step (JavaScript and Python are to come).
    #[arg(long, value_enum, default_value = "rust")]
    lang: Lang,
    /// Make the directory here instead of in the current directory.
    #[arg(long, value_name = "DIR", default_value = ".")]
    into: PathBuf,
}

const SDK_LIB: &str = include_str!("../../../components/sdk/src/lib.rs");
const WIT: &str = include_str!("../../../wit/step.wit");
const LOCK: &str = include_str!("../../../components/Cargo.lock");

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
        ("workflow.yaml", fill(include_str!("templates/rust/workflow.yaml.in"))),
        ("README.md", fill(include_str!("templates/rust/README.md.in"))),
        (".gitignore", include_str!("templates/rust/gitignore.in").to_string()),
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
    };
    write_all(&dir, &files).map_err(|e| CliError { code: exit::FAILED, message: format!("cannot write {}: {e}", dir.display()) })?;
    if !out.quiet {
        say!("made {} (Rust): build it with {}/build.sh, then `sandflow call {}/{}.wasm --input '{{\"name\": \"Ada\"}}'`", dir.display(), dir.display(), dir.display(), args.name);
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
