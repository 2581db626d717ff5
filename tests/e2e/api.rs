//! The front door: `sandflow serve`'s API and `sandflow --server URL`, a
//! client with no database credentials, against `serve` and worker
//! processes on a real PostgreSQL server; and every bad request refused
//! with what to fix, nothing recorded.

use crate::distributed::Workers;
use crate::support::{PgSchema, example, hostile, root, run, sandflow};
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
