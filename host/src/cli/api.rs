//! The JSON API that makes `sandflow serve` a front door: a client with no
//! database credentials submits runs (the workflow and the files it names,
//! uploaded by SHA-256 so a file the server has is not sent again),
//! follows their events and acts on them. `sandflow --server URL …` is
//! its client ([`super::remote`]); `docs/openapi.json`, served at
//! `GET /api/openapi.json`, documents every route.
//!
//! Submitted files are untrusted: each upload is capped (`--max-upload`),
//! components are checked without being compiled
//! ([`sandflow::exec::ComponentCheck`]: a component built to be slow to
//! compile costs the server nothing), and a run that would read the
//! workers' machines (`/builtin/load_file`, `dirs` or `env` grants) is
//! refused unless `serve --allow-host-access` says the clients are trusted
//! with them. The workers compile each component as they load the run.

// A check that refuses returns the answer itself (`Err(Response)`): the
// handlers' early return, as axum's extractors reject.
#![allow(clippy::result_large_err)]

use super::guard::{Caller, refused};
use super::serve::{App, failure};
use sandflow::store::tokens::Role;
use axum::Extension;
use sandflow::exec::{Event, Recording, enter};
use sandflow::runs::{QueueAgainError, Rerun};
use sandflow::store::queue::{Binding, RunFiles};
use sandflow::store::{PgStore, RunDetail};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

/// The API's OpenAPI 3.1 document, kept in the repository.
pub(crate) const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// The largest JSON body the API reads (a run's input is in it).
const MAX_JSON: usize = 16 << 20;

pub(super) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// The PostgreSQL store runs are queued in, or the answer saying there is
/// none.
fn queue(app: &App) -> Result<&Arc<PgStore>, Response> {
    app.pg.as_ref().ok_or_else(|| {
        refused(
            StatusCode::CONFLICT,
            format!(
                "this server's run store is {}, where runs run in the process that starts them: submitting needs workers, so start `sandflow serve` with a PostgreSQL store (--store postgres://…) and `sandflow worker`s on it",
                app.store.location()
            ),
        )
    })
}

/// Whether `caller` may do what needs `role` here: actions must be on
/// (`--allow-actions`), and its token's role must allow it.
pub(super) fn allowed(app: &App, caller: &Caller, role: Role) -> Result<(), Response> {
    if !app.allow_actions {
        return Err(refused(
            StatusCode::FORBIDDEN,
            "actions are off: start `sandflow serve --allow-actions` to let clients submit, cancel, resume and retry runs".into(),
        ));
    }
    match caller.role >= role {
        true => Ok(()),
        false => Err(refused(
            StatusCode::FORBIDDEN,
            format!("token `{}` has the role {}: this needs the role {} (`sandflow token create … --role {}`)", caller.name, caller.role.as_str(), role.as_str(), role.as_str()),
        )),
    }
}

/// The namespace a request of `caller` acts in: the one it names, which
/// must be one of the caller's; else the caller's only one; else `default`
/// for a caller that sees every namespace. An unknown one is 404.
fn namespace_for(caller: &Caller, named: Option<&str>) -> Result<String, Response> {
    let not_yours = |ns: &str| {
        refused(StatusCode::NOT_FOUND, format!("token `{}` has no namespace `{ns}`: it has {}", caller.name, caller.namespaces.as_deref().unwrap_or_default().join(", ")))
    };
    match (named, &caller.namespaces) {
        (Some(ns), _) => {
            let ns = sandflow::store::tokens::namespace_name(ns).map_err(|e| refused(StatusCode::BAD_REQUEST, format!("`namespace`: {e}")))?;
            match caller.sees(&ns) {
                true => Ok(ns),
                false => Err(not_yours(&ns)),
            }
        }
        (None, None) => Ok(sandflow::store::DEFAULT_NAMESPACE.to_string()),
        (None, Some(namespaces)) if namespaces.len() == 1 => Ok(namespaces[0].clone()),
        (None, Some(namespaces)) => Err(refused(
            StatusCode::BAD_REQUEST,
            format!("token `{}` has several namespaces ({}): say which with `namespace` (`--namespace`)", caller.name, namespaces.join(", ")),
        )),
    }
}

/// `?namespace=` of an upload.
#[derive(Deserialize)]
pub(super) struct NamespaceParam {
    namespace: Option<String>,
}

/// A request's body, at most `limit` bytes: 413 past it, said before
/// reading when `Content-Length` tells.
async fn body_bytes(headers: &HeaderMap, body: Body, limit: usize, what: &str) -> Result<bytes::Bytes, Response> {
    let too_big = || refused(StatusCode::PAYLOAD_TOO_LARGE, format!("{what} is larger than this server takes ({} bytes at most)", limit));
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_big());
    }
    axum::body::to_bytes(body, limit).await.map_err(|_| too_big())
}

/// A JSON body as `T`, with what is wrong with it said.
async fn json_body<T: serde::de::DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, Response> {
    let bytes = body_bytes(headers, body, MAX_JSON, "the request body").await?;
    let bytes = if bytes.is_empty() { bytes::Bytes::from_static(b"{}") } else { bytes };
    serde_json::from_slice(&bytes).map_err(|e| refused(StatusCode::BAD_REQUEST, format!("the request body is not what this route takes: {e}")))
}

/// Whether `text` is a SHA-256 as the API writes it: 64 lowercase hex digits.
fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `PUT /api/files/{sha256}`: keeps a file (a workflow, a components file
/// or a component) for runs to name. Idempotent: 200 if it was kept
/// already, 201 if added.
pub(super) async fn put_file(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(sha256): Path<String>,
    Query(p): Query<NamespaceParam>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(r) = allowed(&app, &caller, Role::Submitter) {
        return r;
    }
    let namespace = match namespace_for(&caller, p.namespace.as_deref()) {
        Ok(ns) => ns,
        Err(r) => return r,
    };
    let store = match queue(&app) {
        Ok(store) => store,
        Err(r) => return r,
    };
    if !is_sha256(&sha256) {
        return refused(StatusCode::BAD_REQUEST, format!("`{sha256}` is not a SHA-256: name the file by its 64 lowercase hex digits"));
    }
    let bytes = match body_bytes(&headers, body, app.max_upload, "the file").await {
        Ok(bytes) => bytes,
        Err(r) => return r,
    };
    let actual = sandflow::sandbox::sha256_hex(&bytes);
    if actual != sha256 {
        return refused(StatusCode::BAD_REQUEST, format!("the file's SHA-256 is {actual}, not {sha256} as its address says: nothing was kept"));
    }
    match store.put_file(&namespace, &bytes).await {
        Ok((_, had)) => {
            let status = if had { StatusCode::OK } else { StatusCode::CREATED };
            let mut response = (status, Json(json!({ "sha256": sha256, "size": bytes.len() }))).into_response();
            response.extensions_mut().insert(Noted { namespace: Some(namespace), run_id: None, detail: Some(format!("{sha256} ({} bytes)", bytes.len())) });
            response
        }
        Err(e) => failure(e),
    }
}

/// `POST /api/runs`: what a client submits.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Submit {
    /// The workflow file's path, one of `files`.
    workflow: String,
    /// Every file the run reads (the workflow, a components file, the
    /// components, nested workflows), by path as the workflow names it,
    /// each with its SHA-256.
    files: BTreeMap<String, String>,
    #[serde(default)]
    input: Value,
    #[serde(default)]
    targets: Vec<String>,
    #[serde(default)]
    vars: Option<Value>,
    #[serde(default)]
    concurrency: Option<u64>,
    /// A components file (`--components`), one of `files`.
    #[serde(default)]
    components: Option<String>,
    /// The namespace the run belongs to (see [`namespace_for`]).
    #[serde(default)]
    namespace: Option<String>,
    /// Its priority within its namespace (higher first).
    #[serde(default)]
    priority: i32,
}

/// `POST /api/runs`: checks a run as `sandflow submit` does and queues it
/// for the workers. 201 with its id; 409 with the files to upload first
/// (`missing`); 422 with the workflow's problems.
pub(super) async fn submit(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>, headers: HeaderMap, body: Body) -> Response {
    let Received { store, request, prepared, used, binding } = match receive(&app, &caller, headers, body).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Err(refusal) = enter(&prepared, &request.targets, &request.input, &Default::default()) {
        return refused(StatusCode::UNPROCESSABLE_ENTITY, refusal.to_string());
    }
    let file = PathBuf::from(&request.workflow);
    // Every file it read is one the store holds for its namespace (receive
    // found them all), by the SHA-256 the request named; recorded by the
    // path it was read by, as workers will ask for it.
    let named: HashMap<PathBuf, &String> = request.files.iter().map(|(p, sha)| (sandflow::exec::plain_path(std::path::Path::new(p)), sha)).collect();
    let held: Option<Vec<(String, String)>> =
        used.keys().map(|p| named.get(&sandflow::exec::plain_path(p)).map(|sha| (p.display().to_string(), sha.to_string()))).collect();
    let Some(held) = held else {
        return refused(StatusCode::INTERNAL_SERVER_ERROR, "the workflow read a file the request did not name".into());
    };
    match sandflow::runs::submit_held(&store, &prepared, &file, &held, request.input, &request.targets, &binding).await {
        Ok(id) => {
            let mut response = (StatusCode::CREATED, [(header::LOCATION, format!("/api/runs/{id}"))], Json(json!({ "id": id }))).into_response();
            response.extensions_mut().insert(Noted { namespace: Some(binding.namespace), run_id: Some(id), detail: Some(request.workflow) });
            response
        }
        Err(e) => failure(e),
    }
}

/// A submission checked as `sandflow submit` checks it: its files held,
/// its workflow loaded from them (components checked, not compiled), what
/// it may read of the workers' machines allowed.
struct Received {
    store: Arc<PgStore>,
    request: Submit,
    prepared: sandflow::exec::Prepared,
    /// The files the workflow read.
    used: RunFiles,
    binding: Binding,
}

/// Checks a submission (`POST /api/runs`, `POST /api/schedules`) of a
/// submitter: `Err` is the answer: 409 with the files to upload first
/// (`missing`), 422 with the workflow's problems, 4xx for the rest.
async fn receive(app: &App, caller: &Caller, headers: HeaderMap, body: Body) -> Result<Received, Response> {
    allowed(app, caller, Role::Submitter)?;
    let store = queue(app)?.clone();
    let request: Submit = json_body(&headers, body).await?;
    for (what, path) in [("workflow", Some(&request.workflow)), ("components", request.components.as_ref())] {
        if let Some(path) = path
            && !request.files.contains_key(path)
        {
            return Err(refused(StatusCode::BAD_REQUEST, format!("`{what}` is `{path}`, which is not among `files`: send it with its SHA-256")));
        }
    }
    if let Some((path, sha)) = request.files.iter().find(|(_, sha)| !is_sha256(sha)) {
        return Err(refused(StatusCode::BAD_REQUEST, format!("`files`: `{sha}` ({path}) is not a SHA-256 (64 lowercase hex digits)")));
    }
    if request.vars.as_ref().is_some_and(|v| !v.is_object() && !v.is_null()) {
        return Err(refused(StatusCode::BAD_REQUEST, "`vars` must be an object of NAME: value".into()));
    }
    let namespace = namespace_for(caller, request.namespace.as_deref())?;
    let hashes: Vec<&str> = request.files.values().map(String::as_str).collect();
    let held = store.files_by_hash(&namespace, &hashes).await.map_err(failure)?;
    let missing: Vec<Value> =
        request.files.iter().filter(|(_, sha)| !held.contains_key(*sha)).map(|(path, sha)| json!({ "path": path, "sha256": sha })).collect();
    if !missing.is_empty() {
        let error = format!("the server does not have {} of the run's files: upload each with PUT /api/files/{{sha256}}, then submit again", missing.len());
        return Err((StatusCode::CONFLICT, Json(json!({ "error": error, "missing": missing }))).into_response());
    }
    let files: RunFiles = request.files.iter().map(|(path, sha)| (PathBuf::from(path), held[sha].clone())).collect();
    let (path, components) = (PathBuf::from(&request.workflow), request.components.clone().map(PathBuf::from));
    let checks = app.checks.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        let recording = Recording { inner: files, seen: Default::default() };
        let prepared = sandflow::exec::load_from_with(&path, &*checks, &recording, components.as_deref());
        (prepared, recording.seen.into_inner().expect("not poisoned"))
    })
    .await;
    let (prepared, used) = match loaded {
        Ok((Ok(prepared), used)) => (prepared, used),
        Ok((Err(diags), _)) => {
            let problems: Vec<Value> = diags
                .problems
                .iter()
                .map(|p| {
                    json!({ "file": p.location.file.display().to_string(), "line": p.location.line, "column": p.location.column, "message": p.message, "hint": p.hint, "text": p.to_string() })
                })
                .collect();
            let n = problems.len();
            let error = format!("{}: {n} problem{}; nothing was submitted", diags.file.display(), if n == 1 { "" } else { "s" });
            return Err((StatusCode::UNPROCESSABLE_ENTITY, Json(json!({ "error": error, "problems": problems }))).into_response());
        }
        Err(e) => return Err(refused(StatusCode::INTERNAL_SERVER_ERROR, format!("checking the workflow failed: {e}"))),
    };
    if !app.allow_host_access {
        let uses = prepared.host_access();
        if !uses.is_empty() {
            let error = format!(
                "runs submitted to this server may not read the workers' machines: {}; ask the operator to start `sandflow serve --allow-host-access` if its clients are trusted with the workers' files and environment",
                uses.join("; ")
            );
            return Err(refused(StatusCode::UNPROCESSABLE_ENTITY, error));
        }
    }
    let binding = Binding {
        concurrency: request.concurrency.filter(|n| *n > 0).map(|n| n as usize),
        components: request.components.clone().map(PathBuf::from),
        vars: request.vars.clone().unwrap_or(Value::Null),
        namespace,
        priority: request.priority,
    };
    Ok(Received { store, request, prepared, used, binding })
}

/// `POST /api/schedules`: registers a workflow file's `schedules:` and
/// `triggers:` (as `sandflow schedule add`), its files sent as a
/// submission's are. 201 with each schedule's next tick, the webhooks, and
/// the workflow's schedules and webhooks the file no longer has (removed).
pub(super) async fn add_schedules(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>, headers: HeaderMap, body: Body) -> Response {
    let Received { store, request, prepared, used, binding } = match receive(&app, &caller, headers, body).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let wf = &prepared.plan.workflow;
    if wf.schedules.is_empty() && wf.triggers.is_empty() {
        return refused(StatusCode::UNPROCESSABLE_ENTITY, format!("{} has no `schedules:` and no `triggers:`", request.workflow));
    }
    for s in &wf.schedules {
        if let Err(refusal) = enter(&prepared, &request.targets, &s.input, &Default::default()) {
            return refused(StatusCode::UNPROCESSABLE_ENTITY, format!("schedule `{}`: {refusal}", s.name));
        }
    }
    let namespace = binding.namespace.clone();
    let template = sandflow::store::schedules::ScheduleTemplate {
        workflow: wf.name.clone(),
        file: request.workflow.clone(),
        sha256: wf.sha256.clone(),
        targets: request.targets.clone(),
        binding,
    };
    match store.put_schedules(&template, &used, &wf.schedules, &wf.triggers, jiff::Timestamp::now()).await {
        Ok(put) => {
            let mut response = (StatusCode::CREATED, Json(super::schedule::Added::new(put, wf))).into_response();
            response.extensions_mut().insert(Noted { namespace: Some(namespace), run_id: None, detail: Some(request.workflow) });
            response
        }
        Err(e) => failure(e),
    }
}

/// `?namespace=` of a schedule action.
#[derive(Deserialize)]
pub(super) struct InNamespace {
    namespace: Option<String>,
}

/// `POST /api/schedules/{name}/pause|resume|remove`: a schedule
/// (WORKFLOW/NAME, its `/` as `%2F`) or a webhook (NAME). Pause and
/// resume are an operator's, remove a submitter's.
pub(super) async fn schedule_act(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path((name, action)): Path<(String, String)>,
    Query(q): Query<InNamespace>,
) -> Response {
    let namespace = match namespace_for(&caller, q.namespace.as_deref()) {
        Ok(ns) => ns,
        Err(r) => return r,
    };
    let noted = Noted { namespace: Some(namespace.clone()), run_id: None, detail: Some(name.clone()) };
    let role = if action == "remove" { Role::Submitter } else { Role::Operator };
    let store = match allowed(&app, &caller, role).and_then(|()| queue(&app)) {
        Ok(store) => store,
        Err(mut r) => {
            r.extensions_mut().insert(noted);
            return r;
        }
    };
    let webhook = sandflow::store::schedules::is_webhook(&name);
    let done = match (action.as_str(), webhook) {
        ("pause" | "resume", true) => store.pause_hook(&namespace, &name, action == "pause").await,
        ("pause" | "resume", false) => store.pause_schedule(&namespace, &name, action == "pause", jiff::Timestamp::now()).await,
        ("remove", true) => store.remove_hook(&namespace, &name).await,
        ("remove", false) => store.remove_schedule(&namespace, &name).await,
        _ => return refused(StatusCode::NOT_FOUND, format!("no action `{action}` (pause, resume, remove)")),
    };
    let what = if webhook { "webhook" } else { "schedule" };
    let mut response = match done {
        Ok(true) => Json(json!({ "message": format!("{what} {name}: {action}d") })).into_response(),
        Ok(false) => refused(StatusCode::NOT_FOUND, format!("no {what} `{name}` in namespace `{namespace}` (see `sandflow schedule list`)")),
        Err(e) => failure(e),
    };
    response.extensions_mut().insert(noted);
    response
}

/// `?after=SEQ`: the events after this one (a reconnecting client sends
/// `Last-Event-ID` instead).
#[derive(Deserialize)]
pub(super) struct StreamParams {
    after: Option<i32>,
}

/// `GET /api/runs/{id}/stream`: the run's events as workers record them
/// (SSE; each event's `id` is its sequence number), from the start of its
/// current attempt, until the run ends.
pub(super) async fn stream(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(p): Query<StreamParams>,
    headers: HeaderMap,
) -> Response {
    let store = match queue(&app) {
        Ok(store) => store.clone(),
        Err(r) => return r,
    };
    let id = match super::serve::visible(&app, &caller, &id).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    match store.is_queued(&id).await {
        Ok(true) => {}
        Ok(false) => {
            return refused(
                StatusCode::CONFLICT,
                format!("run {id} was run by a `sandflow run` process, not by workers: it has no event stream (GET /api/runs/{id} shows it)"),
            );
        }
        Err(e) => return failure(e),
    }
    let resumed = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i32>().ok());
    let start = match resumed.or(p.after) {
        Some(after) => after,
        None => match store.attempt_events(&id).await {
            Ok(after) => after,
            Err(e) => return failure(e),
        },
    };
    // (store, run id, the last event sent, events read but not yet sent, whether the run ended)
    let state = (store, id, start, std::collections::VecDeque::<(i32, Event)>::new(), false);
    let events = futures_util::stream::unfold(state, |(store, id, mut last, mut pending, mut ended)| async move {
        loop {
            if let Some((seq, event)) = pending.pop_front() {
                last = seq;
                ended |= matches!(event, Event::RunFinished { .. });
                let data = serde_json::to_string(&event).expect("events serialize");
                let sse = SseEvent::default().id(seq.to_string()).event("event").data(data);
                return Some((Ok::<_, std::convert::Infallible>(sse), (store, id, last, pending, ended)));
            }
            if ended {
                return None;
            }
            match store.events_after(&id, last).await {
                Ok(read) if !read.is_empty() => pending.extend(read),
                Ok(_) => tokio::time::sleep(super::serve::LIVE_POLL).await,
                Err(e) => {
                    let sse = SseEvent::default().event("error").data(e.to_string());
                    return Some((Ok(sse), (store, id, last, pending, true)));
                }
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

/// `POST /api/runs/{id}/retry` and `…/resume`: what the new attempt may
/// change.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Again {
    /// Retry only: this step and everything downstream run again.
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    concurrency: Option<u64>,
    #[serde(default)]
    vars: Option<Value>,
}

/// `POST /api/runs/{id}/{cancel|resume|retry}`. A run that workers ran is
/// queued again at once (201 with its attempt); one a `sandflow run`
/// process ran is resumed or retried by a `sandflow` process this server
/// starts, on the same store.
pub(super) async fn act(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    on_run(&app, &caller, &id, None, |record| act_on(&app, &caller, record, action, headers, body)).await
}

/// An action on run `given` that the caller sees (another namespace's is
/// 404 whatever the role), read once: its namespace for the audit log
/// (with `detail`), its record for `act`.
async fn on_run<F, Fut>(app: &App, caller: &Caller, given: &str, detail: Option<String>, act: F) -> Response
where
    F: FnOnce(sandflow::store::RunRecord) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let id = match super::serve::visible(app, caller, given).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    let (namespace, mut response) = match app.store.run(&id, RunDetail::Run).await {
        Ok(record) => (Some(record.namespace.clone()), act(record).await),
        Err(e) => (None, failure(e)),
    };
    response.extensions_mut().insert(Noted { namespace, run_id: Some(id), detail });
    response
}

/// [`act`] on run `record`, which the caller sees.
async fn act_on(app: &App, caller: &Caller, record: sandflow::store::RunRecord, action: String, headers: HeaderMap, body: Body) -> Response {
    let id = record.id.clone();
    if let Err(r) = allowed(app, caller, Role::Operator) {
        return r;
    }
    let again: Again = match json_body(&headers, body).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let rerun = match action.as_str() {
        "cancel" => {
            return match app.store.request_cancel(&id).await {
                Ok(status) if status == "running" => Json(json!({ "ok": true, "id": id, "message": format!("run {id} was asked to cancel") })).into_response(),
                Ok(status) => refused(StatusCode::CONFLICT, format!("run {id} is not running: it is {status}")),
                Err(e) => failure(e),
            };
        }
        "resume" if again.from.is_some() => return refused(StatusCode::BAD_REQUEST, "`from` is for retry: a resume runs what did not succeed".into()),
        "resume" => Rerun::Resume,
        "retry" => Rerun::Retry { from: again.from.clone() },
        other => return refused(StatusCode::NOT_FOUND, format!("no action `{other}`: cancel, resume or retry")),
    };
    if record.status == "completed" && rerun == Rerun::Resume {
        return Json(json!({ "ok": true, "id": id, "attempt": record.attempt, "message": format!("run {id} already completed") })).into_response();
    }
    if let Some(store) = &app.pg {
        match store.is_queued(&id).await {
            Ok(true) => return queue_again(store, &record, rerun, again).await,
            Ok(false) => {}
            Err(e) => return failure(e),
        }
    }
    if record.status == "running" {
        let hint = if action == "retry" { "cancel it first" } else { "the process that runs it goes on with it" };
        return refused(StatusCode::CONFLICT, format!("run {id} is running: {hint}"));
    }
    spawn_again(app, &id, &action, again)
}

/// The body of `POST /api/runs/{id}/steps/{step}/signal`: a signal step's
/// `data`, or an approval's decision.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SignalBody {
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    approved: Option<bool>,
    #[serde(default)]
    comment: Option<String>,
}

/// `POST /api/runs/{id}/steps/{step}/signal`: ends a step that waits for a
/// signal or an approval ([`sandflow::runs::signal`]), as the operator the
/// token is; an approval with `approvers` takes only the tokens (or roles)
/// it names. 200 with who sent it; 409 when the step does not wait (or
/// was signalled already), 403 for a token not among the approvers, 422
/// for data the step does not take.
pub(super) async fn signal(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path((id, step)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let detail = Some(format!("signal {step}"));
    on_run(&app, &caller, &id, detail, |record| signal_step(&app, &caller, record.id, &step, headers, body)).await
}

async fn signal_step(app: &App, caller: &Caller, id: String, step: &str, headers: HeaderMap, body: Body) -> Response {
    let id = id.as_str();
    if let Err(r) = allowed(app, caller, Role::Operator) {
        return r;
    }
    let body: SignalBody = match json_body(&headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let data = match body {
        SignalBody { data: Some(data), approved: None, comment: None } => data,
        SignalBody { data: None, approved: Some(approved), comment } => json!({ "approved": approved, "comment": comment }),
        _ => return refused(StatusCode::BAD_REQUEST, "send `{\"data\": …}` to a signal step, or `{\"approved\": true|false, \"comment\": …}` to an approval".into()),
    };
    // `serve --token` (admin) approves anything; a store token is known by
    // its name and its role.
    let names = (caller.role != Role::Admin).then(|| vec![caller.name.clone(), caller.role.as_str().to_string()]);
    let request = sandflow::runs::SignalRequest { step: step.to_string(), data, by: caller.name.clone(), names };
    match sandflow::runs::signal(app.store.as_ref(), id, request).await {
        Ok(signal) => Json(json!({ "ok": true, "id": id, "step": step, "by": signal.by, "at": signal.at, "message": format!("signal sent to step `{step}` of run {id}") })).into_response(),
        Err(sandflow::runs::SignalError::Store(e)) => failure(e),
        Err(e @ sandflow::runs::SignalError::Refused { .. }) => refused(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        Err(e @ sandflow::runs::SignalError::NotApprover { .. }) => refused(StatusCode::FORBIDDEN, e.to_string()),
        Err(e) => refused(StatusCode::CONFLICT, e.to_string()),
    }
}

/// A new attempt of a run that workers ran, queued for them.
async fn queue_again(store: &PgStore, record: &sandflow::store::RunRecord, rerun: Rerun, again: Again) -> Response {
    let id = &record.id;
    if record.status == "running" {
        let message = match rerun {
            Rerun::Resume => format!("run {id} is running on workers: they go on with it"),
            Rerun::Retry { .. } => format!("run {id} is running: cancel it first"),
        };
        return refused(StatusCode::CONFLICT, message);
    }
    let concurrency = again.concurrency.filter(|n| *n > 0).map(|n| n as usize);
    match sandflow::runs::queue_again(store, record, &rerun, concurrency, again.vars.as_ref()).await {
        Ok(attempt) => (
            StatusCode::CREATED,
            Json(json!({ "ok": true, "id": id, "attempt": attempt, "message": format!("run {id} is queued for workers (attempt {attempt})") })),
        )
            .into_response(),
        Err(QueueAgainError::Running(_)) => refused(StatusCode::CONFLICT, format!("run {id} is running: cancel it first")),
        Err(QueueAgainError::Invalid(why)) => refused(StatusCode::UNPROCESSABLE_ENTITY, why),
        Err(QueueAgainError::Store(e)) => failure(e),
    }
}

/// `sandflow resume|retry ID` as a process of its own, on this server's
/// store, for a run a `sandflow run` process ran: the run goes on if the
/// server stops.
fn spawn_again(app: &App, id: &str, action: &str, again: Again) -> Response {
    let mut cmd = tokio::process::Command::new(&app.exe);
    cmd.arg("--state-dir").arg(&app.state_dir).arg("-q");
    if let Some(url) = &app.store_url {
        cmd.arg("--store").arg(url);
    }
    cmd.arg(action).arg(id);
    if let Some(from) = &again.from {
        cmd.arg("--from").arg(from);
    }
    if let Some(n) = again.concurrency.filter(|n| *n > 0) {
        cmd.arg("--concurrency").arg(n.to_string());
    }
    if let Some(vars) = again.vars.as_ref().and_then(Value::as_object) {
        for (name, value) in vars {
            cmd.arg("--var").arg(format!("{name}={value}"));
        }
    }
    // Its errors go to this server's stderr.
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
    match cmd.spawn() {
        Ok(mut child) => {
            // Reaped in the background: its result is the run's record.
            tokio::spawn(async move { child.wait().await });
            Json(json!({ "ok": true, "id": id, "message": format!("`sandflow {action} {id}` started") })).into_response()
        }
        Err(e) => refused(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot start `sandflow {action}`: {e}")),
    }
}

/// What a handler tells the audit log of the action it answered: where it
/// acted, on which run, and what else to note.
#[derive(Debug, Clone, Default)]
pub(super) struct Noted {
    pub(super) namespace: Option<String>,
    pub(super) run_id: Option<String>,
    pub(super) detail: Option<String>,
}

/// Records every action request (submit, upload, cancel, resume, retry)
/// in the audit log of a PostgreSQL store, done or refused, with the
/// caller's token and what the handler noted ([`Noted`]). A log that
/// cannot be written is a warning on stderr, not the action's failure.
pub(super) async fn audited(State(app): State<Arc<App>>, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let caller = request.extensions().get::<Caller>().cloned();
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let response = next.run(request).await;
    let (Some(store), Some(caller)) = (&app.pg, caller) else { return response };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (action, run_id) = match (method.as_str(), segments.as_slice()) {
        ("POST", ["api", "runs"]) => ("submit".to_string(), None),
        ("PUT", ["api", "files", _]) => ("upload".to_string(), None),
        ("POST", ["api", "runs", id, action]) => (action.to_string(), Some(id.to_string())),
        ("POST", ["hooks", _]) => ("webhook".to_string(), None),
        ("POST", ["api", "schedules"]) => ("schedule add".to_string(), None),
        ("POST", ["api", "schedules", _, action]) => (format!("schedule {action}"), None),
        _ => return response,
    };
    let noted = response.extensions().get::<Noted>().cloned().unwrap_or_default();
    let status = response.status();
    let entry = sandflow::store::tokens::AuditRecord {
        at: String::new(),
        token: caller.name.clone(),
        namespace: noted.namespace,
        action,
        run_id: noted.run_id.or(run_id),
        outcome: if status.is_success() { "done".into() } else { format!("refused ({})", status.as_u16()) },
        detail: noted.detail,
    };
    if let Err(e) = store.audit(&entry).await {
        super::render::say!("warning: the audit log did not record {} by `{}`: {e}", entry.action, entry.token);
    }
    response
}

/// `?limit=` of the audit log.
#[derive(Deserialize)]
pub(super) struct AuditParams {
    limit: Option<i64>,
}

/// `GET /api/audit`: the newest entries of the audit log the caller sees
/// (its namespaces'; the admin's: all, the tokens' own too).
/// `GET /api/schedules`: the schedules and webhooks of the namespaces the
/// caller sees (a PostgreSQL store's; the secrets by name only).
pub(super) async fn schedules(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>, Query(q): Query<InNamespace>) -> Response {
    let Some(store) = &app.pg else {
        // A SQLite store's schedules (fired by `sandflow scheduler`) are
        // the `default` namespace's; it has no webhooks.
        let listed = match &app.sqlite {
            Some(sqlite) if caller.sees("default") && q.namespace.as_deref().is_none_or(|ns| ns == "default") => sqlite.local_schedules().await,
            _ => Ok(Vec::new()),
        };
        return match listed {
            Ok(schedules) => Json(json!({ "schedules": schedules, "webhooks": [] })).into_response(),
            Err(e) => failure(e),
        };
    };
    // `?namespace=NS`: only that one (which the caller must see).
    let named = match q.namespace.as_deref().map(|ns| namespace_for(&caller, Some(ns))).transpose() {
        Ok(named) => named.map(|ns| vec![ns]),
        Err(r) => return r,
    };
    let only = named.as_deref().or(caller.namespaces.as_deref());
    match (store.schedules(only).await, store.hooks(only).await) {
        (Ok(schedules), Ok(webhooks)) => Json(json!({ "schedules": schedules, "webhooks": webhooks })).into_response(),
        (Err(e), _) | (_, Err(e)) => failure(e),
    }
}

pub(super) async fn audit_log(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>, Query(p): Query<AuditParams>) -> Response {
    let store = match queue(&app) {
        Ok(store) => store,
        Err(r) => return r,
    };
    match store.audit_log(caller.namespaces.as_deref(), p.limit.unwrap_or(200).clamp(1, 1000)).await {
        Ok(entries) => Json(json!({ "entries": entries })).into_response(),
        Err(e) => failure(e),
    }
}
