//! `sandflow serve`: a web view of the run store. Pages (shipped in the
//! binary) read a small JSON API; a run's page follows it live over
//! server-sent events fed by the store, so runs of any process or worker
//! that shares the store are seen as they progress.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /`, `GET /runs/{id}` | the runs page, a run's page |
//! | `GET /api/runs?workflow=&status=&after=&limit=` | a page of runs, newest first, and the cursor of the next |
//! | `GET /api/runs/{id}` | the run with its steps |
//! | `GET /api/runs/{id}/graph.svg` | its DAG, steps coloured by state |
//! | `GET /api/runs/{id}/logs?step=` | its captured log lines |
//! | `GET /api/runs/{id}/attempts?step=` | its recorded attempts |
//! | `GET /api/runs/{id}/events` | the run again each time it changes, until it ends (SSE) |
//! | `GET /workers`, `GET /api/workers` | the workers page, the store's workers (PostgreSQL) |
//! | `POST /api/runs/{id}/cancel`, `…/resume`, `…/retry` | with `--allow-actions` only |
//! | `POST /api/runs/{id}/steps/{step}/signal` | signal, approve or reject a waiting step (`--allow-actions`, operator) |
//! | `PUT /api/files/{sha256}`, `POST /api/runs` | upload a run's files, submit it (PostgreSQL, `--allow-actions`) |
//! | `GET /api/runs/{id}/stream` | a run's events as workers record them (SSE) |
//! | `GET /api/openapi.json` | the API's OpenAPI document |
//! | `GET /audit`, `GET /api/audit?limit=` | the audit log: every action through the API and every token made or revoked (PostgreSQL) |
//! | `GET /healthz`, `GET /readyz` | the process answers; the store answers and its schema is current (no token needed) |
//! | `GET /metrics` | the store's runs, steps, failures, durations, queue and workers, in Prometheus text |
//!
//! A run id may be given by the start of it, as the CLI takes it. The
//! remote CLI's routes are in [`super::api`]. Every request passes
//! [`super::guard`] first: the token, the `Host`, cross-site requests, and
//! the headers that forbid framing.

use super::{CliError, GlobalArgs, Output, exit};
use sandflow::plan::Plan;
use sandflow::store::{RunDetail, RunQuery, RunRecord, RunStore, StoreError};
use super::guard::{Caller, refused};
use sandflow::store::tokens::Role;
use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, clap::Args)]
#[command(after_help = "With --token (SANDFLOW_TOKEN), every request must carry it (`Authorization: Bearer TOKEN`), \
    or the cookie a browser gets when it opens an address with `?token=TOKEN` (it is then sent on to the address without it).\n\n\
    Examples:\n  \
    sandflow serve                                  # http://127.0.0.1:7878\n  \
    sandflow --store postgres://u@db/runs serve      # the shared history of many machines\n  \
    SANDFLOW_TOKEN=s3cret sandflow serve --listen 0.0.0.0:7878 --allow-actions")]
pub(crate) struct ServeArgs {
    /// Where to listen. Only loopback unless you say otherwise; any other
    /// address is reachable by others, so set a token.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// The address users open, when it is a name (behind a proxy, say):
    /// requests must name this server in `Host` (an IP address,
    /// `localhost`, or this URL's host: a page on another name is refused,
    /// against DNS rebinding), and this URL's origin may send actions. An
    /// `https` URL makes the token's cookie `Secure`.
    #[arg(long, value_name = "URL", value_parser = public_url)]
    public_url: Option<url::Url>,
    /// Let clients change runs: the pages cancel a running run and resume
    /// or retry a finished one, and (with a PostgreSQL store) the API takes
    /// runs submitted by `sandflow --server URL run|submit` for the
    /// workers. Off by default: the view and the API only read.
    #[arg(long)]
    allow_actions: bool,
    /// The largest file a client may upload (a component, a workflow).
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = sandflow::units::parse_size)]
    max_upload: u64,
    /// Let submitted runs read the workers' machines: `/builtin/load_file`
    /// steps and components granted `dirs` or `env`. Off by default: the
    /// clients of a server are not trusted with its workers' files and
    /// environment (runs of `sandflow submit`, which holds the database's
    /// credentials, may).
    #[arg(long)]
    allow_host_access: bool,
    /// Do not fire schedules (`sandflow schedule`) from this server. By
    /// default a server on a PostgreSQL store fires them, as any number of
    /// servers and `worker --scheduler` processes may: each tick once.
    #[arg(long)]
    no_scheduler: bool,
    /// The largest webhook delivery body taken (`POST /hooks/NAME`).
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = sandflow::units::parse_size)]
    max_hook_body: u64,
    /// The `default` namespace's secrets, `NAME=value` lines (also
    /// SANDFLOW_SECRET_NAME variables): here, only the webhooks' secrets
    /// their deliveries are signed with.
    #[arg(long, value_name = "FILE")]
    secrets_file: Option<std::path::PathBuf>,
    /// Each namespace's secrets, in DIR/NAMESPACE.env (as a worker's): the
    /// webhooks' secrets of each namespace.
    #[arg(long, value_name = "DIR")]
    secrets_dir: Option<std::path::PathBuf>,
}

pub(super) struct App {
    pub(super) store: Arc<dyn RunStore>,
    /// The same store, when it is PostgreSQL: runs are submitted to it.
    pub(super) pg: Option<Arc<sandflow::store::PgStore>>,
    /// The same store, when it is SQLite (its schedules, which `sandflow
    /// scheduler` fires).
    pub(super) sqlite: Option<Arc<sandflow::store::SqliteStore>>,
    pub(super) allow_actions: bool,
    pub(super) allow_host_access: bool,
    /// Each namespace's secrets (`--secrets-file`, `--secrets-dir`): the
    /// webhooks' signing secrets.
    pub(super) secrets: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    /// `--max-hook-body`.
    pub(super) max_hook_body: usize,
    /// Webhooks' workflows, parsed from their stored text, by SHA-256.
    pub(super) hook_workflows: std::sync::Mutex<HashMap<String, Arc<sandflow::workflow::Workflow>>>,
    pub(super) max_upload: usize,
    /// To run `resume` and `retry` as processes of their own.
    pub(super) exe: std::path::PathBuf,
    pub(super) state_dir: std::path::PathBuf,
    pub(super) store_url: Option<String>,
    /// Plans of the workflows runs recorded, by file, SHA-256 and targets: a
    /// followed run's page asks for its graph each time a step ends.
    plans: std::sync::Mutex<HashMap<PlanKey, Arc<Plan>>>,
    /// Submitted runs' components, checked once each (by SHA-256).
    pub(super) checks: Arc<sandflow::exec::ComponentCheck>,
}

/// A run's workflow file, its SHA-256 and its `--target` steps.
type PlanKey = (String, String, Vec<String>);

/// Plans kept at most; the cache starts over when it is full.
const PLANS_KEPT: usize = 32;

/// One page for both views: the script shows the one the address names.
const PAGE_HTML: &str = include_str!("web/page.html");
const APP_JS: &str = include_str!("web/app.js");
const STYLE_CSS: &str = include_str!("web/style.css");

/// How long `/readyz` waits for the store.
const READY_WITHIN: Duration = Duration::from_secs(2);

/// How often a live page's run (and a followed run's events) is read again.
pub(super) const LIVE_POLL: Duration = Duration::from_millis(300);

pub(crate) async fn execute(args: ServeArgs, global: &GlobalArgs, out: &Output) -> Result<u8, CliError> {
    let (store, pg, sqlite): (Arc<dyn RunStore>, _, _) = match global.store_url()? {
        sandflow::store::StoreUrl::Postgres(_) => {
            let pg = super::worker::pg_store(global, "`sandflow serve`").await?;
            (pg.clone(), Some(pg), None)
        }
        sandflow::store::StoreUrl::Sqlite(path) => {
            let sqlite = Arc::new(sandflow::store::open_sqlite(&path).await.map_err(super::store_error)?);
            (sqlite.clone(), None, Some(sqlite))
        }
    };
    if !args.listen.ip().is_loopback() && global.token.is_none() {
        super::render::say!(
            "warning: listening on {} with no authentication: anyone who can reach it reads every run{}; set --token (or SANDFLOW_TOKEN)",
            args.listen,
            if args.allow_actions { " and can cancel, resume and retry them" } else { "" }
        );
    }
    let scheduler = pg
        .clone()
        .filter(|_| !args.no_scheduler)
        .map(|pg| tokio::spawn(sandflow::store::schedules::scheduler(pg, sandflow::sandbox::CancellationToken::new())));
    let guard = Arc::new(super::guard::Guard::new(global.token.clone(), args.public_url, pg.clone()));
    let app = Arc::new(App {
        store,
        pg,
        sqlite,
        allow_actions: args.allow_actions,
        allow_host_access: args.allow_host_access,
        secrets: super::args::namespace_secrets(args.secrets_file.as_deref(), args.secrets_dir.as_deref())?,
        max_hook_body: usize::try_from(args.max_hook_body).unwrap_or(usize::MAX),
        hook_workflows: Default::default(),
        max_upload: usize::try_from(args.max_upload).unwrap_or(usize::MAX),
        exe: super::this_program()?,
        state_dir: global.state_dir.clone(),
        store_url: global.store.clone(),
        plans: Default::default(),
        checks: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| CliError::invalid(format!("--listen {}: {e}", args.listen)))?;
    let bound = listener.local_addr().map_err(|e| CliError { code: exit::FAILED, message: e.to_string() })?;
    if !out.quiet {
        // Tests and scripts read the address from this line (with `--listen 127.0.0.1:0`).
        super::render::say!("serving {} on http://{bound}/", app.store.location());
    }
    let router = router(app).layer(axum::middleware::from_fn_with_state(guard, super::guard::guard));
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| CliError { code: exit::FAILED, message: format!("the web view stopped: {e}") })?;
    if let Some(scheduler) = scheduler {
        scheduler.abort();
    }
    Ok(exit::OK)
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(|| async { page(PAGE_HTML) }))
        .route("/runs/{id}", get(|| async { page(PAGE_HTML) }))
        .route("/workers", get(|| async { page(PAGE_HTML) }))
        .route("/api/workers", get(workers))
        .route("/assets/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/assets/style.css", get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }))
        .route("/healthz", get(|| async { Json(json!({ "ok": true })) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/openapi.json", get(super::api::openapi))
        .route("/audit", get(|| async { page(PAGE_HTML) }))
        .route("/api/audit", get(super::api::audit_log))
        .route("/schedules", get(|| async { page(PAGE_HTML) }))
        .route("/api/schedules", get(super::api::schedules).post(super::api::add_schedules))
        .route("/api/schedules/{name}/{action}", post(super::api::schedule_act))
        .route("/api/files/{sha256}", put(super::api::put_file))
        .route("/api/runs", get(list_runs).post(super::api::submit))
        .route("/api/runs/{id}/stream", get(super::api::stream))
        .route("/api/runs/{id}", get(show_run))
        .route("/api/runs/{id}/graph.svg", get(graph))
        .route("/api/runs/{id}/logs", get(logs))
        .route("/api/runs/{id}/attempts", get(attempts))
        .route("/api/runs/{id}/events", get(events))
        .route("/api/runs/{id}/{action}", post(super::api::act))
        .route("/api/runs/{id}/steps/{step}/signal", post(super::api::signal))
        .route("/hooks/{name}", post(super::hooks::deliver))
        // Inside the guard (which found the caller): every action, audited.
        .layer(axum::middleware::from_fn_with_state(app.clone(), super::api::audited))
        .with_state(app)
}

fn page(html: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], html).into_response()
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

/// `--public-url`: an http(s) URL with a host.
fn public_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    match (url.scheme(), url.host_str()) {
        ("http" | "https", Some(_)) => Ok(url),
        _ => Err("must be an http:// or https:// address with a host, as users open it".into()),
    }
}

/// A failure as an HTTP answer: an unknown run is 404, the rest 500.
pub(super) fn failure(e: StoreError) -> Response {
    let status = match e {
        StoreError::UnknownRun(_) => StatusCode::NOT_FOUND,
        StoreError::AmbiguousRun { .. } => StatusCode::BAD_REQUEST,
        StoreError::Quota(_) => StatusCode::TOO_MANY_REQUESTS,
        StoreError::Conflict(_) => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    refused(status, e.to_string())
}

/// The run `given` names (its id or a unique start of it) among the runs
/// `caller` sees: a run of another namespace is 404, as one that does not
/// exist, so that ids do not leak across namespaces.
pub(super) async fn visible(app: &App, caller: &Caller, given: &str) -> Result<String, Response> {
    sandflow::store::resolve_run_in(app.store.as_ref(), given, caller.namespaces.as_deref()).await.map_err(failure)
}



#[derive(Deserialize)]
struct ListParams {
    namespace: Option<String>,
    workflow: Option<String>,
    status: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

async fn list_runs(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>, Query(p): Query<ListParams>) -> Response {
    let limit = p.limit.unwrap_or(50).clamp(1, 500);
    let blank = |v: Option<String>| v.filter(|s| !s.is_empty());
    // Only the namespaces the caller sees; `?namespace=` picks one of them.
    let namespaces = match blank(p.namespace) {
        Some(ns) if caller.sees(&ns) => Some(vec![ns]),
        Some(_) => Some(Vec::new()),
        None => caller.namespaces.clone(),
    };
    // One more than a page tells whether there is a next one.
    let query = RunQuery { limit: limit + 1, workflow: blank(p.workflow), status: blank(p.status), after: blank(p.after), namespaces };
    match app.store.runs(&query).await {
        Ok(mut runs) => {
            let next = (runs.len() > limit).then(|| {
                runs.truncate(limit);
                runs.last().map(|r| r.id.clone())
            });
            Json(json!({ "runs": runs, "next": next.flatten() })).into_response()
        }
        Err(e) => failure(e),
    }
}

/// 200 when the store answers and its schema is the one this sandflow
/// writes, else 503 saying which (never where the store is: no token is
/// needed to ask).
async fn readyz(State(app): State<Arc<App>>) -> Response {
    // The store retries a lost server for long: a probe wants an answer now.
    let ready = tokio::time::timeout(READY_WITHIN, app.store.ready()).await.unwrap_or_else(|_| Err(StoreError::Backend("no answer".into())));
    match ready {
        Ok(()) => Json(json!({ "ready": true })).into_response(),
        Err(e) => {
            let why = match e {
                StoreError::NewerSchema { found, known, .. } => format!("the run store's schema is version {found}; this sandflow writes version {known}"),
                _ => "the run store does not answer".to_string(),
            };
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "ready": false, "error": why }))).into_response()
        }
    }
}

/// What the store holds, in Prometheus text: runs and steps by state,
/// failed steps by kind, how long steps took, the steps waiting for a
/// worker, and the workers.
async fn metrics(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>) -> Response {
    use sandflow::metrics::{Family, Kind, Value};
    if caller.role != Role::Admin {
        return refused(StatusCode::FORBIDDEN, format!("token `{}` sees some namespaces only; the store's metrics are for `serve --token`'s", caller.name));
    }
    let stats = match app.store.stats().await {
        Ok(stats) => stats,
        Err(e) => return failure(e),
    };
    let counts = |family: Family, label: &'static str, rows: &[(String, u64)]| {
        rows.iter().fold(family, |f, (value, n)| f.number(&[(label, value)], *n as f64))
    };
    let mut families = vec![
        counts(Family::new("sandflow_runs", Kind::Gauge, "Runs in the store, by state."), "state", &stats.runs),
        counts(Family::new("sandflow_steps", Kind::Gauge, "Steps of the runs in the store, by state."), "state", &stats.steps),
        counts(Family::new("sandflow_step_failures", Kind::Gauge, "Failed steps in the store, by failure kind."), "kind", &stats.failures),
        Family::new("sandflow_step_duration_seconds", Kind::Histogram, "How long the steps recorded as ended took.").with(&[], Value::Histogram(stats.durations)),
    ];
    if let Some(queued) = stats.queued {
        families.push(Family::new("sandflow_queue_depth", Kind::Gauge, "Steps ready and waiting for a worker.").number(&[], queued as f64));
    }
    match app.store.workers().await {
        Ok(Some(workers)) => {
            let mut by_state = Family::new("sandflow_workers", Kind::Gauge, "Workers that worked on the store, by state.");
            for s in ["alive", "stopped", "lost"] {
                by_state = by_state.number(&[("state", s)], workers.iter().filter(|w| w.state() == s).count() as f64);
            }
            let (mut slots, mut running) = (
                Family::new("sandflow_worker_slots", Kind::Gauge, "Most steps each alive worker runs at once."),
                Family::new("sandflow_worker_running", Kind::Gauge, "Steps each alive worker holds now."),
            );
            for w in workers.iter().filter(|w| w.alive) {
                slots = slots.number(&[("worker", &w.name)], w.slots);
                running = running.number(&[("worker", &w.name)], w.running);
            }
            families.extend([by_state, slots, running]);
        }
        Ok(None) => {}
        Err(e) => return failure(e),
    }
    ([(header::CONTENT_TYPE, sandflow::metrics::CONTENT_TYPE)], sandflow::metrics::render(&families)).into_response()
}

/// The store's workers (PostgreSQL), or 404 saying why there are none.
async fn workers(State(app): State<Arc<App>>) -> Response {
    match app.store.workers().await {
        Ok(Some(workers)) => Json(json!({ "workers": workers })).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, Json(json!({ "error": "this store is SQLite: steps run in the process that runs each run, there are no workers (a PostgreSQL store has them)" })))
            .into_response(),
        Err(e) => failure(e),
    }
}

/// The run, and the shape of its workflow where its file can be read:
/// which steps are `forEach` steps, the Argo-style groups and the
/// `finally` steps (the page collapses groups and items by them).
async fn show_run(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> Response {
    let id = match visible(&app, &caller, &id).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    let run = match app.store.run(&id, RunDetail::Full).await {
        Ok(run) => run,
        Err(e) => return failure(e),
    };
    let shape = app.run_plan(&run).await.ok().map(|plan| shape(&plan));
    Json(json!({ "run": run, "shape": shape, "allow_actions": app.allow_actions })).into_response()
}

fn shape(plan: &Plan) -> serde_json::Value {
    let steps = &plan.workflow.steps;
    let ids = |range: std::ops::Range<usize>| steps[range].iter().map(|s| s.id.clone()).collect::<Vec<_>>();
    let for_each: Vec<&str> = steps.iter().filter(|s| s.for_each.is_some()).map(|s| s.id.as_str()).collect();
    let mut groups: Vec<Vec<&str>> = Vec::new();
    for s in &steps[..plan.main] {
        if let Some(g) = s.group {
            if groups.len() <= g {
                groups.resize(g + 1, Vec::new());
            }
            groups[g].push(&s.id);
        }
    }
    groups.retain(|g| !g.is_empty());
    json!({ "for_each": for_each, "groups": groups, "finally": ids(plan.main..steps.len()) })
}

/// The run's DAG from the workflow file it recorded, steps coloured by
/// their recorded state.
async fn graph(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> Response {
    let id = match visible(&app, &caller, &id).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    let run = match app.store.run(&id, RunDetail::Steps).await {
        Ok(run) => run,
        Err(e) => return failure(e),
    };
    match app.run_plan(&run).await {
        Ok(plan) => ([(header::CONTENT_TYPE, "image/svg+xml")], sandflow::runs::run_svg(&plan, &run)).into_response(),
        Err(why) => (StatusCode::NOT_FOUND, format!("the graph cannot be drawn: {why}")).into_response(),
    }
}

impl App {
    /// The plan of the workflow a run ran (see [`sandflow::runs::recorded_plan`]).
    async fn run_plan(&self, run: &RunRecord) -> Result<Arc<Plan>, String> {
        let key = (run.file.clone(), run.sha256.clone(), run.targets.clone());
        if let Some(plan) = super::lock(&self.plans).get(&key) {
            return Ok(plan.clone());
        }
        let plan = Arc::new(sandflow::runs::recorded_plan(self.store.as_ref(), run).await?);
        let mut plans = super::lock(&self.plans);
        if plans.len() >= PLANS_KEPT {
            plans.clear();
        }
        plans.insert(key, plan.clone());
        Ok(plan)
    }

}

/// `?step=`: one step's, or all; `?from=N` (logs): from the Nth line on,
/// for following a running step's log.
#[derive(Deserialize)]
struct LogParams {
    step: Option<String>,
    #[serde(default)]
    from: usize,
}

async fn logs(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>, Path(id): Path<String>, Query(p): Query<LogParams>) -> Response {
    let id = match visible(&app, &caller, &id).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    match app.store.logs(&id, p.step.as_deref().filter(|s| !s.is_empty())).await {
        Ok(lines) => {
            let rows: Vec<serde_json::Value> = lines.iter().skip(p.from).map(|(s, l)| super::runs::log_row(s, l)).collect();
            Json(rows).into_response()
        }
        Err(e) => failure(e),
    }
}

async fn attempts(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>, Path(id): Path<String>, Query(p): Query<LogParams>) -> Response {
    let id = match visible(&app, &caller, &id).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    match app.store.attempts(&id, p.step.as_deref().filter(|s| !s.is_empty())).await {
        Ok(rows) => Json(rows).into_response(),
        Err(e) => failure(e),
    }
}

/// The run each time its record changes, until it is no longer running.
async fn events(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> Response {
    let id = match visible(&app, &caller, &id).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    if let Err(e) = app.store.run(&id, RunDetail::Run).await {
        return failure(e);
    }
    // (store, run id, what was last sent, whether the run had ended)
    let start = (app.store.clone(), id, String::new(), false);
    let stream = futures_util::stream::unfold(start, |(store, id, last, ended)| async move {
        if ended {
            return None;
        }
        loop {
            let run = match store.run(&id, RunDetail::Full).await {
                Ok(run) => run,
                Err(e) => {
                    let event = Event::default().event("error").data(e.to_string());
                    return Some((Ok::<_, std::convert::Infallible>(event), (store, id, last, true)));
                }
            };
            let text = serde_json::to_string(&run).expect("records serialize");
            if text != last {
                let ended = run.status != sandflow::exec::RunState::Running.as_str();
                return Some((Ok(Event::default().event("run").data(text.clone())), (store, id, text, ended)));
            }
            tokio::time::sleep(LIVE_POLL).await;
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}
