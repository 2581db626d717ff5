//! Chaos, with the real binary: SIGKILL at random points followed by
//! `resume`, SIGTERM while a retry waits, a state dir on a full disk.

use crate::support::{example, hostile, run, sandflow};
use serde_json::{Value, json};
use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A small xorshift generator: the seed is printed, so a failing sequence
/// of kill times can be replayed with `SANDFLOW_CHAOS_SEED`.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn from_env() -> Rng {
        let seed = std::env::var("SANDFLOW_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1);
        eprintln!("chaos seed: SANDFLOW_CHAOS_SEED={seed}");
        Rng(seed)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Layers of two sleeping steps and a text step that joins them, a
/// `forEach` and a state-keeping step: about 50 steps, a second or so.
fn long_run(dir: &std::path::Path) -> std::path::PathBuf {
    let mut y = format!(
        "name: long\ncomponents:\n  sleep: {{ path: '{}' }}\n  text: {{ path: '{}' }}\n  kv: {{ path: '{}' }}\nsteps:\n  - {{ id: t0, component: text, input: {{ op: trim, text: ' go ' }} }}\n",
        hostile("sleep").display(),
        example("text").display(),
        example("kv").display()
    );
    for i in 1..=15 {
        let p = i - 1;
        y.push_str(&format!(
            "  - {{ id: a{i}, component: sleep, needs: [t{p}], input: {{ ms: 15 }} }}\n  - {{ id: b{i}, component: sleep, needs: [t{p}], input: {{ ms: 25 }} }}\n  - {{ id: t{i}, component: text, needs: [a{i}, b{i}], input: {{ op: template, template: '{{p}}+{i}', vars: {{ p: '{{{{ steps.t{p}.output.text }}}}' }} }} }}\n"
        ));
    }
    y.push_str(
        "  - { id: each, component: text, needs: [t15], forEach: [a, b, c, d, e, f], concurrency: 2, input: { op: upper, text: '{{ item }}' } }\n  - { id: keep, component: kv, input: { op: set, key: last, value: '{{ steps.t15.output.text }}' } }\noutput: { text: '{{ steps.t15.output.text }}', items: '{{ steps.each.output.map(o, o.text) }}', kept: '{{ steps.keep.output.key }}' }\n",
    );
    let file = dir.join("long.yaml");
    std::fs::write(&file, y).unwrap();
    file
}

/// Every line a killed `--json` process wrote must be a whole JSON object.
fn assert_whole_lines(stderr: &str, what: &str) -> Vec<Value> {
    stderr
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{what}: a torn line {l:?}: {e}")))
        .collect()
}

#[test]
fn a_hundred_kills_at_random_points_each_resumed_end_with_the_uninterrupted_output() {
    let dir = tempfile::tempdir().unwrap();
    let file = long_run(dir.path());
    let clean = tempfile::tempdir().unwrap();
    let (code, out, err) = run(sandflow(&clean).arg("-q").arg("run").arg(&file));
    assert_eq!(code, 0, "{err}");
    let expected: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(expected["items"], json!(["A", "B", "C", "D", "E", "F"]));

    let state = tempfile::tempdir().unwrap();
    // Warm the compile cache, so that kills land in the run, not the compiler.
    let (code, _, err) = run(sandflow(&state).arg("-q").arg("validate").arg(&file));
    assert_eq!(code, 0, "{err}");
    let mut rng = Rng::from_env();
    let mut run_id = String::new();
    let mut kills = 0;
    let mut finished_early = 0;
    while kills < 100 {
        let mut cmd = sandflow(&state);
        cmd.arg("--json");
        if run_id.is_empty() {
            cmd.arg("run").arg(&file);
        } else {
            cmd.args(["resume", &run_id]);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            stderr.read_to_string(&mut s).unwrap();
            s
        });
        let wait = Duration::from_millis(5 + rng.below(150));
        let started = Instant::now();
        let mut done = false;
        while started.elapsed() < wait {
            if child.try_wait().unwrap().is_some() {
                done = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if !done {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        let status = child.wait().unwrap();
        let text = reader.join().unwrap();
        let events = assert_whole_lines(&text, &format!("kill {kills}"));
        if run_id.is_empty() {
            match events.first() {
                Some(e) => run_id = e["run_id"].as_str().unwrap().to_string(),
                // Killed before the run was recorded: start it again.
                None => continue,
            }
        }
        if done {
            assert!(status.success(), "{text}");
            // The run completed between two kills: start another, so every
            // one of the hundred kills lands in a run.
            finished_early += 1;
            let (code, out, err) = run(sandflow(&state).args(["--json", "runs", "show", &run_id]));
            assert_eq!(code, 0, "{err}");
            check_record(&serde_json::from_str(&out).unwrap(), &expected, &state, &run_id);
            run_id.clear();
        }
    }
    if !run_id.is_empty() {
        let (code, out, err) = run(sandflow(&state).args(["-q", "resume", &run_id]));
        assert_eq!(code, 0, "{err}");
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), expected);
        let (_, out, _) = run(sandflow(&state).args(["--json", "runs", "show", &run_id]));
        check_record(&serde_json::from_str(&out).unwrap(), &expected, &state, &run_id);
    }
    eprintln!("100 kills; {finished_early} runs completed between kills");
}

/// A completed run with the expected output, whose every step succeeded
/// exactly once, counted in the attempts the store recorded.
fn check_record(record: &Value, expected: &Value, state: &tempfile::TempDir, run_id: &str) {
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(&record["output"], expected);
    let db = rusqlite::Connection::open(state.path().join("sandflow.db")).unwrap();
    let mut q = db
        .prepare("SELECT step, COUNT(*) FROM attempts WHERE run_id = ?1 AND state = 'succeeded' AND item IS NULL GROUP BY step")
        .unwrap();
    let counts: Vec<(String, i64)> = q.query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect();
    assert_eq!(counts.len(), 48, "every step has a recorded success: {counts:?}");
    assert!(counts.iter().all(|(_, n)| *n == 1), "no succeeded step ran twice: {counts:?}");
}

#[test]
fn sigterm_while_a_retry_waits_cancels_at_once_and_resume_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("retry.yaml");
    std::fs::write(
        &file,
        format!(
            "components:\n  flaky: {{ path: '{}' }}\nsteps:\n  - {{ id: flaky, component: flaky, input: {{ succeed_on: 2 }}, retry: {{ max_attempts: 3, backoff: linear, delay: 30s }} }}\n",
            hostile("flaky").display()
        ),
    )
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut child = sandflow(&state).args(["--json", "run"]).arg(&file).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        assert!(std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0, "the step retries: {lines:?}");
        let e: Value = serde_json::from_str(&line).unwrap();
        lines.push(e.clone());
        if e["event"] == "step_retrying" {
            break;
        }
    }
    let run_id = lines[0]["run_id"].as_str().unwrap().to_string();
    let sent = Instant::now();
    let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    let exit = child.wait().unwrap();
    assert!(sent.elapsed() < Duration::from_secs(2), "cancelled within the backoff, not after it: {:?}", sent.elapsed());
    assert_eq!(exit.code(), Some(130), "{rest}");
    let events = assert_whole_lines(&rest, "after SIGTERM");
    let step = events.iter().find(|e| e["event"] == "step_finished").unwrap();
    assert_eq!(step["state"], "cancelled", "{step}");
    assert_eq!(step["error"]["message"], "cancelled while waiting to retry");

    let (_, out, _) = run(sandflow(&state).args(["--json", "runs", "show", &run_id]));
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["status"], "cancelled");
    let (code, out, err) = run(sandflow(&state).args(["-q", "resume", &run_id]));
    assert_eq!(code, 0, "the call count lives in the run's state: {err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!({"calls": 2}));
}

/// The state dir on a tiny filesystem that fills up mid-run: the run fails
/// with a clear message (exit 1), the database stays intact with what was
/// recorded before, and once there is room `resume` finishes the run.
///
/// Mounting a tmpfs needs root, or a user namespace where this process is
/// root: the test runs a script under `unshare` (util-linux).
#[test]
fn a_full_disk_fails_the_run_cleanly_and_resume_finishes_it_later() {
    let dir = tempfile::tempdir().unwrap();
    // A chain: a small first step, a big second one whose output cannot be
    // recorded, a third that must never start.
    let big = "x".repeat(600 << 10);
    std::fs::write(dir.path().join("big.json"), serde_json::to_string(&json!({ "text": big })).unwrap()).unwrap();
    std::fs::write(
        dir.path().join("full.yaml"),
        format!(
            "components:\n  echo: {{ path: '{}' }}\nsteps:\n  - {{ id: small, component: echo, input: {{ n: 1 }} }}\n  - {{ id: big, component: /builtin/load_file, needs: [small], input: {{ path: big.json }} }}\n  - {{ id: after, component: echo, input: {{ size: \"{{{{ size(steps.big.output.data.text) }}}}\" }} }}\n",
            example("echo").display()
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let copy = dir.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    // Inside the namespace: a 4 MiB tmpfs as the state dir; `validate`
    // fills the compile cache (and creates no store); a filler leaves
    // ~300 KiB; the run under test; a copy of the database as the full disk
    // left it; then room is made and the run resumed.
    let script = r#"
        set -u
        mount -t tmpfs -o size=4m sandflow-full "$STATE" || exit 97
        "$BIN" -q --state-dir "$STATE" validate "$DIR/full.yaml" || exit 98
        dd if=/dev/zero of="$STATE/filler" bs=1k count=$(( $(df -k --output=avail "$STATE" | tail -1) - 300 )) 2>/dev/null
        "$BIN" --json --state-dir "$STATE" run "$DIR/full.yaml" > "$COPY/out1" 2> "$COPY/err1"
        echo $? > "$COPY/code1"
        cp "$STATE"/sandflow.db* "$COPY/"
        rm -f "$STATE/filler"
        run_id=$(grep -o '"run_id":"[^"]*"' "$COPY/err1" | head -1 | cut -d'"' -f4)
        "$BIN" -q --state-dir "$STATE" resume "$run_id" > "$COPY/out2" 2> "$COPY/err2"
        echo $? > "$COPY/code2"
        "$BIN" --json --state-dir "$STATE" runs show "$run_id" > "$COPY/show" 2>&1
    "#;
    let mut cmd = if is_root() {
        let mut c = std::process::Command::new("unshare");
        c.args(["--mount", "sh", "-c", script]);
        c
    } else {
        let mut c = std::process::Command::new("unshare");
        c.args(["--user", "--map-root-user", "--mount", "sh", "-c", script]);
        c
    };
    cmd.env("STATE", &state).env("BIN", env!("CARGO_BIN_EXE_sandflow")).env("DIR", dir.path()).env("COPY", &copy);
    let (code, out, err) = run(&mut cmd);
    assert_eq!(code, 0, "the script ran (a tmpfs could be mounted): {out}{err}");
    let read = |name: &str| std::fs::read_to_string(copy.join(name)).unwrap();

    let err1 = read("err1");
    assert_eq!(read("code1").trim(), "1", "a failed store write fails the run: {err1}");
    let events = assert_whole_lines(&err1, "full disk");
    let last = events.last().unwrap();
    assert_eq!(last["event"], "run_finished", "{err1}");
    assert_eq!(last["state"], "failed");
    let message = last["error"].as_str().unwrap();
    assert!(message.contains("could not record the run") && message.contains("disk is full"), "{message}");
    assert!(message.contains("sandflow resume"), "says what to do: {message}");
    assert!(!events.iter().any(|e| e["event"] == "step_started" && e["step"] == "after"), "nothing starts on an unrecorded result");

    // The database as the full disk left it: intact, the first step
    // recorded, the one whose result could not be recorded still
    // `running` (as it started), the run still `running`.
    let db = rusqlite::Connection::open(copy.join("sandflow.db")).unwrap();
    let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let steps: Vec<(String, String)> =
        db.prepare("SELECT step, state FROM steps").unwrap().query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect();
    // (Whether `big`'s start was committed before its end failed depends on
    // how the writer grouped them.)
    assert_eq!(steps[0], ("small".to_string(), "succeeded".to_string()), "{steps:?}");
    assert!(steps[1..].iter().all(|s| s == &("big".to_string(), "running".to_string())), "{steps:?}");
    let status: String = db.query_row("SELECT status FROM runs", [], |r| r.get(0)).unwrap();
    assert_eq!(status, "running");

    assert_eq!(read("code2").trim(), "0", "with room again, resume finishes: {}", read("err2"));
    assert_eq!(serde_json::from_str::<Value>(&read("out2")).unwrap(), json!({"size": 600 << 10}));
    let show: Value = serde_json::from_str(&read("show")).unwrap();
    assert_eq!(show["status"], "completed");
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}
