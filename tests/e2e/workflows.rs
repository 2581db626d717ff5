//! The example workflows in `workflows/`: every one has test cases, and
//! they all pass through `sandflow test`.

use crate::support::{example, newest_run, root, run, sandflow};
use serde_json::{Value, json};
use std::process::Command;

fn workflow_files() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(root().join("workflows"))
        .unwrap()
        .chain(std::fs::read_dir(root().join("workflows/lib")).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| p.strip_prefix(root()).unwrap().to_path_buf())
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_workflow_passes_its_test_cases() {
    let files = workflow_files();
    assert!(files.len() >= 4, "{files:?}");
    let state = tempfile::tempdir().unwrap();
    // workflows/secrets.yaml reads secrets.GREETING.
    let (code, out, err) = run(sandflow(&state).arg("test").args(&files).env("SANDFLOW_SECRET_GREETING", "s3cr3t-hello"));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!err.contains("no test cases"), "every workflow has test cases: {err}");
    let summary = out.lines().last().unwrap();
    let passed: usize = summary.split(' ').next().unwrap().parse().unwrap();
    assert_eq!(summary, format!("{passed} passed, 0 failed"));
    assert!(passed >= files.len(), "{out}");
}

#[test]
fn a_failing_case_is_reported_and_exits_1() {
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("wrong.yaml");
    std::fs::write(
        &file,
        format!(
            "components: {{ text: {{ path: {} }} }}\nsteps:\n  - {{ id: up, component: text, input: {{ op: upper, text: hi }} }}\n\
             test:\n  cases:\n    - {{ name: right, output: {{ text: HI }} }}\n    - {{ name: wrong, output: {{ text: hi }} }}\n",
            example("text").display()
        ),
    )
    .unwrap();
    let (code, out, _) = run(sandflow(&state).arg("test").arg(&file));
    assert_eq!(code, 1);
    assert!(out.contains("✓") && out.contains(": right"), "{out}");
    assert!(out.contains("✗") && out.contains(": wrong: output differs"), "{out}");
    assert_eq!(out.lines().last(), Some("1 passed, 1 failed"));
}

#[test]
fn run_prints_the_output_and_set_builds_the_input() {
    let state = tempfile::tempdir().unwrap();
    let (code, out, err) = run(sandflow(&state).args(["run", "workflows/diamond.yaml", "--set", "text= Hi There "]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!({"text": "HI THERE / hi there"}));
    assert!(err.lines().last().unwrap().contains(" completed in "), "{err}");
}

#[test]
fn an_input_that_fails_the_schema_is_exit_2_before_anything_runs() {
    let state = tempfile::tempdir().unwrap();
    let (code, out, err) = run(sandflow(&state).args(["--json", "run", "workflows/text-pipeline.yaml", "--input", "{\"text\": 5}"]));
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert!(!err.contains("run_started"), "nothing ran: {err}");
    assert!(err.contains("/text: 5 is not of type"), "{err}");
}

#[test]
fn a_run_of_a_file_that_is_not_there_leaves_no_store_behind() {
    // A store is opened early only when it exists already (beside the
    // workflow's reading): a mistyped name must not create one.
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("state");
    // `sandflow` with a state dir that does not exist yet.
    let sandflow_in = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandflow"));
        cmd.arg("--state-dir").arg(&dir).current_dir(root());
        cmd
    };
    let (code, out, err) = run(sandflow_in().args(["run", "workflows/no-such-file.yaml"]));
    assert_eq!(code, 2, "{err}");
    assert!(out.is_empty());
    assert!(err.contains("workflows/no-such-file.yaml:1:1: cannot read the workflow"), "{err}");
    assert!(!dir.join("sandflow.db").exists(), "a failed run made a store");
    // With a store there, a run of a good file after it is recorded as usual.
    let (code, _, err) = run(sandflow_in().args(["run", "-q", "workflows/diamond.yaml", "--set", "text=Hello World"]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(sandflow_in().args(["run", "workflows/no-such-file.yaml"]));
    assert_eq!(code, 2, "{err}");
    let (_, runs, _) = run(sandflow_in().args(["--json", "runs", "list"]));
    let runs: Value = serde_json::from_str(&runs).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 1, "only the good run is recorded: {runs}");
}

#[test]
fn graph_prints_mermaid_and_dot() {
    let state = tempfile::tempdir().unwrap();
    let (code, out, _) = run(sandflow(&state).args(["graph", "workflows/diamond.yaml"]));
    assert_eq!(code, 0);
    assert!(out.starts_with("flowchart TD\n"), "{out}");
    for edge in ["s_split --> s_upper", "s_split --> s_lower", "s_upper --> s_join", "s_lower --> s_join"] {
        assert!(out.contains(edge), "{edge}: {out}");
    }
    let (code, out, _) = run(sandflow(&state).args(["graph", "--format", "dot", "workflows/diamond.yaml"]));
    assert_eq!(code, 0);
    assert!(out.starts_with("digraph \"diamond\" {") && out.contains("\"split\" -> \"upper\";"), "{out}");
}

/// `cd project && sandflow run flow.yaml` is the most common way to run a
/// workflow; `/builtin/load_file` must find `data.json` beside it whatever
/// way the file is named.
#[test]
fn load_file_finds_files_beside_the_workflow_however_it_is_named() {
    let project = tempfile::tempdir().unwrap();
    let dir = project.path().join("proj");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("data.json"), r#"{"answer": 42}"#).unwrap();
    std::fs::write(
        dir.join("flow.yaml"),
        "steps:\n  - id: load\n    component: /builtin/load_file\n    input: { path: data.json }\noutput: \"{{ steps.load.output.data.answer }}\"\n",
    )
    .unwrap();
    let absolute = dir.join("flow.yaml").display().to_string();
    for (cwd, file) in [
        (dir.clone(), "flow.yaml"),
        (dir.clone(), "./flow.yaml"),
        (dir.clone(), absolute.as_str()),
        (project.path().to_path_buf(), "proj/flow.yaml"),
        (project.path().to_path_buf(), "./proj/flow.yaml"),
        (dir.join("sub"), "../flow.yaml"),
    ] {
        let state = tempfile::tempdir().unwrap();
        let (code, out, err) = run(sandflow(&state).current_dir(&cwd).args(["-q", "run", file]));
        assert_eq!((code, out.trim()), (0, "42"), "run {file} from {}: {err}", cwd.display());
    }
}

#[test]
fn runs_show_timeline_draws_a_bar_per_step() {
    let state = tempfile::tempdir().unwrap();
    let (code, _, err) = run(sandflow(&state).args(["-q", "run", "workflows/diamond.yaml", "--input", r#"{"text": " Hello World "}"#]));
    assert_eq!(code, 0, "{err}");
    let id = newest_run(sandflow(&state));
    let (code, out, err) = run(sandflow(&state).args(["runs", "show", &id, "--timeline"]));
    assert_eq!(code, 0, "{err}");
    let chart: Vec<&str> = out.lines().skip_while(|l| !l.starts_with(&format!("run {id} (completed, attempt 1): "))).collect();
    assert!(chart[1].trim_start().starts_with("step  |0"), "{out}");
    for step in ["split", "upper", "lower", "join"] {
        let line = chart.iter().find(|l| l.split('|').next().unwrap().trim() == step).unwrap_or_else(|| panic!("no {step}: {out}"));
        assert!(line.contains('█') && line.contains("| succeeded "), "{line}");
    }
}

#[test]
fn each_step_s_input_is_recorded_with_secrets_masked() {
    let state = tempfile::tempdir().unwrap();
    let (code, _, err) = run(sandflow(&state).env("SANDFLOW_SECRET_GREETING", "s3cr3t-hello").args(["--json", "run", "workflows/secrets.yaml"]));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("s3cr3t-hello"), "events mask it: {err}");
    let sign = err.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find(|e| e["event"] == "step_finished" && e["step"] == "sign").unwrap();
    assert_eq!(sign["input"], json!({"op": "template", "template": "{g}, world", "vars": {"g": "***"}}));
    let id = newest_run(sandflow(&state));
    let (_, shown, _) = run(sandflow(&state).args(["--json", "runs", "show", &id]));
    assert!(!shown.contains("s3cr3t-hello"), "{shown}");
    let shown: Value = serde_json::from_str(&shown).unwrap();
    let input = |step: &str| shown["steps"].as_array().unwrap().iter().find(|s| s["step"] == step).unwrap()["input"].clone();
    assert_eq!(input("sign")["vars"]["g"], "***");
    assert_eq!(input("length"), json!({"op": "count", "text": "***, world"}));
}
