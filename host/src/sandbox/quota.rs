//! Quotas: bounds on what a step can make the host hold through its
//! imports. The memory cap and fuel only see the guest's own memory and
//! instructions; a blob put, a state value set or a log line lives in the
//! host (in memory under `sandflow call`, on disk in a run), so each is
//! counted here and refused past its quota.
//!
//! Two scopes, like `timeout`: a [`Quota`] per attempt (checked by the
//! sandbox, [`AttemptMeter`]) and one per run, over all its steps, attempts
//! and `forEach` items ([`RunMeter`], which wraps the run's
//! [`HostServices`]). Going over fails the step with kind `quota`, never
//! retried; what was stored before stays stored. The log is the exception:
//! past its quota lines are dropped and counted, and the step goes on.

use super::host::{HostError, HostServices};
use super::log::StepLog;
use crate::units::format_size;
use std::collections::HashSet;
use std::sync::Mutex;

/// One kind of quota; its `key` is how workflows and `--quota` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QuotaKind {
    /// Bytes of distinct blobs put.
    BlobBytes,
    /// Number of distinct blobs put.
    Blobs,
    /// Per attempt: bytes of state written (keys and values). Per run: bytes
    /// of state held.
    StateBytes,
    /// Per attempt: distinct keys written. Per run: keys held.
    StateKeys,
    /// Bytes of log kept (stdout, stderr and `log` lines, a newline each).
    Log,
    /// Host handles (streams, pollables, files) held at once; per attempt only.
    Handles,
    /// Outbound HTTP requests sent (`grants.http`); per attempt only.
    HttpRequests,
}

impl QuotaKind {
    /// Every kind, in the order `sandflow` lists them.
    pub const ALL: [QuotaKind; 7] = [
        QuotaKind::BlobBytes,
        QuotaKind::Blobs,
        QuotaKind::StateBytes,
        QuotaKind::StateKeys,
        QuotaKind::Log,
        QuotaKind::Handles,
        QuotaKind::HttpRequests,
    ];

    /// The name in workflow files and on the command line.
    pub fn key(self) -> &'static str {
        match self {
            QuotaKind::BlobBytes => "blob_bytes",
            QuotaKind::Blobs => "blobs",
            QuotaKind::StateBytes => "state_bytes",
            QuotaKind::StateKeys => "state_keys",
            QuotaKind::Log => "log",
            QuotaKind::Handles => "handles",
            QuotaKind::HttpRequests => "http_requests",
        }
    }

    /// The kind named by [`QuotaKind::key`].
    pub fn from_key(key: &str) -> Option<QuotaKind> {
        QuotaKind::ALL.into_iter().find(|k| k.key() == key)
    }

    /// Whether the quota is a size (`64MiB`) rather than a count.
    pub fn is_size(self) -> bool {
        matches!(self, QuotaKind::BlobBytes | QuotaKind::StateBytes | QuotaKind::Log)
    }

    /// Whether a run-wide quota of this kind exists.
    pub fn per_run(self) -> bool {
        !matches!(self, QuotaKind::Handles | QuotaKind::HttpRequests)
    }

    /// What is counted, for messages.
    fn what(self) -> &'static str {
        match self {
            QuotaKind::BlobBytes => "of blobs",
            QuotaKind::Blobs => "blobs",
            QuotaKind::StateBytes => "of state",
            QuotaKind::StateKeys => "state keys",
            QuotaKind::Log => "of log",
            QuotaKind::Handles => "host handles (streams, pollables, files) at once",
            QuotaKind::HttpRequests => "HTTP requests",
        }
    }

    /// `value` as people read it: a size for sizes, a count otherwise.
    pub fn format(self, value: u64) -> String {
        if self.is_size() { format_size(value) } else { value.to_string() }
    }

    /// Reads a value written on the command line: `64MiB` or `1000`.
    pub fn parse_value(self, text: &str) -> Result<u64, String> {
        if self.is_size() {
            crate::units::parse_size(text).map_err(|e| e.to_string())
        } else {
            text.trim().parse().map_err(|_| format!("`{text}` is not a whole number"))
        }
    }
}

/// Limits on what the host holds for a step, per attempt ([`Quota::ATTEMPT`])
/// or per run ([`Quota::RUN`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Bytes of blobs stored.
    pub blob_bytes: u64,
    /// Blobs stored.
    pub blobs: u64,
    /// Bytes of state values and keys stored.
    pub state_bytes: u64,
    /// State keys set.
    pub state_keys: u64,
    /// Bytes of log kept (stdout, stderr and `log`).
    pub log: u64,
    /// Resources (streams, requests, pollables) held at once.
    pub handles: u64,
    /// Outbound HTTP requests sent.
    pub http_requests: u64,
}

impl Quota {
    /// Defaults for one attempt.
    pub const ATTEMPT: Quota =
        Quota { blob_bytes: 128 << 20, blobs: 10_000, state_bytes: 64 << 20, state_keys: 10_000, log: 1 << 20, handles: 10_000, http_requests: 100 };

    /// Defaults for a whole run (all steps, attempts and items); `handles`
    /// is per attempt only.
    pub const RUN: Quota =
        Quota { blob_bytes: 1 << 30, blobs: 100_000, state_bytes: 256 << 20, state_keys: 100_000, log: 32 << 20, handles: u64::MAX, http_requests: u64::MAX };

    /// The limit on `kind`.
    pub fn get(&self, kind: QuotaKind) -> u64 {
        match kind {
            QuotaKind::BlobBytes => self.blob_bytes,
            QuotaKind::Blobs => self.blobs,
            QuotaKind::StateBytes => self.state_bytes,
            QuotaKind::StateKeys => self.state_keys,
            QuotaKind::Log => self.log,
            QuotaKind::Handles => self.handles,
            QuotaKind::HttpRequests => self.http_requests,
        }
    }

    /// Sets the limit on `kind`.
    pub fn set(&mut self, kind: QuotaKind, value: u64) {
        match kind {
            QuotaKind::BlobBytes => self.blob_bytes = value,
            QuotaKind::Blobs => self.blobs = value,
            QuotaKind::StateBytes => self.state_bytes = value,
            QuotaKind::StateKeys => self.state_keys = value,
            QuotaKind::Log => self.log = value,
            QuotaKind::Handles => self.handles = value,
            QuotaKind::HttpRequests => self.http_requests = value,
        }
    }

    /// Most log lines kept: one per 16 bytes of the log quota, so a flood of
    /// empty lines cannot make the host hold millions of them.
    pub fn log_lines(&self) -> u64 {
        (self.log / 16).max(1)
    }
}

impl Default for Quota {
    fn default() -> Self {
        Quota::ATTEMPT
    }
}

/// Whose quota was exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaScope {
    /// The attempt's own quota.
    Attempt,
    /// The whole run's quota, over all its steps.
    Run,
}

/// A step went over a quota. Returned from a host import, it traps the
/// guest; the step fails with kind `quota`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct QuotaExceeded {
    /// Which quota.
    pub kind: QuotaKind,
    /// The attempt's or the run's.
    pub scope: QuotaScope,
    /// The limit that was reached.
    pub limit: u64,
}

impl QuotaExceeded {
    fn message(&self) -> String {
        let (k, limit) = (self.kind.key(), self.kind.format(self.limit));
        match self.scope {
            QuotaScope::Attempt => format!(
                "went over its quota `{k}` of {limit} {} per attempt; raise `quota.{k}` if it needs more",
                self.kind.what()
            ),
            QuotaScope::Run => format!(
                "the run went over its quota `{k}` of {limit} {} (all steps together); raise the workflow's top-level `quota.{k}` if it needs more",
                self.kind.what()
            ),
        }
    }
}

/// Distinct blobs put, and their bytes: the same tally per attempt and per run.
#[derive(Default)]
struct BlobTally {
    bytes: u64,
    ids: HashSet<String>,
}

impl BlobTally {
    /// Whether blob `id` of `len` bytes fits under `quota`, and is new; a
    /// blob already counted always fits (content-addressed: nothing more is held).
    fn admit(&self, id: &str, len: usize, quota: &Quota) -> Result<bool, QuotaKind> {
        if self.ids.contains(id) {
            return Ok(false);
        }
        if self.ids.len() as u64 >= quota.blobs {
            return Err(QuotaKind::Blobs);
        }
        if self.bytes + len as u64 > quota.blob_bytes {
            return Err(QuotaKind::BlobBytes);
        }
        Ok(true)
    }

    fn add(&mut self, id: &str, len: usize) {
        self.bytes += len as u64;
        self.ids.insert(id.to_string());
    }
}

/// One attempt's use of its quota, kept in the attempt's store.
pub(crate) struct AttemptMeter {
    quota: Quota,
    blobs: BlobTally,
    state_bytes: u64,
    state_keys: HashSet<String>,
}

impl AttemptMeter {
    pub(crate) fn new(quota: Quota) -> Self {
        AttemptMeter { quota, blobs: BlobTally::default(), state_bytes: 0, state_keys: HashSet::new() }
    }

    fn over(&self, kind: QuotaKind) -> QuotaExceeded {
        QuotaExceeded { kind, scope: QuotaScope::Attempt, limit: self.quota.get(kind) }
    }

    /// Counts a blob put; a blob this attempt already put is free.
    pub(crate) fn put_blob(&mut self, id: &str, len: usize) -> Result<(), QuotaExceeded> {
        if self.blobs.admit(id, len, &self.quota).map_err(|k| self.over(k))? {
            self.blobs.add(id, len);
        }
        Ok(())
    }

    /// Counts a state write of `key` (its bytes and the value's).
    pub(crate) fn set_state(&mut self, key: &str, value_len: usize) -> Result<(), QuotaExceeded> {
        if !self.state_keys.contains(key) && self.state_keys.len() as u64 >= self.quota.state_keys {
            return Err(self.over(QuotaKind::StateKeys));
        }
        let bytes = self.state_bytes + (key.len() + value_len) as u64;
        if bytes > self.quota.state_bytes {
            return Err(self.over(QuotaKind::StateBytes));
        }
        self.state_bytes = bytes;
        self.state_keys.insert(key.to_string());
        Ok(())
    }
}

/// A run's use of its quota: wraps the run's [`HostServices`], so every
/// step, attempt, `forEach` item and nested run of it is counted together,
/// and the `put_blob` builtin too.
pub struct RunMeter {
    inner: std::sync::Arc<dyn HostServices>,
    quota: Quota,
    /// Held across the store's calls: read, check and write are one step.
    used: tokio::sync::Mutex<RunUsage>,
    log: Mutex<LogUsage>,
}

#[derive(Default)]
struct RunUsage {
    blobs: BlobTally,
    /// Keys and bytes of the run's state held now, read from the services
    /// on first use (a resumed run starts with what it had).
    state: Option<(u64, u64)>,
}

/// The log a run kept, of its `log` quota: counted by [`RunMeter`] in
/// one process, and by the queue's commits (in the run's row) for runs
/// on workers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogUsage {
    /// Bytes of lines kept (each line's text and a newline).
    pub(crate) bytes: u64,
    /// Lines kept.
    pub(crate) lines: u64,
}

impl LogUsage {
    /// What of a finished attempt's log the run keeps, counted: lines past
    /// the run's `log` quota (in `quota`) are dropped and counted, as past
    /// an attempt's.
    pub(crate) fn keep(&mut self, quota: &Quota, mut log: StepLog) -> StepLog {
        let mut kept = 0;
        for line in &log.lines {
            let cost = line.text.len() as u64 + 1;
            if self.bytes + cost > quota.log || self.lines + 1 > quota.log_lines() {
                break;
            }
            self.bytes += cost;
            self.lines += 1;
            kept += 1;
        }
        let dropped: u64 = log.lines.drain(kept..).map(|l| l.text.len() as u64 + 1).sum();
        log.dropped_bytes += dropped;
        log
    }
}

impl RunMeter {
    /// Meters what `inner` holds for a run against `quota`.
    pub fn new(inner: std::sync::Arc<dyn HostServices>, quota: Quota) -> Self {
        RunMeter { inner, quota, used: Default::default(), log: Mutex::default() }
    }

    fn over(&self, kind: QuotaKind) -> HostError {
        HostError::Quota(QuotaExceeded { kind, scope: QuotaScope::Run, limit: self.quota.get(kind) })
    }

    /// What of a finished attempt's log the run keeps: lines past the run's
    /// `log` quota are dropped and counted, as past an attempt's.
    pub fn keep_log(&self, log: StepLog) -> StepLog {
        crate::lock(&self.log).keep(&self.quota, log)
    }
}

#[async_trait::async_trait]
impl HostServices for RunMeter {
    async fn state_get(&self, key: &str) -> Result<Option<String>, HostError> {
        self.inner.state_get(key).await
    }

    async fn state_set(&self, key: &str, json: &str) -> Result<(), HostError> {
        // One lock over read, check and write: concurrent steps of the run
        // cannot both fit under the quota with what only one of them may.
        let mut used = self.used.lock().await;
        // Where the state is shared by processes, its store counts.
        if let Some(checked) = self.inner.state_set_within(key, json, self.quota.state_keys, self.quota.state_bytes).await? {
            return checked.map_err(|kind| self.over(kind));
        }
        let (keys, bytes) = match used.state {
            Some(usage) => usage,
            None => self.inner.state_usage().await?,
        };
        let old = self.inner.state_get(key).await?.map(|v| (key.len() + v.len()) as u64);
        let keys_after = keys + u64::from(old.is_none());
        let bytes_after = bytes - old.unwrap_or(0).min(bytes) + (key.len() + json.len()) as u64;
        if keys_after > self.quota.state_keys {
            return Err(self.over(QuotaKind::StateKeys));
        }
        if bytes_after > self.quota.state_bytes {
            return Err(self.over(QuotaKind::StateBytes));
        }
        self.inner.state_set(key, json).await?;
        used.state = Some((keys_after, bytes_after));
        Ok(())
    }

    async fn blob_put(&self, id: &str, data: &[u8]) -> Result<(), HostError> {
        let mut used = self.used.lock().await;
        // Where the blobs are put by many processes, their store counts.
        if let Some(checked) = self.inner.blob_put_within(id, data, self.quota.blobs, self.quota.blob_bytes).await? {
            return checked.map_err(|kind| self.over(kind));
        }
        let new = used.blobs.admit(id, data.len(), &self.quota).map_err(|k| self.over(k))?;
        self.inner.blob_put(id, data).await?;
        if new {
            used.blobs.add(id, data.len());
        }
        Ok(())
    }

    async fn blob_get(&self, id: &str) -> Result<Option<Vec<u8>>, HostError> {
        self.inner.blob_get(id).await
    }

    async fn state_usage(&self) -> Result<(u64, u64), HostError> {
        self.inner.state_usage().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::{LogLine, LogSource, MemoryServices};
    use std::sync::Arc;

    #[test]
    fn an_attempt_is_refused_past_each_quota_and_repeats_are_free() {
        let q = Quota { blob_bytes: 10, blobs: 2, state_bytes: 8, state_keys: 2, ..Quota::ATTEMPT };
        let mut m = AttemptMeter::new(q);
        m.put_blob("a", 6).unwrap();
        m.put_blob("a", 6).unwrap();
        assert_eq!(m.put_blob("b", 5).unwrap_err().kind, QuotaKind::BlobBytes);
        m.put_blob("c", 4).unwrap();
        assert_eq!(m.put_blob("d", 0).unwrap_err().kind, QuotaKind::Blobs);
        m.set_state("k", 2).unwrap();
        m.set_state("k", 2).unwrap(); // 6 bytes written
        assert_eq!(m.set_state("j", 2).unwrap_err().kind, QuotaKind::StateBytes);
        m.set_state("j", 1).unwrap();
        assert_eq!(m.set_state("x", 0).unwrap_err().kind, QuotaKind::StateKeys);
    }

    #[tokio::test]
    async fn a_run_counts_state_held_so_replacing_a_value_frees_its_bytes() {
        let inner = Arc::new(MemoryServices::new());
        inner.state_set("old", "123").await.unwrap(); // from before a resume
        let run = RunMeter::new(inner, Quota { state_bytes: 20, state_keys: 2, ..Quota::RUN });
        run.state_set("k", "\"123456\"").await.unwrap(); // 4 + 9 = 13 held
        run.state_set("k", "\"1234567890\"").await.unwrap(); // 4 + 13 = 17 held
        let err = run.state_set("k", "\"12345678901234567\"").await.unwrap_err();
        assert!(matches!(err, HostError::Quota(QuotaExceeded { kind: QuotaKind::StateBytes, scope: QuotaScope::Run, .. })));
        let err = run.state_set("z", "1").await.unwrap_err();
        assert!(matches!(err, HostError::Quota(QuotaExceeded { kind: QuotaKind::StateKeys, .. })));
        assert_eq!(run.state_get("k").await.unwrap().as_deref(), Some("\"1234567890\""), "a refused write changes nothing");
    }

    #[test]
    fn a_run_keeps_logs_up_to_its_quota_and_counts_the_rest() {
        let log = |texts: &[&str]| StepLog {
            lines: texts.iter().map(|t| LogLine { source: LogSource::Info, text: t.to_string() }).collect(),
            dropped_bytes: 1,
        };
        // Bytes: each line counts its text and a newline.
        let run = RunMeter::new(Arc::new(MemoryServices::new()), Quota { log: 64, ..Quota::RUN });
        let (a, b) = ("a".repeat(30), "b".repeat(30));
        let first = run.keep_log(log(&[&a, &b, "cc"]));
        assert_eq!((first.lines.len(), first.dropped_bytes), (2, 1 + 3));
        let second = run.keep_log(log(&["k"]));
        assert_eq!((second.lines.len(), second.dropped_bytes), (1, 1), "64 of 64 bytes");
        let third = run.keep_log(log(&["z"]));
        assert_eq!((third.lines.len(), third.dropped_bytes), (0, 1 + 2));
        // Lines: one per 16 bytes of the quota, so empty lines are bounded too.
        let run = RunMeter::new(Arc::new(MemoryServices::new()), Quota { log: 160, ..Quota::RUN });
        let empty = run.keep_log(log(&[""; 12]));
        assert_eq!((empty.lines.len(), empty.dropped_bytes), (10, 1 + 2));
    }

    #[test]
    fn messages_name_the_quota_and_how_to_raise_it() {
        let e = QuotaExceeded { kind: QuotaKind::BlobBytes, scope: QuotaScope::Attempt, limit: 256 << 20 };
        assert_eq!(e.to_string(), "went over its quota `blob_bytes` of 256MiB of blobs per attempt; raise `quota.blob_bytes` if it needs more");
        let e = QuotaExceeded { kind: QuotaKind::StateKeys, scope: QuotaScope::Run, limit: 100 };
        assert!(e.to_string().contains("top-level `quota.state_keys`"), "{e}");
        assert_eq!(QuotaKind::Log.parse_value("2MiB"), Ok(2 << 20));
        assert!(QuotaKind::Blobs.parse_value("lots").is_err());
    }
}
