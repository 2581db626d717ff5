//! The process-wide wasmtime [`Engine`]: component model, fuel metering,
//! epoch interruption driven by one ticker thread, a bounded wasm stack, and
//! the pooling allocator where the platform allows it; and, for a sandbox
//! that compiles new components quickly first ([`super::QuickCompile`]), a
//! second engine like it whose compiler is Winch.

use std::sync::{Arc, Mutex};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances. A running guest yields to the async
/// executor at every tick, so this bounds how late a deadline or a
/// cancellation is noticed.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Most bytes of wasm stack a guest may use; deeper recursion traps.
pub const MAX_WASM_STACK: usize = 1 << 20;

/// Which instance allocator to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AllocatorChoice {
    /// Pooling if the platform allows it (enough virtual memory), else on-demand.
    #[default]
    Auto,
    /// Pooling, or fail.
    Pooling,
    /// Allocate each instance's memory with mmap when it is created.
    OnDemand,
}

/// The allocator an engine ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocatorKind {
    /// Instances come from a pool of slots reserved up front (the default).
    Pooling,
    /// Each instance is allocated when made (the pool could not be reserved).
    OnDemand,
}

impl AllocatorKind {
    /// Its name, as `sandflow inspect` and the metrics say it.
    pub fn as_str(self) -> &'static str {
        match self {
            AllocatorKind::Pooling => "pooling",
            AllocatorKind::OnDemand => "on-demand",
        }
    }
}

fn base_config() -> Config {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .consume_fuel(true)
        .epoch_interruption(true)
        .max_wasm_stack(MAX_WASM_STACK)
        // The fiber stack holds the wasm stack plus host calls made from it.
        .async_stack_size(MAX_WASM_STACK + (1 << 20))
        .cranelift_opt_level(wasmtime::OptLevel::Speed);
    config
}

/// Pool slots: `instances` component instances at once, each with the core
/// instances, memories and tables a wasi-p2 Rust component needs.
/// `reset_dirty_pages`: whether the kernel tells which pages a step wrote
/// (`PAGEMAP_SCAN`, Linux 6.7+).
fn pooling_config(instances: u32, reset_dirty_pages: bool) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(instances)
        .total_core_instances(instances * 8)
        .max_core_instances_per_component(16)
        .total_memories(instances * 2)
        .max_memories_per_component(2)
        .total_tables(instances * 4)
        .max_tables_per_component(4)
        .total_stacks(instances)
        // Any memory cap up to the wasm32 limit fits a slot; the per-step
        // cap is enforced by the store's limiter.
        .max_memory_size(4 << 30)
        // Freeing a slot decommits its pages with madvise, which in a
        // multi-threaded process costs TLB-shootdown interrupts on every
        // other core, and the next step faults them back in. Batch the
        // decommits, and reset pages in place instead where possible
        // (measured in BENCHMARKS.md). A batch is at most a quarter of the
        // pool: slots waiting in it are slots no step can take.
        .decommit_batch_size((instances as usize / 4).clamp(1, 32))
        .async_stack_keep_resident(64 << 10);
    if reset_dirty_pages {
        // Only the pages a step wrote are reset, by copy, and stay
        // resident for the next step in the slot, up to a budget that
        // holds an interpreter's heap.
        pool.pagemap_scan(wasmtime::Enabled::Yes).linear_memory_keep_resident(32 << 20).table_keep_resident(1 << 20);
    } else {
        // Without it, the first pages of a slot are reset with memset
        // whether written or not: only a few.
        pool.linear_memory_keep_resident(128 << 10).table_keep_resident(16 << 10);
    }
    pool
}

/// Which of wasmtime's compilers made a component's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compiler {
    /// Cranelift, the optimizing compiler: what every component runs on
    /// unless a sandbox was asked to compile new ones quickly first.
    Cranelift,
    /// Winch, wasmtime's baseline compiler: it compiles an interpreter
    /// component 5-6× faster, and its code runs 10-40% slower and meters
    /// fuel at slightly different points (a call's fuel differs by about
    /// 1%). Used only for a component's first runs under
    /// [`super::QuickCompile`].
    Winch,
}

impl Compiler {
    /// Its name, as `sandflow call --json` says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Compiler::Cranelift => "cranelift",
            Compiler::Winch => "winch",
        }
    }
}

/// Builds the engine, falling back from pooling to on-demand under `Auto`.
pub(crate) fn new_engine(
    choice: AllocatorChoice,
    instances: u32,
) -> wasmtime::Result<(Engine, AllocatorKind)> {
    if choice != AllocatorChoice::OnDemand {
        let mut config = base_config();
        let reset_dirty_pages = PoolingAllocationConfig::is_pagemap_scan_available();
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(instances, reset_dirty_pages)));
        // With dirty pages reset in place, map a component's data
        // copy-on-write: a slot reused by the same component keeps the
        // pages it did not write mapped, and the written ones resident,
        // so a JavaScript or Python step's 10-20 MB heap image is neither
        // copied nor faulted in again (2× faster per call). Without it,
        // copy the data into the slot's resident pages instead: every CoW
        // fault would flush the TLB on every core running a step.
        config.memory_init_cow(reset_dirty_pages);
        match Engine::new(&config) {
            Ok(engine) => return Ok((engine, AllocatorKind::Pooling)),
            Err(e) if choice == AllocatorChoice::Pooling => return Err(e),
            Err(e) => tracing::info!("pooling allocator unavailable, using on-demand: {e}"),
        }
    }
    Ok((Engine::new(&base_config())?, AllocatorKind::OnDemand))
}

/// The engine a sandbox runs quickly compiled components on: the same
/// settings as [`new_engine`]'s (fuel, epochs, stack, `memory_init_cow` as
/// that engine has it), Winch as the compiler, and instances allocated on
/// demand (a second instance pool would reserve as much address space
/// again, for the few runs before Cranelift's code is cached).
pub(crate) fn quick_engine(memory_init_cow: bool) -> wasmtime::Result<Engine> {
    compiling_engine(memory_init_cow, Compiler::Winch)
}

/// An engine that compiles exactly as one from [`new_engine`] (or
/// [`quick_engine`], for Winch) does (the same settings; `memory_init_cow`
/// as that engine has it), without an instance pool: what a compiling
/// child process needs ([`super::compile`]), whose address space is capped.
pub(crate) fn compiling_engine(memory_init_cow: bool, compiler: Compiler) -> wasmtime::Result<Engine> {
    let mut config = base_config();
    config.memory_init_cow(memory_init_cow);
    if compiler == Compiler::Winch {
        config.strategy(wasmtime::Strategy::Winch);
    }
    Engine::new(&config)
}

/// Advances its engines' epochs every [`EPOCH_TICK`] until dropped.
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
    engines: Arc<Mutex<Vec<wasmtime::EngineWeak>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    pub(crate) fn start(engine: &Engine) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let engines = Arc::new(Mutex::new(vec![engine.weak()]));
        let (flag, ticked) = (stop.clone(), engines.clone());
        let thread = std::thread::Builder::new().name("sandflow-epoch".into()).spawn(move || {
            // Parked, not asleep: dropping the ticker unparks it, so a
            // process does not wait out a tick before it can exit (a
            // one-step `sandflow call` spent 2.5 ms on average doing so).
            // A spurious wake-up only advances the epoch early: harmless.
            loop {
                std::thread::park_timeout(EPOCH_TICK);
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                // An engine gone means its sandbox is being dropped.
                for engine in crate::lock(&ticked).iter() {
                    match engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            }
        })?;
        Ok(EpochTicker { stop, engines, thread: Some(thread) })
    }

    /// Ticks `engine` too, from the next tick on (a sandbox's Winch
    /// engine, made when it is first needed).
    pub(crate) fn add(&self, engine: &Engine) {
        crate::lock(&self.engines).push(engine.weak());
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}
