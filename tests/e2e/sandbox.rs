//! The sandbox as a library: every hostile component at once, in one
//! process, beside well-behaved steps, on Cranelift's code and on Winch's
//! (a component's first runs under `QuickCompile`).

use crate::support::{example, hostile};
use sandflow::failure::FailureKind;
use sandflow::sandbox::{CancellationToken, Compiler, Limits, MemoryServices, QuickCompile, Quota, Sandbox, SandboxConfig, StepOutcome, StepRequest};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

fn request(input: Value, limits: Limits) -> StepRequest {
    StepRequest { limits, ..StepRequest::new(input) }
}

fn limits() -> Limits {
    Limits { fuel: 2_000_000_000, timeout: Duration::from_secs(20), memory: 32 << 20, ..Limits::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_steps_fail_cleanly_while_good_steps_succeed() {
    hostile_and_good_steps(Arc::new(Sandbox::new(SandboxConfig::default()).unwrap()), Compiler::Cranelift).await;
}

/// Every limit holds on Winch's code as on Cranelift's: fuel, the
/// deadline (epoch interruption), the memory cap, the stack, traps, the
/// output checks, the quotas, and the escapes see nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_steps_fail_cleanly_on_quickly_compiled_code_too() {
    let cache = tempfile::tempdir().unwrap();
    // Every component is compiled quickly; nothing is optimized in the
    // background here (`true` does nothing): this test is about Winch's code.
    let quick = QuickCompile { program: "true".into(), args: Vec::new(), min_size: 0 };
    let config = SandboxConfig { cache_dir: Some(cache.path().to_path_buf()), quick_compile: Some(quick), ..SandboxConfig::default() };
    hostile_and_good_steps(Arc::new(Sandbox::new(config).unwrap()), Compiler::Winch).await;
}

/// Runs every hostile component beside good ones, all at once, on
/// `sandbox`, whose code for each is `compiler`'s: each fails with its
/// kind, the good ones return their outputs.
async fn hostile_and_good_steps(sandbox: Arc<Sandbox>, compiler: Compiler) {
    let short = Limits { timeout: Duration::from_millis(500), fuel: u64::MAX / 2, ..limits() };
    // (component, input, limits, expected kind or None for success)
    let cases: Vec<(std::path::PathBuf, Value, Limits, Option<FailureKind>)> = vec![
        (hostile("spin"), json!(null), Limits { fuel: 100_000_000, ..limits() }, Some(FailureKind::Fuel)),
        (hostile("spin"), json!(null), short.clone(), Some(FailureKind::Timeout)),
        (hostile("sleep"), json!(null), short.clone(), Some(FailureKind::Timeout)),
        (hostile("memory-bomb"), json!(null), limits(), Some(FailureKind::Memory)),
        (hostile("recurse"), json!(null), limits(), Some(FailureKind::Trap)),
        (hostile("panic"), json!(null), limits(), Some(FailureKind::Trap)),
        (hostile("bad-json"), json!(null), limits(), Some(FailureKind::Output)),
        (hostile("huge-output"), json!({"mib": 2}), Limits { max_output: 1 << 20, ..limits() }, Some(FailureKind::Output)),
        (hostile("read-file"), json!(null), limits(), Some(FailureKind::Component)),
        (hostile("read-env"), json!(null), limits(), Some(FailureKind::Component)),
        (hostile("fatal"), json!(null), limits(), Some(FailureKind::Component)),
        (hostile("flood"), json!({"mib": 2}), limits(), None),
        (hostile("host-bomb"), json!({"bomb": "blobs"}), Limits { quota: Quota { blob_bytes: 32 << 20, ..Quota::ATTEMPT }, ..limits() }, Some(FailureKind::Quota)),
        (hostile("host-bomb"), json!({"bomb": "state"}), limits(), Some(FailureKind::Quota)),
        (hostile("host-bomb"), json!({"bomb": "handles"}), limits(), Some(FailureKind::Quota)),
        (hostile("host-bomb"), json!({"bomb": "log", "lines": 100000}), limits(), None),
        (example("echo"), json!({"a": [1, 2, 3]}), limits(), None),
        (example("text"), json!({"op": "count", "text": "one two three"}), limits(), None),
        (example("math"), json!({"values": [1, 2, 3, 4]}), limits(), None),
        (example("json"), json!({"op": "merge", "values": [{"a": 1}, {"b": 2}]}), limits(), None),
    ];
    // Load (compile) first, as a workflow run does before any step starts:
    // compiling is CPU work that does not belong on the async workers.
    let cases: Vec<_> = cases
        .into_iter()
        .map(|(path, input, limits, expected)| (sandbox.load_file(&path).unwrap(), path, input, limits, expected))
        .collect();
    for (component, path, ..) in &cases {
        assert_eq!(component.compiler(), compiler, "{}", path.display());
    }
    let mut tasks = Vec::new();
    for (component, path, input, limits, expected) in cases {
        let sandbox = sandbox.clone();
        tasks.push(tokio::spawn(async move {
            let timeout = limits.timeout;
            let outcome = sandbox.run(&component, request(input, limits), &CancellationToken::new()).await;
            (path, timeout, expected, outcome)
        }));
    }
    let mut outputs = Vec::new();
    for task in tasks {
        let (path, timeout, expected, outcome): (_, _, _, StepOutcome) = task.await.unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert!(outcome.duration < timeout * 2, "{name} took {:?}, limit {timeout:?}", outcome.duration);
        match (expected, &outcome.result) {
            (Some(kind), Err(f)) => {
                assert_eq!(f.kind, kind, "{name}: {f}");
                assert!(!f.message.is_empty() && !f.message.contains('\n'), "{name}: one line: {f:?}");
            }
            (None, Ok(v)) => outputs.push((name.clone(), v.clone())),
            (expected, got) => panic!("{name}: expected {expected:?}, got {got:?}"),
        }
        // The escape attempts saw nothing: no file content, no variables.
        if name == "read-file.wasm" {
            let message = &outcome.result.as_ref().unwrap_err().message;
            assert!(message.starts_with("could not read /etc/passwd:") && !message.contains("root:"), "{message}");
        }
        if name == "read-env.wasm" {
            let message = &outcome.result.as_ref().unwrap_err().message;
            assert!(message.ends_with("(visible: [])"), "{message}");
        }
        if name == "flood.wasm" {
            let logged: usize = outcome.log.lines.iter().map(|l| l.text.len()).sum();
            assert!(logged <= Limits::default().quota.log as usize, "{logged}");
            assert!(outcome.log.dropped_bytes > 2 << 20, "{}", outcome.log.dropped_bytes);
        }
    }
    outputs.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        outputs,
        vec![
            ("echo.wasm".into(), json!({"a": [1, 2, 3]})),
            ("flood.wasm".into(), json!({"wrote_mib": 2})),
            ("host-bomb.wasm".into(), json!({"logged": 100000})),
            ("json.wasm".into(), json!({"a": 1, "b": 2})),
            ("math.wasm".into(), json!({"count": 4, "sum": 10.0, "mean": 2.5, "min": 1.0, "max": 4.0, "median": 2.5, "stddev": 1.118033988749895})),
            ("text.wasm".into(), json!({"chars": 13, "words": 3, "lines": 1})),
        ]
    );
}

#[tokio::test]
async fn a_non_retryable_error_keeps_its_flag() {
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
    let fatal = sandbox.load_file(&hostile("fatal")).unwrap();
    let failure = sandbox.run(&fatal, StepRequest::new(json!(1)), &CancellationToken::new()).await.result.unwrap_err();
    assert_eq!((failure.kind, failure.retryable), (FailureKind::Component, false));
    assert_eq!(failure.message, "the input can never be processed");
}

#[tokio::test]
async fn state_and_blobs_are_shared_through_host_services() {
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
    let kv = sandbox.load_file(&example("kv")).unwrap();
    let services = Arc::new(MemoryServices::new());
    let run = |input: Value| {
        let request = StepRequest { services: services.clone(), ..StepRequest::new(input) };
        let sandbox = &sandbox;
        let kv = kv.clone();
        async move { sandbox.run(&kv, request, &CancellationToken::new()).await }
    };
    let first = run(json!({"op": "set", "key": "count", "value": 1})).await;
    assert_eq!(first.result.unwrap(), json!({"key": "count", "previous": null}));
    assert_eq!(first.log.lines[0].text, "set count");
    let second = run(json!({"op": "set", "key": "count", "value": 2})).await;
    assert_eq!(second.result.unwrap(), json!({"key": "count", "previous": 1}));
    let put = run(json!({"op": "put_blob", "text": "hello"})).await.result.unwrap();
    let id = put["blob_id"].as_str().unwrap().to_string();
    assert_eq!(id, sandflow::sandbox::sha256_hex(b"hello"));
    let got = run(json!({"op": "get_blob", "blob_id": id})).await.result.unwrap();
    assert_eq!(got, json!({"text": "hello"}));
    let missing = run(json!({"op": "get_blob", "blob_id": "0000"})).await.result.unwrap_err();
    assert_eq!(missing.kind, FailureKind::Component);
}

#[tokio::test]
async fn describe_schemas_are_checked_by_the_host() {
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
    let math = sandbox.load_file(&example("math")).unwrap();
    let info = sandbox.describe(&math).await.unwrap().unwrap();
    assert_eq!((info.name.as_str(), info.version.as_str()), ("math", "0.1.0"));
    let bad = sandbox.run(&math, StepRequest::new(json!({"values": "1,2"})), &CancellationToken::new()).await;
    let failure = bad.result.unwrap_err();
    assert_eq!((failure.kind, failure.retryable), (FailureKind::Component, false));
    assert!(failure.message.starts_with("input does not match the component's input schema: /values:"), "{}", failure.message);
}

#[tokio::test]
async fn cancellation_interrupts_a_running_guest_quickly() {
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());
    let spin = sandbox.load_file(&hostile("spin")).unwrap();
    let cancel = CancellationToken::new();
    let limits = Limits { fuel: u64::MAX / 2, timeout: Duration::from_secs(60), ..Limits::default() };
    let task = {
        let (sandbox, cancel) = (sandbox.clone(), cancel.clone());
        tokio::spawn(async move { sandbox.run(&spin, request(json!(null), limits), &cancel).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = std::time::Instant::now();
    cancel.cancel();
    let outcome = task.await.unwrap();
    assert_eq!(outcome.result.unwrap_err().kind, FailureKind::Cancelled);
    assert!(asked.elapsed() < Duration::from_millis(100), "stopped {:?} after the cancel", asked.elapsed());
}

#[tokio::test]
async fn compiled_components_are_cached_on_disk_and_a_corrupt_artifact_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let config = || SandboxConfig { cache_dir: Some(dir.path().to_path_buf()), ..SandboxConfig::default() };
    let echo_bytes = std::fs::read(example("echo")).unwrap();
    let sha = sandflow::sandbox::sha256_hex(&echo_bytes);
    {
        let sandbox = Sandbox::new(config()).unwrap();
        sandbox.load_bytes("echo", &echo_bytes).unwrap();
    }
    let artifacts: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    let artifact = &artifacts[0];
    assert!(artifact.file_name().unwrap().to_string_lossy().starts_with(&sha));

    // A second process maps the artifact, it does not compile and write it again.
    use std::os::unix::fs::MetadataExt;
    let written = std::fs::metadata(artifact).unwrap();
    {
        let sandbox = Sandbox::new(config()).unwrap();
        let echo = sandbox.load_bytes("echo", &echo_bytes).unwrap();
        let out = sandbox.run(&echo, StepRequest::new(json!("from the cache")), &CancellationToken::new()).await;
        assert_eq!(out.result.unwrap(), json!("from the cache"));
    }
    let read = std::fs::metadata(artifact).unwrap();
    assert_eq!((read.ino(), read.mtime_nsec()), (written.ino(), written.mtime_nsec()), "the cached artifact was replaced");

    let good = std::fs::read(artifact).unwrap();
    let flipped = |at: usize| {
        let mut b = good.clone();
        b[at] ^= 0x40;
        b
    };
    // Each corruption is caught before the file is mapped as code: the
    // artifact is compiled again (and so written again, as it was).
    for (what, bytes) in [
        ("garbage", b"garbage".to_vec()),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("a flipped byte in the code", flipped(good.len() / 2)),
        ("a flipped byte in the checksum", flipped(good.len() - 2)),
        ("a flipped byte in the length", flipped(good.len() - 10)),
        ("a flipped byte in the magic", flipped(good.len() - 20)),
        ("the code without its checksum", good[..good.len() - 20].to_vec()),
        ("empty", Vec::new()),
    ] {
        std::fs::write(artifact, &bytes).unwrap();
        let sandbox = Sandbox::new(config()).unwrap();
        let echo = sandbox.load_bytes("echo", &echo_bytes).unwrap();
        let out = sandbox.run(&echo, StepRequest::new(json!("still works")), &CancellationToken::new()).await;
        assert_eq!(out.result.unwrap(), json!("still works"), "{what}");
        assert_eq!(std::fs::read(artifact).unwrap(), good, "{what}: the artifact was compiled and written again");
    }
}

/// A component's first load under `QuickCompile` runs on Winch's code and
/// starts a background process that writes Cranelift's into the cache;
/// the next sandbox (the next process) runs on that, with the same output
/// and fuel as a sandbox that never compiled quickly, and the quick code's
/// artifact is gone. One compiler per component per process: the first
/// sandbox keeps Winch's code after Cranelift's lands.
#[tokio::test]
async fn a_quick_first_compile_is_replaced_by_optimized_code_made_in_the_background() {
    let cache = tempfile::tempdir().unwrap();
    let quick = QuickCompile { program: env!("CARGO_BIN_EXE_sandflow").into(), args: vec!["compile-component".into()], min_size: 0 };
    let config = || SandboxConfig { cache_dir: Some(cache.path().to_path_buf()), quick_compile: Some(quick.clone()), max_instances: 4, ..SandboxConfig::default() };
    let bytes = std::fs::read(example("text")).unwrap();
    let input = || StepRequest::new(json!({"op": "count", "text": "one two three"}));
    let want = json!({"chars": 13, "words": 3, "lines": 1});

    let first = Sandbox::new(config()).unwrap();
    let text = first.load_bytes("text", &bytes).unwrap();
    assert_eq!(text.compiler(), Compiler::Winch);
    let quick_run = first.run(&text, input(), &CancellationToken::new()).await;
    assert_eq!(quick_run.result.unwrap(), want);

    // The background compile ends with Cranelift's artifact in place and
    // Winch's deleted: wait for that (an event on disk, not a duration).
    let files = || {
        let mut names: Vec<String> = std::fs::read_dir(cache.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    };
    let waited = std::time::Instant::now();
    while files().len() != 1 || files()[0].ends_with(".pending") {
        assert!(waited.elapsed() < Duration::from_secs(300), "no optimized artifact alone in the cache: {:?}", files());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sha = sandflow::sandbox::sha256_hex(&bytes);
    assert!(files()[0].starts_with(&sha) && files()[0].ends_with(".cwasm"), "{:?}", files());
    // This process keeps the code it started with.
    assert_eq!(first.load_bytes("text", &bytes).unwrap().compiler(), Compiler::Winch);

    let next = Sandbox::new(config()).unwrap();
    let text = next.load_bytes("text", &bytes).unwrap();
    assert_eq!(text.compiler(), Compiler::Cranelift, "the next process reads the optimized code");
    let optimized = next.run(&text, input(), &CancellationToken::new()).await;
    assert_eq!(optimized.result.unwrap(), want);
    let plain = Sandbox::new(SandboxConfig { max_instances: 4, ..SandboxConfig::default() }).unwrap();
    let text = plain.load_bytes("text", &bytes).unwrap();
    let reference = plain.run(&text, input(), &CancellationToken::new()).await;
    assert_eq!(optimized.fuel_used, reference.fuel_used, "Cranelift's code from the background meters as Cranelift's made here");
    // Winch meters at other points: close, not equal.
    let apart = (quick_run.fuel_used as f64 - reference.fuel_used as f64).abs() / reference.fuel_used as f64;
    assert!(apart < 0.05, "Winch {} against Cranelift {} fuel", quick_run.fuel_used, reference.fuel_used);
}

#[tokio::test]
async fn on_demand_and_pooling_allocators_both_run_steps() {
    use sandflow::sandbox::{AllocatorChoice, AllocatorKind};
    for (choice, kind) in [(AllocatorChoice::OnDemand, AllocatorKind::OnDemand), (AllocatorChoice::Pooling, AllocatorKind::Pooling)] {
        let sandbox = Sandbox::new(SandboxConfig { allocator: choice, max_instances: 8, ..SandboxConfig::default() }).unwrap();
        assert_eq!(sandbox.allocator(), kind);
        let echo = sandbox.load_file(&example("echo")).unwrap();
        let out = sandbox.run(&echo, StepRequest::new(json!([1])), &CancellationToken::new()).await;
        assert_eq!(out.result.unwrap(), json!([1]));
    }
}

/// Pool slots are reused and only the pages a step wrote are reset (see
/// `sandbox/engine.rs`). `snoop` checks that its data segment, its `.bss`,
/// pages it grows and fresh heap hold nothing an earlier step wrote, then
/// scribbles over all of them. Two slots shared with other components that
/// dirty memory (`memory-bomb` fills it until it is stopped), one at a time
/// and two at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_never_sees_what_an_earlier_step_left_in_its_slot() {
    let sandbox = Arc::new(Sandbox::new(SandboxConfig { max_instances: 2, ..SandboxConfig::default() }).unwrap());
    let snoop = sandbox.load_file(&hostile("snoop")).unwrap();
    let bomb = sandbox.load_file(&hostile("memory-bomb")).unwrap();
    let clean = json!({"counter": 7, "bss_dirty": 0, "grown_dirty": 0, "heap_dirty": 0});
    for round in 0..20 {
        let out = sandbox.run(&snoop, request(json!(null), limits()), &CancellationToken::new()).await;
        assert_eq!(out.result.unwrap(), clean, "round {round}, one at a time");
        if round % 5 == 0 {
            let out = sandbox.run(&bomb, request(json!(null), Limits { memory: 8 << 20, ..limits() }), &CancellationToken::new()).await;
            assert_eq!(out.result.unwrap_err().kind, FailureKind::Memory);
        }
    }
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let (sandbox, snoop) = (sandbox.clone(), snoop.clone());
        tasks.push(tokio::spawn(async move { sandbox.run(&snoop, request(json!(null), limits()), &CancellationToken::new()).await }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await.unwrap().result.unwrap(), clean, "concurrent step {i}");
    }
}

/// A full pool is never a step's failure: with the pool's slots all
/// taken, a slot freed by a step that just ended may still be queued for
/// reset, or being reset by another thread, when the next step asks for
/// one. That step waits for it. (Run as the scheduler runs steps: a task
/// each, two at a time, over a pool of four slots.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_that_fill_the_pool_wait_for_a_slot_being_reset_not_fail() {
    let sandbox = Arc::new(Sandbox::new(SandboxConfig { max_instances: 4, ..SandboxConfig::default() }).unwrap());
    let echo = sandbox.load_file(&example("echo")).unwrap();
    let mut running = tokio::task::JoinSet::new();
    for i in 0..40_000 {
        if running.len() == 2 {
            let (step, out): (usize, StepOutcome) = running.join_next().await.unwrap().unwrap();
            assert!(out.result.is_ok(), "step {step}: {:?}", out.result);
        }
        let (sandbox, echo) = (sandbox.clone(), echo.clone());
        running.spawn(async move { (i, sandbox.run(&echo, request(json!({ "n": i }), limits()), &CancellationToken::new()).await) });
    }
    while let Some(joined) = running.join_next().await {
        let (step, out) = joined.unwrap();
        assert!(out.result.is_ok(), "step {step}: {:?}", out.result);
    }
}
