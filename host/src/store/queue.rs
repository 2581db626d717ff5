//! Work distribution over PostgreSQL: the run is the queue.
//!
//! A submitted run is a `runs` row with `queued` set, the files it needs
//! (workflow files and components, content-addressed in `files`), and,
//! once a worker starts it, a `dag` row per step (how many dependencies it
//! still waits for) and a `jobs` row per ready step attempt or `forEach`
//! item. Workers claim ready jobs with `FOR UPDATE SKIP LOCKED`, run them
//! in their own sandbox, and commit each result together with what it
//! decides (the step's end, retries, newly ready steps, the run's end) in
//! one transaction. Every transaction that changes a run first locks its
//! `runs` row, so decisions about one run never race, and its events get
//! gap-free sequence numbers (`runs follow` reads them in order). It takes
//! the run's row before any of the run's jobs, steps or log lines (a claim
//! or a batch of log lines of several runs: their rows in id order), so
//! that two transactions of a run never wait for each other.
//!
//! The run's bookkeeping is [`crate::exec::machine`]'s, the same state
//! machine the in-process dispatcher drives: this module is its
//! [`Ledger`] over the run's rows (`PgLedger`) and the queue's own
//! mechanics (jobs, claims, leases, retries as jobs, `forEach` items as
//! jobs), in SQL.
//!
//! Delivery: a claimed job carries a lease (`lease_until`) its worker's
//! heartbeat extends. When a worker dies its leases expire and any worker
//! puts the job back (a new attempt, failure kind `lost`, not counted
//! against `max_attempts`; after [`MAX_LOST`] losses the step fails). A
//! result is committed only by the claim that is still current, so a late
//! result from a worker whose lease was taken is discarded: steps *run*
//! at least once, their *results* are recorded exactly once.

use super::pipe::{NewJob, Pipe, Read, event_body, params};
use tokio_postgres::types::ToSql;
use super::postgres::{PgStore, db, text};
use super::{NewRun, StoreError, now};
use crate::exec::core::{self, Ending, Items, Stop, Work};
use crate::exec::machine::{Kept, Launch, Lazy, Ledger, Progress, RunMachine, Settled, Tally};
use crate::exec::{Event, Redactor, RunContext, RunState, SecretSpans, unmask};
use crate::failure::{FailureKind, StepFailure};
use crate::sandbox::{LogUsage, Quota, StepLog, sha256_hex};
use deadpool_postgres::GenericClient;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::path::PathBuf;
use std::time::Duration;

/// The channel idle workers listen on: a job became ready (no payload),
/// or a run is to start ([`RUN_TO_START`]).
pub const JOBS_CHANNEL: &str = "sandflow_jobs";
/// The payload of a [`JOBS_CHANNEL`] notification that says a run is to
/// start (submitted, queued again, handed over) and nothing else: workers
/// then look for runs to start, not for jobs to claim (the worker that
/// starts a run claims its first jobs as it does, and tells the others of
/// those it leaves).
pub const RUN_TO_START: &str = "run";
/// The channel followers listen on; the payload is the run id.
pub const EVENTS_CHANNEL: &str = "sandflow_events";

/// How many times a step attempt may lose its worker before the step fails.
pub const MAX_LOST: i32 = 3;

type PgResult<T> = Result<T, tokio_postgres::Error>;

/// A run's files: its workflow files and components, by path as the
/// workflow names them.
pub type RunFiles = BTreeMap<PathBuf, Vec<u8>>;

/// Files' checked bytes a [`PgStore`] read, by SHA-256, up to 128 MiB in
/// all (then it starts over).
#[derive(Default)]
pub(super) struct FilesRead {
    bytes: HashMap<String, std::sync::Arc<Vec<u8>>>,
    total: usize,
}

impl FilesRead {
    const MOST: usize = 128 << 20;

    /// Keeps `bytes` (whose SHA-256 is `hash`, checked) if they fit.
    fn keep(&mut self, hash: &str, bytes: Vec<u8>) -> std::sync::Arc<Vec<u8>> {
        let bytes = std::sync::Arc::new(bytes);
        if bytes.len() <= Self::MOST {
            if self.total + bytes.len() > Self::MOST {
                *self = FilesRead::default();
            }
            self.total += bytes.len();
            if let Some(had) = self.bytes.insert(hash.to_string(), bytes.clone()) {
                self.total -= had.len();
            }
        }
        bytes
    }
}

/// What a transaction on a run did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// It changed the run (started it, recorded a result).
    pub done: bool,
    /// Jobs it made claimable now.
    pub new_jobs: usize,
    /// The soonest a job it queued for later (a retry's delay, a step
    /// that waits for its time) becomes claimable, if it queued one.
    pub retry_in: Option<Duration>,
    /// Jobs claimed for the committing worker in the same transaction.
    pub claimed: Vec<Claimed>,
    /// The run is at another attempt than the worker loaded (it was
    /// retried or resumed): nothing was done; load it again.
    pub stale: bool,
}

/// A job a worker claimed.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The job's id.
    pub id: i64,
    /// The run's id.
    pub run_id: String,
    /// The step's index in the run's plan.
    pub step: usize,
    /// The `forEach` item's index, for a step over items.
    pub item: Option<usize>,
    /// The attempt number this claim runs (shown in events).
    pub attempt: u32,
    /// The claim's token: its result is recorded only while it is current.
    pub claim: i64,
    /// The input, with secrets masked, and where.
    pub input: Value,
    /// Where `input` has masked secrets.
    pub input_secrets: Option<SecretSpans>,
}

/// How a claimed job's attempt ended.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The job it ran.
    pub job: Claimed,
    /// Its output, or why it failed.
    pub result: Result<Value, StepFailure>,
    /// The fuel it used.
    pub fuel_used: u64,
    /// Its log.
    pub log: StepLog,
    /// The run whose stored result was reused (`cache:`).
    pub cached: Option<String>,
}

/// What a worker knows of a run it works on: loaded once per run.
pub struct RunCtx {
    /// The prepared workflow, the run's secrets and variables.
    pub ctx: RunContext,
    /// The run's input.
    pub input: Value,
    /// Masks the run's secrets in what the worker records.
    pub redactor: Redactor,
    /// Set when this worker lacks secrets the workflow reads: why.
    pub missing_secrets: Option<String>,
    /// Most steps of the run running at once across all workers: its
    /// `concurrency` (`--concurrency`, else the workflow's), if it has one.
    pub step_limit: Option<usize>,
    /// The attempt of the run this was loaded for: a transaction that
    /// finds the run at another (`retry`, `resume`) does nothing, and the
    /// worker loads the run again ([`Outcome::stale`]).
    pub attempt: u32,
    /// For an attempt after the first: the steps that run again even if
    /// they succeeded before ([`crate::runs::rerun_steps`]); the others
    /// keep their recorded outputs.
    pub again: Option<BTreeSet<usize>>,
    /// How the run runs in one process: a run run whole by the worker
    /// that starts it ([`super::whole`]).
    pub options: crate::exec::RunOptions,
}

impl RunCtx {
    /// Puts this worker's secret values back into a masked value.
    pub fn unmask(&self, value: Value, spans: Option<SecretSpans>) -> Result<Value, StepFailure> {
        match spans {
            None => Ok(value),
            Some(spans) => unmask(&value, &spans, self.ctx.secrets()).ok_or_else(|| {
                let names: BTreeSet<&str> = spans.strings.iter().flat_map(|s| s.spans.iter().map(|(_, n)| n.as_str())).collect();
                let names: Vec<String> = names.into_iter().map(|n| format!("`{n}`")).collect();
                StepFailure::new(
                    FailureKind::Reference,
                    format!(
                        "this worker does not have secret {}: set SANDFLOW_SECRET_NAME in its environment or give it a --secrets-file",
                        names.join(", ")
                    ),
                )
                .not_retryable()
            }),
        }
    }
}

/// A run a worker must look at: how to load it.
pub struct RunHead {
    /// The workflow file, as given at submit.
    pub file: String,
    /// The run's input.
    pub input: Value,
    /// 1, plus one per `resume` or `retry`.
    pub attempt: u32,
    /// `--target`: the steps the run is limited to.
    pub targets: Vec<String>,
    /// What an attempt after the first runs again.
    pub rerun: crate::runs::Rerun,
    /// Its files: each path as the workflow names it, with its SHA-256
    /// ([`PgStore::files`] reads their bytes).
    pub files: BTreeMap<PathBuf, String>,
    /// `--components` and `--var`, bound at submit.
    pub binding: Binding,
    /// What started it (`run.trigger`, `run.scheduled_time`).
    pub trigger: crate::exec::RunTrigger,
}

impl RunHead {
    /// What its workflow is prepared from, as one SHA-256: the workflow
    /// file's path, the components file's, and every file by path and
    /// content. Runs with the same key prepare the same.
    pub fn prepared_key(&self) -> String {
        let mut material = format!("{}\n{:?}\n", self.file, self.binding.components);
        for (path, sha256) in &self.files {
            material.push_str(&format!("{}\t{sha256}\n", path.display()));
        }
        sha256_hex(material.as_bytes())
    }
}

/// What a queued run is bound to when it is submitted, recorded with it
/// so that every worker runs it the same.
#[derive(Debug, Clone, Default)]
pub struct Binding {
    /// Overrides the workflow's `concurrency`.
    pub concurrency: Option<usize>,
    /// A components file (`--components`), one of the run's files.
    pub components: Option<PathBuf>,
    /// The run's variables (`--var`, `--vars`): an object, or null.
    pub vars: Value,
    /// The namespace (tenant) it belongs to; empty: `default`.
    pub namespace: String,
    /// Its priority within its namespace: workers start and claim the
    /// steps of higher ones first.
    pub priority: i32,
}

/// A [`Binding`] as its columns hold it.
pub(super) struct StoredBinding<'a> {
    pub concurrency: Option<i32>,
    pub components: Option<String>,
    /// An object of variables as JSON text; none if there are none.
    pub vars: Option<String>,
    pub namespace: &'a str,
}

impl Binding {
    /// A binding as its columns hold it ([`Binding::stored`] read back):
    /// no variables is an empty object.
    pub(super) fn from_stored(concurrency: Option<i32>, components: Option<String>, vars: Option<String>, namespace: String, priority: i32) -> Binding {
        Binding {
            concurrency: concurrency.map(|n| n.max(1) as usize),
            components: components.map(PathBuf::from),
            vars: vars.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_else(|| Value::Object(Default::default())),
            namespace,
            priority,
        }
    }

    pub(super) fn stored(&self) -> StoredBinding<'_> {
        StoredBinding {
            concurrency: self.concurrency.map(|n| n.min(i32::MAX as usize) as i32),
            components: self.components.as_ref().map(|p| p.display().to_string()),
            vars: self.vars.as_object().filter(|v| !v.is_empty()).map(|v| Value::Object(v.clone()).to_string()),
            namespace: if self.namespace.is_empty() { super::DEFAULT_NAMESPACE } else { self.namespace.as_str() },
        }
    }
}

/// The columns of a run's head, of its row `r`: read by [`head_of`].
macro_rules! head_columns {
    () => {
        "r.file, r.input, r.attempt, r.concurrency, r.targets, r.components, r.vars, r.rerun, r.namespace, r.priority, r.triggered_by,
         to_char(r.scheduled_time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
         ARRAY(SELECT f.path FROM run_files f WHERE f.run_id = r.id ORDER BY f.path),
         ARRAY(SELECT f.sha256 FROM run_files f WHERE f.run_id = r.id ORDER BY f.path)"
    };
}

impl PgStore {
    /// Records a run for workers to run: the run, and every file it needs
    /// (each file's bytes once per content, shared by runs). A worker
    /// starts it; `concurrency` overrides the workflow's for `forEach` items.
    pub async fn submit(&self, run: &NewRun, files: &RunFiles, binding: &Binding) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let hashes = store_files(&tx, files).await?;
        insert_run(&tx, run, &hashes, binding, &Trigger::default()).await?;
        tx.commit().await.map_err(db)
    }

    /// Queues a run whose files the store keeps already, for its namespace
    /// (`files`: each one's path and SHA-256, as [`PgStore::files_by_hash`]
    /// found them): [`PgStore::submit`] without sending, hashing or
    /// looking for the files' bytes again.
    pub async fn submit_held(&self, run: &NewRun, files: &[(String, String)], binding: &Binding) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        insert_run(&tx, run, files, binding, &Trigger::default()).await?;
        tx.commit().await.map_err(db)
    }

    /// Keeps `bytes` among the store's files (by SHA-256, once per content)
    /// for runs of `namespace` to name later; returns its SHA-256 and
    /// whether the namespace had it already. What the API's uploads land in.
    pub async fn put_file(&self, namespace: &str, bytes: &[u8]) -> Result<(String, bool), StoreError> {
        let hash = sha256_hex(bytes);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        // Bytes kept for the namespace, under its limit (a file it has
        // already costs nothing more).
        let limit = tx.query_opt("SELECT max_stored FROM namespaces WHERE name = $1 FOR UPDATE", &[&namespace]).await.map_err(db)?;
        if let Some(max) = limit.and_then(|r| r.get::<_, Option<i64>>(0)) {
            let row = tx
                .query_one(
                    "SELECT COALESCE(sum(length(f.bytes)), 0)::BIGINT, bool_or(f.sha256 = $2) IS TRUE
                     FROM namespace_files n JOIN files f ON f.sha256 = n.sha256 WHERE n.namespace = $1",
                    &[&namespace, &hash],
                )
                .await
                .map_err(db)?;
            let (stored, had): (i64, bool) = (row.get(0), row.get(1));
            if !had && stored + bytes.len() as i64 > max {
                return Err(StoreError::Quota(format!(
                    "namespace `{namespace}` keeps {} of files and this one is {}: that is over its limit of {} (raise it: `sandflow namespace set {namespace} --max-stored SIZE`)",
                    crate::units::format_size(stored as u64),
                    crate::units::format_size(bytes.len() as u64),
                    crate::units::format_size(max as u64)
                )));
            }
        }
        tx.execute("INSERT INTO files (sha256, bytes) VALUES ($1, $2) ON CONFLICT DO NOTHING", &[&hash, &bytes]).await.map_err(db)?;
        let added = tx
            .execute("INSERT INTO namespace_files (namespace, sha256) VALUES ($1, $2) ON CONFLICT DO NOTHING", &[&namespace, &hash])
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok((hash, added == 0))
    }

    /// The files namespace `namespace` has among `hashes` (it uploaded
    /// them, or its runs used them), by SHA-256, each checked against it
    /// (a corrupt copy is left out, as if missing). Another namespace's
    /// files are missing here: what one tenant keeps, another cannot learn.
    ///
    /// Whether the namespace has a file is asked of the server every time;
    /// the bytes of a file this process read and checked before are not
    /// fetched (nor hashed) again: a submit through `serve` of a workflow
    /// with 30 MB of components read them all at every submit.
    pub async fn files_by_hash(&self, namespace: &str, hashes: &[&str]) -> Result<HashMap<String, Vec<u8>>, StoreError> {
        let known: Vec<String> = {
            let read = crate::lock(&self.files_read);
            hashes.iter().filter(|h| read.bytes.contains_key(**h)).map(|h| h.to_string()).collect()
        };
        let client = self.client().await?;
        let found = client
            .prepare_cached(
                "SELECT f.sha256, CASE WHEN f.sha256 = ANY($3) THEN NULL ELSE f.bytes END
                 FROM files f JOIN namespace_files n ON n.sha256 = f.sha256 AND n.namespace = $2 WHERE f.sha256 = ANY($1)",
            )
            .await
            .map_err(db)?;
        let rows = client.query(&found, &[&hashes, &namespace, &known]).await.map_err(db)?;
        let mut read = crate::lock(&self.files_read);
        let mut held = HashMap::new();
        for row in rows {
            let (hash, bytes): (String, Option<Vec<u8>>) = (row.get(0), row.get(1));
            let bytes = match bytes {
                Some(bytes) if sha256_hex(&bytes) == hash => read.keep(&hash, bytes),
                Some(_) => continue,
                // Known when asked; forgotten since (the cache started
                // over): asked again next time.
                None => match read.bytes.get(&hash) {
                    Some(bytes) => bytes.clone(),
                    None => continue,
                },
            };
            held.insert(hash, Vec::clone(&bytes));
        }
        Ok(held)
    }

    /// What a worker needs to load a queued run: its file, input and files,
    /// each checked against its SHA-256.
    pub async fn run_head(&self, run_id: &str) -> Result<RunHead, StoreError> {
        let client = self.client().await?;
        // One statement, prepared once per connection: a worker reads the
        // head of every run it touches.
        let head = client.prepare_cached(concat!("SELECT ", head_columns!(), " FROM runs r WHERE r.id = $1")).await.map_err(db)?;
        let row = client.query_opt(&head, &[&run_id]).await.map_err(db)?.ok_or_else(|| StoreError::UnknownRun(run_id.to_string()))?;
        Ok(head_of(&row, 0))
    }

    /// The files of a run's head, read and each checked against its
    /// SHA-256; the inner error says why the run's files cannot be used
    /// (a copy missing or corrupt: the run never will be).
    pub async fn files(&self, head: &RunHead) -> Result<Result<RunFiles, String>, StoreError> {
        let client = self.client().await?;
        let wanted: Vec<&str> = head.files.values().map(String::as_str).collect();
        let rows = client.query("SELECT sha256, bytes FROM files WHERE sha256 = ANY($1)", &[&wanted]).await.map_err(db)?;
        let by_hash: HashMap<String, Vec<u8>> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let mut files = RunFiles::new();
        for (path, hash) in &head.files {
            match by_hash.get(hash) {
                Some(bytes) if sha256_hex(bytes) == *hash => files.insert(path.clone(), bytes.clone()),
                Some(_) => return Ok(Err(format!("the stored copy of {} does not match its SHA-256 {hash}", path.display()))),
                None => return Ok(Err(format!("the store has no copy of {} (SHA-256 {hash})", path.display()))),
            };
        }
        Ok(Ok(files))
    }

    /// A worker starts (or starts again under its name): it is alive, with
    /// these labels and slots.
    pub async fn worker_started(&self, worker: &str, labels: &[String], slots: usize, lease: Duration) -> Result<(), StoreError> {
        let client = self.client().await?;
        let (slots, lease_ms) = (slots.min(i32::MAX as usize) as i32, lease.as_millis().min(i64::MAX as u128) as i64);
        client
            .execute(
                "INSERT INTO workers (name, labels, slots, lease_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE SET labels = $2, slots = $3, lease_ms = $4, started_at = now(), seen_at = now(), stopped_at = NULL",
                &[&worker, &labels, &slots, &lease_ms],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    /// A worker stopped, having finished what it held.
    pub async fn worker_stopped(&self, worker: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.execute("UPDATE workers SET stopped_at = now(), seen_at = now() WHERE name = $1", &[&worker]).await.map_err(db)?;
        Ok(())
    }

    /// Queued runs no worker has started yet, with their heads (as
    /// [`PgStore::run_head`] reads them): the namespaces in turn (a
    /// namespace's k-th run before any namespace's (k+1)-th, among the
    /// oldest 1,024), within one by priority, then oldest first. With
    /// `only`, that run if it is one of them. One statement: every worker
    /// woken for a run to start asks, and each would otherwise read the
    /// run's head in a statement of its own before one of them wins it.
    pub async fn runs_to_start(&self, limit: i64, only: Option<&str>) -> Result<Vec<(String, RunHead)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                concat!(
                    "SELECT c.id, ",
                    head_columns!(),
                    " FROM (SELECT id, k, priority, seq FROM
                             (SELECT id, priority, seq, row_number() OVER (PARTITION BY namespace ORDER BY priority DESC, seq) AS k
                              FROM (SELECT id, namespace, priority, seq FROM runs WHERE queued AND NOT run_started AND status = 'running'
                                      AND ($2::text IS NULL OR id = $2) ORDER BY seq LIMIT 1024) w) x
                             ORDER BY k, priority DESC, seq LIMIT $1) c
                     JOIN runs r ON r.id = c.id
                     ORDER BY c.k, c.priority DESC, c.seq"
                ),
                &[&limit, &only],
            )
            .await
            .map_err(db)?;
        Ok(rows.iter().map(|r| (r.get(0), head_of(r, 1))).collect())
    }

    /// Starts a queued run: its DAG rows, its first ready steps, of which
    /// `claimer` takes what fits its slots. Does nothing if another worker
    /// started it first.
    pub async fn start_run(&self, run_id: &str, run: &RunCtx, claimer: Claimer) -> Result<Outcome, StoreError> {
        self.in_run(run_id, run, &Holding { starting: true, ..Holding::default() }, |t| {
            Box::pin(async move {
                let started = t.begin().await?;
                t.claim_own(&claimer).await?;
                Ok(started)
            })
        })
        .await
    }

    /// Claims up to `limit` ready jobs for `worker`, leased for `lease`:
    /// those whose `runs_on` labels are all among `labels` (and of run
    /// `only`, if given).
    pub async fn claim(&self, worker: &str, labels: &[String], limit: i64, lease: Duration, only: Option<&str>) -> Result<Vec<Claimed>, StoreError> {
        if limit <= 0 {
            return Ok(Vec::new());
        }
        // BEGIN travels with the first statement.
        let conn = InTx::new(self.client().await?);
        let tx = conn.client();
        let mut pipe = Pipe::default();
        pipe.push("BEGIN", params![]);
        let capped = pipe.query(tx, LOCK_CAPPED, &[]).await.map_err(db)?;
        let names: Vec<String> = capped.iter().map(|r| r.get(0)).collect();
        let caps: Vec<i64> = capped.iter().map(|r| r.get(1)).collect();
        // The runs' rows, then their jobs: see `CLAIM_RUNS`.
        let runs = pipe.query(tx, CLAIM_RUNS, &[&labels, &names, &caps, &only, &limit]).await.map_err(db)?;
        let runs: Vec<String> = runs.iter().map(|r| r.get(0)).collect();
        if runs.is_empty() {
            tx.batch_execute("COMMIT").await.map_err(db)?;
            conn.finished();
            return Ok(Vec::new());
        }
        let rows = pipe.query(tx, CLAIM_FAIR, &[&labels, &names, &caps, &runs, &limit, &worker, &lease.as_secs_f64()]).await.map_err(db)?;
        let mut claimed: Vec<(Claimed, String)> = rows.iter().map(|r| (claimed_row(r), r.get(8))).collect();
        claimed.sort_by(|(a, _), (b, _)| (&a.run_id, a.id).cmp(&(&b.run_id, b.id)));
        // `StepStarted` events, numbered in each run's order, runs in id
        // order. Each run's row is locked already (`CLAIM_RUNS`), before its
        // steps' rows are written: see `MARK_STARTED`.
        for group in claimed.chunk_by(|(a, _), (b, _)| a.run_id == b.run_id) {
            let run_id = group[0].0.run_id.clone();
            let mut bodies = Vec::with_capacity(group.len());
            for (c, step) in group {
                let event = Event::StepStarted { run_id: run_id.clone(), step: step.clone(), attempt: c.attempt, item: c.item, worker: Some(worker.to_string()) };
                // The step's row says `running`, and where.
                pipe.record(&event);
                bodies.push(event_body(&event));
            }
            pipe.push(APPEND_EVENTS, params![run_id.clone(), bodies]);
            let idx: Vec<i32> = group.iter().map(|(c, _)| c.step as i32).collect();
            pipe.push(MARK_STARTED, params![run_id.clone(), idx]);
            pipe.push(NOTIFY, params![EVENTS_CHANNEL, run_id]);
        }
        pipe.send(tx).await.map_err(db)?;
        tx.batch_execute("COMMIT").await.map_err(db)?;
        conn.finished();
        let claimed = claimed.into_iter().map(|(c, _)| c).collect();
        Ok(claimed)
    }

    /// Extends the leases of `jobs` still claimed by `worker`.
    pub async fn heartbeat(&self, worker: &str, jobs: &[i64], lease: Duration) -> Result<u64, StoreError> {
        let client = self.client().await?;
        client.execute("UPDATE workers SET seen_at = now() WHERE name = $1", &[&worker]).await.map_err(db)?;
        if jobs.is_empty() {
            return Ok(0);
        }
        client
            .execute(
                // By key, with the array's bounds: a generic plan of `id =
                // ANY($1)` alone read every claimed job of every worker
                // through `jobs_claimed`.
                concat!(
                    "UPDATE jobs SET lease_until = now() + make_interval(secs => $3) WHERE ",
                    key_in!("id", "$1", "int8"),
                    " AND worker = $2 AND state = 'claimed'"
                ),
                &[&jobs, &worker, &lease.as_secs_f64()],
            )
            .await
            .map_err(db)
    }

    /// Records finished attempts of one run and everything they decide, in
    /// one transaction. A result whose claim is no longer current (its lease
    /// expired and the job was given to another worker) is discarded.
    /// `claimer`'s free slots are filled from the run's ready jobs in the
    /// same transaction (no claim round trip for the steps a result makes
    /// ready); other workers are woken only for the jobs left.
    pub async fn commit(&self, run_id: &str, run: &RunCtx, finished: Vec<Finished>, claimer: Claimer) -> Result<Outcome, StoreError> {
        let jobs: Vec<&Claimed> = finished.iter().map(|f| &f.job).collect();
        let held = Holding::new(&jobs, run);
        self.in_run(run_id, run, &held, move |t| {
            Box::pin(async move {
                let mut any = false;
                for f in finished {
                    any |= t.finished(f).await?;
                }
                t.advance().await?;
                t.claim_own(&claimer).await?;
                Ok(any)
            })
        })
        .await
    }

    /// Runs with a step limit (a `concurrency`) whose jobs are ready for a
    /// worker with `labels`: their jobs are claimed under the run's lock
    /// ([`PgStore::claim_in_run`]), so that workers never exceed it together.
    /// With `only`, that run if it is one of them.
    pub async fn limited_runs_ready(&self, labels: &[String], only: Option<&str>) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT DISTINCT run_id FROM jobs WHERE limited AND state = 'ready' AND not_before <= now() AND runs_on <@ $1::text[]
                   AND ($2::text IS NULL OR run_id = $2) LIMIT 16",
                &[&labels, &only],
            )
            .await
            .map_err(db)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Claims ready jobs of one run for `claimer`, within the run's step
    /// limit, under its lock.
    pub async fn claim_in_run(&self, run_id: &str, run: &RunCtx, claimer: Claimer) -> Result<Outcome, StoreError> {
        self.in_run(run_id, run, &Holding::default(), |t| {
            Box::pin(async move {
                t.claim_own(&claimer).await?;
                Ok(false)
            })
        })
        .await
    }

    /// Runs whose claimed jobs' leases expired, whose cancel was asked for,
    /// or whose timeout passed, and runs run whole whose hold lapsed
    /// ([`super::whole`]): each needs a look by some worker. With `only`,
    /// that run if it needs one.
    pub async fn runs_needing_care(&self, only: Option<&str>) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT * FROM (SELECT DISTINCT run_id FROM jobs WHERE state = 'claimed' AND lease_until < now()
                 UNION SELECT id FROM runs WHERE queued AND run_started AND status = 'running' AND held_by IS NULL
                   AND ((stop IS NULL OR stop LIKE 'failed:%' OR stop LIKE 'failing:%') AND (cancel_requested OR deadline < now()))
                 UNION SELECT id FROM runs WHERE held_by IS NOT NULL AND held_until < now() AND status = 'running') c (id)
                 WHERE $1::text IS NULL OR id = $1",
                &[&only],
            )
            .await
            .map_err(db)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Looks after one run: puts back jobs whose worker was lost, stops it
    /// when cancelled or out of time, ends it if nothing is left to run. A
    /// run run whole whose hold lapsed becomes its next attempt, step by
    /// step ([`PgStore::recover_lapsed`]; the outcome is then `stale`).
    pub async fn care(&self, run_id: &str, run: &RunCtx) -> Result<Outcome, StoreError> {
        if self.recover_lapsed(run_id).await? {
            // It is the next attempt now, to be started: this one is done.
            return Ok(Outcome { stale: true, ..Outcome::default() });
        }
        self.in_run(run_id, run, &Holding::default(), |t| {
            Box::pin(async move {
                t.reap().await?;
                t.check_stop().await?;
                t.advance().await?;
                Ok(true)
            })
        })
        .await
    }

    /// Of `runs`, those whose running steps must be cancelled (`sandflow
    /// cancel`, the run's timeout).
    pub async fn runs_to_interrupt(&self, runs: &[String]) -> Result<Vec<String>, StoreError> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id FROM runs WHERE id = ANY($1) AND (cancel_requested OR deadline < now() OR stop IN ('cancelled', 'timed_out') OR status <> 'running')",
                &[&runs],
            )
            .await
            .map_err(db)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// A run's events after `after`, in order, and whether it has finished.
    pub async fn events_after(&self, run_id: &str, after: i32) -> Result<Vec<(i32, Event)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT seq, body FROM events WHERE run_id = $1 AND seq > $2 ORDER BY seq", &[&run_id, &after])
            .await
            .map_err(db)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let body: &str = r.get(1);
            match serde_json::from_str::<Event>(body) {
                Ok(e) => out.push((r.get(0), e)),
                Err(e) => return Err(StoreError::Backend(format!("run {run_id}: unreadable event {}: {e}", r.get::<_, i32>(0)))),
            }
        }
        Ok(out)
    }

    /// Marks a queued run failed with `message`: its workflow cannot be
    /// loaded (a worker reports why).
    pub async fn abandon(&self, run_id: &str, message: &str) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let row = tx.query_opt("SELECT events FROM runs WHERE id = $1 AND status = 'running' FOR UPDATE", &[&run_id]).await.map_err(db)?;
        if let Some(row) = row {
            let seq: i32 = row.get::<_, i32>(0) + 1;
            let event = Event::RunFinished {
                run_id: run_id.to_string(),
                state: RunState::Failed,
                duration: Duration::ZERO,
                output: None,
                error: Some(message.to_string()),
            };
            let mut pipe = Pipe::default();
            pipe.record_streamed(run_id, seq, event);
            pipe.push("UPDATE runs SET events = $2, run_started = true WHERE id = $1", params![run_id.to_string(), seq]);
            pipe.push("DELETE FROM jobs WHERE run_id = $1 AND state <> 'claimed'", params![run_id.to_string()]);
            pipe.push(NOTIFY, params![EVENTS_CHANNEL, run_id.to_string()]);
            pipe.send(&tx).await.map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    /// A connection listening on `channel`: a message for each notification,
    /// until the connection is lost.
    pub async fn listen(&self, channel: &str) -> Result<(tokio_postgres::Client, tokio::sync::mpsc::UnboundedReceiver<String>), StoreError> {
        let (client, mut connection) = self.config.connect(tokio_postgres::NoTls).await.map_err(db)?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                match message {
                    Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                        if tx.send(n.payload().to_string()).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!("notification connection: {e}");
                        return;
                    }
                }
            }
        });
        client.batch_execute(&format!("LISTEN {channel}")).await.map_err(db)?;
        Ok((client, rx))
    }

    /// How long until the soonest job that waits for its time (a durable
    /// timer, a retry's delay) becomes claimable by a worker with `labels`
    /// (of run `only`, if given).
    pub async fn next_due(&self, labels: &[String], only: Option<&str>) -> Result<Option<Duration>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT EXTRACT(EPOCH FROM min(not_before) - now())::float8 FROM jobs
                 WHERE state = 'ready' AND not_before > now() AND not_before < 'infinity' AND runs_on <@ $1::text[]
                   AND ($2::text IS NULL OR run_id = $2)",
            )
            .await
            .map_err(db)?;
        let row = client.query_one(&stmt, &[&labels, &only]).await.map_err(db)?;
        Ok(row.get::<_, Option<f64>>(0).map(|s| Duration::from_secs_f64(s.max(0.0))))
    }

    /// How a waiting step of a run waited, once a worker claims its job:
    /// its recorded wake time, and the signal it was sent, if any.
    pub async fn woken(&self, run_id: &str, step: &str) -> Result<(Option<String>, Option<core::Signal>), StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT s.wake_at, g.data, g.sent_by, g.sent_at FROM steps s LEFT JOIN signals g ON g.run_id = s.run_id AND g.step = s.step
                 WHERE s.run_id = $1 AND s.step = $2",
                &[&run_id, &step],
            )
            .await
            .map_err(db)?;
        let Some(row) = row else { return Ok((None, None)) };
        let signal = match row.get::<_, Option<String>>(1) {
            Some(data) => super::signal_of(step.to_string(), data, row.get(2), row.get(3)).map(|(_, s)| s),
            None => None,
        };
        Ok((row.get(0), signal))
    }

    /// Whether the run was submitted for workers (not run by one process).
    pub async fn is_queued(&self, run_id: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let row = client.query_opt("SELECT queued FROM runs WHERE id = $1", &[&run_id]).await.map_err(db)?;
        row.map(|r| r.get(0)).ok_or_else(|| StoreError::UnknownRun(run_id.to_string()))
    }

    /// A new attempt of a queued run that has ended (`retry`, `resume`),
    /// for workers to run: its DAG and jobs start afresh, steps keep their
    /// rows (a worker restores what `rerun` keeps from them), and followers
    /// start after the events recorded so far. `concurrency` and `vars`,
    /// when given, replace what the run was bound to. Returns the new
    /// attempt, or `None` if the run is running.
    pub async fn requeue(&self, run_id: &str, rerun: &crate::runs::Rerun, concurrency: Option<usize>, vars: Option<&Value>) -> Result<Option<u32>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let row = tx.query_opt("SELECT status FROM runs WHERE id = $1 AND queued FOR UPDATE", &[&run_id]).await.map_err(db)?;
        let status: String = row.ok_or_else(|| StoreError::UnknownRun(run_id.to_string()))?.get(0);
        if status == RunState::Running.as_str() {
            return Ok(None);
        }
        tx.execute("DELETE FROM jobs WHERE run_id = $1", &[&run_id]).await.map_err(db)?;
        tx.execute("DELETE FROM dag WHERE run_id = $1", &[&run_id]).await.map_err(db)?;
        let rerun = serde_json::to_string(rerun).expect("a Rerun always serializes");
        let concurrency = concurrency.map(|n| n.min(i32::MAX as usize) as i32);
        let vars = vars.map(Value::to_string);
        let row = tx
            .query_one(
                concat!(
                    "UPDATE runs SET ",
                    next_attempt!(),
                    ", status = 'running', finished_at = NULL, error = NULL, output = NULL, cancel_requested = false,
                       concurrency = COALESCE($3, concurrency), vars = COALESCE($4, vars)
                     WHERE id = $1 RETURNING attempt"
                ),
                &[&run_id, &rerun, &concurrency, &vars],
            )
            .await
            .map_err(db)?;
        tx.execute("SELECT pg_notify($1, $2)", &[&JOBS_CHANNEL, &RUN_TO_START]).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(Some(row.get::<_, i32>(0) as u32))
    }

    /// How many of run `run_id`'s events came before its current attempt:
    /// a follower of the attempt starts after them.
    pub async fn attempt_events(&self, run_id: &str) -> Result<i32, StoreError> {
        let client = self.client().await?;
        let row = client.query_opt("SELECT attempt_events FROM runs WHERE id = $1", &[&run_id]).await.map_err(db)?;
        row.map(|r| r.get(0)).ok_or_else(|| StoreError::UnknownRun(run_id.to_string()))
    }

    /// Runs `body` in a transaction that holds the run's row lock (and
    /// the rows of the jobs in `held`, whose results it records).
    async fn in_run<F>(&self, run_id: &str, run: &RunCtx, held: &Holding, body: F) -> Result<Outcome, StoreError>
    where
        F: for<'t> FnOnce(&'t mut RunTx<'_>) -> std::pin::Pin<Box<dyn std::future::Future<Output = PgResult<bool>> + Send + 't>>,
    {
        // BEGIN travels with the run lock and the first reads.
        let conn = InTx::new(self.client().await?);
        let tx = conn.client();
        let mut pipe = Pipe::default();
        pipe.push("BEGIN", params![]);
        // The statements of a run's transaction are the same few, prepared
        // once per connection, with parameters that change nothing of how
        // they are best run (a run's id, its steps' indexes). PostgreSQL
        // would plan each one again at every execution (a custom plan costs
        // no more than its estimate of the generic one's), 40-130 µs a
        // statement, 0.5 ms of a chain step's commit: plan them once.
        //
        // A run's transaction reads and writes its own rows and jobs, each
        // by an index. A plan made while a table was small (a worker keeps
        // it for its connection's life) would read the whole table at every
        // statement once the table has grown: the queue's every job at each
        // step's end (BENCHMARKS.md, "A run's rows by their key").
        //
        // Both settings in one statement: each statement costs the server
        // ~0.1 ms of a chain step's commit, whatever it does.
        pipe.push(
            "SELECT set_config('plan_cache_mode', 'force_generic_plan', true), set_config('enable_seqscan', 'off', true)",
            params![],
        );
        let lock: [&(dyn ToSql + Sync); 1] = [&run_id];
        let busy: [&(dyn ToSql + Sync); 3] = [&run_id, &held.ids, &held.claims];
        let jobs: [&(dyn ToSql + Sync); 2] = [&held.ids, &held.claims];
        let waiting: [&(dyn ToSql + Sync); 2] = [&run_id, &held.dependents];
        // The namespace's lock comes before the run's, as in `claim`.
        let mut reads: Vec<Read> = vec![(LOCK_NAMESPACE, &lock), (NAMESPACE_BUSY, &busy), (if held.starting { LOCK_RUN_TO_START } else { LOCK_RUN }, &lock)];
        if !held.ids.is_empty() {
            reads.push((HOLD_JOBS, &jobs));
            reads.push((WAITING, &waiting));
        }
        let mut reads = pipe.queries(tx, &reads).await.map_err(db)?.into_iter();
        let cap = reads.next().unwrap_or_default().first().map(|r| r.get::<_, i64>(0));
        let busy = reads.next().unwrap_or_default().first().map_or(0, |r| r.get::<_, i64>(0));
        let room = cap.map(|cap| (cap - busy).max(0) as usize);
        let rows = reads.next().unwrap_or_default();
        let Some(row) = rows.first() else {
            if held.starting {
                // Another worker is starting it, or started it already.
                tx.batch_execute("ROLLBACK").await.map_err(db)?;
                conn.finished();
                return Ok(Outcome::default());
            }
            return Err(StoreError::UnknownRun(run_id.to_string()));
        };
        if row.get::<_, i32>(7) as u32 != run.attempt {
            tx.batch_execute("ROLLBACK").await.map_err(db)?;
            conn.finished();
            return Ok(Outcome { stale: true, ..Outcome::default() });
        }
        let status: String = row.get(0);
        let progress = Progress {
            started: row.get(4),
            running: status == "running",
            stop: row.get::<_, Option<String>>(1).as_deref().and_then(Stop::decode),
            ending: row.get::<_, Option<String>>(5).and_then(|t| serde_json::from_str(&t).ok()),
            main_stop: row.get::<_, Option<String>>(6).as_deref().and_then(Stop::decode),
            open: row.get::<_, i32>(2).max(0) as usize,
        };
        let ledger = PgLedger {
            tx,
            run,
            run_id,
            seq: row.get(3),
            new_jobs: 0,
            retry_in: None,
            claimed: Vec::new(),
            verdicts: BTreeMap::new(),
            pipe,
            held: HashMap::new(),
            elapsed: HashMap::new(),
            loaded: HashSet::new(),
            outputs: BTreeMap::new(),
            outcomes: HashMap::new(),
            waiting: HashMap::new(),
            kept: None,
            room,
            log: LogUsage { bytes: row.get::<_, i64>(8) as u64, lines: row.get::<_, i64>(9) as u64 },
        };
        let mut t: RunTx<'_> = RunMachine::new(&run.ctx.prepared().plan, run.ctx.facts(&run.input), progress, ledger);
        t.ledger.hold(reads.next().unwrap_or_default(), reads.next().unwrap_or_default());
        let done = body(&mut t).await.map_err(db)?;
        t.ledger.save(&t.progress);
        t.ledger.pipe.send(tx).await.map_err(db)?;
        // COMMIT on its own: measured, it is faster than in the same burst
        // as the writes (1.3 ms against 2.2 ms for a chain step's commit).
        tx.batch_execute("COMMIT").await.map_err(db)?;
        let l = &mut t.ledger;
        let pipe = &l.pipe;
        l.claimed.retain_mut(|c| {
            if c.id == 0 {
                match pipe.inserted_id(&c.run_id, c.step as i32, c.item.map(|k| k as i32)) {
                    Some(id) => c.id = id,
                    // Cannot happen; if it did, the lease would expire and
                    // another worker run the job.
                    None => tracing::error!("run {}: the id of a job claimed as it was inserted is unknown", c.run_id),
                }
            }
            c.id != 0
        });
        let outcome = Outcome { done, new_jobs: l.new_jobs, retry_in: l.retry_in, claimed: std::mem::take(&mut l.claimed), stale: false };
        drop(t);
        conn.finished();
        Ok(outcome)
    }
}

/// Keeps `files`' bytes among the store's files (once per content);
/// returns each one's path and SHA-256.
pub(super) async fn store_files(tx: &deadpool_postgres::Transaction<'_>, files: &RunFiles) -> Result<Vec<(String, String)>, StoreError> {
    let hashes: Vec<(String, &PathBuf, &Vec<u8>)> = files.iter().map(|(p, b)| (sha256_hex(b), p, b)).collect();
    let wanted: Vec<&str> = hashes.iter().map(|(h, _, _)| h.as_str()).collect();
    let have: BTreeSet<String> =
        tx.query("SELECT sha256 FROM files WHERE sha256 = ANY($1)", &[&wanted]).await.map_err(db)?.iter().map(|r| r.get(0)).collect();
    let mut stored = BTreeSet::new();
    for (hash, _, bytes) in &hashes {
        if !have.contains(hash) && stored.insert(hash.clone()) {
            tx.execute("INSERT INTO files (sha256, bytes) VALUES ($1, $2) ON CONFLICT DO NOTHING", &[hash, bytes]).await.map_err(db)?;
        }
    }
    Ok(hashes.into_iter().map(|(hash, path, _)| (path.display().to_string(), hash)).collect())
}

/// How a run came to be, as `run.trigger` tells it.
#[derive(Debug, Clone, Default)]
pub struct Trigger {
    /// `schedule` (or `webhook`); none: `manual`.
    pub kind: Option<&'static str>,
    /// The schedule (or webhook) that started it.
    pub source: Option<String>,
    /// The tick it was started for.
    pub scheduled_time: Option<std::time::SystemTime>,
}

/// Queues run `run` of files `files` (paths and SHA-256s, kept already)
/// for workers, in `tx`: refused with [`StoreError::Quota`] past its
/// namespace's runs in flight.
pub(super) async fn insert_run(tx: &deadpool_postgres::Transaction<'_>, run: &NewRun, files: &[(String, String)], binding: &Binding, trigger: &Trigger) -> Result<(), StoreError> {
    let StoredBinding { concurrency, components, vars, namespace } = binding.stored();
    // Runs in flight, under the namespace's limit: counted under its
    // row's lock, so two submits cannot both take the last place.
    // Statements prepared once per connection (cached): a submit's few
    // statements were parsed and planned by the server at each submit.
    let locked = tx.prepare_cached("SELECT max_runs FROM namespaces WHERE name = $1 FOR UPDATE").await.map_err(db)?;
    let limit = tx.query_opt(&locked, &[&namespace]).await.map_err(db)?;
    if let Some(max) = limit.and_then(|r| r.get::<_, Option<i64>>(0)) {
        let running: i64 =
            tx.query_one("SELECT count(*) FROM runs WHERE namespace = $1 AND status = 'running'", &[&namespace]).await.map_err(db)?.get(0);
        if running >= max {
            return Err(StoreError::Quota(format!(
                "namespace `{namespace}` has {running} run(s) in flight, its limit: submit again when one has ended (or raise it: `sandflow namespace set {namespace} --max-runs N`)"
            )));
        }
    }
    let kind = trigger.kind.unwrap_or("manual");
    let (paths, hashes): (Vec<&str>, Vec<&str>) = files.iter().map(|(p, h)| (p.as_str(), h.as_str())).unzip();
    // One statement (one round trip, one plan): the run, its files, the
    // namespace's files, and the workers' notification.
    let insert = tx
        .prepare_cached(
        "WITH run AS (
             INSERT INTO runs (id, workflow, file, sha256, input, status, attempt, started_at, queued, concurrency, targets, components, vars, namespace, priority,
                               triggered_by, trigger_source, scheduled_time)
             VALUES ($1, $2, $3, $4, $5, 'running', 1, $6, true, $7, $8, $9, $10, $11, $12, $13, $14, $15)),
         run_files AS (INSERT INTO run_files (run_id, path, sha256) SELECT $1, f.path, f.sha256 FROM unnest($16::text[], $17::text[]) AS f(path, sha256)),
         namespace_files AS (
             INSERT INTO namespace_files (namespace, sha256) SELECT DISTINCT $11, f.sha256 FROM unnest($17::text[]) AS f(sha256) ON CONFLICT DO NOTHING)
         SELECT pg_notify($18, $19)",
        )
        .await
        .map_err(db)?;
    tx.execute(
        &insert,
        &[
            &run.id,
            &run.workflow,
            &run.file,
            &run.sha256,
            &run.input.to_string(),
            &now(),
            &concurrency,
            &super::targets_text(&run.targets),
            &components,
            &vars,
            &namespace,
            &binding.priority,
            &kind,
            &trigger.source,
            &trigger.scheduled_time,
            &paths,
            &hashes,
            &JOBS_CHANNEL,
            &RUN_TO_START,
        ],
    )
    .await
    .map_err(db)?;
    Ok(())
}

/// A run's head from [`head_columns`], the first of them at column `at` of `row`.
fn head_of(row: &tokio_postgres::Row, at: usize) -> RunHead {
    let (paths, hashes): (Vec<String>, Vec<String>) = (row.get(at + 12), row.get(at + 13));
    let files = paths.into_iter().map(PathBuf::from).zip(hashes).collect();
    let rerun: crate::runs::Rerun = row.get::<_, Option<String>>(at + 7).and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    let kind: String = row.get(at + 10);
    let trigger = crate::exec::RunTrigger {
        // An attempt `retry` started is the retry's, whatever started the run.
        kind: if matches!(rerun, crate::runs::Rerun::Retry { .. }) { Some("retry".into()) } else { (kind != "manual").then_some(kind) },
        scheduled_time: row.get(at + 11),
    };
    RunHead {
        file: row.get(at),
        input: row.get::<_, Option<String>>(at + 1).and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(Value::Null),
        attempt: row.get::<_, i32>(at + 2) as u32,
        targets: super::targets_of(row.get(at + 4)),
        rerun,
        trigger,
        files,
        binding: Binding::from_stored(row.get(at + 3), row.get(at + 5), row.get(at + 6), row.get(at + 8), row.get(at + 9)),
    }
}

/// A pooled connection in a transaction begun by a pushed `BEGIN`. Unless
/// [`InTx::finished`] (committed), it is taken out of the pool when
/// dropped, on an error or a cancelled future, and closed: the server
/// rolls the transaction back, and no one else gets the connection mid-way.
pub(super) struct InTx {
    client: Option<deadpool_postgres::Client>,
}

impl InTx {
    pub(super) fn new(client: deadpool_postgres::Client) -> InTx {
        InTx { client: Some(client) }
    }

    pub(super) fn client(&self) -> &deadpool_postgres::Client {
        self.client.as_ref().expect("held until finished or dropped")
    }

    /// Committed: the connection goes back to the pool.
    pub(super) fn finished(mut self) {
        self.client.take();
    }
}

impl Drop for InTx {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            drop(deadpool_postgres::Client::take(client));
        }
    }
}

/// The columns a run's next attempt starts afresh, for workers to start
/// it (`rerun = $2`: what it runs again, [`crate::runs::Rerun`] as JSON);
/// its followers start after the events recorded so far.
macro_rules! next_attempt {
    () => {
        "attempt = attempt + 1, run_started = false, stop = NULL, main_stop = NULL, ending = NULL, open_steps = 0,
         deadline = NULL, began = now(), rerun = $2, attempt_events = events"
    };
}
pub(super) use next_attempt;

/// `column = ANY(array)`, and between the array's least and greatest
/// (`ty`: its element type), so that PostgreSQL finds the rows by an index
/// on the column (after any column before it, such as `run_id`) whatever it
/// estimates.
///
/// Without the bounds, the plans it keeps for these statements (generic:
/// see `in_run`) looked rows up by `run_id` alone and filtered every row of
/// the run, or scanned the table: it costs `= ANY` of an array it has not
/// seen as ten index descents, and believes a run has a few rows and the
/// queue a few jobs (its statistics lag runs made since the last
/// `ANALYZE`). Every commit of a 500-step chain read the run's 500 `dag`
/// rows four times, and every step's end read every job of the queue
/// (BENCHMARKS.md, "A run's rows by their key"). Join conditions on `dag`
/// (the steps of claimed jobs) are subqueries per row for the same reason.
macro_rules! key_in {
    ($column:literal, $array:literal, $ty:literal) => {
        concat!(
            $column, " = ANY(", $array, ") AND ", $column, " BETWEEN (SELECT min(v) FROM unnest(", $array, "::", $ty,
            "[]) v) AND (SELECT max(v) FROM unnest(", $array, "::", $ty, "[]) v)"
        )
    };
}
pub(super) use key_in;

/// [`key_in`] for steps by index.
macro_rules! idx_in {
    ($array:literal) => {
        key_in!("idx", $array, "int")
    };
}
pub(super) use idx_in;

/// Counts down the dependencies that steps `$2` of run `$1` wait for.
macro_rules! count_down {
    () => {
        concat!("UPDATE dag SET waiting = waiting - 1 WHERE run_id = $1 AND ", idx_in!("$2"))
    };
}

/// The end of a claim: what it returns (the jobs and their step ids),
/// after the common table expressions `also` adds, if any.
macro_rules! claimed {
    ($($also:literal)?) => {
        concat!(
            "
        RETURNING id, run_id, idx, item, attempt, claim, input, input_secrets)",
            $($also,)?
            "
    SELECT c.id, c.run_id, c.idx, c.item, c.attempt, c.claim, c.input, c.input_secrets,
           (SELECT d.step FROM dag d WHERE d.run_id = c.run_id AND d.idx = c.idx)
    FROM c"
        )
    };
}

/// The end of a claim made under its run's lock: `claimed!`, and the
/// steps marked started in the same statement (as [`MARK_STARTED`] does).
macro_rules! claimed_in_run {
    () => {
        claimed!(
            ",
    s AS (UPDATE dag SET first_started = now()
          WHERE run_id = (SELECT min(run_id) FROM c) AND idx = ANY(ARRAY(SELECT idx FROM c))
            AND idx BETWEEN (SELECT min(idx) FROM c) AND (SELECT max(idx) FROM c) AND first_started IS NULL)"
        )
    };
}

/// Marks steps `$2` of run `$1` started (when their first attempt is
/// claimed). Every transaction takes a run's row before its `dag`,
/// `steps` and `jobs` rows: a claim locks its runs first ([`CLAIM_RUNS`]),
/// so that it never holds a step's row or a job while it waits for a run
/// that a commit holds (which may be about to write that row: a deadlock).
const MARK_STARTED: &str = concat!("UPDATE dag SET first_started = now() WHERE run_id = $1 AND ", idx_in!("$2"), " AND first_started IS NULL");

/// Claims up to `$2` ready jobs of run `$5` (whose lock the transaction
/// holds) whose `runs_on` labels are all among `$4`, for worker `$1`,
/// leased for `$3` seconds, and marks their steps started. Returns the
/// jobs and their step ids.
/// Jobs of runs with a step limit (`limited`) are left to [`CLAIM_CHOSEN`],
/// under their run's lock.
const CLAIM: &str = concat!(
    "WITH c AS (
        UPDATE jobs SET state = 'claimed', worker = $1, claim = claim + 1, lease_until = now() + make_interval(secs => $3)
        WHERE id IN (SELECT id FROM jobs WHERE state = 'ready' AND not_before <= now() AND runs_on <@ $4::text[]
                       AND run_id = $5 AND NOT limited
                     ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)",
    claimed_in_run!()
);

/// How many of the oldest ready jobs [`CLAIM_FAIR`] chooses among.
macro_rules! fair_window {
    () => {
        "1024"
    };
}

/// The ready jobs any worker may claim next, in the order [`CLAIM_FAIR`]
/// takes them: `ranked.ids`, after common table expressions that
/// [`CLAIM_RUNS`] and [`CLAIM_FAIR`] share.
///
/// Shared fairly between namespaces: among the oldest ready jobs (a window
/// of [`fair_window`]) whose `runs_on` labels are all among `$1` (and
/// whose run passes `runs`, a condition on `j.run_id`), a namespace's
/// k-th job ranks by k plus the jobs the namespace holds now, so that a
/// namespace with little running goes before one with a flood queued;
/// within a namespace, higher run priority first, then oldest first.
///
/// Namespaces with a step limit: those locked by [`LOCK_CAPPED`] (`$2`,
/// with limits `$3`) in a statement before (so that the jobs they hold
/// are counted under the lock) give no more jobs than they have room for,
/// and none when full (before the window, which they would otherwise
/// fill); the others with a limit give none (another transaction holds
/// them, and wakes the workers when it makes room).
macro_rules! fair_ranked {
    ($runs:literal) => {
        concat!(
            "WITH busy AS (SELECT r.namespace, count(*) AS n FROM jobs b JOIN runs r ON r.id = b.run_id WHERE b.state = 'claimed' GROUP BY r.namespace),
     caps AS (SELECT k.namespace, k.cap - COALESCE(busy.n, 0) AS room FROM unnest($2::text[], $3::int8[]) AS k(namespace, cap)
              LEFT JOIN busy ON busy.namespace = k.namespace),
     shut AS (SELECT namespace FROM caps WHERE room <= 0 UNION ALL SELECT name FROM namespaces WHERE max_steps IS NOT NULL AND name <> ALL($2::text[])),
     cand AS (SELECT j.id, r.namespace, r.priority FROM jobs j JOIN runs r ON r.id = j.run_id
              WHERE j.state = 'ready' AND j.not_before <= now() AND j.runs_on <@ $1::text[] AND NOT j.limited
                AND ",
            $runs,
            " AND r.namespace NOT IN (SELECT namespace FROM shut)
              ORDER BY j.id LIMIT ",
            fair_window!(),
            "),
     scored AS (SELECT c.id, c.priority, COALESCE(busy.n, 0) AS n, caps.room,
                       row_number() OVER (PARTITION BY c.namespace ORDER BY c.priority DESC, c.id) AS k
                FROM cand c LEFT JOIN busy ON busy.namespace = c.namespace LEFT JOIN caps ON caps.namespace = c.namespace),
     ranked AS (SELECT ARRAY(SELECT id FROM scored WHERE room IS NULL OR k <= room ORDER BY n + k, priority DESC, id) AS ids)"
        )
    };
}

/// Locks, in id order, the rows of the runs (any, or run `$4`) whose jobs
/// would be the first `$5` that [`CLAIM_FAIR`] takes (see [`fair_ranked`]),
/// and returns their ids.
///
/// Every transaction takes a run's row before its jobs' (a commit locks
/// its run, then the jobs it recorded; it may claim the run's ready jobs).
/// A claim therefore locks its runs first, and claims only their jobs in
/// a statement after ([`CLAIM_FAIR`]), with a snapshot taken once it holds
/// them. Locking jobs first deadlocked: a job another worker claimed
/// after this statement's snapshot was taken stays locked by this
/// transaction even though it is not claimed (`FOR UPDATE` keeps the lock
/// of a row whose newer version fails the query's conditions), and that
/// worker's commit, holding the run, waited for it while this waited for
/// the run.
const CLAIM_RUNS: &str = concat!(
    fair_ranked!("($4::text IS NULL OR j.run_id = $4)"),
    "
    SELECT id FROM runs WHERE id IN (SELECT p.run_id FROM ranked, unnest(ranked.ids) WITH ORDINALITY AS q(id, ord) JOIN jobs p ON p.id = q.id
                                     ORDER BY q.ord LIMIT $5)
    ORDER BY id FOR NO KEY UPDATE"
);

/// [`CLAIM`] of the ready jobs of runs `$4` (locked by [`CLAIM_RUNS`]) in
/// [`fair_ranked`]'s order: up to `$5`, for worker `$6`, leased for `$7`
/// seconds.
const CLAIM_FAIR: &str = concat!(
    fair_ranked!("j.run_id = ANY($4::text[])"),
    ",
     c AS (
        UPDATE jobs SET state = 'claimed', worker = $6, claim = claim + 1, lease_until = now() + make_interval(secs => $7)
        WHERE id IN (SELECT j.id FROM ranked, unnest(ranked.ids) WITH ORDINALITY AS p(id, ord) JOIN jobs j ON j.id = p.id
                     WHERE j.state = 'ready' ORDER BY p.ord LIMIT $5 FOR UPDATE OF j SKIP LOCKED)",
    claimed!()
);

/// Claims jobs `$3` for worker `$1`, leased for `$2` seconds, as [`CLAIM`]
/// does: the jobs of a run with a step limit, chosen under its lock.
const CLAIM_CHOSEN: &str = concat!(
    "WITH c AS (
        UPDATE jobs SET state = 'claimed', worker = $1, claim = claim + 1, lease_until = now() + make_interval(secs => $2)
        WHERE ",
    key_in!("id", "$3", "int8"),
    " AND state = 'ready'",
    claimed_in_run!()
);

/// Appends events `$2` (JSON bodies) to run `$1`'s stream, numbered after
/// its last.
const APPEND_EVENTS: &str = "WITH r AS (UPDATE runs SET events = events + cardinality($2::text[]) WHERE id = $1 RETURNING events)
    INSERT INTO events (run_id, seq, body)
    SELECT $1, r.events - cardinality($2::text[]) + e.ord::int, e.body FROM r, unnest($2::text[]) WITH ORDINALITY AS e(body, ord)";

pub(super) const NOTIFY: &str = "SELECT pg_notify($1, $2)";

/// Locks the namespace of run `$1` if it has a step limit, and returns the
/// limit: before the run's lock, as [`LOCK_CAPPED`] takes it before jobs'.
const LOCK_NAMESPACE: &str = "SELECT n.max_steps FROM namespaces n
    WHERE n.name = (SELECT namespace FROM runs WHERE id = $1) AND n.max_steps IS NOT NULL FOR UPDATE OF n";

/// How many attempts of run `$1`'s namespace are running (claimed), but
/// for jobs `$2` with claims `$3` (their results are being recorded): only
/// if it has a step limit, and so (a statement after [`LOCK_NAMESPACE`])
/// counted under its lock.
const NAMESPACE_BUSY: &str = "SELECT count(*) FROM jobs j JOIN runs r ON r.id = j.run_id
    WHERE EXISTS (SELECT 1 FROM namespaces n JOIN runs o ON o.namespace = n.name WHERE o.id = $1 AND n.max_steps IS NOT NULL)
      AND j.state = 'claimed' AND r.namespace = (SELECT namespace FROM runs WHERE id = $1)
      AND NOT EXISTS (SELECT 1 FROM unnest($2::int8[], $3::int8[]) AS h(id, claim) WHERE h.id = j.id AND h.claim = j.claim)";

/// Locks the namespaces with a step limit that no other transaction holds
/// (one that does is claiming or recording for it), with their limits.
const LOCK_CAPPED: &str = "SELECT name, max_steps FROM namespaces WHERE max_steps IS NOT NULL ORDER BY name FOR UPDATE SKIP LOCKED";

/// What a run's transaction reads of the run's row as it locks it (by
/// index, in `in_run`).
macro_rules! run_row {
    () => {
        "SELECT status, stop, open_steps, events, run_started, ending, main_stop, attempt, log_bytes, log_lines FROM runs WHERE id = $1"
    };
}

/// Locks run `$1`'s row: every transaction that changes a run takes it first.
const LOCK_RUN: &str = concat!(run_row!(), " FOR UPDATE");

/// [`LOCK_RUN`] for a run to start: none if it started, or if another
/// worker holds it (it is starting it), instead of waiting for that.
const LOCK_RUN_TO_START: &str = concat!(run_row!(), " AND NOT run_started FOR UPDATE SKIP LOCKED");

/// Locks the jobs `$1` whose claim is still `$2` (a result is recorded only
/// by the current claim), with how long ago their steps first started.
const HOLD_JOBS: &str = concat!(
    "SELECT j.id, j.claim, j.attempt, j.lost, j.fuel_used, j.idx,
           (SELECT EXTRACT(EPOCH FROM now() - d.first_started)::float8 FROM dag d WHERE d.run_id = j.run_id AND d.idx = j.idx)
    FROM jobs j JOIN unnest($1::int8[], $2::int8[]) AS c(id, claim) ON j.id = c.id AND j.claim = c.claim
    WHERE j.state = 'claimed' AND ",
    key_in!("j.id", "$1", "int8"),
    " ORDER BY j.id FOR UPDATE OF j"
);

/// How many dependencies steps `$2` of run `$1` still wait for.
const WAITING: &str = concat!("SELECT idx, waiting FROM dag WHERE run_id = $1 AND ", idx_in!("$2"));

/// A claimed job from `… RETURNING id, run_id, idx, item, attempt, claim, input, input_secrets`.
fn claimed_row(r: &tokio_postgres::Row) -> Claimed {
    Claimed {
        id: r.get(0),
        run_id: r.get(1),
        step: r.get::<_, i32>(2) as usize,
        item: r.get::<_, Option<i32>>(3).map(|i| i as usize),
        attempt: r.get::<_, i32>(4) as u32,
        claim: r.get(5),
        input: job_input(r.get(6)),
        input_secrets: job_input_secrets(r.get(7)),
    }
}

/// A job's stored input (secrets masked).
fn job_input(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// Where a job's stored input has masked secrets.
fn job_input_secrets(text: Option<String>) -> Option<SecretSpans> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

/// What a committing worker offers to claim in the same transaction.
#[derive(Debug, Clone)]
pub struct Claimer {
    /// The worker's name.
    pub worker: String,
    /// Its labels (`runs_on` is matched against them).
    pub labels: Vec<String>,
    /// Its free slots (after the attempts being committed).
    pub slots: usize,
    /// How long a claim is its own without a heartbeat.
    pub lease: Duration,
    /// Jobs of the run that this transaction did not queue may be ready
    /// (the worker was told so): look for them too.
    pub others: bool,
}

/// One run's bookkeeping inside a transaction holding its row lock: the
/// run's state machine over the rows of the run.
type RunTx<'a> = RunMachine<'a, PgLedger<'a>>;

/// A run's facts in PostgreSQL rows, read and written inside the
/// transaction that holds the run's row lock ([`Ledger`]).
struct PgLedger<'a> {
    tx: &'a deadpool_postgres::Client,
    run: &'a RunCtx,
    run_id: &'a str,
    /// The run's last event sequence number.
    seq: i32,
    /// Jobs this transaction made claimable: other workers are woken for
    /// those the transaction's own worker did not claim.
    new_jobs: usize,
    /// The soonest a retried job becomes claimable.
    retry_in: Option<Duration>,
    /// Jobs claimed in this transaction for the committing worker.
    claimed: Vec<Claimed>,
    /// Failures of steps that ended in this transaction (for the run's error).
    verdicts: BTreeMap<usize, Option<StepFailure>>,
    /// Writes not sent yet.
    pipe: Pipe,
    /// Jobs whose results this transaction records, locked: by id.
    held: HashMap<i64, Held>,
    /// Seconds since a step first started, as read with its jobs: by step.
    elapsed: HashMap<usize, Option<f64>>,
    /// Steps whose outputs and outcomes were read or ended in this transaction.
    loaded: HashSet<usize>,
    /// Their outputs, as templates read them: `None` skipped (a step that
    /// ended with neither an output nor skipped is absent).
    outputs: BTreeMap<String, Option<Arc<Value>>>,
    /// How steps turned out, as read or as ended in this transaction: by step.
    outcomes: HashMap<usize, core::Outcome>,
    /// Dependencies steps still wait for, as read under the run lock and
    /// counted down since: by step. (Only this run's transactions change them.)
    waiting: HashMap<usize, i32>,
    /// With a step limit on the run's namespace (`namespace set
    /// --max-steps`), held by this transaction: how many more attempts
    /// of the namespace may start now (the attempts whose results this
    /// transaction records count as ended).
    room: Option<usize>,
    /// Outputs of steps that succeeded in an earlier attempt of the run
    /// (secrets put back), once read: by step id.
    kept: Option<HashMap<String, Value>>,
    /// The log the run kept so far, of its `log` quota (its row's).
    log: LogUsage,
}

/// The jobs a transaction records results of: it locks them, and reads
/// what recording needs, with the run's lock in one round trip.
#[derive(Default)]
struct Holding {
    ids: Vec<i64>,
    claims: Vec<i64>,
    /// Steps that results may release.
    dependents: Vec<i32>,
    /// The transaction starts the run: see [`LOCK_RUN_TO_START`].
    starting: bool,
}

impl Holding {
    fn new(jobs: &[&Claimed], run: &RunCtx) -> Holding {
        let plan = &run.ctx.prepared().plan;
        let dependents: BTreeSet<i32> = jobs.iter().flat_map(|j| plan.dependents[j.step].iter().map(|&d| d as i32)).collect();
        Holding {
            ids: jobs.iter().map(|j| j.id).collect(),
            claims: jobs.iter().map(|j| j.claim).collect(),
            dependents: dependents.into_iter().collect(),
            starting: false,
        }
    }
}

/// A claimed job as the store has it, locked by the committing transaction.
struct Held {
    claim: i64,
    attempt: i32,
    lost: i32,
    fuel_used: i64,
}

impl<'a> PgLedger<'a> {
    fn wf(&self) -> &'a crate::workflow::Workflow {
        &self.run.ctx.prepared().plan.workflow
    }

    /// What [`Holding`]'s reads read: the jobs whose results this
    /// transaction records (a job whose claim is no longer current is not
    /// there: its result is discarded), and their dependents' counters.
    fn hold(&mut self, jobs: Vec<tokio_postgres::Row>, waiting: Vec<tokio_postgres::Row>) {
        for r in jobs {
            self.held.insert(r.get(0), Held { claim: r.get(1), attempt: r.get(2), lost: r.get(3), fuel_used: r.get(4) });
            self.elapsed.insert(r.get::<_, i32>(5) as usize, r.get(6));
        }
        for r in waiting {
            self.waiting.insert(r.get::<_, i32>(0) as usize, r.get(1));
        }
    }

    /// A step's output as recorded (secrets masked, where `spans` says),
    /// with this worker's secret values put back; `None` if it cannot be.
    fn recorded_output(&self, output: Option<String>, spans: Option<String>) -> Option<Value> {
        let output = serde_json::from_str::<Value>(&output?).ok()?;
        let spans = spans.and_then(|t| serde_json::from_str::<SecretSpans>(&t).ok());
        self.run.unmask(output, spans).ok()
    }

    /// How long ago step `i` first started.
    async fn duration_of(&mut self, i: usize) -> PgResult<Duration> {
        let elapsed = match self.elapsed.get(&i) {
            Some(&elapsed) => elapsed,
            None => self
                .pipe
                .query(self.tx, "SELECT EXTRACT(EPOCH FROM now() - first_started)::float8 FROM dag WHERE run_id = $1 AND idx = $2", &[&self.run_id, &(i as i32)])
                .await?
                .first()
                .and_then(|r| r.get(0)),
        };
        Ok(Duration::from_secs_f64(elapsed.unwrap_or(0.0).max(0.0)))
    }

    /// Queues an attempt of step `i` (or one of its items), claimable from
    /// `not_before` (Unix seconds; none: now).
    fn queue(&mut self, i: usize, item: Option<usize>, input: &Value, state: &'static str, not_before: Option<f64>) {
        let (masked, spans) = self.run.redactor.value_spans(input);
        let spans = spans.as_ref().map(SecretSpans::to_json);
        self.pipe.queue_job(NewJob {
            run: self.run_id,
            idx: i as i32,
            item: item.map(|k| k as i32),
            state,
            input: text(&masked.to_string()).into_owned(),
            input_secrets: spans,
            runs_on: &self.wf().steps[i].runs_on,
            limited: self.run.step_limit.is_some(),
            not_before,
        });
        self.new_jobs += usize::from(state == "ready");
        // A job for later (a step that waits for its time): the committing
        // worker wakes for it, as for a retry's delay.
        if let Some(at) = not_before.filter(|t| t.is_finite()) {
            self.due_in(Duration::from_secs_f64((at - jiff::Timestamp::now().as_millisecond() as f64 / 1e3).max(0.0)));
        }
    }

    /// A job this transaction queued becomes claimable in `delay`: the
    /// soonest such is [`Outcome::retry_in`].
    fn due_in(&mut self, delay: Duration) {
        self.retry_in = Some(self.retry_in.map_or(delay, |d| d.min(delay)));
    }

    /// Runs `work` of step `i`: its jobs, queued (a `forEach` step's
    /// items beyond its concurrency held until others end). A step that
    /// waits is a job claimable from its wake time, holding no slot until
    /// then; one that waits for a signal with no timeout, only when
    /// `sandflow signal` wakes it (`RunStore::put_signal`).
    fn launch(&mut self, i: usize, Launch { work, wait }: Launch) {
        let not_before = wait.map(|w| match w.until {
            Some(t) => t.as_millisecond() as f64 / 1e3,
            None => f64::INFINITY,
        });
        match work {
            Work::One(input) => self.queue(i, None, &input, "ready", not_before),
            Work::Each { inputs, concurrency } => {
                let count = inputs.len() as i32;
                self.pipe.push("UPDATE dag SET items = $3, items_left = $3 WHERE run_id = $1 AND idx = $2", params![self.run_id.to_string(), i as i32, count]);
                for (k, input) in inputs.iter().enumerate() {
                    self.queue(i, Some(k), input, if k < concurrency { "ready" } else { "held" }, not_before);
                }
            }
        }
    }

    /// The run row's bookkeeping, and notifications: followers, and other
    /// workers for jobs this transaction's worker did not take.
    fn save(&mut self, progress: &Progress) {
        let stop = progress.stop.map(Stop::encode);
        // The row and the followers' notification in one statement.
        self.pipe.push(
            "WITH saved AS (UPDATE runs SET stop = $2, open_steps = $3, events = $4, run_started = $5, log_bytes = $6, log_lines = $7 WHERE id = $1)
             SELECT pg_notify($8, $1)",
            params![
                self.run_id.to_string(),
                stop,
                progress.open as i32,
                self.seq,
                progress.started,
                self.log.bytes as i64,
                self.log.lines as i64,
                EVENTS_CHANNEL
            ],
        );
        // Attempts ending in a namespace with a step limit make room for
        // its jobs held back, of any of its runs.
        let room_made = self.room.is_some() && !self.held.is_empty();
        if self.new_jobs > self.claimed.len() || room_made {
            self.pipe.push(NOTIFY, params![JOBS_CHANNEL, ""]);
        }
    }
}

impl Ledger for PgLedger<'_> {
    type Error = tokio_postgres::Error;

    /// Reads the outputs (secrets put back) and outcomes of the steps not
    /// read or ended in this transaction yet.
    async fn load(&mut self, steps: Vec<usize>) -> PgResult<()> {
        let wanted: BTreeSet<usize> = steps.into_iter().filter(|i| !self.loaded.contains(i)).collect();
        if wanted.is_empty() {
            return Ok(());
        }
        self.loaded.extend(&wanted);
        let wf = self.wf();
        // Both rows by their primary keys: steps by name, dag by index.
        let ids: Vec<&str> = wanted.iter().map(|&i| wf.steps[i].id.as_str()).collect();
        let idx: Vec<i32> = wanted.iter().map(|&i| i as i32).collect();
        let rows = self
            .pipe
            .query(
                self.tx,
                "SELECT s.step, s.state, s.output, s.output_secrets, d.idx, d.blocks, d.outcome
                 FROM unnest($2::text[], $3::int[]) AS x(step, idx)
                 JOIN steps s ON s.run_id = $1 AND s.step = x.step JOIN dag d ON d.run_id = $1 AND d.idx = x.idx",
                &[&self.run_id, &ids, &idx],
            )
            .await?;
        for r in rows {
            let (step, state): (String, String) = (r.get(0), r.get(1));
            // A step that has not ended in this attempt of the run has no
            // output yet (its row may be an earlier attempt's).
            let Some(o) = r.get::<_, Option<String>>(6).and_then(|t| core::Outcome::decode(&t, r.get(5))) else { continue };
            self.outcomes.insert(r.get::<_, i32>(4) as usize, o);
            if state == "skipped" {
                self.outputs.insert(step, None);
                continue;
            }
            // A value this worker cannot rebuild reads as missing: the step
            // reading it fails with a reference error naming it.
            if let Some(v) = self.recorded_output(r.get(2), r.get(3)) {
                self.outputs.insert(step, Some(Arc::new(v)));
            }
        }
        Ok(())
    }

    async fn load_ended(&mut self) -> PgResult<()> {
        let rows = self.pipe.query(self.tx, "SELECT idx, blocks, outcome FROM dag WHERE run_id = $1 AND finished", &[&self.run_id]).await?;
        for r in rows {
            let i = r.get::<_, i32>(0) as usize;
            if let Some(o) = r.get::<_, Option<String>>(2).and_then(|t| core::Outcome::decode(&t, r.get(1))) {
                self.outcomes.entry(i).or_insert(o);
            }
        }
        Ok(())
    }

    fn outputs(&self) -> &dyn crate::expr::Outputs {
        &self.outputs
    }

    fn outcome(&self, i: usize) -> Option<core::Outcome> {
        self.outcomes.get(&i).copied()
    }

    async fn failure(&mut self, i: usize) -> PgResult<Option<StepFailure>> {
        if let Some(f) = self.verdicts.get(&i) {
            return Ok(f.clone());
        }
        let step = self.wf().steps[i].id.as_str();
        let rows = self.pipe.query(self.tx, "SELECT error_kind, error_message FROM steps WHERE run_id = $1 AND step = $2", &[&self.run_id, &step]).await?;
        Ok(rows.first().and_then(|r| {
            let kind = r.get::<_, Option<String>>(0).and_then(|k| FailureKind::from_name(&k))?;
            Some(StepFailure::new(kind, r.get::<_, Option<String>>(1).unwrap_or_default()))
        }))
    }

    async fn failures(&mut self, range: std::ops::Range<usize>) -> PgResult<Vec<(String, StepFailure)>> {
        let rows = self
            .pipe
            .query(
                self.tx,
                "SELECT s.step, s.error_kind, s.error_message FROM steps s JOIN dag d ON d.run_id = s.run_id AND d.step = s.step
                 WHERE s.run_id = $1 AND s.state = 'failed' AND d.idx >= $2 AND d.idx < $3 ORDER BY d.idx",
                &[&self.run_id, &(range.start as i32), &(range.end as i32)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let kind = r.get::<_, Option<String>>(1).and_then(|k| FailureKind::from_name(&k)).unwrap_or(FailureKind::Component);
                (r.get::<_, String>(0), StepFailure::new(kind, r.get::<_, Option<String>>(2).unwrap_or_default()))
            })
            .collect())
    }

    fn step_ended(&mut self, i: usize, outcome: core::Outcome, output: Option<Option<Arc<Value>>>, event: Event) {
        if let Event::StepFinished { error, .. } = &event {
            self.verdicts.insert(i, error.clone());
        }
        self.outcomes.insert(i, outcome);
        self.loaded.insert(i);
        if let Some(output) = output {
            self.outputs.insert(self.wf().steps[i].id.clone(), output);
        }
        self.pipe.step_ended(self.run_id, i as i32, outcome.blocks, outcome.encode());
        self.emit(event);
    }

    async fn kept(&mut self, i: usize) -> PgResult<Option<Kept>> {
        let Some(again) = &self.run.again else { return Ok(None) };
        if again.contains(&i) {
            return Ok(None);
        }
        if self.kept.is_none() {
            let attempt = self.run.attempt as i32;
            let rows = self
                .pipe
                .query(
                    self.tx,
                    "SELECT step, output, output_secrets FROM steps WHERE run_id = $1 AND state = 'succeeded' AND run_attempt < $2",
                    &[&self.run_id, &attempt],
                )
                .await?;
            let mut kept = HashMap::new();
            for r in rows {
                // An output this worker cannot rebuild exactly (a secret it
                // lacks) is not kept: the step runs again.
                if let Some(v) = self.recorded_output(r.get(1), r.get(2)) {
                    kept.insert(r.get::<_, String>(0), v);
                }
            }
            self.kept = Some(kept);
        }
        let step = &self.wf().steps[i].id;
        Ok(self.kept.as_ref().and_then(|k| k.get(step)).cloned().map(Kept::Output))
    }

    fn step_restored(&mut self, i: usize, outcome: core::Outcome, output: Arc<Value>) {
        self.outcomes.insert(i, outcome);
        self.loaded.insert(i);
        self.outputs.insert(self.wf().steps[i].id.clone(), Some(output));
        self.pipe.step_ended(self.run_id, i as i32, false, outcome.encode());
    }

    async fn count_down(&mut self, i: usize) -> PgResult<Vec<usize>> {
        let dependents: BTreeSet<usize> = self.run.ctx.prepared().plan.dependents[i].iter().copied().collect();
        if dependents.is_empty() {
            return Ok(Vec::new());
        }
        let idx: Vec<i32> = dependents.iter().map(|&d| d as i32).collect();
        if dependents.iter().all(|d| self.waiting.contains_key(d)) {
            // Counted here: the run's lock keeps the counters as read.
            self.pipe.push(count_down!(), params![self.run_id.to_string(), idx]);
            let mut ready = Vec::new();
            for d in dependents {
                let waiting = self.waiting.get_mut(&d).expect("checked above");
                *waiting -= 1;
                if *waiting == 0 {
                    ready.push(d);
                }
            }
            return Ok(ready);
        }
        let rows = self
            .pipe
            .query(self.tx, concat!(count_down!(), " RETURNING idx, waiting"), &[&self.run_id, &idx])
            .await?;
        let mut ready = Vec::new();
        for r in &rows {
            let (d, waiting): (i32, i32) = (r.get(0), r.get(1));
            self.waiting.insert(d as usize, waiting);
            if waiting == 0 {
                ready.push(d as usize);
            }
        }
        ready.sort_unstable();
        Ok(ready)
    }

    /// Recorded in the run's tables and appended to its stream (without
    /// the log, which is in its own table).
    fn emit(&mut self, event: Event) {
        let event = if self.run.redactor.is_empty() { event } else { self.run.redactor.event(&event) };
        self.seq += 1;
        self.pipe.record_streamed(self.run_id, self.seq, event);
    }

    async fn in_flight(&mut self) -> PgResult<bool> {
        let rows = self.pipe.query(self.tx, "SELECT EXISTS (SELECT 1 FROM jobs WHERE run_id = $1 AND state <> 'done')", &[&self.run_id]).await?;
        Ok(rows.first().is_some_and(|r| r.get(0)))
    }

    /// Their deadline is kept in the run's row; a cancel asked for before
    /// no longer applies (one asked for from now on interrupts them).
    fn finally_begins(&mut self, main_stop: Option<Stop>, ending: &Value) -> bool {
        let timeout = self.wf().finally_timeout.as_secs_f64();
        self.pipe.push(
            "UPDATE runs SET main_stop = $2, ending = $3, cancel_requested = false, deadline = now() + make_interval(secs => $4) WHERE id = $1",
            params![self.run_id.to_string(), main_stop.map(Stop::encode), ending.to_string(), timeout],
        );
        false
    }

    async fn elapsed(&mut self) -> PgResult<Duration> {
        let began: f64 = self
            .pipe
            .query(self.tx, "SELECT EXTRACT(EPOCH FROM now() - began)::float8 FROM runs WHERE id = $1", &[&self.run_id])
            .await?
            .first()
            .map_or(0.0, |r| r.get(0));
        Ok(Duration::from_secs_f64(began.max(0.0)))
    }

    /// Read from the DAG's rows: a step was decided if it has jobs or
    /// ended; one whose dependencies all ended and that has neither waits.
    async fn lazy_steps(&mut self) -> PgResult<Lazy> {
        let mut lazy = Lazy::new(self.wf().steps.len());
        let rows = self
            .pipe
            .query(
                self.tx,
                "SELECT d.idx, d.waiting = 0, d.finished, EXISTS (SELECT 1 FROM jobs j WHERE j.run_id = d.run_id AND j.idx = d.idx)
                 FROM dag d WHERE d.run_id = $1 ORDER BY d.idx",
                &[&self.run_id],
            )
            .await?;
        for r in rows {
            let (i, ready, finished, jobs): (i32, bool, bool, bool) = (r.get(0), r.get(1), r.get(2), r.get(3));
            let Some(began) = lazy.began.get_mut(i as usize) else { continue };
            *began = finished || jobs;
            if ready && !*began {
                lazy.deferred.push(i as usize);
            }
        }
        Ok(lazy)
    }

    /// A secret this worker lacks reads as a missing key: say so.
    fn refused(&self, f: StepFailure) -> StepFailure {
        match &self.run.missing_secrets {
            Some(why) if f.kind == FailureKind::Reference && f.message.contains("secrets.") => StepFailure::new(FailureKind::Reference, why.clone()).not_retryable(),
            _ => f,
        }
    }
}

impl<'a> RunMachine<'a, PgLedger<'a>> {
    /// The run's first transaction: its DAG, then its root steps decided.
    async fn begin(&mut self) -> PgResult<bool> {
        if self.progress.started || !self.progress.running {
            return Ok(false);
        }
        let plan = self.plan;
        let n = plan.workflow.steps.len();
        let idx: Vec<i32> = (0..n as i32).collect();
        let waiting: Vec<i32> = plan.deps.iter().map(|d| d.len() as i32).collect();
        let ids: Vec<String> = plan.workflow.steps.iter().map(|s| s.id.clone()).collect();
        let timeout = plan.workflow.timeout.map(|t| t.as_secs_f64());
        let run_id = self.ledger.run_id.to_string();
        self.ledger.pipe.push(
            "INSERT INTO dag (run_id, idx, step, waiting) SELECT $1, d.idx, d.step, d.waiting FROM unnest($2::int[], $3::text[], $4::int[]) AS d(idx, step, waiting)",
            params![run_id.clone(), idx, ids, waiting],
        );
        self.ledger.pipe.push("UPDATE runs SET deadline = now() + make_interval(secs => $2) WHERE id = $1 AND $2::float8 IS NOT NULL", params![run_id, timeout]);
        self.start();
        self.advance().await?;
        Ok(true)
    }

    /// Claims this run's ready jobs for the committing worker, as
    /// [`PgStore::claim`] does, under the run lock already held.
    async fn claim_own(&mut self, claimer: &Claimer) -> PgResult<()> {
        let l = &mut self.ledger;
        // The namespace's step limit, under its lock.
        let slots = l.room.map_or(claimer.slots, |room| claimer.slots.min(room));
        if slots == 0 || !self.progress.running {
            return Ok(());
        }
        let wf = l.wf();
        // With a step limit: the steps running now, on any worker (a step
        // running may start more of its `forEach` items).
        let mut running: Option<(usize, BTreeSet<i32>)> = None;
        if let Some(limit) = l.run.step_limit {
            let rows = l.pipe.query(l.tx, "SELECT DISTINCT idx FROM jobs WHERE run_id = $1 AND state = 'claimed'", &[&l.run_id]).await?;
            running = Some((limit, rows.iter().map(|r| r.get(0)).collect()));
        }
        let mut may_start = |idx: i32| match &mut running {
            None => true,
            Some((limit, steps)) => steps.contains(&idx) || (steps.len() < *limit && steps.insert(idx)),
        };
        // Jobs this transaction queued are taken as they are inserted;
        // older ones only if some may be ready (`claimer.others`).
        let mine = l.pipe.claim_queued(&claimer.worker, claimer.lease.as_secs_f64(), slots, |idx| {
            wf.steps[idx as usize].runs_on.iter().all(|label| claimer.labels.contains(label)) && may_start(idx)
        });
        let mut claimed = Vec::new();
        let left = slots - mine.len();
        if left > 0 && (claimer.others || l.pipe.sent_ready()) {
            let lease = claimer.lease.as_secs_f64();
            let rows = if l.run.step_limit.is_none() {
                let limit = left as i64;
                l.pipe.query(l.tx, CLAIM, &[&claimer.worker, &limit, &lease, &claimer.labels, &l.run_id]).await?
            } else {
                let candidates = l
                    .pipe
                    .query(
                        l.tx,
                        "SELECT id, idx FROM jobs WHERE run_id = $1 AND state = 'ready' AND not_before <= now() AND runs_on <@ $2::text[] ORDER BY id FOR UPDATE SKIP LOCKED",
                        &[&l.run_id, &claimer.labels],
                    )
                    .await?;
                let chosen: Vec<i64> = candidates.iter().filter(|r| may_start(r.get(1))).take(left).map(|r| r.get(0)).collect();
                l.pipe.query(l.tx, CLAIM_CHOSEN, &[&claimer.worker, &lease, &chosen]).await?
            };
            claimed = rows.iter().map(claimed_row).collect();
            claimed.sort_by_key(|c| c.id);
        }
        if !mine.is_empty() {
            let idx: Vec<i32> = mine.iter().map(|m| m.idx).collect();
            l.pipe.push(MARK_STARTED, params![l.run_id.to_string(), idx]);
        }
        for m in mine {
            claimed.push(Claimed {
                // Known once the insert is sent: see `in_run`.
                id: 0,
                run_id: l.run_id.to_string(),
                step: m.idx as usize,
                item: m.item.map(|k| k as usize),
                attempt: 1,
                claim: 1,
                input: job_input(&m.input),
                input_secrets: job_input_secrets(m.input_secrets),
            });
        }
        for c in &claimed {
            let worker = Some(claimer.worker.clone());
            let event = Event::StepStarted { run_id: l.run_id.to_string(), step: wf.steps[c.step].id.clone(), attempt: c.attempt, item: c.item, worker };
            l.emit(event);
        }
        l.claimed = claimed;
        Ok(())
    }

    /// Decides the ready steps (reading what they need in one round trip)
    /// and queues the work of those that run. Steps left when the run
    /// halts end when it settles.
    async fn drain(&mut self) -> PgResult<()> {
        // A StepFlow flow's steps run only when needed (see `demand`).
        self.apply_demand().await?;
        while !self.ready.is_empty() {
            if self.halted() {
                return Ok(());
            }
            self.prefetch().await?;
            for i in std::mem::take(&mut self.ready) {
                if self.halted() {
                    break;
                }
                if !self.admit(i) {
                    continue;
                }
                if let Some(work) = self.decide(i).await? {
                    self.ledger.launch(i, work);
                }
            }
            self.apply_demand().await?;
        }
        Ok(())
    }

    /// Moves the run on as far as it goes: ready steps decided, queued
    /// work of a stopped run dropped, steps that never start settled, the
    /// `finally` steps begun, the run ended.
    async fn advance(&mut self) -> PgResult<()> {
        loop {
            self.drain().await?;
            if self.progress.running && self.progress.started && matches!(self.progress.stop, Some(Stop::Cancelled | Stop::TimedOut)) {
                self.drop_queued(false).await?;
                self.drain().await?;
            } else if self.progress.running && self.progress.started && self.halted() {
                // A failure stops the run: steps that wait never wake (as
                // in a run in one process); other decided work goes on.
                self.drop_queued(true).await?;
            }
            match self.settle().await? {
                Settled::FinallyBegan => continue,
                Settled::Waiting => return Ok(()),
                Settled::Ended => {
                    let end = self.end().await?;
                    self.finish_run(end).await?;
                    return Ok(());
                }
            }
        }
    }

    /// A claimed attempt ended. Returns whether its result was recorded.
    async fn finished(&mut self, f: Finished) -> PgResult<bool> {
        let Finished { job, result, fuel_used, log, cached } = f;
        let Some(Held { attempt, lost, fuel_used: fuel_before, .. }) = self.ledger.held.remove(&job.id).filter(|h| h.claim == job.claim) else {
            tracing::info!("run {}: a late result of job {} (claim {}) is discarded", self.ledger.run_id, job.id, job.claim);
            return Ok(false);
        };
        let wf = &self.plan.workflow;
        let decl = &wf.steps[job.step];
        // A worker interrupts its steps when it sees the run cancelled or
        // out of time, possibly before any transaction said which: ask now,
        // so a timeout is not taken for a cancel.
        if matches!(&result, Err(f) if f.kind == FailureKind::Cancelled) {
            self.check_stop().await?;
        }
        if let Err(failure) = &result {
            let cancelled = matches!(self.progress.stop, Some(Stop::Cancelled | Stop::TimedOut)) || !self.progress.running;
            if let Some(delay) = core::retry_after(decl, wf, failure, (attempt - lost) as u32, cancelled) {
                let l = &mut self.ledger;
                l.pipe.push(
                    "UPDATE jobs SET state = 'ready', attempt = attempt + 1, worker = NULL, lease_until = NULL,
                     fuel_used = fuel_used + $2, not_before = now() + make_interval(secs => $3) WHERE id = $1",
                    params![job.id, fuel_used as i64, delay.as_secs_f64()],
                );
                let event = Event::StepRetrying {
                    run_id: l.run_id.to_string(),
                    step: decl.id.clone(),
                    attempt: job.attempt,
                    item: job.item,
                    error: failure.clone(),
                    delay,
                    fuel_used,
                };
                l.emit(event);
                l.due_in(delay);
                if delay.is_zero() {
                    l.new_jobs += 1;
                }
                return Ok(true);
            }
        }
        let total_fuel = fuel_before + fuel_used as i64;
        // The attempt's log counts against the run's `log` quota here, under
        // the run's lock, whichever worker ran it (as `RunMeter` counts a
        // local run's): only the last attempt's is kept.
        let log = self.ledger.log.keep(&wf.quota.resolve(Quota::RUN), log);
        if job.item.is_none() {
            self.ledger.pipe.delete_job(job.id);
            let duration = self.ledger.duration_of(job.step).await?;
            let tally = Tally {
                attempts: attempt as u32,
                fuel_used: total_fuel as u64,
                duration,
                log,
                input: Some(job.input),
                last_fuel: Some(fuel_used),
                items: None,
                cached,
            };
            self.finish(job.step, Ending::Ran(result), tally).await?;
            self.drain().await?;
            return Ok(true);
        }
        // A `forEach` item: kept until every started item has ended.
        let l = &mut self.ledger;
        let (value, error) = match &result {
            Ok(v) => {
                let (masked, spans) = l.run.redactor.value_spans(v);
                (Some((masked.to_string(), spans.map(|s| s.to_json()))), None)
            }
            Err(e) => (None, Some(serde_json::to_string(&l.run.redactor.failure(e)).expect("failures serialize"))),
        };
        let log_json = serde_json::to_string(&log).expect("logs serialize");
        let (result_text, result_secrets) = value.unzip();
        l.pipe.push(
            "UPDATE jobs SET state = 'done', worker = NULL, lease_until = NULL, fuel_used = $2, result = $3, result_secrets = $4, error = $5, log = $6 WHERE id = $1",
            params![job.id, total_fuel, result_text, result_secrets.flatten(), error, text(&log_json).into_owned()],
        );
        let idx = job.step as i32;
        // An item that fails the step: the held ones never start, and end
        // with it.
        let mut ended = 1;
        if Items::fails_step(decl, &result) {
            let dropped = l.pipe.query(l.tx, "DELETE FROM jobs WHERE run_id = $1 AND idx = $2 AND state = 'held' RETURNING id", &[&l.run_id, &idx]).await?;
            ended += dropped.len() as i32;
        } else {
            let promoted = l
                .pipe
                .query(
                    l.tx,
                    "UPDATE jobs SET state = 'ready' WHERE id = (SELECT id FROM jobs WHERE run_id = $1 AND idx = $2 AND state = 'held' ORDER BY item LIMIT 1) RETURNING id",
                    &[&l.run_id, &idx],
                )
                .await?;
            l.new_jobs += promoted.len();
        }
        self.item_ended(job.step, ended, None).await.map(|()| true)
    }

    /// `count` items of `forEach` step `i` ended (`extra`: how those that
    /// never ran ended). When none is left the step ends, its items'
    /// results gathered in item order.
    async fn item_ended(&mut self, i: usize, count: i32, extra: Option<(usize, StepFailure)>) -> PgResult<()> {
        let idx = i as i32;
        let l = &mut self.ledger;
        let rows = l
            .pipe
            .query(l.tx, "UPDATE dag SET items_left = items_left - $3 WHERE run_id = $1 AND idx = $2 RETURNING items_left, items", &[&l.run_id, &idx, &count])
            .await?;
        let Some(row) = rows.first() else { return Ok(()) };
        let (left, total): (i32, i32) = (row.get(0), row.get(1));
        if left > 0 {
            return Ok(());
        }
        let decl = &self.plan.workflow.steps[i];
        let mut items = Items::new(total as usize);
        let rows = l
            .pipe
            .query(
                l.tx,
                "SELECT item, attempt, fuel_used, result, result_secrets, error, log, input, input_secrets FROM jobs WHERE run_id = $1 AND idx = $2 AND state = 'done' ORDER BY item",
                &[&l.run_id, &idx],
            )
            .await?;
        let mut tally = Tally::default();
        // Each item's input, as it ran (the items that never ran: null).
        let mut inputs = vec![Value::Null; total as usize];
        for r in &rows {
            let k = r.get::<_, i32>(0) as usize;
            tally.attempts += r.get::<_, i32>(1) as u32;
            tally.fuel_used += r.get::<_, i64>(2) as u64;
            if let Some(l) = r.get::<_, Option<String>>(6).and_then(|t| serde_json::from_str::<StepLog>(&t).ok()) {
                tally.log.lines.extend(l.lines);
                tally.log.dropped_bytes += l.dropped_bytes;
            }
            if let Some(slot) = inputs.get_mut(k) {
                let input = job_input(r.get(7));
                *slot = l.run.unmask(input.clone(), job_input_secrets(r.get(8))).unwrap_or(input);
            }
            let result = match (r.get::<_, Option<String>>(3), r.get::<_, Option<String>>(5)) {
                (Some(v), _) => {
                    let spans = r.get::<_, Option<String>>(4).and_then(|t| serde_json::from_str::<SecretSpans>(&t).ok());
                    l.run.unmask(serde_json::from_str(&v).unwrap_or(Value::Null), spans)
                }
                (None, Some(e)) => Err(serde_json::from_str::<StepFailure>(&e).unwrap_or_else(|e| StepFailure::new(FailureKind::Component, e.to_string()))),
                (None, None) => Ok(Value::Null),
            };
            items.record(decl, k, result);
        }
        if let Some((k, failure)) = extra {
            items.record(decl, k, Err(failure));
        }
        l.pipe.push("DELETE FROM jobs WHERE run_id = $1 AND idx = $2", params![l.run_id.to_string(), idx]);
        tally.items = Some(items.counts());
        tally.input = Some(Value::Array(inputs));
        tally.duration = l.duration_of(i).await?;
        self.finish(i, Ending::Ran(items.result()), tally).await?;
        self.drain().await
    }

    /// Jobs whose worker stopped heartbeating go back to the queue as a new
    /// attempt (not counted against `max_attempts`), or fail the step after
    /// [`MAX_LOST`] losses.
    async fn reap(&mut self) -> PgResult<()> {
        let l = &mut self.ledger;
        let rows = l
            .pipe
            .query(
                l.tx,
                "SELECT id, idx, item, attempt, lost, worker, claim, fuel_used, input, input_secrets FROM jobs WHERE run_id = $1 AND state = 'claimed' AND lease_until < now() ORDER BY id FOR UPDATE",
                &[&l.run_id],
            )
            .await?;
        for r in rows {
            let (id, idx, item, attempt, lost, worker, claim): (i64, i32, Option<i32>, i32, i32, Option<String>, i64) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6));
            self.ledger.held.insert(id, Held { claim, attempt, lost, fuel_used: r.get(7) });
            let worker = worker.unwrap_or_default();
            let step = self.plan.workflow.steps[idx as usize].id.clone();
            let message = format!("worker lost: {worker} stopped renewing its lease on this attempt");
            if lost + 1 >= MAX_LOST {
                let failure = StepFailure::new(
                    FailureKind::Lost,
                    format!("{message}; {} attempts lost their worker, so the step fails (it may be what stops them)", lost + 1),
                )
                .not_retryable();
                let job = Claimed {
                    id,
                    run_id: self.ledger.run_id.to_string(),
                    step: idx as usize,
                    item: item.map(|k| k as usize),
                    attempt: attempt as u32,
                    claim,
                    input: job_input(r.get(8)),
                    input_secrets: job_input_secrets(r.get(9)),
                };
                self.finished(Finished { job, result: Err(failure), fuel_used: 0, log: StepLog::default(), cached: None }).await?;
                continue;
            }
            let l = &mut self.ledger;
            l.held.remove(&id);
            l.pipe.push(
                "UPDATE jobs SET state = 'ready', attempt = attempt + 1, lost = lost + 1, worker = NULL, lease_until = NULL, not_before = now() WHERE id = $1",
                params![id],
            );
            let error = StepFailure::new(FailureKind::Lost, message);
            let event = Event::StepRetrying {
                run_id: l.run_id.to_string(),
                step,
                attempt: attempt as u32,
                item: item.map(|k| k as usize),
                error,
                delay: Duration::ZERO,
                // A lost attempt's fuel is not known.
                fuel_used: 0,
            };
            l.emit(event);
            l.new_jobs += 1;
        }
        Ok(())
    }

    /// A cancel request or a passed deadline stops the run: no step starts
    /// any more and queued ones are dropped (running ones are interrupted
    /// by their workers).
    async fn check_stop(&mut self) -> PgResult<()> {
        if !self.progress.running || !Stop::cancel_applies(self.progress.stop) {
            return Ok(());
        }
        let l = &mut self.ledger;
        let rows = l.pipe.query(l.tx, "SELECT cancel_requested, COALESCE(deadline < now(), false) FROM runs WHERE id = $1", &[&l.run_id]).await?;
        let Some(row) = rows.first() else { return Ok(()) };
        let (cancel, late): (bool, bool) = (row.get(0), row.get(1));
        if !(late && self.time_out()) && cancel {
            self.cancel();
        }
        Ok(())
    }

    /// Queued work of a cancelled run never starts: a step waiting to
    /// retry ends cancelled, as do `forEach` items not started.
    /// Drops the run's queued jobs (`waiting`: only those of steps that
    /// wait for their first attempt's time or a signal), ending their steps.
    async fn drop_queued(&mut self, waiting: bool) -> PgResult<()> {
        let l = &mut self.ledger;
        let dropped = l
            .pipe
            .query(
                l.tx,
                // Jobs a worker is claiming right now are left to it: it
                // sees the run stopped and interrupts them.
                "WITH d AS (DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE run_id = $1 AND state IN ('ready', 'held')
                    AND (NOT $2 OR (attempt = 1 AND item IS NULL AND not_before > now())) FOR UPDATE SKIP LOCKED)
                 RETURNING idx, item, attempt) SELECT * FROM d ORDER BY idx, item",
                &[&l.run_id, &waiting],
            )
            .await?;
        let mut by_step: BTreeMap<usize, (i32, Option<usize>, i32)> = BTreeMap::new();
        for r in &dropped {
            let (idx, item, attempt): (i32, Option<i32>, i32) = (r.get(0), r.get(1), r.get(2));
            let e = by_step.entry(idx as usize).or_insert((0, item.map(|k| k as usize), attempt));
            e.0 += 1;
        }
        for (i, (count, first_item, attempt)) in by_step {
            match first_item {
                Some(k) => {
                    let failure = StepFailure::new(FailureKind::Cancelled, "the run was cancelled before this item started");
                    self.item_ended(i, count, Some((k, failure))).await?;
                }
                None if attempt > 1 => {
                    let failure = StepFailure::new(FailureKind::Cancelled, "cancelled while waiting to retry");
                    let duration = self.ledger.duration_of(i).await?;
                    let tally = Tally { attempts: (attempt - 1) as u32, duration, ..Tally::default() };
                    self.finish(i, Ending::Ran(Err(failure)), tally).await?;
                }
                // Never started (a step that waited included): ended with
                // the other unstarted steps.
                None => {}
            }
        }
        Ok(())
    }
}

/// Calls `wake` on each notification on `channel` (and once after each
/// reconnect, since notifications may have been missed), over a connection
/// of its own that is re-established with backoff when lost, until `stop`.
pub async fn listen_with(store: std::sync::Arc<PgStore>, channel: &'static str, wake: impl Fn(&str) + Send + 'static, stop: crate::sandbox::CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        match store.listen(channel).await {
            Ok((client, mut notifications)) => {
                backoff = Duration::from_millis(100);
                // Notifications may have been missed: anything may have happened.
                wake("");
                loop {
                    tokio::select! {
                        n = notifications.recv() => match n {
                            Some(payload) => wake(&payload),
                            None => break,
                        },
                        _ = stop.cancelled() => return,
                    }
                }
                drop(client);
                tracing::warn!("LISTEN {channel}: the connection was lost; reconnecting");
            }
            Err(e) => tracing::warn!("LISTEN {channel}: {e}; retrying in {backoff:?}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
