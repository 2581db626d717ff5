//! Sandbox benchmarks: compile time per example component (cold, and from
//! the on-disk artifact cache), instantiate + call of a trivial component
//! with the pooling and on-demand allocators, and instantiate + call of a
//! Rust, a JavaScript and a Python step.
//!
//! Run: `cargo bench -p sandflow --bench sandbox` (add `-- --quick` for a
//! short run; name sections to run only them: `-- languages compile`).
//! Figures are recorded in BENCHMARKS.md.

use sandflow::sandbox::{AllocatorChoice, CancellationToken, Sandbox, SandboxConfig, StepRequest};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../components/dist")
}

struct Stats {
    mean: Duration,
    p50: Duration,
    p99: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let n = samples.len();
    let total: Duration = samples.iter().sum();
    Stats { mean: total / n as u32, p50: samples[n / 2], p99: samples[(n * 99 / 100).min(n - 1)] }
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn compile_times(quick: bool) {
    println!("## Compile per example component (median of {} runs)\n", if quick { 1 } else { 3 });
    println!("| component | size | cold compile | from cache | speed-up |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let mut names: Vec<_> = std::fs::read_dir(dist())
        .expect("components/dist exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .collect();
    names.sort();
    let runs = if quick { 1 } else { 3 };
    for path in names {
        let bytes = std::fs::read(&path).unwrap();
        let cache = tempfile::tempdir().unwrap();
        let config = SandboxConfig { cache_dir: Some(cache.path().to_path_buf()), ..SandboxConfig::default() };
        let mut cold = Vec::new();
        for _ in 0..runs {
            let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
            let t = Instant::now();
            sandbox.compile_uncached(&bytes).unwrap();
            cold.push(t.elapsed());
        }
        // Fill the cache once, then time loads from it in fresh sandboxes
        // (a new process sees exactly this: nothing in memory, a file on disk).
        Sandbox::new(config.clone()).unwrap().load_bytes("bench", &bytes).unwrap();
        let mut cached = Vec::new();
        for _ in 0..runs.max(5) {
            let sandbox = Sandbox::new(config.clone()).unwrap();
            let t = Instant::now();
            sandbox.load_bytes("bench", &bytes).unwrap();
            cached.push(t.elapsed());
        }
        let (cold, cached) = (stats(cold).p50, stats(cached).p50);
        println!(
            "| {} | {} KiB | {} | {} | {:.0}× |",
            path.file_stem().unwrap().to_string_lossy(),
            bytes.len() / 1024,
            ms(cold),
            ms(cached),
            cold.as_secs_f64() / cached.as_secs_f64()
        );
    }
    println!();
}

fn instantiate_and_call(quick: bool) {
    let iterations = if quick { 500 } else { 5000 };
    println!("## Instantiate + call of `echo` ({iterations} sequential calls after 100 warm-up)\n");
    println!("| allocator | mean | p50 | p99 |");
    println!("| --- | ---: | ---: | ---: |");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    for (label, allocator) in [("pooling", AllocatorChoice::Pooling), ("on-demand", AllocatorChoice::OnDemand)] {
        let sandbox = Sandbox::new(SandboxConfig { allocator, ..SandboxConfig::default() }).unwrap();
        let echo = sandbox.load_file(&dist().join("echo.wasm")).unwrap();
        let cancel = CancellationToken::new();
        let input = serde_json::json!({"id": 1});
        let samples = runtime.block_on(async {
            let mut samples = Vec::with_capacity(iterations);
            for i in 0..iterations + 100 {
                let request = StepRequest::new(input.clone());
                let t = Instant::now();
                let outcome = sandbox.run(&echo, request, &cancel).await;
                let elapsed = t.elapsed();
                assert_eq!(outcome.result.unwrap(), input);
                if i >= 100 {
                    samples.push(elapsed);
                }
            }
            samples
        });
        let s = stats(samples);
        println!("| {label} | {} | {} | {} |", us(s.mean), us(s.p50), us(s.p99));
    }
    println!();
}

/// Per-step cost of a step in each guest language: instantiate + call of a
/// small real input, in a warm process (compiled, pooled).
fn languages(quick: bool) {
    let iterations = if quick { 30 } else { 300 };
    println!("## Instantiate + call per guest language ({iterations} sequential calls after 5 warm-up, pooling)\n");
    println!("| language | component | size | mean | p50 | p99 | fuel per call |");
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: |");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
    let cases = [
        ("Rust", "text", serde_json::json!({"op": "template", "template": "Hi {name}", "vars": {"name": "Ada"}})),
        ("JavaScript", "template", serde_json::json!({"template": "Hi {{ name }}", "data": {"name": "Ada"}})),
        ("Python", "textstats", serde_json::json!({"text": "Hello there. Hi again!"})),
    ];
    for (language, name, input) in cases {
        let path = dist().join(format!("{name}.wasm"));
        let size = std::fs::metadata(&path).unwrap().len();
        let component = sandbox.load_file(&path).unwrap();
        let cancel = CancellationToken::new();
        let (samples, fuel) = runtime.block_on(async {
            let (mut samples, mut fuel) = (Vec::with_capacity(iterations), 0);
            for i in 0..iterations + 5 {
                let t = Instant::now();
                let outcome = sandbox.run(&component, StepRequest::new(input.clone()), &cancel).await;
                let elapsed = t.elapsed();
                outcome.result.expect("the call succeeds");
                fuel = outcome.fuel_used;
                if i >= 5 {
                    samples.push(elapsed);
                }
            }
            (samples, fuel)
        });
        let s = stats(samples);
        println!(
            "| {language} | {name} | {:.1} MiB | {} | {} | {} | {fuel} |",
            size as f64 / (1 << 20) as f64,
            ms(s.mean),
            ms(s.p50),
            ms(s.p99)
        );
    }
    println!();
}

fn main() {
    // `cargo bench` passes `--bench`; anything else is ours.
    let quick = std::env::args().any(|a| a == "--quick");
    println!("# sandflow sandbox benchmarks\n");
    println!("{} cores; wasmtime 48; release build\n", std::thread::available_parallelism().map_or(0, |n| n.get()));
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let run = |section: &str| only.is_empty() || only.iter().any(|o| o == section);
    if run("call") {
        instantiate_and_call(quick);
    }
    if run("languages") {
        languages(quick);
    }
    if run("compile") {
        compile_times(quick);
    }
}
