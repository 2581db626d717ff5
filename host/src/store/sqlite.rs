//! The embedded store: one SQLite file under the state dir
//! (`sandflow.db`). The default; one machine, no server.
//!
//! WAL mode with `synchronous=NORMAL`: a commit survives the process being
//! killed (not the machine losing power). Several `sandflow` processes may
//! share one state dir: writers wait for each other (busy timeout). Every
//! call runs on tokio's blocking pool, never on a runtime worker.

use super::{AttemptRecord, NewRun, RecordedOutput, RunDetail, RunQuery, RunRecord, RunStore, RunSummary, StepRecord, StoreError, memo_failed, now};
use crate::sandbox::HostError;
use crate::exec::{Event, SecretSpans};
use crate::sandbox::{LogLine, LogSource};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The schema this build reads and writes: the number of its migrations.
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
    // 3: `sandflow cancel ID` from another process.
    "ALTER TABLE runs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;",
    // 4: `sandflow run --target`: the steps a run is limited to (JSON list).
    "ALTER TABLE runs ADD COLUMN targets TEXT;",
    // 5: memoized step results (`cache:`), by key; times in Unix seconds.
    "CREATE TABLE memo (
        key            TEXT PRIMARY KEY,
        workflow       TEXT NOT NULL,
        step           TEXT NOT NULL,
        component      TEXT NOT NULL,
        run_id         TEXT NOT NULL,
        output         TEXT NOT NULL,
        output_secrets TEXT,
        stored_at      REAL NOT NULL,
        expires_at     REAL NOT NULL
    );",
    // 6: pages of the run list, newest first, filtered by workflow or
    // state (`sandflow serve`); a step's attempts.
    "CREATE INDEX IF NOT EXISTS runs_newest ON runs (started_at DESC);
     CREATE INDEX IF NOT EXISTS runs_by_workflow ON runs (workflow, started_at DESC);
     CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, started_at DESC);
     CREATE INDEX IF NOT EXISTS attempts_by_step ON attempts (run_id, step);",
    // 7: the input each step ran with (secrets masked), and each attempt's
    // fuel, for `serve`.
    "ALTER TABLE steps ADD COLUMN input TEXT;
     ALTER TABLE attempts ADD COLUMN fuel_used INTEGER;",
    // 8: a run's steps in the order they were recorded (an index ends with
    // the rowid), read without sorting: `runs show` of 100,000 steps.
    "CREATE INDEX IF NOT EXISTS steps_in_order ON steps (run_id);",
    // 9: a step that runs has a row saying so, from when, and where.
    "ALTER TABLE steps ADD COLUMN started_at TEXT;
     ALTER TABLE steps ADD COLUMN worker TEXT;",
    // 10: the workflow files runs ran, once per content (their graphs).
    "CREATE TABLE IF NOT EXISTS files (
        sha256 TEXT PRIMARY KEY,
        bytes  BLOB NOT NULL
    );",
    // 11: a `forEach` step's number of items (apart from its attempts).
    "ALTER TABLE steps ADD COLUMN items INTEGER;",
    // 12: each run's namespace (tenant): always `default` in a SQLite
    // store, which has no tokens; listed and filtered as in PostgreSQL.
    "ALTER TABLE runs ADD COLUMN namespace TEXT NOT NULL DEFAULT 'default';",
    // 13: durable waits (`wait:`, `/builtin/sleep`, signals, approvals): a
    // `waiting` step's wake time and what it waits for; signals sent to
    // waiting steps, one per step (deleted as the step records its end).
    "ALTER TABLE steps ADD COLUMN wake_at TEXT;
     ALTER TABLE steps ADD COLUMN wait_kind TEXT;
     CREATE TABLE signals (
        run_id  TEXT NOT NULL,
        step    TEXT NOT NULL,
        data    TEXT NOT NULL,
        sent_by TEXT NOT NULL,
        sent_at TEXT NOT NULL,
        PRIMARY KEY (run_id, step)
     );",
    // 14: schedules (`schedule add`, fired by `sandflow scheduler`): each a
    // workflow file's path with its cron expression, zone and next tick
    // (Unix seconds); a row per tick fired (the key that makes it fire
    // once), and on each run what started it.
    "CREATE TABLE schedules (
        name      TEXT PRIMARY KEY,
        workflow  TEXT NOT NULL,
        file      TEXT NOT NULL,
        cron      TEXT NOT NULL,
        timezone  TEXT NOT NULL,
        input     TEXT NOT NULL,
        catchup   TEXT NOT NULL,
        overlap   TEXT NOT NULL,
        targets   TEXT,
        paused    INTEGER NOT NULL DEFAULT 0,
        next_at   REAL
     );
     CREATE TABLE schedule_ticks (
        name    TEXT NOT NULL,
        tick    REAL NOT NULL,
        outcome TEXT NOT NULL,
        run_id  TEXT,
        PRIMARY KEY (name, tick)
     );
     ALTER TABLE runs ADD COLUMN triggered_by TEXT NOT NULL DEFAULT 'manual';
     ALTER TABLE runs ADD COLUMN trigger_source TEXT;
     ALTER TABLE runs ADD COLUMN scheduled_time TEXT;",
];

/// The SQLite run store.
pub struct SqliteStore {
    inner: Arc<Inner>,
    location: String,
}

struct Inner {
    conn: Mutex<Connection>,
}

fn sql(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn json_text(v: &Value) -> String {
    v.to_string()
}

fn parse_json(text: Option<String>) -> Option<Value> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

impl SqliteStore {
    /// Opens (creating if needed) `state_dir/sandflow.db`, migrating an
    /// older schema and refusing a newer one or a file that is not a store.
    pub fn open(state_dir: &Path) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::StateDir { path: state_dir.to_path_buf(), source })?;
        Self::open_file(&state_dir.join("sandflow.db"))
    }

    /// Opens (creating if needed) the store in the file `path`.
    pub fn open_file(path: &Path) -> Result<SqliteStore, StoreError> {
        let location = path.display().to_string();
        let conn = Connection::open(path).map_err(|e| StoreError::Open { location: location.clone(), message: e.to_string() })?;
        let corrupt = |e: rusqlite::Error| StoreError::Corrupt { location: location.clone(), message: e.to_string() };
        conn.busy_timeout(Duration::from_secs(30)).map_err(corrupt)?;
        // Reading the version first touches the file: a file that is not a
        // database fails here, before anything is written to it.
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(corrupt)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema { location, found: version, known: SCHEMA_VERSION });
        }
        // Switching a fresh file to WAL takes an exclusive lock, and SQLite
        // answers "database is locked" at once (no busy handler) while
        // another process opening the same new store holds one: wait.
        let started = std::time::Instant::now();
        let wal = loop {
            match conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0)) {
                Err(e)
                    if matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
                        && started.elapsed() < Duration::from_secs(30) =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => break other,
            }
        };
        let mode: String = wal.map_err(|e| {
            if matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen)) {
                StoreError::Open { location: location.clone(), message: e.to_string() }
            } else {
                corrupt(e)
            }
        })?;
        tracing::debug!("run store {location} in {mode} mode");
        conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;").map_err(corrupt)?;
        // Bound the WAL file: without this it keeps the size of the largest
        // transaction (a step's big output or log) after every checkpoint.
        conn.execute_batch("PRAGMA journal_size_limit = 67108864;").map_err(corrupt)?;
        if version < SCHEMA_VERSION {
            migrate(&conn).map_err(|e| match e {
                MigrateError::Newer(found) => StoreError::NewerSchema { location: location.clone(), found, known: SCHEMA_VERSION },
                MigrateError::Sql(e) => StoreError::Open { location: location.clone(), message: e.to_string() },
            })?;
        }
        Ok(SqliteStore { inner: Arc::new(Inner { conn: Mutex::new(conn) }), location })
    }

    /// Where the database file is.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(&self.location)
    }

    /// Runs `f` with the connection on tokio's blocking pool.
    pub(super) async fn with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&crate::lock(&inner.conn)))
            .await
            .map_err(|e| StoreError::Backend(format!("the store's thread failed: {e}")))?
            .map_err(sql)
    }
}

#[async_trait::async_trait]
impl RunStore for SqliteStore {
    fn location(&self) -> &str {
        &self.location
    }

    async fn begin_run(&self, run: &NewRun) -> Result<(), StoreError> {
        let run = run.clone();
        self.with(move |conn| {
            let tx = conn.unchecked_transaction()?;
            insert_run(&tx, &run, None)?;
            tx.commit()
        })
        .await
    }

    async fn file(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = sha256.to_string();
        self.with(move |conn| conn.query_row("SELECT bytes FROM files WHERE sha256 = ?1", params![key], |r| r.get(0)).optional()).await
    }

    async fn resume_run(&self, id: &str) -> Result<u32, StoreError> {
        let id = id.to_string();
        let found = self
            .with(move |conn| {
                let tx = conn.unchecked_transaction()?;
                let n = tx.execute(
                    "UPDATE runs SET status = 'running', attempt = attempt + 1, finished_at = NULL, error = NULL, output = NULL, cancel_requested = 0 WHERE id = ?1",
                    params![id],
                )?;
                if n == 0 {
                    return Ok(Err(id));
                }
                let attempt: u32 = tx.query_row("SELECT attempt FROM runs WHERE id = ?1", params![id], |r| r.get(0))?;
                tx.commit()?;
                Ok(Ok(attempt))
            })
            .await?;
        found.map_err(StoreError::UnknownRun)
    }

    async fn request_cancel(&self, id: &str) -> Result<String, StoreError> {
        let key = id.to_string();
        let status = self
            .with(move |conn| {
                conn.execute("UPDATE runs SET cancel_requested = 1 WHERE id = ?1 AND status = 'running'", params![key])?;
                conn.query_row("SELECT status FROM runs WHERE id = ?1", params![key], |r| r.get::<_, String>(0)).optional()
            })
            .await?;
        status.ok_or_else(|| StoreError::UnknownRun(id.to_string()))
    }

    async fn signals(&self, run_id: &str, steps: &[String]) -> Result<Vec<(String, crate::exec::core::Signal)>, StoreError> {
        let (run_id, steps) = (run_id.to_string(), steps.to_vec());
        self.with(move |conn| {
            let mut q = conn.prepare_cached("SELECT step, data, sent_by, sent_at FROM signals WHERE run_id = ?1")?;
            let rows = q.query_map(params![run_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (step, data, by, at): (String, String, String, String) = row?;
                if steps.contains(&step) {
                    out.extend(super::signal_of(step, data, by, at));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn put_signal(&self, run_id: &str, step: &str, signal: &crate::exec::core::Signal) -> Result<bool, StoreError> {
        let (run_id, step, data, by, at) = (run_id.to_string(), step.to_string(), signal.data.to_string(), signal.by.clone(), signal.at.clone());
        self.with(move |conn| {
            conn.execute(
                "INSERT INTO signals (run_id, step, data, sent_by, sent_at)
                 SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (SELECT 1 FROM steps WHERE run_id = ?1 AND step = ?2 AND state = 'waiting')
                 ON CONFLICT (run_id, step) DO NOTHING",
                params![run_id, step, data, by, at],
            )
        })
        .await
        .map(|n| n > 0)
    }

    async fn take_cancel_request(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.with(move |conn| conn.execute("UPDATE runs SET cancel_requested = 0 WHERE id = ?1 AND cancel_requested <> 0", params![id]))
            .await
            .map(|changed| changed > 0)
    }

    async fn record(&self, events: Vec<Event>) -> Result<(), StoreError> {
        let ends = events.iter().any(|e| matches!(e, Event::RunFinished { .. }));
        self.with(move |conn| {
            let tx = conn.unchecked_transaction()?;
            for event in super::with_rows(&events) {
                write(&tx, event)?;
            }
            tx.commit()
        })
        .await?;
        if ends {
            // The run is recorded: copy the write-ahead log into the
            // database (and sync both) now, while the run's process prints
            // and tears down, rather than when the store closes (a 2,000-step
            // run's log took 6-8 ms to sync there). PASSIVE never waits for
            // another process's readers; what it cannot copy the close does.
            let inner = self.inner.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = crate::lock(&inner.conn).execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
                    tracing::debug!("a checkpoint after a run failed (the store's close makes it): {e}");
                }
            });
        }
        Ok(())
    }

    async fn runs(&self, query: &RunQuery) -> Result<Vec<RunSummary>, StoreError> {
        let (conditions, values) = query.conditions(|n| format!("?{n}"), "rowid");
        let values: Vec<String> = values.into_iter().map(str::to_string).collect();
        let limit = query.limit.min(i64::MAX as usize) as i64;
        self.with(move |conn| {
            // The page after a run: runs that sort after it, newest first.
            // The page is chosen before its steps are counted: counted in
            // the same query, every run's steps were (37 ms for one run
            // among 264 with 124,000 steps).
            let mut q = conn.prepare_cached(&format!(
                "WITH page AS MATERIALIZED (
                     SELECT r.rowid AS seq, r.id, r.workflow, r.file, r.status, r.attempt, r.started_at, r.finished_at, r.error, r.namespace
                     FROM runs r WHERE TRUE{conditions}
                     ORDER BY r.started_at DESC, r.rowid DESC LIMIT ?1)
                 SELECT p.id, p.workflow, p.file, p.status, p.attempt, p.started_at, p.finished_at, p.error,
                        (SELECT COUNT(*) FROM steps s WHERE s.run_id = p.id AND s.state = 'succeeded'),
                        (SELECT COUNT(*) FROM steps s WHERE s.run_id = p.id AND s.state = 'failed'),
                        (SELECT COUNT(*) FROM steps s WHERE s.run_id = p.id AND s.state = 'skipped'),
                        p.namespace
                 FROM page p ORDER BY p.started_at DESC, p.seq DESC"
            ))?;
            let mut bound: Vec<&dyn rusqlite::ToSql> = vec![&limit];
            bound.extend(values.iter().map(|v| v as &dyn rusqlite::ToSql));
            let rows = q.query_map(bound.as_slice(), |r| {
                Ok(RunSummary {
                    id: r.get(0)?,
                    namespace: r.get(11)?,
                    workflow: r.get(1)?,
                    file: r.get(2)?,
                    status: r.get(3)?,
                    attempt: r.get(4)?,
                    started_at: r.get(5)?,
                    finished_at: r.get(6)?,
                    error: r.get(7)?,
                    succeeded_steps: r.get(8)?,
                    failed_steps: r.get(9)?,
                    skipped_steps: r.get(10)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn attempts(&self, id: &str, step: Option<&str>) -> Result<Vec<AttemptRecord>, StoreError> {
        let (id, step) = (id.to_string(), step.map(str::to_string));
        self.with(move |conn| {
            let mut q = conn.prepare_cached(
                "SELECT step, attempt, item, state, recorded_at, error_kind, error_message, fuel_used FROM attempts
                 WHERE run_id = ?1 AND (?2 IS NULL OR step = ?2) ORDER BY rowid",
            )?;
            let rows = q.query_map(params![id, step], |r| {
                Ok(AttemptRecord {
                    step: r.get(0)?,
                    attempt: r.get(1)?,
                    item: r.get::<_, Option<i64>>(2)?.map(|i| i as u64),
                    state: r.get(3)?,
                    recorded_at: r.get(4)?,
                    error_kind: r.get(5)?,
                    error_message: r.get(6)?,
                    fuel_used: r.get::<_, Option<i64>>(7)?.map(|f| f as u64),
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn stats(&self) -> Result<super::StoreStats, StoreError> {
        self.with(move |conn| {
            let [runs, steps, failures, durations] = super::stats_queries();
            let counts = |sql: &str| -> rusqlite::Result<Vec<(String, u64)>> {
                let mut q = conn.prepare(sql)?;
                let rows = q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64)))?;
                rows.collect()
            };
            let mut stats = super::StoreStats { runs: counts(&runs)?, steps: counts(&steps)?, failures: counts(&failures)?, ..Default::default() };
            stats.durations = conn.query_row(&durations, [], |r| {
                let n = crate::metrics::DURATION_BUCKETS.len();
                let counts = (0..=n).map(|i| r.get::<_, i64>(i)).collect::<rusqlite::Result<Vec<i64>>>()?;
                Ok(super::durations(&counts, r.get(n + 1)?))
            })?;
            Ok(stats)
        })
        .await
    }

    async fn ready(&self) -> Result<(), StoreError> {
        let location = self.location().to_string();
        let version: i64 = self.with(|conn| conn.query_row("PRAGMA user_version", [], |r| r.get(0))).await?;
        match version == SCHEMA_VERSION {
            true => Ok(()),
            false => Err(StoreError::NewerSchema { location, found: version, known: SCHEMA_VERSION }),
        }
    }

    async fn ids_starting(&self, prefix: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        let (prefix, limit) = (prefix.to_string(), limit as i64);
        self.with(move |conn| {
            let mut q = conn.prepare("SELECT id FROM runs WHERE substr(id, 1, length(?1)) = ?1 ORDER BY id LIMIT ?2")?;
            let ids = q.query_map(params![prefix, limit], |r| r.get(0))?.collect::<Result<Vec<String>, _>>()?;
            Ok(ids)
        })
        .await
    }

    async fn run(&self, id: &str, detail: RunDetail) -> Result<RunRecord, StoreError> {
        let key = id.to_string();
        let run = self
            .with(move |conn| {
                let run = conn
                    .query_row(
                        "SELECT id, workflow, file, sha256, input, status, attempt, started_at, finished_at, output, error, targets, namespace,
                                triggered_by, trigger_source, scheduled_time FROM runs WHERE id = ?1",
                        params![key],
                        |r| {
                            Ok(RunRecord {
                                id: r.get(0)?,
                                namespace: r.get(12)?,
                                workflow: r.get(1)?,
                                file: r.get(2)?,
                                sha256: r.get(3)?,
                                input: parse_json(r.get(4)?).unwrap_or(Value::Null),
                                status: r.get(5)?,
                                attempt: r.get(6)?,
                                started_at: r.get(7)?,
                                finished_at: r.get(8)?,
                                output: super::raw_json(r.get(9)?),
                                error: r.get(10)?,
                                targets: super::targets_of(r.get(11)?),
                                trigger: Some(r.get::<_, String>(13)?)
                                    .filter(|kind| kind != "manual")
                                    .map(|kind| Ok::<_, rusqlite::Error>(super::TriggerRecord { kind, source: r.get(14)?, scheduled_time: r.get(15)? }))
                                    .transpose()?,
                                steps: Vec::new(),
                            })
                        },
                    )
                    .optional()?;
                let Some(mut run) = run else { return Ok(None) };
                let Some(columns) = detail.step_columns() else { return Ok(Some(run)) };
                let mut q = conn.prepare(&format!("SELECT {columns} FROM steps WHERE run_id = ?1 ORDER BY rowid"))?;
                run.steps = q
                    .query_map(params![key], |r| {
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
                            input: parse_json(r.get(11)?),
                            started_at: r.get(12)?,
                            worker: r.get(13)?,
                            items: r.get(14)?,
                            wake_at: r.get(15)?,
                            wait_kind: r.get(16)?,
                        })
                    })?
                    .collect::<Result<_, _>>()?;
                Ok(Some(run))
            })
            .await?;
        run.ok_or_else(|| StoreError::UnknownRun(id.to_string()))
    }

    async fn logs(&self, id: &str, step: Option<&str>) -> Result<Vec<(String, LogLine)>, StoreError> {
        self.run(id, RunDetail::Run).await?;
        let (id, step) = (id.to_string(), step.map(str::to_string));
        self.with(move |conn| {
            let mut q = conn.prepare(
                "SELECT l.step, l.source, l.text FROM logs l JOIN steps s ON s.run_id = l.run_id AND s.step = l.step
                 WHERE l.run_id = ?1 AND (?2 IS NULL OR l.step = ?2) ORDER BY s.rowid, l.seq, l.rowid",
            )?;
            let rows = q.query_map(params![id, step], |r| {
                Ok((r.get::<_, String>(0)?, LogLine { source: LogSource::parse(&r.get::<_, String>(1)?), text: r.get(2)? }))
            })?;
            rows.collect()
        })
        .await
    }

    async fn succeeded_outputs(&self, id: &str) -> Result<BTreeMap<String, RecordedOutput>, StoreError> {
        let key = id.to_string();
        let rows = self
            .with(move |conn| {
                let mut q = conn.prepare("SELECT step, output, output_secrets FROM steps WHERE run_id = ?1 AND state = 'succeeded'")?;
                let rows = q.query_map(params![key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                rows.collect::<Result<Vec<_>, _>>()
            })
            .await?;
        Ok(super::recorded_outputs(id, rows))
    }

    async fn state_get(&self, run_id: &str, key: &str) -> Result<Option<String>, StoreError> {
        let (run_id, key) = (run_id.to_string(), key.to_string());
        self.with(move |conn| {
            conn.query_row("SELECT value FROM state WHERE run_id = ?1 AND key = ?2", params![run_id, key], |r| r.get(0)).optional()
        })
        .await
    }

    async fn state_set(&self, run_id: &str, key: &str, json: &str) -> Result<(), StoreError> {
        let (run_id, key, json) = (run_id.to_string(), key.to_string(), json.to_string());
        self.with(move |conn| {
            conn.execute("INSERT OR REPLACE INTO state (run_id, key, value) VALUES (?1, ?2, ?3)", params![run_id, key, json]).map(drop)
        })
        .await
    }

    async fn state_usage(&self, run_id: &str) -> Result<(u64, u64), StoreError> {
        let run_id = run_id.to_string();
        self.with(move |conn| {
            conn.query_row(
                "SELECT COUNT(*), COALESCE(SUM(length(CAST(key AS BLOB)) + length(CAST(value AS BLOB))), 0) FROM state WHERE run_id = ?1",
                params![run_id],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
        })
        .await
    }

    async fn blob_put(&self, id: &str, data: &[u8]) -> Result<(), StoreError> {
        let (id, data) = (id.to_string(), data.to_vec());
        self.with(move |conn| conn.execute("INSERT OR IGNORE INTO blobs (id, data) VALUES (?1, ?2)", params![id, data]).map(drop))
            .await
    }

    async fn blob_get(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let id = id.to_string();
        self.with(move |conn| conn.query_row("SELECT data FROM blobs WHERE id = ?1", params![id], |r| r.get(0)).optional())
            .await
    }

    async fn memo_list(&self) -> Result<Vec<super::MemoInfo>, StoreError> {
        let now = super::epoch_now();
        self.with(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT key, workflow, step, component, run_id, stored_at, expires_at, length(output) FROM memo ORDER BY stored_at DESC",
            )?;
            stmt.query_map([], |r| {
                let expires: f64 = r.get(6)?;
                Ok(super::MemoInfo {
                    key: r.get(0)?,
                    workflow: r.get(1)?,
                    step: r.get(2)?,
                    component: r.get(3)?,
                    run_id: r.get(4)?,
                    stored_at: super::rfc3339(r.get(5)?),
                    expires_at: super::rfc3339(expires),
                    expired: expires <= now,
                    output_bytes: r.get::<_, i64>(7)? as usize,
                })
            })?
            .collect()
        })
        .await
    }

    async fn memo_clear(&self, expired_only: bool) -> Result<u64, StoreError> {
        let now = super::epoch_now();
        self.with(move |conn| {
            let limit = if expired_only { now } else { f64::INFINITY };
            conn.execute("DELETE FROM memo WHERE expires_at <= ?1", params![limit]).map(|n| n as u64)
        })
        .await
    }
}

/// Records `run` as `running` (and its workflow's text, once per
/// content), started by hand or by a schedule's tick (`schedule`: its
/// name and the tick), inside the caller's transaction.
pub(super) fn insert_run(conn: &Connection, run: &NewRun, schedule: Option<(&str, jiff::Timestamp)>) -> Result<(), rusqlite::Error> {
    if let Some(text) = &run.text {
        conn.prepare_cached("INSERT OR IGNORE INTO files (sha256, bytes) VALUES (?1, ?2)")?.execute(params![run.sha256, text.as_bytes()])?;
    }
    let (kind, source, tick) = match schedule {
        Some((name, tick)) => ("schedule", Some(name), Some(tick.to_string())),
        None => ("manual", None, None),
    };
    conn.execute(
        "INSERT INTO runs (id, workflow, file, sha256, input, status, attempt, started_at, targets, triggered_by, trigger_source, scheduled_time)
         VALUES (?1, ?2, ?3, ?4, ?5, 'running', 1, ?6, ?7, ?8, ?9, ?10)",
        params![run.id, run.workflow, run.file, run.sha256, json_text(&run.input), now(), super::targets_text(&run.targets), kind, source, tick],
    )?;
    Ok(())
}

/// Writes one event inside the caller's transaction.
fn write(conn: &Connection, event: &Event) -> Result<(), rusqlite::Error> {
    match event {
        Event::StepStarted { run_id, step, attempt, worker, .. } => {
            // A step whose row says it ended in an earlier attempt of the
            // run is running again; a `forEach` step's later items do not
            // write (see `records`).
            conn.prepare_cached(
                "INSERT INTO steps (run_id, step, state, attempts, duration_ms, fuel_used, run_attempt, started_at, worker)
                 VALUES (?1, ?2, 'running', ?3, 0, 0, (SELECT attempt FROM runs WHERE id = ?1), ?4, ?5)
                 ON CONFLICT (run_id, step) DO UPDATE SET state = 'running', attempts = excluded.attempts, started_at = excluded.started_at,
                    worker = excluded.worker, run_attempt = excluded.run_attempt, finished_at = NULL, duration_ms = 0",
            )?
            .execute(params![run_id, step, attempt, now(), worker])?;
            if let Event::StepStarted { item: None, attempt: 2.., .. } = event {
                // A retry's log starts anew.
                conn.prepare_cached("DELETE FROM logs WHERE run_id = ?1 AND step = ?2")?.execute(params![run_id, step])?;
            }
        }
        Event::StepLogLine { run_id, step, attempt, item, seq, line } => {
            // Kept while the step runs that attempt (a `forEach` item's:
            // any); its whole log replaces these as it ends.
            conn.prepare_cached(
                "INSERT INTO logs (run_id, step, seq, source, text)
                 SELECT ?1, ?2, ?3, ?4, ?5 FROM steps WHERE run_id = ?1 AND step = ?2 AND state = 'running' AND (?6 IS NULL OR attempts = ?6)",
            )?
            .execute(params![run_id, step, *seq as i64, line.source.as_str(), line.text, item.is_none().then_some(*attempt)])?;
        }
        Event::RunStarted { .. } | Event::StepWarning { .. } | Event::StepRestored { .. } => {}
        Event::StepWaiting { run_id, step, kind, until, input } => {
            conn.prepare_cached(
                "INSERT INTO steps (run_id, step, state, attempts, duration_ms, fuel_used, run_attempt, started_at, wake_at, wait_kind, input)
                 VALUES (?1, ?2, 'waiting', 0, 0, 0, (SELECT attempt FROM runs WHERE id = ?1), ?3, ?4, ?5, ?6)
                 ON CONFLICT (run_id, step) DO UPDATE SET state = 'waiting', attempts = 0, started_at = excluded.started_at, wake_at = excluded.wake_at,
                    wait_kind = excluded.wait_kind, input = excluded.input, worker = NULL, run_attempt = excluded.run_attempt, finished_at = NULL, duration_ms = 0",
            )?
            .execute(params![run_id, step, now(), until, kind.as_str(), input.as_deref().map(json_text)])?;
        }
        Event::StepRetrying { run_id, step, attempt, item, error, fuel_used, .. } => {
            conn.prepare_cached(
                "INSERT INTO attempts (run_id, step, attempt, item, state, recorded_at, error_kind, error_message, fuel_used) VALUES (?1, ?2, ?3, ?4, 'failed', ?5, ?6, ?7, ?8)",
            )?
            .execute(params![run_id, step, attempt, item.map(|i| i as i64), now(), error.kind.as_str(), error.message, *fuel_used as i64])?;
        }
        Event::StepFinished { run_id, step, state, attempt, items, duration, fuel_used, error, reason, input, output, output_secrets, last_fuel, log, .. } => {
            // The run's attempt comes from the store: another process may
            // have resumed the run.
            conn.prepare_cached(
                "INSERT OR REPLACE INTO steps (run_id, step, state, attempts, finished_at, duration_ms, fuel_used, error_kind, error_message, reason, output, run_attempt, output_secrets, input, items)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, (SELECT attempt FROM runs WHERE id = ?1), ?12, ?13, ?14)",
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
                output.as_deref().map(json_text),
                output_secrets.as_ref().map(SecretSpans::to_json),
                input.as_deref().map(json_text),
                items,
            ])?;
            if *attempt > 0 {
                conn.prepare_cached(
                    "INSERT INTO attempts (run_id, step, attempt, item, state, recorded_at, error_kind, error_message, fuel_used) VALUES (?1, ?2, ?3, NULL, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![
                    run_id,
                    step,
                    attempt,
                    state.as_str(),
                    now(),
                    error.as_ref().map(|e| e.kind.as_str()),
                    error.as_ref().map(|e| e.message.as_str()),
                    last_fuel.map(|f| f as i64)
                ])?;
            }
            // A step run again after a resume replaces its old log; a
            // signal it was sent is taken.
            conn.prepare_cached("DELETE FROM logs WHERE run_id = ?1 AND step = ?2")?.execute(params![run_id, step])?;
            conn.prepare_cached("DELETE FROM signals WHERE run_id = ?1 AND step = ?2")?.execute(params![run_id, step])?;
            let mut insert = conn.prepare_cached("INSERT INTO logs (run_id, step, seq, source, text) VALUES (?1, ?2, ?3, ?4, ?5)")?;
            for (seq, (source, text)) in super::log_rows(log).enumerate() {
                insert.execute(params![run_id, step, seq as i64, source, text])?;
            }
        }
        Event::RunFinished { run_id, state, output, error, .. } => {
            conn.prepare_cached("UPDATE runs SET status = ?2, finished_at = ?3, output = ?4, error = ?5 WHERE id = ?1")?
                .execute(params![run_id, state.as_str(), now(), output.as_deref().map(json_text), error])?;
        }
    }
    Ok(())
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

#[async_trait::async_trait]
impl crate::exec::Memos for SqliteStore {
    async fn memo_get(&self, key: &str) -> Result<Option<super::MemoHit>, HostError> {
        self.memo_read(key).await.map_err(memo_failed)
    }

    async fn memo_put(&self, e: &super::MemoEntry) -> Result<(), HostError> {
        self.memo_write(e).await.map_err(memo_failed)
    }
}

impl SqliteStore {
    async fn memo_read(&self, key: &str) -> Result<Option<super::MemoHit>, StoreError> {
        let (key, now) = (key.to_string(), super::epoch_now());
        let row: Option<(String, Option<String>, String)> = self
            .with(move |conn| {
                conn.query_row("SELECT output, output_secrets, run_id FROM memo WHERE key = ?1 AND expires_at > ?2", params![key, now], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()
            })
            .await?;
        Ok(row.and_then(|(output, secrets, run_id)| {
            Some(super::MemoHit { output: parse_json(Some(output))?, secrets: secrets.and_then(|t| serde_json::from_str(&t).ok()), run_id })
        }))
    }

    async fn memo_write(&self, e: &super::MemoEntry) -> Result<(), StoreError> {
        let e = e.clone();
        self.with(move |conn| {
            conn.execute(
                "INSERT OR REPLACE INTO memo (key, workflow, step, component, run_id, output, output_secrets, stored_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    e.key,
                    e.workflow,
                    e.step,
                    e.component,
                    e.run_id,
                    json_text(&e.output),
                    e.secrets.as_ref().map(SecretSpans::to_json),
                    super::epoch_now(),
                    e.expires_at
                ],
            )
            .map(drop)
        })
        .await
    }
}
