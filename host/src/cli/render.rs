//! What the CLI writes to stderr: human lines, or JSON event lines with
//! `--json` (each with `event` and `ts`).

use super::Output;
use crate::failure::StepFailure;
use crate::sandbox::StepLog;
use serde_json::{Value, json};
use std::time::{Duration, SystemTime};

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Writes one JSON event line to stderr; `fields` is merged in.
pub(crate) fn event(name: &str, fields: Value) {
    let mut line = json!({ "event": name, "ts": now() });
    if let (Some(line), Value::Object(fields)) = (line.as_object_mut(), fields) {
        line.extend(fields);
    }
    eprintln!("{line}");
}

/// `error: ...`, or an `error` event with `--json`.
pub(crate) fn error_line(out: &Output, message: &str) {
    if out.json {
        event("error", json!({ "error": { "message": message } }));
    } else {
        eprintln!("error: {message}");
    }
}

/// The step's captured log, one line per entry.
pub(crate) fn step_log(out: &Output, run_id: &str, step: &str, log: &StepLog, max_log: usize) {
    if out.json {
        for line in &log.lines {
            event("log", json!({ "run_id": run_id, "step": step, "source": line.source, "text": line.text }));
        }
        if log.dropped_bytes > 0 {
            event("log_truncated", json!({ "run_id": run_id, "step": step, "dropped_bytes": log.dropped_bytes }));
        }
        return;
    }
    if out.quiet {
        return;
    }
    for line in &log.lines {
        eprintln!("{:>6} | {}", line.source.as_str(), line.text);
    }
    if log.dropped_bytes > 0 {
        eprintln!(
            "  note | {} more bytes of log were dropped (the log cap is {})",
            log.dropped_bytes,
            crate::units::format_size(max_log as u64)
        );
    }
}

/// A duration as people read it: `812µs`, `3.2ms`, `1.40s`.
pub(crate) fn duration(d: Duration) -> String {
    let us = d.as_micros();
    if us < 1000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1000.0)
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}

/// A failure as a JSON object.
pub(crate) fn failure_json(f: &StepFailure) -> Value {
    json!({ "kind": f.kind, "message": f.message, "retryable": f.retryable })
}
