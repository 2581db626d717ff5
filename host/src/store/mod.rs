//! The run store: an embedded SQLite database under the state dir
//! (`sandflow.db`) holding every run, step, attempt, log, the runs'
//! key-value state and blobs (SPEC §5).
//!
//! It consumes scheduler events ([`StoreSink`]) and never drives execution.
//! Each step's result is committed as its `StepFinished` event is emitted,
//! which the scheduler does before any dependent starts: a host killed at
//! any moment loses at most the steps that were running.
//!
//! WAL mode with `synchronous=NORMAL`: a commit survives the process being
//! killed (not the machine losing power). Several `sandflow` processes may
//! share one state dir: writers wait for each other (busy timeout).

use crate::exec::{Event, EventSink, SecretSpans, SinkError};
use crate::sandbox::{HostError, HostServices, LogLine};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The schema this build reads and writes: the number of [`MIGRATIONS`].
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// `MIGRATIONS[n]` takes a store from schema version `n` to `n + 1`. Only
/// ever append: a released migration is never changed.
const MIGRATIONS: &[&str] = &[
    // 1: runs, steps, attempts, logs, state, blobs.
    "
CREATE TABLE runs (
    id          TEXT PRIMARY KEY,
    workflow    TEXT NOT NULL,
    file        TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    input       TEXT NOT NULL,
    status      TEXT NOT NULL,
    attempt     INTEGER NOT NULL DEFAULT 1,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    output      TEXT,
    error       TEXT
);
CREATE TABLE steps (
    run_id        TEXT NOT NULL REFERENCES runs(id),
    step          TEXT NOT NULL,
    state         TEXT NOT NULL,
    attempts      INTEGER NOT NULL,
    finished_at   TEXT,
    duration_ms   REAL NOT NULL,
    fuel_used     INTEGER NOT NULL,
    error_kind    TEXT,
    error_message TEXT,
    reason        TEXT,
    output        TEXT,
    run_attempt   INTEGER NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE attempts (
    run_id        TEXT NOT NULL REFERENCES runs(id),
    step          TEXT NOT NULL,
    attempt       INTEGER NOT NULL,
    item          INTEGER,
    state         TEXT NOT NULL,
    recorded_at   TEXT NOT NULL,
    error_kind    TEXT,
    error_message TEXT
);
CREATE TABLE logs (
    run_id TEXT NOT NULL REFERENCES runs(id),
    step   TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    source TEXT NOT NULL,
    text   TEXT NOT NULL
);
CREATE INDEX logs_by_step ON logs (run_id, step, seq);
CREATE TABLE state (
    run_id TEXT NOT NULL,
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE TABLE blobs (
    id   TEXT PRIMARY KEY,
    data BLOB NOT NULL
);
",
    // 2: where secrets were masked in a step's recorded output, so that a
    // resume can put them back (see `SecretSpans`).
    "ALTER TABLE steps ADD COLUMN output_secrets TEXT;",
];

/// Why the store could not be used. Each is a one-line message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("cannot use the state dir {path}: {source}")]
    StateDir { path: PathBuf, source: std::io::Error },
    #[error("cannot open the run store {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error(
        "the run store {path} has schema version {found}, newer than this sandflow knows ({known}); use a newer sandflow, or another --state-dir"
    )]
    NewerSchema { path: PathBuf, found: i64, known: i64 },
    #[error("{path} is not a sandflow run store or is corrupt ({message}); move it away or use another --state-dir")]
    Corrupt { path: PathBuf, message: String },
    #[error("no run with id `{0}` (see `sandflow runs list`)")]
    UnknownRun(String),
    #[error("run store error: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// The open run store.
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// Each run's attempt number, as this process set it (saves a query per step).
    attempts: Mutex<std::collections::HashMap<String, u32>>,
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn json_text(v: &Value) -> String {
    v.to_string()
}

fn parse_json(text: Option<String>) -> Option<Value> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

impl Store {
    /// Opens (creating if needed) `state_dir/sandflow.db`, migrating an
    /// older schema and refusing a newer one or a file that is not a store.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::StateDir { path: state_dir.to_path_buf(), source })?;
        let path = state_dir.join("sandflow.db");
        let conn = Connection::open(&path).map_err(|e| StoreError::Open { path: path.clone(), message: e.to_string() })?;
        let corrupt = |e: rusqlite::Error| StoreError::Corrupt { path: path.clone(), message: e.to_string() };
        conn.busy_timeout(Duration::from_secs(30)).map_err(corrupt)?;
        // Reading the version first touches the file: a file that is not a
        // database fails here, before anything is written to it.
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(corrupt)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema { path, found: version, known: SCHEMA_VERSION });
        }
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(|e| {
            if matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen)) {
                StoreError::Open { path: path.clone(), message: e.to_string() }
            } else {
                corrupt(e)
            }
        })?;
        tracing::debug!("run store {} in {mode} mode", path.display());
        conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;").map_err(corrupt)?;
        // Bound the WAL file: without this it keeps the size of the largest
        // transaction (a step's big output or log) after every checkpoint.
        conn.execute_batch("PRAGMA journal_size_limit = 67108864;").map_err(corrupt)?;
        if version < SCHEMA_VERSION {
            migrate(&conn).map_err(|e| match e {
                MigrateError::Newer(found) => StoreError::NewerSchema { path: path.clone(), found, known: SCHEMA_VERSION },
                MigrateError::Sql(e) => StoreError::Open { path: path.clone(), message: e.to_string() },
            })?;
        }
        Ok(Store { conn: Mutex::new(conn), path, attempts: Mutex::default() })
    }

    /// Where the database file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        crate::lock(&self.conn)
    }

    fn set_attempt(&self, id: &str, attempt: u32) {
        crate::lock(&self.attempts).insert(id.to_string(), attempt);
    }

    fn attempt_of(&self, conn: &Connection, id: &str) -> u32 {
        if let Some(a) = crate::lock(&self.attempts).get(id) {
            return *a;
        }
        conn.query_row("SELECT attempt FROM runs WHERE id = ?1", params![id], |r| r.get(0)).unwrap_or(1)
    }

    /// Records a new run, before its first event.
    pub fn begin_run(&self, run: &NewRun<'_>) -> Result<(), StoreError> {
        self.set_attempt(run.id, 1);
        self.conn().execute(
            "INSERT INTO runs (id, workflow, file, sha256, input, status, attempt, started_at) VALUES (?1, ?2, ?3, ?4, ?5, 'running', 1, ?6)",
            params![run.id, run.workflow, run.file.display().to_string(), run.sha256, json_text(run.input), now()],
        )?;
        Ok(())
    }

    /// Marks a run as running again for `sandflow resume`; returns its new attempt number.
    pub fn resume_run(&self, id: &str) -> Result<u32, StoreError> {
        let conn = self.conn();
        let n = conn.execute(
            "UPDATE runs SET status = 'running', attempt = attempt + 1, finished_at = NULL, error = NULL, output = NULL WHERE id = ?1",
            params![id],
        )?;
        if n == 0 {
            return Err(StoreError::UnknownRun(id.to_string()));
        }
        let attempt: u32 = conn.query_row("SELECT attempt FROM runs WHERE id = ?1", params![id], |r| r.get(0))?;
        self.set_attempt(id, attempt);
        Ok(attempt)
    }

    /// Writes events in one transaction.
    pub fn record_all(&self, events: &[Event]) -> Result<(), StoreError> {
        let conn = self.conn();
        let tx = conn.unchecked_transaction()?;
        for event in events {
            self.write(&tx, event)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Writes one event in its own transaction.
    pub fn record(&self, event: &Event) -> Result<(), StoreError> {
        self.record_all(std::slice::from_ref(event))
    }

    fn write(&self, conn: &Connection, event: &Event) -> Result<(), StoreError> {
        match event {
            Event::RunStarted { .. } | Event::StepStarted { .. } | Event::StepWarning { .. } | Event::StepRestored { .. } => {}
            Event::StepRetrying { run_id, step, attempt, item, error, .. } => {
                conn.prepare_cached(
                    "INSERT INTO attempts (run_id, step, attempt, item, state, recorded_at, error_kind, error_message) VALUES (?1, ?2, ?3, ?4, 'failed', ?5, ?6, ?7)",
                )?
                .execute(params![run_id, step, attempt, item.map(|i| i as i64), now(), error.kind.as_str(), error.message])?;
            }
            Event::StepFinished { run_id, step, state, attempt, duration, fuel_used, error, reason, output, output_secrets, log } => {
                let run_attempt = self.attempt_of(conn, run_id);
                let tx = conn;
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO steps (run_id, step, state, attempts, finished_at, duration_ms, fuel_used, error_kind, error_message, reason, output, run_attempt, output_secrets)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                )?
                .execute(params![
                        run_id,
                        step,
                        state.as_str(),
                        attempt,
                        now(),
                        duration.as_secs_f64() * 1000.0,
                        *fuel_used as i64,
                        error.as_ref().map(|e| e.kind.as_str()),
                        error.as_ref().map(|e| e.message.as_str()),
                        reason,
                        output.as_ref().map(json_text),
                        run_attempt,
                        output_secrets.as_ref().map(|s| serde_json::to_string(s).expect("spans serialize")),
                    ])?;
                if *attempt > 0 {
                    tx.prepare_cached(
                        "INSERT INTO attempts (run_id, step, attempt, item, state, recorded_at, error_kind, error_message) VALUES (?1, ?2, ?3, NULL, ?4, ?5, ?6, ?7)",
                    )?
                    .execute(params![run_id, step, attempt, state.as_str(), now(), error.as_ref().map(|e| e.kind.as_str()), error.as_ref().map(|e| e.message.as_str())])?;
                }
                // A step run again after a resume replaces its old log.
                if run_attempt > 1 {
                    tx.prepare_cached("DELETE FROM logs WHERE run_id = ?1 AND step = ?2")?.execute(params![run_id, step])?;
                }
                {
                    let mut insert = tx.prepare_cached("INSERT INTO logs (run_id, step, seq, source, text) VALUES (?1, ?2, ?3, ?4, ?5)")?;
                    for (seq, line) in log.lines.iter().enumerate() {
                        insert.execute(params![run_id, step, seq as i64, line.source.as_str(), line.text])?;
                    }
                    if log.dropped_bytes > 0 {
                        let note = format!("{} more bytes of log were dropped (log cap)", log.dropped_bytes);
                        insert.execute(params![run_id, step, log.lines.len() as i64, "note", note])?;
                    }
                }
            }
            Event::RunFinished { run_id, state, output, error, .. } => {
                conn.prepare_cached("UPDATE runs SET status = ?2, finished_at = ?3, output = ?4, error = ?5 WHERE id = ?1")?
                    .execute(params![run_id, state.as_str(), now(), output.as_ref().map(json_text), error])?;
            }
        }
        Ok(())
    }

    /// The most recent runs, newest first.
    pub fn runs(&self, limit: usize) -> Result<Vec<RunSummary>, StoreError> {
        let conn = self.conn();
        let mut q = conn.prepare(
            "SELECT r.id, r.workflow, r.file, r.status, r.attempt, r.started_at, r.finished_at, r.error,
                    (SELECT COUNT(*) FROM steps s WHERE s.run_id = r.id AND s.state = 'succeeded'),
                    (SELECT COUNT(*) FROM steps s WHERE s.run_id = r.id AND s.state = 'failed')
             FROM runs r ORDER BY r.started_at DESC, r.rowid DESC LIMIT ?1",
        )?;
        let rows = q.query_map(params![limit as i64], |r| {
            Ok(RunSummary {
                id: r.get(0)?,
                workflow: r.get(1)?,
                file: r.get(2)?,
                status: r.get(3)?,
                attempt: r.get(4)?,
                started_at: r.get(5)?,
                finished_at: r.get(6)?,
                error: r.get(7)?,
                succeeded_steps: r.get(8)?,
                failed_steps: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One run with its steps and attempts.
    pub fn run(&self, id: &str) -> Result<RunRecord, StoreError> {
        let conn = self.conn();
        let run = conn
            .query_row(
                "SELECT id, workflow, file, sha256, input, status, attempt, started_at, finished_at, output, error FROM runs WHERE id = ?1",
                params![id],
                |r| {
                    Ok(RunRecord {
                        id: r.get(0)?,
                        workflow: r.get(1)?,
                        file: r.get(2)?,
                        sha256: r.get(3)?,
                        input: parse_json(r.get(4)?).unwrap_or(Value::Null),
                        status: r.get(5)?,
                        attempt: r.get(6)?,
                        started_at: r.get(7)?,
                        finished_at: r.get(8)?,
                        output: parse_json(r.get(9)?),
                        error: r.get(10)?,
                        steps: Vec::new(),
                    })
                },
            )
            .optional()?;
        let mut run = run.ok_or_else(|| StoreError::UnknownRun(id.to_string()))?;
        let mut q = conn.prepare(
            "SELECT step, state, attempts, finished_at, duration_ms, fuel_used, error_kind, error_message, reason, output, run_attempt
             FROM steps WHERE run_id = ?1 ORDER BY rowid",
        )?;
        run.steps = q
            .query_map(params![id], |r| {
                Ok(StepRecord {
                    step: r.get(0)?,
                    state: r.get(1)?,
                    attempts: r.get(2)?,
                    finished_at: r.get(3)?,
                    duration_ms: r.get(4)?,
                    fuel_used: r.get(5)?,
                    error_kind: r.get(6)?,
                    error_message: r.get(7)?,
                    reason: r.get(8)?,
                    output: parse_json(r.get(9)?),
                    run_attempt: r.get(10)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(run)
    }

    /// A run's captured log lines, of one step or all, in order.
    pub fn logs(&self, id: &str, step: Option<&str>) -> Result<Vec<(String, LogLine)>, StoreError> {
        self.run(id)?;
        let conn = self.conn();
        let mut q = conn.prepare(
            "SELECT l.step, l.source, l.text FROM logs l JOIN steps s ON s.run_id = l.run_id AND s.step = l.step
             WHERE l.run_id = ?1 AND (?2 IS NULL OR l.step = ?2) ORDER BY s.rowid, l.seq",
        )?;
        let rows = q.query_map(params![id, step], |r| {
            let source: String = r.get(1)?;
            Ok((r.get::<_, String>(0)?, source, r.get::<_, String>(2)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (step, source, text) = row?;
            let source = serde_json::from_value(Value::String(source)).unwrap_or(crate::sandbox::LogSource::Info);
            out.push((step, LogLine { source, text }));
        }
        Ok(out)
    }

    /// The outputs of a run's succeeded steps, as recorded (secrets
    /// masked, with where): what a resume keeps.
    pub fn succeeded_outputs(&self, id: &str) -> Result<BTreeMap<String, RecordedOutput>, StoreError> {
        let conn = self.conn();
        let mut q = conn.prepare("SELECT step, output, output_secrets FROM steps WHERE run_id = ?1 AND state = 'succeeded'")?;
        let rows = q.query_map(params![id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?, r.get::<_, Option<String>>(2)?))
        })?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (step, output, secrets) = row?;
            let secrets = match secrets.map(|text| serde_json::from_str::<SecretSpans>(&text)) {
                None => None,
                Some(Ok(spans)) => Some(spans),
                // Its masked output cannot be rebuilt: the step runs again.
                Some(Err(e)) => {
                    tracing::warn!("run {id}: step `{step}`: unreadable record of masked secrets ({e}); it will run again");
                    continue;
                }
            };
            out.insert(step, RecordedOutput { output: parse_json(output).unwrap_or(Value::Null), secrets });
        }
        Ok(out)
    }
}

enum MigrateError {
    Newer(i64),
    Sql(rusqlite::Error),
}

/// Brings the schema up to [`SCHEMA_VERSION`]. Several processes may open a
/// new state dir at once: `BEGIN IMMEDIATE` takes the write lock first (the
/// others wait, busy timeout), and the version is read again under it, so
/// exactly one process applies each migration and the rest see it done.
fn migrate(conn: &Connection) -> Result<(), MigrateError> {
    let sql = MigrateError::Sql;
    conn.execute_batch("BEGIN IMMEDIATE").map_err(sql)?;
    let result = (|| {
        let from: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(sql)?;
        if from > SCHEMA_VERSION {
            return Err(MigrateError::Newer(from));
        }
        for step in &MIGRATIONS[from as usize..] {
            conn.execute_batch(step).map_err(sql)?;
        }
        conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}")).map_err(sql)
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT").map_err(sql),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
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
pub struct NewRun<'a> {
    pub id: &'a str,
    pub workflow: &'a str,
    pub file: &'a Path,
    pub sha256: &'a str,
    pub input: &'a Value,
}

/// A line of `sandflow runs list`.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub id: String,
    pub workflow: String,
    pub file: String,
    pub status: String,
    pub attempt: u32,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub error: Option<String>,
    pub succeeded_steps: u32,
    pub failed_steps: u32,
}

/// A run as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: String,
    pub workflow: String,
    pub file: String,
    pub sha256: String,
    pub input: Value,
    pub status: String,
    /// 1, plus one per `sandflow resume`.
    pub attempt: u32,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub steps: Vec<StepRecord>,
}

/// A step of a recorded run.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    pub step: String,
    pub state: String,
    pub attempts: u32,
    pub finished_at: Option<String>,
    pub duration_ms: f64,
    pub fuel_used: i64,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    pub reason: Option<String>,
    pub output: Option<Value>,
    /// Which run attempt (1, or a resume) recorded it.
    pub run_attempt: u32,
}

/// Writes every event to the store on a writer thread of its own, which
/// commits whatever has queued up in one transaction (group commit).
/// [`EventSink::barrier`] waits until all emitted events are committed;
/// the scheduler calls it before a dependent step starts.
pub struct StoreSink {
    queue: Mutex<Option<std::sync::mpsc::Sender<Event>>>,
    progress: Arc<(Mutex<Progress>, std::sync::Condvar)>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Default)]
struct Progress {
    sent: u64,
    /// Events the writer is done with: committed, or dropped after a failure.
    committed: u64,
    /// The first commit that failed. Nothing is written after it: a later
    /// commit would record steps whose dependencies were lost.
    failed: Option<String>,
}

impl StoreSink {
    pub fn new(store: Arc<Store>) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Event>();
        let progress: Arc<(Mutex<Progress>, std::sync::Condvar)> = Arc::default();
        let shared = progress.clone();
        let writer = std::thread::Builder::new()
            .name("sandflow-store".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    let (lock, done) = &*shared;
                    let poisoned = crate::lock(lock).failed.is_some();
                    // A failed transaction is rolled back whole: what it
                    // held is not recorded at all, never half.
                    let result = if poisoned { Ok(()) } else { store.record_all(&batch) };
                    let mut progress = crate::lock(lock);
                    if let Err(e) = result {
                        progress.failed = Some(format!("the run store {} could not record the run: {e}", store.path().display()));
                    }
                    progress.committed += batch.len() as u64;
                    done.notify_all();
                }
            })
            .expect("a thread for the run store");
        StoreSink { queue: Mutex::new(Some(tx)), progress, writer: Mutex::new(Some(writer)) }
    }
}

impl EventSink for StoreSink {
    fn emit(&self, event: &Event) {
        if matches!(event, Event::RunStarted { .. } | Event::StepStarted { .. } | Event::StepWarning { .. } | Event::StepRestored { .. }) {
            return;
        }
        let queue = crate::lock(&self.queue);
        if let Some(tx) = queue.as_ref()
            && tx.send(event.clone()).is_ok()
        {
            crate::lock(&self.progress.0).sent += 1;
        }
    }

    fn barrier(&self) -> Result<(), SinkError> {
        let (lock, done) = &*self.progress;
        let mut p = crate::lock(lock);
        while p.committed < p.sent {
            p = done.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        match &p.failed {
            Some(message) => Err(SinkError(message.clone())),
            None => Ok(()),
        }
    }
}

impl Drop for StoreSink {
    fn drop(&mut self) {
        // Close the queue, then let the writer commit what is left.
        crate::lock(&self.queue).take();
        if let Some(w) = crate::lock(&self.writer).take() {
            let _ = w.join();
        }
    }
}

/// Run-scoped state and blobs in the store: state set by one step is seen
/// by later steps of the run (and by a resume); blobs outlive the process.
pub struct StoreServices {
    pub store: Arc<Store>,
    pub run_id: String,
}

impl HostServices for StoreServices {
    fn state_get(&self, key: &str) -> Option<String> {
        self.store
            .conn()
            .query_row("SELECT value FROM state WHERE run_id = ?1 AND key = ?2", params![self.run_id, key], |r| r.get(0))
            .optional()
            .unwrap_or_else(|e| {
                tracing::error!("run store: reading state `{key}`: {e}");
                None
            })
    }

    fn state_set(&self, key: &str, json: &str) -> Result<(), HostError> {
        self.store
            .conn()
            .execute("INSERT OR REPLACE INTO state (run_id, key, value) VALUES (?1, ?2, ?3)", params![self.run_id, key, json])
            .map(drop)
            .map_err(|e| HostError::Failed(format!("the run store could not save state `{key}`: {e}")))
    }

    fn blob_put(&self, id: &str, data: &[u8]) -> Result<(), HostError> {
        self.store
            .conn()
            .execute("INSERT OR IGNORE INTO blobs (id, data) VALUES (?1, ?2)", params![id, data])
            .map(drop)
            .map_err(|e| HostError::Failed(format!("the run store could not save blob {id}: {e}")))
    }

    fn state_usage(&self) -> (u64, u64) {
        self.store
            .conn()
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(length(CAST(key AS BLOB)) + length(CAST(value AS BLOB))), 0) FROM state WHERE run_id = ?1",
                params![self.run_id],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
            .unwrap_or_else(|e| {
                tracing::error!("run store: reading the state's size: {e}");
                (0, 0)
            })
    }

    fn blob_get(&self, id: &str) -> Option<Vec<u8>> {
        self.store
            .conn()
            .query_row("SELECT data FROM blobs WHERE id = ?1", params![id], |r| r.get(0))
            .optional()
            .unwrap_or_else(|e| {
                tracing::error!("run store: reading blob {id}: {e}");
                None
            })
    }
}
