//! `sandflow new step NAME --lang rust|js|python`: the project it makes builds from a
//! fresh directory with its own `build.sh` and passes `sandflow call` and
//! its workflow's test cases with no edits.

use crate::support::{run, sandflow};

#[test]
fn a_new_rust_step_builds_and_runs_with_no_edits() {
    let (dir, state, project) = new_project("word-greeter", "rust");
    for file in ["Cargo.toml", "Cargo.lock", "src/lib.rs", "sdk/src/lib.rs", "wit/step.wit", "build.sh", "workflow.yaml", "README.md"] {
        assert!(project.join(file).is_file(), "{file}");
    }
    // Its own build script, from its own directory (a target dir of its own).
    let built = build(&project);
    assert!(built.status.success(), "build.sh failed:\n{}", String::from_utf8_lossy(&built.stderr));
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

/// The JS and Python templates need Node.js/npm and Python 3, which every
/// machine this project is developed and tested on has (a missing one
/// fails the test unless `SANDFLOW_SKIP=toolchains`).
fn toolchain(program: &str) -> bool {
    let found = std::process::Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        crate::support::skipping("toolchains", &format!("{program} is not installed"));
    }
    found
}

/// `new step NAME --lang LANG` in a fresh directory, which succeeds and
/// prints nothing: the directory (kept while the test runs), a state dir,
/// and the project's path.
fn new_project(name: &str, lang: &str) -> (tempfile::TempDir, tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let (code, out, err) = run(sandflow(&state).args(["new", "step", name, "--lang", lang, "--into"]).arg(dir.path()));
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty(), "{out}");
    let project = dir.path().join(name);
    (dir, state, project)
}

/// The project's `build.sh`, run.
fn build(project: &std::path::Path) -> std::process::Output {
    std::process::Command::new("bash").arg(project.join("build.sh")).output().unwrap()
}

/// `new step NAME --lang LANG`, its `build.sh`, `call` and its workflow's tests.
fn builds_and_runs(lang: &str, expected_files: &[&str]) {
    let (_dir, state, project) = new_project("hello-step", lang);
    for file in expected_files.iter().chain(&["wit/step.wit", "build.sh", "workflow.yaml", "README.md", ".gitignore"]) {
        assert!(project.join(file).is_file(), "{lang}: {file}");
    }
    // The run history `sandflow test` leaves beside it is not committed, and
    // the workflow uses sandflow's own forms (StepFlow's `$step` would make
    // it a StepFlow flow, with StepFlow's demand rule).
    let ignored = std::fs::read_to_string(project.join(".gitignore")).unwrap();
    assert!(ignored.lines().any(|l| l == ".sandflow/"), "{lang}: {ignored}");
    let workflow = std::fs::read_to_string(project.join("workflow.yaml")).unwrap();
    assert!(!workflow.contains("$step") && workflow.contains("$from: { step: greet }"), "{lang}: {workflow}");
    let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
    assert!(!readme.contains("(https://github.com/)"), "{lang}: a bare link: {readme}");
    let built = build(&project);
    assert!(built.status.success(), "{lang}: build.sh failed:\n{}", String::from_utf8_lossy(&built.stderr));
    let wasm = project.join("hello-step.wasm");
    let (code, out, err) = run(sandflow(&state).args(["call"]).arg(&wasm).args(["--input", r#"{"name": "Ada"}"#]));
    assert_eq!(code, 0, "{lang}: {err}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap(), serde_json::json!({"greeting": "Hello, Ada!"}));
    assert!(err.contains("info | greeting Ada"), "{lang}: the log line: {err}");
    let (code, out, err) = run(sandflow(&state).args(["component", "inspect"]).arg(&wasm));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("name:    hello-step 0.1.0") && out.contains("input schema:"), "{lang}: {out}");
    let (code, out, err) = run(sandflow(&state).arg("test").arg(project.join("workflow.yaml")));
    assert_eq!(code, 0, "{lang}: {out}{err}");
    assert!(out.ends_with("2 passed, 0 failed\n"), "{out}");
}

#[test]
fn a_new_javascript_step_builds_and_runs_with_no_edits() {
    if toolchain("npm") {
        builds_and_runs("js", &["step.js", "sandflow.js", "build.mjs", "package.json", "package-lock.json"]);
    }
}

#[test]
fn a_new_python_step_builds_and_runs_with_no_edits() {
    if toolchain("python3") {
        builds_and_runs("python", &["app.py", "sandflow.py", "requirements.txt"]);
    }
}

/// A JavaScript step's `warmUp` inputs go through its handler once, when
/// the component is built: the guest library answers the host's imports
/// there (no log line, no config, a state of its own that is then thrown
/// away), so nothing of the warm-up reaches a call's host; what the handler
/// keeps in module variables is where every call starts (here, a count of
/// the handler's runs: two at build time, then the call's). An `async`
/// handler cannot finish at build time: asking to warm one up fails the
/// build, saying so.
#[test]
fn a_javascript_steps_warm_up_runs_its_handler_once_at_build_time() {
    if !toolchain("npm") {
        return;
    }
    let (_dir, state, project) = new_project("warm", "js");
    let source = |handler: &str| {
        format!(
            "import {{ step, log, state, config }} from './sandflow.js';\n\
             let runs = 0;\n\
             export const {{ run, describe }} = step(\n\
               {{ name: 'warm', version: '0.1.0', warmUp: [{{ name: 'sample' }}, {{ name: 'other' }}] }},\n\
               {handler});\n"
        )
    };
    let handler = "(input) => {
        runs += 1;
        log.info(`hello ${input.name}`);
        const before = state.get('seen') ?? null;
        state.set('seen', input.name);
        return { runs, config: config(), before };
      }";
    std::fs::write(project.join("step.js"), source(handler)).unwrap();
    let built = build(&project);
    assert!(built.status.success(), "build.sh failed:\n{}", String::from_utf8_lossy(&built.stderr));
    let wasm = project.join("warm.wasm");
    let (code, out, err) =
        run(sandflow(&state).args(["call"]).arg(&wasm).args(["--input", r#"{"name": "Ada"}"#, "--config", r#"{"x": 1}"#]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap(), serde_json::json!({"runs": 3, "config": {"x": 1}, "before": null}));
    assert!(err.contains("info | hello Ada"), "the call's log line: {err}");
    assert!(!err.contains("sample") && !err.contains("other"), "the warm-up's log lines reached the call: {err}");

    std::fs::write(project.join("step.js"), source("async (input) => ({ runs, name: input.name })")).unwrap();
    let built = build(&project);
    let said = String::from_utf8_lossy(&built.stderr);
    assert!(!built.status.success(), "an async handler warmed up at build time built:\n{said}");
    assert!(said.contains("an async handler cannot finish; drop `warmUp`"), "{said}");
}

/// `sandflow dev PROJECT --call JSON`: builds the project and calls it,
/// then, when its handler is edited, builds and calls it again: the new
/// output comes without anything else typed, from a rebuild that reused
/// the first build's splice (build.mjs's cache). (A JavaScript project: its
/// rebuild is the quickest of the three templates'.)
#[test]
fn dev_rebuilds_and_calls_again_when_the_handler_changes() {
    if !toolchain("npm") {
        return;
    }
    let (_dir, state, project) = new_project("greet", "js");
    let mut dev = crate::support::sandflow(&state)
        .args(["dev", "--poll", "100ms", "--call", r#"{"name": "Ada"}"#])
        .arg(&project)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(dev.stdout.take().unwrap()));
    let mut next_greeting = || -> String {
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(g) = line.trim().strip_prefix("\"greeting\": ") {
                return g.to_string();
            }
        }
        panic!("dev ended without a greeting");
    };
    assert_eq!(next_greeting(), "\"Hello, Ada!\"");
    let handler = project.join("step.js");
    let text = std::fs::read_to_string(&handler).unwrap().replace("`Hello, ${input.name}!`", "`Good day, ${input.name}.`");
    std::fs::write(&handler, text).unwrap();
    assert_eq!(next_greeting(), "\"Good day, Ada.\"");
    let _ = dev.kill();
    let _ = dev.wait();
    // The rebuild used the first build's splice of the bindings into the
    // engine: one cache entry, its key independent of the handler.
    let spliced: Vec<_> = std::fs::read_dir(project.join("node_modules/.cache/sandflow-splice")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(spliced.len(), 1, "{spliced:?}");
}
