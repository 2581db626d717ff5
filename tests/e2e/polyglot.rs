//! The JavaScript and Python guest libraries (components/js/sandflow.js,
//! components/python/sandflow.py), end to end: a step built from
//! tests/guests/ with the project's pinned toolchains stores state and a
//! blob, a second step reads them back with its config, and errors keep
//! their retry flag.

use super::support::{newest_run, root, run, sandflow};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds tests/guests/LANG into DIR/libcheck.wasm with the toolchain
/// components/polyglot.sh installs.
fn build(lang: &str, dir: &Path) -> PathBuf {
    let components = root().join("components");
    let setup = Command::new("bash").arg(components.join("polyglot.sh")).args(["--setup", lang]).output().unwrap();
    assert!(setup.status.success(), "{lang} toolchain: {}", String::from_utf8_lossy(&setup.stderr));
    let guests = root().join("tests/guests").join(lang);
    let out = dir.join("libcheck.wasm");
    let wit = root().join("wit");
    let mut cmd = match lang {
        "js" => {
            std::fs::copy(guests.join("step.js"), dir.join("step.js")).unwrap();
            std::fs::copy(components.join("js/sandflow.js"), dir.join("sandflow.js")).unwrap();
            let mut c = Command::new(components.join("js/node_modules/.bin/componentize-js"));
            // With `fetch` (no `-d http`): the component needs an HTTP grant.
            c.arg("--wit").arg(&wit).args(["-n", "described-step", "-d", "fetch-event", "-o"]).arg(&out).arg("step.js");
            c
        }
        _ => {
            let mut c = Command::new(components.join("python/.venv/bin/componentize-py"));
            c.arg("-q").arg("-d").arg(&wit).args(["-w", "described-step", "componentize", "app", "-p"]).arg(&guests);
            c.arg("-p").arg(components.join("python")).arg("-o").arg(&out);
            c
        }
    };
    let built = cmd.current_dir(dir).output().unwrap();
    assert!(built.status.success(), "{lang}: {}", String::from_utf8_lossy(&built.stderr));
    out
}

fn check_library(lang: &str, line: &str) {
    let dir = tempfile::tempdir().unwrap();
    let wasm = build(lang, dir.path());
    let server = super::http::Server::start(|_| super::http::Reply::Json(r#"{"pong": true}"#));
    // JavaScript's `fetch` step, awaited by an async handler.
    let fetch_step = match lang {
        "js" => format!(
            "  - id: fetch\n    component: lib\n    input: {{ op: fetch, url: \"http://127.0.0.1:{}/ping\" }}\n",
            server.port
        ),
        _ => String::new(),
    };
    let file = dir.path().join("libcheck.yaml");
    std::fs::write(
        &file,
        format!(
            r#"name: libcheck
components:
  lib:
    path: {}
    config: {{ mode: strict, limit: 3 }}
    grants: {{ http: {{ allow: ["127.0.0.1:{}"] }} }}
steps:
{fetch_step}
  - id: put
    component: lib
    input: {{ op: put, key: greeting, value: {{ words: [hello, world] }}, text: "blob text ✓" }}
  - id: get
    component: lib
    input: {{ op: get, key: greeting, id: {{ $from: {{ step: put }}, path: id }} }}
  - id: retryable
    component: lib
    input: {{ op: retryable }}
    retry: {{ max_attempts: 2, delay: 10ms }}
    on_error: {{ action: continue }}
  - id: permanent
    component: lib
    input: {{ op: permanent }}
    retry: {{ max_attempts: 3, delay: 10ms }}
    on_error: {{ action: continue }}
  - id: crash
    component: lib
    input: {{ op: crash }}
    on_error: {{ action: continue }}
output: {{ $from: {{ step: get }} }}
"#,
            wasm.display(),
            server.port
        ),
    )
    .unwrap();
    let s = tempfile::tempdir().unwrap();
    let (code, out, err) = run(sandflow(&s).args(["run", "-v"]).arg(&file));
    assert_eq!(code, 0, "{lang}: {err}");
    let out: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        out,
        json!({
            "value": { "words": ["hello", "world"] },
            "missing": "absent",
            "text": "blob text ✓",
            "unknown_blob": "absent",
            "config": { "mode": "strict", "limit": 3 },
        }),
        "{lang}"
    );
    let id = newest_run(sandflow(&s));
    let (_, shown, _) = run(sandflow(&s).args(["--json", "runs", "show", &id]));
    let shown: Value = serde_json::from_str(&shown).unwrap();
    let step = |name: &str| shown["steps"].as_array().unwrap().iter().find(|s| s["step"] == name).unwrap().clone();
    // The blob id is the SHA-256 of the bytes.
    assert_eq!(step("put")["output"]["id"], sha256("blob text ✓"), "{lang}");
    assert_eq!((step("retryable")["attempts"].as_u64(), step("retryable")["error_message"].as_str()), (Some(2), Some("busy, try again")), "{lang}");
    assert_eq!((step("permanent")["attempts"].as_u64(), step("permanent")["error_message"].as_str()), (Some(1), Some("this input can never work")), "{lang}");
    assert_eq!(step("crash")["error_kind"], "component", "{lang}");
    if lang == "js" {
        assert_eq!(step("fetch")["output"], json!({ "status": 200, "json": { "pong": true } }));
        assert_eq!(server.hits(), 1);
    }
    let (_, logs, _) = run(sandflow(&s).args(["runs", "logs", &id, "put"]));
    assert!(logs.contains("warn") && logs.contains("stored greeting"), "{lang}: {logs}");
    assert!(logs.contains(line), "{lang}: {logs}");
}

fn sha256(text: &str) -> String {
    let out = Command::new("sha256sum").stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().and_then(|mut c| {
        use std::io::Write;
        c.stdin.take().unwrap().write_all(text.as_bytes())?;
        c.wait_with_output()
    });
    String::from_utf8(out.unwrap().stdout).unwrap().split_whitespace().next().unwrap().to_string()
}

#[test]
fn the_javascript_guest_library_reaches_every_host_import() {
    check_library("js", "a console line");
}

#[test]
fn the_python_guest_library_reaches_every_host_import() {
    check_library("python", "a print line");
}
