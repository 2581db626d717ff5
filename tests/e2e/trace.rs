//! `--otlp`: a run's trace, exported to an OTLP/HTTP receiver the test
//! starts on loopback: a span per run, step and attempt, their parents and
//! attributes.

use crate::support::{run, sandflow};
use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;

/// Accepts OTLP/HTTP posts on a free port; each body comes out of the channel.
fn receiver() -> (String, std::sync::mpsc::Receiver<(String, Value)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}").unwrap();
            let _ = tx.send((request_line.trim().to_string(), serde_json::from_slice(&body).unwrap()));
        }
    });
    (addr, rx)
}

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"].as_array().unwrap().iter().find(|a| a["key"] == key).map(|a| &a["value"])
}

#[test]
fn a_run_exports_a_span_per_run_step_and_attempt() {
    let (addr, bodies) = receiver();
    let state = tempfile::tempdir().unwrap();
    let (code, _, err) = run(sandflow(&state).args(["-q", "--otlp", &format!("http://{addr}"), "run", "workflows/errors.yaml"]));
    assert_eq!(code, 0, "{err}");
    let (request, body) = bodies.recv_timeout(std::time::Duration::from_secs(10)).expect("a trace was posted");
    assert_eq!(request, "POST /v1/traces HTTP/1.1");
    let spans = body["resourceSpans"][0]["scopeSpans"][0]["spans"].as_array().unwrap().clone();
    let trace_id = spans[0]["traceId"].as_str().unwrap();
    assert_eq!(trace_id.len(), 32);
    assert!(spans.iter().all(|s| s["traceId"] == trace_id), "one trace");
    let by_name: HashMap<&str, &Value> = spans.iter().map(|s| (s["name"].as_str().unwrap(), s)).collect();

    let root = by_name["run errors"];
    assert!(root.get("parentSpanId").is_none());
    assert_eq!(attr(root, "sandflow.run.state").unwrap()["stringValue"], "completed");

    // A span per step, children of the run.
    for step in ["fetch", "enrich", "optional", "summary"] {
        let s = by_name[format!("step {step}").as_str()];
        assert_eq!(s["parentSpanId"], root["spanId"], "{step}");
        assert_eq!(attr(s, "sandflow.component.sha256").unwrap()["stringValue"].as_str().unwrap().len(), 64, "{step}");
        assert!(attr(s, "sandflow.fuel_used").is_some() && attr(s, "sandflow.cached").is_some(), "{step}");
    }
    let fetch = by_name["step fetch"];
    assert_eq!(attr(fetch, "sandflow.component.name").unwrap()["stringValue"], "flaky");
    assert_eq!(attr(fetch, "sandflow.step.state").unwrap()["stringValue"], "succeeded");
    assert_eq!(attr(fetch, "sandflow.retries").unwrap()["intValue"], "2");
    let enrich = by_name["step enrich"];
    assert_eq!(attr(enrich, "sandflow.step.state").unwrap()["stringValue"], "failed");
    assert_eq!(attr(enrich, "sandflow.failure.kind").unwrap()["stringValue"], "component");
    assert_eq!(enrich["status"]["code"], 2, "a failed step's status is ERROR");

    // A span per attempt, children of their step: fetch failed twice, then succeeded.
    let attempts: Vec<&Value> = spans.iter().filter(|s| s["parentSpanId"] == fetch["spanId"]).collect();
    let states: Vec<(String, i64)> = attempts
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s["status"]["code"].as_i64().unwrap()))
        .collect();
    assert_eq!(states, [("attempt 1 of fetch".to_string(), 2), ("attempt 2 of fetch".to_string(), 2), ("attempt 3 of fetch".to_string(), 1)]);
    assert_eq!(attr(attempts[0], "sandflow.failure.kind").unwrap()["stringValue"], "component");
    for s in &spans {
        let (start, end) = (s["startTimeUnixNano"].as_str().unwrap().parse::<u128>().unwrap(), s["endTimeUnixNano"].as_str().unwrap().parse::<u128>().unwrap());
        assert!(start <= end, "{s}");
    }
}

#[test]
fn a_collector_that_is_down_does_not_fail_the_run() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let state = tempfile::tempdir().unwrap();
    let (code, out, err) = run(sandflow(&state).args(["--otlp", &format!("http://{addr}"), "run", "workflows/errors.yaml"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("fetched after 3 calls"), "{out}");
    assert!(err.contains("the run's trace was not exported"), "{err}");
    let (code, _, err) = run(sandflow(&state).args(["--otlp", "https://collector", "run", "workflows/errors.yaml"]));
    assert_eq!(code, 2, "a bad --otlp is a usage error");
    assert!(err.contains("only `http://` endpoints are supported"), "{err}");
}

#[test]
fn a_nested_run_is_part_of_its_parent_s_trace() {
    let (addr, bodies) = receiver();
    let state = tempfile::tempdir().unwrap();
    let (code, _, err) =
        run(sandflow(&state).args(["-q", "--otlp", &format!("http://{addr}"), "run", "workflows/nested.yaml", "--input", r#"{"name": "ada"}"#]));
    assert_eq!(code, 0, "{err}");
    let (_, body) = bodies.recv_timeout(std::time::Duration::from_secs(10)).expect("a trace was posted");
    assert!(bodies.recv_timeout(std::time::Duration::from_millis(300)).is_err(), "one trace per run, nested runs included");
    let spans = body["resourceSpans"][0]["scopeSpans"][0]["spans"].as_array().unwrap().clone();
    let by_id: HashMap<&str, &Value> = spans.iter().map(|s| (s["spanId"].as_str().unwrap(), s)).collect();
    let named = |name: &str| spans.iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no span {name}: {spans:?}"));
    // `greet` runs lib/shout.yaml: its run span is under greet's attempt,
    // and its steps under that run.
    let shout = named("run shout");
    let attempt = by_id[shout["parentSpanId"].as_str().unwrap()];
    assert_eq!(attempt["name"], "attempt 1 of greet");
    assert_eq!(by_id[attempt["parentSpanId"].as_str().unwrap()]["name"], "step greet");
    let upper = named("step upper");
    assert_eq!(upper["parentSpanId"], shout["spanId"]);
    assert_eq!(attr(upper, "sandflow.component.name").unwrap_or_else(|| panic!("{upper}"))["stringValue"], "text");
    assert!(spans.iter().all(|s| s["traceId"] == shout["traceId"]));
    let ids: std::collections::HashSet<&str> = spans.iter().map(|s| s["spanId"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), spans.len(), "span ids are unique");
}

#[test]
fn a_distributed_run_s_trace_comes_from_the_process_that_follows_it() {
    let Some(schema) = crate::support::PgSchema::create() else { return };
    let (addr, bodies) = receiver();
    let state = tempfile::tempdir().unwrap();
    let (code, _, err) =
        run(sandflow(&state).args(["-q", "--store", &schema.url, "--otlp", &format!("http://{addr}"), "run", "workflows/errors.yaml"]));
    assert_eq!(code, 0, "{err}");
    let (_, body) = bodies.recv_timeout(std::time::Duration::from_secs(10)).expect("a trace was posted");
    let spans = body["resourceSpans"][0]["scopeSpans"][0]["spans"].as_array().unwrap().clone();
    let by_name: HashMap<&str, &Value> = spans.iter().map(|s| (s["name"].as_str().unwrap(), s)).collect();
    let root = by_name["run errors"];
    assert_eq!(attr(root, "sandflow.run.state").unwrap()["stringValue"], "completed");
    let fetch = by_name["step fetch"];
    assert_eq!(fetch["parentSpanId"], root["spanId"]);
    assert_eq!(attr(fetch, "sandflow.retries").unwrap()["intValue"], "2");
    assert_eq!(spans.iter().filter(|s| s["parentSpanId"] == fetch["spanId"]).count(), 3, "three attempts of fetch");
}
