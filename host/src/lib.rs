//! sandflow runs YAML workflows whose steps are sandboxed WebAssembly
//! components.
//!
//! - [`sandbox`]: runs one step component once, in a fresh, isolated store
//!   with a fuel budget, a deadline and a memory cap.
//! - [`failure`]: the typed ways a step attempt fails.
//! - [`exec`]: the scheduler, over a [`exec::StepRunner`].
//! - [`store`]: the run store (SQLite or PostgreSQL).
//! - [`runs`]: runs recorded in a store: start and resume.
//! - [`trace`]: OpenTelemetry traces of runs (`--otlp`).
//! - [`metrics`]: the Prometheus text of `/metrics`.

// Every public item says what it is: the library is embedded (see
// examples/embed.rs), and its users read rustdoc, not the source.
#![deny(missing_docs)]

pub mod cron;
pub mod expr;
pub mod exec;
pub mod failure;
pub mod metrics;
#[doc(hidden)]
pub mod fuzzing;
pub mod plan;
pub mod runs;
pub mod worker;
pub mod sandbox;
pub mod store;
pub mod trace;
pub mod units;
pub mod workflow;

/// Locks `m`, also when another thread panicked while holding it: every
/// value sandflow guards stays valid between statements (a log, a map, a
/// connection), so a poisoned lock is still safe to use.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
