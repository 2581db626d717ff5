//! `sandflow --server URL …`: the CLI as a client of `sandflow serve`'s
//! API ([`super::api`]). `run`, `submit`, `runs …`, `cancel`, `retry`,
//! `resume` and `workers` work as they do on a store, with no database
//! credentials here: the workflow and the files it names are checked here
//! (every static check; components validated, not compiled), uploaded
//! when the server lacks them (by SHA-256), and run by the server's
//! workers; a followed run's events come over server-sent events.
//!
//! HTTP/1.1 over TCP, or TLS (rustls, the webpki roots) for `https://`:
//! one connection per request, which is what a command makes a few of.

use super::args::{InputArgs, VarArgs};
use super::display::sink;
use super::render::{print_end, say};
use super::runs::{RunsCommand, follow_logs, print_logs, print_run, print_runs, wait_cancelled};
use super::worker::{OnInterrupt, RunSource, follow_to_end, load_for_submit};
use super::{CliError, Command, GlobalArgs, Output, exit, workflow_cmd};
use sandflow::exec::{Event, EventSink, Redactor, enter};
use sandflow::runs::Followed;
use sandflow::sandbox::{CancellationToken, LogLine, sha256_hex};
use sandflow::store::queue::RunFiles;
use sandflow::store::{RunRecord, RunSummary, WorkerRecord};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Runs `command` against the server at `server`, or gives it back when
/// it is not one that talks to a run store (it then works here).
pub(super) async fn execute(server: &url::Url, command: Command, global: &GlobalArgs, out: &Output) -> Result<Result<u8, CliError>, Command> {
    let remote = Arc::new(Remote { base: server.clone(), token: global.token.clone() });
    let result = match command {
        Command::Run(args) => {
            if args.secrets_file.is_some() {
                return Ok(Err(secrets_are_the_workers("run")));
            }
            let work = args.work;
            let submitted = remote.submit_file(&args.file, &args.input, &args.target, args.concurrency, &args.components, &args.vars, args.namespace.as_deref(), args.priority, out).await;
            match submitted {
                Err(e) => Err(e),
                Ok(id) if work.detach => {
                    println!("{id}");
                    Ok(exit::OK)
                }
                Ok(id) => remote.follow_to_end(&id, out, OnInterrupt::Cancel).await,
            }
        }
        Command::Submit(args) => {
            remote.submit_file(&args.file, &args.input, &args.target, args.concurrency, &args.components, &args.vars, args.namespace.as_deref(), args.priority, out).await.map(|id| {
                println!("{id}");
                exit::OK
            })
        }
        Command::Runs(command) => remote.runs(command, out).await,
        Command::Cancel(args) => remote.cancel_and_wait(&args.id, args.wait, out).await,
        Command::Signal(args) => remote.signal(args, out).await,
        Command::Retry(args) => {
            let again = Again { from: args.from, concurrency: args.concurrency, vars: &args.vars, secrets: args.secrets_file.is_some(), components: &args.components };
            remote.again("retry", &args.id, again, args.work.detach, out).await
        }
        Command::Resume(args) => {
            let again = Again { from: None, concurrency: args.concurrency, vars: &args.vars, secrets: args.secrets_file.is_some(), components: &args.components };
            remote.again("resume", &args.id, again, args.work.detach, out).await
        }
        Command::Schedule(command) => super::schedule::remote(&remote, command, out).await,
        Command::Workers => match remote.get::<Value>("/api/workers").await {
            Ok(body) => {
                let workers: Vec<WorkerRecord> = serde_json::from_value(body["workers"].clone()).unwrap_or_default();
                super::worker::print_workers(&workers, remote.base.as_str(), out);
                Ok(exit::OK)
            }
            Err(e) => Err(e),
        },
        other => return Err(other),
    };
    Ok(result)
}

/// Secrets stay with the workers: a client never sends them.
fn secrets_are_the_workers(command: &str) -> CliError {
    CliError::invalid(format!(
        "--secrets-file: with --server, `sandflow {command}` sends no secrets: the server's workers hold them (SANDFLOW_SECRET_<NAME> or their --secrets-file)"
    ))
}

/// What `retry` and `resume` may change of a run's new attempt.
struct Again<'a> {
    from: Option<String>,
    concurrency: Option<u64>,
    vars: &'a VarArgs,
    secrets: bool,
    components: &'a workflow_cmd::ComponentsArg,
}

/// A `sandflow serve` and the token it takes.
pub(crate) struct Remote {
    base: url::Url,
    token: Option<String>,
}

/// Anything that reads and writes bytes, TCP or TLS.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Stream for T {}

impl Remote {
    /// The server, for messages.
    fn name(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_string()
    }

    /// Sends one request on a connection of its own.
    async fn send(&self, method: Method, path: &str, content_type: Option<&str>, body: Bytes, last_event: Option<i32>) -> Result<hyper::Response<hyper::body::Incoming>, CliError> {
        let unreachable = |why: String| CliError { code: exit::FAILED, message: format!("cannot reach the server {}: {why}", self.name()) };
        let host = self.base.host_str().ok_or_else(|| unreachable("the URL has no host".into()))?.to_string();
        let port = self.base.port_or_known_default().unwrap_or(80);
        let connect = tokio::net::TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port));
        let tcp = tokio::time::timeout(Duration::from_secs(10), connect)
            .await
            .map_err(|_| unreachable("no answer within 10s".into()))?
            .map_err(|e| unreachable(format!("{e}; is `sandflow serve` running there?")))?;
        let stream: Box<dyn Stream> = match self.base.scheme() {
            "https" => {
                let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.into() };
                let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .map_err(|e| unreachable(e.to_string()))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| unreachable(e.to_string()))?;
                let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(|e| unreachable(format!("TLS: {e}")))?;
                Box::new(tls)
            }
            _ => Box::new(tcp),
        };
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(connection);
        let authority = match self.base.port() {
            Some(port) => format!("{host}:{port}"),
            None => host,
        };
        let mut request = Request::builder().method(method).uri(path).header(header::HOST, authority).header(header::ACCEPT, "application/json");
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(kind) = content_type {
            request = request.header(header::CONTENT_TYPE, kind);
        }
        if let Some(seq) = last_event {
            request = request.header("last-event-id", seq.to_string());
        }
        let request = request.body(Full::new(body)).map_err(|e| CliError::invalid(format!("a bad request to {}: {e}", self.name())))?;
        sender.send_request(request).await.map_err(|e| unreachable(e.to_string()))
    }

    /// Sends a request and reads the whole answer as JSON, with its status.
    async fn call(&self, method: Method, path: &str, content_type: Option<&str>, body: Bytes) -> Result<(StatusCode, Value), CliError> {
        let response = self.send(method, path, content_type, body, None).await?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| CliError { code: exit::FAILED, message: format!("the server {} stopped answering: {e}", self.name()) })?
            .to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok((status, value))
    }

    /// The CLI's error for an answer that is not a success.
    fn refused(&self, status: StatusCode, body: &Value) -> CliError {
        let said = body.get("error").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| match body {
            Value::String(text) if !text.trim().is_empty() => text.trim().to_string(),
            _ => status.canonical_reason().unwrap_or("an error").to_string(),
        });
        let message = match status {
            StatusCode::UNAUTHORIZED if self.token.is_none() => format!("{said} (pass --token TOKEN or set SANDFLOW_TOKEN)"),
            StatusCode::UNAUTHORIZED => format!("{said} (the token given was refused)"),
            StatusCode::NOT_FOUND if said.is_empty() || body.is_null() => format!("{} has no such route: is it a sandflow server of this version?", self.name()),
            _ => said,
        };
        let code = if status.is_client_error() { exit::INVALID } else { exit::FAILED };
        CliError { code, message }
    }

    /// GETs `path` as JSON; any answer but a success is an error.
    pub(super) async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        let (status, body) = self.call(Method::GET, path, None, Bytes::new()).await?;
        if !status.is_success() {
            return Err(self.refused(status, &body));
        }
        serde_json::from_value(body).map_err(|e| CliError { code: exit::FAILED, message: format!("{} answered {path} with what this client cannot read: {e}", self.name()) })
    }

    /// POSTs `body` as JSON to `path`; any answer but a success is an error.
    pub(super) async fn post(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        let (status, answer) = self.call(Method::POST, path, Some("application/json"), Bytes::from(body.to_string())).await?;
        match status.is_success() {
            true => Ok(answer),
            false => Err(self.refused(status, &answer)),
        }
    }

    /// The run `given` names (an id or the start of one), as the server has it.
    async fn run(&self, given: &str) -> Result<RunRecord, CliError> {
        let body: Value = self.get(&format!("/api/runs/{}", encode(given))).await?;
        serde_json::from_value(body["run"].clone()).map_err(|e| CliError { code: exit::FAILED, message: format!("{} answered with a run this client cannot read: {e}", self.name()) })
    }

    /// Asks run `id` to cancel.
    pub(crate) async fn cancel(&self, id: &str) -> Result<Value, CliError> {
        self.post(&format!("/api/runs/{}/cancel", encode(id)), &json!({})).await
    }

    /// `signal ID STEP`: as the token's caller.
    async fn signal(&self, args: super::signal::SignalArgs, out: &Output) -> Result<u8, CliError> {
        // The API takes a signal's data as `data`, an approval's decision
        // (`{approved, comment?}`) as it is.
        let body = match &args.data {
            Some(_) => json!({ "data": args.data()? }),
            None => args.data()?,
        };
        let id = self.run(&args.id).await?.id;
        let path = format!("/api/runs/{}/steps/{}/signal", encode(&id), encode(&args.step));
        let (status, answer) = self.call(Method::POST, &path, Some("application/json"), Bytes::from(body.to_string())).await?;
        if !status.is_success() {
            // As `signal` on a store says it: a step that does not wait,
            // or waits for someone else, is a failure (1); data that does
            // not fit is invalid (2).
            let mut e = self.refused(status, &answer);
            if matches!(status, StatusCode::CONFLICT | StatusCode::FORBIDDEN) {
                e.code = exit::FAILED;
            }
            return Err(e);
        }
        super::signal::sent(&id, &args.step, answer["by"].as_str().unwrap_or("?"), out);
        Ok(exit::OK)
    }

    /// Checks a workflow here, uploads what the server lacks of its files,
    /// and submits it; returns the run's id.
    #[allow(clippy::too_many_arguments)]
    async fn submit_file(
        &self,
        file: &Path,
        input: &InputArgs,
        targets: &[String],
        concurrency: Option<u64>,
        components: &workflow_cmd::ComponentsArg,
        vars: &VarArgs,
        namespace: Option<&str>,
        priority: i32,
        out: &Output,
    ) -> Result<String, CliError> {
        let input = input.read()?;
        let vars = vars.read()?;
        let (prepared, files) = load_for_submit(file, components, out).await?;
        enter(&prepared, targets, &input, &Default::default()).map_err(|r| CliError::invalid(r.to_string()))?;
        let hashes: std::collections::BTreeMap<String, String> = files.iter().map(|(p, b)| (p.display().to_string(), sha256_hex(b))).collect();
        let body = json!({
            "workflow": file.display().to_string(),
            "files": hashes,
            "input": input,
            "targets": targets,
            "vars": vars,
            "concurrency": concurrency,
            "components": components.file.as_ref().map(|p| p.display().to_string()),
            "namespace": namespace,
            "priority": priority,
        });
        let answer = self.post_with_files("/api/runs", &body, &files, namespace, out).await?;
        answer["id"].as_str().map(str::to_string).ok_or_else(|| CliError { code: exit::FAILED, message: format!("{} queued the run but did not say its id", self.name()) })
    }

    /// POSTs `body`, which names `files` by SHA-256, to `path`; uploads
    /// those the server asks for (409 `missing`) and posts again. Returns
    /// the server's answer; a 422's problems are printed as `validate`
    /// prints them.
    pub(super) async fn post_with_files(&self, path: &str, body: &Value, files: &RunFiles, namespace: Option<&str>, out: &Output) -> Result<Value, CliError> {
        for round in 0..2 {
            let (status, answer) = self.call(Method::POST, path, Some("application/json"), Bytes::from(body.to_string())).await?;
            if status.is_success() {
                return Ok(answer);
            }
            match (status, answer.get("missing").and_then(Value::as_array)) {
                (StatusCode::CONFLICT, Some(missing)) if round == 0 => {
                    for wanted in missing {
                        let path = PathBuf::from(wanted["path"].as_str().unwrap_or_default());
                        let bytes = files.get(&path).ok_or_else(|| CliError { code: exit::FAILED, message: format!("{} asked for {}, which the workflow does not read", self.name(), path.display()) })?;
                        self.upload(&path, bytes, namespace, out).await?;
                    }
                }
                (StatusCode::UNPROCESSABLE_ENTITY, _) => {
                    // The server's checks, as `validate` prints them.
                    for problem in answer.get("problems").and_then(Value::as_array).into_iter().flatten() {
                        say!("error: {}", problem["text"].as_str().unwrap_or_default());
                    }
                    return Err(self.refused(status, &answer));
                }
                _ => return Err(self.refused(status, &answer)),
            }
        }
        Err(CliError { code: exit::FAILED, message: format!("{} still lacks the workflow's files after they were uploaded", self.name()) })
    }

    /// Uploads one of a run's files.
    async fn upload(&self, path: &Path, bytes: &[u8], namespace: Option<&str>, out: &Output) -> Result<(), CliError> {
        if !out.quiet && !out.json && bytes.len() > 1 << 20 {
            say!("uploading {} ({:.1} MiB)…", path.display(), bytes.len() as f64 / (1024.0 * 1024.0));
        }
        let mut address = format!("/api/files/{}", sha256_hex(bytes));
        if let Some(ns) = namespace {
            address.push_str(&format!("?namespace={}", encode(ns)));
        }
        let (status, answer) = self.call(Method::PUT, &address, Some("application/octet-stream"), Bytes::copy_from_slice(bytes)).await?;
        match status.is_success() {
            true => Ok(()),
            false => Err(CliError { message: format!("{}: {}", path.display(), self.refused(status, &answer).message), ..self.refused(status, &answer) }),
        }
    }

    /// `runs list | show | logs | follow`.
    async fn runs(self: &Arc<Self>, command: RunsCommand, out: &Output) -> Result<u8, CliError> {
        match command {
            RunsCommand::List { limit, namespace } => {
                let mut path = format!("/api/runs?limit={}", limit.clamp(1, 500));
                if let Some(ns) = &namespace {
                    path.push_str(&format!("&namespace={}", encode(ns)));
                }
                let body: Value = self.get(&path).await?;
                let runs: Vec<RunSummary> = serde_json::from_value(body["runs"].clone())
                    .map_err(|e| CliError { code: exit::FAILED, message: format!("{} answered with runs this client cannot read: {e}", self.name()) })?;
                if runs.is_empty() && !out.json {
                    say!("no runs yet on {}", self.name());
                } else {
                    print_runs(&runs, out);
                }
            }
            RunsCommand::Show { id, timeline } => print_run(self.run(&id).await?, timeline, out),
            RunsCommand::Logs { id, step, follow: true } => {
                let id = self.run(&id).await?.id;
                follow_logs(&id, step.as_deref(), out, || async { Ok((self.run(&id).await?, self.logs(&id, step.as_deref()).await?)) }).await?;
            }
            RunsCommand::Logs { id, step, follow: false } => {
                let run = self.run(&id).await?;
                let lines = self.logs(&run.id, step.as_deref()).await?;
                let ran: Vec<String> = run.steps.iter().map(|s| s.step.clone()).collect();
                print_logs(&run.id, step.as_deref(), &lines, &ran, out)?;
            }
            RunsCommand::Follow { id } => {
                let id = self.run(&id).await?.id;
                return self.follow_to_end(&id, out, OnInterrupt::Detach).await;
            }
        }
        Ok(exit::OK)
    }

    /// Run `id`'s log lines (of `step`), as `GET /api/runs/ID/logs` gives them.
    async fn logs(&self, id: &str, step: Option<&str>) -> Result<Vec<(String, LogLine)>, CliError> {
        let mut path = format!("/api/runs/{id}/logs");
        if let Some(step) = step {
            path.push_str(&format!("?step={}", encode(step)));
        }
        let rows: Vec<Value> = self.get(&path).await?;
        Ok(rows.into_iter().filter_map(|row| Some((row["step"].as_str()?.to_string(), serde_json::from_value(row).ok()?))).collect())
    }

    /// Follows run `id` to its end and prints its output: the exit code
    /// is the run's.
    async fn follow_to_end(self: &Arc<Self>, id: &str, out: &Output, on_interrupt: OnInterrupt) -> Result<u8, CliError> {
        let followed = follow_to_end(&RunSource::Server(self.clone()), id, sink(out), out, on_interrupt).await?;
        Ok(print_end(followed.state, followed.output.as_ref(), &Redactor::default()))
    }

    /// `cancel ID`: asks, then waits for the run to end.
    async fn cancel_and_wait(&self, given: &str, wait: Duration, out: &Output) -> Result<u8, CliError> {
        let id = self.run(given).await?.id;
        self.cancel(&id).await?;
        let status = || async { Ok(self.run(&id).await?.status) };
        wait_cancelled(&id, wait, out, status).await
    }

    /// `retry ID` or `resume ID`: the server queues a new attempt (or
    /// starts a process for a run a `sandflow run` process ran); followed
    /// unless `--detach`.
    async fn again(self: &Arc<Self>, action: &str, given: &str, again: Again<'_>, detach: bool, out: &Output) -> Result<u8, CliError> {
        if again.secrets {
            return Err(secrets_are_the_workers(action));
        }
        if again.components.file.is_some() {
            return Err(CliError::invalid("--components: with --server, a run's new attempt keeps the components it was submitted with"));
        }
        let run = self.run(given).await?;
        let vars = again.vars.read()?;
        let vars = Some(vars).filter(|v| v.as_object().is_some_and(|v| !v.is_empty()));
        let body = json!({ "from": again.from, "concurrency": again.concurrency, "vars": vars });
        let answer = self.post(&format!("/api/runs/{}/{action}", run.id), &body).await?;
        let message = answer["message"].as_str().unwrap_or_default().to_string();
        if answer.get("attempt").is_none() || message.contains("already completed") {
            // Not queued: already completed, or a process of the server's runs it.
            if !out.quiet {
                say!("{message}");
            }
            if message.contains("already completed") {
                let output: Value = run.output.and_then(|o| serde_json::from_str(o.get()).ok()).unwrap_or_default();
                println!("{}", super::render::json_pretty(&output));
            }
            return Ok(exit::OK);
        }
        if detach {
            if !out.quiet {
                say!("{message}; follow it with `sandflow --server {} runs follow {}`", self.name(), run.id);
            }
            println!("{}", run.id);
            return Ok(exit::OK);
        }
        self.follow_to_end(&run.id, out, OnInterrupt::Cancel).await
    }

    /// Shows run `id`'s events from the server's stream until it ends
    /// (`None`: `stop` fired first). A dropped connection is picked up
    /// again after the last event seen.
    pub(crate) async fn follow(&self, id: &str, display: Arc<dyn EventSink>, stop: CancellationToken) -> Result<Option<Followed>, CliError> {
        let mut last: Option<i32> = None;
        let mut failures = 0u32;
        let path = format!("/api/runs/{}/stream", encode(id));
        loop {
            let attempt = async {
                let response = self.send(Method::GET, &path, None, Bytes::new(), last).await?;
                let status = response.status();
                if !status.is_success() {
                    let bytes = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    return Err(self.refused(status, &body));
                }
                let mut body = response.into_body();
                let mut buffer = String::new();
                while let Some(frame) = body.frame().await {
                    // A broken connection ends the stream: it is followed again.
                    let Ok(frame) = frame else { break };
                    let Ok(data) = frame.into_data() else { continue };
                    buffer.push_str(&String::from_utf8_lossy(&data));
                    while let Some(end) = buffer.find("\n\n") {
                        let message: String = buffer.drain(..end + 2).collect();
                        let (mut kind, mut seq, mut data) = ("message", None, String::new());
                        for line in message.lines() {
                            if let Some(v) = line.strip_prefix("event:") {
                                kind = if v.trim() == "event" { "event" } else if v.trim() == "error" { "error" } else { "other" };
                            } else if let Some(v) = line.strip_prefix("id:") {
                                seq = v.trim().parse::<i32>().ok();
                            } else if let Some(v) = line.strip_prefix("data:") {
                                data.push_str(v.strip_prefix(' ').unwrap_or(v));
                            }
                        }
                        match kind {
                            "event" => {
                                let event: Event = serde_json::from_str(&data).map_err(|e| CliError { code: exit::FAILED, message: format!("{} sent an event this client cannot read: {e}", self.name()) })?;
                                last = seq.or(last);
                                display.emit(&event);
                                if let Event::RunFinished { state, output, error, .. } = event {
                                    return Ok(Some(Followed { state, output: output.map(Arc::unwrap_or_clone), error }));
                                }
                            }
                            "error" => return Err(CliError { code: exit::FAILED, message: format!("following run {id}: {data}") }),
                            _ => {}
                        }
                    }
                }
                Ok(None)
            };
            let result = tokio::select! {
                result = attempt => result,
                _ = stop.cancelled() => return Ok(None),
            };
            match result {
                Ok(Some(followed)) => return Ok(Some(followed)),
                // The stream ended early, or the connection failed: again,
                // after the last event seen.
                Ok(None) => failures += 1,
                Err(e) if e.code == exit::FAILED && failures < 30 => {
                    tracing::warn!("{}; following again", e.message);
                    failures += 1;
                }
                Err(e) => return Err(e),
            }
            if failures >= 30 {
                return Err(CliError { code: exit::FAILED, message: format!("lost run {id}'s event stream from {} 30 times; `sandflow --server {} runs follow {id}` to try again", self.name(), self.name()) });
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.cancelled() => return Ok(None),
            }
        }
    }
}

/// A path segment or query value, percent-encoded.
pub(super) fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}
