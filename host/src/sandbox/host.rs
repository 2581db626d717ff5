//! What a step's store holds, and the host side of the `sandflow:step`
//! imports (log, state, blobs, config). State and blobs go through
//! [`HostServices`], so the same component runs against an in-memory store
//! (`sandflow call`) or a run's durable store.

use super::bindings::sandflow::step::{blobs, config, log, state, types};
use super::log::{LogSink, LogSource};
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

/// Where run-scoped key-value state and blobs live. Implementations must be
/// cheap to call from inside a running guest.
pub trait HostServices: Send + Sync {
    /// The JSON text stored under `key`.
    fn state_get(&self, key: &str) -> Option<String>;
    /// Stores JSON text (already checked to be valid JSON) under `key`.
    fn state_set(&self, key: &str, json: &str) -> Result<(), String>;
    /// Stores `data` under `id` (its hex SHA-256, computed by the caller).
    fn blob_put(&self, id: &str, data: &[u8]) -> Result<(), String>;
    /// The bytes stored under `id`.
    fn blob_get(&self, id: &str) -> Option<Vec<u8>>;
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

impl HostServices for MemoryServices {
    fn state_get(&self, key: &str) -> Option<String> {
        crate::lock(&self.state).get(key).cloned()
    }
    fn state_set(&self, key: &str, json: &str) -> Result<(), String> {
        crate::lock(&self.state).insert(key.to_string(), json.to_string());
        Ok(())
    }
    fn blob_put(&self, id: &str, data: &[u8]) -> Result<(), String> {
        crate::lock(&self.blobs).entry(id.to_string()).or_insert_with(|| data.to_vec());
        Ok(())
    }
    fn blob_get(&self, id: &str) -> Option<Vec<u8>> {
        crate::lock(&self.blobs).get(id).cloned()
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

impl log::Host for StepState {
    fn log(&mut self, level: log::Level, message: String) {
        let source = match level {
            log::Level::Trace => LogSource::Trace,
            log::Level::Debug => LogSource::Debug,
            log::Level::Info => LogSource::Info,
            log::Level::Warn => LogSource::Warn,
            log::Level::Error => LogSource::Error,
        };
        self.log.line(source, &message);
    }
}

impl state::Host for StepState {
    fn get(&mut self, key: String) -> Option<String> {
        if key.len() > MAX_STATE_KEY {
            return None;
        }
        self.services.state_get(&key)
    }

    fn set(&mut self, key: String, value: String) -> Result<(), String> {
        if key.len() > MAX_STATE_KEY {
            return Err(format!("state key is {} bytes; the limit is {MAX_STATE_KEY}", key.len()));
        }
        if value.len() > MAX_STATE_VALUE {
            return Err(format!(
                "state value for `{key}` is {} bytes; the limit is {MAX_STATE_VALUE}",
                value.len()
            ));
        }
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&value) {
            return Err(format!("state value for `{key}` is not valid JSON: {e}"));
        }
        self.services.state_set(&key, &value)
    }
}

impl blobs::Host for StepState {
    fn put(&mut self, data: Vec<u8>) -> Result<String, String> {
        if data.len() > MAX_BLOB {
            return Err(format!("blob is {} bytes; the limit is {MAX_BLOB}", data.len()));
        }
        let id = sha256_hex(&data);
        self.services.blob_put(&id, &data)?;
        Ok(id)
    }

    fn get(&mut self, id: String) -> Option<Vec<u8>> {
        self.services.blob_get(&id)
    }
}

impl config::Host for StepState {
    fn get(&mut self) -> String {
        self.config_json.to_string()
    }
}
