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

/// wasi:sockets is linked so runtimes that import it (CPython) load, but
/// every use is denied: a step that opens a socket gets an error.
#[test]
fn a_step_opening_a_socket_loads_and_is_denied_the_connection() {
    let s = tempfile::tempdir().unwrap();
    let (code, out, err) = run(sandflow(&s).args(["component", "inspect"]).arg(hostile("net")));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("step:    yes"), "{out}");
    assert!(out.contains("    wasi:sockets/tcp@"), "imports are listed: {out}");
    assert!(out.contains("import wasi:sockets/tcp"), "the WIT world is shown: {out}");
    let (code, out, err) = run(sandflow(&s).arg("call").arg(hostile("net")));
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("failed (component)") && err.contains("connect failed: Permission denied"), "{err}");
}

#[test]
fn a_step_needing_http_is_shown_with_the_grant_it_needs() {
    let s = tempfile::tempdir().unwrap();
    let (code, out, err) = run(sandflow(&s).args(["component", "inspect"]).arg(example("fetch")));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("step:    yes (exports run, describe)\n  needs:   an HTTP grant (it imports wasi:http/"), "{out}");
}

/// A component of another world: inspect is where its author finds out why
/// it does not fit; `call` and `run` refuse it as invalid (exit 2).
#[test]
fn a_component_of_a_foreign_world_is_described_then_refused_by_call_and_run() {
    let s = tempfile::tempdir().unwrap();
    let file = hostile("foreign");
    let (code, out, err) = run(sandflow(&s).args(["component", "inspect"]).arg(&file));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("step:    no: not a sandflow step: it does not export `run` (expected the world sandflow:step/step@0.1.0, see wit/step.wit); it also imports `acme:greeter/clock@1.0.0`, which sandflow does not provide"),
        "{out}"
    );
    assert!(out.contains("  imports:\n    acme:greeter/clock@1.0.0\n"), "{out}");
    assert!(out.contains("  exports:\n    greet\n"), "{out}");
    assert!(out.contains("export greet: func(name: string) -> string;"), "the WIT world is shown: {out}");
    assert!(err.contains("is not a sandflow step (it does not export `run`; it also imports `acme:greeter/clock@1.0.0`"), "{err}");

    let (code, out, err) = run(sandflow(&s).args(["--json", "component", "inspect"]).arg(&file));
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((doc["step"].clone(), doc["exports"].clone()), (Value::Bool(false), serde_json::json!(["greet"])));

    let (code, _, err) = run(sandflow(&s).arg("call").arg(&file).args(["--input", "1"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a sandflow step: it does not export `run`"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("greet.yaml");
    std::fs::write(&flow, format!("steps:\n  - {{ id: greet, component: {} }}\n", file.display())).unwrap();
    let (code, _, err) = run(sandflow(&s).arg("run").arg(&flow));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a sandflow step: it does not export `run`"), "{err}");
}

/// Checking a component without compiling it (what `submit` and `serve`
/// do) accepts and refuses what compiling does, with the same imports:
/// every shipped component, every hostile one, and files that are not
/// components at all. One check serves them all, each twice, as `serve`'s
/// does: what it remembers answers as the first check did (a truncated
/// copy of a component it accepted is still refused).
#[test]
fn a_check_without_compiling_agrees_with_loading_on_every_component() {
    use sandflow::exec::{ComponentCheck, Loader};
    let sandbox = sandflow::sandbox::Sandbox::new(Default::default()).unwrap();
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    for dir in ["components/dist", "components/dist/hostile", "components/dist/compat"] {
        for entry in std::fs::read_dir(crate::support::root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "wasm") {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 25, "{files:?}");
    let mut cases: Vec<(String, Vec<u8>)> = files.iter().map(|p| (p.display().to_string(), std::fs::read(p).unwrap())).collect();
    let core = wat_free_core_module();
    cases.push(("a core module".into(), core));
    cases.push(("text".into(), b"name: not wasm\n".to_vec()));
    let mut truncated = std::fs::read(example("echo")).unwrap();
    truncated.truncate(truncated.len() / 2);
    cases.push(("a truncated component".into(), truncated));
    let check = ComponentCheck::default();
    for (name, bytes) in cases.iter().chain(&cases) {
        let checked = check.load(name, bytes);
        let loaded = sandbox.load_bytes(name, bytes);
        match (&checked, &loaded) {
            (Ok(c), Ok(l)) => {
                assert_eq!(c.sha256, l.sha256(), "{name}");
                assert_eq!(c.imports, l.imports(), "{name}");
            }
            (Err(c), Err(l)) => assert_eq!(std::mem::discriminant(&c.kind), std::mem::discriminant(&l.kind), "{name}: {c} / {l}"),
            _ => panic!("{name}: checked {:?}, loaded {:?}", checked.as_ref().map(|_| ()), loaded.as_ref().map(|_| ())),
        }
    }
}

/// The smallest core WebAssembly module: the magic and version 1.
fn wat_free_core_module() -> Vec<u8> {
    b"\0asm\x01\0\0\0".to_vec()
}
