//! Schedules in a SQLite store: `sandflow schedule add FILE` records the
//! file's `schedules:` by its path, and `sandflow scheduler`, one process,
//! fires them and runs what they start (on PostgreSQL any number of
//! schedulers fire them for workers: [`super::schedules`]).
//!
//! The decisions are the same as on PostgreSQL ([`ticks_to_fire`] for
//! `catchup`, [`decide_overlap`] for `overlap`, the cron expression's next tick),
//! and so is the key that makes a tick fire once: a row per schedule and
//! tick, written in the transaction that records the run it starts and the
//! schedule's next tick.

use super::schedules::{Fired, MOST_CAUGHT_UP, OverlapDecision, PutSchedules, ScheduleRecord, choice, decide_overlap, from_choice, in_zone, parse, ticks_to_fire};
use super::sqlite::{SqliteStore, insert_run};
use super::{NewRun, StoreError};
use crate::workflow::{Catchup, Overlap, ScheduleDecl};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use rusqlite::{OptionalExtension, params};
use serde_json::Value;

/// A schedule whose next tick has come.
#[derive(Debug, Clone)]
pub struct DueSchedule {
    /// `WORKFLOW/NAME`.
    pub name: String,
    /// The workflow's name.
    pub workflow: String,
    /// The workflow file's path, as `schedule add` was given it (absolute).
    pub file: String,
    /// The input of each run.
    pub input: Value,
    /// `--target`: the steps each run is limited to.
    pub targets: Vec<String>,
    cron: String,
    timezone: String,
    catchup: Catchup,
    overlap: Overlap,
    next_at: Timestamp,
}

fn secs(t: Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1e3
}

fn at(secs: f64) -> Timestamp {
    Timestamp::from_millisecond((secs * 1e3).round() as i64).unwrap_or(Timestamp::UNIX_EPOCH)
}

impl SqliteStore {
    /// Puts the `schedules` of workflow `workflow` (file `file`) in the
    /// store as `WORKFLOW/NAME`; the workflow's schedules the file no longer
    /// has are removed. One whose cron and zone are unchanged keeps its next
    /// tick (and its paused state).
    pub async fn put_local_schedules(&self, workflow: &str, file: &str, targets: &[String], schedules: &[ScheduleDecl], now: Timestamp) -> Result<PutSchedules, StoreError> {
        let mut rows = Vec::new();
        for s in schedules {
            let name = format!("{workflow}/{}", s.name);
            let tz = TimeZone::get(&s.timezone).map_err(|e| StoreError::Backend(format!("schedule {name}: time zone `{}`: {e}", s.timezone)))?;
            let next = s.parsed.next_after(now, &tz).map(secs);
            let (catchup, overlap) = (choice(&Catchup::ALL, s.catchup), choice(&Overlap::ALL, s.overlap));
            rows.push((name, s.cron.clone(), s.timezone.clone(), s.input.to_string(), catchup, overlap, next));
        }
        let (workflow, file, targets) = (workflow.to_string(), file.to_string(), super::targets_text(targets));
        self.with(move |conn| {
            let tx = conn.unchecked_transaction()?;
            let mut out = PutSchedules::default();
            for (name, cron, timezone, input, catchup, overlap, next) in &rows {
                tx.execute(
                    "INSERT INTO schedules (name, workflow, file, cron, timezone, input, catchup, overlap, targets, next_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                     ON CONFLICT (name) DO UPDATE SET workflow = ?2, file = ?3, input = ?6, catchup = ?7, overlap = ?8, targets = ?9,
                        next_at = CASE WHEN schedules.cron = ?4 AND schedules.timezone = ?5 THEN schedules.next_at ELSE ?10 END,
                        cron = ?4, timezone = ?5",
                    params![name, workflow, file, cron, timezone, input, catchup, overlap, targets, next],
                )?;
                let (next_at, paused): (Option<f64>, bool) = tx.query_row("SELECT next_at, paused FROM schedules WHERE name = ?1", params![name], |r| Ok((r.get(0)?, r.get(1)?)))?;
                out.put.push((name.clone(), if paused { None } else { next_at.map(at) }));
            }
            let names: Vec<&String> = rows.iter().map(|r| &r.0).collect();
            let mut q = tx.prepare("SELECT name FROM schedules WHERE workflow = ?1")?;
            let old: Vec<String> = q.query_map(params![workflow], |r| r.get(0))?.collect::<Result<_, _>>()?;
            drop(q);
            for name in old.into_iter().filter(|n| !names.contains(&n)) {
                tx.execute("DELETE FROM schedules WHERE name = ?1", params![name])?;
                out.removed.push(name);
            }
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    /// Every schedule, by name, with its last tick.
    pub async fn local_schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        self.with(|conn| {
            let mut q = conn.prepare(
                "SELECT s.name, s.workflow, s.cron, s.timezone, s.catchup, s.overlap, s.paused, s.next_at, t.tick, t.outcome, t.run_id
                 FROM schedules s LEFT JOIN schedule_ticks t ON t.name = s.name AND t.tick = (SELECT max(tick) FROM schedule_ticks WHERE name = s.name)
                 ORDER BY s.name",
            )?;
            let rows = q.query_map([], |r| {
                let timezone: String = r.get(3)?;
                let paused: bool = r.get(6)?;
                let next: Option<f64> = r.get(7)?;
                let tick: Option<f64> = r.get(8)?;
                Ok(ScheduleRecord {
                    namespace: "default".into(),
                    name: r.get(0)?,
                    workflow: r.get(1)?,
                    cron: r.get(2)?,
                    catchup: r.get(4)?,
                    overlap: r.get(5)?,
                    paused,
                    next_at: next.filter(|_| !paused).map(|t| in_zone(at(t), &timezone)),
                    last_tick: tick.map(|t| in_zone(at(t), &timezone)),
                    last_outcome: r.get(9)?,
                    last_run: r.get(10)?,
                    timezone,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Pauses or resumes schedule `name` (resumed: from its next tick after
    /// `now`, the ticks meanwhile not caught up). False if there is none.
    pub async fn pause_local_schedule(&self, name: &str, paused: bool, now: Timestamp) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.with(move |conn| {
            let row: Option<(String, String)> = conn.query_row("SELECT cron, timezone FROM schedules WHERE name = ?1", params![name], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
            let Some((cron, timezone)) = row else { return Ok(false) };
            let next = parse(&cron, &timezone).ok().and_then(|(c, tz)| c.next_after(now, &tz)).map(secs);
            match paused {
                true => conn.execute("UPDATE schedules SET paused = 1 WHERE name = ?1", params![name])?,
                false => conn.execute("UPDATE schedules SET paused = 0, next_at = ?2 WHERE name = ?1 AND paused <> 0", params![name, next])?,
            };
            Ok(true)
        })
        .await
    }

    /// Removes schedule `name` (the runs it started stay). False if none.
    pub async fn remove_local_schedule(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.with(move |conn| {
            let n = conn.execute("DELETE FROM schedules WHERE name = ?1", params![name])?;
            conn.execute("DELETE FROM schedule_ticks WHERE name = ?1", params![name])?;
            Ok(n > 0)
        })
        .await
    }

    /// The schedules not paused whose next tick is at or before `now`.
    pub async fn due_schedules(&self, now: Timestamp) -> Result<Vec<DueSchedule>, StoreError> {
        self.with(move |conn| {
            let mut q = conn.prepare(
                "SELECT name, workflow, file, cron, timezone, input, catchup, overlap, targets, next_at FROM schedules
                 WHERE paused = 0 AND next_at <= ?1 ORDER BY next_at",
            )?;
            let rows = q.query_map(params![secs(now)], |r| {
                Ok(DueSchedule {
                    name: r.get(0)?,
                    workflow: r.get(1)?,
                    file: r.get(2)?,
                    cron: r.get(3)?,
                    timezone: r.get(4)?,
                    input: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or(Value::Null),
                    catchup: from_choice(&Catchup::ALL, &r.get::<_, String>(6)?),
                    overlap: from_choice(&Overlap::ALL, &r.get::<_, String>(7)?),
                    targets: super::targets_of(r.get(8)?),
                    next_at: at(r.get(9)?),
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Fires the ticks of `due` at `now`: each tick's row, its run's row
    /// (`run`: the workflow as it is now, its id left to each tick, or why
    /// it cannot run) and the
    /// schedule's next tick, in one transaction. A tick recorded before
    /// starts nothing.
    pub async fn fire_local(&self, due: &DueSchedule, now: Timestamp, run: Result<NewRun, String>) -> Result<Vec<Fired>, StoreError> {
        let due = due.clone();
        self.with(move |conn| {
            let tx = conn.unchecked_transaction()?;
            let mut fired = Vec::new();
            let (cron, tz) = match parse(&due.cron, &due.timezone) {
                Ok(p) => p,
                Err(e) => {
                    // Cannot happen to a schedule `schedule add` wrote:
                    // paused rather than retried at every pass.
                    tx.execute("UPDATE schedules SET paused = 1 WHERE name = ?1", params![due.name])?;
                    tx.commit()?;
                    return Ok(vec![Fired { namespace: super::DEFAULT_NAMESPACE.into(), schedule: due.name, tick: due.next_at, outcome: Err(format!("paused: {e}")) }]);
                }
            };
            let mut ticks = vec![due.next_at];
            ticks.extend(cron.fires_between(due.next_at, now, &tz, MOST_CAUGHT_UP));
            for tick in ticks_to_fire(&ticks, now, due.catchup) {
                let taken = tx.execute("INSERT OR IGNORE INTO schedule_ticks (name, tick, outcome) VALUES (?1, ?2, 'started')", params![due.name, secs(tick)])?;
                if taken == 0 {
                    continue;
                }
                let mut q = tx.prepare_cached("SELECT id FROM runs WHERE trigger_source = ?1 AND status = 'running' ORDER BY started_at")?;
                let running: Vec<String> = q.query_map(params![due.name], |r| r.get(0))?.collect::<Result<_, _>>()?;
                drop(q);
                let outcome = match (decide_overlap(due.overlap, &running), &run) {
                    (OverlapDecision::Skip(why), _) => Err(why),
                    (_, Err(why)) => Err(format!("refused: {why}")),
                    (decision, Ok(template)) => {
                        if let OverlapDecision::CancelThenStart(previous) = decision {
                            for id in previous {
                                tx.execute("UPDATE runs SET cancel_requested = 1 WHERE id = ?1", params![id])?;
                            }
                        }
                        let run = NewRun { id: crate::exec::new_run_id(), ..template.clone() };
                        insert_run(&tx, &run, Some((&due.name, tick)))?;
                        Ok(run.id)
                    }
                };
                let (text, run_id) = match &outcome {
                    Ok(id) => ("started".to_string(), Some(id.clone())),
                    Err(why) => (why.clone(), None),
                };
                tx.execute("UPDATE schedule_ticks SET outcome = ?3, run_id = ?4 WHERE name = ?1 AND tick = ?2", params![due.name, secs(tick), text, run_id])?;
                fired.push(Fired { namespace: super::DEFAULT_NAMESPACE.into(), schedule: due.name.clone(), tick, outcome });
            }
            let next = cron.next_after(now.max(*ticks.last().unwrap_or(&due.next_at)), &tz).map(secs);
            tx.execute("UPDATE schedules SET next_at = ?2 WHERE name = ?1", params![due.name, next])?;
            // The keys of ticks a day old guard nothing (`next_at` is past them).
            tx.execute("DELETE FROM schedule_ticks WHERE name = ?1 AND tick < ?2", params![due.name, secs(now) - 86_400.0])?;
            tx.commit()?;
            Ok(fired)
        })
        .await
    }

    /// The soonest next tick of any schedule not paused.
    pub async fn next_local_tick(&self) -> Result<Option<Timestamp>, StoreError> {
        self.with(|conn| conn.query_row("SELECT min(next_at) FROM schedules WHERE paused = 0", [], |r| r.get::<_, Option<f64>>(0)))
            .await
            .map(|t| t.map(at))
    }

    /// Runs schedules started that are still `running`: their scheduler
    /// stopped (or was killed) before they ended.
    pub async fn runs_left_by_schedules(&self) -> Result<Vec<String>, StoreError> {
        self.with(|conn| {
            let mut q = conn.prepare("SELECT id FROM runs WHERE triggered_by = 'schedule' AND status = 'running' ORDER BY started_at")?;
            let ids = q.query_map([], |r| r.get(0))?.collect::<Result<Vec<String>, _>>()?;
            Ok(ids)
        })
        .await
    }
}
