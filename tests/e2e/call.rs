//! `sandflow call`: outputs, failure kinds, exit codes and messages.

use crate::support::{example, hostile, read_until, run, sandflow};
use serde_json::{Value, json};

fn state() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn prints_the_output_as_json_on_stdout() {
    let s = state();
    let (code, out, err) = run(sandflow(&s).arg("call").arg(example("text")).args(["--input", r#"{"op":"upper","text":"hi"}"#]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!({"text": "HI"}));
    assert!(err.contains("succeeded in"), "{err}");
}

#[test]
fn input_file_and_config_reach_the_component() {
    let s = state();
    let input = s.path().join("in.json");
    std::fs::write(&input, r#"{"op":"config"}"#).unwrap();
    let (code, out, err) = run(
        sandflow(&s).arg("call").arg(example("kv")).arg("--input-file").arg(&input).args(["--config", r#"{"locale":"en"}"#]),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!({"config": {"locale": "en"}}));
    assert!(err.contains("info | "), "log lines are shown: {err}");
}

#[test]
fn hostile_components_exit_1_with_kind_and_reason() {
    let cases: &[(&str, &[&str], &str, &str)] = &[
        ("spin", &["--fuel", "50000000"], "fuel", "ran out of fuel"),
        ("spin", &["--timeout", "300ms"], "timeout", "within its 300ms timeout"),
        ("sleep", &["--timeout", "300ms"], "timeout", "within its 300ms timeout"),
        ("memory-bomb", &["--memory", "16MiB"], "memory", "memory cap of 16MiB"),
        ("recurse", &[], "trap", "stack overflow"),
        ("panic", &[], "trap", "this step always panics"),
        ("bad-json", &[], "output", "not valid JSON"),
        ("huge-output", &[], "output", "over the cap of 4MiB"),
        ("read-file", &[], "component", "could not read /etc/passwd"),
        ("read-env", &[], "component", "could not read $HOME"),
        ("fatal", &[], "component", "can never be processed"),
        ("net", &[], "component", "connect failed: Permission denied"),
    ];
    let s = state();
    for (name, flags, kind, reason) in cases {
        let (code, out, err) = run(sandflow(&s).arg("call").arg(hostile(name)).args(*flags));
        assert_eq!(code, 1, "{name}: {err}");
        assert!(out.is_empty(), "{name} printed an output: {out}");
        let last = err.lines().last().unwrap_or_default();
        assert!(last.starts_with("error: ") && last.contains(&format!("failed ({kind})")), "{name}: {last}");
        assert!(last.contains(reason), "{name}: {last}");
    }
}

#[test]
fn json_events_carry_state_and_typed_error() {
    let s = state();
    let (code, _, err) = run(sandflow(&s).args(["--json", "call"]).arg(hostile("fatal")));
    assert_eq!(code, 1);
    let events: Vec<Value> = err.lines().map(|l| serde_json::from_str(l).expect("every line is JSON")).collect();
    let last = events.last().unwrap();
    assert_eq!(last["event"], "step_finished");
    assert_eq!(last["state"], "failed");
    assert_eq!(last["error"], json!({"kind": "component", "message": "the input can never be processed", "retryable": false}));
    assert!(last["ts"].as_str().unwrap().ends_with('Z'));
    assert!(events.iter().all(|e| e["run_id"].is_string() && e["run_id"] == events[0]["run_id"]), "{events:?}");
}

#[test]
fn flooding_output_is_capped_and_the_step_still_succeeds() {
    let s = state();
    let (code, out, err) = run(sandflow(&s).arg("call").arg(hostile("flood")).args(["--input", r#"{"mib":8}"#]));
    assert_eq!(code, 0, "{}", &err[err.len().saturating_sub(500)..]);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!({"wrote_mib": 8}));
    assert!(err.contains("more bytes of log were dropped (the log cap is 1MiB)"));
    assert!(err.len() < 3 << 20, "the log shown is bounded by the cap: {} bytes", err.len());
}

/// Files that are not step components: exit 2 and one line naming the file.
#[test]
fn bad_component_files_are_one_line_errors_with_exit_2() {
    let s = state();
    let dir = s.path();
    std::fs::write(dir.join("notes.wasm"), "hello").unwrap();
    std::fs::write(dir.join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    // The smallest valid component: it exports nothing, so it is not a step.
    std::fs::write(dir.join("empty.wasm"), b"\0asm\x0d\0\x01\0").unwrap();
    let cases = [
        ("missing.wasm", "cannot read the file"),
        ("notes.wasm", "not a WebAssembly file"),
        ("core.wasm", "a core WebAssembly module, not a component"),
        ("empty.wasm", "not a sandflow step: it does not export `run`"),
    ];
    for (file, what) in cases {
        let path = dir.join(file);
        for sub in [&["call"][..], &["component", "inspect"][..]] {
            let (code, out, err) = run(sandflow(&s).args(sub).arg(&path));
            if file == "empty.wasm" && sub[0] == "component" {
                // A valid component that is not a step is shown, with why.
                assert_eq!(code, 0, "{err}");
                assert!(out.contains(&format!("step:    no: {what}")), "{out}");
                continue;
            }
            assert_eq!(code, 2, "{file}: {err}");
            let last = err.lines().last().unwrap();
            assert!(last.starts_with(&format!("error: {}: ", path.display())), "{file}: {last}");
            assert!(last.contains(what), "{file}: {last}");
            assert!(!err.contains("panicked"), "{err}");
        }
    }
}

#[test]
fn bad_flags_are_usage_errors() {
    let s = state();
    for args in [&["--input", "{nope"][..], &["--timeout", "10"][..], &["--memory", "lots"][..], &["--dir", "./data"][..]] {
        let (code, _, err) = run(sandflow(&s).arg("call").arg(example("echo")).args(args));
        assert_eq!(code, 2, "{args:?}: {err}");
    }
}

#[test]
fn grants_make_env_and_dirs_visible() {
    let s = state();
    let (code, out, err) = run(
        sandflow(&s)
            .arg("call")
            .arg(hostile("read-env"))
            .args(["--input", r#"{"name":"SANDFLOW_PROBE"}"#, "--allow-env", "SANDFLOW_PROBE"])
            .env("SANDFLOW_PROBE", "granted")
            .env("SANDFLOW_OTHER", "not granted"),
    );
    assert_eq!(code, 0, "{err}");
    let out: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out["value"], "granted");
    assert_eq!(out["visible"], json!(["SANDFLOW_PROBE"]));

    let data = s.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("hello.txt"), "hello from the host\n").unwrap();
    let (code, out, err) = run(
        sandflow(&s)
            .arg("call")
            .arg(hostile("read-file"))
            .args(["--input", r#"{"path":"/data/hello.txt"}"#, "--dir"])
            .arg(format!("{}:/data", data.display())),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["first_line"], "hello from the host");
    // Outside the grant, even relative to it, nothing is visible.
    let (code, _, err) = run(
        sandflow(&s)
            .arg("call")
            .arg(hostile("read-file"))
            .args(["--input", r#"{"path":"/data/../../etc/passwd"}"#, "--dir"])
            .arg(format!("{}:/data", data.display())),
    );
    assert_eq!(code, 1, "{err}");
    assert!(!err.contains("root:"), "{err}");
}

#[test]
fn sigint_cancels_a_spinning_step_with_exit_130() {
    let s = state();
    let mut child = sandflow(&s)
        .args(["--json", "call"])
        .arg(hostile("spin"))
        .args(["--fuel", "1000000000000", "--timeout", "60s"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the guest is running.
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    read_until(&mut stderr, |l| l.contains("\"step_started\""));
    std::thread::sleep(std::time::Duration::from_millis(200));
    let sent = std::time::Instant::now();
    let killed = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let waited = sent.elapsed();
    let err = std::io::read_to_string(stderr).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    let last: Value = serde_json::from_str(err.lines().last().unwrap()).unwrap();
    assert_eq!((last["state"].as_str(), last["error"]["kind"].as_str()), (Some("cancelled"), Some("cancelled")));
    assert!(waited < std::time::Duration::from_secs(2), "took {waited:?} to stop");
}

/// A Ctrl-C while `call` compiles cancels the call (exit 130, state
/// `cancelled`): it neither kills the process nor is missed, so the step
/// does not run to its end after it.
#[test]
fn sigint_while_compiling_cancels_the_call_with_exit_130() {
    let s = state();
    let mut child = sandflow(&s)
        .arg("call")
        .arg(example("textstats"))
        .args(["--input", r#"{"text": "a b"}"#, "--config", r#"{"stopwords": []}"#])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The progress line comes a second into the compile of this 18 MB
    // component, which takes seconds more.
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let line = read_until(&mut stderr, |l| l.starts_with("compiling "));
    assert!(std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let status = child.wait().unwrap();
    let err = std::io::read_to_string(stderr).unwrap();
    // The optimized code it started compiling in the background is not
    // this test's to wait for.
    let _ = std::process::Command::new("pkill").arg("-f").arg(s.path()).status();
    assert_eq!(status.code(), Some(130), "{line}{err}");
    assert!(err.contains("failed (cancelled)"), "{line}{err}");
}

#[test]
fn sigint_cancels_a_running_workflow_with_exit_130_and_cancelled_states() {
    let s = state();
    let file = s.path().join("spin.yaml");
    std::fs::write(
        &file,
        format!(
            "components: {{ spin: {{ path: '{}' }} }}\nsteps:\n  - {{ id: spin, component: spin, fuel: 1000000000000, timeout: 60s }}\n  - {{ id: after, component: spin, needs: [spin] }}\n",
            hostile("spin").display()
        ),
    )
    .unwrap();
    let mut child = sandflow(&s).args(["--json", "run"]).arg(&file).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    read_until(&mut stderr, |l| l.contains("\"step_started\""));
    let sent = std::time::Instant::now();
    assert!(std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert!(sent.elapsed() < std::time::Duration::from_secs(2), "took {:?}", sent.elapsed());
    assert_eq!(status.code(), Some(130));
    let events: Vec<Value> = std::io::read_to_string(stderr).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let state_of = |step: &str| {
        events.iter().find(|e| e["event"] == "step_finished" && e["step"] == step).map(|e| e["state"].clone())
    };
    assert_eq!(state_of("spin"), Some(json!("cancelled")));
    assert_eq!(state_of("after"), Some(json!("cancelled")));
    let last = events.last().unwrap();
    assert_eq!((last["event"].as_str(), last["state"].as_str()), (Some("run_finished"), Some("cancelled")));
}

#[test]
fn a_component_built_against_the_first_contract_still_runs() {
    // Frozen in components/dist/compat/ (not rebuilt): the host must keep
    // running components built against sandflow:step@0.1.0.
    let state = state();
    let frozen = "components/dist/compat/echo-step-0.1.0.wasm";
    let (code, out, err) = run(sandflow(&state).args(["-q", "call", frozen, "--input", r#"{"kept": [1, 2]}"#]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap(), serde_json::json!({"kept": [1, 2]}));
    let (code, out, err) = run(sandflow(&state).args(["component", "inspect", frozen]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sandflow:step/types@0.1.0"), "{out}");
}

#[test]
fn a_reader_that_goes_away_ends_the_command_quietly() {
    let state = state();
    // The reader has closed its end before the command starts: closing it
    // after spawning raced the command, which may write all of a small
    // output into the pipe's buffer first.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = sandflow(&state).arg("schema").stdout(writer).stderr(std::process::Stdio::piped()).output().unwrap();
    assert_eq!(out.status.code(), Some(141), "as a process killed by SIGPIPE");
    assert!(out.stderr.is_empty(), "no panic: {}", String::from_utf8_lossy(&out.stderr));
}

/// A step that writes terminal control sequences (clear the screen, move
/// the cursor, set the clipboard, overwrite a line, a C1 control) into its
/// output streams, its log and its error: wherever a person reads them
/// (`call`, `run -v`, `runs logs`, `runs show`, `test`) each control
/// character is shown escaped and none reaches the terminal; `--json`
/// keeps the text exact (JSON escapes it).
#[test]
fn terminal_control_sequences_a_step_writes_are_shown_escaped() {
    let raw = |text: &str| text.chars().any(|c| c.is_control() && c != '\n' && c != '\t');
    let s = state();
    let (code, _, err) = run(sandflow(&s).arg("call").arg(hostile("escape-codes")));
    assert_eq!(code, 1, "{err}");
    assert!(!raw(&err), "no control character reaches the terminal: {err:?}");
    for shown in [r"\x1b[2J\x1b[1;1Hscreen cleared\x07", r"\x1b]52;c;cHduZWQ=\x07clipboard set", r"\roverwritten \u009b31m line", r"\x1b[32m✓ all good\x1b[0m"] {
        assert!(err.contains(shown), "{shown} in: {err}");
    }

    let flow = s.path().join("escape.yaml");
    std::fs::write(&flow, format!("name: escape\ncomponents:\n  esc: {{ path: '{}' }}\nsteps:\n  - {{ id: say, component: esc }}\n", hostile("escape-codes").display())).unwrap();
    let (code, _, err) = run(sandflow(&s).args(["-v", "run"]).arg(&flow));
    assert_eq!(code, 1, "{err}");
    assert!(!raw(&err) && err.contains(r"\x1b]52;c;") && err.contains(r"\x1b[32m✓ all good"), "{err}");
    let id = crate::support::newest_run(sandflow(&s));
    for args in [vec!["runs", "logs", id.as_str()], vec!["runs", "logs", id.as_str(), "--follow"], vec!["runs", "show", id.as_str()]] {
        let (code, out, err) = run(sandflow(&s).args(&args));
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(!raw(&out) && !raw(&err), "{args:?}: {out:?}");
        assert!(out.contains(r"\x1b[") || out.contains(r"\r"), "{args:?} shows the escapes: {out}");
    }
    // JSON carries the text exactly, every control character escaped.
    let (_, out, _) = run(sandflow(&s).args(["--json", "runs", "logs", &id]));
    let lines: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(lines[0]["text"], "\x1b[2J\x1b[1;1Hscreen cleared\x07");
    assert_eq!(lines[2]["text"], "\roverwritten \u{9b}31m line");
    assert!(!raw(&out), "{out:?}");
}

/// The first `call` of a large component never compiled on this machine
/// runs on quickly compiled code (Winch) and says so; the optimized code
/// is made in the background, and a later `call` runs on it, with the same
/// output. (`validate.wasm`, 2.6 MB, is over the 1 MiB from which
/// components are compiled quickly first; Rust steps under it are not.)
#[test]
fn a_first_call_of_a_large_component_runs_on_quick_code_then_optimized_code() {
    let s = state();
    let call = |json: bool| {
        let mut cmd = sandflow(&s);
        if json {
            cmd.arg("--json");
        }
        cmd.arg("call").arg(example("validate")).args(["--config", r#"{"schema": {"type": "array"}}"#, "--input", "[1, 2]"]);
        run(&mut cmd)
    };
    let (code, out, err) = call(false);
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!([1, 2]));
    assert!(err.contains("on quickly compiled code: later calls use optimized code"), "{err}");
    // Until the background compile has written the optimized code, calls
    // read the quick code from the cache; then they run on Cranelift's.
    let cache = s.path().join("cache").join("components");
    let waited = std::time::Instant::now();
    // Meanwhile the background compile is seen yielding: a session of its
    // own (its own scheduling group) whose group runs at nice 19.
    let mut yielding = false;
    loop {
        yielding |= background_compile_yields(&cache);
        let names: Vec<String> = std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        if names.len() == 1 && names[0].ends_with(".cwasm") {
            assert!(yielding, "the background compile was never seen in a session of its own at nice 19");
            break;
        }
        assert!(waited.elapsed() < std::time::Duration::from_secs(300), "the optimized code was not written: {names:?}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let (code, out, err) = call(true);
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!([1, 2]));
    let finished: Value = err.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find(|e| e["event"] == "step_finished").unwrap();
    assert_eq!(finished["compiler"], "cranelift", "{err}");
    // A small Rust step is compiled with Cranelift from the start.
    let (code, _, err) = run(sandflow(&s).args(["--json", "call"]).arg(example("echo")).args(["--input", "1"]));
    assert_eq!(code, 0, "{err}");
    let finished: Value = err.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find(|e| e["event"] == "step_finished").unwrap();
    assert_eq!(finished["compiler"], "cranelift", "{err}");
}

/// Whether a `compile-component` process writing into `cache` runs in a
/// session it leads, at nice 19, with its session's scheduling group at
/// nice 19 where the kernel has such groups. False if none runs now.
fn background_compile_yields(cache: &std::path::Path) -> bool {
    let cache = cache.to_string_lossy();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !cmdline.contains("compile-component") || !cmdline.contains(cache.as_ref()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // After the command's `(name)`: state, ppid, pgrp, session, …, nice (the 19th field).
        let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
        let (session, nice) = (fields.get(3).copied(), fields.get(16).copied());
        let group = match std::fs::read_to_string(format!("/proc/{pid}/autogroup")) {
            Ok(text) => text.trim_end().ends_with("nice 19"),
            // No scheduling groups in this kernel: nothing more to check.
            Err(e) => e.kind() == std::io::ErrorKind::NotFound && !std::path::Path::new("/proc/self/autogroup").exists(),
        };
        if session == Some(pid.to_string().as_str()) && nice == Some("19") && group {
            return true;
        }
    }
    false
}
