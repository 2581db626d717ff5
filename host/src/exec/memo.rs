//! Memoization (`cache: { ttl }`, Argo's `memoize`): a component step's
//! succeeded result, stored in the run store under a key of everything it
//! depends on, is reused by later runs on the same store instead of
//! running the component again.

use super::redact::{Redactor, SecretSpans, unmask};
use crate::failure::{FailureKind, StepFailure};
use crate::sandbox::HostError;
use crate::workflow::CacheSpec;
use super::PreparedComponent;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// Where memoized results are kept: the run store, for runs in one
/// process and on workers alike.
#[async_trait::async_trait]
pub trait Memos: Send + Sync {
    /// The stored result under a memoization key, unless it expired.
    async fn memo_get(&self, key: &str) -> Result<Option<MemoHit>, HostError>;
    /// Stores (or replaces) a memoized result.
    async fn memo_put(&self, entry: &MemoEntry) -> Result<(), HostError>;
}

/// A memoized step result (`cache:`), as stored: its output with secrets
/// masked, and where.
#[derive(Debug, Clone)]
pub struct MemoHit {
    /// The output, secrets masked.
    pub output: Value,
    /// Where secrets were masked in it.
    pub secrets: Option<SecretSpans>,
    /// The run that stored it.
    pub run_id: String,
}

/// What a succeeded step stores for later runs.
#[derive(Debug, Clone)]
pub struct MemoEntry {
    /// The SHA-256 of what the result depends on (see [`memo_key`]):
    /// never a secret in clear text.
    pub key: String,
    /// The workflow's name.
    pub workflow: String,
    /// The step's id.
    pub step: String,
    /// The component's SHA-256.
    pub component: String,
    /// The run that stores it.
    pub run_id: String,
    /// The output, secrets masked.
    pub output: Value,
    /// Where secrets were masked in it.
    pub secrets: Option<SecretSpans>,
    /// Seconds since the Unix epoch after which it is not reused.
    pub expires_at: f64,
}

/// The key a result is stored under: the SHA-256 of the component's
/// SHA-256, its config, the step's resolved input (or, with `cache.key`,
/// that value, which reads the input as `input`) and its grants (names of
/// granted variables, granted directories, allowed HTTP hosts). A secret is part of the key
/// only through the hash, never in clear text.
pub fn memo_key(component: &PreparedComponent, input: &Value, spec: &CacheSpec, secrets: &BTreeMap<String, String>) -> Result<String, StepFailure> {
    let dirs: Vec<Value> = component.dirs.iter().map(|d| json!([d.host.display().to_string(), d.guest, d.writable])).collect();
    let (what, value) = match &spec.key {
        None => ("input", input.clone()),
        Some(key) => {
            let (cache, outputs) = (crate::expr::CelCache::default(), BTreeMap::<String, Option<Value>>::new());
            let scope = crate::expr::Scope {
                inputs: &Value::Null,
                cache: &cache,
                outputs: &outputs,
                item: None,
                index: None,
                run_id: "",
                attempt: 0,
                secrets,
                ending: None,
                step_input: Some(input),
                variables: &serde_json::Value::Null,
                trigger: None,
            };
            let value = key
                .eval(&scope)
                .map_err(|e| StepFailure::new(FailureKind::Reference, format!("`cache.key` could not be evaluated: {e}")).not_retryable())?;
            ("key", value)
        }
    };
    let mut material = json!({
        "v": 1,
        "component": component.sha256,
        "config": component.config,
        what: value,
        "env": component.env,
        "dirs": dirs,
    });
    // Only with a grant, so keys made before HTTP existed stay valid.
    if let Some(http) = &component.http {
        material["http"] = json!(http.allow.iter().map(|a| a.to_string()).collect::<Vec<_>>());
    }
    Ok(crate::sandbox::sha256_hex(super::canonical_json(&material).as_bytes()))
}

/// A stored result for `key`, with this run's secret values put back; a
/// result that cannot be rebuilt (a secret it held is not set now), or a
/// store that cannot answer, is a miss.
pub async fn recall(store: &dyn Memos, key: &str, secrets: &BTreeMap<String, String>) -> Option<(Value, String)> {
    match store.memo_get(key).await {
        Ok(Some(hit)) => {
            let output = match &hit.secrets {
                None => hit.output,
                Some(spans) => unmask(&hit.output, spans, secrets)?,
            };
            Some((output, hit.run_id))
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!("the run store could not look up a cached result, so the step runs: {e}");
            None
        }
    }
}

/// What [`keep`] stores.
pub struct Kept<'a> {
    pub key: String,
    pub workflow: &'a str,
    pub step: &'a str,
    pub component: &'a str,
    pub run_id: &'a str,
    pub ttl: Duration,
}

/// Stores a succeeded result (secrets masked, and where) for `ttl`. A
/// store that fails only loses the reuse: the step's result stands.
pub async fn keep(store: &dyn Memos, kept: Kept<'_>, output: &Value, secrets: &BTreeMap<String, String>) {
    let (masked, spans) = Redactor::new(secrets).value_spans(output);
    let entry = MemoEntry {
        key: kept.key,
        workflow: kept.workflow.to_string(),
        step: kept.step.to_string(),
        component: kept.component.to_string(),
        run_id: kept.run_id.to_string(),
        output: masked,
        secrets: spans,
        expires_at: crate::units::epoch_now() + kept.ttl.as_secs_f64(),
    };
    if let Err(e) = store.memo_put(&entry).await {
        tracing::warn!("the run store could not keep step `{}`'s result for reuse: {e}", kept.step);
    }
}

/// The reason a step whose result was reused shows.
pub fn cached_reason(run_id: &str) -> String {
    format!("cached: the result of run {run_id}")
}
