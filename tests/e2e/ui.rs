//! Golden files: the exact error output of `sandflow validate` for each bad
//! workflow in `tests/ui/invalid/` is pinned in the `.err` beside it.
//! `SANDFLOW_BLESS=1 cargo test ui::` rewrites them after a deliberate change.

use crate::support::{root, run, sandflow};

#[test]
fn invalid_workflows_report_every_problem_with_file_line_and_column() {
    let dir = root().join("tests/ui/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "at least ten kinds of bad workflow: {files:?}");
    let state = tempfile::tempdir().unwrap();
    let bless = std::env::var_os("SANDFLOW_BLESS").is_some();
    let mut mismatches = Vec::new();
    for file in files {
        let relative = file.strip_prefix(root()).unwrap();
        let (code, out, err) = run(sandflow(&state).arg("validate").arg(relative));
        assert_eq!(code, 2, "{}: {err}", relative.display());
        assert!(out.is_empty());
        // A compile that took over a second says so: timing, not the report.
        let err: String = err.lines().filter(|l| !l.starts_with("compiling ") && !l.starts_with("compiled ")).map(|l| format!("{l}\n")).collect();
        let golden = file.with_extension("err");
        if bless {
            std::fs::write(&golden, &err).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        if want != err {
            mismatches.push(format!("{}:\n--- expected\n{want}--- got\n{err}", relative.display()));
        }
    }
    assert!(mismatches.is_empty(), "{}\n(run with SANDFLOW_BLESS=1 to accept)", mismatches.join("\n"));
}

#[test]
fn run_refuses_an_invalid_workflow_with_the_same_report() {
    let state = tempfile::tempdir().unwrap();
    let (code, out, err) = run(sandflow(&state).args(["run", "tests/ui/invalid/cycle.yaml"]));
    assert_eq!(code, 2);
    assert!(out.is_empty());
    let want = std::fs::read_to_string(root().join("tests/ui/invalid/cycle.err")).unwrap();
    assert_eq!(err, want);
}

/// Every example workflow file.
fn example_workflows() -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for dir in ["workflows", "workflows/lib", "workflows/stepflow"] {
        let Ok(entries) = std::fs::read_dir(root().join(dir)) else { continue };
        files.extend(entries.map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "yaml")));
    }
    files.sort();
    files
}

#[test]
fn the_committed_schema_is_the_cli_s_and_every_example_validates_against_it() {
    let state = tempfile::tempdir().unwrap();
    let (code, out, err) = run(sandflow(&state).arg("schema"));
    assert_eq!(code, 0, "{err}");
    let committed = std::fs::read_to_string(root().join("workflow.schema.json")).unwrap();
    assert!(
        out == committed,
        "workflow.schema.json is not what `sandflow schema` prints: run `cargo run -p sandflow -- schema > workflow.schema.json`"
    );
    let schema: serde_json::Value = serde_json::from_str(&committed).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let files = example_workflows();
    assert!(files.len() >= 15, "{files:?}");
    let mut problems = Vec::new();
    for file in &files {
        let doc: serde_json::Value = serde_yaml::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        problems.extend(validator.iter_errors(&doc).map(|e| format!("{}: {} at {}", file.display(), e, e.instance_path())));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // A misspelt key is refused, at the top level and in a step.
    for bad in [
        "steps: [ { id: a, component: x.wasm } ]\nstpes: []\n",
        "steps: [ { id: a, component: x.wasm, nedds: [b] } ]\n",
        "steps: [ { id: a, component: x.wasm, retry: { backoff: quadratic } } ]\n",
        "steps: [ { id: a, component: x.wasm, timeout: 30 } ]\n",
    ] {
        let doc: serde_json::Value = serde_yaml::from_str(bad).unwrap();
        assert!(!validator.is_valid(&doc), "accepted: {bad}");
    }
}
