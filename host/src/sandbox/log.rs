//! The step log: the guest's stdout, stderr and `log` lines, in the order
//! they were written, up to the `log` quota: its bytes (each line counts a
//! newline) and one line per 16 of them. Past either, bytes are dropped and
//! counted, and the guest never notices: a flood, even of empty lines,
//! cannot fail a step or exhaust the host.

use serde::{Deserialize, Serialize};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogSource {
    /// The guest's standard output.
    Stdout,
    /// The guest's standard error.
    Stderr,
    /// `log(trace, ...)`.
    Trace,
    /// `log(debug, ...)`.
    Debug,
    /// `log(info, ...)`.
    Info,
    /// `log(warn, ...)`.
    Warn,
    /// `log(error, ...)`.
    Error,
}

impl LogSource {
    /// The lowercase name shown in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            LogSource::Stdout => "stdout",
            LogSource::Stderr => "stderr",
            LogSource::Trace => "trace",
            LogSource::Debug => "debug",
            LogSource::Info => "info",
            LogSource::Warn => "warn",
            LogSource::Error => "error",
        }
    }

    /// The source named `name`; the store's own notes (`note`) read as `info`.
    pub fn parse(name: &str) -> LogSource {
        serde_json::from_value(serde_json::Value::String(name.to_string())).unwrap_or(LogSource::Info)
    }
}

/// One line of a step's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Where it came from.
    pub source: LogSource,
    /// Its text, without the newline.
    pub text: String,
}

/// A finished step's log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepLog {
    /// The lines kept, in order.
    pub lines: Vec<LogLine>,
    /// Bytes written past the cap and dropped.
    pub dropped_bytes: u64,
}

impl StepLog {
    /// What a crashed guest last said on stderr: a Rust panic message
    /// (`panicked at FILE:LINE:COL: MESSAGE`) if there is one, else the last
    /// line that is not Rust's backtrace hint.
    pub fn crash_hint(&self) -> Option<String> {
        let stderr: Vec<&str> = self
            .lines
            .iter()
            .filter(|l| l.source == LogSource::Stderr && !l.text.trim().is_empty())
            .map(|l| l.text.as_str())
            .filter(|t| !t.starts_with("note: run with `RUST_BACKTRACE=1`"))
            .collect();
        if let Some(i) = stderr.iter().rposition(|l| l.contains("panicked at ")) {
            let at = &stderr[i][stderr[i].find("panicked at ").expect("found above")..];
            return Some(match stderr.get(i + 1) {
                Some(message) => format!("{} {message}", at.trim_end()),
                None => at.to_string(),
            });
        }
        stderr.last().map(|l| l.to_string())
    }
}

/// The live, shared log of a running step. Each line kept is also handed
/// to the follower ([`super::HostServices::log_line`]) as it is kept.
#[derive(Clone)]
pub(crate) struct LogSink(Arc<Mutex<SinkState>>, Option<Arc<dyn super::HostServices>>);

struct SinkState {
    log: StepLog,
    cap: usize,
    used: usize,
    max_lines: usize,
    /// Bytes of an unfinished stdout / stderr line.
    partial: [Vec<u8>; 2],
}

impl LogSink {
    /// A log capped by `quota`, whose lines `follower` sees as they come.
    pub(crate) fn new(quota: &super::Quota, follower: Option<Arc<dyn super::HostServices>>) -> Self {
        Self::with_caps(usize::try_from(quota.log).unwrap_or(usize::MAX), usize::try_from(quota.log_lines()).unwrap_or(usize::MAX), follower)
    }

    fn with_caps(cap: usize, max_lines: usize, follower: Option<Arc<dyn super::HostServices>>) -> Self {
        LogSink(
            Arc::new(Mutex::new(SinkState {
                log: StepLog::default(),
                cap,
                used: 0,
                max_lines,
                partial: [Vec::new(), Vec::new()],
            })),
            follower,
        )
    }

    /// Keeps a line (room for it was checked) and shows it to the follower.
    fn keep(&self, s: &mut SinkState, line: LogLine) {
        if let Some(follower) = &self.1 {
            follower.log_line(s.log.lines.len(), &line);
        }
        s.log.lines.push(line);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SinkState> {
        // A poisoned lock only means another writer panicked mid-append; the
        // log is still a valid (if shorter) log.
        crate::lock(&self.0)
    }

    /// Appends a whole line from the `log` import.
    pub(crate) fn line(&self, source: LogSource, text: &str) {
        let mut s = self.lock();
        let cost = text.len() + 1;
        if cost > s.cap - s.used || s.log.lines.len() >= s.max_lines {
            s.log.dropped_bytes += cost as u64;
            return;
        }
        s.used += cost;
        self.keep(&mut s, LogLine { source, text: text.to_string() });
    }

    /// Appends raw bytes written to stdout or stderr, split into lines.
    pub(crate) fn write(&self, stream: Stream, bytes: &[u8]) {
        let mut s = self.lock();
        let room = s.cap - s.used;
        let (kept, dropped) = bytes.split_at(bytes.len().min(room));
        s.used += kept.len();
        s.log.dropped_bytes += dropped.len() as u64;
        let idx = stream as usize;
        let mut rest = kept;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(&mut s.partial[idx]);
            line.extend_from_slice(&rest[..nl]);
            if s.log.lines.len() < s.max_lines {
                self.keep(&mut s, LogLine { source: stream.source(), text: lossy(line) });
            } else {
                s.log.dropped_bytes += line.len() as u64 + 1;
            }
            rest = &rest[nl + 1..];
        }
        s.partial[idx].extend_from_slice(rest);
    }

    /// The log so far, with unfinished lines closed.
    pub(crate) fn finish(&self) -> StepLog {
        let mut s = self.lock();
        for stream in [Stream::Stdout, Stream::Stderr] {
            let line = std::mem::take(&mut s.partial[stream as usize]);
            if !line.is_empty() {
                self.keep(&mut s, LogLine { source: stream.source(), text: lossy(line) });
            }
        }
        s.log.clone()
    }
}

fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[derive(Clone, Copy)]
pub(crate) enum Stream {
    Stdout = 0,
    Stderr = 1,
}

impl Stream {
    fn source(self) -> LogSource {
        match self {
            Stream::Stdout => LogSource::Stdout,
            Stream::Stderr => LogSource::Stderr,
        }
    }
}

/// The guest's stdout or stderr: every write succeeds at once and lands in
/// the step log.
#[derive(Clone)]
pub(crate) struct CapturedStream {
    pub(crate) sink: LogSink,
    pub(crate) stream: Stream,
}

/// Most bytes a guest may hand over in one write; it loops for more.
const WRITE_BUDGET: usize = 64 * 1024;

impl IsTerminal for CapturedStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedStream {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CapturedStream {
    async fn ready(&mut self) {}
}

impl OutputStream for CapturedStream {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.sink.write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_BUDGET)
    }
}

impl tokio::io::AsyncWrite for CapturedStream {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.sink.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_across_writes_and_interleaved_in_order() {
        let sink = LogSink::with_caps(1024, 64, None);
        sink.write(Stream::Stdout, b"hel");
        sink.line(LogSource::Info, "from log");
        sink.write(Stream::Stdout, b"lo\nwor");
        sink.write(Stream::Stderr, b"oops\n");
        let log = sink.finish();
        let got: Vec<_> = log.lines.iter().map(|l| (l.source, l.text.as_str())).collect();
        assert_eq!(
            got,
            [
                (LogSource::Info, "from log"),
                (LogSource::Stdout, "hello"),
                (LogSource::Stderr, "oops"),
                (LogSource::Stdout, "wor"),
            ]
        );
        assert_eq!(log.dropped_bytes, 0);
    }

    /// Keeps the lines it is shown, with their `seq`.
    #[derive(Default)]
    struct Follower(Mutex<Vec<(usize, String)>>);

    #[async_trait::async_trait]
    impl super::super::HostServices for Follower {
        async fn state_get(&self, _: &str) -> Result<Option<String>, super::super::HostError> {
            Ok(None)
        }
        async fn state_set(&self, _: &str, _: &str) -> Result<(), super::super::HostError> {
            Ok(())
        }
        async fn blob_put(&self, _: &str, _: &[u8]) -> Result<(), super::super::HostError> {
            Ok(())
        }
        async fn blob_get(&self, _: &str) -> Result<Option<Vec<u8>>, super::super::HostError> {
            Ok(None)
        }
        async fn state_usage(&self) -> Result<(u64, u64), super::super::HostError> {
            Ok((0, 0))
        }
        fn log_line(&self, seq: usize, line: &LogLine) {
            self.0.lock().unwrap().push((seq, format!("{}: {}", line.source.as_str(), line.text)));
        }
    }

    #[test]
    fn a_follower_sees_each_kept_line_as_it_is_kept() {
        let follower = Arc::new(Follower::default());
        let sink = LogSink::with_caps(24, 64, Some(follower.clone()));
        sink.write(Stream::Stdout, b"one\ntw");
        assert_eq!(*follower.0.lock().unwrap(), [(0, "stdout: one".to_string())], "a whole line at once, not the unfinished one");
        sink.line(LogSource::Warn, "careful");
        sink.write(Stream::Stdout, b"o\n");
        // Past the cap: kept by neither the log nor the follower.
        sink.line(LogSource::Info, "far too long for what is left");
        sink.write(Stream::Stderr, b"end");
        let log = sink.finish();
        let seen = follower.0.lock().unwrap().clone();
        assert_eq!(seen, [(0, "stdout: one".into()), (1, "warn: careful".into()), (2, "stdout: two".into()), (3, "stderr: end".into())]);
        let kept: Vec<String> = log.lines.iter().map(|l| format!("{}: {}", l.source.as_str(), l.text)).collect();
        assert_eq!(kept, seen.into_iter().map(|(_, l)| l).collect::<Vec<_>>());
    }

    #[test]
    fn crash_hint_is_the_rust_panic_message() {
        let sink = LogSink::with_caps(1024, 64, None);
        sink.write(Stream::Stdout, b"working\n");
        sink.write(
            Stream::Stderr,
            b"\nthread '<unnamed>' panicked at src/lib.rs:13:9:\nboom\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n",
        );
        assert_eq!(sink.finish().crash_hint().as_deref(), Some("panicked at src/lib.rs:13:9: boom"));
        let plain = LogSink::with_caps(1024, 64, None);
        plain.write(Stream::Stderr, b"fatal: out of widgets\n");
        assert_eq!(plain.finish().crash_hint().as_deref(), Some("fatal: out of widgets"));
        assert_eq!(LogSink::with_caps(1024, 64, None).finish().crash_hint(), None);
    }

    #[test]
    fn bytes_past_the_cap_are_dropped_and_counted() {
        let sink = LogSink::with_caps(10, 64, None);
        sink.write(Stream::Stdout, b"0123456789abcdef\n");
        sink.line(LogSource::Warn, "more");
        let log = sink.finish();
        assert_eq!(log.lines, [LogLine { source: LogSource::Stdout, text: "0123456789".into() }]);
        assert_eq!(log.dropped_bytes, 7 + 5);
    }

    #[test]
    fn a_flood_of_empty_lines_keeps_at_most_the_line_cap() {
        let sink = LogSink::with_caps(1 << 20, 100, None);
        for _ in 0..10_000 {
            sink.line(LogSource::Info, "");
        }
        sink.write(Stream::Stdout, &[b'\n'; 1000]);
        let log = sink.finish();
        assert_eq!(log.lines.len(), 100);
        assert_eq!(log.dropped_bytes, 9_900 + 1000);
    }
}
