//! The run store: history, resume after SIGKILL or failure, state that
//! outlives a process, and a store that is unusable.

use crate::support::{Backend, backends, example, hostile, run, sandflow};
use serde_json::{Value, json};
use std::io::BufRead;
use std::process::Stdio;

/// A chain of five slow steps, each a nap (the first of `first_nap_ms`,
/// the others of 300 ms), then an append to a text.
fn chain(dir: &std::path::Path, first_nap_ms: u32) -> std::path::PathBuf {
    let mut y = format!(
        "name: chain\ncomponents:\n  sleep: {{ path: '{}' }}\n  text: {{ path: '{}' }}\nsteps:\n  - {{ id: t0, component: text, input: {{ op: trim, text: {{ $from: {{ workflow: input }}, path: start }} }} }}\n",
        hostile("sleep").display(),
        example("text").display()
    );
    for i in 1..=5 {
        y.push_str(&format!(
            "  - {{ id: s{i}, component: sleep, needs: [t{p}], input: {{ ms: {ms} }} }}\n  - {{ id: t{i}, component: text, needs: [s{i}], input: {{ op: template, template: '{{p}}+{i}', vars: {{ p: '{{{{ steps.t{p}.output.text }}}}' }} }} }}\n",
            p = i - 1,
            ms = if i == 1 { first_nap_ms } else { 300 }
        ));
    }
    let file = dir.join("chain.yaml");
    std::fs::write(&file, y).unwrap();
    file
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// An in-process run (SQLite) killed and resumed. (A run on PostgreSQL is
/// run by workers: see `distributed::chaos_…` for kills there.)
#[test]
fn a_run_killed_at_several_points_resumes_to_the_same_output_without_rerunning_steps() {
    killed_and_resumed(&Backend::Sqlite);
}

fn killed_and_resumed(backend: &Backend) {
    let state = tempfile::tempdir().unwrap();
    let file = chain(state.path(), 300);
    let input = r#"{"start": " go "}"#;

    // The uninterrupted output, in a state dir of its own.
    let clean = tempfile::tempdir().unwrap();
    let (code, out, err) = run(sandflow(&clean).arg("run").arg(&file).args(["--input", input]));
    assert_eq!(code, 0, "{err}");
    let expected: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(expected, json!({"text": "go+1+2+3+4+5"}));

    // Kill after 2 steps finished, resume and kill after 2 more, ..., then finish.
    let mut child = backend.sandflow(&state).args(["--json", "run"]).arg(&file).args(["--input", input]).stderr(Stdio::piped()).spawn().unwrap();
    let mut run_id = String::new();
    let mut kills = 0;
    loop {
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut finished = 0;
        let mut line = String::new();
        let mut ended = false;
        while finished < 3 {
            line.clear();
            if stderr.read_line(&mut line).unwrap() == 0 {
                ended = true;
                break;
            }
            let e: Value = serde_json::from_str(&line).unwrap();
            if run_id.is_empty() {
                run_id = e["run_id"].as_str().unwrap().to_string();
            }
            if e["event"] == "step_finished" {
                finished += 1;
            }
        }
        if ended {
            assert!(child.wait().unwrap().success());
            break;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        child = backend.sandflow(&state).args(["--json", "resume", &run_id]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        if kills == 3 {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), expected);
            let restored = json_lines(&String::from_utf8_lossy(&out.stderr)).iter().filter(|e| e["event"] == "step_restored").count();
            assert!(restored >= 6, "the steps that succeeded before are restored: {restored}");
            break;
        }
    }
    assert_eq!(kills, 3);

    // Counted from the store: every step succeeded exactly once.
    let (code, out, _) = run(backend.sandflow(&state).args(["--json", "runs", "show", &run_id]));
    assert_eq!(code, 0);
    let record: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(record["status"], "completed");
    assert_eq!(record["attempt"], 4);
    assert_eq!(record["output"], expected);
    let steps = record["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 11);
    for s in steps {
        assert_eq!((s["state"].as_str(), s["attempts"].as_u64()), (Some("succeeded"), Some(1)), "{s}");
    }
    let db = backend.count(state.path(), "SELECT COUNT(*) FROM attempts WHERE run_id = $1 AND state = 'succeeded'", &run_id);
    assert_eq!(db, 11, "succeeded attempts recorded, one per step");
}

#[test]
fn a_failed_run_resumes_with_its_state_and_a_completed_one_says_so() {
    for backend in backends() {
        failed_and_resumed(&backend);
    }
}

fn failed_and_resumed(backend: &Backend) {
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("flaky.yaml");
    std::fs::write(
        &file,
        format!(
            "components: {{ flaky: {{ path: '{}' }}, text: {{ path: '{}' }} }}\nsteps:\n  \
             - {{ id: first, component: text, input: {{ op: upper, text: a }} }}\n  \
             - {{ id: flaky, component: flaky, needs: [first], input: {{ succeed_on: 2 }} }}\n",
            hostile("flaky").display(),
            example("text").display()
        ),
    )
    .unwrap();
    let (code, _, err) = run(backend.sandflow(&state).args(["--json", "run"]).arg(&file));
    assert_eq!(code, 1, "{err}");
    let run_id = json_lines(&err)[0]["run_id"].as_str().unwrap().to_string();
    // The flaky step's call count lives in the run's state in the store, so
    // the resumed attempt is its second call, and it succeeds.
    let (code, out, err) = run(backend.sandflow(&state).args(["--json", "resume", &run_id]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!({"calls": 2}));
    let events = json_lines(&err);
    assert!(events.iter().any(|e| e["event"] == "step_restored" && e["step"] == "first"));
    assert!(!events.iter().any(|e| e["event"] == "step_started" && e["step"] == "first"), "first is not run again");

    let (code, out, err) = run(backend.sandflow(&state).args(["resume", &run_id]));
    assert_eq!(code, 0);
    assert!(err.contains("already completed"), "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!({"calls": 2}));
    assert!(out.contains("{\n  \"calls\": 2\n}"), "printed as `run` prints it: {out}");
}

#[test]
fn history_lists_shows_and_logs_runs() {
    for backend in backends() {
        history(&backend);
    }
}

fn history(backend: &Backend) {
    let state = tempfile::tempdir().unwrap();
    let (code, _, err) = run(backend.sandflow(&state).args(["run", "workflows/errors.yaml"]));
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = run(backend.sandflow(&state).args(["--json", "runs", "list"]));
    let runs: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(runs[0]["workflow"], "errors");
    assert_eq!(runs[0]["status"], "completed");
    let id = runs[0]["id"].as_str().unwrap().to_string();
    let (_, out, _) = run(backend.sandflow(&state).args(["--json", "runs", "show", &id]));
    let record: Value = serde_json::from_str(&out).unwrap();
    let fetch = record["steps"].as_array().unwrap().iter().find(|s| s["step"] == "fetch").unwrap();
    assert_eq!((fetch["state"].as_str(), fetch["attempts"].as_u64()), (Some("succeeded"), Some(3)));
    let enrich = record["steps"].as_array().unwrap().iter().find(|s| s["step"] == "enrich").unwrap();
    assert_eq!((enrich["error_kind"].as_str(), enrich["error_message"].as_str()), (Some("component"), Some("the input can never be processed")));
    let (code, out, _) = run(backend.sandflow(&state).args(["runs", "show", &id]));
    assert_eq!(code, 0);
    assert!(out.contains(&format!("run {id} (completed, attempt 1)")), "{out}");
    // The flaky step's failed attempts are recorded one by one.
    let failed = backend.count(state.path(), "SELECT COUNT(*) FROM attempts WHERE run_id = $1 AND step = 'fetch' AND state = 'failed'", &id);
    assert_eq!(failed, 2);

    let (code, out, _) = run(backend.sandflow(&state).args(["run", "workflows/groups.yaml", "--input", "{\"values\": [1]}"]));
    assert_eq!(code, 0, "{out}");
    let (_, out, _) = run(backend.sandflow(&state).args(["--json", "runs", "list"]));
    let id = serde_json::from_str::<Value>(&out).unwrap()[0]["id"].as_str().unwrap().to_string();
    let (code, out, _) = run(backend.sandflow(&state).args(["runs", "logs", &id, "save-values"]));
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "save-values   info | set values");
    let (code, out, err) = run(backend.sandflow(&state).args(["runs", "logs", &id, "stats"]));
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert!(err.contains(&format!("step `stats` of run {id} wrote no log lines")), "{err}");
    let (code, _, err) = run(backend.sandflow(&state).args(["runs", "logs", &id, "stat"]));
    assert_eq!(code, 2);
    assert!(err.contains(&format!("run {id} has no step `stat` that ran (did you mean `stats`?)")), "{err}");
    let (_, out, _) = run(backend.sandflow(&state).args(["runs", "list"]));
    assert!(out.lines().next().unwrap().contains("OK FAILED SKIPPED"), "{out}");
    let (_, out, _) = run(backend.sandflow(&state).args(["--json", "runs", "list"]));
    assert!(serde_json::from_str::<Value>(&out).unwrap()[0]["skipped_steps"].is_u64(), "{out}");
    // A unique start of an id names its run, as git takes a commit's; one
    // that fits several runs lists them.
    let (code, out, err) = run(backend.sandflow(&state).args(["runs", "show", &id[..id.len() - 4]]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("run {id} (completed, attempt 1)")), "{out}");
    let (code, out, _) = run(backend.sandflow(&state).args(["graph", &id[..18], "--format", "mermaid"]));
    assert_eq!(code, 0);
    assert!(out.starts_with("flowchart TD"), "{out}");
    let (code, _, err) = run(backend.sandflow(&state).args(["runs", "logs", "0"]));
    assert_eq!(code, 2);
    assert!(err.contains("`0` is the start of the ids of 2 runs (") && err.contains(&id) && err.contains("give more of the id"), "{err}");
    let (code, _, err) = run(backend.sandflow(&state).args(["retry", "not-an-id"]));
    assert_eq!(code, 2);
    assert!(err.contains("no run with id `not-an-id`"), "{err}");
}

/// A `forEach` step's items are told apart from its attempts, in
/// `runs show` and its JSON, on both stores.
#[test]
fn for_each_items_are_shown_apart_from_attempts() {
    for backend in backends() {
        let name = backend.name();
        let state = tempfile::tempdir().unwrap();
        let (code, _, err) = run(backend.sandflow(&state).args(["run", "workflows/foreach.yaml", "--input", r#"{"words": ["a", "b", "c"]}"#]));
        assert_eq!(code, 0, "{name}: {err}");
        let (_, out, _) = run(backend.sandflow(&state).args(["runs", "show", "0"]));
        assert!(out.contains("shout                succeeded  items    3 "), "{name}: {out}");
        assert!(!out.contains("attempts"), "{name}: {out}");
        let (_, out, _) = run(backend.sandflow(&state).args(["--json", "runs", "show", "0"]));
        let record: Value = serde_json::from_str(&out).unwrap();
        let shout = record["steps"].as_array().unwrap().iter().find(|s| s["step"] == "shout").unwrap();
        assert_eq!((shout["items"].as_u64(), shout["attempts"].as_u64()), (Some(3), Some(3)), "{name}");
    }
}

#[test]
fn two_processes_share_one_store() {
    for backend in backends() {
        shared(&backend);
    }
}

fn shared(backend: &Backend) {
    let state = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..2)
        .map(|i| {
            backend
                .sandflow(&state)
                .args(["run", "workflows/diamond.yaml", "--set"])
                .arg(format!("text=run {i}"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let (_, out, _) = run(backend.sandflow(&state).args(["--json", "runs", "list"]));
    let runs: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().all(|r| r["status"] == "completed" && r["succeeded_steps"] == 4), "{runs:?}");
}

#[test]
fn a_postgres_server_that_does_not_answer_is_a_one_line_exit_2() {
    let state = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let (code, _, err) = run(sandflow(&state).args(["--store", "postgres://postgres@127.0.0.1:1/test", "runs", "list"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("error: cannot open the run store postgres://postgres@127.0.0.1:1/test: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "a refused connection fails at once");
    let (code, _, err) = run(sandflow(&state).args(["--store", "redis://x", "runs", "list"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not a run store URL"), "{err}");
}

#[test]
fn an_unusable_store_is_a_one_line_exit_2_and_is_left_as_it_was() {
    let state = tempfile::tempdir().unwrap();
    // A state dir that is a file.
    let file = state.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let (code, _, err) = run(std::process::Command::new(env!("CARGO_BIN_EXE_sandflow")).arg("--state-dir").arg(&file).args(["runs", "list"]));
    assert_eq!(code, 2);
    assert!(err.starts_with("error: cannot use the state dir") && err.lines().count() == 1, "{err}");

    // A corrupt database.
    let db = state.path().join("sandflow.db");
    std::fs::write(&db, b"this is not sqlite, but it is someone's data").unwrap();
    let (code, _, err) = run(sandflow(&state).args(["runs", "list"]));
    assert_eq!(code, 2);
    assert!(err.contains("is not a sandflow run store or is corrupt") && err.lines().count() == 1, "{err}");
    assert_eq!(std::fs::read(&db).unwrap(), b"this is not sqlite, but it is someone's data");

    // A database from a newer sandflow.
    std::fs::remove_file(&db).unwrap();
    rusqlite::Connection::open(&db).unwrap().execute_batch("PRAGMA user_version = 99; CREATE TABLE future (x);").unwrap();
    let before = std::fs::read(&db).unwrap();
    let (code, _, err) = run(sandflow(&state).args(["run", "workflows/diamond.yaml", "--set", "text=x"]));
    assert_eq!(code, 2);
    let known = format!("has schema version 99, newer than this sandflow knows ({})", sandflow::store::SCHEMA_VERSION);
    assert!(err.contains(&known), "{err}");
    assert_eq!(std::fs::read(&db).unwrap(), before);

    // An unknown run.
    let fresh = tempfile::tempdir().unwrap();
    for args in [&["runs", "show", "nope"][..], &["runs", "logs", "nope"][..], &["resume", "nope"][..]] {
        let (code, _, err) = run(sandflow(&fresh).args(args));
        assert_eq!(code, 2, "{args:?}");
        assert_eq!(err.trim(), "error: no run with id `nope` (see `sandflow runs list`)");
    }
}

/// CI jobs start in parallel on a clean runner: several processes create
/// the same new state dir at once.
#[test]
fn runs_started_four_at_a_time_on_fresh_state_dirs_all_complete() {
    // Builtin steps only: no compiling, so the four processes reach the
    // store within a few milliseconds of each other.
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("blobs.yaml");
    std::fs::write(
        &flow,
        "steps:\n  - { id: put, component: /builtin/put_blob, input: { data: [1, 2] } }\n  - { id: get, component: /builtin/get_blob, input: { blob_id: \"{{ steps.put.output.blob_id }}\" } }\n",
    )
    .unwrap();
    for round in 0..5 {
        let parent = tempfile::tempdir().unwrap();
        let state = parent.path().join("fresh").join("state");
        let children: Vec<_> = (0..4)
            .map(|_| {
                std::process::Command::new(env!("CARGO_BIN_EXE_sandflow"))
                    .arg("--state-dir")
                    .arg(&state)
                    .args(["-q", "run"])
                    .arg(&flow)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "round {round}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let (code, out, err) = run(std::process::Command::new(env!("CARGO_BIN_EXE_sandflow")).arg("--state-dir").arg(&state).args(["--json", "runs", "list"]));
        assert_eq!(code, 0, "{err}");
        let runs: Vec<Value> = serde_json::from_str(&out).unwrap();
        assert_eq!(runs.len(), 4, "round {round}: every run is recorded");
        assert!(runs.iter().all(|r| r["status"] == "completed"), "{runs:?}");
    }
}

#[test]
fn a_store_of_schema_version_1_is_migrated_and_keeps_its_runs() {
    let state = tempfile::tempdir().unwrap();
    let (code, _, err) = run(sandflow(&state).args(["-q", "run", "workflows/diamond.yaml", "--set", "text=x"]));
    assert_eq!(code, 0, "{err}");
    // Take the store back to what sandflow wrote before version 2.
    let db = state.path().join("sandflow.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("ALTER TABLE steps DROP COLUMN output_secrets; ALTER TABLE steps DROP COLUMN input; ALTER TABLE attempts DROP COLUMN fuel_used; ALTER TABLE runs DROP COLUMN cancel_requested; ALTER TABLE runs DROP COLUMN targets; DROP TABLE memo; DROP INDEX steps_in_order; ALTER TABLE steps DROP COLUMN started_at; ALTER TABLE steps DROP COLUMN worker; ALTER TABLE steps DROP COLUMN items; ALTER TABLE runs DROP COLUMN namespace; ALTER TABLE steps DROP COLUMN wake_at; ALTER TABLE steps DROP COLUMN wait_kind; DROP TABLE signals; DROP TABLE schedules; DROP TABLE schedule_ticks; ALTER TABLE runs DROP COLUMN triggered_by; ALTER TABLE runs DROP COLUMN trigger_source; ALTER TABLE runs DROP COLUMN scheduled_time; PRAGMA user_version = 1;")
        .unwrap();
    let (code, out, err) = run(sandflow(&state).args(["--json", "runs", "list"]));
    assert_eq!(code, 0, "{err}");
    let runs: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(runs.len(), 1);
    let version: i64 = rusqlite::Connection::open(&db).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, sandflow::store::SCHEMA_VERSION);
    let (code, _, err) = run(sandflow(&state).args(["-q", "run", "workflows/diamond.yaml", "--set", "text=y"]));
    assert_eq!(code, 0, "a migrated store records new runs: {err}");
}

/// A step's output carried a secret; a later step failed; the resumed run
/// must feed the real value on (not `***`), exactly as an uninterrupted
/// run does, while the store's records of the run hold no secret.
#[test]
fn a_resumed_run_gets_the_secret_bearing_output_an_uninterrupted_run_gets() {
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("token.yaml");
    std::fs::write(
        &flow,
        format!(
            "components:
  echo: {{ path: {echo} }}
steps:
  - {{ id: echo, component: echo, input: {{ token: \"{{{{ secrets.TOKEN }}}}\", note: \"for {{{{ secrets.TOKEN }}}}!\" }} }}
  - {{ id: gate, component: /builtin/load_file, input: {{ path: gate.json }}, needs: [echo] }}
  - {{ id: put, component: /builtin/put_blob, input: {{ data: \"{{{{ steps.echo.output }}}}\" }}, needs: [gate] }}
output: {{ blob: \"{{{{ steps.put.output.blob_id }}}}\", echoed: \"{{{{ steps.echo.output.note }}}}\" }}
",
            echo = example("echo").display()
        ),
    )
    .unwrap();
    let secret = "tok-9f8e7d";
    let state = tempfile::tempdir().unwrap();
    let sf = |args: &[&str]| {
        let mut cmd = sandflow(&state);
        cmd.env("SANDFLOW_SECRET_TOKEN", secret).args(args);
        run(&mut cmd)
    };
    let (code, _, err) = sf(&["--json", "run", flow.to_str().unwrap()]);
    assert_eq!(code, 1, "the gate is missing: {err}");
    let run_id = json_lines(&err)[0]["run_id"].as_str().unwrap().to_string();

    std::fs::write(dir.path().join("gate.json"), "{}").unwrap();
    let (code, resumed, err) = sf(&["-q", "resume", &run_id]);
    assert_eq!(code, 0, "{err}");
    let (code, fresh, err) = sf(&["-q", "run", flow.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(resumed, fresh, "a resume gives what an uninterrupted run gives");
    let data = json!({"token": secret, "note": format!("for {secret}!")});
    let expected = sandflow::sandbox::sha256_hex(sandflow::exec::canonical_json(&data).as_bytes());
    let resumed: Value = serde_json::from_str(&resumed).unwrap();
    assert_eq!(resumed, json!({"blob": expected, "echoed": "for ***!"}), "printed output is masked");

    let db = rusqlite::Connection::open(state.path().join("sandflow.db")).unwrap();
    for table in ["runs", "steps", "attempts", "logs"] {
        let rows: Vec<String> = db
            .prepare(&format!("SELECT * FROM {table}"))
            .unwrap()
            .query_map([], |r| {
                let n = r.as_ref().column_count();
                Ok((0..n).map(|i| format!("{:?}", r.get_ref(i).unwrap())).collect::<Vec<_>>().join("|"))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(rows.iter().all(|r| !r.contains(secret)), "{table} holds the secret: {rows:?}");
    }
}

#[test]
fn cancel_stops_a_run_from_another_process() {
    for backend in backends() {
        cancelled_from_outside(&backend);
    }
}

/// Starts `cmd` (a `sandflow --json run`) and reads its events until step
/// `step` starts: the process, its run's id, and its event stream (kept
/// open: the run goes on writing to it).
fn run_until_started(cmd: &mut std::process::Command, step: &str) -> (std::process::Child, String, std::io::BufReader<std::process::ChildStderr>) {
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let run_id = loop {
        line.clear();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break None;
        }
        let e: Value = serde_json::from_str(&line).unwrap();
        if e["event"] == "step_started" && e["step"] == step {
            break Some(e["run_id"].as_str().unwrap().to_string());
        }
    };
    match run_id {
        Some(id) => (child, id, stderr),
        None => {
            let status = child.wait().unwrap();
            panic!("the run ended ({status}) before step `{step}` started");
        }
    }
}

fn cancelled_from_outside(backend: &Backend) {
    let state = tempfile::tempdir().unwrap();
    // A first nap long enough that the cancel lands while it runs, however
    // slow the machine (a `cancel` process starts, a run polls for cancels
    // every 250 ms): with 300 ms, a busy CI machine saw the nap succeed
    // before the cancel reached it.
    let file = chain(state.path(), 3000);
    let (mut child, run_id, _events) = run_until_started(backend.sandflow(&state).args(["--json", "run"]).arg(&file).args(["--input", r#"{"start": "x"}"#]), "s1");
    let asked = std::time::Instant::now();
    let (code, _, err) = run(backend.sandflow(&state).args(["cancel", &run_id]));
    assert_eq!(code, 0, "{}: {err}", backend.name());
    assert_eq!(err.trim(), format!("run {run_id} is cancelled"));
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{}", backend.name());
    assert!(asked.elapsed() < std::time::Duration::from_secs(3), "cancelled within a second or so: {:?}", asked.elapsed());
    let (_, out, _) = run(backend.sandflow(&state).args(["--json", "runs", "show", &run_id]));
    let record: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(record["status"], "cancelled");
    let s1 = record["steps"].as_array().unwrap().iter().find(|s| s["step"] == "s1").unwrap();
    assert_eq!(s1["state"], "cancelled", "{s1}");

    // A run that is not running cannot be cancelled; an unknown one is named.
    let (code, _, err) = run(backend.sandflow(&state).args(["cancel", &run_id]));
    assert_eq!((code, err.trim()), (2, format!("error: run {run_id} is not running: it is cancelled").as_str()));
    let (code, _, err) = run(backend.sandflow(&state).args(["cancel", "nope"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no run with id `nope`"), "{err}");
    // A resume clears the request and finishes the run.
    let (code, out, err) = run(backend.sandflow(&state).args(["resume", &run_id]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!({"text": "x+1+2+3+4+5"}));
}

/// While a step runs, its record says so: `runs show` (table and JSON)
/// lists it `running`, with its attempt, since when, and on a worker
/// which worker holds it; the timeline draws its bar so far. Once it ends,
/// the row is its end, as before. Both stores.
#[test]
fn a_running_step_is_shown_running_while_it_runs() {
    for backend in backends() {
        running_step_shown(&backend);
    }
}

fn running_step_shown(backend: &Backend) {
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("nap.yaml");
    let text = format!(
        "name: nap\ncomponents:\n  sleep: {{ path: '{}' }}\n  text: {{ path: '{}' }}\nsteps:\n  - {{ id: quick, component: text, input: {{ op: upper, text: a }} }}\n  - {{ id: nap, component: sleep, input: {{ ms: 60000 }}, timeout: 120s }}\n  - {{ id: after, component: text, needs: [nap], input: {{ op: upper, text: b }} }}\n",
        hostile("sleep").display(),
        example("text").display()
    );
    std::fs::write(&file, text).unwrap();
    let (mut child, run_id, _events) = run_until_started(backend.sandflow(&state).args(["--json", "run"]).arg(&file), "nap");
    // The start is recorded as it is told (SQLite: by the store's writer).
    let started = std::time::Instant::now();
    let nap = loop {
        let (_, out, err) = run(backend.sandflow(&state).args(["--json", "runs", "show", &run_id]));
        let record: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
        let nap = record["steps"].as_array().unwrap().iter().find(|s| s["step"] == "nap").cloned();
        if let Some(nap) = nap.filter(|s| s["state"] == "running") {
            assert_eq!(record["status"], "running");
            break nap;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "{}: nap was never shown running: {record:#}", backend.name());
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(nap["attempts"], 1, "{nap}");
    assert!(nap["started_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{nap}");
    match backend {
        Backend::Sqlite => assert!(nap.get("worker").is_none(), "{nap}"),
        // `sandflow run` with a PostgreSQL store works on its run itself.
        Backend::Postgres(_) => assert!(nap["worker"].as_str().is_some_and(|w| !w.is_empty()), "{nap}"),
    }
    let (code, out, err) = run(backend.sandflow(&state).args(["runs", "show", "--timeline", &run_id]));
    assert_eq!(code, 0, "{err}");
    let row = out.lines().find(|l| l.trim_start().starts_with("nap ")).unwrap_or_else(|| panic!("no line for nap: {out}"));
    assert!(row.contains("running") && row.contains("since "), "{}: {row}", backend.name());
    let bar = out.lines().rev().find(|l| l.trim_start().starts_with("nap ")).unwrap();
    assert!(bar.contains('·') && bar.trim_end().ends_with(|c: char| c.is_ascii_digit() || c == 's'), "the timeline draws the running step so far: {bar}\n{out}");
    // `after` waits for it and has no row yet; `quick` ended.
    let (_, out, _) = run(backend.sandflow(&state).args(["--json", "runs", "show", &run_id]));
    let record: Value = serde_json::from_str(&out).unwrap();
    let steps: Vec<(String, String)> =
        record["steps"].as_array().unwrap().iter().map(|s| (s["step"].as_str().unwrap().into(), s["state"].as_str().unwrap().into())).collect();
    assert!(steps.contains(&("quick".into(), "succeeded".into())) && !steps.iter().any(|(s, _)| s == "after"), "{steps:?}");

    let (code, _, err) = run(backend.sandflow(&state).args(["cancel", &run_id]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(child.wait().unwrap().code(), Some(130));
    let (_, out, _) = run(backend.sandflow(&state).args(["--json", "runs", "show", &run_id]));
    let record: Value = serde_json::from_str(&out).unwrap();
    let nap = record["steps"].as_array().unwrap().iter().find(|s| s["step"] == "nap").unwrap();
    assert_eq!(nap["state"], "cancelled", "{nap}");
    assert!(nap.get("started_at").is_none() && nap.get("worker").is_none(), "an ended step's row is its end: {nap}");
}

/// `graph RUN_ID` draws the workflow a run recorded, whatever became of
/// its file: edited, then deleted (both stores); a run recorded before
/// runs kept their workflow, whose file is gone, says so plainly.
#[test]
fn a_run_s_graph_is_drawn_from_the_workflow_it_recorded() {
    for backend in backends() {
        let state = tempfile::tempdir().unwrap();
        let file = state.path().join("pair.yaml");
        std::fs::write(
            &file,
            format!(
                "name: pair\ncomponents:\n  text: {{ path: '{}' }}\nsteps:\n  - {{ id: first, component: text, input: {{ op: upper, text: a }} }}\n  - {{ id: second, component: text, needs: [first], input: {{ op: upper, text: b }} }}\n",
                example("text").display()
            ),
        )
        .unwrap();
        let (code, _, err) = run(backend.sandflow(&state).args(["-q", "run"]).arg(&file));
        assert_eq!(code, 0, "{}: {err}", backend.name());
        let id = crate::support::newest_run(backend.sandflow(&state));
        let edited = std::fs::read_to_string(&file).unwrap().replace("id: second", "id: renamed");
        std::fs::write(&file, edited).unwrap();
        let (code, mermaid, err) = run(backend.sandflow(&state).args(["graph", &id]));
        assert_eq!(code, 0, "{}: {err}", backend.name());
        assert!(mermaid.contains("second") && !mermaid.contains("renamed"), "{}: the graph as the run ran: {mermaid}", backend.name());
        std::fs::remove_file(&file).unwrap();
        let (code, svg, err) = run(backend.sandflow(&state).args(["graph", "--format", "svg", &id]));
        assert_eq!(code, 0, "{}: {err}", backend.name());
        assert!(svg.contains(r#"<g class="step succeeded" data-step="second">"#), "{}: coloured by state: {svg}", backend.name());
        let (code, _, err) = run(backend.sandflow(&state).args(["graph", "no-such-run"]));
        assert_eq!((code, err.contains("no run with id `no-such-run`")), (2, true), "{err}");
        if let Backend::Sqlite = backend {
            // As a run recorded before this store kept workflows.
            rusqlite::Connection::open(state.path().join("sandflow.db")).unwrap().execute("DELETE FROM files", []).unwrap();
            let (code, _, err) = run(backend.sandflow(&state).args(["graph", &id]));
            assert_eq!(code, 1, "{err}");
            assert!(
                err.contains("was recorded before sandflow kept each run's workflow") && err.contains("pair.yaml cannot be read as it was"),
                "{err}"
            );
        }
    }
}

/// Runs are recorded in the state dir of the directory a run started in:
/// `runs list` elsewhere finds none, and says where runs were recorded
/// nearby (below it, or above it).
#[test]
fn runs_list_elsewhere_says_where_runs_were_recorded_nearby() {
    let top = tempfile::tempdir().unwrap();
    let project = top.path().join("project");
    std::fs::create_dir(&project).unwrap();
    let bare = || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sandflow"));
        cmd.env_remove("SANDFLOW_STATE_DIR").env_remove("SANDFLOW_STORE");
        cmd
    };
    let (code, _, err) = run(bare().current_dir(&project).args(["-q", "run"]).arg(crate::support::root().join("workflows/diamond.yaml")).args(["--set", "text=x"]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(bare().current_dir(top.path()).args(["runs", "list"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.starts_with("no runs yet in "), "{err}");
    let recorded = project.join(".sandflow");
    assert!(err.contains(&format!("runs were recorded in {}: `sandflow --state-dir {} runs list`", recorded.display(), recorded.display())), "{err}");
}
