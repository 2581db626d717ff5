//! The front door: `sandflow serve`'s API and `sandflow --server URL`, a
//! client with no database credentials, against `serve` and worker
//! processes on a real PostgreSQL server; and every bad request refused
//! with what to fix, nothing recorded.

use crate::distributed::Workers;
use crate::support::{PgSchema, compile_bomb, example, hostile, root, run, sandflow};
use crate::web::{Reaped, http, http_with_body, serve};
use serde_json::{Value, json};
use std::process::Command;
use std::time::{Duration, Instant};

const TOKEN: &str = "front-door-token";

/// `sandflow` as a remote client of the server at `addr`: a state dir of
/// its own, no store, the token.
fn client(state: &tempfile::TempDir, addr: &str) -> Command {
    let mut cmd = sandflow(state);
    cmd.env_remove("SANDFLOW_STORE").env_remove("SANDFLOW_TOKEN").args(["--server", &format!("http://{addr}"), "--token", TOKEN]);
    cmd
}

/// `serve` on the test's PostgreSQL schema, with a token and actions on.
fn front_door(schema: &PgSchema, state: &tempfile::TempDir, extra: &[&str]) -> (Reaped, String) {
    let mut args = vec!["--store", &schema.url, "--token", TOKEN, "--allow-actions"];
    args.extend_from_slice(extra);
    serve(state, &args)
}

fn bearer() -> String {
    format!("Authorization: Bearer {TOKEN}")
}

/// A JSON request with the token; returns the status and the body as JSON.
fn call(addr: &str, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let (status, _, text) = http_with_body(addr, method, path, &[&bearer(), "Content-Type: application/json"], body.to_string().as_bytes());
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Uploads `bytes`; returns the status.
fn upload(addr: &str, bytes: &[u8]) -> u16 {
    let path = format!("/api/files/{}", sha256(bytes));
    http_with_body(addr, "PUT", &path, &[&bearer(), "Content-Type: application/octet-stream"], bytes).0
}

fn sha256(bytes: &[u8]) -> String {
    sandflow::sandbox::sha256_hex(bytes)
}

fn show(cmd: &mut Command, id: &str) -> Value {
    let (code, out, err) = run(cmd.args(["--json", "runs", "show", id]));
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn a_client_with_no_database_runs_follows_lists_cancels_and_retries_through_serve() {
    let Some(schema) = PgSchema::create() else { return };
    let (server_state, client_state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_server, addr) = front_door(&schema, &server_state, &[]);
    let _workers = Workers::start(&schema, &server_state, 2, "5s");

    // `run`: checked here, files uploaded, run by the workers, followed
    // over the stream; the output and exit code are the run's.
    let (code, out, err) = run(client(&client_state, &addr).args(["run", "workflows/diamond.yaml", "--input", r#"{"text": " Hello World "}"#]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!({"text": "HELLO WORLD / hello world"}));
    assert!(err.contains("✓ join succeeded"), "the run's events are shown as they happen: {err}");
    assert!(!client_state.path().join("sandflow.db").exists(), "the client keeps no store");

    // `runs list`, `runs show` by a prefix, `runs logs`.
    let (code, out, err) = run(client(&client_state, &addr).args(["--json", "runs", "list"]));
    assert_eq!(code, 0, "{err}");
    let runs: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(runs.len(), 1, "{out}");
    let id = runs[0]["id"].as_str().unwrap().to_string();
    assert_eq!((runs[0]["workflow"].as_str(), runs[0]["status"].as_str(), runs[0]["succeeded_steps"].as_u64()), (Some("diamond"), Some("completed"), Some(4)));
    let record = show(&mut client(&client_state, &addr), &id[..13]);
    assert_eq!(record["id"], id.as_str());
    let states: Vec<&str> = record["steps"].as_array().unwrap().iter().map(|s| s["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["succeeded"; 4]);
    let (code, out, err) = run(client(&client_state, &addr).args(["runs", "show", &id]));
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("run {id} (completed, attempt 1)")), "{out}");
    // Following an ended run's logs prints them and returns.
    let (code, logs, err) = run(client(&client_state, &addr).args(["runs", "logs", &id]));
    assert_eq!(code, 0, "{err}");
    let (code, followed, err) = run(client(&client_state, &addr).args(["runs", "logs", &id, "--follow"]));
    assert_eq!((code, followed), (0, logs), "{err}");
    let (code, _, err) = run(client(&client_state, &addr).args(["runs", "logs", &id, "joni"]));
    assert_eq!(code, 2);
    assert!(err.contains("has no step `joni` that ran (did you mean `join`?)"), "{err}");

    // The same files again: the server has them, nothing is uploaded.
    let files: serde_json::Map<String, Value> = [
        ("workflows/diamond.yaml".to_string(), json!(sha256(&std::fs::read(root().join("workflows/diamond.yaml")).unwrap()))),
        ("workflows/../components/dist/text.wasm".to_string(), json!(sha256(&std::fs::read(example("text")).unwrap()))),
    ]
    .into_iter()
    .collect();
    let (status, body) = call(&addr, "POST", "/api/runs", &json!({ "workflow": "workflows/diamond.yaml", "files": files, "input": {"text": "again"} }));
    assert_eq!(status, 201, "{body}");
    let again = body["id"].as_str().unwrap().to_string();
    let (code, out, err) = run(client(&client_state, &addr).args(["runs", "follow", &again]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!({"text": "AGAIN / again"}));

    // `submit` a slow run, `cancel` it while its step runs, then `retry --detach` it.
    let flow = client_state.path().join("slow.yaml");
    let text = format!(
        "name: slow\ncomponents:\n  sleep: {{ path: '{}' }}\nsteps:\n  - {{ id: nap, component: sleep, input: {{ ms: 20000 }}, timeout: 60s }}\n",
        hostile("sleep").display()
    );
    std::fs::write(&flow, text).unwrap();
    let (code, out, err) = run(client(&client_state, &addr).arg("submit").arg(&flow));
    assert_eq!(code, 0, "{err}");
    let slow = out.trim().to_string();
    let started = Instant::now();
    while show(&mut client(&client_state, &addr), &slow)["steps"].as_array().is_none_or(|s| s.iter().all(|s| s["state"] != "running")) {
        assert!(started.elapsed() < Duration::from_secs(20), "the step never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, out, err) = run(client(&client_state, &addr).args(["cancel", &slow, "--wait", "10s"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains(&format!("run {slow} is cancelled")), "{err}");
    assert_eq!(show(&mut client(&client_state, &addr), &slow)["status"], "cancelled");
    let (code, out, err) = run(client(&client_state, &addr).args(["retry", &slow, "--detach"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), slow);
    assert!(err.contains("queued for workers (attempt 2)"), "{err}");
    let record = show(&mut client(&client_state, &addr), &slow);
    assert_eq!((record["status"].as_str(), record["attempt"].as_u64()), (Some("running"), Some(2)), "{record:#}");
    let (code, _, _) = run(client(&client_state, &addr).args(["cancel", &slow]));
    assert_eq!(code, 0);

    // `workers`: the server's two.
    let (code, out, err) = run(client(&client_state, &addr).args(["--json", "workers"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Vec<Value>>(&out).unwrap().len(), 2, "{out}");

    // A wrong token, no token, no server: said, with what to do.
    let (code, _, err) = run(sandflow(&client_state).args(["--server", &format!("http://{addr}"), "--token", "wrong", "runs", "list"]));
    assert_eq!(code, 2);
    assert!(err.contains("a token is required") && err.contains("the token given was refused"), "{err}");
    let (code, _, err) = run(sandflow(&client_state).env_remove("SANDFLOW_TOKEN").args(["--server", &format!("http://{addr}"), "runs", "list"]));
    assert_eq!(code, 2);
    assert!(err.contains("pass --token TOKEN or set SANDFLOW_TOKEN"), "{err}");
    let (code, _, err) = run(sandflow(&client_state).args(["--server", "http://127.0.0.1:9", "runs", "list"]));
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach the server http://127.0.0.1:9"), "{err}");
    // Secrets stay with the workers.
    let secrets = client_state.path().join("secrets.env");
    std::fs::write(&secrets, "API_KEY=x\n").unwrap();
    let (code, _, err) = run(client(&client_state, &addr).args(["run", "workflows/diamond.yaml", "--secrets-file"]).arg(&secrets));
    assert_eq!(code, 2);
    assert!(err.contains("the server's workers hold them"), "{err}");
}

/// Every bad request gets a 4xx that says what to fix, and leaves nothing
/// recorded: no run, and no file kept from a refused upload.
#[test]
fn the_front_door_refuses_bad_requests_with_what_to_fix_and_records_nothing() {
    let Some(schema) = PgSchema::create() else { return };
    let (server_state, client_state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_server, addr) = front_door(&schema, &server_state, &["--max-upload", "150KiB"]);
    let dir = client_state.path();

    // An oversize upload, through the CLI and by hand.
    let big = example("json");
    assert!(std::fs::metadata(&big).unwrap().len() > 150 * 1024);
    let flow = dir.join("big.yaml");
    std::fs::write(&flow, format!("name: big\nsteps:\n  - {{ id: a, component: '{}', input: {{}} }}\n", big.display())).unwrap();
    let (code, _, err) = run(client(&client_state, &addr).arg("run").arg(&flow));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("json.wasm") && err.contains("larger than this server takes (153600 bytes at most)"), "{err}");
    assert_eq!(upload(&addr, &std::fs::read(&big).unwrap()), 413);

    // An upload whose bytes are not its address.
    let (status, _, body) = http_with_body(&addr, "PUT", &format!("/api/files/{}", "0".repeat(64)), &[&bearer(), "Content-Type: application/octet-stream"], b"hello");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not 0000"), "{body}");

    // A run naming files the server lacks: which to upload.
    let yaml = "name: t\nsteps:\n  - { id: a, component: c.wasm, input: {} }\n";
    let wasm = b"\0asm\x0d\0\x01\0 not really a component".to_vec();
    let files = json!({ "t/flow.yaml": sha256(yaml.as_bytes()), "t/c.wasm": sha256(&wasm) });
    let (status, body) = call(&addr, "POST", "/api/runs", &json!({ "workflow": "t/flow.yaml", "files": files }));
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["missing"].as_array().unwrap().len(), 2, "{body}");
    assert!(body["error"].as_str().unwrap().contains("PUT /api/files/{sha256}"), "{body}");

    // A component that is not a component: its place and why.
    assert_eq!(upload(&addr, yaml.as_bytes()), 201);
    assert_eq!(upload(&addr, yaml.as_bytes()), 200, "an upload of a file the server has is idempotent");
    assert_eq!(upload(&addr, &wasm), 201);
    let (status, body) = call(&addr, "POST", "/api/runs", &json!({ "workflow": "t/flow.yaml", "files": files }));
    assert_eq!(status, 422, "{body}");
    let problem = &body["problems"][0];
    assert_eq!((problem["file"].as_str(), problem["line"].as_u64()), (Some("t/flow.yaml"), Some(3)), "{body}");
    assert!(problem["message"].as_str().unwrap().contains("not a valid WebAssembly component"), "{body}");

    // A workflow with errors: each at its line and column.
    let broken = "name: t\nsteps:\n  - { id: a, component: /builtin/eval, input: { x: '{{ steps.nope.output }}' } }\n";
    assert_eq!(upload(&addr, broken.as_bytes()), 201);
    let (status, body) = call(&addr, "POST", "/api/runs", &json!({ "workflow": "w.yaml", "files": { "w.yaml": sha256(broken.as_bytes()) } }));
    assert_eq!(status, 422, "{body}");
    assert!(body["problems"][0]["text"].as_str().unwrap().starts_with("w.yaml:3:"), "{body}");
    assert!(body["error"].as_str().unwrap().contains("nothing was submitted"), "{body}");

    // A run that would read the workers' files.
    let reads = "name: t\nsteps:\n  - { id: peek, component: /builtin/load_file, input: { path: /etc/passwd } }\n";
    assert_eq!(upload(&addr, reads.as_bytes()), 201);
    let (status, body) = call(&addr, "POST", "/api/runs", &json!({ "workflow": "r.yaml", "files": { "r.yaml": sha256(reads.as_bytes()) } }));
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].as_str().unwrap().contains("may not read the workers' machines: r.yaml:3:"), "{body}");
    assert!(body["error"].as_str().unwrap().contains("--allow-host-access"), "{body}");

    // Wrong input, an unknown target, a body that is not the route's.
    let eval = "name: t\ninput_schema: { type: object, required: [n] }\nsteps:\n  - { id: a, component: /builtin/eval, input: { x: '{{ inputs.n }}' } }\n";
    assert_eq!(upload(&addr, eval.as_bytes()), 201);
    let files = json!({ "e.yaml": sha256(eval.as_bytes()) });
    let (status, body) = call(&addr, "POST", "/api/runs", &json!({ "workflow": "e.yaml", "files": files, "input": {} }));
    assert_eq!(status, 422, "{body}");
    let (status, body) = call(&addr, "POST", "/api/runs", &json!({ "workflow": "e.yaml", "files": files, "input": {"n": 1}, "targets": ["b"] }));
    assert_eq!(status, 422, "{body}");
    let (status, body) = call(&addr, "POST", "/api/runs", &json!({ "workflow": "e.yaml", "files": files, "inputs": {"n": 1} }));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("unknown field `inputs`"), "{body}");
    let (status, body) = call(&addr, "POST", "/api/runs", &json!({ "workflow": "missing.yaml", "files": files }));
    assert_eq!(status, 400, "{body}");

    // A body type a form could send: refused before anything is read.
    let (status, _, body) = http_with_body(&addr, "POST", "/api/runs", &[&bearer(), "Content-Type: text/plain"], b"{}");
    assert_eq!(status, 403, "{body}");

    // Nothing was recorded.
    let (code, out, err) = run(client(&client_state, &addr).args(["--json", "runs", "list"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "[]");
    assert!(schema.strings("SELECT sha256 FROM files WHERE sha256 = $1", &sha256(&std::fs::read(&big).unwrap())).is_empty());

    // The good run goes through.
    let (status, body) = call(&addr, "POST", "/api/runs", &json!({ "workflow": "e.yaml", "files": files, "input": {"n": 1} }));
    assert_eq!(status, 201, "{body}");
}

/// A server on SQLite has no workers: it reads, and says why it takes no runs.
#[test]
fn a_sqlite_server_says_why_it_takes_no_runs() {
    let state = tempfile::tempdir().unwrap();
    let (_server, addr) = serve(&state, &["--allow-actions"]);
    let (status, _, body) = http_with_body(&addr, "POST", "/api/runs", &["Content-Type: application/json"], br#"{"workflow": "a.yaml", "files": {}}"#);
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("submitting needs workers"), "{body}");
    let (code, _, err) = run(sandflow(&state).args(["--server", &format!("http://{addr}"), "run", "workflows/diamond.yaml", "--input", r#"{"text": "x"}"#]));
    assert_eq!(code, 2);
    assert!(err.contains("submitting needs workers"), "{err}");
}

/// `docs/openapi.json` is what the server serves, and every route it
/// documents exists (answers something other than the router's own 404
/// or 405).
#[test]
fn the_openapi_document_is_served_and_every_route_it_documents_exists() {
    let state = tempfile::tempdir().unwrap();
    let (_server, addr) = serve(&state, &["--allow-actions"]);
    let (status, served) = http(&addr, "GET", "/api/openapi.json", &[]);
    assert_eq!(status, 200);
    let committed = std::fs::read_to_string(root().join("docs/openapi.json")).unwrap();
    assert_eq!(served, committed);
    let doc: Value = serde_json::from_str(&committed).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 12, "{paths:?}");
    for (path, operations) in paths {
        let concrete = path.replace("{id}", "0000").replace("{sha256}", &"0".repeat(64));
        for method in operations.as_object().unwrap().keys() {
            let method = method.to_ascii_uppercase();
            let (status, _, body) = http_with_body(&addr, &method, &concrete, &["Content-Type: application/json"], b"{}");
            assert_ne!(status, 405, "{method} {path}: {body}");
            assert!(status != 404 || body.contains("\"error\""), "{method} {path} is documented but not routed: {status} {body}");
        }
    }
}

/// A component built to be slow, or huge, to compile passes every check
/// made without compiling it, so it reaches a worker: the worker compiles
/// it in a process of its own under its limits, the run fails saying
/// which limit, and the worker goes on with other runs.
#[test]
fn a_component_slow_or_huge_to_compile_fails_its_run_and_the_worker_goes_on() {
    let Some(schema) = PgSchema::create() else { return };
    let (server_state, client_state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_server, addr) = front_door(&schema, &server_state, &[]);
    let dir = client_state.path();
    // (limits of the worker, the bomb, what the run's error says)
    let cases: [(&[&'static str], (u32, u32), &str); 2] = [
        (&["--compile-time", "1s"], (1, 60_000), "compiling it took longer than 1s (the limit this worker sets: --compile-time)"),
        (&["--compile-memory", "200MiB"], (1, 120_000), "compiling it needed more than 200MiB of memory (the limit this worker sets: --compile-memory)"),
    ];
    // The diamond's component, compiled once by a worker without limits:
    // the limited workers find it in the state dir's cache (on a loaded
    // machine compiling it could take longer than the 1s limit itself).
    {
        let _warm = Workers::start(&schema, &server_state, 1, "5s");
        let (code, _, err) = run(client(&client_state, &addr).args(["run", "workflows/diamond.yaml", "--input", r#"{"text": "warm"}"#]));
        assert_eq!(code, 0, "{err}");
    }
    for (limits, (functions, ops), said) in cases {
        let workers = Workers::with_args(&schema, &server_state, 1, "5s", &[], limits);
        let bomb = dir.join(format!("bomb-{ops}.wasm"));
        std::fs::write(&bomb, compile_bomb(functions, ops)).unwrap();
        let flow = dir.join(format!("bomb-{ops}.yaml"));
        std::fs::write(&flow, format!("name: bomb\nsteps:\n  - {{ id: boom, component: '{}', input: {{}} }}\n", bomb.display())).unwrap();
        let started = Instant::now();
        let (code, _, err) = run(client(&client_state, &addr).arg("run").arg(&flow));
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(said), "{err}");
        assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
        // The same worker runs the next run.
        let (code, out, err) = run(client(&client_state, &addr).args(["run", "workflows/diamond.yaml", "--input", r#"{"text": "go on"}"#]));
        assert_eq!(code, 0, "{err}");
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!({"text": "GO ON / go on"}));
        drop(workers);
    }
}

/// The samples of a Prometheus text page, parsed by an independent parser:
/// (name, labels sorted as `k=v,…`) → value.
fn scrape(text: &str) -> std::collections::BTreeMap<(String, String), f64> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text parses");
    let mut samples = std::collections::BTreeMap::new();
    for s in scrape.samples {
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let value = match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(buckets) => {
                for b in buckets {
                    samples.insert((format!("{}_bucket", s.metric), format!("le={}", b.less_than)), b.count);
                }
                continue;
            }
            prometheus_parse::Value::Summary(_) => continue,
        };
        samples.insert((s.metric, labels.join(",")), value);
    }
    samples
}

/// `/metrics` of `serve` (the store) and of a worker (what it ran) are
/// Prometheus text with the numbers of what happened; `/healthz` and
/// `/readyz` answer without a token, and `/readyz` says when the store's
/// schema is not this sandflow's.
#[test]
fn metrics_count_what_happened_and_readyz_tells_the_store() {
    let Some(schema) = PgSchema::create() else { return };
    let (server_state, client_state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_server, addr) = front_door(&schema, &server_state, &[]);
    let mut worker = Reaped(
        sandflow(&server_state)
            .args(["--store", &schema.url, "worker", "--concurrency", "2", "--name", "w1", "--metrics", "127.0.0.1:0"])
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    let mut stderr = std::io::BufReader::new(worker.0.stderr.take().unwrap());
    std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let worker_addr = line.trim().rsplit("http://").next().unwrap().trim_end_matches("/metrics").to_string();
    assert!(worker_addr.starts_with("127.0.0.1:"), "{line}");

    let (code, _, err) = run(client(&client_state, &addr).args(["run", "workflows/diamond.yaml", "--input", r#"{"text": "m"}"#]));
    assert_eq!(code, 0, "{err}");
    let flow = client_state.path().join("fatal.yaml");
    std::fs::write(&flow, format!("name: fatal\nsteps:\n  - {{ id: f, component: '{}', input: {{}} }}\n", hostile("fatal").display())).unwrap();
    let (code, _, err) = run(client(&client_state, &addr).arg("run").arg(&flow));
    assert_eq!(code, 1, "{err}");

    let (status, _, text) = http_with_body(&addr, "GET", "/metrics", &[&bearer()], b"");
    assert_eq!(status, 200, "{text}");
    let m = scrape(&text);
    let at = |name: &str, labels: &str| m.get(&(name.to_string(), labels.to_string())).copied().unwrap_or_else(|| panic!("no {name}{{{labels}}} in\n{text}"));
    assert_eq!(at("sandflow_runs", "state=completed"), 1.0);
    assert_eq!(at("sandflow_runs", "state=failed"), 1.0);
    assert_eq!(at("sandflow_steps", "state=succeeded"), 4.0);
    assert_eq!(at("sandflow_steps", "state=failed"), 1.0);
    assert_eq!(at("sandflow_step_failures", "kind=component"), 1.0);
    assert_eq!(at("sandflow_step_duration_seconds_count", ""), 5.0);
    assert_eq!(at("sandflow_step_duration_seconds_bucket", "le=inf"), 5.0);
    assert_eq!(at("sandflow_queue_depth", ""), 0.0);
    assert_eq!(at("sandflow_workers", "state=alive"), 1.0);
    assert_eq!(at("sandflow_worker_slots", "worker=w1"), 2.0);
    let (status, _) = http(&addr, "GET", "/metrics", &[]);
    assert_eq!(status, 401, "metrics need the token");

    let (status, _, text) = http_with_body(&worker_addr, "GET", "/metrics", &[], b"");
    assert_eq!(status, 200, "{text}");
    let w = scrape(&text);
    let at = |name: &str, labels: &str| w.get(&(name.to_string(), labels.to_string())).copied().unwrap_or_else(|| panic!("no {name}{{{labels}}} in\n{text}"));
    assert_eq!(at("sandflow_worker_attempts_total", "outcome=succeeded,worker=w1"), 4.0);
    assert_eq!(at("sandflow_worker_attempts_total", "outcome=failed,worker=w1"), 1.0);
    assert_eq!(at("sandflow_worker_failures_total", "kind=component,worker=w1"), 1.0);
    assert_eq!(at("sandflow_worker_attempt_duration_seconds_count", "worker=w1"), 5.0);
    assert_eq!(at("sandflow_worker_slots", "worker=w1"), 2.0);
    assert_eq!(at("sandflow_worker_running", "worker=w1"), 0.0);

    // Probes need no token; readiness follows the store's schema.
    assert_eq!(http(&addr, "GET", "/healthz", &[]).0, 200);
    let (status, body) = http(&addr, "GET", "/readyz", &[]);
    assert_eq!((status, body.as_str()), (200, r#"{"ready":true}"#));
    let version = schema.strings("SELECT CAST(version AS TEXT) FROM sandflow_schema WHERE $1 <> ''", "x")[0].clone();
    schema.strings("UPDATE sandflow_schema SET version = 999 WHERE $1 <> '' RETURNING ''", "x");
    let (status, body) = http(&addr, "GET", "/readyz", &[]);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(&format!("the run store's schema is version 999; this sandflow writes version {version}")), "{body}");
    assert!(!body.contains("postgres://"), "a probe without a token learns nothing of the store: {body}");
    schema.strings(&format!("UPDATE sandflow_schema SET version = {version} WHERE $1 <> '' RETURNING ''"), "x");
    assert_eq!(http(&addr, "GET", "/readyz", &[]).0, 200);
}

/// `/readyz` goes unready while PostgreSQL is stopped, and ready again
/// when it is back. (Stops the server: run alone, with --ignored.)
#[test]
#[ignore = "stops the PostgreSQL server; run alone with --ignored"]
fn readyz_follows_the_postgres_server() {
    let Some(schema) = PgSchema::create() else { return };
    let state = tempfile::tempdir().unwrap();
    let (_server, addr) = front_door(&schema, &state, &[]);
    assert_eq!(http(&addr, "GET", "/readyz", &[]).0, 200);
    /// Starts the server again however the test ends.
    struct Restart;
    impl Drop for Restart {
        fn drop(&mut self) {
            crate::distributed::postgres_ctl("start", None);
        }
    }
    let restart = Restart;
    crate::distributed::postgres_ctl("stop", None);
    let (status, body) = http(&addr, "GET", "/readyz", &[]);
    drop(restart);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("the run store does not answer"), "{body}");
    let started = Instant::now();
    while http(&addr, "GET", "/readyz", &[]).0 != 200 {
        assert!(started.elapsed() < Duration::from_secs(30), "not ready again");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `sandflow token create` against the store; returns the token.
fn make_token(schema: &PgSchema, state: &tempfile::TempDir, name: &str, namespaces: &str, role: &str) -> String {
    let (code, out, err) = run(sandflow(state).args(["--store", &schema.url, "token", "create", name, "--namespace", namespaces, "--role", role]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("not shown again"), "{err}");
    out.trim().to_string()
}

/// `sandflow --server … --token TOKEN`.
fn as_token(state: &tempfile::TempDir, addr: &str, token: &str) -> Command {
    let mut cmd = sandflow(state);
    cmd.env_remove("SANDFLOW_STORE").env_remove("SANDFLOW_TOKEN").args(["--server", &format!("http://{addr}"), "--token", token]);
    cmd
}

/// A request with `token`.
fn call_as(addr: &str, token: &str, method: &str, path: &str, body: &Value) -> (u16, String) {
    let auth = format!("Authorization: Bearer {token}");
    let (status, _, text) = http_with_body(addr, method, path, &[&auth, "Content-Type: application/json"], body.to_string().as_bytes());
    (status, text)
}

/// Tokens scoped to namespaces and roles: a token sees and touches only
/// its namespaces' runs (another's are 404, as if they did not exist,
/// never 403: ids do not leak, not even through a shared prefix), its
/// role bounds what it may do, a namespace cannot learn another's files,
/// and a revoked token is refused at once.
#[test]
fn a_token_sees_and_touches_only_the_runs_of_its_namespaces() {
    let Some(schema) = PgSchema::create() else { return };
    let (server_state, client_state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_server, addr) = front_door(&schema, &server_state, &[]);
    let _workers = Workers::start(&schema, &server_state, 1, "5s");
    let a = make_token(&schema, &server_state, "team-a-ci", "team-a", "submitter");
    let b = make_token(&schema, &server_state, "team-b-ci", "team-b", "submitter");
    let a_viewer = make_token(&schema, &server_state, "team-a-dash", "team-a", "viewer");

    let (code, _, err) = run(as_token(&client_state, &addr, &a).args(["run", "workflows/diamond.yaml", "--input", r#"{"text": "a"}"#]));
    assert_eq!(code, 0, "{err}");
    let flow = client_state.path().join("slow.yaml");
    std::fs::write(&flow, format!("name: slow\ncomponents:\n  sleep: {{ path: '{}' }}\nsteps:\n  - {{ id: nap, component: sleep, input: {{ ms: 20000 }}, timeout: 60s }}\n", hostile("sleep").display())).unwrap();
    let (code, out, err) = run(as_token(&client_state, &addr, &b).arg("submit").arg(&flow));
    assert_eq!(code, 0, "{err}");
    let theirs = out.trim().to_string();

    // A lists only its run; the admin lists both.
    let (code, out, err) = run(as_token(&client_state, &addr, &a).args(["--json", "runs", "list"]));
    assert_eq!(code, 0, "{err}");
    let runs: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(runs.len(), 1, "{out}");
    assert_eq!(runs[0]["namespace"], "team-a");
    let mine = runs[0]["id"].as_str().unwrap().to_string();
    let (_, out, _) = run(client(&client_state, &addr).args(["--json", "runs", "list"]));
    assert_eq!(serde_json::from_str::<Vec<Value>>(&out).unwrap().len(), 2, "{out}");
    let (code, out, err) = run(client(&client_state, &addr).args(["runs", "list", "--namespace", "team-b"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().next().unwrap().contains("NAMESPACE") && out.contains(&theirs) && !out.contains(&mine), "{out}");
    assert!(out.lines().nth(1).unwrap().contains(" team-b "), "{out}");
    let (_, body) = call_as(&addr, &a, "GET", "/api/runs?namespace=team-b", &json!({}));
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["runs"], json!([]), "{body}");

    // Every way to reach B's run, with A's token: 404, as an unknown run.
    for (method, path) in [
        ("GET", format!("/api/runs/{theirs}")),
        ("GET", format!("/api/runs/{theirs}/logs")),
        ("GET", format!("/api/runs/{theirs}/attempts")),
        ("GET", format!("/api/runs/{theirs}/graph.svg")),
        ("GET", format!("/api/runs/{theirs}/events")),
        ("GET", format!("/api/runs/{theirs}/stream")),
        ("POST", format!("/api/runs/{theirs}/cancel")),
        ("POST", format!("/api/runs/{theirs}/retry")),
        ("POST", format!("/api/runs/{theirs}/resume")),
    ] {
        let (status, body) = call_as(&addr, &a, method, &path, &json!({}));
        assert_eq!(status, 404, "{method} {path}: {body}");
        assert!(body.contains(&format!("no run with id `{theirs}`")), "{method} {path}: {body}");
    }
    for args in [vec!["runs", "show", &theirs], vec!["runs", "logs", &theirs], vec!["runs", "follow", &theirs], vec!["cancel", &theirs], vec!["retry", &theirs]] {
        let (code, _, err) = run(as_token(&client_state, &addr, &a).args(&args));
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("no run with id"), "{args:?}: {err}");
    }
    // The start both ids share names A's run alone, to A.
    let shared: String = mine.chars().zip(theirs.chars()).take_while(|(x, y)| x == y).map(|(x, _)| x).collect();
    assert!(shared.len() >= 6, "{mine} {theirs}");
    let (code, out, err) = run(as_token(&client_state, &addr, &a).args(["--json", "runs", "show", &shared]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["id"], mine.as_str());

    // Roles: a viewer reads but does not act.
    let (code, _, err) = run(as_token(&client_state, &addr, &a_viewer).args(["runs", "show", &mine]));
    assert_eq!(code, 0, "{err}");
    for action in ["retry", "resume", "cancel"] {
        let (status, body) = call_as(&addr, &a_viewer, "POST", &format!("/api/runs/{mine}/{action}"), &json!({}));
        assert_eq!(status, 403, "{action}: {body}");
        assert!(body.contains("token `team-a-dash` has the role viewer: this needs the role operator"), "{action}: {body}");
    }
    let (code, _, err) = run(as_token(&client_state, &addr, &a_viewer).args(["run", "workflows/diamond.yaml", "--input", r#"{"text": "v"}"#]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("this needs the role submitter"), "{err}");
    // The admin's metrics are not a team's.
    assert_eq!(call_as(&addr, &a, "GET", "/metrics", &json!({})).0, 403);

    // A namespace cannot learn another's files: B's sleep component is
    // missing to A (though the server holds its bytes in memory since B's
    // submit read them: it asks the store whether A has it every time),
    // and A cannot submit into B's namespace.
    let sleep = std::fs::read(hostile("sleep")).unwrap();
    let files = json!({ "s.wasm": sha256(&sleep) });
    let (status, body) = call_as(&addr, &a, "POST", "/api/runs", &json!({ "workflow": "s.wasm", "files": files }));
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("\"missing\""), "{body}");
    let (status, body) = call_as(&addr, &a, "POST", "/api/runs", &json!({ "workflow": "s.wasm", "files": files, "namespace": "team-b" }));
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("token `team-a-ci` has no namespace `team-b`"), "{body}");

    // B cancels its own; a revoked token is refused at once.
    let (code, _, err) = run(as_token(&client_state, &addr, &b).args(["cancel", &theirs]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(sandflow(&server_state).args(["--store", &schema.url, "token", "revoke", "team-a-ci"]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(as_token(&client_state, &addr, &a).args(["runs", "list"]));
    assert_eq!(code, 2);
    assert!(err.contains("token `team-a-ci` was revoked"), "{err}");
    let (code, out, err) = run(sandflow(&server_state).args(["--store", &schema.url, "--json", "token", "list"]));
    assert_eq!(code, 0, "{err}");
    let tokens: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(tokens.len(), 3);
    assert!(tokens.iter().any(|t| t["name"] == "team-a-ci" && t["revoked_at"].is_string()), "{out}");
    assert!(!out.contains(&a) && !out.contains(&b), "tokens are never shown again");
    // No token at all, now that tokens exist: refused.
    assert_eq!(http(&addr, "GET", "/api/runs", &[]).0, 401);

    // The audit log: who did what, done or refused; a team sees its own.
    let (status, body) = call_as(&addr, TOKEN, "GET", "/api/audit", &json!({}));
    assert_eq!(status, 200, "{body}");
    let entries = serde_json::from_str::<Value>(&body).unwrap()["entries"].as_array().unwrap().clone();
    let has = |action: &str, token: &str, namespace: Value, run: &str, outcome: &str| {
        entries.iter().any(|e| e["action"] == action && e["token"] == token && e["namespace"] == namespace && e["run_id"] == run && e["outcome"] == outcome)
    };
    assert!(has("submit", "team-a-ci", json!("team-a"), &mine, "done"), "{body}");
    assert!(has("submit", "team-b-ci", json!("team-b"), &theirs, "done"), "{body}");
    assert!(has("retry", "team-a-dash", json!("team-a"), &mine, "refused (403)"), "{body}");
    assert!(has("cancel", "team-b-ci", json!("team-b"), &theirs, "done"), "{body}");
    assert!(has("cancel", "team-a-ci", Value::Null, &theirs, "refused (404)"), "a probe of another namespace's run is noted, for the admin: {body}");
    assert!(entries.iter().any(|e| e["action"] == "token revoke" && e["token"].as_str().unwrap().starts_with("cli:") && e["detail"] == "team-a-ci"), "{body}");
    assert!(entries.iter().any(|e| e["action"] == "upload" && e["namespace"] == "team-a"), "{body}");
    let (_, body) = call_as(&addr, &b, "GET", "/api/audit", &json!({}));
    let theirs_only = serde_json::from_str::<Value>(&body).unwrap()["entries"].as_array().unwrap().clone();
    assert!(!theirs_only.is_empty() && theirs_only.iter().all(|e| e["namespace"] == "team-b"), "{body}");
    if let Some(chromium) = crate::web::chromium() {
        let page = crate::web::dom(&chromium, &format!("http://{addr}/audit?token={TOKEN}"));
        assert!(page.contains(r#"data-action="submit" data-outcome="done""#), "{page}");
        assert!(page.contains(r#"data-action="retry" data-outcome="refused""#), "{page}");
        assert!(page.contains("team-a-dash"), "{page}");
        let page = crate::web::dom(&chromium, &format!("http://{addr}/?namespace=team-a&token={TOKEN}"));
        assert!(page.contains(&format!(r#"data-run="{mine}""#)) && !page.contains(&format!(r#"data-run="{theirs}""#)), "{page}");
        assert!(page.contains(r#"<td class="namespace">team-a</td>"#), "{page}");
    }
}

/// A worker holds each namespace's secrets (`--secrets-dir`): a step gets
/// the secrets of its run's namespace, and a run of a namespace the worker
/// has none for fails saying where they would come from.
#[test]
fn a_step_gets_the_secrets_of_its_run_s_namespace_and_no_other() {
    let Some(schema) = PgSchema::create() else { return };
    let (server_state, client_state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_server, addr) = front_door(&schema, &server_state, &[]);
    let dir = server_state.path().join("secrets");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("team-a.env"), "GREETING=aaaa\n").unwrap();
    std::fs::write(dir.join("team-b.env"), "# team b's\nGREETING=bbbbbbbb\n").unwrap();
    let dir: &'static str = Box::leak(dir.display().to_string().into_boxed_str());
    let _workers = Workers::with_args(&schema, &server_state, 1, "5s", &[], &["--secrets-dir", dir]);
    let a = make_token(&schema, &server_state, "a", "team-a", "submitter");
    let b = make_token(&schema, &server_state, "b", "team-b", "submitter");
    for (token, chars) in [(&a, 11), (&b, 15)] {
        let (code, out, err) = run(as_token(&client_state, &addr, token).args(["run", "workflows/secrets.yaml"]));
        assert_eq!(code, 0, "{err}");
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!({ "signed": "***, world", "chars": chars }), "{err}");
    }
    let (code, _, err) = run(client(&client_state, &addr).args(["run", "workflows/secrets.yaml", "--namespace", "team-c"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("runs of namespace `team-c` get the secrets of team-c.env in the worker's --secrets-dir"), "{err}");
}

/// A namespace's limits (`sandflow namespace set`): a submit past its runs
/// in flight, or an upload past its bytes kept, is refused with 429 saying
/// which limit, and nothing of it is recorded; other namespaces go on.
#[test]
fn a_namespace_over_its_limits_is_refused_and_nothing_is_recorded() {
    let Some(schema) = PgSchema::create() else { return };
    let (server_state, client_state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_server, addr) = front_door(&schema, &server_state, &[]);
    let (code, _, err) = run(sandflow(&server_state).args(["--store", &schema.url, "namespace", "set", "team-a", "--max-runs", "1", "--max-stored", "300KiB"]));
    assert_eq!(code, 0, "{err}");
    let a = make_token(&schema, &server_state, "a", "team-a", "submitter");
    // No workers: a submitted run stays in flight.
    let (code, _, err) = run(as_token(&client_state, &addr, &a).args(["submit", "workflows/diamond.yaml", "--input", r#"{"text": "1"}"#]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(as_token(&client_state, &addr, &a).args(["submit", "workflows/diamond.yaml", "--input", r#"{"text": "2"}"#]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("namespace `team-a` has 1 run(s) in flight, its limit"), "{err}");
    let (status, body) = call_as(&addr, &a, "POST", "/api/runs", &json!({ "workflow": "w.yaml", "files": {} }));
    assert_ne!(status, 429, "a malformed submit is told what is wrong with it first: {body}");
    // Bytes kept: text.wasm (216 KiB) is kept; json.wasm (172 KiB) more is over 300 KiB.
    let json_wasm = std::fs::read(example("json")).unwrap();
    let (status, _, body) = http_with_body(&addr, "PUT", &format!("/api/files/{}", sha256(&json_wasm)), &[&format!("Authorization: Bearer {a}"), "Content-Type: application/octet-stream"], &json_wasm);
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("namespace `team-a` keeps") && body.contains("over its limit of 300KiB"), "{body}");
    assert!(schema.strings("SELECT sha256 FROM namespace_files WHERE sha256 = $1", &sha256(&json_wasm)).is_empty(), "nothing of a refused upload is kept");
    // Nothing of the refused run either; another namespace is not limited.
    let (_, out, _) = run(client(&client_state, &addr).args(["--json", "runs", "list"]));
    assert_eq!(serde_json::from_str::<Vec<Value>>(&out).unwrap().len(), 1, "{out}");
    let (code, _, err) = run(client(&client_state, &addr).args(["submit", "workflows/diamond.yaml", "--input", r#"{"text": "3"}"#]));
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(sandflow(&server_state).args(["--store", &schema.url, "--json", "namespace", "list"]));
    assert_eq!(code, 0, "{err}");
    let namespaces: Vec<Value> = serde_json::from_str(&out).unwrap();
    let team_a = namespaces.iter().find(|n| n["name"] == "team-a").unwrap();
    assert_eq!((team_a["running"].as_u64(), team_a["max_runs"].as_u64(), team_a["max_stored"].as_u64()), (Some(1), Some(1), Some(300 * 1024)), "{out}");
    assert!(team_a["stored"].as_u64().unwrap() > 200 * 1024, "{out}");
    assert!(namespaces.iter().any(|n| n["name"] == "default" && n["running"] == 1 && n["max_runs"].is_null()), "{out}");
}

/// Fair shares between namespaces: with 200 runs of team A queued ahead
/// of it, team B's one run does not wait behind them: workers take a
/// namespace's ready steps in turn, by how many each namespace holds
/// running, so B's step goes at the first free slot. Counted by events,
/// not by the clock: when B's run ended, only the A runs that were already
/// running (or a few more) had ended. The times are printed (BENCHMARKS.md).
#[test]
fn a_flood_of_one_namespace_does_not_starve_another_s_run() {
    let Some(schema) = PgSchema::create() else { return };
    let (server_state, client_state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_server, addr) = front_door(&schema, &server_state, &[]);
    let a = make_token(&schema, &server_state, "a", "team-a", "submitter");
    let b = make_token(&schema, &server_state, "b", "team-b", "submitter");
    let flow = "name: nap\ncomponents:\n  sleep: { path: sleep.wasm }\nsteps:\n  - { id: nap, component: sleep, input: { ms: 50 } }\n".to_string();
    let sleep = std::fs::read(hostile("sleep")).unwrap();
    let files = json!({ "nap.yaml": sha256(flow.as_bytes()), "sleep.wasm": sha256(&sleep) });
    for token in [&a, &b] {
        for bytes in [flow.as_bytes(), &sleep[..]] {
            let auth = format!("Authorization: Bearer {token}");
            let (status, _, body) = http_with_body(&addr, "PUT", &format!("/api/files/{}", sha256(bytes)), &[&auth, "Content-Type: application/octet-stream"], bytes);
            assert!(status == 201 || status == 200, "{body}");
        }
    }
    let submit = |token: &str| {
        let (status, body) = call_as(&addr, token, "POST", "/api/runs", &json!({ "workflow": "nap.yaml", "files": files }));
        assert_eq!(status, 201, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()["id"].as_str().unwrap().to_string()
    };
    for _ in 0..200 {
        submit(&a);
    }
    let submitted = Instant::now();
    let theirs = submit(&b);
    // Two workers of two slots: 200 runs of 50 ms take about 2.5 s.
    let _workers = Workers::start(&schema, &server_state, 2, "5s");
    let (code, _, err) = run(as_token(&client_state, &addr, &b).args(["runs", "follow", &theirs]));
    assert_eq!(code, 0, "{err}");
    let waited = submitted.elapsed();
    let ended_before = |id: &str| -> i64 {
        schema.strings(
            "SELECT CAST(count(*) AS TEXT) FROM runs WHERE namespace = 'team-a' AND status = 'completed' AND finished_at <= (SELECT finished_at FROM runs WHERE id = $1)",
            id,
        )[0]
        .parse()
        .unwrap()
    };
    let a_done = ended_before(&theirs);
    eprintln!("fair share: team-b's run ended {waited:?} after its submit, when {a_done} of team-a's 200 runs had ended");
    assert!(a_done <= 8, "team-b's run waited behind {a_done} of team-a's runs");
}

/// Schedules through the front door: a submitter of team-a registers the
/// nightly example with `--server` (no database credentials; its files
/// uploaded as a submit's), lists it; a viewer cannot pause it, an
/// operator can; team-b's token neither sees it nor reaches it (404); the
/// audit log keeps each action.
#[test]
fn schedules_are_managed_through_the_front_door_within_a_token_s_rights() {
    let Some(schema) = PgSchema::create() else { return };
    let (server_state, client_state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_server, addr) = front_door(&schema, &server_state, &["--no-scheduler"]);
    let submitter = make_token(&schema, &server_state, "a-ci", "team-a", "submitter");
    let viewer = make_token(&schema, &server_state, "a-view", "team-a", "viewer");
    let operator = make_token(&schema, &server_state, "a-ops", "team-a", "operator");
    let other = make_token(&schema, &server_state, "b-ci", "team-b", "submitter");
    let (code, _, err) = run(as_token(&client_state, &addr, &submitter).current_dir(root()).args(["schedule", "add", "workflows/nightly.yaml"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("schedule nightly/report: `30 2 * * *` (Europe/Berlin), next at "), "{err}");
    let listed = |token: &str| {
        let (code, out, err) = run(as_token(&client_state, &addr, token).args(["--json", "schedule", "list"]));
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<Value>(&out).unwrap()
    };
    let seen = listed(&viewer);
    assert_eq!((seen["schedules"][0]["name"].as_str(), seen["schedules"][0]["namespace"].as_str()), (Some("nightly/report"), Some("team-a")), "{seen}");
    assert_eq!(listed(&other)["schedules"], json!([]), "team-b sees none of team-a's");
    let (status, body) = call_as(&addr, &other, "GET", "/api/schedules?namespace=team-a", &json!(null));
    assert_eq!(status, 404, "team-b may not name team-a: {body}");
    let (code, out, err) = run(as_token(&client_state, &addr, TOKEN).args(["--json", "schedule", "list", "--namespace", "team-b"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["schedules"], json!([]), "the admin asks for team-b's only: {out}");
    let (code, _, err) = run(as_token(&client_state, &addr, &viewer).args(["schedule", "pause", "nightly/report"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("viewer"), "{err}");
    let (code, _, err) = run(as_token(&client_state, &addr, &other).args(["schedule", "pause", "nightly/report"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no schedule `nightly/report` in namespace `team-b`"), "{err}");
    let (code, _, err) = run(as_token(&client_state, &addr, &operator).args(["schedule", "pause", "nightly/report"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(listed(&viewer)["schedules"][0]["paused"], true);
    let (code, _, err) = run(as_token(&client_state, &addr, &operator).args(["schedule", "remove", "nightly/report"]));
    assert_eq!(code, 2, "an operator may not remove: {err}");
    let (code, _, err) = run(as_token(&client_state, &addr, &submitter).args(["schedule", "remove", "nightly/report"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(listed(&viewer)["schedules"], json!([]));
    let actions = schema.strings("SELECT action || ' ' || outcome || ' ' || token FROM audit WHERE namespace = $1 ORDER BY seq", "team-a");
    for want in ["schedule add done a-ci", "schedule pause done a-ops", "schedule remove refused (403) a-ops", "schedule remove done a-ci"] {
        assert!(actions.iter().any(|a| a == want), "{want}: {actions:?}");
    }
}

/// An approval on workers, answered through the front door: a viewer may
/// not (403, the role), an operator the step's `approvers` do not name may
/// not (403, naming them), another namespace's token does not see the run
/// (404); an approver's `sandflow --server … signal` ends it, and the run
/// completes with who approved.
#[test]
fn an_approval_on_workers_takes_only_its_approvers_through_the_front_door() {
    let Some(schema) = PgSchema::create() else { return };
    let (server_state, client_state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_server, addr) = front_door(&schema, &server_state, &[]);
    let _workers = Workers::start(&schema, &server_state, 1, "5s");
    let flow = client_state.path().join("gate.yaml");
    let steps = "steps:\n  - { id: approve, component: /builtin/approval, input: { message: ship?, approvers: [release-manager], timeout: 5m } }\n";
    std::fs::write(&flow, format!("name: gate\n{steps}")).unwrap();
    let submitter = make_token(&schema, &server_state, "ci", "team-a", "submitter");
    let viewer = make_token(&schema, &server_state, "dash", "team-a", "viewer");
    let operator = make_token(&schema, &server_state, "oncall", "team-a", "operator");
    let manager = make_token(&schema, &server_state, "release-manager", "team-a", "operator");
    let stranger = make_token(&schema, &server_state, "release-manager-b", "team-b", "operator");
    let (code, out, err) = run(as_token(&client_state, &addr, &submitter).arg("submit").arg(&flow));
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_string();
    let since = std::time::Instant::now();
    while show(&mut as_token(&client_state, &addr, &submitter), &id)["steps"][0]["state"] != "waiting" {
        assert!(since.elapsed() < Duration::from_secs(30), "the approval never waited");
        std::thread::sleep(Duration::from_millis(100));
    }
    let path = format!("/api/runs/{id}/steps/approve/signal");
    let (status, body) = call_as(&addr, &viewer, "POST", &path, &json!({ "approved": true }));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("needs the role operator"), "{body}");
    let (code, _, err) = run(as_token(&client_state, &addr, &operator).args(["signal", &id, "approve", "--approve"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("may be approved only by release-manager; you are oncall, operator"), "{err}");
    let (status, body) = call_as(&addr, &stranger, "POST", &path, &json!({ "approved": true }));
    assert_eq!(status, 404, "{body}");
    let (status, body) = call_as(&addr, &manager, "POST", &path, &json!({ "approved": true, "data": 1 }));
    assert_eq!(status, 400, "{body}");
    let (code, _, err) = run(as_token(&client_state, &addr, &manager).args(["signal", &id, "approve", "--approve", "--comment", "go"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("(as release-manager)"), "{err}");
    let (status, body) = call_as(&addr, &manager, "POST", &path, &json!({ "approved": false }));
    assert_eq!(status, 409, "a second signal: {body}");
    let since = std::time::Instant::now();
    let record = loop {
        let record = show(&mut as_token(&client_state, &addr, &submitter), &id);
        if record["status"] != "running" {
            break record;
        }
        assert!(since.elapsed() < Duration::from_secs(30), "the run never ended: {record:#}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(record["status"], "completed", "{record:#}");
    let output = &record["steps"][0]["output"];
    assert_eq!((output["approved"].as_bool(), output["by"].as_str(), output["comment"].as_str()), (Some(true), Some("release-manager"), Some("go")), "{record:#}");
}
