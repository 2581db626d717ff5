//! Statements sent to PostgreSQL together.
//!
//! A transaction that records a batch of results would otherwise pay one
//! round trip (two, for an unprepared statement) per statement, and a
//! dozen statements per result. A [`Pipe`] gathers the writes instead:
//! rows an event writes are grouped per table into one `unnest` statement
//! each, other statements are kept in order, and everything pending goes
//! out in one burst, with the read that needed it, when something must be
//! read ([`Pipe::query`]) or the transaction ends ([`Pipe::send`]).
//!
//! tokio-postgres sends a prepared statement's request when its future is
//! first polled and the server runs requests of one connection in the
//! order they arrive, so statements polled in order run in order: the
//! burst costs one round trip, and a read sees every write before it.

use super::postgres::text;
use super::{log_rows, now};
use super::queue::{idx_in, key_in};
use crate::exec::{Event, SecretSpans};
use deadpool_postgres::GenericClient;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

type PgResult<T> = Result<T, tokio_postgres::Error>;
/// A statement's execution in flight.
type Pending<'a, T> = Pin<Box<dyn Future<Output = PgResult<T>> + Send + 'a>>;

/// An owned statement parameter.
pub(super) type Param = Box<dyn ToSql + Sync + Send>;

/// A statement that returns rows, and its parameters.
pub(super) type Read<'a> = (&'a str, &'a [&'a (dyn ToSql + Sync)]);

/// Owned parameters: `params![a, b]`.
macro_rules! params {
    ($($p:expr),* $(,)?) => { vec![$(Box::new($p) as $crate::store::pipe::Param),*] };
}
pub(super) use params;

/// Writes waiting to be sent (over a transaction, or a connection whose
/// `BEGIN` is itself pushed, to travel with the statements after it).
///
/// Statements pushed run in the order pushed; then the gathered rows, one
/// statement per table. Gathered rows and pushed statements of one burst
/// must not depend on each other's order (they touch other rows, or other
/// columns); anything that must see a write is a read, which comes after
/// every write before it.
#[derive(Default)]
pub(super) struct Pipe {
    ops: Vec<(&'static str, Vec<Param>)>,
    /// Table rows of recorded events, batched per table.
    rows: Vec<EventRows>,
    /// Events appended to run streams: (run, seq, body).
    stream: Vec<(String, i32, String)>,
    /// The queue's rows: jobs done, jobs queued, steps ended.
    jobs: JobRows,
    /// Ids of the jobs inserted so far: by (run, step index, item).
    inserted: HashMap<(String, i32, Option<i32>), i64>,
    /// Jobs queued ready have been sent (a claim query would see them).
    sent_ready: bool,
    /// Which of `ops` inserts jobs (its rows are their ids).
    insert_op: Option<usize>,
}

/// Rows of the work queue's tables (see `queue.rs`), batched.
#[derive(Default)]
struct JobRows {
    done: Vec<i64>,
    queued: QueuedJobs,
    /// Steps ended: (run, step index, whether it blocks its dependents,
    /// its encoded outcome).
    ended: (Vec<String>, Vec<i32>, Vec<bool>, Vec<String>),
}

/// Jobs to insert, one column per vector.
#[derive(Default)]
struct QueuedJobs {
    run: Vec<String>,
    idx: Vec<i32>,
    item: Vec<Option<i32>>,
    state: Vec<String>,
    input: Vec<String>,
    input_secrets: Vec<Option<String>>,
    /// Each job's `runs_on` labels as a JSON array (arrays of arrays do not unnest).
    runs_on: Vec<String>,
    /// Claimed as it is inserted: by whom, and the lease in seconds.
    worker: Vec<Option<String>>,
    lease: Vec<Option<f64>>,
    limited: Vec<bool>,
    /// Not claimable before (Unix seconds; none: now; infinity: never
    /// by time, only when a signal wakes it).
    not_before: Vec<Option<f64>>,
}

/// A job queued in this transaction and claimed before it was sent.
pub(super) struct ClaimedAtInsert {
    pub idx: i32,
    pub item: Option<i32>,
    pub input: String,
    pub input_secrets: Option<String>,
}

/// A job to queue: its run, step index, item, state, input (secrets
/// masked), where the secrets were, and the labels it needs.
pub(super) struct NewJob<'a> {
    pub run: &'a str,
    pub idx: i32,
    pub item: Option<i32>,
    pub state: &'a str,
    pub input: String,
    pub input_secrets: Option<String>,
    pub runs_on: &'a [String],
    /// Its run has a step limit: only claimed under the run's lock.
    pub limited: bool,
    /// A waiting step's: not claimable before this (Unix seconds; infinite:
    /// until a signal wakes it).
    pub not_before: Option<f64>,
}

impl Pipe {
    /// A statement to run, after every statement pushed before it.
    pub fn push(&mut self, sql: &'static str, params: Vec<Param>) {
        self.ops.push((sql, params));
    }

    /// A claimed job whose result is recorded: it is deleted.
    pub fn delete_job(&mut self, id: i64) {
        self.jobs.done.push(id);
    }

    /// A job inserted (ids in the order queued).
    pub fn queue_job(&mut self, job: NewJob<'_>) {
        let q = &mut self.jobs.queued;
        q.run.push(job.run.to_string());
        q.idx.push(job.idx);
        q.item.push(job.item);
        q.state.push(job.state.to_string());
        q.input.push(job.input);
        q.input_secrets.push(job.input_secrets);
        q.runs_on.push(serde_json::to_string(job.runs_on).expect("labels serialize"));
        q.worker.push(None);
        q.lease.push(None);
        q.limited.push(job.limited);
        q.not_before.push(job.not_before);
    }

    /// Claims for `worker`, leased for `lease`, up to `limit` of the ready
    /// jobs queued and not yet sent whose step `may_run`: they are inserted
    /// claimed. Nothing else can see them before this transaction commits,
    /// so no claim query is needed; their ids are known once sent
    /// ([`Pipe::inserted_id`]).
    pub fn claim_queued(&mut self, worker: &str, lease: f64, limit: usize, mut may_run: impl FnMut(i32) -> bool) -> Vec<ClaimedAtInsert> {
        let q = &mut self.jobs.queued;
        let mut out = Vec::new();
        for k in 0..q.run.len() {
            if out.len() == limit {
                break;
            }
            if q.state[k] != "ready" || q.worker[k].is_some() || q.not_before[k].is_some() || !may_run(q.idx[k]) {
                continue;
            }
            q.state[k] = "claimed".into();
            q.worker[k] = Some(worker.to_string());
            q.lease[k] = Some(lease);
            out.push(ClaimedAtInsert { idx: q.idx[k], item: q.item[k], input: q.input[k].clone(), input_secrets: q.input_secrets[k].clone() });
        }
        out
    }

    /// The id of a job inserted by this pipe.
    pub fn inserted_id(&self, run: &str, idx: i32, item: Option<i32>) -> Option<i64> {
        self.inserted.get(&(run.to_string(), idx, item)).copied()
    }

    /// Whether jobs queued ready were sent already (only a claim query finds them).
    pub fn sent_ready(&self) -> bool {
        self.sent_ready
    }

    /// Step `idx` of run `run` ended; `blocks`: steps that merely need it
    /// may not run; `outcome`: what `depends` reads of it.
    pub fn step_ended(&mut self, run: &str, idx: i32, blocks: bool, outcome: String) {
        self.jobs.ended.0.push(run.to_string());
        self.jobs.ended.1.push(idx);
        self.jobs.ended.2.push(blocks);
        self.jobs.ended.3.push(outcome);
    }

    /// The rows `event` writes to the run's tables (runs, steps, attempts, logs).
    pub fn record(&mut self, event: &Event) {
        let fits = self.rows.last().is_some_and(|r| r.fits(event));
        if !fits {
            self.rows.push(EventRows::default());
        }
        self.rows.last_mut().expect("just pushed").add(event);
    }

    /// `event` recorded in run `run_id`'s tables ([`Pipe::record`]) and
    /// appended to its stream as number `seq`, without a step's log (its
    /// rows are the record; followers read it there).
    pub fn record_streamed(&mut self, run_id: &str, seq: i32, event: Event) {
        self.record(&event);
        self.stream(run_id, seq, event);
    }

    /// `event` appended to run `run_id`'s stream as number `seq`, without
    /// a step's log, and no rows (`store::superseded`).
    pub fn stream(&mut self, run_id: &str, seq: i32, mut event: Event) {
        if let Event::StepFinished { log, .. } = &mut event {
            *log = crate::sandbox::StepLog::default();
        }
        self.stream.push((run_id.to_string(), seq, event_body(&event)));
    }

    /// Gathered rows become statements, after those pushed.
    fn flush_rows(&mut self) {
        for rows in std::mem::take(&mut self.rows) {
            rows.into_ops(&mut self.ops);
        }
        if !self.stream.is_empty() {
            let (mut runs, mut seqs, mut bodies) = (Vec::new(), Vec::new(), Vec::new());
            for (run, seq, body) in std::mem::take(&mut self.stream) {
                runs.push(run);
                seqs.push(seq);
                bodies.push(body);
            }
            self.ops.push((
                "INSERT INTO events (run_id, seq, body) SELECT * FROM unnest($1::text[], $2::int[], $3::text[])",
                params![runs, seqs, bodies],
            ));
        }
        let JobRows { done, queued: q, ended } = std::mem::take(&mut self.jobs);
        if !done.is_empty() {
            self.ops.push((concat!("DELETE FROM jobs WHERE ", key_in!("id", "$1", "int8")), params![done]));
        }
        if !q.run.is_empty() {
            self.sent_ready |= q.state.iter().any(|s| s == "ready");
            self.insert_op = Some(self.ops.len());
            self.ops.push((
                "INSERT INTO jobs (run_id, idx, item, state, input, input_secrets, runs_on, worker, claim, lease_until, limited, not_before)
                 SELECT j.run_id, j.idx, j.item, j.state, j.input, j.input_secrets, ARRAY(SELECT jsonb_array_elements_text(j.runs_on::jsonb)),
                        j.worker, CASE WHEN j.worker IS NULL THEN 0 ELSE 1 END, now() + make_interval(secs => j.lease), j.limited,
                        COALESCE(to_timestamp(j.not_before), now())
                 FROM unnest($1::text[], $2::int[], $3::int[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::float8[], $10::bool[], $11::float8[])
                      WITH ORDINALITY AS j(run_id, idx, item, state, input, input_secrets, runs_on, worker, lease, limited, not_before, ord)
                 ORDER BY j.ord
                 RETURNING id, run_id, idx, item",
                params![q.run, q.idx, q.item, q.state, q.input, q.input_secrets, q.runs_on, q.worker, q.lease, q.limited, q.not_before],
            ));
        }
        // One statement per run (nearly always one), so that its rows are
        // found by their key (see `idx_in`).
        let mut by_run: BTreeMap<String, (Vec<i32>, Vec<bool>, Vec<String>)> = BTreeMap::new();
        for (((run, idx), blocks), outcome) in ended.0.into_iter().zip(ended.1).zip(ended.2).zip(ended.3) {
            let (i, b, o) = by_run.entry(run).or_default();
            i.push(idx);
            b.push(blocks);
            o.push(outcome);
        }
        for (run, (i, b, o)) in by_run {
            self.ops.push((
                concat!(
                    "UPDATE dag SET finished = true, blocks = e.blocks, outcome = e.outcome
                 FROM unnest($2::int[], $3::bool[], $4::text[]) AS e(step, blocks, outcome)
                 WHERE dag.run_id = $1 AND dag.idx = e.step AND dag.",
                    idx_in!("$2")
                ),
                params![run, i, b, o],
            ));
        }
    }

    /// Sends every pending write.
    pub async fn send(&mut self, tx: &impl GenericClient) -> PgResult<()> {
        self.run(tx, &[]).await.map(|_| ())
    }

    /// Sends every pending write, then `sql`, in one round trip; returns its rows.
    pub async fn query(&mut self, tx: &impl GenericClient, sql: &str, params: &[&(dyn ToSql + Sync)]) -> PgResult<Vec<Row>> {
        Ok(self.run(tx, &[(sql, params)]).await?.pop().unwrap_or_default())
    }

    /// Sends every pending write, then each of `reads` in order, in one
    /// round trip; returns their rows.
    pub async fn queries(&mut self, tx: &impl GenericClient, reads: &[Read<'_>]) -> PgResult<Vec<Vec<Row>>> {
        self.run(tx, reads).await
    }

    async fn run(&mut self, tx: &impl GenericClient, reads: &[Read<'_>]) -> PgResult<Vec<Vec<Row>>> {
        self.flush_rows();
        let ops = std::mem::take(&mut self.ops);
        // Prepared first (cached per connection after the first time), so
        // that each request goes out whole on its future's first poll.
        let mut writes = Vec::with_capacity(ops.len());
        for (sql, _) in &ops {
            writes.push(tx.prepare_cached(sql).await?);
        }
        let mut queries = Vec::with_capacity(reads.len());
        for (sql, _) in reads {
            queries.push(tx.prepare_cached(sql).await?);
        }
        let params: Vec<Vec<&(dyn ToSql + Sync)>> = ops.iter().map(|(_, p)| p.iter().map(|b| b.as_ref() as &(dyn ToSql + Sync)).collect()).collect();
        let mut futures: Vec<Pending<'_, Vec<Row>>> = Vec::with_capacity(writes.len() + reads.len());
        let insert_op = self.insert_op.take();
        for (k, (statement, params)) in writes.iter().zip(&params).enumerate() {
            if Some(k) == insert_op {
                futures.push(Box::pin(async move { tx.query(statement, params).await }));
            } else {
                futures.push(Box::pin(async move { tx.execute(statement, params).await.map(|_| Vec::new()) }));
            }
        }
        for (statement, (_, params)) in queries.iter().zip(reads) {
            futures.push(Box::pin(async move { tx.query(statement, params).await }));
        }
        let mut results = in_order(futures).await?;
        let reads = results.split_off(writes.len());
        for r in results.iter().flatten() {
            self.inserted.insert((r.get(1), r.get(2), r.get(3)), r.get(0));
        }
        Ok(reads)
    }
}

/// An event as a run's stream keeps it: its JSON line.
pub(super) fn event_body(event: &Event) -> String {
    text(&serde_json::to_string(event).expect("events serialize")).into_owned()
}

/// Polls `futures` in order until all are done; the first error ends it.
async fn in_order<T>(mut futures: Vec<Pending<'_, T>>) -> PgResult<Vec<T>> {
    let mut out: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futures.iter_mut().zip(out.iter_mut()) {
            if slot.is_some() {
                continue;
            }
            match f.as_mut().poll(cx) {
                Poll::Ready(Ok(v)) => *slot = Some(v),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => pending = true,
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    })
    .await?;
    Ok(out
        .into_iter()
        .map(|v| v.expect("every future finished"))
        .collect())
}

/// The rows some events write, one column per vector.
#[derive(Default)]
struct EventRows {
    /// (run, step) of the steps recorded here: a step recorded twice starts
    /// a new batch, so that the later record wins as it would one by one.
    keys: BTreeSet<(String, String)>,
    /// Steps that started: (run, step, attempt, worker).
    started: (Vec<String>, Vec<String>, Vec<i32>, Vec<Option<String>>),
    /// Steps started again (a retry): their lines so far are dropped.
    restarted: (Vec<String>, Vec<String>),
    /// Lines running steps wrote.
    live: LiveRows,
    waiting: WaitingRows,
    steps: StepRows,
    attempts: AttemptRows,
    runs: Vec<RunRow>,
}

/// Steps that wait: (run, step, kind, wake time, input).
type WaitingRows = (Vec<String>, Vec<String>, Vec<String>, Vec<Option<String>>, Vec<Option<String>>);

/// A run's end: (run, state, finished at, output, error).
type RunRow = (String, String, String, Option<String>, Option<String>);

/// Log lines: (run, step, seq, source, text).
#[derive(Default)]
struct LogRows(Vec<String>, Vec<String>, Vec<i32>, Vec<String>, Vec<String>);

/// Lines of running steps: (run, step, attempt (none for a `forEach`
/// item's), seq, source, text).
#[derive(Default)]
struct LiveRows(Vec<String>, Vec<String>, Vec<Option<i32>>, Vec<i32>, Vec<String>, Vec<String>);

/// Keeps the lines of running steps (see [`crate::exec::Event::StepLogLine`])
/// whose row says they still run that attempt: a line that comes late (a
/// worker's, sent beside its result) is dropped, as the step's whole log
/// replaced it. [`LIVE_LOG_LOCK`] makes the check hold until this commits.
pub(super) const LIVE_LOG_INSERT: &str = "INSERT INTO logs (run_id, step, seq, source, text)
     SELECT l.run_id, l.step, l.seq, l.source, l.text
     FROM unnest($1::text[], $2::text[], $3::int[], $4::int[], $5::text[], $6::text[]) WITH ORDINALITY AS l(run_id, step, attempt, seq, source, text, ord)
     JOIN steps s ON s.run_id = l.run_id AND s.step = l.step AND s.state = 'running' AND (l.attempt IS NULL OR s.attempts = l.attempt)
     ORDER BY l.ord";

/// Locks the rows of runs `$1` for [`LIVE_LOG_INSERT`], in id order, before
/// any of their steps' or logs' rows: as every transaction that records a
/// result or claims a step does (`queue::LOCK_RUN`, `queue::CLAIM_RUNS`).
/// A result recorded meanwhile waits, then deletes these lines with the
/// rest of the step's log; or this waits for it, and sees the step ended.
/// (Locking the steps' rows instead deadlocked with commits: each took the
/// steps of a batch in its own order, and a line's key could wait for a
/// commit's log rows.) `FOR SHARE`: the lines of runs that other workers
/// write at the same time do not wait for each other.
const LIVE_LOG_LOCK: &str = "SELECT 1 FROM runs WHERE id = ANY($1::text[]) ORDER BY id FOR SHARE";

#[derive(Default)]
struct StepRows {
    run: Vec<String>,
    step: Vec<String>,
    state: Vec<String>,
    attempts: Vec<i32>,
    finished_at: Vec<String>,
    duration_ms: Vec<f64>,
    fuel_used: Vec<i64>,
    error_kind: Vec<Option<String>>,
    error_message: Vec<Option<String>>,
    reason: Vec<Option<String>>,
    output: Vec<Option<String>>,
    output_secrets: Vec<Option<String>>,
    input: Vec<Option<String>>,
    items: Vec<Option<i32>>,
    /// Logs of the steps recorded.
    logs: LogRows,
}

#[derive(Default)]
struct AttemptRows {
    run: Vec<String>,
    step: Vec<String>,
    attempt: Vec<i32>,
    item: Vec<Option<i64>>,
    state: Vec<String>,
    recorded_at: Vec<String>,
    error_kind: Vec<Option<String>>,
    error_message: Vec<Option<String>>,
    fuel_used: Vec<Option<i64>>,
}

impl AttemptRows {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        run: &str,
        step: &str,
        attempt: u32,
        item: Option<usize>,
        state: &str,
        error: Option<(&str, &str)>,
        fuel_used: Option<u64>,
    ) {
        self.fuel_used.push(fuel_used.map(|f| f as i64));
        self.run.push(run.to_string());
        self.step.push(step.to_string());
        self.attempt.push(attempt as i32);
        self.item.push(item.map(|i| i as i64));
        self.state.push(state.to_string());
        self.recorded_at.push(now());
        self.error_kind.push(error.map(|(k, _)| k.to_string()));
        self.error_message
            .push(error.map(|(_, m)| text(m).into_owned()));
    }
}

impl EventRows {
    fn fits(&self, event: &Event) -> bool {
        match event {
            Event::StepFinished { run_id, step, .. } | Event::StepStarted { run_id, step, .. } | Event::StepWaiting { run_id, step, .. } => {
                !self.keys.contains(&(run_id.clone(), step.clone()))
            }
            _ => true,
        }
    }

    fn add(&mut self, event: &Event) {
        match event {
            Event::StepStarted { run_id, step, attempt, worker, .. } => {
                if !super::records(event) {
                    return;
                }
                self.keys.insert((run_id.clone(), step.clone()));
                self.started.0.push(run_id.clone());
                self.started.1.push(step.clone());
                self.started.2.push(*attempt as i32);
                self.started.3.push(worker.clone());
                if let Event::StepStarted { item: None, attempt: 2.., .. } = event {
                    self.restarted.0.push(run_id.clone());
                    self.restarted.1.push(step.clone());
                }
            }
            Event::StepLogLine { run_id, step, attempt, item, seq, line } => {
                let l = &mut self.live;
                l.0.push(run_id.clone());
                l.1.push(step.clone());
                l.2.push(item.is_none().then_some(*attempt as i32));
                l.3.push((*seq).min(i32::MAX as usize) as i32);
                l.4.push(line.source.as_str().to_string());
                l.5.push(text(&line.text).into_owned());
            }
            Event::StepWaiting { run_id, step, kind, until, input } => {
                self.keys.insert((run_id.clone(), step.clone()));
                let w = &mut self.waiting;
                w.0.push(run_id.clone());
                w.1.push(step.clone());
                w.2.push(kind.as_str().to_string());
                w.3.push(until.clone());
                w.4.push(input.as_deref().map(|v| text(&v.to_string()).into_owned()));
            }
            Event::RunStarted { .. }
            | Event::StepWarning { .. }
            | Event::StepRestored { .. } => {}
            Event::StepRetrying {
                run_id,
                step,
                attempt,
                item,
                error,
                fuel_used,
                ..
            } => {
                self.attempts.push(
                    run_id,
                    step,
                    *attempt,
                    *item,
                    "failed",
                    Some((error.kind.as_str(), &error.message)),
                    Some(*fuel_used),
                );
            }
            Event::StepFinished {
                run_id,
                step,
                state,
                attempt,
                items,
                duration,
                fuel_used,
                error,
                reason,
                input,
                output,
                output_secrets,
                last_fuel,
                log,
                ..
            } => {
                self.keys.insert((run_id.clone(), step.clone()));
                let s = &mut self.steps;
                s.run.push(run_id.clone());
                s.step.push(step.clone());
                s.state.push(state.as_str().to_string());
                s.attempts.push(*attempt as i32);
                s.finished_at.push(now());
                s.duration_ms.push(duration.as_secs_f64() * 1000.0);
                s.fuel_used.push(*fuel_used as i64);
                s.error_kind
                    .push(error.as_ref().map(|e| e.kind.as_str().to_string()));
                s.error_message
                    .push(error.as_ref().map(|e| text(&e.message).into_owned()));
                s.reason
                    .push(reason.as_deref().map(|r| text(r).into_owned()));
                s.output.push(output.as_deref().map(Value::to_string));
                s.output_secrets
                    .push(output_secrets.as_ref().map(SecretSpans::to_json));
                s.input.push(input.as_deref().map(Value::to_string));
                s.items.push(items.map(|n| n.min(i32::MAX as u32) as i32));
                for (seq, (source, line)) in log_rows(log).enumerate() {
                    s.logs.0.push(run_id.clone());
                    s.logs.1.push(step.clone());
                    s.logs.2.push(seq as i32);
                    s.logs.3.push(source.to_string());
                    s.logs.4.push(text(&line).into_owned());
                }
                if *attempt > 0 {
                    let error = error
                        .as_ref()
                        .map(|e| (e.kind.as_str(), e.message.as_str()));
                    self.attempts
                        .push(run_id, step, *attempt, None, state.as_str(), error, *last_fuel);
                }
            }
            Event::RunFinished {
                run_id,
                state,
                output,
                error,
                ..
            } => {
                let output = output.as_deref().map(Value::to_string);
                let error = error.as_deref().map(|e| text(e).into_owned());
                self.runs.push((
                    run_id.clone(),
                    state.as_str().to_string(),
                    now(),
                    output,
                    error,
                ));
            }
        }
    }

    fn into_ops(self, ops: &mut Vec<(&'static str, Vec<Param>)>) {
        let EventRows {
            started,
            restarted,
            live,
            waiting,
            steps: s,
            attempts: a,
            runs,
            ..
        } = self;
        if !live.0.is_empty() {
            let runs: Vec<String> = live.0.iter().collect::<BTreeSet<_>>().into_iter().cloned().collect();
            ops.push((LIVE_LOG_LOCK, params![runs]));
        }
        if !started.0.is_empty() {
            // A step whose row says it ended in an earlier attempt of the
            // run is running again.
            ops.push((
                "INSERT INTO steps (run_id, step, state, attempts, duration_ms, fuel_used, run_attempt, started_at, worker)
                 SELECT s.run_id, s.step, 'running', s.attempt, 0, 0, (SELECT attempt FROM runs WHERE id = s.run_id), $5, s.worker
                 FROM unnest($1::text[], $2::text[], $3::int[], $4::text[]) WITH ORDINALITY AS s(run_id, step, attempt, worker, ord)
                 ORDER BY s.ord
                 ON CONFLICT (run_id, step) DO UPDATE SET state = 'running', attempts = EXCLUDED.attempts, started_at = EXCLUDED.started_at,
                    worker = EXCLUDED.worker, run_attempt = EXCLUDED.run_attempt, finished_at = NULL, duration_ms = 0",
                params![started.0, started.1, started.2, started.3, now()],
            ));
        }
        if !restarted.0.is_empty() {
            // A retry's log starts anew.
            ops.push((
                "DELETE FROM logs l USING unnest($1::text[], $2::text[]) AS s(run_id, step) WHERE l.run_id = s.run_id AND l.step = s.step",
                params![restarted.0, restarted.1],
            ));
        }
        if !live.0.is_empty() {
            let LiveRows(run, step, attempt, seq, source, line) = live;
            ops.push((LIVE_LOG_INSERT, params![run, step, attempt, seq, source, line]));
        }
        if !waiting.0.is_empty() {
            ops.push((
                "INSERT INTO steps (run_id, step, state, attempts, duration_ms, fuel_used, run_attempt, started_at, wait_kind, wake_at, input)
                 SELECT w.run_id, w.step, 'waiting', 0, 0, 0, (SELECT attempt FROM runs WHERE id = w.run_id), $6, w.kind, w.until, w.input
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) WITH ORDINALITY AS w(run_id, step, kind, until, input, ord)
                 ORDER BY w.ord
                 ON CONFLICT (run_id, step) DO UPDATE SET state = 'waiting', attempts = 0, started_at = EXCLUDED.started_at, wait_kind = EXCLUDED.wait_kind,
                    wake_at = EXCLUDED.wake_at, input = EXCLUDED.input, worker = NULL, run_attempt = EXCLUDED.run_attempt, finished_at = NULL, duration_ms = 0",
                params![waiting.0, waiting.1, waiting.2, waiting.3, waiting.4, now()],
            ));
        }
        if !s.run.is_empty() {
            // The run's attempt comes from the store: another process may
            // have resumed the run. A step recorded again (after a resume)
            // moves to the end of the run's order, as in SQLite.
            ops.push((
                "INSERT INTO steps (run_id, step, state, attempts, finished_at, duration_ms, fuel_used, error_kind, error_message, reason, output, run_attempt, output_secrets, input, items)
                 SELECT s.run_id, s.step, s.state, s.attempts, s.finished_at, s.duration_ms, s.fuel_used, s.error_kind, s.error_message, s.reason, s.output,
                        (SELECT attempt FROM runs WHERE id = s.run_id), s.output_secrets, s.input, s.items
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::float8[], $7::int8[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::int[])
                      WITH ORDINALITY AS s(run_id, step, state, attempts, finished_at, duration_ms, fuel_used, error_kind, error_message, reason, output, output_secrets, input, items, ord)
                 ORDER BY s.ord
                 ON CONFLICT (run_id, step) DO UPDATE SET
                    pos = EXCLUDED.pos, state = EXCLUDED.state, attempts = EXCLUDED.attempts, finished_at = EXCLUDED.finished_at,
                    duration_ms = EXCLUDED.duration_ms, fuel_used = EXCLUDED.fuel_used, error_kind = EXCLUDED.error_kind,
                    error_message = EXCLUDED.error_message, reason = EXCLUDED.reason, output = EXCLUDED.output,
                    run_attempt = EXCLUDED.run_attempt, output_secrets = EXCLUDED.output_secrets, input = EXCLUDED.input,
                    items = EXCLUDED.items, started_at = NULL, worker = NULL, wake_at = NULL, wait_kind = NULL",
                params![
                    s.run.clone(),
                    s.step.clone(),
                    s.state,
                    s.attempts,
                    s.finished_at,
                    s.duration_ms,
                    s.fuel_used,
                    s.error_kind,
                    s.error_message,
                    s.reason,
                    s.output,
                    s.output_secrets,
                    s.input,
                    s.items
                ],
            ));
            // A signal a step was sent is taken as it records its end, and a
            // step's log rows (its live lines, or its log before a resume)
            // give way to its end's: one statement.
            ops.push((
                "WITH s AS (SELECT * FROM unnest($1::text[], $2::text[]) AS s(run_id, step)),
                      g AS (DELETE FROM signals g USING s WHERE g.run_id = s.run_id AND g.step = s.step)
                 DELETE FROM logs l USING s WHERE l.run_id = s.run_id AND l.step = s.step",
                params![s.run, s.step],
            ));
            if !s.logs.0.is_empty() {
                let LogRows(run, step, seq, source, line) = s.logs;
                ops.push((
                    "INSERT INTO logs (run_id, step, seq, source, text) SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::text[])",
                    params![run, step, seq, source, line],
                ));
            }
        }
        if !a.run.is_empty() {
            ops.push((
                "INSERT INTO attempts (run_id, step, attempt, item, state, recorded_at, error_kind, error_message, fuel_used)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::int8[], $5::text[], $6::text[], $7::text[], $8::text[], $9::int8[])",
                params![a.run, a.step, a.attempt, a.item, a.state, a.recorded_at, a.error_kind, a.error_message, a.fuel_used],
            ));
        }
        for (run, state, at, output, error) in runs {
            ops.push(("UPDATE runs SET status = $2, finished_at = $3, output = $4, error = $5 WHERE id = $1", params![run, state, at, output, error]));
        }
    }
}
