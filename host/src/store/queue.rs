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
//! gap-free sequence numbers (`runs follow` reads them in order).
//!
//! The decisions themselves are [`crate::exec::core`]'s, the same the
//! in-process dispatcher makes; this module is bookkeeping only.
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
use crate::exec::core::{self, Decision, Ending, ItemCounts, Items, Stop, Verdict, Work};
use crate::exec::{Event, Redactor, RunContext, RunState, SecretSpans, StepState, unmask};
use crate::failure::{FailureKind, StepFailure};
use crate::sandbox::{StepLog, sha256_hex};
use deadpool_postgres::GenericClient;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

/// The channel idle workers listen on: a job became ready, or a run was submitted.
pub const JOBS_CHANNEL: &str = "sandflow_jobs";
/// The channel followers listen on; the payload is the run id.
pub const EVENTS_CHANNEL: &str = "sandflow_events";

/// How many times a step attempt may lose its worker before the step fails.
pub const MAX_LOST: i32 = 3;

type PgResult<T> = Result<T, tokio_postgres::Error>;

/// A run's files: its workflow files and components, by path as the
/// workflow names them.
pub type RunFiles = BTreeMap<PathBuf, Vec<u8>>;

/// What a transaction on a run did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// It changed the run (started it, recorded a result).
    pub done: bool,
    /// Jobs it made claimable now.
    pub new_jobs: usize,
    /// The soonest a retried job becomes claimable, if one was retried.
    pub retry_in: Option<Duration>,
    /// Jobs claimed for the committing worker in the same transaction.
    pub claimed: Vec<Claimed>,
}

/// A job a worker claimed.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub run_id: String,
    pub step: usize,
    pub item: Option<usize>,
    /// The attempt number this claim runs (shown in events).
    pub attempt: u32,
    /// The claim's token: its result is recorded only while it is current.
    pub claim: i64,
    /// The input, with secrets masked, and where.
    pub input: Value,
    pub input_secrets: Option<SecretSpans>,
}

/// How a claimed job's attempt ended.
#[derive(Debug, Clone)]
pub struct Finished {
    pub job: Claimed,
    pub result: Result<Value, StepFailure>,
    pub fuel_used: u64,
    pub log: StepLog,
    /// The run whose stored result was reused (`cache:`).
    pub cached: Option<String>,
}

/// What a worker knows of a run it works on: loaded once per run.
pub struct RunCtx {
    pub ctx: RunContext,
    pub input: Value,
    pub redactor: Redactor,
    /// Set when this worker lacks secrets the workflow reads: why.
    pub missing_secrets: Option<String>,
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
    pub file: String,
    pub input: Value,
    pub attempt: u32,
    pub concurrency: Option<usize>,
    /// `--target`: the steps the run is limited to.
    pub targets: Vec<String>,
    pub files: RunFiles,
}

impl PgStore {
    /// Records a run for workers to run: the run, and every file it needs
    /// (each file's bytes once per content, shared by runs). A worker
    /// starts it; `concurrency` overrides the workflow's for `forEach` items.
    pub async fn submit(&self, run: &NewRun, files: &RunFiles, concurrency: Option<usize>) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
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
        let concurrency = concurrency.map(|n| n.min(i32::MAX as usize) as i32);
        tx.execute(
            "INSERT INTO runs (id, workflow, file, sha256, input, status, attempt, started_at, queued, concurrency, targets)
             VALUES ($1, $2, $3, $4, $5, 'running', 1, $6, true, $7, $8)",
            &[&run.id, &run.workflow, &run.file, &run.sha256, &run.input.to_string(), &now(), &concurrency, &super::targets_text(&run.targets)],
        )
        .await
        .map_err(db)?;
        for (hash, path, _) in &hashes {
            let path = path.display().to_string();
            tx.execute("INSERT INTO run_files (run_id, path, sha256) VALUES ($1, $2, $3)", &[&run.id, &path, hash]).await.map_err(db)?;
        }
        tx.execute("SELECT pg_notify($1, '')", &[&JOBS_CHANNEL]).await.map_err(db)?;
        tx.commit().await.map_err(db)
    }

    /// What a worker needs to load a queued run: its file, input and files,
    /// each checked against its SHA-256.
    pub async fn run_head(&self, run_id: &str) -> Result<RunHead, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT file, input, attempt, concurrency, targets FROM runs WHERE id = $1", &[&run_id])
            .await
            .map_err(db)?
            .ok_or_else(|| StoreError::UnknownRun(run_id.to_string()))?;
        let rows = client
            .query("SELECT rf.path, rf.sha256, f.bytes FROM run_files rf JOIN files f ON f.sha256 = rf.sha256 WHERE rf.run_id = $1", &[&run_id])
            .await
            .map_err(db)?;
        let mut files = RunFiles::new();
        for r in &rows {
            let (path, hash, bytes): (String, String, Vec<u8>) = (r.get(0), r.get(1), r.get(2));
            if sha256_hex(&bytes) != hash {
                return Err(StoreError::Backend(format!("run {run_id}: the stored copy of {path} does not match its SHA-256 {hash}")));
            }
            files.insert(PathBuf::from(path), bytes);
        }
        Ok(RunHead {
            file: row.get(0),
            input: row.get::<_, Option<String>>(1).and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(Value::Null),
            attempt: row.get::<_, i32>(2) as u32,
            concurrency: row.get::<_, Option<i32>>(3).map(|n| n.max(1) as usize),
            targets: super::targets_of(row.get(4)),
            files,
        })
    }

    /// Queued runs no worker has started yet (oldest first).
    pub async fn runs_to_start(&self, limit: i64) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT id FROM runs WHERE queued AND NOT run_started AND status = 'running' ORDER BY seq LIMIT $1", &[&limit])
            .await
            .map_err(db)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Starts a queued run: its DAG rows, its first ready steps, of which
    /// `claimer` takes what fits its slots. Does nothing if another worker
    /// started it first.
    pub async fn start_run(&self, run_id: &str, run: &RunCtx, claimer: Claimer) -> Result<Outcome, StoreError> {
        self.in_run(run_id, run, &Holding::default(), |t| {
            Box::pin(async move {
                let started = t.start().await?;
                t.claim_own(&claimer).await?;
                Ok(started)
            })
        })
        .await
    }

    /// Claims up to `limit` ready jobs for `worker`, leased for `lease`:
    /// those whose `runs_on` labels are all among `labels`.
    pub async fn claim(&self, worker: &str, labels: &[String], limit: i64, lease: Duration) -> Result<Vec<Claimed>, StoreError> {
        if limit <= 0 {
            return Ok(Vec::new());
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let mut pipe = Pipe::default();
        let rows = pipe.query(&tx, CLAIM, &[&worker, &limit, &lease.as_secs_f64(), &labels, &None::<&str>]).await.map_err(db)?;
        let mut claimed: Vec<(Claimed, String)> = rows.iter().map(|r| (claimed_row(r), r.get(8))).collect();
        claimed.sort_by(|(a, _), (b, _)| (&a.run_id, a.id).cmp(&(&b.run_id, b.id)));
        // `StepStarted` events, numbered in each run's order, runs in id
        // order (the order their rows are locked in).
        for group in claimed.chunk_by(|(a, _), (b, _)| a.run_id == b.run_id) {
            let run_id = group[0].0.run_id.clone();
            let bodies: Vec<String> = group
                .iter()
                .map(|(c, step)| event_body(&Event::StepStarted { run_id: run_id.clone(), step: step.clone(), attempt: c.attempt, item: c.item }))
                .collect();
            pipe.push(APPEND_EVENTS, params![run_id.clone(), bodies]);
            pipe.push(NOTIFY, params![EVENTS_CHANNEL, run_id]);
        }
        pipe.send(&tx).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        let claimed = claimed.into_iter().map(|(c, _)| c).collect();
        Ok(claimed)
    }

    /// Extends the leases of `jobs` still claimed by `worker`.
    pub async fn heartbeat(&self, worker: &str, jobs: &[i64], lease: Duration) -> Result<u64, StoreError> {
        if jobs.is_empty() {
            return Ok(0);
        }
        let client = self.client().await?;
        client
            .execute(
                "UPDATE jobs SET lease_until = now() + make_interval(secs => $3) WHERE id = ANY($1) AND worker = $2 AND state = 'claimed'",
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
                t.settle().await?;
                t.claim_own(&claimer).await?;
                Ok(any)
            })
        })
        .await
    }

    /// Runs whose claimed jobs' leases expired, whose cancel was asked for,
    /// or whose timeout passed: each needs a look by some worker.
    pub async fn runs_needing_care(&self) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT DISTINCT run_id FROM jobs WHERE state = 'claimed' AND lease_until < now()
                 UNION SELECT id FROM runs WHERE queued AND run_started AND status = 'running'
                   AND ((stop IS NULL OR stop LIKE 'failed:%' OR stop LIKE 'failing:%') AND (cancel_requested OR deadline < now()))",
                &[],
            )
            .await
            .map_err(db)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Looks after one run: puts back jobs whose worker was lost, stops it
    /// when cancelled or out of time, ends it if nothing is left to run.
    pub async fn care(&self, run_id: &str, run: &RunCtx) -> Result<Outcome, StoreError> {
        self.in_run(run_id, run, &Holding::default(), |t| {
            Box::pin(async move {
                t.reap().await?;
                t.check_stop().await?;
                t.settle().await?;
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
            pipe.record(&event);
            pipe.append(run_id, seq, &event);
            pipe.push("UPDATE runs SET events = $2, run_started = true WHERE id = $1", params![run_id.to_string(), seq]);
            pipe.push("DELETE FROM jobs WHERE run_id = $1 AND state <> 'claimed'", params![run_id.to_string()]);
            pipe.push(NOTIFY, params![EVENTS_CHANNEL, run_id.to_string()]);
            pipe.send(&tx).await.map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    /// A connection listening on `channel`: a message for each notification,
    /// until the connection is lost.
    pub async fn listen(&self, channel: &str) -> Result<(tokio_postgres::Client, tokio::sync::mpsc::UnboundedReceiver<()>), StoreError> {
        let (client, mut connection) = self.config.connect(tokio_postgres::NoTls).await.map_err(db)?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                match message {
                    Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                        if tx.send(()).is_err() {
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

    /// Whether a run is run by workers.
    pub async fn is_queued(&self, run_id: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let row = client.query_opt("SELECT queued FROM runs WHERE id = $1", &[&run_id]).await.map_err(db)?;
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
        let lock: [&(dyn ToSql + Sync); 1] = [&run_id];
        let jobs: [&(dyn ToSql + Sync); 2] = [&held.ids, &held.claims];
        let waiting: [&(dyn ToSql + Sync); 2] = [&run_id, &held.dependents];
        let mut reads: Vec<Read> = vec![(LOCK_RUN, &lock)];
        if !held.ids.is_empty() {
            reads.push((HOLD_JOBS, &jobs));
            reads.push((WAITING, &waiting));
        }
        let mut reads = pipe.queries(tx, &reads).await.map_err(db)?.into_iter();
        let rows = reads.next().unwrap_or_default();
        let Some(row) = rows.first() else {
            return Err(StoreError::UnknownRun(run_id.to_string()));
        };
        let status: String = row.get(0);
        let mut t = RunTx {
            tx,
            run,
            run_id,
            running: status == "running",
            started: row.get(4),
            stop: row.get::<_, Option<String>>(1).as_deref().and_then(Stop::decode),
            ending: row.get::<_, Option<String>>(5).and_then(|t| serde_json::from_str(&t).ok()),
            main_stop: row.get::<_, Option<String>>(6).as_deref().and_then(Stop::decode),
            open_steps: row.get(2),
            seq: row.get(3),
            new_jobs: 0,
            retry_in: None,
            claimed: Vec::new(),
            verdicts: BTreeMap::new(),
            pipe,
            held: HashMap::new(),
            elapsed: HashMap::new(),
            outputs: HashMap::new(),
            outcomes: HashMap::new(),
            waiting: HashMap::new(),
        };
        t.hold(reads.next().unwrap_or_default(), reads.next().unwrap_or_default());
        let done = body(&mut t).await.map_err(db)?;
        t.save();
        t.pipe.send(tx).await.map_err(db)?;
        // COMMIT on its own: measured, it is faster than in the same burst
        // as the writes (1.3 ms against 2.2 ms for a chain step's commit).
        tx.batch_execute("COMMIT").await.map_err(db)?;
        let pipe = &t.pipe;
        t.claimed.retain_mut(|c| {
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
        let outcome = Outcome { done, new_jobs: t.new_jobs, retry_in: t.retry_in, claimed: std::mem::take(&mut t.claimed) };
        drop(t);
        conn.finished();
        Ok(outcome)
    }
}

/// A pooled connection in a transaction begun by a pushed `BEGIN`. Unless
/// [`InTx::finished`] (committed), it is taken out of the pool when
/// dropped, on an error or a cancelled future, and closed: the server
/// rolls the transaction back, and no one else gets the connection mid-way.
struct InTx {
    client: Option<deadpool_postgres::Client>,
}

impl InTx {
    fn new(client: deadpool_postgres::Client) -> InTx {
        InTx { client: Some(client) }
    }

    fn client(&self) -> &deadpool_postgres::Client {
        self.client.as_ref().expect("held until finished or dropped")
    }

    /// Committed: the connection goes back to the pool.
    fn finished(mut self) {
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

/// Claims up to `$2` ready jobs (of run `$5`, or any) whose `runs_on`
/// labels are all among `$4`, for worker `$1`, leased for `$3` seconds,
/// and marks their steps started. Returns the jobs and their step ids.
const CLAIM: &str = "WITH c AS (
        UPDATE jobs SET state = 'claimed', worker = $1, claim = claim + 1, lease_until = now() + make_interval(secs => $3)
        WHERE id IN (SELECT id FROM jobs WHERE state = 'ready' AND not_before <= now() AND runs_on <@ $4::text[]
                       AND ($5::text IS NULL OR run_id = $5)
                     ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)
        RETURNING id, run_id, idx, item, attempt, claim, input, input_secrets),
    s AS (UPDATE dag SET first_started = now() FROM (SELECT DISTINCT run_id, idx FROM c) x
          WHERE dag.run_id = x.run_id AND dag.idx = x.idx AND dag.first_started IS NULL)
    SELECT c.id, c.run_id, c.idx, c.item, c.attempt, c.claim, c.input, c.input_secrets, d.step
    FROM c JOIN dag d ON d.run_id = c.run_id AND d.idx = c.idx";

/// Appends events `$2` (JSON bodies) to run `$1`'s stream, numbered after
/// its last.
const APPEND_EVENTS: &str = "WITH r AS (UPDATE runs SET events = events + cardinality($2::text[]) WHERE id = $1 RETURNING events)
    INSERT INTO events (run_id, seq, body)
    SELECT $1, r.events - cardinality($2::text[]) + e.ord::int, e.body FROM r, unnest($2::text[]) WITH ORDINALITY AS e(body, ord)";

const NOTIFY: &str = "SELECT pg_notify($1, $2)";

/// Locks run `$1`'s row: every transaction that changes a run takes it first.
const LOCK_RUN: &str = "SELECT status, stop, open_steps, events, run_started, ending, main_stop FROM runs WHERE id = $1 FOR UPDATE";

/// Locks the jobs `$1` whose claim is still `$2` (a result is recorded only
/// by the current claim), with how long ago their steps first started.
const HOLD_JOBS: &str = "SELECT j.id, j.claim, j.attempt, j.lost, j.fuel_used, j.idx, EXTRACT(EPOCH FROM now() - d.first_started)::float8
    FROM jobs j JOIN unnest($1::int8[], $2::int8[]) AS c(id, claim) ON j.id = c.id AND j.claim = c.claim
    JOIN dag d ON d.run_id = j.run_id AND d.idx = j.idx
    WHERE j.state = 'claimed' ORDER BY j.id FOR UPDATE OF j";

/// How many dependencies steps `$2` of run `$1` still wait for.
const WAITING: &str = "SELECT idx, waiting FROM dag WHERE run_id = $1 AND idx = ANY($2)";

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
    pub worker: String,
    pub labels: Vec<String>,
    /// Its free slots (after the attempts being committed).
    pub slots: usize,
    pub lease: Duration,
    /// Jobs of the run that this transaction did not queue may be ready
    /// (the worker was told so): look for them too.
    pub others: bool,
}

/// One run's bookkeeping inside a transaction holding its row lock.
struct RunTx<'a> {
    tx: &'a deadpool_postgres::Client,
    run: &'a RunCtx,
    run_id: &'a str,
    /// The run has not ended.
    running: bool,
    started: bool,
    stop: Option<Stop>,
    /// Set once every step of `steps` has ended and the `finally` steps
    /// may run: what they read as `run.status` and `run.failures`.
    ending: Option<Value>,
    /// With `ending`: how the steps of `steps` stopped (`stop` is then the
    /// `finally` steps').
    main_stop: Option<Stop>,
    open_steps: i32,
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
    /// What `outputs_of` reads for steps that ended in this transaction:
    /// `Some(None)` skipped, `Some(Some(v))` an output, `None` neither.
    outputs: HashMap<usize, Option<Option<Value>>>,
    /// How steps turned out, as read or as ended in this transaction: by step.
    outcomes: HashMap<usize, core::Outcome>,
    /// Dependencies steps still wait for, as read under the run lock and
    /// counted down since: by step. (Only this run's transactions change them.)
    waiting: HashMap<usize, i32>,
}

/// The jobs a transaction records results of: it locks them, and reads
/// what recording needs, with the run's lock in one round trip.
#[derive(Default)]
struct Holding {
    ids: Vec<i64>,
    claims: Vec<i64>,
    /// Steps that results may release.
    dependents: Vec<i32>,
}

impl Holding {
    fn new(jobs: &[&Claimed], run: &RunCtx) -> Holding {
        let plan = &run.ctx.prepared().plan;
        let dependents: BTreeSet<i32> = jobs.iter().flat_map(|j| plan.dependents[j.step].iter().map(|&d| d as i32)).collect();
        Holding {
            ids: jobs.iter().map(|j| j.id).collect(),
            claims: jobs.iter().map(|j| j.claim).collect(),
            dependents: dependents.into_iter().collect(),
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

/// A step's end as counted over its attempts or items.
#[derive(Default)]
struct Tally {
    attempts: u32,
    fuel_used: u64,
    log: StepLog,
    ran: bool,
    /// A `forEach` step's item counts.
    items: Option<ItemCounts>,
    /// The run whose stored result it reused (`cache:`).
    cached: Option<String>,
}

impl<'a> RunTx<'a> {
    fn wf(&self) -> &'a crate::workflow::Workflow {
        &self.run.ctx.prepared().plan.workflow
    }

    fn plan(&self) -> &'a crate::plan::Plan {
        &self.run.ctx.prepared().plan
    }

    /// Emits an event: recorded in the run's tables and appended to its stream.
    fn emit(&mut self, event: Event) {
        let event = if self.run.redactor.is_empty() { event } else { self.run.redactor.event(&event) };
        self.pipe.record(&event);
        self.seq += 1;
        let mut stream = event;
        if let Event::StepFinished { log, .. } = &mut stream {
            *log = StepLog::default();
        }
        self.pipe.append(self.run_id, self.seq, &stream);
    }

    /// The run row's bookkeeping, and notifications: followers, and other
    /// workers for jobs this transaction's worker did not take.
    fn save(&mut self) {
        let stop = self.stop.map(Stop::encode);
        self.pipe.push(
            "UPDATE runs SET stop = $2, open_steps = $3, events = $4, run_started = $5 WHERE id = $1",
            params![self.run_id.to_string(), stop, self.open_steps, self.seq, self.started],
        );
        self.pipe.push(NOTIFY, params![EVENTS_CHANNEL, self.run_id.to_string()]);
        if self.new_jobs > self.claimed.len() {
            self.pipe.push(NOTIFY, params![JOBS_CHANNEL, ""]);
        }
    }

    /// What [`Holding::reads`] read: the jobs whose results this
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

    /// The run's first transaction: its DAG, then its root steps decided.
    async fn start(&mut self) -> PgResult<bool> {
        if self.started || !self.running {
            return Ok(false);
        }
        self.started = true;
        let plan = self.plan();
        let n = plan.workflow.steps.len();
        let idx: Vec<i32> = (0..n as i32).collect();
        let waiting: Vec<i32> = plan.deps.iter().map(|d| d.len() as i32).collect();
        let ids: Vec<String> = plan.workflow.steps.iter().map(|s| s.id.clone()).collect();
        let roots: Vec<usize> = (0..plan.main).filter(|&i| plan.deps[i].is_empty()).collect();
        let timeout = plan.workflow.timeout.map(|t| t.as_secs_f64());
        self.pipe.push(
            "INSERT INTO dag (run_id, idx, step, waiting) SELECT $1, d.idx, d.step, d.waiting FROM unnest($2::int[], $3::text[], $4::int[]) AS d(idx, step, waiting)",
            params![self.run_id.to_string(), idx, ids, waiting],
        );
        self.pipe.push(
            "UPDATE runs SET deadline = now() + make_interval(secs => $2) WHERE id = $1 AND $2::float8 IS NOT NULL",
            params![self.run_id.to_string(), timeout],
        );
        let name = plan.workflow.name.clone();
        self.open_steps = n as i32;
        self.emit(Event::RunStarted { run_id: self.run_id.to_string(), workflow: name, steps: n });
        self.ready(roots).await?;
        self.settle().await?;
        Ok(true)
    }

    /// Claims this run's ready jobs for the committing worker, as
    /// [`PgStore::claim`] does, under the run lock already held.
    async fn claim_own(&mut self, claimer: &Claimer) -> PgResult<()> {
        if claimer.slots == 0 || !self.running {
            return Ok(());
        }
        // Jobs this transaction queued are taken as they are inserted;
        // older ones only if some may be ready (`claimer.others`).
        let wf = self.wf();
        let mine = self.pipe.claim_queued(&claimer.worker, claimer.lease.as_secs_f64(), claimer.slots, |idx| {
            wf.steps[idx as usize].runs_on.iter().all(|l| claimer.labels.contains(l))
        });
        let mut claimed = Vec::new();
        let left = claimer.slots - mine.len();
        if left > 0 && (claimer.others || self.pipe.sent_ready()) {
            let limit = left as i64;
            let rows = self.pipe.query(self.tx, CLAIM, &[&claimer.worker, &limit, &claimer.lease.as_secs_f64(), &claimer.labels, &Some(self.run_id)]).await?;
            claimed = rows.iter().map(claimed_row).collect();
            claimed.sort_by_key(|c| c.id);
        }
        if !mine.is_empty() {
            let idx: Vec<i32> = mine.iter().map(|m| m.idx).collect();
            self.pipe.push("UPDATE dag SET first_started = COALESCE(first_started, now()) WHERE run_id = $1 AND idx = ANY($2)", params![self.run_id.to_string(), idx]);
        }
        for m in mine {
            claimed.push(Claimed {
                // Known once the insert is sent: see `in_run`.
                id: 0,
                run_id: self.run_id.to_string(),
                step: m.idx as usize,
                item: m.item.map(|k| k as usize),
                attempt: 1,
                claim: 1,
                input: job_input(&m.input),
                input_secrets: job_input_secrets(m.input_secrets),
            });
        }
        for c in &claimed {
            let event = Event::StepStarted { run_id: self.run_id.to_string(), step: self.wf().steps[c.step].id.clone(), attempt: c.attempt, item: c.item };
            self.emit(event);
        }
        self.claimed = claimed;
        Ok(())
    }

    /// Steps whose dependencies are all done: decided, and queued, skipped
    /// or failed.
    async fn ready(&mut self, mut ready: Vec<usize>) -> PgResult<()> {
        while !ready.is_empty() {
            if Stop::halts(self.stop) {
                // Not started; ended when the run settles.
                return Ok(());
            }
            let plan = self.plan();
            let outputs = self.outputs_of(ready.iter().flat_map(|&i| plan.deps[i].iter().chain(&plan.reads_before[i]).copied()).collect()).await?;

            let mut next = Vec::new();
            for i in std::mem::take(&mut ready) {
                if Stop::halts(self.stop) {
                    break;
                }
                let decl = &self.wf().steps[i];
                let facts = core::RunFacts { ending: self.ending.as_ref(), ..self.run.ctx.facts(&self.run.input) };
                let decision = {
                    let outcomes = &self.outcomes;
                    let ended = core::Ended { plan, outputs: &outputs, outcome: &|d| outcomes.get(&d).copied(), finally: decl.finally };
                    core::decide_ready(&facts, i, &ended)
                };
                match decision {
                    Decision::Blocked => next.extend(self.finish(i, Ending::Blocked, Tally::default()).await?),
                    Decision::Run(Work::One(input)) => self.queue(i, None, &input, "ready"),
                    Decision::Run(Work::Each { inputs, .. }) if inputs.is_empty() => {
                        next.extend(self.finish(i, Ending::Ran(Ok(Value::Array(Vec::new()))), Tally::default()).await?);
                    }
                    Decision::Run(Work::Each { inputs, concurrency }) => {
                        let count = inputs.len() as i32;
                        self.pipe
                            .push("UPDATE dag SET items = $3, items_left = $3 WHERE run_id = $1 AND idx = $2", params![self.run_id.to_string(), i as i32, count]);
                        for (k, input) in inputs.iter().enumerate() {
                            self.queue(i, Some(k), input, if k < concurrency { "ready" } else { "held" });
                        }
                    }
                    Decision::Skip { reason, warning } => {
                        if let Some(message) = warning {
                            let step = decl.id.clone();
                            self.emit(Event::StepWarning { run_id: self.run_id.to_string(), step, message });
                        }
                        next.extend(self.finish(i, Ending::Skipped(reason), Tally::default()).await?);
                    }
                    Decision::Fail(f) => {
                        // A secret this worker lacks reads as a missing key: say so.
                        let f = match &self.run.missing_secrets {
                            Some(why) if f.kind == FailureKind::Reference && f.message.contains("secrets.") => {
                                StepFailure::new(FailureKind::Reference, why.clone()).not_retryable()
                            }
                            _ => f,
                        };
                        next.extend(self.finish(i, Ending::Refused(f), Tally::default()).await?)
                    }
                }
            }
            ready = next;
        }
        Ok(())
    }

    /// The outputs of finished steps, as templates read them (secrets put
    /// back); their outcomes go to `self.outcomes`. Steps that ended in
    /// this transaction are answered from memory.
    async fn outputs_of(&mut self, steps: Vec<usize>) -> PgResult<BTreeMap<String, Option<Value>>> {
        let wf = self.wf();
        let mut out = BTreeMap::new();
        let mut wanted = BTreeSet::new();
        for i in steps {
            match self.outputs.get(&i) {
                Some(Some(output)) => {
                    out.insert(wf.steps[i].id.clone(), output.clone());
                }
                Some(None) => {}
                None => {
                    wanted.insert(i);
                }
            }
        }
        if wanted.is_empty() {
            return Ok(out);
        }
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
            if let Some(o) = r.get::<_, Option<String>>(6).and_then(|t| core::Outcome::decode(&t, r.get(5))) {
                self.outcomes.insert(r.get::<_, i32>(4) as usize, o);
            }
            if state == "skipped" {
                out.insert(step, None);
                continue;
            }
            let Some(output) = r.get::<_, Option<String>>(2).and_then(|t| serde_json::from_str::<Value>(&t).ok()) else { continue };
            let spans = r.get::<_, Option<String>>(3).and_then(|t| serde_json::from_str::<SecretSpans>(&t).ok());
            // A value this worker cannot rebuild reads as missing: the step
            // reading it fails with a reference error naming it.
            if let Ok(v) = self.run.unmask(output, spans) {
                out.insert(step, Some(v));
            }
        }
        Ok(out)
    }

    /// Queues an attempt of step `i` (or one of its items).
    fn queue(&mut self, i: usize, item: Option<usize>, input: &Value, state: &'static str) {
        let (masked, spans) = self.run.redactor.value_spans(input);
        let spans = spans.as_ref().map(SecretSpans::to_json);
        self.pipe.queue_job(NewJob {
            run: self.run_id,
            idx: i as i32,
            item: item.map(|k| k as i32),
            state,
            input: text(&masked.to_string()).into_owned(),
            input_secrets: spans,
            runs_on: &self.run.ctx.prepared().plan.workflow.steps[i].runs_on,
        });
        self.new_jobs += usize::from(state == "ready");
    }

    /// A claimed attempt ended. Returns whether its result was recorded.
    async fn finished(&mut self, f: Finished) -> PgResult<bool> {
        let Finished { job, result, fuel_used, log, cached } = f;
        let Some(Held { attempt, lost, fuel_used: fuel_before, .. }) = self.held.remove(&job.id).filter(|h| h.claim == job.claim) else {
            tracing::info!("run {}: a late result of job {} (claim {}) is discarded", self.run_id, job.id, job.claim);
            return Ok(false);
        };
        let decl = &self.wf().steps[job.step];
        let step_id = decl.id.clone();
        // A worker interrupts its steps when it sees the run cancelled or
        // out of time, possibly before any transaction said which: ask now,
        // so a timeout is not taken for a cancel.
        if matches!(&result, Err(f) if f.kind == FailureKind::Cancelled) {
            self.check_stop().await?;
        }
        if let Err(failure) = &result {
            let cancelled = matches!(self.stop, Some(Stop::Cancelled | Stop::TimedOut)) || !self.running;
            if let Some(delay) = core::retry_after(decl, self.wf(), failure, (attempt - lost) as u32, cancelled) {
                self.pipe.push(
                    "UPDATE jobs SET state = 'ready', attempt = attempt + 1, worker = NULL, lease_until = NULL,
                     fuel_used = fuel_used + $2, not_before = now() + make_interval(secs => $3) WHERE id = $1",
                    params![job.id, fuel_used as i64, delay.as_secs_f64()],
                );
                let event = Event::StepRetrying {
                    run_id: self.run_id.to_string(),
                    step: step_id,
                    attempt: job.attempt,
                    item: job.item,
                    error: failure.clone(),
                    delay,
                    fuel_used,
                };
                self.emit(event);
                self.retry_in = Some(self.retry_in.map_or(delay, |d| d.min(delay)));
                if delay.is_zero() {
                    self.new_jobs += 1;
                }
                return Ok(true);
            }
        }
        let total_fuel = fuel_before + fuel_used as i64;
        if job.item.is_none() {
            self.pipe.delete_job(job.id);
            let tally = Tally { attempts: attempt as u32, fuel_used: total_fuel as u64, log, ran: true, items: None, cached };
            let next = self.finish(job.step, Ending::Ran(result), tally).await?;
            self.ready(next).await?;
            return Ok(true);
        }
        // A `forEach` item: kept until every started item has ended.
        let (value, error) = match &result {
            Ok(v) => {
                let (masked, spans) = self.run.redactor.value_spans(v);
                (Some((masked.to_string(), spans.map(|s| s.to_json()))), None)
            }
            Err(e) => (None, Some(serde_json::to_string(&self.run.redactor.failure(e)).expect("failures serialize"))),
        };
        let log_json = serde_json::to_string(&log).expect("logs serialize");
        let (result_text, result_secrets) = value.unzip();
        self.pipe.push(
            "UPDATE jobs SET state = 'done', worker = NULL, lease_until = NULL, fuel_used = $2, result = $3, result_secrets = $4, error = $5, log = $6 WHERE id = $1",
            params![job.id, total_fuel, result_text, result_secrets.flatten(), error, text(&log_json).into_owned()],
        );
        let idx = job.step as i32;
        // An item that fails the step: the held ones never start, and end
        // with it.
        let mut ended = 1;
        if Items::fails_step(decl, &result) {
            let dropped = self.pipe.query(self.tx, "DELETE FROM jobs WHERE run_id = $1 AND idx = $2 AND state = 'held' RETURNING id", &[&self.run_id, &idx]).await?;
            ended += dropped.len() as i32;
        } else {
            let promoted = self
                .pipe
                .query(
                    self.tx,
                    "UPDATE jobs SET state = 'ready' WHERE id = (SELECT id FROM jobs WHERE run_id = $1 AND idx = $2 AND state = 'held' ORDER BY item LIMIT 1) RETURNING id",
                    &[&self.run_id, &idx],
                )
                .await?;
            self.new_jobs += promoted.len();
        }
        self.item_ended(job.step, ended, None).await.map(|()| true)
    }

    /// `count` items of `forEach` step `i` ended (`extra`: how those that
    /// never ran ended). When none is left the step ends, its items'
    /// results gathered in item order.
    async fn item_ended(&mut self, i: usize, count: i32, extra: Option<(usize, StepFailure)>) -> PgResult<()> {
        let idx = i as i32;
        let rows = self
            .pipe
            .query(self.tx, "UPDATE dag SET items_left = items_left - $3 WHERE run_id = $1 AND idx = $2 RETURNING items_left, items", &[&self.run_id, &idx, &count])
            .await?;
        let Some(row) = rows.first() else { return Ok(()) };
        let (left, total): (i32, i32) = (row.get(0), row.get(1));
        if left > 0 {
            return Ok(());
        }
        let decl = &self.wf().steps[i];
        let mut items = Items::new(total as usize);
        let rows = self
            .pipe
            .query(
                self.tx,
                "SELECT item, attempt, fuel_used, result, result_secrets, error, log FROM jobs WHERE run_id = $1 AND idx = $2 AND state = 'done' ORDER BY item",
                &[&self.run_id, &idx],
            )
            .await?;
        let mut tally = Tally { ran: true, ..Tally::default() };
        for r in &rows {
            let k = r.get::<_, i32>(0) as usize;
            tally.attempts += r.get::<_, i32>(1) as u32;
            tally.fuel_used += r.get::<_, i64>(2) as u64;
            if let Some(l) = r.get::<_, Option<String>>(6).and_then(|t| serde_json::from_str::<StepLog>(&t).ok()) {
                tally.log.lines.extend(l.lines);
                tally.log.dropped_bytes += l.dropped_bytes;
            }
            let result = match (r.get::<_, Option<String>>(3), r.get::<_, Option<String>>(5)) {
                (Some(v), _) => {
                    let spans = r.get::<_, Option<String>>(4).and_then(|t| serde_json::from_str::<SecretSpans>(&t).ok());
                    self.run.unmask(serde_json::from_str(&v).unwrap_or(Value::Null), spans)
                }
                (None, Some(e)) => Err(serde_json::from_str::<StepFailure>(&e).unwrap_or_else(|e| StepFailure::new(FailureKind::Component, e.to_string()))),
                (None, None) => Ok(Value::Null),
            };
            items.record(decl, k, result);
        }
        if let Some((k, failure)) = extra {
            items.record(decl, k, Err(failure));
        }
        self.pipe.push("DELETE FROM jobs WHERE run_id = $1 AND idx = $2", params![self.run_id.to_string(), idx]);
        tally.items = Some(items.counts());
        let next = self.finish(i, Ending::Ran(items.result()), tally).await?;
        self.ready(next).await
    }

    /// Step `i` ended: the verdict recorded, its dependents released.
    /// Returns the dependents that became ready.
    async fn finish(&mut self, i: usize, ending: Ending, tally: Tally) -> PgResult<Vec<usize>> {
        let verdict = core::verdict(self.plan(), i, ending, self.stop);
        match verdict.stop {
            Some(Stop::Cancelled) => self.stop = Some(Stop::Cancelled),
            Some(stop) => {
                self.stop.get_or_insert(stop);
            }
            None => {}
        }
        self.settle_step(i, verdict, tally).await
    }

    /// Records a step's final state and releases its dependents if it may.
    async fn settle_step(&mut self, i: usize, verdict: Verdict, tally: Tally) -> PgResult<Vec<usize>> {
        let Verdict { state, output, error, reason, releases, .. } = verdict;
        let (cached, reason) = core::cached(state, reason, tally.cached.as_deref());
        self.verdicts.insert(i, error.clone());
        let outcome = core::Outcome { state, blocks: !releases, items: tally.items };
        self.outcomes.insert(i, outcome);
        let elapsed: Option<f64> = match self.elapsed.get(&i) {
            Some(&elapsed) => {
                self.pipe.step_ended(self.run_id, i as i32, !releases, outcome.encode());
                elapsed
            }
            None => self
                .pipe
                .query(
                    self.tx,
                    "UPDATE dag SET finished = true, blocks = $3, outcome = $4 WHERE run_id = $1 AND idx = $2 RETURNING EXTRACT(EPOCH FROM now() - first_started)::float8",
                    &[&self.run_id, &(i as i32), &!releases, &outcome.encode()],
                )
                .await?
                .first()
                .and_then(|r| r.get(0)),
        };
        let duration = if tally.ran { elapsed.unwrap_or(0.0) } else { 0.0 };
        self.open_steps -= 1;
        let recorded = if state == StepState::Skipped { Some(None) } else { output.clone().map(Some) };
        self.outputs.insert(i, recorded);
        let event = Event::StepFinished {
            run_id: self.run_id.to_string(),
            step: self.wf().steps[i].id.clone(),
            state,
            attempt: tally.attempts,
            duration: Duration::from_secs_f64(duration.max(0.0)),
            fuel_used: tally.fuel_used,
            error,
            reason,
            // Not kept by the distributed bookkeeper (yet): each job holds its own.
            input: None,
            output: output.map(std::sync::Arc::new),
            output_secrets: None,
            // Per attempt, a job's fuel is summed: the last one's is not kept.
            last_fuel: None,
            log: tally.log,
            cached,
        };
        self.emit(event);
        let dependents: BTreeSet<usize> = self.plan().dependents[i].iter().copied().collect();
        // Dependents are counted down whatever the step's end: whether they
        // may run is `core::gate`'s to say once they are ready.
        if dependents.is_empty() {
            return Ok(Vec::new());
        }
        let idx: Vec<i32> = dependents.iter().map(|&d| d as i32).collect();
        if dependents.iter().all(|d| self.waiting.contains_key(d)) {
            // Counted here: the run's lock keeps the counters as read.
            self.pipe.push("UPDATE dag SET waiting = waiting - 1 WHERE run_id = $1 AND idx = ANY($2)", params![self.run_id.to_string(), idx]);
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
            .query(self.tx, "UPDATE dag SET waiting = waiting - 1 WHERE run_id = $1 AND idx = ANY($2) RETURNING idx, waiting", &[&self.run_id, &idx])
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

    /// Jobs whose worker stopped heartbeating go back to the queue as a new
    /// attempt (not counted against `max_attempts`), or fail the step after
    /// [`MAX_LOST`] losses.
    async fn reap(&mut self) -> PgResult<()> {
        let rows = self
            .pipe
            .query(
                self.tx,
                "SELECT id, idx, item, attempt, lost, worker, claim, fuel_used FROM jobs WHERE run_id = $1 AND state = 'claimed' AND lease_until < now() ORDER BY id FOR UPDATE",
                &[&self.run_id],
            )
            .await?;
        for r in rows {
            let (id, idx, item, attempt, lost, worker, claim): (i64, i32, Option<i32>, i32, i32, Option<String>, i64) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6));
            self.held.insert(id, Held { claim, attempt, lost, fuel_used: r.get(7) });
            let worker = worker.unwrap_or_default();
            let step = self.wf().steps[idx as usize].id.clone();
            let message = format!("worker lost: {worker} stopped renewing its lease on this attempt");
            if lost + 1 >= MAX_LOST {
                let failure = StepFailure::new(
                    FailureKind::Lost,
                    format!("{message}; {} attempts lost their worker, so the step fails (it may be what stops them)", lost + 1),
                )
                .not_retryable();
                let job = Claimed {
                    id,
                    run_id: self.run_id.to_string(),
                    step: idx as usize,
                    item: item.map(|k| k as usize),
                    attempt: attempt as u32,
                    claim,
                    input: Value::Null,
                    input_secrets: None,
                };
                self.finished(Finished { job, result: Err(failure), fuel_used: 0, log: StepLog::default(), cached: None }).await?;
                continue;
            }
            self.held.remove(&id);
            self.pipe.push(
                "UPDATE jobs SET state = 'ready', attempt = attempt + 1, lost = lost + 1, worker = NULL, lease_until = NULL, not_before = now() WHERE id = $1",
                params![id],
            );
            let error = StepFailure::new(FailureKind::Lost, message);
            let event = Event::StepRetrying {
                run_id: self.run_id.to_string(),
                step,
                attempt: attempt as u32,
                item: item.map(|k| k as usize),
                error,
                delay: Duration::ZERO,
                // A lost attempt's fuel is not known.
                fuel_used: 0,
            };
            self.emit(event);
            self.new_jobs += 1;
        }
        Ok(())
    }

    /// A cancel request or a passed deadline stops the run: no step starts
    /// any more and queued ones are dropped (running ones are interrupted
    /// by their workers).
    async fn check_stop(&mut self) -> PgResult<()> {
        if !self.running || !Stop::cancel_applies(self.stop) {
            return Ok(());
        }
        let rows = self.pipe.query(self.tx, "SELECT cancel_requested, COALESCE(deadline < now(), false) FROM runs WHERE id = $1", &[&self.run_id]).await?;
        let Some(row) = rows.first() else { return Ok(()) };
        let (cancel, late): (bool, bool) = (row.get(0), row.get(1));
        if late && !Stop::halts(self.stop) {
            self.stop = Some(Stop::TimedOut);
        } else if cancel {
            self.stop = Some(Stop::Cancelled);
        }
        Ok(())
    }

    /// Ends the run when nothing of it can run any more: steps that never
    /// started get their state, then the run its end.
    async fn settle(&mut self) -> PgResult<()> {
        if !self.running || !self.started {
            return Ok(());
        }
        if matches!(self.stop, Some(Stop::Cancelled | Stop::TimedOut)) {
            // Queued work of a cancelled run never starts: a step waiting
            // to retry ends cancelled, as do `forEach` items not started.
            let dropped = self
                .pipe
                .query(
                    self.tx,
                    // Jobs a worker is claiming right now are left to it: it
                    // sees the run stopped and interrupts them.
                    "WITH d AS (DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE run_id = $1 AND state IN ('ready', 'held') FOR UPDATE SKIP LOCKED)
                     RETURNING idx, item, attempt) SELECT idx, item, attempt FROM d ORDER BY idx, item",
                    &[&self.run_id],
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
                        let next = self.finish(i, Ending::Ran(Err(failure)), Tally { attempts: (attempt - 1) as u32, ran: true, ..Tally::default() }).await?;
                        self.ready(next).await?;
                    }
                    // Never started: ended below with the other unstarted steps.
                    None => {}
                }
            }
        }
        if Stop::halts(self.stop) {
            let active: i64 = self
                .pipe
                .query(self.tx, "SELECT COUNT(*) FROM jobs WHERE run_id = $1 AND state <> 'done'", &[&self.run_id])
                .await?
                .first()
                .map_or(0, |r| r.get(0));
            // Running steps (and, after a failure, `forEach` items still
            // to run) end first.
            if active > 0 {
                return Ok(());
            }
            let rows = self.pipe.query(self.tx, "SELECT idx, finished, blocks FROM dag WHERE run_id = $1 ORDER BY idx", &[&self.run_id]).await?;
            let n = self.wf().steps.len();
            let mut done = vec![false; n];
            let mut blocks = vec![false; n];
            for r in &rows {
                let i = r.get::<_, i32>(0) as usize;
                done[i] = r.get(1);
                blocks[i] = r.get(2);
            }
            // As the dispatcher does: in file order, each step of this
            // phase blocked by a dependency that failed or never started.
            let phase = if self.ending.is_some() { self.plan().main..n } else { 0..self.plan().main };
            for i in phase.filter(|&i| !done[i]).collect::<Vec<_>>() {
                let blocked = self.plan().deps[i].iter().any(|&d| blocks[d] || !done[d]);
                let (state, reason) = core::unstarted(self.stop, blocked);
                let verdict = Verdict { state, output: None, error: None, reason: Some(reason.to_string()), releases: !blocked, stop: None };
                blocks[i] = blocked;
                done[i] = true;
                self.settle_step(i, verdict, Tally::default()).await?;
            }
        }
        let plan = self.plan();
        let finally_left = (plan.workflow.steps.len() - plan.main) as i32;
        if self.ending.is_none() && finally_left > 0 && self.open_steps == finally_left && self.stop != Some(Stop::Unrecorded) {
            return self.begin_finally().await;
        }
        if self.open_steps > 0 {
            return Ok(());
        }
        self.end_run().await
    }

    /// Every step of `steps` has ended: the `finally` steps start, with
    /// their own deadline, and a cancel asked for before no longer applies
    /// (one asked for from now on interrupts them).
    async fn begin_finally(&mut self) -> PgResult<()> {
        let failure = self.failure_of(self.stop).await?;
        let (state, _) = core::run_end(self.wf(), self.stop, |_| failure.clone());
        let rows = self
            .pipe
            .query(
                self.tx,
                "SELECT s.step, s.error_kind, s.error_message FROM steps s JOIN dag d ON d.run_id = s.run_id AND d.step = s.step
                 WHERE s.run_id = $1 AND s.state = 'failed' AND d.idx < $2 ORDER BY d.idx",
                &[&self.run_id, &(self.plan().main as i32)],
            )
            .await?;
        let failures = rows.iter().map(|r| {
            let kind = r.get::<_, Option<String>>(1).and_then(|k| FailureKind::from_name(&k)).unwrap_or(FailureKind::Component);
            (r.get::<_, String>(0), StepFailure::new(kind, r.get::<_, Option<String>>(2).unwrap_or_default()))
        });
        let ending = core::ending(state, failures);
        self.main_stop = self.stop.take();
        let timeout = self.wf().finally_timeout.as_secs_f64();
        self.pipe.push(
            "UPDATE runs SET main_stop = $2, ending = $3, cancel_requested = false, deadline = now() + make_interval(secs => $4) WHERE id = $1",
            params![self.run_id.to_string(), self.main_stop.map(Stop::encode), ending.to_string(), timeout],
        );
        self.ending = Some(ending);
        let plan = self.plan();
        let roots: Vec<usize> = (plan.main..plan.workflow.steps.len()).filter(|&i| plan.deps[i].is_empty()).collect();
        self.ready(roots).await?;
        // Every `finally` step may have ended already (skipped).
        Box::pin(self.settle()).await
    }

    /// The failure of the step that stopped the run, if one did.
    async fn failure_of(&mut self, stop: Option<Stop>) -> PgResult<Option<StepFailure>> {
        let Some(Stop::Failed(i) | Stop::Failing(i)) = stop else { return Ok(None) };
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

    /// Every step has ended: the run's state, error and output.
    async fn end_run(&mut self) -> PgResult<()> {
        // With `finally` steps run: how the steps of `steps` stopped, and how
        // the `finally` ones did.
        let (stop, finally_stop) = if self.ending.is_some() { (self.main_stop, self.stop) } else { (self.stop, None) };
        let failure = self.failure_of(stop).await?;
        let finally_failure = self.failure_of(finally_stop).await?;
        let (mut state, mut error) = core::run_end(self.wf(), stop, |_| failure.clone());
        let mut output = None;
        if state == RunState::Completed {
            let outputs = self.outputs_of(core::output_reads(self.plan())).await?;
            match core::run_output(&self.run.ctx.facts(&self.run.input), self.plan(), &outputs) {
                Ok(v) => output = Some(v),
                Err(e) => {
                    state = RunState::Failed;
                    error = Some(format!("the run output could not be built: {e}"));
                }
            }
        }
        // The run output is the steps' of `steps`; a `finally` step that
        // failed fails the run all the same.
        (state, error) = core::with_finally(self.wf(), (state, error), finally_stop, |_| finally_failure.clone());
        let began: f64 = self
            .pipe
            .query(self.tx, "SELECT EXTRACT(EPOCH FROM now() - began)::float8 FROM runs WHERE id = $1", &[&self.run_id])
            .await?
            .first()
            .map_or(0.0, |r| r.get(0));
        let event = Event::RunFinished { run_id: self.run_id.to_string(), state, duration: Duration::from_secs_f64(began.max(0.0)), output: output.map(std::sync::Arc::new), error };
        self.emit(event);
        self.running = false;
        Ok(())
    }
}

/// Calls `wake` on each notification on `channel` (and once after each
/// reconnect, since notifications may have been missed), over a connection
/// of its own that is re-established with backoff when lost, until `stop`.
pub async fn listen_with(store: std::sync::Arc<PgStore>, channel: &'static str, wake: impl Fn() + Send + 'static, stop: crate::sandbox::CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        match store.listen(channel).await {
            Ok((client, mut notifications)) => {
                backoff = Duration::from_millis(100);
                wake();
                loop {
                    tokio::select! {
                        n = notifications.recv() => match n {
                            Some(()) => wake(),
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
