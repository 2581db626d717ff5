//! What the CLI writes to stderr: human lines, or JSON event lines with
//! `--json` (each with `event` and `ts`).

use super::Output;
use sandflow::failure::StepFailure;
use sandflow::sandbox::StepLog;
use serde_json::{Value, json};
use std::io::Write;
use std::time::{Duration, SystemTime};

/// Writes `text` and a newline to stderr with a single `write(2)`, so a
/// line is never torn by a kill nor interleaved with another writer's
/// (`eprintln!` writes a formatted line in many small pieces). Control
/// characters in it are shown escaped ([`printable`]).
pub(crate) fn stderr_line(text: &str) {
    let _ = write_whole(&mut std::io::stderr().lock(), &printable(text));
}

/// Stderr for diagnostics (`tracing`'s lines): each line with its control
/// characters escaped ([`printable`]), as a worker's lines carry what
/// steps said (their failures). `tracing` writes a line in one write.
pub(crate) struct PrintableStderr;

impl Write for PrintableStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().lock().write_all(printable(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// `value` as pretty JSON, for a person's terminal as much as a program:
/// JSON escapes the C0 control characters itself; the others (DEL and the
/// C1 ones, U+0080–U+009F, which JSON leaves as they are and some
/// terminals obey) only a string can hold, and [`printable`] writes them
/// as JSON's own `\u009b` escapes, so the JSON means the same.
pub(crate) fn json_pretty(value: &impl serde::Serialize) -> String {
    printable(&serde_json::to_string_pretty(value).expect("values serialize")).into_owned()
}

/// `text` with its control characters but newline and tab written as
/// escapes (`\x1b`, `\r`; DEL and C1 as `\u009b`, valid in a JSON string
/// too): what a step wrote (its log, its error message) is shown to a
/// person, never obeyed by their terminal. A step could otherwise clear
/// the screen, move the cursor to forge lines (`✓ all good`), set the
/// clipboard (OSC 52) or the window's title.
pub(crate) fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let control = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.chars().any(control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\r' => out.push_str("\\r"),
            c if control(c) && (c as u32) < 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if control(c) => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `text` and a newline, handed to `w` in one `write_all`: one system
/// call for an unbuffered writer.
pub(crate) fn write_whole(w: &mut impl Write, text: &str) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(text.len() + 1);
    buf.extend_from_slice(text.as_bytes());
    buf.push(b'\n');
    w.write_all(&buf)
}

/// `eprintln!`, as one whole line (see [`stderr_line`]).
macro_rules! say {
    ($($arg:tt)*) => { $crate::cli::render::stderr_line(&format!($($arg)*)) };
}
pub(crate) use say;

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Writes one JSON event line to stderr; `fields` is merged in.
pub(crate) fn event(name: &str, fields: Value) {
    let mut line = json!({ "event": name, "ts": now() });
    if let (Some(line), Value::Object(fields)) = (line.as_object_mut(), fields) {
        line.extend(fields);
    }
    stderr_line(&line.to_string());
}

/// `error: ...`, or an `error` event with `--json`.
pub(crate) fn error_line(out: &Output, message: &str) {
    if out.json {
        event("error", json!({ "error": { "message": message } }));
    } else {
        say!("error: {message}");
    }
}

/// The step's captured log, one line per entry.
pub(crate) fn step_log(out: &Output, run_id: &str, step: &str, log: &StepLog, max_log: u64) {
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
        say!("{:>6} | {}", line.source.as_str(), line.text);
    }
    if log.dropped_bytes > 0 {
        say!(
            "  note | {} more bytes of log were dropped (the log cap is {})",
            log.dropped_bytes,
            sandflow::units::format_size(max_log)
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

/// Prints a run's output (masked) and returns the exit code of its state.
/// Shared by every command that ends with a run's end.
pub(crate) fn print_end(state: sandflow::exec::RunState, output: Option<&Value>, redactor: &sandflow::exec::Redactor) -> u8 {
    if let Some(output) = output {
        // What is printed is a log too: secret values are masked here as well.
        println!("{}", json_pretty(&*redactor.value(output)));
    }
    match state {
        sandflow::exec::RunState::Completed => super::exit::OK,
        sandflow::exec::RunState::Cancelled => super::exit::CANCELLED,
        _ => super::exit::FAILED,
    }
}

#[cfg(test)]
mod tests {
    use super::{printable, write_whole};

    #[test]
    fn control_characters_are_shown_escaped_but_newlines_and_tabs() {
        assert_eq!(printable("plain ✓ text\twith\nlines"), "plain ✓ text\twith\nlines");
        assert!(matches!(printable("plain"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(printable("\x1b[2J\x1b]52;c;eA==\x07"), "\\x1b[2J\\x1b]52;c;eA==\\x07");
        assert_eq!(printable("\roverwritten \u{9b}31m \u{7f}"), "\\roverwritten \\u009b31m \\u007f");
        // JSON text stays JSON, meaning the same.
        let json = super::json_pretty(&serde_json::json!({"text": "\u{1b}[2J \u{9b}31m"}));
        assert_eq!(serde_json::from_str::<serde_json::Value>(&json).unwrap()["text"], "\u{1b}[2J \u{9b}31m");
        assert!(!json.chars().any(|c| c.is_control() && c != '\n'), "{json}");
    }

    /// Counts the `write` calls it gets, like `write(2)` on an unbuffered fd.
    struct Calls(Vec<Vec<u8>>);

    impl std::io::Write for Calls {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_is_one_write_with_its_newline() {
        let mut w = Calls(Vec::new());
        let event = serde_json::json!({"event": "step_finished", "run_id": "r1", "output": {"text": "x".repeat(10_000)}});
        write_whole(&mut w, &event.to_string()).unwrap();
        assert_eq!(w.0.len(), 1, "one write for the whole line");
        assert_eq!(w.0[0].last(), Some(&b'\n'));
        let back: serde_json::Value = serde_json::from_slice(&w.0[0]).unwrap();
        assert_eq!(back, event);
    }
}
