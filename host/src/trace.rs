//! OpenTelemetry traces of runs (`--otlp ENDPOINT`, or
//! `OTEL_EXPORTER_OTLP_ENDPOINT`): one trace per run, a span for the run,
//! one per step and one per attempt, exported when the run ends with
//! OTLP/HTTP in its JSON encoding (`POST ENDPOINT/v1/traces`), which every
//! OpenTelemetry collector and most tracing backends accept.
//!
//! The tracer is an [`EventSink`]: it builds spans from the events the run
//! emits anyway, so a run without `--otlp` pays nothing. An export that
//! fails is a warning; it never fails the run.
//!
//! | span | name | attributes |
//! | --- | --- | --- |
//! | run | `run WORKFLOW` | `sandflow.run.id`, `sandflow.workflow`, `sandflow.run.state` |
//! | step | `step ID` | `sandflow.step.id`, `sandflow.component.name`, `sandflow.component.sha256`, `sandflow.step.state`, `sandflow.failure.kind`, `sandflow.fuel_used`, `sandflow.retries`, `sandflow.cached` |
//! | attempt | `attempt N of ID` | `sandflow.attempt`, `sandflow.item` (of a `forEach`), `sandflow.failure.kind` |
//!
//! A failed run, step or attempt has status `ERROR` with its message. A
//! nested run (`workflow:` steps, `/builtin/eval`) is part of its parent's
//! trace: its run span sits under the attempt that ran it (its run id,
//! `PARENT/STEP@ATTEMPT`, says which).

use crate::exec::{Event, EventSink, Prepared, RunState, SinkError, StepState};
use crate::workflow::Target;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where traces go: an `http://HOST:PORT[/PATH]` base, as
/// `OTEL_EXPORTER_OTLP_ENDPOINT` names it (`/v1/traces` is added).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    host: String,
    port: u16,
    path: String,
}

impl Endpoint {
    /// The endpoint of `--otlp URL` (`http://HOST:PORT`; traces go to `/v1/traces`).
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("--otlp `{url}`: only `http://` endpoints are supported (an OpenTelemetry collector's OTLP/HTTP port, e.g. http://127.0.0.1:4318)")
        })?;
        let (authority, base) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| format!("--otlp `{url}`: `{p}` is not a port"))?),
            None => (authority, 4318),
        };
        if host.is_empty() {
            return Err(format!("--otlp `{url}`: no host"));
        }
        let base = base.trim_end_matches('/');
        let path = if base.is_empty() { "/v1/traces".to_string() } else { format!("/{base}/v1/traces") };
        Ok(Endpoint { host: host.to_string(), port, path })
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}:{}{}", self.host, self.port, self.path)
    }
}

/// A span being built.
struct Span {
    id: [u8; 8],
    parent: Option<[u8; 8]>,
    name: String,
    start: u128,
    end: Option<u128>,
    attributes: Vec<(&'static str, Value)>,
    /// `Some(message)`: status ERROR.
    error: Option<String>,
}

/// An attempt: its step, `forEach` item and number.
type AttemptKey = (String, Option<usize>, u32);

/// The spans of one run.
struct Trace {
    id: [u8; 16],
    /// The run's id: span ids of nested runs (same trace) differ by it.
    run_id: String,
    /// What the run runs (unknown for `/builtin/eval`'s inline workflows).
    prepared: Option<Arc<Prepared>>,
    next_span: u64,
    run: Span,
    /// Step spans by step id, in the order they opened.
    steps: Vec<(String, Span)>,
    /// Attempt spans, closed and open; open ones by (step, item, attempt).
    attempts: Vec<(String, Span)>,
    open: HashMap<AttemptKey, usize>,
    /// Nested runs that ended: the step, item and attempt that ran each,
    /// and its spans (its run span first, not yet under a parent).
    nested: Vec<(AttemptKey, Vec<Span>)>,
}

impl Trace {
    fn span_id(&mut self) -> [u8; 8] {
        self.next_span += 1;
        // Unique within the trace, and spread out as OpenTelemetry likes.
        let mut id = [0u8; 8];
        let digest = crate::sandbox::sha256_hex(&[&self.id[..], self.run_id.as_bytes(), &self.next_span.to_le_bytes()].concat());
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(&digest[2 * i..2 * i + 2], 16).expect("hex");
        }
        id
    }

    fn step(&mut self, id: &str, now: u128, info: &StepInfo) -> usize {
        if let Some(i) = self.steps.iter().position(|(s, _)| s == id) {
            return i;
        }
        let span = Span {
            id: self.span_id(),
            parent: Some(self.run.id),
            name: format!("step {id}"),
            start: now,
            end: None,
            attributes: vec![
                ("sandflow.step.id", json!(id)),
                ("sandflow.component.name", json!(info.component)),
                ("sandflow.component.sha256", json!(info.sha256)),
            ],
            error: None,
        };
        self.steps.push((id.to_string(), span));
        self.steps.len() - 1
    }
}

/// What the trace says of a step's component.
#[derive(Clone, Default)]
struct StepInfo {
    component: String,
    sha256: String,
}

/// Builds each run's trace from its events and exports it when it ends.
pub struct TraceSink {
    endpoint: Endpoint,
    prepared: Arc<Prepared>,
    traces: Mutex<HashMap<String, Trace>>,
    exports: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// What the trace says of step `id`'s component.
fn step_info(prepared: Option<&Prepared>, id: &str) -> StepInfo {
    let Some(p) = prepared else { return StepInfo::default() };
    let Some(&i) = p.plan.index.get(id) else { return StepInfo::default() };
    let component = match &p.plan.workflow.steps[i].target {
        Target::Named(n) => n.clone(),
        Target::Path(path) => path.display().to_string(),
        Target::Builtin(b) => format!("/builtin/{}", b.name()),
        Target::Workflow(path) => format!("workflow {}", path.display()),
    };
    let sha256 = p.components.get(i).and_then(|c| c.as_ref()).map(|c| c.sha256.clone()).unwrap_or_default();
    StepInfo { component, sha256 }
}

fn now() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl TraceSink {
    /// A tracer of runs of `prepared`, exporting to `endpoint`.
    pub fn new(prepared: Arc<Prepared>, endpoint: Endpoint) -> TraceSink {
        TraceSink { endpoint, prepared, traces: Mutex::new(HashMap::new()), exports: Mutex::new(Vec::new()) }
    }

    fn on(&self, event: &Event) {
        let t = now();
        let mut traces = crate::lock(&self.traces);
        match event {
            Event::RunStarted { run_id, workflow, .. } => {
                // A nested run (`PARENT/STEP[#ITEM]`) is part of its parent's
                // trace; it is put under the attempt of the step that ran
                // it when the parent ends (see `Trace::finish`).
                let (id, prepared) = match crate::exec::parse_nested_run_id(run_id).and_then(|(p, step, ..)| Some((traces.get(p)?, step))) {
                    Some((outer, step)) => {
                        let nested = outer.prepared.as_ref().and_then(|p| p.nested.get(*p.plan.index.get(step)?)?.clone());
                        (outer.id, nested)
                    }
                    None => (*uuid::Uuid::now_v7().as_bytes(), Some(self.prepared.clone())),
                };
                let parent = None;
                let mut trace = Trace {
                    id,
                    run_id: run_id.clone(),
                    prepared,
                    next_span: 0,
                    run: Span { id: [0; 8], parent, name: format!("run {workflow}"), start: t, end: None, attributes: Vec::new(), error: None },
                    steps: Vec::new(),
                    attempts: Vec::new(),
                    open: HashMap::new(),
                    nested: Vec::new(),
                };
                trace.run.id = trace.span_id();
                trace.run.attributes = vec![("sandflow.run.id", json!(run_id)), ("sandflow.workflow", json!(workflow))];
                traces.insert(run_id.clone(), trace);
            }
            Event::StepStarted { run_id, step, attempt, item, .. } => {
                let Some(trace) = traces.get_mut(run_id) else { return };
                let info = step_info(trace.prepared.as_deref(), step);
                let s = trace.step(step, t, &info);
                let parent = trace.steps[s].1.id;
                let mut attributes = vec![("sandflow.attempt", json!(attempt))];
                if let Some(item) = item {
                    attributes.push(("sandflow.item", json!(item)));
                }
                let span = Span { id: trace.span_id(), parent: Some(parent), name: format!("attempt {attempt} of {step}"), start: t, end: None, attributes, error: None };
                trace.attempts.push((step.clone(), span));
                let index = trace.attempts.len() - 1;
                trace.open.insert((step.clone(), *item, *attempt), index);
            }
            Event::StepRetrying { run_id, step, attempt, item, error, .. } => {
                let Some(trace) = traces.get_mut(run_id) else { return };
                if let Some(i) = trace.open.remove(&(step.clone(), *item, *attempt)) {
                    let span = &mut trace.attempts[i].1;
                    span.end = Some(t);
                    span.attributes.push(("sandflow.failure.kind", json!(error.kind.as_str())));
                    span.error = Some(error.message.clone());
                }
            }
            Event::StepFinished { run_id, step, state, attempt, duration, fuel_used, error, cached, .. } => {
                let Some(trace) = traces.get_mut(run_id) else { return };
                // A step that never started (skipped, restored) spans its decision.
                let info = step_info(trace.prepared.as_deref(), step);
                let started = t.saturating_sub(duration.as_nanos());
                let s = trace.step(step, started, &info);
                // Its attempts still open end with it, as it ended.
                let open: Vec<usize> = trace.open.iter().filter(|((id, _, _), _)| id == step).map(|(_, &i)| i).collect();
                trace.open.retain(|(id, _, _), _| id != step);
                for i in open {
                    let span = &mut trace.attempts[i].1;
                    span.end = Some(t);
                    if *state == StepState::Failed
                        && let Some(f) = error
                    {
                        span.attributes.push(("sandflow.failure.kind", json!(f.kind.as_str())));
                        span.error = Some(f.message.clone());
                    }
                }
                let span = &mut trace.steps[s].1;
                span.end = Some(t);
                span.attributes.push(("sandflow.step.state", json!(state.as_str())));
                span.attributes.push(("sandflow.fuel_used", json!(fuel_used)));
                span.attributes.push(("sandflow.retries", json!(attempt.saturating_sub(1))));
                span.attributes.push(("sandflow.cached", json!(cached)));
                if let Some(f) = error {
                    span.attributes.push(("sandflow.failure.kind", json!(f.kind.as_str())));
                    if *state == StepState::Failed {
                        span.error = Some(f.message.clone());
                    }
                }
            }
            Event::RunFinished { run_id, state, error, .. } => {
                let Some(mut trace) = traces.remove(run_id) else { return };
                trace.run.end = Some(t);
                trace.run.attributes.push(("sandflow.run.state", json!(state.as_str())));
                if *state != RunState::Completed {
                    trace.run.error = Some(error.clone().unwrap_or_else(|| state.as_str().to_string()));
                }
                let trace_id = trace.id;
                let spans = trace.finish(t);
                if let Some((parent, step, item, attempt)) = crate::exec::parse_nested_run_id(run_id)
                    && let Some(outer) = traces.get_mut(parent)
                {
                    outer.nested.push(((step.to_string(), item, attempt), spans));
                    return;
                }
                let body = export_body(trace_id, &spans);
                let endpoint = self.endpoint.clone();
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    crate::lock(&self.exports).push(runtime.spawn(async move {
                        if let Err(e) = post(&endpoint, &body).await {
                            tracing::warn!("the run's trace was not exported to {endpoint}: {e}");
                        }
                    }));
                }
            }
            _ => {}
        }
    }
}

#[async_trait::async_trait]
impl EventSink for TraceSink {
    fn emit(&self, event: &Event) {
        self.on(event);
    }

    /// Waits for the exports of runs that ended (nothing to wait for while
    /// a run is in progress). Never an error: a trace is not the run's record.
    async fn barrier(&self) -> Result<(), SinkError> {
        let pending: Vec<_> = std::mem::take(&mut *crate::lock(&self.exports));
        for export in pending {
            let _ = export.await;
        }
        Ok(())
    }
}

impl Trace {
    /// Every span of the run once it ended at `end`: its own (spans still
    /// open end with it) and those of its nested runs, each under the
    /// attempt that ran it (else under its step).
    fn finish(self, end: u128) -> Vec<Span> {
        let Trace { run, steps, attempts, nested, .. } = self;
        let mut spans: Vec<Span> = std::iter::once(run).chain(steps.into_iter().map(|(_, s)| s)).collect();
        let number = |s: &Span, key: &str| s.attributes.iter().find(|(k, _)| *k == key).and_then(|(_, v)| v.as_u64());
        for ((step, item, attempt), mut group) in nested {
            let ran = attempts
                .iter()
                .find(|(id, s)| *id == step && number(s, "sandflow.item") == item.map(|i| i as u64) && number(s, "sandflow.attempt") == Some(attempt.into()))
                .map(|(_, s)| s);
            let step_span = spans.iter().find(|s| s.name == format!("step {step}"));
            group[0].parent = ran.or(step_span).map(|s| s.id);
            spans.append(&mut group);
        }
        spans.extend(attempts.into_iter().map(|(_, s)| s));
        for s in &mut spans {
            s.end.get_or_insert(end);
        }
        spans
    }
}

/// The OTLP JSON of a finished trace's spans.
fn export_body(trace: [u8; 16], spans: &[Span]) -> Value {
    let span = |s: &Span| {
        let mut v = json!({
            "traceId": hex(&trace),
            "spanId": hex(&s.id),
            "name": s.name,
            "kind": 1,
            "startTimeUnixNano": s.start.to_string(),
            "endTimeUnixNano": s.end.unwrap_or(s.start).max(s.start).to_string(),
            "attributes": s.attributes.iter().map(|(k, v)| json!({ "key": k, "value": any_value(v) })).collect::<Vec<_>>(),
            "status": match &s.error { Some(m) => json!({ "code": 2, "message": m }), None => json!({ "code": 1 }) },
        });
        if let Some(p) = s.parent {
            v["parentSpanId"] = json!(hex(&p));
        }
        v
    };
    let spans: Vec<Value> = spans.iter().map(span).collect();
    json!({
        "resourceSpans": [{
            "resource": { "attributes": [ { "key": "service.name", "value": { "stringValue": "sandflow" } } ] },
            "scopeSpans": [{ "scope": { "name": "sandflow", "version": env!("CARGO_PKG_VERSION") }, "spans": spans }],
        }]
    })
}

/// A JSON value as an OTLP `AnyValue`.
fn any_value(v: &Value) -> Value {
    match v {
        Value::Bool(b) => json!({ "boolValue": b }),
        Value::Number(n) if n.is_i64() || n.is_u64() => json!({ "intValue": n.to_string() }),
        Value::Number(n) => json!({ "doubleValue": n.as_f64() }),
        Value::String(s) => json!({ "stringValue": s }),
        other => json!({ "stringValue": other.to_string() }),
    }
}

/// One HTTP/1.1 POST of `body`; Ok when the collector answers 2xx.
async fn post(endpoint: &Endpoint, body: &Value) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = serde_json::to_vec(body).expect("JSON serializes");
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await.map_err(|e| e.to_string())?;
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            endpoint.path,
            endpoint.host,
            endpoint.port,
            body.len()
        );
        stream.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
        stream.write_all(&body).await.map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.map_err(|e| e.to_string())?;
        let status_line = String::from_utf8_lossy(&answer).lines().next().unwrap_or("").to_string();
        match status_line.split(' ').nth(1) {
            Some(code) if code.starts_with('2') => Ok(()),
            _ => Err(format!("the collector answered `{status_line}`")),
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), exchange).await.map_err(|_| "no answer in 10s".to_string())?
}

#[cfg(test)]
mod tests {
    use super::Endpoint;

    #[test]
    fn endpoints_name_the_traces_path() {
        let e = Endpoint::parse("http://127.0.0.1:4318").unwrap();
        assert_eq!(e.to_string(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(Endpoint::parse("http://collector/otlp/").unwrap().to_string(), "http://collector:4318/otlp/v1/traces");
        assert!(Endpoint::parse("https://x").unwrap_err().contains("only `http://`"));
        assert!(Endpoint::parse("http://x:port").unwrap_err().contains("not a port"));
    }
}
