//! What a step's store holds, and the host side of the `sandflow:step`
//! imports (log, state, blobs, config). State and blobs go through
//! [`HostServices`], so the same component runs against an in-memory store
//! (`sandflow call`) or a run's durable store.

use super::bindings::sandflow::step::{blobs, config, log, state, types};
use super::log::{LogSink, LogSource};
use super::quota::{AttemptMeter, QuotaExceeded};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Largest value `state.set` accepts, in bytes of JSON text.
pub const MAX_STATE_VALUE: usize = 1 << 20;
/// Longest key `state.get`/`state.set` accepts, in bytes.
pub const MAX_STATE_KEY: usize = 1024;
/// Largest blob `blobs.put` accepts, in bytes.
pub const MAX_BLOB: usize = 64 << 20;

/// Where run-scoped key-value state and blobs live: in memory, or in the
/// run store (which may be a server on another machine, so every call is
/// async and may fail).
#[async_trait::async_trait]
pub trait HostServices: Send + Sync {
    /// The JSON text stored under `key`.
    async fn state_get(&self, key: &str) -> Result<Option<String>, HostError>;
    /// Stores JSON text (already checked to be valid JSON) under `key`.
    async fn state_set(&self, key: &str, json: &str) -> Result<(), HostError>;
    /// Stores `data` under `id` (its hex SHA-256, computed by the caller).
    async fn blob_put(&self, id: &str, data: &[u8]) -> Result<(), HostError>;
    /// The bytes stored under `id`.
    async fn blob_get(&self, id: &str) -> Result<Option<Vec<u8>>, HostError>;
    /// How many state keys there are and their bytes (keys and values):
    /// what a run's state quota starts from.
    async fn state_usage(&self) -> Result<(u64, u64), HostError>;
    /// Stores JSON text under `key` unless the state would then hold more
    /// than `max_keys` keys or `max_bytes` bytes (keys and values), checked
    /// and written as one step by whatever keeps the state, so that every
    /// process writing a run's state (workers) counts against one quota.
    /// `Ok(None)`: this kind does not check (the run's state is written by
    /// one process, which counts it: see [`super::RunMeter`]); `Ok(Some(Err(kind)))`:
    /// over that quota, nothing written.
    async fn state_set_within(&self, key: &str, json: &str, max_keys: u64, max_bytes: u64) -> Result<Option<Result<(), super::QuotaKind>>, HostError> {
        let _ = (key, json, max_keys, max_bytes);
        Ok(None)
    }

    /// Stores blob `id` as [`HostServices::blob_put`] does, unless the run
    /// would then hold more than `max_blobs` distinct blobs or `max_bytes`
    /// bytes of them (a blob it put before is free), checked and written
    /// as one step by whatever keeps the blobs, so that every process
    /// running a run's steps (workers) counts against one quota. `Ok(None)`:
    /// this kind does not check (one process runs the run, and counts it:
    /// see [`super::RunMeter`]); `Ok(Some(Err(kind)))`: over that quota,
    /// nothing written.
    async fn blob_put_within(&self, id: &str, data: &[u8], max_blobs: u64, max_bytes: u64) -> Result<Option<Result<(), super::QuotaKind>>, HostError> {
        let _ = (id, data, max_blobs, max_bytes);
        Ok(None)
    }

    /// A line the step just put in its log, as it is kept (`seq`: its
    /// index in the attempt's log), for following a running step. Called on
    /// the step's thread with the log locked, so it must not block or
    /// call back; the finished log comes with the outcome whatever this
    /// does. Lines past the log quota never come here. The default ignores it.
    fn log_line(&self, seq: usize, line: &super::LogLine) {
        let _ = (seq, line);
    }
}

/// Why state or a blob was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// Over a quota: the step fails with kind `quota`.
    #[error(transparent)]
    Quota(#[from] QuotaExceeded),
    /// The host could not store it (e.g. the run store failed); the guest
    /// gets this message as the import's error.
    #[error("{0}")]
    Failed(String),
}

/// State and blobs in memory, for one process. Used by `sandflow call` and tests.
#[derive(Default)]
pub struct MemoryServices {
    state: Mutex<HashMap<String, String>>,
    blobs: Mutex<HashMap<String, Vec<u8>>>,
}

impl MemoryServices {
    /// Empty state, no blobs.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait::async_trait]
impl HostServices for MemoryServices {
    async fn state_get(&self, key: &str) -> Result<Option<String>, HostError> {
        Ok(crate::lock(&self.state).get(key).cloned())
    }
    async fn state_set(&self, key: &str, json: &str) -> Result<(), HostError> {
        crate::lock(&self.state).insert(key.to_string(), json.to_string());
        Ok(())
    }
    async fn blob_put(&self, id: &str, data: &[u8]) -> Result<(), HostError> {
        crate::lock(&self.blobs).entry(id.to_string()).or_insert_with(|| data.to_vec());
        Ok(())
    }
    async fn blob_get(&self, id: &str) -> Result<Option<Vec<u8>>, HostError> {
        Ok(crate::lock(&self.blobs).get(id).cloned())
    }
    async fn state_usage(&self) -> Result<(u64, u64), HostError> {
        let state = crate::lock(&self.state);
        Ok((state.len() as u64, state.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum()))
    }
}

/// The lowercase hex SHA-256 of `data`: the id of a blob, the key of a component.
pub fn sha256_hex(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The data of one step attempt's store.
pub(crate) struct StepState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryCap,
    pub(crate) log: LogSink,
    pub(crate) config_json: Arc<str>,
    pub(crate) services: Arc<dyn HostServices>,
    /// This attempt's use of its quota.
    pub(crate) meter: AttemptMeter,
    /// wasi:http: the context and the allow-list hooks of this attempt.
    pub(crate) http: wasmtime_wasi_http::WasiHttpCtx,
    pub(crate) http_hooks: super::http::HttpHooks,
}

impl wasmtime_wasi_http::WasiHttpView for StepState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.http_hooks }
    }
}

impl WasiView for StepState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Enforces the memory cap. A denied growth is remembered, so that a trap
/// that follows it (Rust aborts when an allocation fails) is reported as
/// kind `memory`, while a guest that copes with the refusal runs on.
pub(crate) struct MemoryCap {
    pub(crate) cap: usize,
    pub(crate) denied: Option<usize>,
}

/// Most table elements an instance may have; far above what real guests use.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.denied = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

impl types::Host for StepState {}

// Every import is trappable: going over a quota returns a `QuotaExceeded`
// error, which ends the call (kind `quota`) whether or not the guest would
// have looked at an error result.

impl log::Host for StepState {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let source = match level {
            log::Level::Trace => LogSource::Trace,
            log::Level::Debug => LogSource::Debug,
            log::Level::Info => LogSource::Info,
            log::Level::Warn => LogSource::Warn,
            log::Level::Error => LogSource::Error,
        };
        self.log.line(source, &message);
        Ok(())
    }
}

/// A store's answer to the guest: a quota trap, or a result it sees.
fn to_guest(result: Result<(), HostError>) -> wasmtime::Result<Result<(), String>> {
    match result {
        Ok(()) => Ok(Ok(())),
        Err(HostError::Quota(q)) => Err(q.into()),
        Err(HostError::Failed(message)) => Ok(Err(message)),
    }
}

// `state` and `blobs` are async imports: the run store may be a server.
// A store that cannot answer a `get` traps the call (the step fails, and
// may be retried) rather than telling the guest the key is absent.

impl state::Host for StepState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        if key.len() > MAX_STATE_KEY {
            return Ok(None);
        }
        let services = self.services.clone();
        services.state_get(&key).await.map_err(unreadable)
    }

    async fn set(&mut self, key: String, value: String) -> wasmtime::Result<Result<(), String>> {
        if key.len() > MAX_STATE_KEY {
            return Ok(Err(format!("state key is {} bytes; the limit is {MAX_STATE_KEY}", key.len())));
        }
        if value.len() > MAX_STATE_VALUE {
            return Ok(Err(format!(
                "state value for `{key}` is {} bytes; the limit is {MAX_STATE_VALUE}",
                value.len()
            )));
        }
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&value) {
            return Ok(Err(format!("state value for `{key}` is not valid JSON: {e}")));
        }
        self.meter.set_state(&key, value.len())?;
        let services = self.services.clone();
        to_guest(services.state_set(&key, &value).await)
    }
}

impl blobs::Host for StepState {
    async fn put(&mut self, data: Vec<u8>) -> wasmtime::Result<Result<String, String>> {
        if data.len() > MAX_BLOB {
            return Ok(Err(format!("blob is {} bytes; the limit is {MAX_BLOB}", data.len())));
        }
        let id = sha256_hex(&data);
        self.meter.put_blob(&id, data.len())?;
        let services = self.services.clone();
        Ok(to_guest(services.blob_put(&id, &data).await)?.map(|()| id))
    }

    async fn get(&mut self, id: String) -> wasmtime::Result<Option<Vec<u8>>> {
        let services = self.services.clone();
        services.blob_get(&id).await.map_err(unreadable)
    }
}

/// A read the store could not answer, as a trap that ends the attempt.
fn unreadable(e: HostError) -> wasmtime::Error {
    match e {
        HostError::Quota(q) => q.into(),
        HostError::Failed(message) => wasmtime::Error::msg(StoreUnavailable(message)),
    }
}

/// The run store failed under a `state` or `blobs` import.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct StoreUnavailable(pub(crate) String);

impl config::Host for StepState {
    fn get(&mut self) -> wasmtime::Result<String> {
        Ok(self.config_json.to_string())
    }
}
