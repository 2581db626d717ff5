//! Workflow benchmarks: plan time for large chain and wide workflows, and
//! the scheduler's throughput and per-step overhead over a raw
//! instantiate + call.
//!
//! Run: `cargo bench -p sandflow --bench workflow`. Figures are recorded in
//! BENCHMARKS.md.

use sandflow::exec::{self, Executor, NoEvents, RunOptions, RunState};
use sandflow::plan::Plan;
use sandflow::sandbox::{CancellationToken, Sandbox, SandboxConfig, StepRequest};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn echo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../components/dist/echo.wasm").canonicalize().unwrap()
}

/// `n` steps of the echo component; in a chain each reads the one before.
fn workflow(n: usize, chain: bool) -> String {
    let mut y = format!("components:\n  echo: {{ path: '{}' }}\nsteps:\n", echo().display());
    for i in 0..n {
        let input = if chain && i > 0 { format!("{{ $from: {{ step: s{} }}, path: n }}", i - 1) } else { format!("{{ n: {i} }}") };
        let _ = writeln!(y, "  - {{ id: s{i}, component: echo, input: {{ n: {input} }} }}");
    }
    y
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn plan_times() {
    println!("## Parse + plan (median of 5)\n");
    println!("| workflow | steps | parse | plan | total |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (label, chain) in [("chain", true), ("wide", false)] {
        let n = 10_000;
        let text = workflow(n, chain);
        let (mut parse, mut plan) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            let t = Instant::now();
            let wf = sandflow::workflow::load_str(Path::new("bench.yaml"), &text).unwrap();
            parse.push(t.elapsed());
            let t = Instant::now();
            let p = Plan::new(wf).unwrap();
            plan.push(t.elapsed());
            assert_eq!(p.deps.len(), n);
        }
        let (parse, plan) = (median(parse), median(plan));
        println!("| {label} | {n} | {} | {} | {} |", ms(parse), ms(plan), ms(parse + plan));
    }
    println!();
}

fn throughput() {
    let n = 2000;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());
    let component = sandbox.load_file(&echo()).unwrap();

    // The raw figure: sequential instantiate + call through the sandbox.
    let raw = runtime.block_on(async {
        for _ in 0..100 {
            sandbox.run(&component, StepRequest::new(serde_json::json!({"n": 1})), &CancellationToken::new()).await;
        }
        let t = Instant::now();
        for i in 0..n {
            let out = sandbox.run(&component, StepRequest::new(serde_json::json!({"n": i})), &CancellationToken::new()).await;
            assert!(out.result.is_ok());
        }
        t.elapsed() / n as u32
    });

    // The same loop as one task on a runtime worker, where steps run.
    let raw_on_worker = runtime.block_on({
        let (sandbox, component) = (sandbox.clone(), component.clone());
        async move {
            tokio::spawn(async move {
                let t = Instant::now();
                for i in 0..n {
                    let out = sandbox.run(&component, StepRequest::new(serde_json::json!({"n": i})), &CancellationToken::new()).await;
                    assert!(out.result.is_ok());
                }
                t.elapsed() / n as u32
            })
            .await
            .unwrap()
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wide.yaml");
    std::fs::write(&file, workflow(n, false)).unwrap();
    let prepared = Arc::new(exec::load(&file, &sandbox).unwrap());
    let executor = Executor::new(sandbox.clone(), Arc::new(NoEvents));
    println!("## Scheduler: a {n}-step wide workflow of `echo`\n");
    println!(
        "Raw instantiate + call, sequential: {:.1} µs per step on the main thread, {:.1} µs in a task on a runtime worker.\n",
        raw.as_secs_f64() * 1e6,
        raw_on_worker.as_secs_f64() * 1e6
    );
    println!("| concurrency | run time | steps/s | per step | overhead over raw |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for concurrency in [1, cores] {
        let mut times = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let report = runtime.block_on(executor.run(
                prepared.clone(),
                serde_json::json!({}),
                RunOptions { concurrency: Some(concurrency), ..RunOptions::default() },
                CancellationToken::new(),
            ));
            times.push(t.elapsed());
            assert_eq!(report.state, RunState::Completed);
        }
        let total = median(times);
        let per_step = total / n as u32;
        // With c workers, c steps share the wall clock: compare core time.
        let core_per_step = per_step * concurrency.min(cores) as u32;
        println!(
            "| {concurrency} | {} | {:.0} | {:.1} µs | {:+.0}% |",
            ms(total),
            n as f64 / total.as_secs_f64(),
            core_per_step.as_secs_f64() * 1e6,
            (core_per_step.as_secs_f64() / raw.as_secs_f64() - 1.0) * 100.0
        );
    }
    println!();
}

/// Peak resident memory of this process (`VmHWM`), in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn for_each() {
    let n = 10_000;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("each.yaml");
    let yaml = format!(
        "components:\n  echo: {{ path: '{}' }}\nsteps:\n  - {{ id: each, component: echo, forEach: '{{{{ inputs.items }}}}', input: {{ n: '{{{{ item }}}}', i: '{{{{ index }}}}' }} }}\n",
        echo().display()
    );
    std::fs::write(&file, yaml).unwrap();
    let prepared = Arc::new(exec::load(&file, &sandbox).unwrap());
    let executor = Executor::new(sandbox.clone(), Arc::new(NoEvents));
    let items: Vec<u64> = (0..n as u64).collect();
    let before = peak_rss_mib();
    let t = Instant::now();
    let report = runtime.block_on(executor.run(
        prepared,
        serde_json::json!({ "items": items }),
        RunOptions::default(),
        CancellationToken::new(),
    ));
    let elapsed = t.elapsed();
    assert_eq!(report.state, RunState::Completed);
    assert_eq!(report.output.as_ref().and_then(|o| o.as_array()).map(Vec::len), Some(n));
    println!("## forEach over {n} items of `echo` (default item concurrency: the CPU count)\n");
    println!("| run time | items/s | peak RSS of the process | before the run |");
    println!("| ---: | ---: | ---: | ---: |");
    println!(
        "| {} | {:.0} | {:.0} MiB | {:.0} MiB |\n",
        ms(elapsed),
        n as f64 / elapsed.as_secs_f64(),
        peak_rss_mib(),
        before
    );
}

fn store_cost() {
    use sandflow::runs::{Recorder, Settings};
    use sandflow::store::{StoreUrl, open};
    let n = 2000;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wide.yaml");
    std::fs::write(&file, workflow(n, false)).unwrap();
    let prepared = Arc::new(exec::load(&file, &sandbox).unwrap());
    let store = runtime.block_on(open(&StoreUrl::default_for(&dir.path().join("state")))).unwrap();
    let recorder = Recorder { store, runner: sandbox.clone() };
    let mut memory = Vec::new();
    let mut sqlite = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let report = runtime.block_on(Executor::new(sandbox.clone(), Arc::new(NoEvents)).run(
            prepared.clone(),
            serde_json::json!({}),
            RunOptions::default(),
            CancellationToken::new(),
        ));
        memory.push(t.elapsed());
        assert_eq!(report.state, RunState::Completed);

        let t = Instant::now();
        let report = runtime
            .block_on(recorder.start(prepared.clone(), &file, serde_json::json!({}), Settings::default(), Arc::new(NoEvents), CancellationToken::new()))
            .unwrap();
        sqlite.push(t.elapsed());
        assert_eq!(report.state, RunState::Completed);
    }
    let (memory, sqlite) = (median(memory), median(sqlite));
    println!("## The run store: a {n}-step wide workflow of `echo` (median of 3)\n");
    println!("| store | run time | steps/s |");
    println!("| --- | ---: | ---: |");
    println!("| in memory (no events kept) | {} | {:.0} |", ms(memory), n as f64 / memory.as_secs_f64());
    println!("| SQLite, group commit, barrier before dependents | {} | {:.0} |", ms(sqlite), n as f64 / sqlite.as_secs_f64());
    println!("\nThe store costs {:+.0}%.\n", (sqlite.as_secs_f64() / memory.as_secs_f64() - 1.0) * 100.0);
}

fn main() {
    println!("# sandflow workflow benchmarks\n");
    // `cargo bench --bench workflow -- plan` runs only the sections named
    // (for a profile of one: `perf record` the bench binary with them).
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    // First, so the process's peak memory is the forEach run's.
    if wanted("foreach") {
        for_each();
    }
    if wanted("plan") {
        plan_times();
    }
    if wanted("throughput") {
        throughput();
    }
    if wanted("store") {
        store_cost();
    }
}
