//! Outbound HTTP under a grant (`grants.http`), against servers on
//! 127.0.0.1 started by each test: nothing leaves the machine.

use super::support::{example, hostile, run, sandflow};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How a test server answers a request for a path.
#[derive(Clone)]
pub(super) enum Reply {
    /// 200 with a JSON body.
    Json(&'static str),
    /// 302 to this location.
    Redirect(String),
    /// 200 with this many bytes; with or without a Content-Length.
    Big { bytes: usize, length_header: bool },
    /// Waits this long before answering.
    Slow(Duration),
}

/// An HTTP/1.1 server on 127.0.0.1 answering every request with `reply`,
/// counting the requests it got.
pub(super) struct Server {
    pub(super) port: u16,
    hits: Arc<AtomicUsize>,
}

impl Server {
    pub(super) fn start(reply: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let (counter, reply) = (hits.clone(), Arc::new(reply));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (counter, reply) = (counter.clone(), reply.clone());
                std::thread::spawn(move || serve(stream, &*reply, &counter));
            }
        });
        Server { port, hits }
    }

    pub(super) fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn serve(mut stream: TcpStream, reply: &dyn Fn(&str) -> Reply, hits: &AtomicUsize) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
    }
    hits.fetch_add(1, Ordering::SeqCst);
    let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let _ = match reply(&path) {
        Reply::Json(body) => write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ),
        Reply::Redirect(to) => {
            write!(stream, "HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        }
        Reply::Big { bytes, length_header } => {
            let head = if length_header { format!("content-length: {bytes}\r\n") } else { String::new() };
            let _ = write!(stream, "HTTP/1.1 200 OK\r\n{head}connection: close\r\n\r\n");
            stream.write_all(&vec![b'x'; bytes])
        }
        Reply::Slow(wait) => {
            std::thread::sleep(wait);
            write!(stream, "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}")
        }
    };
}

/// `sandflow call fetch.wasm` with `flags`; (exit code, output, stderr).
fn fetch(input: &str, flags: &[&str]) -> (i32, Value, String) {
    let s = tempfile::tempdir().unwrap();
    let (code, out, err) = run(sandflow(&s).arg("call").arg(example("fetch")).args(["--input", input]).args(flags));
    (code, serde_json::from_str(&out).unwrap_or(Value::Null), err)
}

#[test]
fn an_allowed_request_gets_its_response() {
    let server = Server::start(|_| Reply::Json(r#"{"answer": 42}"#));
    let url = format!("http://127.0.0.1:{}/v1/answer?x=1", server.port);
    let (code, out, err) = fetch(&format!(r#"{{"url": "{url}"}}"#), &["--allow-http", &format!("127.0.0.1:{}", server.port)]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out["status"], 200);
    assert_eq!(out["json"]["answer"], 42);
    assert_eq!(out["url"], url.as_str());
    assert_eq!(server.hits(), 1);
}

#[test]
fn a_host_not_allowed_is_refused_with_a_log_line_and_never_contacted() {
    let server = Server::start(|_| Reply::Json("{}"));
    let port = server.port;
    // A name entry does not allow the IP literal it resolves to, nor
    // another port, nor a URL that smuggles the allowed name in user info.
    for (url, allow) in [
        (format!("http://127.0.0.1:{port}/"), format!("localhost:{port}")),
        (format!("http://127.0.0.1:{port}/"), format!("127.0.0.1:{}", port.wrapping_add(1))),
        (format!("http://localhost:{port}@127.0.0.1:{port}/"), format!("localhost:{port}")),
        (format!("http://127.0.0.1:{port}/"), format!("https://127.0.0.1:{port}")),
    ] {
        let (code, _, err) = fetch(&format!(r#"{{"url": "{url}"}}"#), &["--allow-http", &allow]);
        assert_eq!(code, 1, "{url} with {allow}: {err}");
        assert!(err.contains("warn | sandflow: HTTP GET"), "{err}");
        assert!(err.contains("refused:"), "{err}");
        assert!(err.contains("failed (component)") && err.contains("the host refused the request"), "{err}");
    }
    assert_eq!(server.hits(), 0, "a refused request never reaches the server");
}

#[test]
fn a_redirect_out_of_the_allow_list_is_refused() {
    let outside = Server::start(|_| Reply::Json(r#"{"leaked": true}"#));
    let to = format!("http://127.0.0.1:{}/secret", outside.port);
    let inside = Server::start(move |_| Reply::Redirect(to.clone()));
    let input = format!(r#"{{"url": "http://127.0.0.1:{}/start"}}"#, inside.port);
    let (code, _, err) = fetch(&input, &["--allow-http", &format!("127.0.0.1:{}", inside.port)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("302 redirect to http://127.0.0.1:{}/secret", outside.port)), "{err}");
    assert!(err.contains(&format!("refused: http://127.0.0.1:{} is not in grants.http.allow", outside.port)), "{err}");
    assert_eq!((inside.hits(), outside.hits()), (1, 0));
}

#[test]
fn a_response_over_max_response_fails_cleanly() {
    for length_header in [true, false] {
        let server = Server::start(move |_| Reply::Big { bytes: 64 << 10, length_header });
        let input = format!(r#"{{"url": "http://127.0.0.1:{}/big"}}"#, server.port);
        let allow = format!("127.0.0.1:{}", server.port);
        let (code, _, err) = fetch(&input, &["--allow-http", &allow, "--http-max-response", "16KiB"]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("over the grant's max_response of 16KiB"), "content-length {length_header}: {err}");
        // The guest gets HTTP-response-body-size (or, mid-body, a stream
        // error saying so) and fails the step on its own terms.
        assert!(err.contains("failed (component)"), "{err}");
        assert!(err.contains("larger than the grant's max_response") || err.contains("body size exceeds limit"), "{err}");
        // Under the cap it is fine.
        let (code, out, err) = fetch(&input, &["--allow-http", &allow, "--http-max-response", "1MiB"]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out["body"].as_str().unwrap().len(), 64 << 10);
    }
}

#[test]
fn a_slow_server_fails_at_the_grant_timeout_or_the_step_deadline() {
    let server = Server::start(|_| Reply::Slow(Duration::from_secs(20)));
    let input = format!(r#"{{"url": "http://127.0.0.1:{}/slow"}}"#, server.port);
    let allow = format!("127.0.0.1:{}", server.port);
    let started = std::time::Instant::now();
    let (code, _, err) = fetch(&input, &["--allow-http", &allow, "--http-timeout", "500ms"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("timed out"), "the grant's timeout: {err}");
    let (code, _, err) = fetch(&input, &["--allow-http", &allow, "--timeout", "700ms"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("failed (timeout)") && err.contains("within its 700ms timeout"), "the step's deadline: {err}");
    assert!(started.elapsed() < Duration::from_secs(15), "neither waited for the server: {:?}", started.elapsed());
}

#[test]
fn flooding_requests_fails_the_step_with_kind_quota() {
    let server = Server::start(|_| Reply::Json("{}"));
    let s = tempfile::tempdir().unwrap();
    let input = format!(r#"{{"authority": "127.0.0.1:{}"}}"#, server.port);
    let allow = format!("127.0.0.1:{}", server.port);
    let (code, _, err) = run(sandflow(&s).arg("call").arg(hostile("http-flood")).args(["--input", &input, "--allow-http", &allow, "--quota", "http_requests=20"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("failed (quota)") && err.contains("quota `http_requests` of 20"), "{err}");
    assert_eq!(err.matches("past the quota of 20 HTTP requests").count(), 1, "one log line, not one per refusal: {err}");
    assert_eq!(server.hits(), 20);
}

#[test]
fn a_component_importing_http_without_a_grant_is_refused_before_the_run() {
    let s = tempfile::tempdir().unwrap();
    // By `call`: kind `instantiate`, naming the import and the grant.
    let (code, _, err) = run(sandflow(&s).arg("call").arg(example("fetch")).args(["--input", r#"{"url":"http://127.0.0.1:9/"}"#]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("failed (instantiate)") && err.contains("imports `wasi:http/"), "{err}");
    assert!(err.contains("HTTP is not granted to it"), "{err}");
    // In a workflow: a validation error at the component, exit 2.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wf.yaml");
    std::fs::write(
        &file,
        format!("name: no-grant\ncomponents:\n  fetch: {{ path: {} }}\nsteps:\n  - id: get\n    component: fetch\n    input: {{ url: \"http://127.0.0.1:9/\" }}\n", example("fetch").display()),
    )
    .unwrap();
    let (code, _, err) = run(sandflow(&s).arg("run").arg(&file));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("wf.yaml:3:3") && err.contains("component `fetch`: imports `wasi:http/"), "{err}");
}

/// In a workflow: one step fetches from an allowed server, one is refused,
/// one waits on a slow server past its deadline; the others are unaffected.
#[test]
fn in_a_workflow_each_step_gets_its_own_verdict() {
    let fast = Server::start(|_| Reply::Json(r#"{"ok": true}"#));
    let slow = Server::start(|_| Reply::Slow(Duration::from_secs(20)));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wf.yaml");
    let (f, sl) = (fast.port, slow.port);
    std::fs::write(
        &file,
        format!(
            r#"name: http-grants
components:
  fetch:
    path: {fetch}
    grants:
      http: {{ allow: ["127.0.0.1:{f}", "127.0.0.1:{sl}"], max_response: 1MiB, timeout: 30s }}
  text: {{ path: {text} }}
steps:
  - id: good
    component: fetch
    input: {{ url: "http://127.0.0.1:{f}/a" }}
  - id: refused
    component: fetch
    input: {{ url: "http://localhost:{f}/a" }}
    on_error: {{ action: continue }}
  - id: slow
    component: fetch
    timeout: 1s
    input: {{ url: "http://127.0.0.1:{sl}/a" }}
    on_error: {{ action: continue }}
  - id: other
    component: text
    input: {{ op: upper, text: "still here" }}
output:
  good: {{ $from: {{ step: good }}, path: json.ok }}
  other: {{ $from: {{ step: other }}, path: text }}
"#,
            fetch = example("fetch").display(),
            text = example("text").display(),
        ),
    )
    .unwrap();
    let s = tempfile::tempdir().unwrap();
    let (code, out, err) = run(sandflow(&s).args(["run", "-q"]).arg(&file));
    assert_eq!(code, 0, "{err}");
    let out: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out["good"], true);
    assert_eq!(out["other"], "STILL HERE");
    let (code, shown, _) = run(sandflow(&s).args(["--json", "runs", "show"]).arg(super::support::newest_run(sandflow(&s))));
    assert_eq!(code, 0);
    let shown: Value = serde_json::from_str(&shown).unwrap();
    let step = |id: &str| shown["steps"].as_array().unwrap().iter().find(|s| s["step"] == id).unwrap().clone();
    assert_eq!(step("refused")["state"], "failed");
    assert!(step("refused")["error_message"].as_str().unwrap().contains("the host refused the request"), "{shown}");
    assert_eq!(step("slow")["state"], "failed");
    assert_eq!(step("slow")["error_kind"], "timeout", "{shown}");
    assert_eq!(fast.hits(), 1);
}
