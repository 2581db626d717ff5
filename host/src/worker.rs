//! `sandflow worker`: a stateless process that runs steps of runs queued
//! in a PostgreSQL run store ([`crate::store::queue`]).
//!
//! A worker claims ready jobs up to its concurrency, runs each attempt in
//! its own sandbox (components fetched from the store by SHA-256, checked,
//! compiled and cached on its own disk), and commits each result with what
//! it decides in one transaction. It heartbeats the leases of the jobs it
//! holds, interrupts them within [`INTERRUPT_POLL`] when their run is
//! cancelled or out of time, looks after runs whose workers were lost, and
//! waits on `LISTEN` when there is nothing to do.
//!
//! Secrets come from the worker's own environment or secrets file and are
//! never written to the store; `dirs` grants and `/builtin/load_file` name
//! paths on the worker's machine.

use crate::exec::{self, Redactor, RunContext, StepRunner};
use crate::failure::{FailureKind, StepFailure};
use crate::sandbox::{CancellationToken, StepLog};
use crate::store::queue::{Claimed, Claimer, Finished, JOBS_CHANNEL, RUN_TO_START, RunCtx, RunHead};
use crate::store::whole::{Hold, Recorded, WholeStart};
use crate::store::{PgStore, RunStore, StoreError, StoreServices};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};

/// How often a worker looks for new runs and claimable jobs without being told.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// How long an idle worker keeps the store's answer to "when is the
/// soonest job waiting for its time (a timer, a retry's delay)?" before
/// asking again. Asked at every idle moment, it was a statement (and a
/// transaction) per step of a chain. Jobs this worker's own commits queue
/// for later wake it by themselves (`Outcome::retry_in`); those of other
/// workers are found at most this late (they wake their own worker).
const DUE_FRESH: Duration = Duration::from_millis(250);

/// How often a worker checks whether the runs it works on were cancelled.
pub const INTERRUPT_POLL: Duration = Duration::from_millis(250);

/// How a worker is set up.
#[derive(Clone)]
pub struct WorkerConfig {
    /// Names the worker in the store (leases, `worker lost` messages).
    pub name: String,
    /// Most attempts running at once.
    pub concurrency: usize,
    /// How long a claim lasts without a heartbeat; heartbeats come three
    /// times per lease.
    pub lease: Duration,
    /// Values for `secrets.NAME` in runs of the `default` namespace.
    pub secrets: BTreeMap<String, String>,
    /// Values for `secrets.NAME` in runs of each other namespace: a run
    /// gets its namespace's, and no other's.
    pub namespace_secrets: BTreeMap<String, BTreeMap<String, String>>,
    /// What this worker offers: it runs steps whose `runs_on` labels are all here.
    pub labels: Vec<String>,
    /// How often runs whose workers were lost are looked after.
    pub care_every: Duration,
    /// Runs of at most this many steps, or chains of any length, that
    /// need nothing another worker has are run whole by the worker that
    /// starts them ([`exec::core::runs_whole`]); 0: every run goes step
    /// by step.
    pub whole_runs: usize,
    /// Works on this run only, as the worker inside `sandflow run`,
    /// `resume` and `retry` does: it starts, claims and looks after no
    /// other run, so no other run gets this process's secrets or keeps it
    /// alive. `None`: any run (`sandflow worker`).
    pub only_run: Option<String>,
}

impl WorkerConfig {
    /// The secrets runs of `namespace` get (none, for a namespace this
    /// worker has no secrets for).
    pub fn secrets_of(&self, namespace: &str) -> &BTreeMap<String, String> {
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        match namespace {
            crate::store::DEFAULT_NAMESPACE | "" => &self.secrets,
            other => self.namespace_secrets.get(other).unwrap_or(&NONE),
        }
    }

    /// Slots by default: 16, or the CPU count if more. A worker commits the
    /// results it holds together, so slots beyond the CPUs buy throughput
    /// (BENCHMARKS.md: 2,000 `echo` steps on 2 workers, 2 slots each against
    /// 16 each) at the price of memory: each step may use its limit.
    pub fn default_concurrency() -> usize {
        crate::exec::cpu_count().max(16)
    }

    /// `--whole-runs` by default: runs of up to 64 steps run whole.
    pub const WHOLE_RUNS: usize = 64;

    /// A unique default name: host, process id and a random suffix.
    pub fn default_name() -> String {
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "worker".into());
        let tail = uuid::Uuid::now_v7().simple().to_string();
        format!("{host}-{}-{}", std::process::id(), &tail[tail.len() - 6..])
    }
}

/// Free slots promised to one claim ([`Worker::reserve`]), given back
/// when dropped.
struct Reservation<'a> {
    worker: &'a Worker,
    /// How many.
    slots: usize,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.worker.reserved.fetch_sub(self.slots, Ordering::SeqCst);
    }
}

/// A worker over one store, with a runner for its steps.
pub struct Worker {
    store: Arc<PgStore>,
    runner: Arc<dyn StepRunner>,
    config: WorkerConfig,
    /// Runs this worker has loaded, by id.
    runs: Mutex<HashMap<String, Arc<RunCtx>>>,
    /// Workflows this worker has prepared (parsed, planned, components
    /// loaded), by what they are prepared from ([`RunHead::prepared_key`]):
    /// every run of one workflow shares its preparation.
    prepared: Mutex<HashMap<String, Arc<exec::Prepared>>>,
    /// Jobs held here, from their claim to their result's commit, by id.
    active: Mutex<HashMap<i64, Active>>,
    /// Slots promised to claims in flight ([`Worker::reserve`]): the main
    /// loop's claims and the commit loop's run at the same time, and each
    /// counted the same free slots before this (a worker at
    /// `--concurrency 2` held 3 jobs at once, at 16 up to 30).
    reserved: std::sync::atomic::AtomicUsize,
    /// The slots of the steps of runs run whole here: each attempt of
    /// theirs holds one while it runs. Jobs are claimed only into slots
    /// that neither they nor such attempts hold ([`Worker::free`]); a whole
    /// run's step does not wait for jobs, so for a moment a worker may run
    /// up to twice its `--concurrency` attempts (its jobs are claimed when
    /// steps of its whole runs do not hold the slots). Jobs holding permits
    /// too was tried and not kept: a worker's claim and commit transactions
    /// then deadlocked (a wide run: 7 deadlocks, 3-10× slower), for a
    /// reason not found yet (BENCHMARKS.md, "Small runs run whole").
    slots: Arc<tokio::sync::Semaphore>,
    /// Runs run whole here, by id: those whose holds it renews.
    holds: Mutex<HashSet<String>>,
    /// A run run whole here ended, or was handed over.
    whole_ended: Notify,
    /// Fired as the worker stops: the runs it runs whole start no more
    /// steps, and once none of theirs runs they are handed over to other
    /// workers ([`PgStore::hand_over`]).
    hand_off: CancellationToken,
    /// Something may be claimable: a notification, or a local commit.
    wake: Notify,
    /// A notification or the timer came: look for new runs too (a local
    /// commit only makes jobs of runs already started).
    look_for_runs: std::sync::atomic::AtomicBool,
    /// Jobs this worker could claim may be ready: a notification, the timer,
    /// a retry's delay passed, or the last claim filled every free slot.
    /// Without it a worker with free slots does not ask the store.
    claimable: std::sync::atomic::AtomicBool,
    /// Attempts run here that succeeded, and that failed.
    succeeded: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
    /// How long attempts took, and failures by kind: `--metrics`.
    timings: Mutex<Timings>,
    /// Lines running steps write, to the store as they come (a
    /// [`Event::StepLogLine`] each, secrets masked); `run` starts the writer.
    live: mpsc::UnboundedSender<exec::Event>,
    live_rx: Mutex<Option<mpsc::UnboundedReceiver<exec::Event>>>,
}

/// A job held by a worker, from its claim to its result's commit: its run,
/// what cancels it, and when it was claimed.
struct Active(String, CancellationToken, tokio::time::Instant);

/// How long at most a result waits for the attempts claimed just before
/// it to end, to share its commit: attempts claimed together mostly end
/// together, and their results then cost one transaction, not two (a wide
/// run's commits otherwise alternated between one result and fifteen:
/// BENCHMARKS.md, "Chains run whole, batches in one round trip, results committed together").
const COMMIT_LINGER: Duration = Duration::from_millis(1);

/// Attempts claimed longer ago than this are not waited for by a commit
/// ([`COMMIT_LINGER`]): they may run long.
const COMMIT_FRESH: Duration = Duration::from_millis(5);

/// Whether a run is run whole by the worker that starts it.
enum Whole {
    Yes,
    /// It would be, but this worker runs as many whole runs as it has slots.
    Full,
    /// It goes step by step ([`exec::core::runs_whole`]).
    No,
}

/// How long the events of a run run whole may wait to be recorded with
/// others when no step waits for them (see [`crate::store::StoreSink::writing`]):
/// a small run is recorded in about one transaction per dependency
/// level, and a step shows as running at most this late.
const WHOLE_LINGER: Duration = Duration::from_millis(100);

/// How long a worker tries to record a batch of a run it runs whole while
/// the store does not answer, before it gives the run up (another worker
/// then goes on with it).
const RECORD_TRIES: Duration = Duration::from_secs(10);

/// Records a batch of events of a run held by this worker, trying again
/// while the store does not answer (a batch is written whole or not at
/// all, and one found written already is not written twice).
async fn record_held(store: &PgStore, hold: &mut Hold, batch: Vec<exec::Event>) -> Result<(), String> {
    let began = std::time::Instant::now();
    let mut backoff = Duration::from_millis(20);
    loop {
        match store.record_whole(hold, batch.clone()).await {
            Ok(Recorded::Yes) => return Ok(()),
            Ok(Recorded::HoldLost) => {
                return Err(format!("worker {} no longer holds run {} (its hold lapsed): another worker goes on with it", hold.worker, hold.run_id));
            }
            Err(e) if began.elapsed() < RECORD_TRIES => {
                tracing::warn!("worker {}: recording run {} failed: {e}; retrying in {backoff:?}", hold.worker, hold.run_id);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(format!("the run store {} could not record the run: {e}", RunStore::location(store))),
        }
    }
}

/// At `-v`, a line per attempt of a run run whole, as for a claimed job:
/// its run, step and how it ended.
fn tell(name: &str, event: &exec::Event) {
    if !tracing::enabled!(tracing::Level::INFO) {
        return;
    }
    match event {
        exec::Event::StepRetrying { run_id: run, step, attempt, error: f, .. } => {
            tracing::info!("worker {name}: run {run} step {step} attempt {attempt} failed ({}): {}", f.kind.as_str(), f.message)
        }
        exec::Event::StepFinished { run_id: run, step, attempt, duration, error, .. } if *attempt > 0 => {
            let took = crate::units::format_duration(*duration);
            match error {
                None => tracing::info!("worker {name}: run {run} step {step} attempt {attempt} succeeded in {took}"),
                Some(f) => tracing::info!("worker {name}: run {run} step {step} attempt {attempt} failed in {took} ({}): {}", f.kind.as_str(), f.message),
            }
        }
        _ => {}
    }
}

/// Runs the attempts of runs run whole in their worker's slots, counted
/// as its jobs' attempts are.
struct SlotRunner {
    worker: Arc<Worker>,
}

impl exec::Loader for SlotRunner {
    fn load(&self, origin: &str, bytes: &[u8]) -> Result<exec::Loaded, crate::sandbox::LoadError> {
        self.worker.runner.load(origin, bytes)
    }
}

#[async_trait::async_trait]
impl StepRunner for SlotRunner {
    async fn run(&self, job: exec::Job, services: Arc<dyn crate::sandbox::HostServices>, cancel: &CancellationToken) -> crate::sandbox::StepOutcome {
        let _slot = tokio::select! {
            slot = self.worker.slots.acquire() => slot.expect("the slots are never closed"),
            _ = cancel.cancelled() => {
                let result = Err(StepFailure::new(FailureKind::Cancelled, "cancelled before it started"));
                return crate::sandbox::StepOutcome { result, fuel_used: 0, duration: Duration::ZERO, log: StepLog::default() };
            }
        };
        let began = std::time::Instant::now();
        let outcome = self.worker.runner.run(job, services, cancel).await;
        self.worker.count(&outcome.result, began.elapsed());
        outcome
    }
}

/// What a worker measured of the attempts it ran.
#[derive(Default)]
struct Timings {
    durations: crate::metrics::Histogram,
    failures: std::collections::BTreeMap<&'static str, u64>,
}

/// Why a run's context could not be loaded.
enum ContextError {
    /// The store did not answer: try again.
    Store(StoreError),
    /// The run cannot be loaded (its workflow or files): it never will be.
    Load(String),
}

/// Loaded runs kept per worker; the oldest are dropped beyond this.
const RUN_CACHE: usize = 256;

/// Prepared workflows kept per worker; the cache starts afresh beyond this.
const PREPARED_CACHE: usize = 64;

impl Worker {
    /// A worker that runs claimed attempts with `runner`; [`Worker::run`] starts it.
    pub fn new(store: Arc<PgStore>, runner: Arc<dyn StepRunner>, config: WorkerConfig) -> Arc<Worker> {
        let (live, live_rx) = mpsc::unbounded_channel();
        let slots = Arc::new(tokio::sync::Semaphore::new(config.concurrency));
        Arc::new(Worker {
            live,
            live_rx: Mutex::new(Some(live_rx)),
            store,
            runner,
            config,
            runs: Mutex::new(HashMap::new()),
            prepared: Mutex::new(HashMap::new()),
            active: Mutex::new(HashMap::new()),
            reserved: std::sync::atomic::AtomicUsize::new(0),
            slots,
            holds: Mutex::new(HashSet::new()),
            whole_ended: Notify::new(),
            hand_off: CancellationToken::new(),
            wake: Notify::new(),
            look_for_runs: std::sync::atomic::AtomicBool::new(true),
            claimable: std::sync::atomic::AtomicBool::new(true),
            succeeded: Default::default(),
            failed: Default::default(),
            timings: Default::default(),
        })
    }

    /// Its name, as the store records it.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The one run it works on, if it works on one only.
    fn only(&self) -> Option<&str> {
        self.config.only_run.as_deref()
    }

    /// Works until `stop` fires, then lets the attempts it holds finish and
    /// commits them. Store errors are retried with backoff; they never end
    /// the worker.
    pub async fn run(self: &Arc<Self>, stop: CancellationToken) {
        let (done_tx, done_rx) = mpsc::unbounded_channel::<Finished>();
        let committer = tokio::spawn(self.clone().commit_loop(done_rx, done_tx.downgrade(), stop.clone()));
        let listener = tokio::spawn(listen(self.store.clone(), JOBS_CHANNEL, self.clone(), stop.clone()));
        let heartbeat = tokio::spawn(self.clone().heartbeat_loop(stop.clone()));
        let interrupts = tokio::spawn(self.clone().interrupt_loop(stop.clone()));
        let live = self.live_rx.lock().expect("not poisoned").take().map(|lines| tokio::spawn(live_log_loop(self.store.clone(), lines)));
        let mut last_care = tokio::time::Instant::now() - self.config.care_every;
        // When the store was last asked for the soonest job waiting for its
        // time, and its answer (see `DUE_FRESH`).
        let mut due_asked: Option<(tokio::time::Instant, Option<tokio::time::Instant>)> = None;
        let mut last_look = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(50);
        tracing::info!("worker {} started (concurrency {})", self.config.name, self.config.concurrency);
        let mut registered = false;
        while !stop.is_cancelled() {
            let result: Result<bool, StoreError> = async {
                let mut busy = false;
                // Listed among the store's workers (`sandflow workers`).
                if !registered {
                    let c = &self.config;
                    self.store.worker_started(&c.name, &c.labels, c.concurrency, c.lease).await?;
                    registered = true;
                }
                // A delayed retry becomes claimable with no notification:
                // ask at least this often, however busy.
                if last_look.elapsed() >= LOOK_EVERY {
                    last_look = tokio::time::Instant::now();
                    self.look_for_runs.store(true, Ordering::SeqCst);
                    self.claimable.store(true, Ordering::SeqCst);
                }
                if self.look_for_runs.swap(false, Ordering::SeqCst) {
                    for (run_id, head) in self.store.runs_to_start(8, self.only()).await? {
                        match self.context_of(&run_id, Some(head)).await {
                            Ok(run) => {
                                match self.whole(&run) {
                                    Whole::Yes => match self.store.start_whole(&run_id, &self.config.name, run.attempt, self.config.lease).await? {
                                        WholeStart::Held(hold) => {
                                            self.run_whole(hold, run);
                                            busy = true;
                                            continue;
                                        }
                                        // Another worker started it first.
                                        WholeStart::Taken => continue,
                                        WholeStart::Stale => {
                                            self.stale(&run_id);
                                            busy = true;
                                            continue;
                                        }
                                        WholeStart::StepByStep => {}
                                    },
                                    // Another worker may have room for it.
                                    Whole::Full => continue,
                                    Whole::No => {}
                                }
                                let reserved = self.reserve();
                                let outcome = self.store.start_run(&run_id, &run, self.claimer(reserved.slots)).await?;
                                if outcome.stale {
                                    self.stale(&run_id);
                                }
                                self.wake_in(outcome.retry_in);
                                busy |= outcome.done || outcome.stale;
                                for job in outcome.claimed {
                                    self.spawn_job(job, done_tx.clone());
                                }
                                drop(reserved);
                            }
                            Err(ContextError::Store(e)) => return Err(e),
                            Err(ContextError::Load(e)) => self.abandon(&run_id, e).await?,
                        }
                    }
                }
                let reserved = self.reserve();
                let free = reserved.slots;
                if free > 0 && self.claimable.swap(false, Ordering::SeqCst) {
                    let claimed = self.store.claim(&self.config.name, &self.config.labels, free as i64, self.config.lease, self.only()).await;
                    let claimed = claimed.inspect_err(|_| self.claimable.store(true, Ordering::SeqCst))?;
                    if claimed.len() == free {
                        // More may be ready.
                        busy = true;
                        self.claimable.store(true, Ordering::SeqCst);
                    }
                    for job in claimed {
                        self.spawn_job(job, done_tx.clone());
                    }
                    drop(reserved);
                    // Runs with a `concurrency`: claimed under each run's lock.
                    if self.free() > 0 {
                        for run_id in self.store.limited_runs_ready(&self.config.labels, self.only()).await? {
                            if self.free() == 0 {
                                busy = true;
                                self.claimable.store(true, Ordering::SeqCst);
                                break;
                            }
                            match self.context(&run_id).await {
                                Ok(run) => {
                                    // Reserved once the run is loaded (a load may compile).
                                    let reserved = self.reserve();
                                    let claimer = Claimer { others: true, ..self.claimer(reserved.slots) };
                                    let outcome = self.store.claim_in_run(&run_id, &run, claimer).await?;
                                    if outcome.stale {
                                        self.stale(&run_id);
                                        busy = true;
                                    }
                                    for job in outcome.claimed {
                                        self.spawn_job(job, done_tx.clone());
                                    }
                                    drop(reserved);
                                }
                                Err(ContextError::Store(e)) => return Err(e),
                                Err(ContextError::Load(e)) => self.abandon(&run_id, e).await?,
                            }
                        }
                    }
                } else {
                    drop(reserved);
                }
                if last_care.elapsed() >= self.config.care_every {
                    last_care = tokio::time::Instant::now();
                    for run_id in self.store.runs_needing_care(self.only()).await? {
                        match self.context(&run_id).await {
                            Ok(run) => {
                                let outcome = self.store.care(&run_id, &run).await?;
                                if outcome.stale {
                                    self.stale(&run_id);
                                }
                                self.wake_in(outcome.retry_in);
                            }
                            Err(ContextError::Store(e)) => return Err(e),
                            Err(ContextError::Load(e)) => self.abandon(&run_id, e).await?,
                        }
                    }
                }
                Ok(busy)
            }
            .await;
            match result {
                Ok(true) => {
                    backoff = Duration::from_millis(50);
                    tokio::task::yield_now().await;
                }
                Ok(false) => {
                    backoff = Duration::from_millis(50);
                    // A job that waits (a timer, a retry's delay) becomes
                    // claimable with no notification: sleep until the
                    // soonest, so a durable timer wakes on time.
                    let mut nap = self.config.care_every.min(LOOK_EVERY);
                    let now = tokio::time::Instant::now();
                    let soonest = match due_asked {
                        _ if self.free() == 0 => None,
                        // A recent answer stands while what it named is still ahead.
                        Some((asked, due)) if now - asked < DUE_FRESH && due.is_none_or(|d| d > now) => due,
                        _ => match self.store.next_due(&self.config.labels, self.only()).await {
                            Ok(due) => {
                                let due = due.map(|d| now + d);
                                due_asked = Some((now, due));
                                due
                            }
                            Err(_) => None,
                        },
                    };
                    if let Some(due) = soonest.map(|d| d.saturating_duration_since(now)) {
                        nap = nap.min(due);
                        if due < LOOK_EVERY {
                            // Then claim at once, not a look later.
                            last_look = tokio::time::Instant::now() - LOOK_EVERY + due;
                        }
                    }
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(nap) => {}
                        _ = stop.cancelled() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!("worker {}: {e}; retrying in {backoff:?}", self.config.name);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        // Attempts in hand finish and are committed, as do the running
        // steps of runs run whole here, which are then handed over;
        // nothing new is claimed or started.
        self.hand_off.cancel();
        drop(done_tx);
        let _ = committer.await;
        loop {
            // Registered before the check: an end between the two is not missed.
            let ended = self.whole_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.holds.lock().expect("not poisoned").is_empty() {
                break;
            }
            ended.await;
        }
        listener.abort();
        heartbeat.abort();
        interrupts.abort();
        // Lines not yet written are in the logs the attempts recorded.
        if let Some(live) = live {
            live.abort();
        }
        if registered && let Err(e) = self.store.worker_stopped(&self.config.name).await {
            tracing::warn!("worker {}: cannot record that it stopped: {e}", self.config.name);
        }
        tracing::info!("worker {} stopped", self.config.name);
    }

    /// This worker, offering `slots` to claim into.
    fn claimer(&self, slots: usize) -> Claimer {
        let others = self.claimable.load(Ordering::SeqCst);
        Claimer { worker: self.config.name.clone(), labels: self.config.labels.clone(), slots, lease: self.config.lease, others }
    }

    /// Slots free for more jobs: neither held by a job (until its result
    /// is committed), nor promised to a claim in flight, nor held by a
    /// running step of a run run whole.
    fn free(&self) -> usize {
        let active = self.active.lock().expect("not poisoned");
        self.free_beside(&active)
    }

    /// [`Worker::free`], with the jobs held (`active`, locked).
    fn free_beside(&self, active: &HashMap<i64, Active>) -> usize {
        let reserved = self.reserved.load(Ordering::SeqCst);
        self.config.concurrency.saturating_sub(self.busy_beside(active) + reserved)
    }

    /// Promises every free slot to one claim until the reservation is
    /// dropped: drop it once the jobs claimed are held ([`Worker::spawn_job`]).
    /// Counted under the lock of the jobs held, so that two claims never
    /// count one slot.
    fn reserve(&self) -> Reservation<'_> {
        let active = self.active.lock().expect("not poisoned");
        let slots = self.free_beside(&active);
        self.reserved.fetch_add(slots, Ordering::SeqCst);
        Reservation { worker: self, slots }
    }

    /// Slots held: by jobs (until their results are committed) and by the
    /// running steps of runs run whole (which may exceed `--concurrency`
    /// together: see `slots`). Slots promised to a claim in flight are not
    /// counted: nothing runs in them yet.
    fn busy(&self) -> usize {
        self.busy_beside(&self.active.lock().expect("not poisoned"))
    }

    /// [`Worker::busy`], with the jobs held (`active`, locked).
    fn busy_beside(&self, active: &HashMap<i64, Active>) -> usize {
        let whole = self.config.concurrency - self.slots.available_permits();
        active.len() + whole
    }

    /// Whether `run` is run whole here ([`exec::core::runs_whole`]), or
    /// would be but this worker runs as many whole runs as it has slots.
    fn whole(&self, run: &RunCtx) -> Whole {
        let plan = &run.ctx.prepared().plan;
        if run.missing_secrets.is_some() {
            return Whole::No;
        }
        if let Err(why) = exec::core::runs_whole(plan, run.attempt, &self.config.labels, self.config.whole_runs) {
            tracing::debug!("worker {}: run {} goes step by step: {why}", self.config.name, run.options.run_id);
            return Whole::No;
        }
        match self.holds.lock().expect("not poisoned").len() < self.config.concurrency {
            true => Whole::Yes,
            false => Whole::Full,
        }
    }

    /// Runs a run this worker holds, whole, in a task: the in-process
    /// dispatcher runs its steps in this worker's slots, and its events are
    /// recorded in batches under the hold ([`crate::store::whole`]).
    fn run_whole(self: &Arc<Self>, hold: Hold, run: Arc<RunCtx>) {
        let (run_id, cancel_asked) = (hold.run_id.clone(), hold.cancel_asked);
        self.holds.lock().expect("not poisoned").insert(run_id.clone());
        tracing::info!("worker {}: run {run_id} runs whole here", self.config.name);
        let worker = self.clone();
        tokio::spawn(async move {
            let cancel = CancellationToken::new();
            let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let hold = Arc::new(tokio::sync::Mutex::new(hold));
            let (store, lost, stop) = (worker.store.clone(), failed.clone(), cancel.clone());
            let sink = crate::store::StoreSink::writing(
                |_| true,
                Some(WHOLE_LINGER),
                move |batch| {
                    let (store, hold, lost, stop) = (store.clone(), hold.clone(), lost.clone(), stop.clone());
                    Box::pin(async move {
                        let mut hold = hold.lock().await;
                        for event in &batch {
                            tell(&hold.worker, event);
                        }
                        let result = record_held(&store, &mut hold, batch).await;
                        if result.is_err() {
                            lost.store(true, Ordering::SeqCst);
                            stop.cancel();
                        }
                        result
                    })
                },
            );
            let runner: Arc<dyn StepRunner> = Arc::new(SlotRunner { worker: worker.clone() });
            let mut options = run.options.clone();
            // Without a `concurrency` of its own, only the worker's slots
            // bound its steps, as for a run that goes step by step (not
            // the CPU count, as in one process).
            options.concurrency = Some(run.step_limit.unwrap_or(worker.config.concurrency));
            let store: Arc<dyn RunStore> = worker.store.clone();
            // A cancel asked for before the run started: `start_whole` took it.
            if cancel_asked {
                tracing::info!("run {run_id}: cancel requested through the run store");
                cancel.cancel();
            }
            let watcher = tokio::spawn(crate::runs::watch_cancel(store, run_id.clone(), cancel.clone(), options.skip_finally.clone(), false));
            let prepared = run.ctx.prepared().clone();
            options.hand_off = worker.hand_off.clone();
            let report = exec::Executor::new(runner, Arc::new(sink)).run(prepared, run.input.clone(), options, cancel).await;
            watcher.abort();
            let name = &worker.config.name;
            // Handed off as this worker stops (its steps that ended are
            // recorded), or its records could not be written: other
            // workers go on with the rest now, not when the hold lapses.
            if failed.load(Ordering::SeqCst) || report.state == exec::RunState::Running {
                if let Err(e) = worker.store.hand_over(&run_id, name).await {
                    tracing::warn!("worker {name}: cannot hand run {run_id} over ({e}); another worker goes on with it once its hold lapses");
                }
            }
            match report.state {
                exec::RunState::Running => tracing::info!("worker {name}: run {run_id} ran whole here until it stopped"),
                state => tracing::info!("worker {name}: run {run_id} ran whole here: {}", state.as_str()),
            }
            worker.holds.lock().expect("not poisoned").remove(&run_id);
            worker.whole_ended.notify_waiters();
            worker.look_for_runs.store(true, Ordering::SeqCst);
            worker.wake.notify_one();
        });
    }

    /// A run whose workflow cannot be loaded here is marked failed: no
    /// worker with the same files could run it either.
    async fn abandon(&self, run_id: &str, e: String) -> Result<(), StoreError> {
        tracing::error!("run {run_id}: {e}");
        self.store.abandon(run_id, &e).await
    }

    /// The run's context, loaded once: its files from the store, its
    /// workflow prepared (components compiled or read from this worker's cache).
    async fn context(&self, run_id: &str) -> Result<Arc<RunCtx>, ContextError> {
        self.context_of(run_id, None).await
    }

    /// [`Worker::context`], from the run's `head` if read already.
    async fn context_of(&self, run_id: &str, head: Option<RunHead>) -> Result<Arc<RunCtx>, ContextError> {
        if let Some(run) = self.runs.lock().expect("not poisoned").get(run_id) {
            return Ok(run.clone());
        }
        let head = match head {
            Some(head) => head,
            None => self.store.run_head(run_id).await.map_err(|e| match e {
                e @ StoreError::Backend(_) => ContextError::Store(e),
                other => ContextError::Load(other.to_string()),
            })?,
        };
        let prepared = self.prepare(&head).await?;
        // A run gets its namespace's secrets, and no other's.
        let secrets = self.config.secrets_of(&head.binding.namespace);
        let entry = exec::enter(&prepared, &head.targets, &head.input, secrets).map_err(|r| ContextError::Load(r.to_string()))?;
        let prepared = Arc::new(entry.prepared);
        let services = Arc::new(StoreServices { store: self.store.clone(), run_id: run_id.to_string() });
        let options = exec::RunOptions {
            run_id: run_id.to_string(),
            concurrency: head.binding.concurrency,
            variables: head.binding.vars,
            secrets: secrets.clone(),
            services,
            attempt: head.attempt,
            memo: Some(self.store.clone()),
            trigger: head.trigger.clone(),
            ..exec::RunOptions::default()
        };
        let ctx = RunContext::new(self.runner.clone(), prepared, options.clone());
        let missing_secrets = entry.missing_secrets.map(|d| {
            let missing: Vec<String> = d.problems.iter().map(|p| p.message.clone()).collect();
            let namespace = head.binding.namespace.as_str();
            let how = match namespace {
                crate::store::DEFAULT_NAMESPACE | "" => "give the worker SANDFLOW_SECRET_NAME in its environment or a --secrets-file".to_string(),
                ns => format!("runs of namespace `{ns}` get the secrets of {ns}.env in the worker's --secrets-dir"),
            };
            format!("worker {}: {}; {how}", self.config.name, missing.join(", "))
        });
        let plan = &ctx.prepared().plan;
        let step_limit = head.binding.concurrency.or(plan.workflow.concurrency);
        // A later attempt (`retry`, `resume`) keeps what succeeded, but for
        // the steps it runs again.
        let again = match head.attempt {
            1 => None,
            _ => {
                let again = crate::runs::rerun_steps(plan, &head.rerun).map_err(|e| ContextError::Load(format!("retry --from: {e}")))?;
                Some(again.iter().filter_map(|id| plan.index.get(id.as_str()).copied()).collect())
            }
        };
        let (redactor, attempt) = (Redactor::new(secrets), head.attempt);
        let run = Arc::new(RunCtx { ctx, input: head.input, redactor, missing_secrets, step_limit, attempt, again, options });
        let mut runs = self.runs.lock().expect("not poisoned");
        if runs.len() >= RUN_CACHE {
            let active: Vec<String> = self.active.lock().expect("not poisoned").values().map(|a| a.0.clone()).collect();
            runs.retain(|id, _| active.contains(id));
        }
        // Another task may have loaded it meanwhile: the later attempt wins.
        let kept = runs.entry(run_id.to_string()).or_insert_with(|| run.clone());
        if kept.attempt < run.attempt {
            *kept = run;
        }
        Ok(kept.clone())
    }

    /// Wakes this worker to claim when a job that a transaction queued for
    /// later (a retry's delay, a step that waits for its time) becomes
    /// claimable: in `delay` ([`crate::store::queue::Outcome::retry_in`]).
    fn wake_in(self: &Arc<Self>, delay: Option<Duration>) {
        if let Some(delay) = delay.filter(|d| !d.is_zero()) {
            let worker = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                worker.claimable.store(true, Ordering::SeqCst);
                worker.wake.notify_one();
            });
        }
    }

    /// A transaction found run `run_id` at another attempt than this
    /// worker loaded (it was retried or resumed): forget it, and look again.
    fn stale(&self, run_id: &str) {
        tracing::info!("worker {}: run {run_id} has a new attempt: loading it again", self.config.name);
        self.runs.lock().expect("not poisoned").remove(run_id);
        self.look_for_runs.store(true, Ordering::SeqCst);
        self.claimable.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// The run's workflow prepared, once per content: from this worker's
    /// cache, else from the run's files (read from the store only then).
    async fn prepare(&self, head: &RunHead) -> Result<Arc<exec::Prepared>, ContextError> {
        let key = head.prepared_key();
        if let Some(prepared) = self.prepared.lock().expect("not poisoned").get(&key) {
            return Ok(prepared.clone());
        }
        let files = self.store.files(head).await.map_err(ContextError::Store)?.map_err(ContextError::Load)?;
        let runner = self.runner.clone();
        let file = PathBuf::from(&head.file);
        let components = head.binding.components.clone();
        let prepared = tokio::task::spawn_blocking(move || exec::load_from_with(&file, runner.as_ref(), &files, components.as_deref()))
            .await
            .map_err(|e| ContextError::Load(format!("loading the run's workflow failed: {e}")))?
            .map_err(|d| {
                let problems: Vec<String> = d.problems.iter().map(|p| p.to_string()).collect();
                ContextError::Load(format!("worker {} cannot load the run's workflow {}: {}", self.config.name, head.file, problems.join("; ")))
            })?;
        let prepared = Arc::new(prepared);
        let mut cache = self.prepared.lock().expect("not poisoned");
        if cache.len() >= PREPARED_CACHE {
            cache.clear();
        }
        cache.insert(key, prepared.clone());
        Ok(prepared)
    }

    fn spawn_job(self: &Arc<Self>, job: Claimed, done: mpsc::UnboundedSender<Finished>) {
        let token = CancellationToken::new();
        self.active.lock().expect("not poisoned").insert(job.id, Active(job.run_id.clone(), token.clone(), tokio::time::Instant::now()));
        let worker = self.clone();
        tokio::spawn(async move {
            let began = std::time::Instant::now();
            let attempted = worker.attempt(&job, &token).await;
            worker.tally(&job, &attempted.result, began.elapsed());
            let exec::Attempted { result, fuel_used, log, cached } = attempted;
            let _ = done.send(Finished { job, result, fuel_used, log, cached });
        });
    }

    /// How many attempts ran here: (succeeded, failed).
    pub fn counts(&self) -> (u64, u64) {
        (self.succeeded.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }

    /// What this worker did, as Prometheus metrics (`sandflow worker
    /// --metrics`): its slots, the attempts it runs now, those that ended
    /// (by outcome, failures by kind) and how long they took.
    pub fn metrics(&self) -> Vec<crate::metrics::Family> {
        use crate::metrics::{Family, Kind, Value};
        let (ok, failed) = self.counts();
        let timings = self.timings.lock().expect("not poisoned");
        let worker = self.config.name.as_str();
        let mut failures = Family::new("sandflow_worker_failures_total", Kind::Counter, "Attempts this worker ran that failed, by failure kind.");
        for (kind, n) in &timings.failures {
            failures = failures.number(&[("worker", worker), ("kind", kind)], *n as f64);
        }
        vec![
            Family::new("sandflow_worker_slots", Kind::Gauge, "Most attempts this worker runs at once (--concurrency).")
                .number(&[("worker", worker)], self.config.concurrency as f64),
            Family::new("sandflow_worker_running", Kind::Gauge, "Attempts this worker runs now.")
                .number(&[("worker", worker)], self.busy() as f64),
            Family::new("sandflow_worker_attempts_total", Kind::Counter, "Attempts this worker ran to their end, by outcome.")
                .number(&[("worker", worker), ("outcome", "succeeded")], ok as f64)
                .number(&[("worker", worker), ("outcome", "failed")], failed as f64),
            failures,
            Family::new("sandflow_worker_attempt_duration_seconds", Kind::Histogram, "How long the attempts this worker ran took.")
                .with(&[("worker", worker)], Value::Histogram(timings.durations.clone())),
        ]
    }

    /// Counts an attempt that ended, and tells it at `-v`.
    fn tally(&self, job: &Claimed, result: &Result<serde_json::Value, StepFailure>, took: Duration) {
        self.count(result, took);
        if !tracing::enabled!(tracing::Level::INFO) {
            return;
        }
        let step = self.runs.lock().expect("not poisoned").get(&job.run_id).map(|r| r.ctx.prepared().plan.workflow.steps[job.step].id.clone());
        let step = step.unwrap_or_else(|| format!("#{}", job.step));
        let item = job.item.map(|k| format!(" item {k}")).unwrap_or_default();
        let (name, run, attempt, took) = (&self.config.name, &job.run_id, job.attempt, crate::units::format_duration(took));
        match result {
            Ok(_) => tracing::info!("worker {name}: run {run} step {step}{item} attempt {attempt} succeeded in {took}"),
            Err(f) => tracing::info!("worker {name}: run {run} step {step}{item} attempt {attempt} failed in {took} ({}): {}", f.kind.as_str(), f.message),
        }
    }

    /// Counts an attempt that ended (`--metrics`).
    fn count(&self, result: &Result<serde_json::Value, StepFailure>, took: Duration) {
        let counter = if result.is_ok() { &self.succeeded } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
        {
            let mut timings = self.timings.lock().expect("not poisoned");
            timings.durations.observe(took.as_secs_f64());
            if let Err(f) = result {
                *timings.failures.entry(f.kind.as_str()).or_default() += 1;
            }
        }
    }

    /// Runs one claimed attempt.
    async fn attempt(&self, job: &Claimed, cancel: &CancellationToken) -> exec::Attempted {
        let fail = |f: StepFailure| exec::Attempted { result: Err(f), fuel_used: 0, log: StepLog::default(), cached: None };
        let mut backoff = Duration::from_millis(50);
        let run = loop {
            match self.context(&job.run_id).await {
                Ok(run) => break run,
                Err(ContextError::Load(e)) => return fail(StepFailure::new(FailureKind::Instantiate, e).not_retryable()),
                // The store is unreachable (restarting): wait for it, as the
                // lease allows; a cancel still ends the attempt.
                Err(ContextError::Store(e)) => {
                    tracing::warn!("worker {}: cannot load run {}: {e}; retrying in {backoff:?}", self.config.name, job.run_id);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = cancel.cancelled() => return fail(StepFailure::new(FailureKind::Cancelled, "cancelled before it started")),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        };
        if let Some(why) = &run.missing_secrets {
            return fail(StepFailure::new(FailureKind::Reference, why.clone()).not_retryable());
        }
        let input = match run.unmask(job.input.clone(), job.input_secrets.clone()) {
            Ok(v) => v,
            Err(f) => return fail(f),
        };
        // A step that only waits was claimed: its time came, or a signal.
        let decl = &run.ctx.prepared().plan.workflow.steps[job.step];
        if let crate::workflow::Target::Builtin(b) = decl.target
            && let Some(kind) = exec::core::WaitKind::of_builtin(b)
        {
            let (until, signal) = loop {
                match self.store.woken(&job.run_id, &decl.id).await {
                    Ok(found) => break found,
                    Err(e) => {
                        tracing::warn!("worker {}: cannot read how step {} of run {} waited: {e}; retrying in {backoff:?}", self.config.name, decl.id, job.run_id);
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = cancel.cancelled() => return fail(StepFailure::new(FailureKind::Cancelled, "cancelled while it waited")),
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            };
            let result = exec::core::woken(kind, &input, until.as_deref(), signal);
            return exec::Attempted { result, fuel_used: 0, log: StepLog::default(), cached: None };
        }
        // Each line as the step writes it, for whoever follows the run.
        let (lines, run_ctx, id) = (self.live.clone(), run.clone(), decl.id.clone());
        let (run_id, attempt, item) = (job.run_id.clone(), job.attempt, job.item);
        let follow: exec::Follow = Arc::new(move |seq, line| {
            let event = exec::Event::StepLogLine { run_id: run_id.clone(), step: id.clone(), attempt, item, seq, line: line.clone() };
            let _ = lines.send(if run_ctx.redactor.is_empty() { event } else { run_ctx.redactor.event(&event) });
        });
        run.ctx.attempt(job.step, &input, cancel, Some(follow)).await
    }

    /// Commits finished attempts in batches, one transaction per run, and
    /// retries a commit that failed (a lost connection, a deadlock) until
    /// the store takes it: a result whose claim is no longer current is
    /// discarded there, so retrying never records twice.
    async fn commit_loop(self: Arc<Self>, mut done: mpsc::UnboundedReceiver<Finished>, more: mpsc::WeakUnboundedSender<Finished>, stop: CancellationToken) {
        while let Some(first) = done.recv().await {
            let mut batch = vec![first];
            // Every result there is; and attempts claimed just now may end
            // a moment later: their results wait for them, briefly.
            let deadline = tokio::time::Instant::now() + COMMIT_LINGER;
            loop {
                while let Ok(more) = done.try_recv() {
                    batch.push(more);
                }
                if !self.fresh_running(&batch) {
                    break;
                }
                match tokio::time::timeout_at(deadline, done.recv()).await {
                    Ok(Some(more)) => batch.push(more),
                    _ => break,
                }
            }
            let mut by_run: BTreeMap<String, Vec<Finished>> = BTreeMap::new();
            for f in batch {
                by_run.entry(f.job.run_id.clone()).or_default().push(f);
            }
            for (run_id, finished) in by_run {
                let ids: Vec<i64> = finished.iter().map(|f| f.job.id).collect();
                let mut pending = Some(finished);
                let mut backoff = Duration::from_millis(20);
                while let Some(finished) = pending.take() {
                    let run = match self.context(&run_id).await {
                        Ok(run) => run,
                        Err(ContextError::Store(e)) => {
                            tracing::warn!("worker {}: cannot load run {run_id} to commit: {e}; retrying in {backoff:?}", self.config.name);
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                            pending = Some(finished);
                            continue;
                        }
                        Err(ContextError::Load(e)) => {
                            tracing::error!("run {run_id}: cannot commit results: {e}");
                            break;
                        }
                    };
                    let copy = finished.clone();
                    // The slots these attempts free are this worker's to fill,
                    // from the jobs the results make ready, in the same transaction.
                    // Its own slots, and those free (promised to this claim).
                    let reserved = (!stop.is_cancelled()).then(|| self.reserve());
                    let slots = reserved.as_ref().map_or(0, |r| r.slots + copy.len());
                    let began = std::time::Instant::now();
                    match self.store.commit(&run_id, &run, finished, self.claimer(slots)).await {
                        // Loaded before the run's new attempt: commit again
                        // with it (a result of an earlier attempt is then
                        // discarded, its job gone).
                        Ok(outcome) if outcome.stale => {
                            self.stale(&run_id);
                            pending = Some(copy);
                        }
                        Ok(outcome) => {
                            tracing::debug!("worker {}: committed {} result(s) of run {run_id} in {:?}, claimed {}", self.config.name, copy.len(), began.elapsed(), outcome.claimed.len());
                            if let Some(sender) = more.upgrade() {
                                for job in outcome.claimed {
                                    self.spawn_job(job, sender.clone());
                                }
                            }
                            self.wake_in(outcome.retry_in);
                        }
                        Err(e) => {
                            tracing::warn!("worker {}: committing results of run {run_id} failed: {e}; retrying in {backoff:?}", self.config.name);
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                            pending = Some(copy);
                        }
                    }
                }
                let mut active = self.active.lock().expect("not poisoned");
                for id in ids {
                    active.remove(&id);
                }
            }
            self.wake.notify_one();
        }
    }

    /// Whether an attempt claimed within [`COMMIT_FRESH`] runs still,
    /// beside those whose results are in `batch`.
    fn fresh_running(&self, batch: &[Finished]) -> bool {
        let active = self.active.lock().expect("not poisoned");
        // Jobs held are running, or ended with their results here (the
        // commit loop is the only one that lets them go).
        if active.len() <= batch.len() {
            return false;
        }
        let now = tokio::time::Instant::now();
        active.iter().any(|(id, Active(_, _, claimed))| now - *claimed < COMMIT_FRESH && !batch.iter().any(|f| f.job.id == *id))
    }

    /// Extends the leases of every job held, three times per lease.
    async fn heartbeat_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.lease / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Held attempts keep their leases while they finish after `stop`.
            tick.tick().await;
            let ids: Vec<i64> = self.active.lock().expect("not poisoned").keys().copied().collect();
            let holds: Vec<String> = self.holds.lock().expect("not poisoned").iter().cloned().collect();
            if stop.is_cancelled() && ids.is_empty() && holds.is_empty() {
                return;
            }
            if let Err(e) = self.store.heartbeat(&self.config.name, &ids, self.config.lease).await {
                tracing::warn!("worker {}: heartbeat failed: {e}", self.config.name);
            }
            if let Err(e) = self.store.renew_holds(&self.config.name, &holds, self.config.lease).await {
                tracing::warn!("worker {}: renewing its holds failed: {e}", self.config.name);
            }
        }
    }

    /// Cancels the attempts of runs that were cancelled or ran out of time.
    async fn interrupt_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(INTERRUPT_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let runs: Vec<String> = {
                let active = self.active.lock().expect("not poisoned");
                let mut runs: Vec<String> = active.values().map(|a| a.0.clone()).collect();
                runs.sort();
                runs.dedup();
                runs
            };
            match self.store.runs_to_interrupt(&runs).await {
                Ok(stopped) if !stopped.is_empty() => {
                    for Active(run, token, _) in self.active.lock().expect("not poisoned").values() {
                        if stopped.contains(run) {
                            token.cancel();
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::debug!("worker {}: cannot read cancel requests: {e}", self.config.name),
            }
            if stop.is_cancelled() && self.active.lock().expect("not poisoned").is_empty() {
                return;
            }
        }
    }
}

/// Listens on `channel` and wakes `worker` on each notification.
async fn listen(store: Arc<PgStore>, channel: &'static str, worker: Arc<Worker>, stop: CancellationToken) {
    let wake = move |payload: &str| {
        worker.look_for_runs.store(true, Ordering::SeqCst);
        // A run to start makes no job claimable by itself.
        if payload != RUN_TO_START {
            worker.claimable.store(true, Ordering::SeqCst);
        }
        worker.wake.notify_one();
    };
    crate::store::queue::listen_with(store, channel, wake, stop).await
}

/// How often at most a worker writes the lines running steps wrote: those
/// that come meanwhile go in one transaction (a step flooding its log
/// costs the store a few writes a second, not one per line).
const LIVE_LOG_EVERY: Duration = Duration::from_millis(200);

/// Writes the lines running steps write, whatever has queued up in one
/// transaction. A line that cannot be written is dropped (with a note at
/// `-vv`): the step's whole log is recorded with its result.
async fn live_log_loop(store: Arc<PgStore>, mut lines: mpsc::UnboundedReceiver<exec::Event>) {
    while let Some(first) = lines.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = lines.try_recv() {
            batch.push(more);
        }
        let n = batch.len();
        if let Err(e) = store.record(batch).await {
            tracing::debug!("{n} lines of running steps' logs were not written: {e}");
        }
        tokio::time::sleep(LIVE_LOG_EVERY).await;
    }
}
