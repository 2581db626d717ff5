//! The scheduler's one way to run a component: a [`StepRunner`]. A step
//! attempt is a [`Job`], plain data (the component's SHA-256, the input,
//! the limits and grants), so a runner may run it in this process (the
//! [`Sandbox`] is the local runner) or hand it to another machine; tests
//! use a fake runner and no wasm at all.

use crate::failure::{FailureKind, StepFailure};
use crate::sandbox::{CancellationToken, Grants, HostServices, Limits, LoadError, Sandbox, StepLog, StepOutcome, StepRequest};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// One attempt of a component step, as data.
#[derive(Debug, Clone)]
pub struct Job {
    /// The component's lowercase hex SHA-256, as [`Loader::load`] returned it.
    pub component: String,
    /// The step's input.
    pub input: Value,
    /// The component's static config (`config.get()`).
    pub config: Value,
    /// Fuel, memory, deadline and quotas of the attempt.
    pub limits: Limits,
    /// What it may reach of the host.
    pub grants: Grants,
}

/// What loading a component tells the scheduler.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Its lowercase hex SHA-256: how a [`Job`] names it.
    pub sha256: String,
    /// The interfaces it imports, with versions: checked against its grants
    /// before a run (wasi:http needs `grants.http`).
    pub imports: Vec<String>,
}

/// Checks components as a workflow is prepared: the one thing preparing
/// asks of a runner. [`ComponentCheck`] checks without compiling (what
/// `submit` and `serve` need to validate a run they do not run).
pub trait Loader: Send + Sync {
    /// Checks a component (it must be a step the runner can run) and makes
    /// it runnable by its SHA-256, which it returns with its imports.
    /// `origin` names it in messages.
    fn load(&self, origin: &str, bytes: &[u8]) -> Result<Loaded, LoadError>;
}

/// Loads components and runs step attempts.
#[async_trait::async_trait]
pub trait StepRunner: Loader {
    /// Runs one attempt. State and blobs go through `services`; `cancel`
    /// stops the attempt (kind `cancelled`).
    async fn run(&self, job: Job, services: Arc<dyn HostServices>, cancel: &CancellationToken) -> StepOutcome;
}

impl Loader for Sandbox {
    fn load(&self, origin: &str, bytes: &[u8]) -> Result<Loaded, LoadError> {
        self.load_bytes(origin, bytes).map(|c| Loaded { sha256: c.sha256().to_string(), imports: c.imports().to_vec() })
    }
}

#[async_trait::async_trait]
impl StepRunner for Sandbox {
    async fn run(&self, job: Job, services: Arc<dyn HostServices>, cancel: &CancellationToken) -> StepOutcome {
        let Some(component) = self.loaded(&job.component) else {
            let message = format!("component {} is not loaded in this process", job.component);
            return StepOutcome {
                result: Err(StepFailure::new(FailureKind::Instantiate, message)),
                fuel_used: 0,
                duration: Duration::ZERO,
                log: StepLog::default(),
            };
        };
        let request = StepRequest { input: job.input, config: job.config, limits: job.limits, grants: job.grants, services };
        Sandbox::run(self, &component, request, cancel).await
    }
}

/// Checks components without compiling them: each must be a valid
/// WebAssembly component that exports `run` and imports only what
/// sandflow links. What compiling adds (the exact types of `run` and of
/// each import) is checked where the run runs, as its components load.
/// Fast (a validating parse), and safe on untrusted bytes: nothing is
/// compiled, so a component built to be slow or huge to compile costs
/// nothing here.
///
/// It remembers the components it accepted, by SHA-256, so a long-lived
/// process that checks the same components again and again (`serve`, each
/// of whose submits names its components) parses each once: hashing a
/// component costs a fraction of a validating parse. Failures are not
/// remembered (their messages name where the bytes came from).
#[derive(Default)]
pub struct ComponentCheck {
    accepted: std::sync::Mutex<std::collections::HashMap<String, Vec<String>>>,
}

/// Components a [`ComponentCheck`] remembers at most; it starts over when
/// it is full.
const CHECKS_KEPT: usize = 256;

impl Loader for ComponentCheck {
    fn load(&self, origin: &str, bytes: &[u8]) -> Result<Loaded, LoadError> {
        let sha256 = crate::sandbox::sha256_hex(bytes);
        if let Some(imports) = crate::lock(&self.accepted).get(&sha256) {
            return Ok(Loaded { sha256, imports: imports.clone() });
        }
        // Hashed once: the check's own hash would be a second pass.
        let imports = crate::sandbox::checked_imports(origin, bytes)?;
        let mut accepted = crate::lock(&self.accepted);
        if accepted.len() >= CHECKS_KEPT {
            accepted.clear();
        }
        accepted.insert(sha256.clone(), imports.clone());
        Ok(Loaded { sha256, imports })
    }
}

impl<T: Loader + ?Sized> Loader for Arc<T> {
    fn load(&self, origin: &str, bytes: &[u8]) -> Result<Loaded, LoadError> {
        (**self).load(origin, bytes)
    }
}

/// A shared runner is a runner: `exec::load(path, &Arc::new(sandbox))`.
#[async_trait::async_trait]
impl<T: StepRunner + ?Sized> StepRunner for Arc<T> {

    async fn run(&self, job: Job, services: Arc<dyn HostServices>, cancel: &CancellationToken) -> StepOutcome {
        (**self).run(job, services, cancel).await
    }
}
