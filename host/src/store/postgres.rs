//! The shared store: a PostgreSQL server (`--store postgres://…`), for
//! runs recorded by many processes on many machines.
//!
//! The same tables as the SQLite store, plus a `sandflow_schema` table with
//! the schema version. Migrations run in one transaction under an advisory
//! lock, so any number of processes may open a fresh database at once.
//! Connections come from a pool; a pool that cannot connect (the server is
//! restarting) is retried with backoff for up to [`CONNECT_PATIENCE`].

use super::{AttemptRecord, NewRun, RecordedOutput, RunDetail, RunQuery, RunRecord, RunStore, RunSummary, StepRecord, StoreError, memo_failed, now};
use crate::sandbox::HostError;
use crate::exec::Event;
use crate::sandbox::{LogLine, LogSource};
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_postgres::NoTls;

const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How long an operation waits for the server to accept a connection.
pub const CONNECT_PATIENCE: Duration = Duration::from_secs(30);

/// `MIGRATIONS[n]` takes a database from schema version `n` to `n + 1`.
/// Only ever append. JSON is kept as text, exactly as written (`jsonb`
/// would reorder keys), and times as RFC 3339 text, as in SQLite.
const MIGRATIONS: &[&str] = &[
    // 1: runs, steps, attempts, logs, state, blobs.
    "
CREATE TABLE runs (
    id          TEXT PRIMARY KEY,
    seq         BIGSERIAL NOT NULL,
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
CREATE INDEX runs_newest ON runs (started_at DESC, seq DESC);
CREATE TABLE steps (
    run_id         TEXT NOT NULL REFERENCES runs(id),
    step           TEXT NOT NULL,
    pos            BIGSERIAL NOT NULL,
    state          TEXT NOT NULL,
    attempts       INTEGER NOT NULL,
    finished_at    TEXT,
    duration_ms    DOUBLE PRECISION NOT NULL,
    fuel_used      BIGINT NOT NULL,
    error_kind     TEXT,
    error_message  TEXT,
    reason         TEXT,
    output         TEXT,
    output_secrets TEXT,
    run_attempt    INTEGER NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE attempts (
    run_id        TEXT NOT NULL REFERENCES runs(id),
    step          TEXT NOT NULL,
    attempt       INTEGER NOT NULL,
    item          BIGINT,
    state         TEXT NOT NULL,
    recorded_at   TEXT NOT NULL,
    error_kind    TEXT,
    error_message TEXT
);
CREATE INDEX attempts_by_step ON attempts (run_id, step);
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
    data BYTEA NOT NULL
);
",
    // 2: `sandflow cancel ID` from any machine.
    "ALTER TABLE runs ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT false;",
    // 3: work distribution (see `queue.rs`): queued runs, their files, DAG
    // bookkeeping, jobs with leases, and each run's event stream.
    "
ALTER TABLE runs ADD COLUMN queued BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE runs ADD COLUMN run_started BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE runs ADD COLUMN stop TEXT;
ALTER TABLE runs ADD COLUMN open_steps INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN deadline TIMESTAMPTZ;
ALTER TABLE runs ADD COLUMN concurrency INTEGER;
ALTER TABLE runs ADD COLUMN events INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN began TIMESTAMPTZ NOT NULL DEFAULT now();
CREATE INDEX runs_to_start ON runs (seq) WHERE queued AND NOT run_started;
CREATE INDEX runs_running_queued ON runs (seq) WHERE queued AND run_started AND status = 'running';
CREATE TABLE files (
    sha256 TEXT PRIMARY KEY,
    bytes  BYTEA NOT NULL
);
CREATE TABLE run_files (
    run_id TEXT NOT NULL REFERENCES runs(id),
    path   TEXT NOT NULL,
    sha256 TEXT NOT NULL REFERENCES files(sha256),
    PRIMARY KEY (run_id, path)
);
CREATE TABLE dag (
    run_id        TEXT NOT NULL REFERENCES runs(id),
    idx           INTEGER NOT NULL,
    step          TEXT NOT NULL,
    waiting       INTEGER NOT NULL,
    finished      BOOLEAN NOT NULL DEFAULT false,
    blocks        BOOLEAN NOT NULL DEFAULT false,
    items         INTEGER NOT NULL DEFAULT 0,
    items_left    INTEGER NOT NULL DEFAULT 0,
    first_started TIMESTAMPTZ,
    PRIMARY KEY (run_id, idx)
);
CREATE TABLE jobs (
    id             BIGSERIAL PRIMARY KEY,
    run_id         TEXT NOT NULL REFERENCES runs(id),
    idx            INTEGER NOT NULL,
    item           INTEGER,
    state          TEXT NOT NULL,
    attempt        INTEGER NOT NULL DEFAULT 1,
    lost           INTEGER NOT NULL DEFAULT 0,
    input          TEXT NOT NULL,
    input_secrets  TEXT,
    runs_on        TEXT[] NOT NULL DEFAULT '{}',
    not_before     TIMESTAMPTZ NOT NULL DEFAULT now(),
    worker         TEXT,
    claim          BIGINT NOT NULL DEFAULT 0,
    lease_until    TIMESTAMPTZ,
    fuel_used      BIGINT NOT NULL DEFAULT 0,
    result         TEXT,
    result_secrets TEXT,
    error          TEXT,
    log            TEXT
);
CREATE INDEX jobs_ready ON jobs (id) WHERE state = 'ready';
CREATE INDEX jobs_claimed ON jobs (lease_until) WHERE state = 'claimed';
CREATE INDEX jobs_by_step ON jobs (run_id, idx, item);
CREATE TABLE events (
    run_id TEXT NOT NULL REFERENCES runs(id),
    seq    INTEGER NOT NULL,
    body   TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
",
    // 4: when each event was recorded (latency, timelines).
    "ALTER TABLE events ADD COLUMN at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp();",
    // 5: how each ended step turned out, for `depends` (exec::core::Outcome);
    // once every step of `steps` has ended, how they stopped and what the
    // `finally` steps read (`run.status`, `run.failures`).
    "ALTER TABLE dag ADD COLUMN outcome TEXT;
     ALTER TABLE runs ADD COLUMN main_stop TEXT;
     ALTER TABLE runs ADD COLUMN ending TEXT;
     ALTER TABLE runs ADD COLUMN targets TEXT;
     CREATE TABLE memo (
         key            TEXT PRIMARY KEY,
         workflow       TEXT NOT NULL,
         step           TEXT NOT NULL,
         component      TEXT NOT NULL,
         run_id         TEXT NOT NULL,
         output         TEXT NOT NULL,
         output_secrets TEXT,
         stored_at      DOUBLE PRECISION NOT NULL,
         expires_at     DOUBLE PRECISION NOT NULL
     );",
    // 6: the input each step ran with (secrets masked), and pages of the
    // run list filtered by workflow or state, for `serve`.
    "ALTER TABLE steps ADD COLUMN input TEXT;
     ALTER TABLE attempts ADD COLUMN fuel_used BIGINT;
     CREATE INDEX runs_by_workflow ON runs (workflow, started_at DESC, seq DESC);
     CREATE INDEX runs_by_status ON runs (status, started_at DESC, seq DESC);",
    // 7: a step that runs has a row saying so, from when, and on which worker.
    "ALTER TABLE steps ADD COLUMN started_at TEXT;
     ALTER TABLE steps ADD COLUMN worker TEXT;",
    // 8: what a queued run was bound to when submitted, for every worker:
    // its components file (`--components`, among its files) and its
    // variables (`--var`, `--vars`); jobs of runs with a `concurrency`,
    // which are claimed only under their run's lock.
    "ALTER TABLE runs ADD COLUMN components TEXT;
     ALTER TABLE runs ADD COLUMN vars TEXT;
     ALTER TABLE jobs ADD COLUMN limited BOOLEAN NOT NULL DEFAULT false;
     CREATE INDEX jobs_ready_limited ON jobs (run_id) WHERE state = 'ready' AND limited;",
    // 9: `retry` and `resume` of a finished queued run, on workers: what
    // the new attempt runs again (`runs::Rerun` as JSON), and how many of
    // the run's events came before it (followers start after them).
    "ALTER TABLE runs ADD COLUMN rerun TEXT;
     ALTER TABLE runs ADD COLUMN attempt_events INTEGER NOT NULL DEFAULT 0;",
    // 10: a `forEach` step's number of items (apart from its attempts).
    "ALTER TABLE steps ADD COLUMN items INTEGER;",
    // 11: the workers that work or worked on the store, as each says
    // (`sandflow workers`, the web view's workers page).
    "CREATE TABLE workers (
        name       TEXT PRIMARY KEY,
        labels     TEXT[] NOT NULL DEFAULT '{}',
        slots      INTEGER NOT NULL,
        lease_ms   BIGINT NOT NULL,
        started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        seen_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
        stopped_at TIMESTAMPTZ
     );",
    // 12: tenants. Each run belongs to a namespace; tokens scoped to
    // namespaces and a role, kept as digests (the token itself is shown
    // once, when made); the files each namespace uploaded or used, so that
    // one namespace cannot learn what another's files are.
    "ALTER TABLE runs ADD COLUMN namespace TEXT NOT NULL DEFAULT 'default';
     CREATE INDEX runs_by_namespace ON runs (namespace, started_at DESC, seq DESC);
     CREATE TABLE tokens (
        name       TEXT PRIMARY KEY,
        digest     TEXT NOT NULL UNIQUE,
        session    TEXT NOT NULL UNIQUE,
        namespaces TEXT[] NOT NULL,
        role       TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        revoked_at TIMESTAMPTZ
     );
     CREATE TABLE namespace_files (
        namespace TEXT NOT NULL,
        sha256    TEXT NOT NULL,
        PRIMARY KEY (namespace, sha256)
     );
     INSERT INTO namespace_files (namespace, sha256) SELECT DISTINCT 'default', sha256 FROM run_files;",
    // 13: the audit log: every action taken through `serve` and every
    // token made or revoked, who (which token) did it, when, and how it went.
    "CREATE TABLE audit (
        seq       BIGSERIAL PRIMARY KEY,
        at        TIMESTAMPTZ NOT NULL DEFAULT now(),
        token     TEXT NOT NULL,
        namespace TEXT,
        action    TEXT NOT NULL,
        run_id    TEXT,
        outcome   TEXT NOT NULL,
        detail    TEXT
     );
     CREATE INDEX audit_by_namespace ON audit (namespace, seq DESC);",
    // 14: each namespace's limits (none: unlimited): runs in flight at
    // once, and bytes of files kept for it.
    "CREATE TABLE namespaces (
        name       TEXT PRIMARY KEY,
        max_runs   BIGINT,
        max_stored BIGINT
     );
     CREATE INDEX runs_running_by_namespace ON runs (namespace) WHERE status = 'running';",
    // 15: a run's priority within its namespace (higher first).
    "ALTER TABLE runs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;",
    // 16: a namespace's most attempts running at once across every worker
    // (none: unlimited); see `queue::CLAIM_FAIR` and `RunTx::claim_own`.
    "ALTER TABLE namespaces ADD COLUMN max_steps BIGINT;",
    // 17: schedules (`schedules:`, `sandflow schedule`): each a submission
    // kept (its workflow's files, input, binding) with its cron expression
    // and the first tick not handled yet; a row per tick fired (the key
    // that makes it fire once), and on each run what started it.
    "ALTER TABLE runs ADD COLUMN triggered_by TEXT NOT NULL DEFAULT 'manual', ADD COLUMN trigger_source TEXT, ADD COLUMN scheduled_time TIMESTAMPTZ;
     CREATE INDEX runs_by_trigger ON runs (namespace, trigger_source) WHERE trigger_source IS NOT NULL AND status = 'running';
     CREATE TABLE schedules (
        namespace   TEXT NOT NULL,
        name        TEXT NOT NULL,
        workflow    TEXT NOT NULL,
        file        TEXT NOT NULL,
        sha256      TEXT NOT NULL,
        cron        TEXT NOT NULL,
        timezone    TEXT NOT NULL,
        input       TEXT NOT NULL,
        catchup     TEXT NOT NULL,
        overlap     TEXT NOT NULL,
        targets     TEXT,
        components  TEXT,
        vars        TEXT,
        concurrency INTEGER,
        priority    INTEGER NOT NULL DEFAULT 0,
        paused      BOOLEAN NOT NULL DEFAULT false,
        next_at     TIMESTAMPTZ,
        created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (namespace, name)
     );
     CREATE INDEX schedules_due ON schedules (next_at) WHERE NOT paused;
     CREATE TABLE schedule_files (
        namespace TEXT NOT NULL,
        name      TEXT NOT NULL,
        path      TEXT NOT NULL,
        sha256    TEXT NOT NULL,
        PRIMARY KEY (namespace, name, path),
        FOREIGN KEY (namespace, name) REFERENCES schedules ON DELETE CASCADE
     );
     CREATE TABLE schedule_ticks (
        namespace TEXT NOT NULL,
        name      TEXT NOT NULL,
        tick      TIMESTAMPTZ NOT NULL,
        outcome   TEXT NOT NULL,
        run_id    TEXT,
        at        TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
        PRIMARY KEY (namespace, name, tick)
     );",
    // 18: webhooks (`triggers:`): each a kept submission, as a schedule is,
    // with the secret (by name) its deliveries are signed with; a row per
    // delivery taken (its id, or its signature), written with the run it
    // queues: a delivery sent again starts nothing.
    "CREATE TABLE hooks (
        name        TEXT PRIMARY KEY,
        namespace   TEXT NOT NULL,
        workflow    TEXT NOT NULL,
        file        TEXT NOT NULL,
        sha256      TEXT NOT NULL,
        secret      TEXT NOT NULL,
        targets     TEXT,
        components  TEXT,
        vars        TEXT,
        concurrency INTEGER,
        priority    INTEGER NOT NULL DEFAULT 0,
        paused      BOOLEAN NOT NULL DEFAULT false,
        created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
     );
     CREATE TABLE hook_files (
        name   TEXT NOT NULL REFERENCES hooks ON DELETE CASCADE,
        path   TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        PRIMARY KEY (name, path)
     );
     CREATE TABLE hook_deliveries (
        name     TEXT NOT NULL,
        delivery TEXT NOT NULL,
        run_id   TEXT,
        at       TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (name, delivery)
     );",
    // 19: durable waits (`wait:`, `/builtin/sleep`, signals, approvals): a
    // `waiting` step's wake time and what it waits for; signals sent to
    // waiting steps, one per step (deleted as the step records its end).
    "ALTER TABLE steps ADD COLUMN wake_at TEXT, ADD COLUMN wait_kind TEXT;
     CREATE TABLE signals (
        run_id  TEXT NOT NULL,
        step    TEXT NOT NULL,
        data    TEXT NOT NULL,
        sent_by TEXT NOT NULL,
        sent_at TEXT NOT NULL,
        PRIMARY KEY (run_id, step)
     );",
    // 20: a run run whole by one worker (`exec::core::runs_whole`): which
    // worker holds it, and until when unless it says it still does; a hold
    // that lapsed is looked after (`queue::runs_needing_care`).
    "ALTER TABLE runs ADD COLUMN held_by TEXT, ADD COLUMN held_until TIMESTAMPTZ;
     CREATE INDEX runs_held ON runs (held_until) WHERE held_by IS NOT NULL;",
    // 21: a run's quotas counted across workers: the blobs it put (each
    // once, with its bytes), and the log it kept (bytes and lines), as
    // `sandbox::RunMeter` counts them in one process.
    "CREATE TABLE run_blobs (
        run_id TEXT NOT NULL,
        id     TEXT NOT NULL,
        bytes  BIGINT NOT NULL,
        PRIMARY KEY (run_id, id)
     );
     ALTER TABLE runs ADD COLUMN log_bytes BIGINT NOT NULL DEFAULT 0, ADD COLUMN log_lines BIGINT NOT NULL DEFAULT 0;",
    // 22: one run's ready jobs in claim order (`queue::CLAIM` takes the
    // oldest few of its run's). Without it PostgreSQL read every ready job
    // of the run at each claim, and sorted them, to take 16: a 2,000-step
    // wide run's claims read 1,520 rows each (BENCHMARKS.md, "A run's rows
    // by their key").
    "CREATE INDEX jobs_ready_by_run ON jobs (run_id, id) WHERE state = 'ready';",
    // 23: the fence of a batch of a run run whole (`whole::record_whole`),
    // sent with the batch's writes: it fails the transaction, so that
    // nothing after it is written, when the worker no longer holds the run.
    "CREATE OR REPLACE FUNCTION sandflow_still_held(held BOOLEAN, run TEXT, worker TEXT) RETURNS VOID LANGUAGE plpgsql AS $$
     BEGIN
         IF NOT held THEN
             RAISE EXCEPTION 'worker % no longer holds run %', worker, run USING ERRCODE = 'SF001';
         END IF;
     END $$;",
];

/// Keeps blob `$2` under its id `$1` (once per content).
const BLOB_PUT: &str = "INSERT INTO blobs (id, data) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING";

/// Takes, for the rest of transaction `tx`, the lock on `part` (`state`,
/// `blobs`) of run `run_id` under which its use is counted against the
/// run's quota: a transaction-scoped advisory lock, so that workers on
/// many machines count one run's use one at a time.
async fn lock_run_part(tx: &deadpool_postgres::Transaction<'_>, part: &str, run_id: &str) -> Result<(), StoreError> {
    let lock = tx.prepare_cached("SELECT pg_advisory_xact_lock(hashtext('sandflow ' || $1 || ' ' || $2))").await.map_err(db)?;
    tx.execute(&lock, &[&part, &run_id]).await.map_err(db)?;
    Ok(())
}

/// Sets run `$1`'s state key `$2` to `$3`.
const STATE_SET: &str = "INSERT INTO state (run_id, key, value) VALUES ($1, $2, $3) ON CONFLICT (run_id, key) DO UPDATE SET value = EXCLUDED.value";

/// Serializes migrations across every process using the server.
const MIGRATION_LOCK: i64 = 0x5341_4e44_464c_4f57; // "SANDFLOW"

/// How many connections a process holds, and what the server calls them.
#[derive(Debug, Clone)]
pub struct Connections {
    /// Most connections open at once (a worker that needs one more waits).
    pub max: usize,
    /// `application_name`, as `pg_stat_activity` shows it.
    pub name: String,
}

impl Default for Connections {
    fn default() -> Self {
        Connections { max: 16, name: "sandflow".into() }
    }
}

/// The PostgreSQL run store.
pub struct PgStore {
    pool: Pool,
    location: String,
    /// For connections of their own (`LISTEN`).
    pub(super) config: tokio_postgres::Config,
    /// Files' bytes this process read and checked, by SHA-256: what
    /// [`PgStore::files_by_hash`] need not fetch again.
    pub(super) files_read: std::sync::Mutex<super::queue::FilesRead>,
}

pub(super) fn db(e: tokio_postgres::Error) -> StoreError {
    StoreError::Backend(message(&e))
}

/// The server's own words when it refused (tokio-postgres' `Display` says
/// only "db error"), else the error and its causes.
fn message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut source = Some(e);
    while let Some(e) = source {
        if let Some(db) = e.downcast_ref::<tokio_postgres::error::DbError>() {
            return db.message().to_string();
        }
        source = e.source();
    }
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = cause.source();
    }
    text
}

/// PostgreSQL text cannot hold NUL; a guest's log or message may.
pub(super) fn text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') { Cow::Owned(s.replace('\0', "\u{fffd}")) } else { Cow::Borrowed(s) }
}

fn parse_json(text: Option<String>) -> Option<Value> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

impl PgStore {
    /// The schema this build reads and writes: the number of migrations.
    pub const SCHEMA_VERSION: i64 = SCHEMA_VERSION;

    /// Connects to the server at `url` (libpq's URL form) and brings the
    /// schema up to date; at most 16 connections at once.
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        PgStore::connect_with(url, &Connections::default()).await
    }

    /// [`PgStore::connect`], holding at most `connections.max` connections
    /// at once (besides one per `LISTEN`): a caller that finds them all in
    /// use waits for one. `connections.name` names them to the server
    /// (`application_name`, in `pg_stat_activity`).
    pub async fn connect_with(url: &str, connections: &Connections) -> Result<PgStore, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| StoreError::Open {
            location: redact_url(url),
            message: message(&e),
        })?;
        if config.get_user().is_none() {
            // As libpq does: the login name.
            let user = std::env::var("PGUSER").or_else(|_| std::env::var("USER")).unwrap_or_else(|_| "postgres".into());
            config.user(&user);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config.application_name(&connections.name);
        let location = describe(&config);
        let manager = Manager::from_config(config.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(connections.max.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_PATIENCE))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| StoreError::Open { location: location.clone(), message: e.to_string() })?;
        let store = PgStore { pool, location, config, files_read: Default::default() };
        // The first connection is not retried: a wrong URL fails at once.
        let mut client = store.pool.get().await.map_err(|e| StoreError::Open { location: store.location.clone(), message: pool_error(e) })?;
        migrate(&mut client).await.map_err(|e| match e {
            MigrateError::Newer(found) => StoreError::NewerSchema { location: store.location.clone(), found, known: SCHEMA_VERSION },
            MigrateError::Db(e) => StoreError::Open { location: store.location.clone(), message: message(&e) },
        })?;
        Ok(store)
    }

    /// A pooled connection, waiting (with backoff) while the server is
    /// unreachable, e.g. restarting.
    pub(super) async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(50);
        loop {
            match self.pool.get().await {
                Ok(client) => return Ok(client),
                Err(e) if started.elapsed() < CONNECT_PATIENCE => {
                    tracing::warn!("run store {}: {}; retrying in {delay:?}", self.location, pool_error(e));
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(StoreError::Backend(format!("cannot reach {}: {}", self.location, pool_error(e)))),
            }
        }
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => message(&e),
        other => message(&other),
    }
}

/// `postgres://user@host:port/db`, never the password.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("postgres://{}@{host}:{port}/{}", config.get_user().unwrap_or(""), config.get_dbname().unwrap_or(""))
}

/// A URL that did not parse, with anything that may be a password cut.
fn redact_url(url: &str) -> String {
    match url.split_once('@') {
        Some((_, rest)) => format!("postgres://…@{rest}"),
        None => url.to_string(),
    }
}

enum MigrateError {
    Newer(i64),
    Db(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for MigrateError {
    fn from(e: tokio_postgres::Error) -> Self {
        MigrateError::Db(e)
    }
}

/// Brings the schema up to [`SCHEMA_VERSION`] in one transaction, under an
/// advisory lock: concurrent openers wait, then see the work done. A
/// schema already current costs one read and nothing else: every command
/// opens the store (a `submit` per run, say), and taking the lock and a
/// write there would serialize them all.
async fn migrate(client: &mut deadpool_postgres::Client) -> Result<(), MigrateError> {
    // (Simple query protocol: no statement to prepare for one read.)
    if let Ok(rows) = client.simple_query("SELECT version FROM sandflow_schema").await
        && let Some(version) = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).and_then(|v| v.parse::<i64>().ok()),
            _ => None,
        })
    {
        if version > SCHEMA_VERSION {
            return Err(MigrateError::Newer(version));
        }
        if version == SCHEMA_VERSION {
            return Ok(());
        }
    }
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS sandflow_schema (version BIGINT NOT NULL)").await?;
    let from: i64 = match tx.query_opt("SELECT version FROM sandflow_schema", &[]).await? {
        Some(row) => row.get(0),
        None => {
            tx.execute("INSERT INTO sandflow_schema (version) VALUES (0)", &[]).await?;
            0
        }
    };
    if from > SCHEMA_VERSION {
        return Err(MigrateError::Newer(from));
    }
    for step in &MIGRATIONS[from as usize..] {
        tx.batch_execute(step).await?;
    }
    tx.execute("UPDATE sandflow_schema SET version = $1", &[&SCHEMA_VERSION]).await?;
    tx.commit().await?;
    Ok(())
}

#[async_trait::async_trait]
impl RunStore for PgStore {
    fn location(&self) -> &str {
        &self.location
    }

    async fn begin_run(&self, run: &NewRun) -> Result<(), StoreError> {
        let client = self.client().await?;
        if let Some(text) = &run.text {
            let bytes = text.as_bytes();
            client.execute("INSERT INTO files (sha256, bytes) VALUES ($1, $2) ON CONFLICT DO NOTHING", &[&run.sha256, &bytes]).await.map_err(db)?;
        }
        client
            .execute(
                "INSERT INTO runs (id, workflow, file, sha256, input, status, attempt, started_at, targets) VALUES ($1, $2, $3, $4, $5, 'running', 1, $6, $7)",
                &[&run.id, &run.workflow, &run.file, &run.sha256, &run.input.to_string(), &now(), &super::targets_text(&run.targets)],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn file(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.client().await?;
        let row = client.query_opt("SELECT bytes FROM files WHERE sha256 = $1", &[&sha256]).await.map_err(db)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn resume_run(&self, id: &str) -> Result<u32, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "UPDATE runs SET status = 'running', attempt = attempt + 1, finished_at = NULL, error = NULL, output = NULL, cancel_requested = false WHERE id = $1 RETURNING attempt",
                &[&id],
            )
            .await
            .map_err(db)?;
        let row = row.ok_or_else(|| StoreError::UnknownRun(id.to_string()))?;
        Ok(row.get::<_, i32>(0) as u32)
    }

    async fn request_cancel(&self, id: &str) -> Result<String, StoreError> {
        let client = self.client().await?;
        client.execute("UPDATE runs SET cancel_requested = true WHERE id = $1 AND status = 'running'", &[&id]).await.map_err(db)?;
        let row = client.query_opt("SELECT status FROM runs WHERE id = $1", &[&id]).await.map_err(db)?;
        row.map(|r| r.get(0)).ok_or_else(|| StoreError::UnknownRun(id.to_string()))
    }

    async fn signals(&self, run_id: &str, steps: &[String]) -> Result<Vec<(String, crate::exec::core::Signal)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT step, data, sent_by, sent_at FROM signals WHERE run_id = $1 AND step = ANY($2)", &[&run_id, &steps])
            .await
            .map_err(db)?;
        Ok(rows.iter().filter_map(|r| super::signal_of(r.get(0), r.get(1), r.get(2), r.get(3))).collect())
    }

    async fn put_signal(&self, run_id: &str, step: &str, signal: &crate::exec::core::Signal) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let data = signal.data.to_string();
        let put = tx
            .execute(
                "INSERT INTO signals (run_id, step, data, sent_by, sent_at)
                 SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM steps WHERE run_id = $1 AND step = $2 AND state = 'waiting')
                 ON CONFLICT (run_id, step) DO NOTHING",
                &[&run_id, &step, &data, &signal.by, &signal.at],
            )
            .await
            .map_err(db)?;
        if put > 0 {
            // On workers the step is a job claimable from its timeout: it
            // is claimable now, and a worker is told.
            let woke = tx
                .execute(
                    "UPDATE jobs SET not_before = now() WHERE run_id = $1 AND state = 'ready' AND idx = (SELECT idx FROM dag WHERE run_id = $1 AND step = $2)",
                    &[&run_id, &step],
                )
                .await
                .map_err(db)?;
            if woke > 0 {
                tx.execute("SELECT pg_notify($1, '')", &[&super::queue::JOBS_CHANNEL]).await.map_err(db)?;
            }
        }
        tx.commit().await.map_err(db)?;
        Ok(put > 0)
    }

    async fn take_cancel_request(&self, id: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached("UPDATE runs SET cancel_requested = false WHERE id = $1 AND cancel_requested").await.map_err(db)?;
        Ok(client.execute(&stmt, &[&id]).await.map_err(db)? > 0)
    }

    async fn record(&self, events: Vec<Event>) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let mut pipe = super::pipe::Pipe::default();
        for event in super::with_rows(&events) {
            pipe.record(event);
        }
        pipe.send(&tx).await.map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn runs(&self, query: &RunQuery) -> Result<Vec<RunSummary>, StoreError> {
        let client = self.client().await?;
        let (conditions, values) = query.conditions(|n| format!("${n}"), "seq");
        let limit = query.limit.min(i64::MAX as usize) as i64;
        let mut bound: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&limit];
        bound.extend(values.iter().map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync)));
        let rows = client
            .query(
                &format!(
                    // The page is chosen before its steps are counted (as in SQLite's).
                    "WITH page AS MATERIALIZED (
                         SELECT r.seq, r.id, r.workflow, r.file, r.status, r.attempt, r.started_at, r.finished_at, r.error, r.namespace
                         FROM runs r WHERE TRUE{conditions}
                         ORDER BY r.started_at DESC, r.seq DESC LIMIT $1)
                     SELECT p.id, p.workflow, p.file, p.status, p.attempt, p.started_at, p.finished_at, p.error,
                            (SELECT COUNT(*) FROM steps s WHERE s.run_id = p.id AND s.state = 'succeeded'),
                            (SELECT COUNT(*) FROM steps s WHERE s.run_id = p.id AND s.state = 'failed'),
                            (SELECT COUNT(*) FROM steps s WHERE s.run_id = p.id AND s.state = 'skipped'),
                            p.namespace
                     FROM page p ORDER BY p.started_at DESC, p.seq DESC"
                ),
                &bound,
            )
            .await
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| RunSummary {
                id: r.get(0),
                namespace: r.get(11),
                workflow: r.get(1),
                file: r.get(2),
                status: r.get(3),
                attempt: r.get::<_, i32>(4) as u32,
                started_at: r.get(5),
                finished_at: r.get(6),
                error: r.get(7),
                succeeded_steps: r.get::<_, i64>(8) as u32,
                failed_steps: r.get::<_, i64>(9) as u32,
                skipped_steps: r.get::<_, i64>(10) as u32,
            })
            .collect())
    }

    async fn attempts(&self, id: &str, step: Option<&str>) -> Result<Vec<AttemptRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT step, attempt, item, state, recorded_at, error_kind, error_message, fuel_used FROM attempts
                 WHERE run_id = $1 AND ($2::TEXT IS NULL OR step = $2) ORDER BY recorded_at, attempt, ctid",
                &[&id, &step],
            )
            .await
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| AttemptRecord {
                step: r.get(0),
                attempt: r.get::<_, i32>(1) as u32,
                item: r.get::<_, Option<i64>>(2).map(|i| i as u64),
                state: r.get(3),
                recorded_at: r.get(4),
                error_kind: r.get(5),
                error_message: r.get(6),
                fuel_used: r.get::<_, Option<i64>>(7).map(|f| f as u64),
            })
            .collect())
    }

    async fn workers(&self) -> Result<Option<Vec<super::WorkerRecord>>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT w.name, w.labels, w.slots, EXTRACT(EPOCH FROM w.started_at)::float8, EXTRACT(EPOCH FROM w.seen_at)::float8,
                        EXTRACT(EPOCH FROM w.stopped_at)::float8,
                        w.stopped_at IS NULL AND w.seen_at > now() - make_interval(secs => w.lease_ms / 1000.0),
                        COUNT(j.id) + (SELECT count(*) FROM runs r JOIN steps s ON s.run_id = r.id WHERE r.held_by = w.name AND s.state = 'running'),
                        COUNT(DISTINCT j.run_id) + (SELECT count(*) FROM runs r WHERE r.held_by = w.name)
                 FROM workers w LEFT JOIN jobs j ON j.worker = w.name AND j.state = 'claimed'
                 GROUP BY w.name ORDER BY w.started_at DESC",
                &[],
            )
            .await
            .map_err(db)?;
        Ok(Some(
            rows.iter()
                .map(|r| super::WorkerRecord {
                    name: r.get(0),
                    labels: r.get(1),
                    slots: r.get::<_, i32>(2).max(0) as u32,
                    started_at: super::rfc3339(r.get(3)),
                    seen_at: super::rfc3339(r.get(4)),
                    stopped_at: r.get::<_, Option<f64>>(5).map(super::rfc3339),
                    alive: r.get(6),
                    running: r.get::<_, i64>(7) as u32,
                    runs: r.get::<_, i64>(8) as u32,
                })
                .collect(),
        ))
    }

    async fn stats(&self) -> Result<super::StoreStats, StoreError> {
        let client = self.client().await?;
        let [runs, steps, failures, durations] = super::stats_queries();
        let mut stats = super::StoreStats::default();
        for (sql, into) in [(&runs, &mut stats.runs), (&steps, &mut stats.steps), (&failures, &mut stats.failures)] {
            let rows = client.query(sql.as_str(), &[]).await.map_err(db)?;
            *into = rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1).max(0) as u64)).collect();
        }
        let row = client.query_one(durations.as_str(), &[]).await.map_err(db)?;
        let n = crate::metrics::DURATION_BUCKETS.len();
        let counts: Vec<i64> = (0..=n).map(|i| row.get(i)).collect();
        stats.durations = super::durations(&counts, row.get(n + 1));
        let queued = client.query_one("SELECT count(*) FROM jobs WHERE state = 'ready'", &[]).await.map_err(db)?;
        stats.queued = Some(queued.get::<_, i64>(0).max(0) as u64);
        Ok(stats)
    }

    async fn ready(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        let version: i64 = client.query_one("SELECT version FROM sandflow_schema", &[]).await.map_err(db)?.get(0);
        match version == SCHEMA_VERSION {
            true => Ok(()),
            false => Err(StoreError::NewerSchema { location: self.location.clone(), found: version, known: SCHEMA_VERSION }),
        }
    }

    async fn ids_starting(&self, prefix: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let limit = limit as i64;
        let rows = client.query("SELECT id FROM runs WHERE starts_with(id, $1) ORDER BY id LIMIT $2", &[&prefix, &limit]).await.map_err(db)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn run(&self, id: &str, detail: RunDetail) -> Result<RunRecord, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT id, workflow, file, sha256, input, status, attempt, started_at, finished_at, output, error, targets, namespace,
                        triggered_by, trigger_source, to_char(scheduled_time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
                 FROM runs WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(db)?
            .ok_or_else(|| StoreError::UnknownRun(id.to_string()))?;
        let steps = match detail.step_columns() {
            None => Vec::new(),
            Some(columns) => client.query(&format!("SELECT {columns} FROM steps WHERE run_id = $1 ORDER BY pos"), &[&id]).await.map_err(db)?,
        };
        Ok(RunRecord {
            id: row.get(0),
            namespace: row.get(12),
            workflow: row.get(1),
            file: row.get(2),
            sha256: row.get(3),
            input: parse_json(row.get(4)).unwrap_or(Value::Null),
            status: row.get(5),
            attempt: row.get::<_, i32>(6) as u32,
            started_at: row.get(7),
            finished_at: row.get(8),
            output: super::raw_json(row.get(9)),
            error: row.get(10),
            targets: super::targets_of(row.get(11)),
            trigger: Some(row.get::<_, String>(13))
                .filter(|kind| kind != "manual")
                .map(|kind| super::TriggerRecord { kind, source: row.get(14), scheduled_time: row.get(15) }),
            steps: steps
                .iter()
                .map(|r| StepRecord {
                    step: r.get(0),
                    state: r.get(1),
                    attempts: r.get::<_, i32>(2) as u32,
                    finished_at: r.get(3),
                    duration_ms: r.get(4),
                    fuel_used: r.get(5),
                    error_kind: r.get(6),
                    error_message: r.get(7),
                    reason: r.get(8),
                    output: parse_json(r.get(9)),
                    run_attempt: r.get::<_, i32>(10) as u32,
                    input: parse_json(r.get(11)),
                    started_at: r.get(12),
                    worker: r.get(13),
                    items: r.get::<_, Option<i32>>(14).map(|n| n as u32),
                    wake_at: r.get(15),
                    wait_kind: r.get(16),
                })
                .collect(),
        })
    }

    async fn logs(&self, id: &str, step: Option<&str>) -> Result<Vec<(String, LogLine)>, StoreError> {
        self.run(id, RunDetail::Run).await?;
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT l.step, l.source, l.text FROM logs l JOIN steps s ON s.run_id = l.run_id AND s.step = l.step
                 WHERE l.run_id = $1 AND ($2::text IS NULL OR l.step = $2) ORDER BY s.pos, l.seq",
                &[&id, &step],
            )
            .await
            .map_err(db)?;
        Ok(rows.iter().map(|r| (r.get(0), LogLine { source: LogSource::parse(r.get(1)), text: r.get(2) })).collect())
    }

    async fn succeeded_outputs(&self, id: &str) -> Result<BTreeMap<String, RecordedOutput>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT step, output, output_secrets FROM steps WHERE run_id = $1 AND state = 'succeeded'", &[&id])
            .await
            .map_err(db)?;
        Ok(super::recorded_outputs(id, rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect()))
    }

    async fn state_get(&self, run_id: &str, key: &str) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached("SELECT value FROM state WHERE run_id = $1 AND key = $2").await.map_err(db)?;
        Ok(client.query_opt(&stmt, &[&run_id, &key]).await.map_err(db)?.map(|r| r.get(0)))
    }

    async fn state_set(&self, run_id: &str, key: &str, json: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(STATE_SET).await.map_err(db)?;
        client.execute(&stmt, &[&run_id, &key, &json]).await.map_err(db)?;
        Ok(())
    }

    /// Workers on many machines write one run's state: the run's quota is
    /// checked here, under a lock on the run's state (a transaction-scoped
    /// advisory lock), with the write.
    async fn state_set_within(&self, run_id: &str, key: &str, json: &str, max_keys: u64, max_bytes: u64) -> Result<Option<Result<(), crate::sandbox::QuotaKind>>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        lock_run_part(&tx, "state", run_id).await?;
        let others = tx
            .prepare_cached("SELECT COUNT(*), COALESCE(SUM(octet_length(key) + octet_length(value)), 0)::BIGINT FROM state WHERE run_id = $1 AND key <> $2")
            .await
            .map_err(db)?;
        let row = tx.query_one(&others, &[&run_id, &key]).await.map_err(db)?;
        let (others, bytes) = (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64);
        if others + 1 > max_keys {
            return Ok(Some(Err(crate::sandbox::QuotaKind::StateKeys)));
        }
        if bytes + (key.len() + json.len()) as u64 > max_bytes {
            return Ok(Some(Err(crate::sandbox::QuotaKind::StateBytes)));
        }
        let set = tx.prepare_cached(STATE_SET).await.map_err(db)?;
        tx.execute(&set, &[&run_id, &key, &json]).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(Some(Ok(())))
    }

    async fn state_usage(&self, run_id: &str) -> Result<(u64, u64), StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT COUNT(*), COALESCE(SUM(octet_length(key) + octet_length(value)), 0)::BIGINT FROM state WHERE run_id = $1",
                &[&run_id],
            )
            .await
            .map_err(db)?;
        Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
    }

    async fn blob_put(&self, id: &str, data: &[u8]) -> Result<(), StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(BLOB_PUT).await.map_err(db)?;
        client.execute(&stmt, &[&id, &data]).await.map_err(db)?;
        Ok(())
    }

    /// Workers on many machines put one run's blobs: the run's quota is
    /// checked here, under a lock on the run's blobs (a transaction-scoped
    /// advisory lock), against the blobs the run put (`run_blobs`), with
    /// the write.
    async fn blob_put_within(&self, run_id: &str, id: &str, data: &[u8], max_blobs: u64, max_bytes: u64) -> Result<Option<Result<(), crate::sandbox::QuotaKind>>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        lock_run_part(&tx, "blobs", run_id).await?;
        let held = tx
            .prepare_cached("SELECT COUNT(*), COALESCE(SUM(bytes), 0)::BIGINT, COUNT(*) FILTER (WHERE id = $2) FROM run_blobs WHERE run_id = $1")
            .await
            .map_err(db)?;
        let row = tx.query_one(&held, &[&run_id, &id]).await.map_err(db)?;
        let (blobs, bytes, again) = (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64, row.get::<_, i64>(2) > 0);
        if !again {
            if blobs >= max_blobs {
                return Ok(Some(Err(crate::sandbox::QuotaKind::Blobs)));
            }
            if bytes + data.len() as u64 > max_bytes {
                return Ok(Some(Err(crate::sandbox::QuotaKind::BlobBytes)));
            }
            let count = tx.prepare_cached("INSERT INTO run_blobs (run_id, id, bytes) VALUES ($1, $2, $3)").await.map_err(db)?;
            tx.execute(&count, &[&run_id, &id, &(data.len() as i64)]).await.map_err(db)?;
        }
        let put = tx.prepare_cached(BLOB_PUT).await.map_err(db)?;
        tx.execute(&put, &[&id, &data]).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(Some(Ok(())))
    }

    async fn blob_get(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached("SELECT data FROM blobs WHERE id = $1").await.map_err(db)?;
        Ok(client.query_opt(&stmt, &[&id]).await.map_err(db)?.map(|r| r.get(0)))
    }

    async fn memo_list(&self) -> Result<Vec<super::MemoInfo>, StoreError> {
        let client = self.client().await?;
        let now = super::epoch_now();
        let rows = client
            .query("SELECT key, workflow, step, component, run_id, stored_at, expires_at, length(output) FROM memo ORDER BY stored_at DESC", &[])
            .await
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| {
                let expires: f64 = r.get(6);
                super::MemoInfo {
                    key: r.get(0),
                    workflow: r.get(1),
                    step: r.get(2),
                    component: r.get(3),
                    run_id: r.get(4),
                    stored_at: super::rfc3339(r.get(5)),
                    expires_at: super::rfc3339(expires),
                    expired: expires <= now,
                    output_bytes: r.get::<_, i32>(7) as usize,
                }
            })
            .collect())
    }

    async fn memo_clear(&self, expired_only: bool) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let limit = if expired_only { super::epoch_now() } else { f64::INFINITY };
        client.execute("DELETE FROM memo WHERE expires_at <= $1", &[&limit]).await.map_err(db)
    }
}

#[async_trait::async_trait]
impl crate::exec::Memos for PgStore {
    async fn memo_get(&self, key: &str) -> Result<Option<super::MemoHit>, HostError> {
        self.memo_read(key).await.map_err(memo_failed)
    }

    async fn memo_put(&self, e: &super::MemoEntry) -> Result<(), HostError> {
        self.memo_write(e).await.map_err(memo_failed)
    }
}

impl PgStore {
    async fn memo_read(&self, key: &str) -> Result<Option<super::MemoHit>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT output, output_secrets, run_id FROM memo WHERE key = $1 AND expires_at > $2", &[&key, &super::epoch_now()])
            .await
            .map_err(db)?;
        Ok(row.and_then(|r| {
            Some(super::MemoHit {
                output: parse_json(Some(r.get(0)))?,
                secrets: r.get::<_, Option<String>>(1).and_then(|t| serde_json::from_str(&t).ok()),
                run_id: r.get(2),
            })
        }))
    }

    async fn memo_write(&self, e: &super::MemoEntry) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO memo (key, workflow, step, component, run_id, output, output_secrets, stored_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (key) DO UPDATE SET workflow = $2, step = $3, component = $4, run_id = $5, output = $6,
                   output_secrets = $7, stored_at = $8, expires_at = $9",
                &[
                    &e.key,
                    &e.workflow,
                    &e.step,
                    &e.component,
                    &e.run_id,
                    &e.output.to_string(),
                    &e.secrets.as_ref().map(crate::exec::SecretSpans::to_json),
                    &super::epoch_now(),
                    &e.expires_at,
                ],
            )
            .await
            .map_err(db)?;
        Ok(())
    }
}
