//! `sandflow component inspect`.

use crate::support::{example, hostile, run, sandflow};
use serde_json::Value;

#[test]
fn shows_identity_describe_imports_and_wit() {
    let s = tempfile::tempdir().unwrap();
    let file = example("text");
    let (code, out, err) = run(sandflow(&s).args(["component", "inspect"]).arg(&file));
    assert_eq!(code, 0, "{err}");
    let bytes = std::fs::read(&file).unwrap();
    assert!(out.contains(&format!("size:    {} bytes", bytes.len())), "{out}");
    assert!(out.contains(&format!("sha256:  {}", sandflow::sandbox::sha256_hex(&bytes))), "{out}");
    assert!(out.contains("step:    yes (exports run, describe)"), "{out}");
    assert!(out.contains("name:    text 0.1.0"), "{out}");
    assert!(out.contains("    sandflow:step/types@0.1.0\n"), "imports are listed: {out}");
    assert!(out.contains("export run: func(input: string) -> result<string, step-error>;"), "{out}");
}

#[test]
fn json_form_has_describe_schemas() {
    let s = tempfile::tempdir().unwrap();
    let (code, out, err) = run(sandflow(&s).args(["--json", "component", "inspect"]).arg(example("math")));
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["step"], true);
    assert_eq!(doc["describe"]["name"], "math");
    assert_eq!(doc["describe"]["input_schema"]["required"][0], "values");
    assert!(doc["exports"].as_array().unwrap().iter().any(|e| e == "describe"));
}

#[test]
fn a_component_needing_the_network_is_shown_then_refused() {
    let s = tempfile::tempdir().unwrap();
    let (code, out, err) = run(sandflow(&s).args(["component", "inspect"]).arg(hostile("net")));
    assert_eq!(code, 2);
    assert!(out.contains("step:    no: imports `wasi:sockets/"), "{out}");
    assert!(out.contains("import wasi:sockets/tcp"), "the WIT world is still shown: {out}");
    assert!(err.contains("network access is never granted"), "{err}");
}
