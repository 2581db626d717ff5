//! The run store: every run, step, attempt, log, the runs' key-value state
//! and blobs (SPEC §5), behind one async, fallible interface
//! ([`RunStore`]) with two backends: embedded SQLite under the state dir
//! (the default; [`SqliteStore`]) and a PostgreSQL server shared by many
//! machines ([`PgStore`]). [`open`] picks one from a `--store` URL.
//!
//! The store consumes scheduler events ([`StoreSink`]) and never drives
//! execution. Each step's result is committed before any of its dependents
//! starts (the scheduler waits on [`EventSink::barrier`]), so a host killed
//! at any moment loses at most the steps that were running.

mod pipe;
mod postgres;
pub mod queue;
pub mod schedules;
pub mod local_schedules;
mod sqlite;
pub mod tokens;
pub mod whole;

pub use postgres::{Connections, PgStore};
pub use sqlite::{SCHEMA_VERSION, SqliteStore};

pub use crate::exec::{MemoEntry, MemoHit};
use crate::exec::{Event, EventSink, Memos, SecretSpans, SinkError};
use crate::sandbox::{HostError, HostServices, LogLine, StepLog};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// Why the store could not be used. Each is a one-line message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The state dir could not be made or read.
    #[error("cannot use the state dir {path}: {source}")]
    StateDir {
        /// The state dir.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    #[error("cannot open the run store {location}: {message}")]
    /// The store could not be opened (a file, a server, a connection).
    Open {
        /// The store's file or URL (without a password).
        location: String,
        /// What went wrong.
        message: String,
    },
    #[error(
        "the run store {location} has schema version {found}, newer than this sandflow knows ({known}); use a newer sandflow, or another store"
    )]
    /// A newer sandflow made the store: this one does not read it.
    NewerSchema {
        /// The store's file or URL (without a password).
        location: String,
        /// The store's schema version.
        found: i64,
        /// The newest version this sandflow knows.
        known: i64,
    },
    #[error("{location} is not a sandflow run store or is corrupt ({message}); move it away or use another --state-dir")]
    /// The file is not a run store, or is damaged.
    Corrupt {
        /// The store's file.
        location: String,
        /// What the database said.
        message: String,
    },
    #[error("`{0}` is not a run store URL: use sqlite:PATH or postgres://USER@HOST[:PORT]/DATABASE")]
    /// `--store` is neither `sqlite:` nor `postgres://`.
    BadUrl(String),
    #[error("no run with id `{0}` (see `sandflow runs list`)")]
    /// No run has this id (or id prefix).
    UnknownRun(String),
    #[error("`{prefix}` is the start of the ids of {} runs ({}): give more of the id", .matches.len(), .matches.join(", "))]
    /// An id prefix names more than one run.
    AmbiguousRun {
        /// The prefix given.
        prefix: String,
        /// The ids it starts.
        matches: Vec<String>,
    },
    /// A namespace's limit refuses what was asked: nothing was recorded.
    #[error("{0}")]
    Quota(String),
    /// What was asked clashes with what another holds (a webhook's name):
    /// nothing was recorded.
    #[error("{0}")]
    Conflict(String),
    /// A query or a transaction failed (a full disk, a lost connection).
    #[error("run store error: {0}")]
    Backend(String),
}

/// Where runs are recorded. Every method may wait on a disk or a server,
/// and may fail; none blocks a runtime worker thread.
#[async_trait::async_trait]
/// Memoized results (`cache:`) are kept through [`Memos`], the trait the
/// scheduler owns.
pub trait RunStore: Memos + Send + Sync {
    /// Where it is, for messages: a file path, or a URL without a password.
    fn location(&self) -> &str;
    /// Records a new run as `running`, before its first event.
    async fn begin_run(&self, run: &NewRun) -> Result<(), StoreError>;
    /// Marks a run as running again for `sandflow resume`; returns its new
    /// attempt number.
    async fn resume_run(&self, id: &str) -> Result<u32, StoreError>;
    /// Signals sent to steps of `steps` of run `run_id` and not yet taken
    /// (a step takes its signal as it records its end), by step id.
    async fn signals(&self, run_id: &str, steps: &[String]) -> Result<Vec<(String, crate::exec::core::Signal)>, StoreError>;
    /// Records `signal` for step `step` of run `run_id` if the step's row
    /// says it waits and it has no signal yet (in one statement, so two
    /// senders never both succeed); on workers it also wakes the step's
    /// job. Whether it was recorded.
    async fn put_signal(&self, run_id: &str, step: &str, signal: &crate::exec::core::Signal) -> Result<bool, StoreError>;
    /// Asks the process running `id` to cancel it (`sandflow cancel`);
    /// returns the run's status when asked.
    async fn request_cancel(&self, id: &str) -> Result<String, StoreError>;
    /// Whether someone asked to cancel the run since this was last asked:
    /// the request is taken, so a second `sandflow cancel` is seen again
    /// (it interrupts the run's `finally` steps).
    async fn take_cancel_request(&self, id: &str) -> Result<bool, StoreError>;
    /// Writes events in one transaction: all of them, or none.
    async fn record(&self, events: Vec<Event>) -> Result<(), StoreError>;
    /// The most recent runs, newest first.
    async fn runs(&self, query: &RunQuery) -> Result<Vec<RunSummary>, StoreError>;
    /// One run, with as much of its steps as `detail` asks for.
    async fn run(&self, id: &str, detail: RunDetail) -> Result<RunRecord, StoreError>;
    /// Up to `limit` run ids that start with `prefix`, in order.
    async fn ids_starting(&self, prefix: &str, limit: usize) -> Result<Vec<String>, StoreError>;
    /// What the store holds, counted (`/metrics`).
    async fn stats(&self) -> Result<StoreStats, StoreError>;
    /// Whether the store answers and its schema is the one this sandflow
    /// writes (`/readyz`): a store another sandflow migrated further, or
    /// one that does not answer, is not ready.
    async fn ready(&self) -> Result<(), StoreError>;
    /// The workers of a store that has them (PostgreSQL), newest first;
    /// `None` for a store that no worker uses.
    async fn workers(&self) -> Result<Option<Vec<WorkerRecord>>, StoreError> {
        Ok(None)
    }
    /// A run's recorded attempts, of one step or all, in the order recorded:
    /// each failed attempt that was retried, and each step's last.
    async fn attempts(&self, id: &str, step: Option<&str>) -> Result<Vec<AttemptRecord>, StoreError>;
    /// A run's captured log lines, of one step or all, in order.
    async fn logs(&self, id: &str, step: Option<&str>) -> Result<Vec<(String, LogLine)>, StoreError>;
    /// The outputs of a run's succeeded steps, as recorded (secrets
    /// masked, with where): what a resume keeps. A step whose record of
    /// masked secrets is unreadable is left out, so it runs again.
    async fn succeeded_outputs(&self, id: &str) -> Result<BTreeMap<String, RecordedOutput>, StoreError>;
    /// A file runs recorded (a workflow's text), by its SHA-256.
    async fn file(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// The JSON text a run's state holds under `key`.
    async fn state_get(&self, run_id: &str, key: &str) -> Result<Option<String>, StoreError>;
    /// Sets a run's state `key` to JSON text.
    async fn state_set(&self, run_id: &str, key: &str, json: &str) -> Result<(), StoreError>;
    /// How many state keys a run has, and their bytes (keys and values).
    async fn state_usage(&self, run_id: &str) -> Result<(u64, u64), StoreError>;
    /// [`HostServices::state_set_within`] for run `run_id`: `None` where
    /// one process writes a run's state (it counts it).
    async fn state_set_within(&self, run_id: &str, key: &str, json: &str, max_keys: u64, max_bytes: u64) -> Result<Option<Result<(), crate::sandbox::QuotaKind>>, StoreError> {
        let _ = (run_id, key, json, max_keys, max_bytes);
        Ok(None)
    }
    /// Stores a blob under its id (the hex SHA-256 of `data`); storing it
    /// again changes nothing.
    async fn blob_put(&self, id: &str, data: &[u8]) -> Result<(), StoreError>;
    /// [`HostServices::blob_put_within`] for run `run_id`: `None` where
    /// one process runs a run (it counts its blobs).
    async fn blob_put_within(&self, run_id: &str, id: &str, data: &[u8], max_blobs: u64, max_bytes: u64) -> Result<Option<Result<(), crate::sandbox::QuotaKind>>, StoreError> {
        let _ = (run_id, id, data, max_blobs, max_bytes);
        Ok(None)
    }
    /// The bytes of a blob.
    async fn blob_get(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every memoized result, newest first (`sandflow cache list`).
    async fn memo_list(&self) -> Result<Vec<MemoInfo>, StoreError>;
    /// Drops memoized results: all, or only the expired ones. Returns how many.
    async fn memo_clear(&self, expired_only: bool) -> Result<u64, StoreError>;
}

/// A line of `sandflow cache list`.
#[derive(Debug, Clone, Serialize)]
pub struct MemoInfo {
    /// The memo key: a hash of the step's component, config and input (or its `cache.key`).
    pub key: String,
    /// The workflow whose step stored it.
    pub workflow: String,
    /// The step's id.
    pub step: String,
    /// The component's SHA-256.
    pub component: String,
    /// The run that stored it.
    pub run_id: String,
    /// When it was stored (RFC 3339).
    pub stored_at: String,
    /// When it expires (its `cache.ttl`; RFC 3339).
    pub expires_at: String,
    /// It has expired: no run reuses it.
    pub expired: bool,
    /// The stored output's size as JSON.
    pub output_bytes: usize,
}

pub(crate) use crate::units::epoch_now;

/// RFC 3339 of seconds since the Unix epoch.
pub(crate) fn rfc3339(secs: f64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(secs.max(0.0))).to_string()
}

/// Which store a `--store` value names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `sqlite:PATH`: the database file (`sandflow.db` under the state dir by default).
    Sqlite(PathBuf),
    /// `postgres://…` or `postgresql://…`, as libpq reads it.
    Postgres(String),
}

impl StoreUrl {
    /// Reads a `--store` value.
    pub fn parse(text: &str) -> Result<StoreUrl, StoreError> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(StoreUrl::Postgres(text.to_string()));
        }
        match text.strip_prefix("sqlite:") {
            Some(path) if !path.is_empty() => Ok(StoreUrl::Sqlite(PathBuf::from(path.strip_prefix("//").unwrap_or(path)))),
            _ => Err(StoreError::BadUrl(text.to_string())),
        }
    }

    /// The default: `sandflow.db` under the state dir.
    pub fn default_for(state_dir: &Path) -> StoreUrl {
        StoreUrl::Sqlite(state_dir.join("sandflow.db"))
    }
}

/// Opens (creating and migrating as needed) the SQLite store at `path`.
pub async fn open_sqlite(path: &std::path::Path) -> Result<SqliteStore, StoreError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::StateDir { path: dir.to_path_buf(), source })?;
        }
        SqliteStore::open_file(&path)
    })
    .await
    .map_err(|e| StoreError::Backend(e.to_string()))?
}

/// Opens (creating and migrating as needed) the store at `url`.
pub async fn open(url: &StoreUrl) -> Result<Arc<dyn RunStore>, StoreError> {
    match url {
        StoreUrl::Sqlite(path) => Ok(Arc::new(open_sqlite(path).await?)),
        StoreUrl::Postgres(url) => Ok(Arc::new(PgStore::connect(url).await?)),
    }
}

/// The time now as the store writes it: RFC 3339 in UTC, to the
/// millisecond (`2026-12-06T03:05:37.123Z`).
pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// A step's log as the store's rows: (source, text), with a note when
/// bytes were dropped.
pub(crate) fn log_rows(log: &StepLog) -> impl Iterator<Item = (&str, String)> {
    let note = (log.dropped_bytes > 0).then(|| ("note", format!("{} more bytes of log were dropped (log cap)", log.dropped_bytes)));
    log.lines.iter().map(|l| (l.source.as_str(), l.text.clone())).chain(note)
}

/// Rows of (step, output, output_secrets) as a resume reads them.
pub(crate) fn recorded_outputs(run_id: &str, rows: Vec<(String, Option<String>, Option<String>)>) -> BTreeMap<String, RecordedOutput> {
    let mut out = BTreeMap::new();
    for (step, output, secrets) in rows {
        let secrets = match secrets.map(|text| serde_json::from_str::<SecretSpans>(&text)) {
            None => None,
            Some(Ok(spans)) => Some(spans),
            // Its masked output cannot be rebuilt: the step runs again.
            Some(Err(e)) => {
                tracing::warn!("run {run_id}: step `{step}`: unreadable record of masked secrets ({e}); it will run again");
                continue;
            }
        };
        let output = output.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(Value::Null);
        out.insert(step, RecordedOutput { output, secrets });
    }
    out
}

/// A succeeded step's output as the store has it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedOutput {
    /// With every secret value masked.
    pub output: Value,
    /// Where, if any secret was (see [`crate::exec::unmask`]).
    pub secrets: Option<SecretSpans>,
}

/// What `begin_run` records.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// The run's id ([`crate::exec::new_run_id`]).
    pub id: String,
    /// The workflow's `name`.
    pub workflow: String,
    /// The workflow file, as given (a resume reads it again).
    pub file: String,
    /// The workflow file's SHA-256.
    pub sha256: String,
    /// The run's input (secrets are never in it).
    pub input: Value,
    /// `--target`: the steps the run is limited to (none: every step).
    pub targets: Vec<String>,
    /// The workflow file's text (its SHA-256 is `sha256`), kept once per
    /// content: the run's graph is drawn from it ([`RunStore::file`]).
    pub text: Option<Arc<str>>,
}

/// What a store holds, counted: what `sandflow serve`'s `/metrics` says.
#[derive(Debug, Clone, Default)]
pub struct StoreStats {
    /// Runs by status.
    pub runs: Vec<(String, u64)>,
    /// Steps by state.
    pub steps: Vec<(String, u64)>,
    /// Failed steps by failure kind.
    pub failures: Vec<(String, u64)>,
    /// How long the steps that ended took.
    pub durations: crate::metrics::Histogram,
    /// Steps ready and waiting for a worker (a store with workers).
    pub queued: Option<u64>,
}

/// The queries of [`StoreStats`], the same SQL on both stores: runs by
/// status, steps by state, failed steps by kind, then the durations of
/// ended steps as one row (a count at or under each bucket's bound, all,
/// and their sum in milliseconds).
pub(crate) fn stats_queries() -> [String; 4] {
    let buckets: Vec<String> =
        crate::metrics::DURATION_BUCKETS.iter().map(|b| format!("count(*) FILTER (WHERE duration_ms <= {})", b * 1000.0)).collect();
    [
        "SELECT status, count(*) FROM runs GROUP BY status ORDER BY status".into(),
        "SELECT state, count(*) FROM steps GROUP BY state ORDER BY state".into(),
        "SELECT error_kind, count(*) FROM steps WHERE state = 'failed' AND error_kind IS NOT NULL GROUP BY error_kind ORDER BY error_kind".into(),
        format!("SELECT {}, count(*), COALESCE(sum(duration_ms), 0.0) FROM steps WHERE state IN ('succeeded', 'failed')", buckets.join(", ")),
    ]
}

/// The durations histogram from the last query of [`stats_queries`]: the
/// count at or under each bound, then all of them (`counts`), and their
/// sum in milliseconds.
pub(crate) fn durations(counts: &[i64], sum_ms: f64) -> crate::metrics::Histogram {
    let mut h = crate::metrics::Histogram::default();
    for (bucket, n) in h.buckets.iter_mut().zip(counts) {
        *bucket = (*n).max(0) as u64;
    }
    h.count = counts.get(h.buckets.len()).map_or(0, |n| (*n).max(0) as u64);
    h.sum = sum_ms / 1000.0;
    h
}

/// A line of `sandflow runs list`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    /// The run's id.
    pub id: String,
    /// The namespace (tenant) the run belongs to.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The workflow's `name`.
    pub workflow: String,
    /// The workflow file, as given when the run started.
    pub file: String,
    /// `pending`, `running`, `completed`, `failed` or `cancelled`.
    pub status: String,
    /// 1, plus one per `sandflow resume`.
    pub attempt: u32,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it ended (RFC 3339).
    pub finished_at: Option<String>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    /// Steps that succeeded.
    pub succeeded_steps: u32,
    /// Steps that failed.
    pub failed_steps: u32,
    /// Steps that were skipped.
    pub skipped_steps: u32,
}

/// Which runs [`RunStore::runs`] lists: newest first, a page at a time.
#[derive(Debug, Clone, Default)]
pub struct RunQuery {
    /// At most this many.
    pub limit: usize,
    /// Only runs of this workflow (its `name`).
    pub workflow: Option<String>,
    /// Only runs in this state (`running`, `completed`, `failed`, `cancelled`).
    pub status: Option<String>,
    /// The next page: only runs listed after this run (the last of a page).
    pub after: Option<String>,
    /// Only runs of these namespaces (`None`: of every namespace).
    pub namespaces: Option<Vec<String>>,
}

/// The namespace of runs that name none: every run of a store without
/// tenants.
pub const DEFAULT_NAMESPACE: &str = "default";

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_string()
}

impl RunQuery {
    /// The newest `limit` runs.
    pub fn newest(limit: usize) -> RunQuery {
        RunQuery { limit, ..RunQuery::default() }
    }

    /// The conditions of the query on `runs r`, to follow `WHERE TRUE`, and
    /// the values they bind: `param(n)` writes the n-th (from 2: the first
    /// is the limit), `tiebreak` is the column ordering runs that started in
    /// the same millisecond. Only the filters given are written, so the
    /// store's indexes of workflow and state serve them.
    pub(crate) fn conditions(&self, param: impl Fn(usize) -> String, tiebreak: &str) -> (String, Vec<&str>) {
        let (mut sql, mut values) = (String::new(), Vec::new());
        for (column, value) in [("r.workflow", &self.workflow), ("r.status", &self.status)] {
            if let Some(v) = value {
                values.push(v.as_str());
                sql.push_str(&format!(" AND {column} = {}", param(values.len() + 1)));
            }
        }
        if let Some(namespaces) = &self.namespaces {
            let mut places = Vec::new();
            for ns in namespaces {
                values.push(ns.as_str());
                places.push(param(values.len() + 1));
            }
            // No namespace: no run (`IN ()` is not SQL).
            match places.is_empty() {
                true => sql.push_str(" AND FALSE"),
                false => sql.push_str(&format!(" AND r.namespace IN ({})", places.join(", "))),
            }
        }
        if let Some(after) = &self.after {
            values.push(after.as_str());
            let p = param(values.len() + 1);
            sql.push_str(&format!(" AND (r.started_at, r.{tiebreak}) < (SELECT started_at, {tiebreak} FROM runs WHERE id = {p})"));
        }
        (sql, values)
    }
}

/// How much of a run [`RunStore::run`] reads: a run of 100,000 steps holds
/// 100,000 inputs and outputs, which only some readers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunDetail {
    /// The run alone (status, input, output, error); no steps.
    Run,
    /// And each step's state, attempts, timing, fuel and failure, without
    /// its input and output: what `runs show` prints.
    Steps,
    /// And each step's input and output.
    Full,
}

impl RunDetail {
    /// The columns of the steps query, in [`StepRecord`]'s order (input
    /// and output NULL unless asked for); none when no step is read.
    pub(crate) fn step_columns(self) -> Option<&'static str> {
        match self {
            RunDetail::Run => None,
            RunDetail::Steps => Some("step, state, attempts, finished_at, duration_ms, fuel_used, error_kind, error_message, reason, NULL, run_attempt, NULL, started_at, worker, items, wake_at, wait_kind"),
            RunDetail::Full => Some("step, state, attempts, finished_at, duration_ms, fuel_used, error_kind, error_message, reason, output, run_attempt, input, started_at, worker, items, wake_at, wait_kind"),
        }
    }
}

/// A worker as it last told the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// Its name (`--name`, or host and process id).
    pub name: String,
    /// Its labels (`--label`): the steps whose `runs_on` it meets.
    pub labels: Vec<String>,
    /// Most steps it runs at once.
    pub slots: u32,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// Its last heartbeat.
    pub seen_at: String,
    /// When it stopped, if it stopped gracefully.
    pub stopped_at: Option<String>,
    /// It heartbeat within its lease and has not stopped.
    pub alive: bool,
    /// Attempts it holds now, and of how many runs.
    pub running: u32,
    /// The runs whose steps it holds now.
    pub runs: u32,
}

impl WorkerRecord {
    /// `alive` (it heartbeat within its lease), `stopped` (it said so), or
    /// `lost` (killed, or cut off).
    pub fn state(&self) -> &'static str {
        match (self.alive, self.stopped_at.is_some()) {
            (true, _) => "alive",
            (false, true) => "stopped",
            (false, false) => "lost",
        }
    }
}

/// A run as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run's id.
    pub id: String,
    /// The namespace (tenant) the run belongs to.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The workflow's `name`.
    pub workflow: String,
    /// The workflow file, as given when the run started.
    pub file: String,
    /// The workflow file's SHA-256 (its text is kept by it).
    pub sha256: String,
    /// The run's input.
    pub input: Value,
    /// `pending`, `running`, `completed`, `failed` or `cancelled`.
    pub status: String,
    /// 1, plus one per `sandflow resume`.
    pub attempt: u32,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it ended (RFC 3339).
    pub finished_at: Option<String>,
    /// The run's output as recorded: JSON text, parsed only by whoever
    /// needs its value (a run of 100,000 steps may output all of theirs,
    /// which `runs show` prints as it is).
    pub output: Option<Box<RawValue>>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    /// `--target`: the steps the run is limited to (none: every step).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    /// What started it, when not a person (a schedule, a webhook).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<TriggerRecord>,
    /// Its steps, each as last recorded.
    pub steps: Vec<StepRecord>,
}

/// What started a run, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerRecord {
    /// `schedule` or `webhook`.
    pub kind: String,
    /// The schedule (WORKFLOW/NAME) or webhook (NAME).
    pub source: Option<String>,
    /// A schedule's tick (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_time: Option<String>,
}

/// An attempt of a step (or of one `forEach` item) as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The step's id.
    pub step: String,
    /// Which attempt, from 1.
    pub attempt: u32,
    /// The `forEach` item, for an item's retried attempt.
    pub item: Option<u64>,
    /// How it ended (`failed`, `succeeded`, ...).
    pub state: String,
    /// When it was recorded (RFC 3339).
    pub recorded_at: String,
    /// Its failure's kind (`trap`, `fuel`, `timeout`, ...).
    pub error_kind: Option<String>,
    /// Its failure's message.
    pub error_message: Option<String>,
    /// The fuel it used (unknown for a `forEach` step's last attempt and in
    /// stores older than the web view).
    pub fuel_used: Option<u64>,
}

/// A step of a recorded run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    /// The step's id.
    pub step: String,
    /// Its state's name (`running`, `succeeded`, ...).
    pub state: String,
    /// Attempts made, summed over a `forEach` step's items.
    pub attempts: u32,
    /// A `forEach` step's number of items.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<u32>,
    /// When it ended (RFC 3339).
    pub finished_at: Option<String>,
    /// From its first attempt's start to its end.
    pub duration_ms: f64,
    /// The fuel its attempts used.
    pub fuel_used: i64,
    /// Its failure's kind (`trap`, `fuel`, `timeout`, ...).
    pub error_kind: Option<String>,
    /// Its failure's message.
    pub error_message: Option<String>,
    /// Why it was skipped.
    pub reason: Option<String>,
    /// Its output (secrets masked).
    pub output: Option<Value>,
    /// Which run attempt (1, or a resume) recorded it.
    pub run_attempt: u32,
    /// The input it ran with (each item's, for `forEach`; secrets masked);
    /// none if it did not run.
    pub input: Option<Value>,
    /// When a `running` step's current attempt started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// The worker a `running` step runs on (runs on workers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// When a `waiting` step wakes (RFC 3339): its timer, or its signal's
    /// timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_at: Option<String>,
    /// What a `waiting` step waits for: `wait`, `sleep`, `signal` or `approval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_kind: Option<String>,
}

/// The run a user means by `given`: its id, or the start of exactly one
/// run's id (`01a24541-668d`), as git takes a commit's. A start that fits
/// several runs is refused with them listed.
pub async fn resolve_run(store: &dyn RunStore, given: &str) -> Result<String, StoreError> {
    resolve_run_in(store, given, None).await
}

/// [`resolve_run`] among the runs of `namespaces` only (`None`: of all):
/// to a caller scoped to them, a run of another namespace is as unknown as
/// one that does not exist, and never named in an ambiguity either.
pub async fn resolve_run_in(store: &dyn RunStore, given: &str, namespaces: Option<&[String]>) -> Result<String, StoreError> {
    // Ids are hex digits and dashes: anything else names no run (and needs
    // no escaping in a pattern).
    if given.is_empty() || !given.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(StoreError::UnknownRun(given.to_string()));
    }
    let mut matches = store.ids_starting(&given.to_ascii_lowercase(), if namespaces.is_some() { 64 } else { 6 }).await?;
    if let Some(namespaces) = namespaces {
        let mut theirs = Vec::new();
        for id in matches {
            match store.run(&id, RunDetail::Run).await {
                Ok(run) if namespaces.contains(&run.namespace) => theirs.push(id),
                Ok(_) | Err(StoreError::UnknownRun(_)) => {}
                Err(e) => return Err(e),
            }
            if theirs.len() == 6 {
                break;
            }
        }
        matches = theirs;
    }
    match matches.len() {
        0 => Err(StoreError::UnknownRun(given.to_string())),
        1 => Ok(matches.remove(0)),
        _ if matches.iter().any(|m| m == given) => Ok(given.to_string()),
        _ => Err(StoreError::AmbiguousRun { prefix: given.to_string(), matches }),
    }
}

/// Whether a store keeps anything of `event`: a step's end, a failed
/// attempt, the run's end, and a step's start (its row says `running`
/// while it runs; of a `forEach` step's items, the first one's start).
pub(crate) fn records(event: &Event) -> bool {
    match event {
        Event::RunStarted { .. } | Event::StepWarning { .. } | Event::StepRestored { .. } => false,
        Event::StepStarted { item, .. } => matches!(item, None | Some(0)),
        Event::StepWaiting { .. } | Event::StepRetrying { .. } | Event::StepFinished { .. } | Event::RunFinished { .. } | Event::StepLogLine { .. } => true,
    }
}

/// Which events of a batch that one transaction records need no rows of
/// their own: a step's start and the lines its attempt logged live, when
/// the step's end comes later in the same batch. The end's row replaces
/// the start's whole, and its log replaces the live lines, so writing them
/// first would only be undone (SQLite: a wide run's writer spent about a
/// third of its statements on them). Followers still see every event in
/// the run's stream; only the rows are left out.
pub(crate) fn superseded(events: &[Event]) -> Vec<bool> {
    let mut ended: std::collections::HashSet<(&str, &str)> = std::collections::HashSet::new();
    let mut out = vec![false; events.len()];
    for (i, event) in events.iter().enumerate().rev() {
        match event {
            Event::StepFinished { run_id, step, .. } => {
                ended.insert((run_id, step));
            }
            Event::StepStarted { run_id, step, .. } | Event::StepLogLine { run_id, step, .. } => {
                out[i] = ended.contains(&(run_id.as_str(), step.as_str()));
            }
            _ => {}
        }
    }
    out
}

/// The events of a batch that write rows: those not [`superseded`].
pub(crate) fn with_rows(events: &[Event]) -> impl Iterator<Item = &Event> {
    events.iter().zip(superseded(events)).filter_map(|(event, superseded)| (!superseded).then_some(event))
}

/// A run store as the mailbox of the runs it records: a run in this
/// process looks there for signals to its waiting steps.
pub struct StoreMailbox(pub Arc<dyn RunStore>);

#[async_trait::async_trait]
impl crate::exec::Mailbox for StoreMailbox {
    async fn signals(&self, run_id: &str, steps: &[String]) -> Result<Vec<(String, crate::exec::core::Signal)>, String> {
        self.0.signals(run_id, steps).await.map_err(|e| e.to_string())
    }
}

/// A signal as a store row keeps it: (step, data, by, at).
pub(crate) fn signal_of(step: String, data: String, by: String, at: String) -> Option<(String, crate::exec::core::Signal)> {
    let data = serde_json::from_str(&data).ok()?;
    Some((step, crate::exec::core::Signal { data, by, at }))
}

/// Writes every event to the store from a task of its own, which commits
/// whatever has queued up in one transaction (group commit).
/// [`EventSink::barrier`] waits, without blocking a thread, until all
/// emitted events are committed; the scheduler calls it before a dependent
/// step starts.
pub struct StoreSink {
    queue: tokio::sync::mpsc::UnboundedSender<Event>,
    sent: AtomicU64,
    progress: tokio::sync::watch::Receiver<Progress>,
    /// Which events it writes.
    keeps: fn(&Event) -> bool,
    /// Told when a barrier waits: a lingering writer writes at once.
    flush: Arc<tokio::sync::Notify>,
}

#[derive(Default, Clone)]
struct Progress {
    /// Events the writer is done with: committed, or dropped after a failure.
    committed: u64,
    /// The first commit that failed. Nothing is written after it: a later
    /// commit would record steps whose dependencies were lost.
    failed: Option<String>,
}

impl StoreSink {
    /// Starts the writer task; must be called within a tokio runtime.
    pub fn new(store: Arc<dyn RunStore>) -> Self {
        StoreSink::writing(records, None, move |batch| {
            let store = store.clone();
            Box::pin(async move { store.record(batch).await.map_err(|e| format!("the run store {} could not record the run: {e}", store.location())) })
        })
    }

    /// A sink whose writer task records each batch of the events `keeps`
    /// (in one transaction) with `write`, which says why when it cannot;
    /// nothing is written after a batch that failed. With `linger`, a batch
    /// is written when a [`EventSink::barrier`] waits for it or `linger`
    /// after its first event, whichever comes first, rather than at once:
    /// fewer, larger transactions, and what no step waits for (a step's
    /// start, a leaf step's end) is recorded at most `linger` late. Must be
    /// called within a tokio runtime.
    pub fn writing(keeps: fn(&Event) -> bool, linger: Option<std::time::Duration>, mut write: impl FnMut(Vec<Event>) -> BatchWrite + Send + 'static) -> Self {
        let (queue, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
        let (report, progress) = tokio::sync::watch::channel(Progress::default());
        let flush = Arc::new(tokio::sync::Notify::new());
        let wanted = flush.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                if let Some(linger) = linger {
                    tokio::select! {
                        _ = wanted.notified() => {}
                        _ = tokio::time::sleep(linger) => {}
                    }
                }
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                let n = batch.len() as u64;
                let poisoned = report.borrow().failed.is_some();
                // A failed transaction is rolled back whole: what it held
                // is not recorded at all, never half.
                let result = if poisoned { Ok(()) } else { write(batch).await };
                report.send_modify(|p| {
                    if let Err(e) = result {
                        p.failed = Some(e);
                    }
                    p.committed += n;
                });
            }
        });
        StoreSink { queue, sent: AtomicU64::new(0), progress, keeps, flush }
    }
}

/// A batch of events being written by a [`StoreSink`]'s writer: why not, if it fails.
pub type BatchWrite = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

#[async_trait::async_trait]
impl EventSink for StoreSink {
    fn emit(&self, event: &Event) {
        if !(self.keeps)(event) {
            return;
        }
        if self.queue.send(event.clone()).is_ok() {
            self.sent.fetch_add(1, Ordering::SeqCst);
        }
    }

    async fn barrier(&self) -> Result<(), SinkError> {
        let target = self.sent.load(Ordering::SeqCst);
        if self.progress.borrow().committed < target {
            self.flush.notify_one();
        }
        let mut progress = self.progress.clone();
        let seen = progress.wait_for(|p| p.committed >= target || p.failed.is_some()).await;
        match seen {
            Ok(p) => match &p.failed {
                Some(message) => Err(SinkError(message.clone())),
                None => Ok(()),
            },
            Err(_) => Err(SinkError("the run store's writer stopped".into())),
        }
    }
}

/// Run-scoped state and blobs in the store: state set by one step is seen
/// by later steps of the run (and by a resume); blobs outlive the process.
pub struct StoreServices {
    /// Where state and blobs are kept.
    pub store: Arc<dyn RunStore>,
    /// The run whose state it is.
    pub run_id: String,
}

fn failed(what: &str) -> impl Fn(StoreError) -> HostError + '_ {
    move |e| HostError::Failed(format!("the run store could not {what}: {e}"))
}

#[async_trait::async_trait]
impl HostServices for StoreServices {
    async fn state_get(&self, key: &str) -> Result<Option<String>, HostError> {
        self.store.state_get(&self.run_id, key).await.map_err(failed("read the state"))
    }

    async fn state_set(&self, key: &str, json: &str) -> Result<(), HostError> {
        self.store.state_set(&self.run_id, key, json).await.map_err(failed("save the state"))
    }

    async fn blob_put(&self, id: &str, data: &[u8]) -> Result<(), HostError> {
        self.store.blob_put(id, data).await.map_err(failed("save a blob"))
    }

    async fn blob_get(&self, id: &str) -> Result<Option<Vec<u8>>, HostError> {
        self.store.blob_get(id).await.map_err(failed("read a blob"))
    }

    async fn state_usage(&self) -> Result<(u64, u64), HostError> {
        self.store.state_usage(&self.run_id).await.map_err(failed("read the state's size"))
    }

    async fn state_set_within(&self, key: &str, json: &str, max_keys: u64, max_bytes: u64) -> Result<Option<Result<(), crate::sandbox::QuotaKind>>, HostError> {
        self.store.state_set_within(&self.run_id, key, json, max_keys, max_bytes).await.map_err(failed("save the state"))
    }

    async fn blob_put_within(&self, id: &str, data: &[u8], max_blobs: u64, max_bytes: u64) -> Result<Option<Result<(), crate::sandbox::QuotaKind>>, HostError> {
        self.store.blob_put_within(&self.run_id, id, data, max_blobs, max_bytes).await.map_err(failed("save a blob"))
    }
}

/// A store that cannot keep or find a memoized result: the step runs, or
/// its result stands without being kept.
pub(crate) fn memo_failed(e: StoreError) -> HostError {
    HostError::Failed(e.to_string())
}

/// Recorded JSON text, checked but not parsed into a value; `None` if it
/// is missing or not JSON.
pub(crate) fn raw_json(text: Option<String>) -> Option<Box<RawValue>> {
    text.and_then(|t| RawValue::from_string(t).ok())
}

/// How a run's `--target` steps are stored: a JSON list, or nothing.
pub(crate) fn targets_text(targets: &[String]) -> Option<String> {
    (!targets.is_empty()).then(|| serde_json::to_string(targets).expect("strings serialize"))
}

/// A run's `--target` steps as stored.
pub(crate) fn targets_of(text: Option<String>) -> Vec<String> {
    text.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
}
