//! Quotas: a step that makes the host hold ever more through its imports
//! (blobs, state, log lines, handles) fails on its quota, fast, while the
//! host stays bounded and the other steps go on.

use crate::support::{example, hostile, run, sandflow};
use serde_json::Value;
use std::path::Path;

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| if e.file_type().unwrap().is_dir() { dir_size(&e.path()) } else { e.metadata().unwrap().len() })
        .sum()
}

fn events(stderr: &str) -> Vec<Value> {
    stderr.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn finished<'a>(events: &'a [Value], step: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["event"] == "step_finished" && e["step"] == step)
        .unwrap_or_else(|| panic!("no step_finished for {step}"))
}

#[test]
fn host_import_bombs_fail_on_their_quota_while_the_host_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("bombs.yaml");
    std::fs::write(
        &flow,
        format!(
            "components:
  bomb: {{ path: {bomb} }}
  echo: {{ path: {echo} }}
defaults: {{ timeout: 60s }}
steps:
  - {{ id: blobs, component: bomb, input: {{ bomb: blobs }}, on_error: {{ action: continue }} }}
  - {{ id: state, component: bomb, input: {{ bomb: state }}, on_error: {{ action: continue }} }}
  - {{ id: all, component: bomb, input: {{ bomb: all }}, on_error: {{ action: continue }} }}
  - {{ id: handles, component: bomb, input: {{ bomb: handles }}, on_error: {{ action: continue }} }}
  - {{ id: log, component: bomb, input: {{ bomb: log, lines: 300000 }} }}
  - {{ id: good, component: echo, input: {{ ok: true }} }}
  - {{ id: after, component: echo, input: \"{{{{ steps.good.output }}}}\", needs: [blobs, state, all, handles, log] }}
",
            bomb = hostile("host-bomb").display(),
            echo = example("echo").display()
        ),
    )
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new("/usr/bin/time");
    cmd.args(["-f", "peak-rss-kib=%M", env!("CARGO_BIN_EXE_sandflow")])
        .arg("--state-dir")
        .arg(state.path())
        .args(["--json", "run"])
        .arg(&flow);
    let (code, out, err) = run(&mut cmd);
    assert_eq!(code, 0, "the run completes (every bomb is `on_error: continue`): {err}");
    let events = events(&err);
    for (step, quota) in [("blobs", "blob_bytes"), ("state", "state_bytes"), ("all", "blob_bytes"), ("handles", "handles")] {
        let e = finished(&events, step);
        assert_eq!(e["state"], "failed", "{e}");
        assert_eq!(e["error"]["kind"], "quota", "{e}");
        assert_eq!(e["error"]["retryable"], false, "{e}");
        let message = e["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("quota `{quota}`")) && message.contains(&format!("raise `quota.{quota}`")), "{message}");
        assert!(e["duration_ms"].as_f64().unwrap() < 20_000.0, "{step} failed on its quota, not its 60s timeout: {e}");
    }
    let log = finished(&events, "log");
    assert_eq!(log["state"], "succeeded", "a log flood is capped, not failed: {log}");
    for step in ["good", "after"] {
        assert_eq!(finished(&events, step)["state"], "succeeded");
    }
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), serde_json::json!({"ok": true}));

    let peak_kib: u64 = err.lines().find_map(|l| l.strip_prefix("peak-rss-kib=")).unwrap().trim().parse().unwrap();
    assert!(peak_kib < 1 << 20, "host peak RSS {peak_kib} KiB is over 1 GiB");
    let bytes = dir_size(state.path());
    assert!(bytes < 600 << 20, "the state dir holds {bytes} bytes");
    let logs = run(sandflow(&state).args(["runs", "logs"]).arg(events[0]["run_id"].as_str().unwrap()).arg("log")).1;
    assert!(logs.lines().count() <= 65_536 + 1, "the log kept at most its line cap");
    assert!(logs.contains("more bytes of log were dropped (log cap)"), "the dropped bytes are counted");
}

#[test]
fn a_run_quota_counts_every_step_and_item_together() {
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("keys.yaml");
    std::fs::write(
        &flow,
        format!(
            "components:
  kv: {{ path: {kv} }}
quota: {{ state_keys: 3 }}
steps:
  - id: first
    component: kv
    input: {{ op: set, key: first, value: 1 }}
  - id: each
    component: kv
    forEach: [10, 20, 30, 40]
    concurrency: 1
    needs: [first]
    input: {{ op: set, key: \"item-{{{{ index }}}}\", value: \"{{{{ item }}}}\" }}
",
            kv = example("kv").display()
        ),
    )
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let (code, _, err) = run(sandflow(&state).args(["--json", "run"]).arg(&flow));
    assert_eq!(code, 1, "{err}");
    let events = events(&err);
    let each = finished(&events, "each");
    assert_eq!(each["error"]["kind"], "quota", "{each}");
    let message = each["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("item 2: the run went over its quota `state_keys` of 3 state keys"), "{message}");
    assert!(message.contains("top-level `quota.state_keys`"), "{message}");
    let attempts = events.iter().filter(|e| e["event"] == "step_started" && e["step"] == "each").count();
    assert_eq!(attempts, 3, "a quota failure is not retried and stops the items");
}

#[test]
fn quotas_are_checked_with_the_workflow() {
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("bad.yaml");
    std::fs::write(
        &flow,
        "quota: { handles: 5, blob_bytes: lots }\ndefaults: { quota: { blob: 1, log: 2MiB } }\nsteps:\n  - { id: a, component: /builtin/put_blob, input: { data: 1 }, quota: { state_keys: -1 } }\n",
    )
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let (code, _, err) = run(sandflow(&state).arg("validate").arg(&flow));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad.yaml:1:10: `handles` is a quota per attempt, not per run"), "{err}");
    assert!(err.contains("bad.yaml:1:34: `quota.blob_bytes`"), "{err}");
    assert!(err.contains("bad.yaml:2:22: unknown key `blob` in `quota` (did you mean `blobs`?)"), "{err}");
    assert!(err.contains("bad.yaml:4:85: `quota.state_keys` must be a whole number"), "{err}");
    assert!(err.contains("4 problems"), "{err}");
}
