//! Schedules in a PostgreSQL store: each one a submission kept (the
//! workflow's files by SHA-256, the input, what the run is bound to) with
//! its cron expression, time zone and the first tick not handled yet.
//!
//! Any number of schedulers (`serve`, `worker --scheduler`) call
//! [`PgStore::fire_due`]: a due schedule's row is locked (`SKIP LOCKED`:
//! one scheduler handles it at a time) and each tick it fires is a row
//! keyed by schedule and tick, written in the same transaction as the run
//! it queues and the schedule's next tick: a tick fires once, however many
//! schedulers run and whenever one dies.

use super::postgres::{PgStore, db};
use super::queue::{Binding, RunFiles, StoredBinding, Trigger, insert_run, store_files};
use super::{NewRun, StoreError};
use crate::cron::Cron;
use crate::workflow::{Catchup, Overlap, ScheduleDecl, TriggerDecl};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Serialize;
use serde_json::Value;
use std::time::{Duration, SystemTime};

/// A tick fired more than this after its time was missed (no scheduler
/// ran then): its schedule's `catchup` decides whether it starts a run.
pub const LATE: Duration = Duration::from_secs(10);

/// At most this many missed ticks start runs at once (`catchup: all`),
/// the newest.
pub(super) const MOST_CAUGHT_UP: usize = 1000;

/// What a schedule submits at each tick, apart from its input.
#[derive(Debug, Clone)]
pub struct ScheduleTemplate {
    /// The workflow's name: a schedule is `WORKFLOW/NAME`.
    pub workflow: String,
    /// The workflow file's path among `files`.
    pub file: String,
    /// The workflow file's SHA-256.
    pub sha256: String,
    /// `--target`: the steps each run is limited to.
    pub targets: Vec<String>,
    /// `--components` and `--var`, bound when registered.
    pub binding: Binding,
}

/// A schedule as `sandflow schedule list` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ScheduleRecord {
    /// The namespace (tenant) it belongs to.
    pub namespace: String,
    /// `WORKFLOW/NAME`.
    pub name: String,
    /// The workflow's name.
    pub workflow: String,
    /// The cron expression, as written.
    pub cron: String,
    /// Its IANA time zone.
    pub timezone: String,
    /// `catchup:` (`none`, `one`, `all`).
    pub catchup: String,
    /// `overlap:` (`allow`, `skip`, `cancel_previous`).
    pub overlap: String,
    /// Paused (`sandflow schedule pause`): its ticks start nothing.
    pub paused: bool,
    /// The next tick (RFC 3339, in the schedule's zone); none while paused.
    pub next_at: Option<String>,
    /// The last tick handled, how (`started`, `skipped: …`, `refused: …`)
    /// and its run.
    pub last_tick: Option<String>,
    /// How the last tick was handled.
    pub last_outcome: Option<String>,
    /// The run the last tick started.
    pub last_run: Option<String>,
}

/// What [`PgStore::put_schedules`] did.
#[derive(Debug, Clone, Default)]
pub struct PutSchedules {
    /// Each schedule of the file: its name and its next tick.
    pub put: Vec<(String, Option<Timestamp>)>,
    /// Schedules (and `webhook NAME`s) of the workflow the file no longer has.
    pub removed: Vec<String>,
    /// Each webhook of the file, by name.
    pub hooks: Vec<String>,
}

/// A webhook as `serve` takes its deliveries.
#[derive(Debug, Clone)]
pub struct HookRecord {
    /// The hook's name (`POST /hooks/NAME`).
    pub name: String,
    /// The namespace (tenant) it belongs to.
    pub namespace: String,
    /// The workflow's name.
    pub workflow: String,
    /// The workflow file's path among its files.
    pub file: String,
    /// The workflow file's SHA-256.
    pub sha256: String,
    /// The secret (by name) its deliveries are signed with.
    pub secret: String,
    /// `--target`: the steps each run is limited to.
    pub targets: Vec<String>,
    /// `--components` and `--var`, bound when registered.
    pub binding: Binding,
    /// Paused: deliveries are refused.
    pub paused: bool,
    /// Its files: path and SHA-256.
    pub files: Vec<(String, String)>,
}

/// A webhook as `sandflow schedule list` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct HookListing {
    /// The hook's name (`POST /hooks/NAME`).
    pub name: String,
    /// The namespace (tenant) it belongs to.
    pub namespace: String,
    /// The workflow's name.
    pub workflow: String,
    /// The secret's name (never its value: the store does not have it).
    pub secret: String,
    /// Paused: deliveries are refused.
    pub paused: bool,
    /// When the last delivery was taken, and its run.
    pub last_delivery: Option<String>,
    /// The run the last delivery started.
    pub last_run: Option<String>,
}

/// What a delivery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    /// It started this run.
    Started(String),
    /// It was taken before (same delivery id or signature): nothing
    /// started; the run it started then, if any.
    Again(Option<String>),
}

/// A tick handled by [`PgStore::fire_due`].
#[derive(Debug, Clone)]
pub struct Fired {
    /// The schedule's namespace.
    pub namespace: String,
    /// The schedule (`WORKFLOW/NAME`).
    pub schedule: String,
    /// The tick's time.
    pub tick: Timestamp,
    /// The run it started, or why none.
    pub outcome: Result<String, String>,
}

/// Whether `name` names a webhook: a schedule is WORKFLOW/NAME, and a
/// webhook's name (its URL's last part) has no `/`.
pub fn is_webhook(name: &str) -> bool {
    !name.contains('/')
}

/// The ticks of `due` (oldest first, all at or before `now`) that start
/// runs under `catchup`: those on time (at most [`LATE`] ago) always;
/// missed ones, none, the latest (unless one on time follows it) or all.
pub fn ticks_to_fire(due: &[Timestamp], now: Timestamp, catchup: Catchup) -> Vec<Timestamp> {
    let late = |t: &Timestamp| now.duration_since(*t) > jiff::SignedDuration::try_from(LATE).expect("a small duration");
    let missed = due.iter().take_while(|t| late(t)).count();
    let (missed_ticks, on_time) = due.split_at(missed);
    let mut fire: Vec<Timestamp> = match catchup {
        Catchup::None => Vec::new(),
        Catchup::One if on_time.is_empty() => missed_ticks.last().copied().into_iter().collect(),
        Catchup::One => Vec::new(),
        Catchup::All => missed_ticks.to_vec(),
    };
    fire.extend_from_slice(on_time);
    fire
}

/// What a tick does about its schedule's runs still running (`overlap`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverlapDecision {
    /// It starts a run.
    Start,
    /// It starts none: an earlier run still runs (`skip`).
    Skip(String),
    /// It asks the runs still running to cancel, then starts one
    /// (`cancel_previous`).
    CancelThenStart(Vec<String>),
}

/// What a tick does under `overlap`, with `running` the schedule's runs
/// still running (oldest first). The same for both stores.
pub fn decide_overlap(overlap: Overlap, running: &[String]) -> OverlapDecision {
    match (overlap, running.first()) {
        (_, None) | (Overlap::Allow, _) => OverlapDecision::Start,
        (Overlap::Skip, Some(first)) => OverlapDecision::Skip(format!("skipped: its run {first} is still running (overlap: skip)")),
        (Overlap::CancelPrevious, Some(_)) => OverlapDecision::CancelThenStart(running.to_vec()),
    }
}

/// The schedule's cron expression and zone, as recorded.
pub(super) fn parse(cron: &str, timezone: &str) -> Result<(Cron, TimeZone), String> {
    let tz = TimeZone::get(timezone).map_err(|e| format!("time zone `{timezone}`: {e}"))?;
    Ok((Cron::parse(cron)?, tz))
}

fn system(t: Timestamp) -> SystemTime {
    SystemTime::from(t)
}

fn timestamp(t: SystemTime) -> Timestamp {
    Timestamp::try_from(t).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// `t` in `timezone`, as RFC 3339 with the zone's offset then.
fn shown(t: SystemTime, timezone: &str) -> String {
    in_zone(timestamp(t), timezone)
}

/// `t` in `timezone`, as RFC 3339 with the zone's offset then.
pub fn in_zone(t: Timestamp, timezone: &str) -> String {
    let tz = TimeZone::get(timezone).unwrap_or(TimeZone::UTC);
    t.to_zoned(tz).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
}

pub(super) fn choice<T: Copy + PartialEq>(options: &[(&'static str, T)], value: T) -> &'static str {
    options.iter().find(|(_, v)| *v == value).map_or("", |(k, _)| k)
}

pub(super) fn from_choice<T: Copy + Default>(options: &[(&'static str, T)], text: &str) -> T {
    options.iter().find(|(k, _)| *k == text).map_or_else(T::default, |(_, v)| *v)
}

impl PgStore {
    /// Keeps `files` and puts the file's `schedules` in the store under
    /// `namespace` as `WORKFLOW/NAME`; the workflow's schedules the file no
    /// longer has are removed. A schedule whose cron expression and zone
    /// are unchanged keeps its next tick (and its paused state).
    pub async fn put_schedules(
        &self,
        template: &ScheduleTemplate,
        files: &RunFiles,
        schedules: &[ScheduleDecl],
        hooks: &[TriggerDecl],
        now: Timestamp,
    ) -> Result<PutSchedules, StoreError> {
        let StoredBinding { concurrency, components, vars, namespace } = template.binding.stored();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let hashes = store_files(&tx, files).await?;
        // The namespace's files (its runs' and `serve`'s webhooks read them).
        for (_, hash) in &hashes {
            tx.execute("INSERT INTO namespace_files (namespace, sha256) VALUES ($1, $2) ON CONFLICT DO NOTHING", &[&namespace, hash]).await.map_err(db)?;
        }
        let targets = super::targets_text(&template.targets);
        let mut out = PutSchedules::default();
        let mut names = Vec::new();
        for s in schedules {
            let name = format!("{}/{}", template.workflow, s.name);
            let tz = TimeZone::get(&s.timezone).map_err(|e| StoreError::Backend(format!("schedule {name}: time zone `{}`: {e}", s.timezone)))?;
            let next = s.parsed.next_after(now, &tz);
            let row = tx
                .query_one(
                    "INSERT INTO schedules (namespace, name, workflow, file, sha256, cron, timezone, input, catchup, overlap, targets, components, vars, concurrency, priority, next_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
                     ON CONFLICT (namespace, name) DO UPDATE SET workflow = $3, file = $4, sha256 = $5, input = $8, catchup = $9, overlap = $10,
                        targets = $11, components = $12, vars = $13, concurrency = $14, priority = $15,
                        next_at = CASE WHEN schedules.cron = $6 AND schedules.timezone = $7 THEN schedules.next_at ELSE $16 END,
                        cron = $6, timezone = $7
                     RETURNING next_at, paused",
                    &[
                        &namespace,
                        &name,
                        &template.workflow,
                        &template.file,
                        &template.sha256,
                        &s.cron,
                        &s.timezone,
                        &s.input.to_string(),
                        &choice(&Catchup::ALL, s.catchup),
                        &choice(&Overlap::ALL, s.overlap),
                        &targets,
                        &components,
                        &vars,
                        &concurrency,
                        &template.binding.priority,
                        &next.map(system),
                    ],
                )
                .await
                .map_err(db)?;
            tx.execute("DELETE FROM schedule_files WHERE namespace = $1 AND name = $2", &[&namespace, &name]).await.map_err(db)?;
            for (path, hash) in &hashes {
                tx.execute("INSERT INTO schedule_files (namespace, name, path, sha256) VALUES ($1, $2, $3, $4)", &[&namespace, &name, path, hash])
                    .await
                    .map_err(db)?;
            }
            let paused: bool = row.get(1);
            out.put.push((name.clone(), if paused { None } else { row.get::<_, Option<SystemTime>>(0).map(timestamp) }));
            names.push(name);
        }
        let removed = tx
            .query("DELETE FROM schedules WHERE namespace = $1 AND workflow = $2 AND name <> ALL($3) RETURNING name", &[&namespace, &template.workflow, &names])
            .await
            .map_err(db)?;
        out.removed = removed.iter().map(|r| r.get(0)).collect();
        // Webhooks: a name is the store's (its URL has no namespace).
        let mut hook_names = Vec::new();
        for h in hooks {
            let held = tx
                .query_opt("SELECT namespace, workflow FROM hooks WHERE name = $1 FOR UPDATE", &[&h.webhook])
                .await
                .map_err(db)?
                .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)));
            if let Some((ns, wf)) = held.filter(|(ns, wf)| ns != namespace || *wf != template.workflow) {
                return Err(StoreError::Conflict(format!(
                    "webhook `{}` is workflow {wf}'s in namespace `{ns}`: name this one otherwise (or remove that one first)",
                    h.webhook
                )));
            }
            tx.execute(
                "INSERT INTO hooks (name, namespace, workflow, file, sha256, secret, targets, components, vars, concurrency, priority)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT (name) DO UPDATE SET file = $4, sha256 = $5, secret = $6, targets = $7, components = $8, vars = $9, concurrency = $10, priority = $11",
                &[&h.webhook, &namespace, &template.workflow, &template.file, &template.sha256, &h.secret, &targets, &components, &vars, &concurrency, &template.binding.priority],
            )
            .await
            .map_err(db)?;
            tx.execute("DELETE FROM hook_files WHERE name = $1", &[&h.webhook]).await.map_err(db)?;
            for (path, hash) in &hashes {
                tx.execute("INSERT INTO hook_files (name, path, sha256) VALUES ($1, $2, $3)", &[&h.webhook, path, hash]).await.map_err(db)?;
            }
            out.hooks.push(h.webhook.clone());
            hook_names.push(h.webhook.clone());
        }
        let removed = tx
            .query("DELETE FROM hooks WHERE namespace = $1 AND workflow = $2 AND name <> ALL($3) RETURNING name", &[&namespace, &template.workflow, &hook_names])
            .await
            .map_err(db)?;
        out.removed.extend(removed.iter().map(|r| format!("webhook {}", r.get::<_, String>(0))));
        tx.commit().await.map_err(db)?;
        Ok(out)
    }

    /// The schedules of `namespaces` (`None`: of all), by namespace and name.
    pub async fn schedules(&self, namespaces: Option<&[String]>) -> Result<Vec<ScheduleRecord>, StoreError> {
        let client = self.client().await?;
        let all: Vec<String> = namespaces.map(<[String]>::to_vec).unwrap_or_default();
        let rows = client
            .query(
                "SELECT s.namespace, s.name, s.workflow, s.cron, s.timezone, s.catchup, s.overlap, s.paused, s.next_at, t.tick, t.outcome, t.run_id
                 FROM schedules s
                 LEFT JOIN LATERAL (SELECT tick, outcome, run_id FROM schedule_ticks k WHERE k.namespace = s.namespace AND k.name = s.name ORDER BY tick DESC LIMIT 1) t ON true
                 WHERE $1 OR s.namespace = ANY($2) ORDER BY s.namespace, s.name",
                &[&namespaces.is_none(), &all],
            )
            .await
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| {
                let timezone: String = r.get(4);
                let paused: bool = r.get(7);
                ScheduleRecord {
                    namespace: r.get(0),
                    name: r.get(1),
                    workflow: r.get(2),
                    cron: r.get(3),
                    catchup: r.get(5),
                    overlap: r.get(6),
                    paused,
                    next_at: r.get::<_, Option<SystemTime>>(8).filter(|_| !paused).map(|t| shown(t, &timezone)),
                    last_tick: r.get::<_, Option<SystemTime>>(9).map(|t| shown(t, &timezone)),
                    last_outcome: r.get(10),
                    last_run: r.get(11),
                    timezone,
                }
            })
            .collect())
    }

    /// Pauses (`paused`) or resumes schedule `name` of `namespace`; a
    /// resumed schedule goes on from its next tick after `now` (the ticks
    /// while it was paused are not missed ones). False if there is none.
    pub async fn pause_schedule(&self, namespace: &str, name: &str, paused: bool, now: Timestamp) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let Some(row) = tx
            .query_opt("SELECT cron, timezone FROM schedules WHERE namespace = $1 AND name = $2 FOR UPDATE", &[&namespace, &name])
            .await
            .map_err(db)?
        else {
            return Ok(false);
        };
        let (cron, tz) = parse(row.get(0), row.get(1)).map_err(StoreError::Backend)?;
        let next = cron.next_after(now, &tz).map(system);
        tx.execute(
            "UPDATE schedules SET paused = $3, next_at = CASE WHEN $3 THEN next_at ELSE $4 END WHERE namespace = $1 AND name = $2",
            &[&namespace, &name, &paused, &next],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(true)
    }

    /// Removes schedule `name` of `namespace` (the runs it started stay).
    /// False if there is none.
    pub async fn remove_schedule(&self, namespace: &str, name: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = client.execute("DELETE FROM schedules WHERE namespace = $1 AND name = $2", &[&namespace, &name]).await.map_err(db)?;
        client.execute("DELETE FROM schedule_ticks WHERE namespace = $1 AND name = $2", &[&namespace, &name]).await.map_err(db)?;
        Ok(n > 0)
    }

    /// Webhook `name`, with its files; none if there is none.
    pub async fn hook(&self, name: &str) -> Result<Option<HookRecord>, StoreError> {
        let client = self.client().await?;
        let Some(r) = client
            .query_opt(
                "SELECT name, namespace, workflow, file, sha256, secret, targets, components, vars, concurrency, priority, paused FROM hooks WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(db)?
        else {
            return Ok(None);
        };
        let files = client.query("SELECT path, sha256 FROM hook_files WHERE name = $1", &[&name]).await.map_err(db)?;
        Ok(Some(HookRecord {
            name: r.get(0),
            namespace: r.get(1),
            workflow: r.get(2),
            file: r.get(3),
            sha256: r.get(4),
            secret: r.get(5),
            targets: super::targets_of(r.get(6)),
            binding: Binding::from_stored(r.get(9), r.get(7), r.get(8), r.get(1), r.get(10)),
            paused: r.get(11),
            files: files.iter().map(|f| (f.get(0), f.get(1))).collect(),
        }))
    }

    /// Takes delivery `delivery` (its id, or its signature) of webhook
    /// `hook`: queues a run with `input`, unless that delivery was taken
    /// before; the delivery's row and the run are one transaction.
    pub async fn deliver(&self, hook: &HookRecord, delivery: &str, input: Value) -> Result<Delivered, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let taken = tx
            .execute("INSERT INTO hook_deliveries (name, delivery) VALUES ($1, $2) ON CONFLICT DO NOTHING", &[&hook.name, &delivery])
            .await
            .map_err(db)?;
        if taken == 0 {
            let before = tx.query_opt("SELECT run_id FROM hook_deliveries WHERE name = $1 AND delivery = $2", &[&hook.name, &delivery]).await.map_err(db)?;
            return Ok(Delivered::Again(before.and_then(|r| r.get(0))));
        }
        let run = NewRun {
            id: crate::exec::new_run_id(),
            workflow: hook.workflow.clone(),
            file: hook.file.clone(),
            sha256: hook.sha256.clone(),
            input,
            targets: hook.targets.clone(),
            text: None,
        };
        let trigger = Trigger { kind: Some("webhook"), source: Some(hook.name.clone()), scheduled_time: None };
        insert_run(&tx, &run, &hook.files, &hook.binding, &trigger).await?;
        tx.execute("UPDATE hook_deliveries SET run_id = $3 WHERE name = $1 AND delivery = $2", &[&hook.name, &delivery, &run.id]).await.map_err(db)?;
        // Deliveries a week old are past any sender's retries (GitHub's
        // redeliveries and the signed timestamps' 5 minutes): forgotten.
        tx.execute("DELETE FROM hook_deliveries WHERE name = $1 AND at < now() - interval '7 days'", &[&hook.name]).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(Delivered::Started(run.id))
    }

    /// The webhooks of `namespaces` (`None`: of all), by name.
    pub async fn hooks(&self, namespaces: Option<&[String]>) -> Result<Vec<HookListing>, StoreError> {
        let client = self.client().await?;
        let all: Vec<String> = namespaces.map(<[String]>::to_vec).unwrap_or_default();
        let rows = client
            .query(
                "SELECT h.name, h.namespace, h.workflow, h.secret, h.paused, to_char(d.at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), d.run_id
                 FROM hooks h
                 LEFT JOIN LATERAL (SELECT at, run_id FROM hook_deliveries k WHERE k.name = h.name ORDER BY at DESC LIMIT 1) d ON true
                 WHERE $1 OR h.namespace = ANY($2) ORDER BY h.name",
                &[&namespaces.is_none(), &all],
            )
            .await
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| HookListing {
                name: r.get(0),
                namespace: r.get(1),
                workflow: r.get(2),
                secret: r.get(3),
                paused: r.get(4),
                last_delivery: r.get(5),
                last_run: r.get(6),
            })
            .collect())
    }

    /// Pauses (deliveries are refused, 503) or resumes webhook `name` of
    /// `namespace`. False if there is none.
    pub async fn pause_hook(&self, namespace: &str, name: &str, paused: bool) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = client.execute("UPDATE hooks SET paused = $3 WHERE namespace = $1 AND name = $2", &[&namespace, &name, &paused]).await.map_err(db)?;
        Ok(n > 0)
    }

    /// Removes webhook `name` of `namespace` (the runs it started stay).
    /// False if there is none.
    pub async fn remove_hook(&self, namespace: &str, name: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = client.execute("DELETE FROM hooks WHERE namespace = $1 AND name = $2", &[&namespace, &name]).await.map_err(db)?;
        if n > 0 {
            client.execute("DELETE FROM hook_deliveries WHERE name = $1", &[&name]).await.map_err(db)?;
        }
        Ok(n > 0)
    }

    /// The soonest next tick of any schedule not paused.
    pub async fn next_tick(&self) -> Result<Option<Timestamp>, StoreError> {
        let client = self.client().await?;
        let row = client.query_one("SELECT min(next_at) FROM schedules WHERE NOT paused", &[]).await.map_err(db)?;
        Ok(row.get::<_, Option<SystemTime>>(0).map(timestamp))
    }

    /// Fires the ticks due at `now` of schedules no other scheduler holds
    /// (see the module's documentation); returns what each tick did.
    pub async fn fire_due(&self, now: Timestamp) -> Result<Vec<Fired>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let due = tx
            .query(
                "SELECT namespace, name, workflow, file, sha256, cron, timezone, input, catchup, overlap, targets, components, vars, concurrency, priority, next_at
                 FROM schedules WHERE NOT paused AND next_at <= $1 ORDER BY next_at LIMIT 16 FOR UPDATE SKIP LOCKED",
                &[&system(now)],
            )
            .await
            .map_err(db)?;
        let mut fired = Vec::new();
        for row in &due {
            let namespace: String = row.get(0);
            let name: String = row.get(1);
            let first = timestamp(row.get(15));
            let (cron, tz) = match parse(row.get(5), row.get(6)) {
                Ok(p) => p,
                Err(e) => {
                    // Cannot happen to a schedule `put_schedules` wrote;
                    // paused rather than retried at every pass.
                    tx.execute("UPDATE schedules SET paused = true WHERE namespace = $1 AND name = $2", &[&namespace, &name]).await.map_err(db)?;
                    fired.push(Fired { namespace, schedule: name, tick: first, outcome: Err(format!("paused: {e}")) });
                    continue;
                }
            };
            let mut ticks = vec![first];
            ticks.extend(cron.fires_between(first, now, &tz, MOST_CAUGHT_UP));
            let catchup = from_choice(&Catchup::ALL, row.get(8));
            let overlap = from_choice(&Overlap::ALL, row.get(9));
            let files: Vec<(String, String)> = tx
                .query("SELECT path, sha256 FROM schedule_files WHERE namespace = $1 AND name = $2", &[&namespace, &name])
                .await
                .map_err(db)?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let input: Value = serde_json::from_str(row.get(7)).unwrap_or(Value::Null);
            let binding = Binding::from_stored(row.get(13), row.get(11), row.get(12), namespace.clone(), row.get(14));
            for tick in ticks_to_fire(&ticks, now, catchup) {
                // The key: a tick recorded is a tick fired.
                let inserted = tx
                    .execute(
                        "INSERT INTO schedule_ticks (namespace, name, tick, outcome) VALUES ($1, $2, $3, 'started') ON CONFLICT DO NOTHING",
                        &[&namespace, &name, &system(tick)],
                    )
                    .await
                    .map_err(db)?;
                if inserted == 0 {
                    continue;
                }
                let running: Vec<String> = tx
                    .query("SELECT id FROM runs WHERE namespace = $1 AND trigger_source = $2 AND status = 'running' ORDER BY seq", &[&namespace, &name])
                    .await
                    .map_err(db)?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                let outcome = match decide_overlap(overlap, &running) {
                    OverlapDecision::Skip(why) => Err(why),
                    decision => {
                    if let OverlapDecision::CancelThenStart(previous) = decision {
                        tx.execute("UPDATE runs SET cancel_requested = true WHERE id = ANY($1)", &[&previous]).await.map_err(db)?;
                    }
                    let run = NewRun {
                        id: crate::exec::new_run_id(),
                        workflow: row.get(2),
                        file: row.get(3),
                        sha256: row.get(4),
                        input: input.clone(),
                        targets: super::targets_of(row.get(10)),
                        text: None,
                    };
                    let trigger = Trigger { kind: Some("schedule"), source: Some(name.clone()), scheduled_time: Some(system(tick)) };
                    match insert_run(&tx, &run, &files, &binding, &trigger).await {
                        Ok(()) => Ok(run.id),
                        Err(StoreError::Quota(why)) => Err(format!("refused: {why}")),
                        Err(e) => return Err(e),
                    }
                    }
                };
                let (text, run_id) = match &outcome {
                    Ok(id) => ("started".to_string(), Some(id.clone())),
                    Err(why) => (why.clone(), None),
                };
                tx.execute(
                    "UPDATE schedule_ticks SET outcome = $4, run_id = $5 WHERE namespace = $1 AND name = $2 AND tick = $3",
                    &[&namespace, &name, &system(tick), &text, &run_id],
                )
                .await
                .map_err(db)?;
                fired.push(Fired { namespace: namespace.clone(), schedule: name.clone(), tick, outcome });
            }
            let next = cron.next_after(now.max(*ticks.last().unwrap_or(&first)), &tz).map(system);
            tx.execute("UPDATE schedules SET next_at = $3 WHERE namespace = $1 AND name = $2", &[&namespace, &name, &next]).await.map_err(db)?;
            // The keys of ticks a day old guard nothing (`next_at` is past them).
            tx.execute(
                "DELETE FROM schedule_ticks WHERE namespace = $1 AND name = $2 AND tick < $3",
                &[&namespace, &name, &system(now.checked_sub(jiff::SignedDuration::from_hours(24)).unwrap_or(now))],
            )
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(fired)
    }
}

/// How long a scheduler waits before it looks again, with `next` the
/// soonest next tick: until then, and at least every second (to see
/// schedules added or resumed); a tick already due (one another scheduler
/// holds) is looked at again soon, not at once.
pub fn until_next(next: Option<Timestamp>) -> Duration {
    let until = next.map(|t| t.duration_since(Timestamp::now())).and_then(|d| Duration::try_from(d).ok());
    until.unwrap_or(Duration::ZERO).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Fires schedules until `stop` (`serve`, `worker --scheduler`): at the
/// soonest next tick, and at least every second (to see schedules added
/// or resumed). Store errors are logged and retried with backoff.
pub async fn scheduler(store: std::sync::Arc<PgStore>, stop: crate::sandbox::CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        let pass = async {
            for f in store.fire_due(Timestamp::now()).await? {
                match &f.outcome {
                    Ok(run) => tracing::info!("schedule {} ({}): the tick of {} started run {run}", f.schedule, f.namespace, f.tick),
                    Err(why) => tracing::warn!("schedule {} ({}): the tick of {}: {why}", f.schedule, f.namespace, f.tick),
                }
            }
            store.next_tick().await
        };
        let wait = match pass.await {
            Ok(next) => {
                backoff = Duration::from_millis(100);
                until_next(next)
            }
            Err(e) => {
                tracing::warn!("scheduler: {e}; retrying in {backoff:?}");
                let wait = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn catchup_decides_which_missed_ticks_start_runs() {
        let now = at("2026-01-01T12:00:05Z");
        // Three missed hours, and the tick of noon on time.
        let due = [at("2026-01-01T09:00:00Z"), at("2026-01-01T10:00:00Z"), at("2026-01-01T11:00:00Z"), at("2026-01-01T12:00:00Z")];
        assert_eq!(ticks_to_fire(&due, now, Catchup::None), [due[3]]);
        assert_eq!(ticks_to_fire(&due, now, Catchup::One), [due[3]]);
        assert_eq!(ticks_to_fire(&due, now, Catchup::All), due);
        // Only missed ones: `one` starts the latest.
        let now = at("2026-01-01T11:30:00Z");
        assert_eq!(ticks_to_fire(&due[..3], now, Catchup::None), []);
        assert_eq!(ticks_to_fire(&due[..3], now, Catchup::One), [due[2]]);
        assert_eq!(ticks_to_fire(&due[..3], now, Catchup::All), due[..3]);
    }

    #[test]
    fn overlap_starts_skips_or_cancels_the_runs_still_running() {
        let running = vec!["r1".to_string(), "r2".to_string()];
        assert_eq!(decide_overlap(Overlap::Allow, &running), OverlapDecision::Start);
        assert_eq!(decide_overlap(Overlap::Skip, &[]), OverlapDecision::Start);
        assert_eq!(decide_overlap(Overlap::Skip, &running), OverlapDecision::Skip("skipped: its run r1 is still running (overlap: skip)".into()));
        assert_eq!(decide_overlap(Overlap::CancelPrevious, &running), OverlapDecision::CancelThenStart(running.clone()));
    }
}
