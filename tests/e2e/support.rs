//! Paths and helpers shared by the end-to-end tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ has a parent").to_path_buf()
}

/// An example component from `components/dist/`.
pub fn example(name: &str) -> PathBuf {
    root().join("components/dist").join(format!("{name}.wasm"))
}

/// A hostile test component from `components/dist/hostile/`.
pub fn hostile(name: &str) -> PathBuf {
    root().join("components/dist/hostile").join(format!("{name}.wasm"))
}

/// A `sandflow` command with its own state dir.
pub fn sandflow(state: &tempfile::TempDir) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandflow"));
    cmd.arg("--state-dir").arg(state.path()).current_dir(root());
    cmd
}

/// Runs `cmd`; returns (exit code, stdout, stderr).
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output { status, stdout, stderr } = cmd.output().expect("sandflow runs");
    (
        status.code().expect("exited, not killed"),
        String::from_utf8(stdout).expect("utf-8 stdout"),
        String::from_utf8(stderr).expect("utf-8 stderr"),
    )
}
