//! `sandflow new step NAME --lang rust`: the project it makes builds from a
//! fresh directory with its own `build.sh` and passes `sandflow call` and
//! its workflow's test cases with no edits.

use crate::support::{run, sandflow};

#[test]
fn a_new_rust_step_builds_and_runs_with_no_edits() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let (code, _, err) = run(sandflow(&state).args(["new", "step", "word-greeter", "--lang", "rust", "--into"]).arg(dir.path()));
    assert_eq!(code, 0, "{err}");
    let project = dir.path().join("word-greeter");
    for file in ["Cargo.toml", "Cargo.lock", "src/lib.rs", "sdk/src/lib.rs", "wit/step.wit", "build.sh", "workflow.yaml", "README.md"] {
        assert!(project.join(file).is_file(), "{file}");
    }
    // Its own build script, from its own directory (a target dir of its own).
    let build = std::process::Command::new("bash").arg(project.join("build.sh")).output().unwrap();
    assert!(build.status.success(), "build.sh failed:\n{}", String::from_utf8_lossy(&build.stderr));
    let wasm = project.join("word-greeter.wasm");
    let (code, out, err) = run(sandflow(&state).args(["-q", "call"]).arg(&wasm).args(["--input", r#"{"name": "Ada"}"#]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap(), serde_json::json!({"greeting": "Hello, Ada!"}));
    let (code, out, err) = run(sandflow(&state).arg("test").arg(project.join("workflow.yaml")));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.ends_with("2 passed, 0 failed\n"), "{out}");

    // A name that cannot be a crate, and one that is taken, are refused.
    let (code, _, err) = run(sandflow(&state).args(["new", "step", "Word", "--into"]).arg(dir.path()));
    assert_eq!(code, 2);
    assert!(err.contains("`Word` cannot name a step"), "{err}");
    let (code, _, err) = run(sandflow(&state).args(["new", "step", "word-greeter", "--into"]).arg(dir.path()));
    assert_eq!(code, 2);
    assert!(err.contains("already exists"), "{err}");
}
