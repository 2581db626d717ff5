//! Runs run whole by one worker (see [`crate::exec::core::runs_whole`]).
//!
//! A worker that starts such a run takes a hold on it (`runs.held_by`,
//! `runs.held_until`) instead of queuing its first jobs, runs it in its
//! own memory with the in-process dispatcher, and records its events in
//! batches through [`PgStore::record_whole`]: the rows a run in one process
//! writes, and the run's event stream that `runs follow` and the web view
//! read, as the queue writes it. Each batch first checks, under the run's
//! row lock, that the worker still holds the run and that the stream is
//! where it left it: a worker whose hold lapsed and was taken over writes
//! nothing more. A hold is renewed by every batch and by the worker's
//! heartbeat; one that lapses is looked after ([`PgStore::recover_lapsed`]):
//! the run goes on step by step on any worker, as a resume (what succeeded
//! is kept, the rest runs again).

use super::pipe::{Pipe, params};
use super::postgres::{PgStore, db};
use super::StoreError;
use super::queue::{EVENTS_CHANNEL, InTx, JOBS_CHANNEL, NOTIFY, RUN_TO_START, next_attempt};
use crate::exec::Event;
use std::time::Duration;

/// A worker's hold on a run it runs whole: whose, which attempt, and how
/// far its event stream goes.
#[derive(Debug, Clone)]
pub struct Hold {
    /// The run.
    pub run_id: String,
    /// The worker that holds it.
    pub worker: String,
    /// The run's attempt the hold is for.
    pub attempt: u32,
    /// How long the hold lasts unless renewed.
    pub lease: Duration,
    /// The number of the last event in the run's stream.
    pub seq: i32,
    /// A cancel was asked for before the run started (and is taken).
    pub cancel_asked: bool,
}

/// How [`PgStore::start_whole`] went.
#[derive(Debug, Clone)]
pub enum WholeStart {
    /// This worker holds the run: it runs it whole.
    Held(Hold),
    /// Another worker started it (or holds its row now, starting it), or
    /// it is no longer queued: nothing to do.
    Taken,
    /// The run is at another attempt than the worker loaded (a `retry` or
    /// `resume` came since): load it again.
    Stale,
    /// Its namespace limits attempts across workers: start it step by step
    /// ([`PgStore::start_run`]).
    StepByStep,
}

/// How a batch of a held run's events went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Committed (or found committed already: an answer lost on the way).
    Yes,
    /// The worker no longer holds the run: nothing was written.
    HoldLost,
}

impl PgStore {
    /// Starts queued run `run_id` (at `attempt`) as a run held by `worker`
    /// for `lease`, in one statement: the hold, or why not. A worker that
    /// lost the race for a run to another learns it here, and spends
    /// nothing more on it.
    pub async fn start_whole(&self, run_id: &str, worker: &str, attempt: u32, lease: Duration) -> Result<WholeStart, StoreError> {
        let client = self.client().await?;
        let start = client
            .prepare_cached(
                "WITH before AS (
                     SELECT id, cancel_requested, attempt,
                            EXISTS (SELECT 1 FROM namespaces n WHERE n.name = runs.namespace AND n.max_steps IS NOT NULL) AS limited
                     FROM runs WHERE id = $1 AND queued AND NOT run_started AND status = 'running' FOR UPDATE OF runs SKIP LOCKED),
                 held AS (
                     UPDATE runs SET run_started = true, held_by = $2, held_until = now() + make_interval(secs => $4), began = now(),
                            cancel_requested = false
                     FROM before WHERE runs.id = before.id AND NOT before.limited AND before.attempt = $3
                     RETURNING runs.events)
                 SELECT before.attempt, before.limited, before.cancel_requested, (SELECT events FROM held) FROM before",
            )
            .await
            .map_err(db)?;
        let row = client.query_opt(&start, &[&run_id, &worker, &(attempt as i32), &lease.as_secs_f64()]).await.map_err(db)?;
        let Some(row) = row else { return Ok(WholeStart::Taken) };
        Ok(match (row.get::<_, i32>(0) as u32, row.get::<_, bool>(1), row.get::<_, Option<i32>>(3)) {
            (found, _, _) if found != attempt => WholeStart::Stale,
            (_, true, _) => WholeStart::StepByStep,
            (_, false, Some(seq)) => {
                WholeStart::Held(Hold { run_id: run_id.to_string(), worker: worker.to_string(), attempt, lease, seq, cancel_asked: row.get(2) })
            }
            (_, false, None) => WholeStart::Taken,
        })
    }

    /// Records `events` of the run `hold` holds, in one transaction: the
    /// rows they write (but those a later one replaces:
    /// `store::superseded`), and each one (but log lines, whose rows are
    /// the record) appended to the run's stream. Renews the hold, and ends it
    /// with the run's end.
    pub async fn record_whole(&self, hold: &mut Hold, events: Vec<Event>) -> Result<Recorded, StoreError> {
        let conn = InTx::new(self.client().await?);
        let tx = conn.client();
        let mut pipe = Pipe::default();
        pipe.push("BEGIN", params![]);
        let attempt = hold.attempt as i32;
        let streamed = events.iter().filter(|e| !matches!(e, Event::StepLogLine { .. })).count() as i32;
        let ended = events.iter().any(|e| matches!(e, Event::RunFinished { .. }));
        let seq = hold.seq + streamed;
        // The fence and the run row's bookkeeping in one statement, first
        // (the run's row is locked before its steps'): it changes the row
        // only if this worker still holds the run and its stream is where
        // this worker left it, and otherwise fails the transaction, so
        // that the writes sent with it do nothing. One round trip for the
        // batch, not one for the fence and another for the writes.
        pipe.push(
            "WITH fenced AS (
                 UPDATE runs SET events = $5,
                        held_by = CASE WHEN $6 THEN NULL ELSE held_by END,
                        held_until = CASE WHEN $6 THEN NULL ELSE now() + make_interval(secs => $7) END
                 WHERE id = $1 AND held_by = $2 AND attempt = $3 AND events = $4 RETURNING 1)
             SELECT sandflow_still_held(EXISTS (SELECT 1 FROM fenced), $1, $2)",
            params![hold.run_id.clone(), hold.worker.clone(), attempt, hold.seq, seq, ended, hold.lease.as_secs_f64()],
        );
        let mut at = hold.seq;
        let superseded = super::superseded(&events);
        for (mut event, superseded) in events.into_iter().zip(superseded) {
            if let Event::StepStarted { worker, .. } = &mut event {
                *worker = Some(hold.worker.clone());
            }
            if !superseded {
                pipe.record(&event);
            }
            // A log line's row is its record; it is not streamed.
            if !matches!(event, Event::StepLogLine { .. }) {
                at += 1;
                pipe.stream(&hold.run_id, at, event);
            }
        }
        if streamed > 0 {
            pipe.push(NOTIFY, params![EVENTS_CHANNEL, hold.run_id.clone()]);
        }
        if let Err(e) = pipe.send(tx).await {
            tx.batch_execute("ROLLBACK").await.map_err(db)?;
            let found = tx
                .query_opt("SELECT events, held_by = $2 FROM runs WHERE id = $1 AND (held_by = $2 OR held_by IS NULL) AND attempt = $3", &[&hold.run_id, &hold.worker, &attempt])
                .await
                .map_err(db)?
                .map(|r| (r.get::<_, i32>(0), r.get::<_, Option<bool>>(1) == Some(true)));
            conn.finished();
            return match found {
                // The fence held: the batch failed for another reason.
                Some((at, true)) if at == hold.seq => Err(db(e)),
                // The stream went on by this very batch: its commit's
                // answer was lost (the last batch let go of the hold as it
                // ended).
                Some((at, _)) if streamed > 0 && at == seq => {
                    hold.seq = seq;
                    Ok(Recorded::Yes)
                }
                _ => Ok(Recorded::HoldLost),
            };
        }
        tx.batch_execute("COMMIT").await.map_err(db)?;
        conn.finished();
        hold.seq = seq;
        Ok(Recorded::Yes)
    }

    /// Renews the holds `worker` has on `runs`.
    pub async fn renew_holds(&self, worker: &str, runs: &[String], lease: Duration) -> Result<(), StoreError> {
        if runs.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        client
            .execute(
                "UPDATE runs SET held_until = now() + make_interval(secs => $3) WHERE id = ANY($1) AND held_by = $2",
                &[&runs, &worker, &lease.as_secs_f64()],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    /// If run `run_id` is held and the hold lapsed (its worker was lost or
    /// gave it up), the run goes on step by step on any worker as its
    /// next attempt, a resume: what succeeded is kept, the rest runs
    /// again. Returns whether it did.
    pub async fn recover_lapsed(&self, run_id: &str) -> Result<bool, StoreError> {
        let attempt = self.go_on_step_by_step(run_id, None).await?;
        if let Some(attempt) = attempt {
            tracing::warn!("run {run_id}: its worker's hold lapsed; attempt {attempt} goes on step by step, keeping what succeeded");
        }
        Ok(attempt.is_some())
    }

    /// `worker` hands run `run_id` it holds over to other workers at once:
    /// stopping, it ran it whole until no step of it ran (see
    /// [`crate::exec::RunOptions::hand_off`]), or it cannot go on with it
    /// (its store writes fail). The run goes on step by step as its next
    /// attempt, as after a lapsed hold, keeping what was recorded. Returns
    /// whether it did (not if the hold was lost meanwhile: whoever took it
    /// over goes on with it).
    pub async fn hand_over(&self, run_id: &str, worker: &str) -> Result<bool, StoreError> {
        let attempt = self.go_on_step_by_step(run_id, Some(worker)).await?;
        if let Some(attempt) = attempt {
            tracing::info!("run {run_id}: worker {worker} handed it over; attempt {attempt} goes on step by step, keeping what succeeded");
        }
        Ok(attempt.is_some())
    }

    /// Ends the hold on running run `run_id`, that of `by` or else one
    /// that lapsed, and makes the run its next attempt, a resume, which
    /// any worker starts step by step. Returns that attempt.
    async fn go_on_step_by_step(&self, run_id: &str, by: Option<&str>) -> Result<Option<i32>, StoreError> {
        let client = self.client().await?;
        let rerun = serde_json::to_string(&crate::runs::Rerun::Resume).expect("a Rerun always serializes");
        let row = client
            .query_opt(
                concat!(
                    "WITH r AS (UPDATE runs SET ",
                    next_attempt!(),
                    ", held_by = NULL, held_until = NULL
                        WHERE id = $1 AND held_by IS NOT NULL AND status = 'running'
                          AND CASE WHEN $4::text IS NULL THEN held_until < now() ELSE held_by = $4 END
                        RETURNING attempt)
                     SELECT r.attempt, pg_notify($3, $5) FROM r"
                ),
                &[&run_id, &rerun, &JOBS_CHANNEL, &by, &RUN_TO_START],
            )
            .await
            .map_err(db)?;
        Ok(row.map(|r| r.get::<_, i32>(0)))
    }
}
