//! The builtins that run in the host (SPEC §3): `load_file`, `put_blob`,
//! `get_blob`. (`eval`, a nested run, lives with the scheduler.) A
//! builtin's failure is a retryable `component` failure.

use crate::failure::{FailureKind, StepFailure};
use crate::sandbox::{HostError, HostServices, sha256_hex};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};

fn fail(message: impl Into<String>) -> StepFailure {
    StepFailure::component(message, true)
}

fn field<'a>(input: &'a Value, name: &str, builtin: &str) -> Result<&'a Value, StepFailure> {
    input.get(name).ok_or_else(|| fail(format!("/builtin/{builtin} needs `{name}` in its input")))
}

/// JSON with object keys sorted at every level, so equal data has equal text.
pub fn canonical_json(v: &Value) -> String {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                Value::Object(keys.into_iter().map(|k| (k.clone(), sort(&m[k]))).collect::<Map<_, _>>())
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    sort(v).to_string()
}

/// `{data}` → `{blob_id}`: the hex SHA-256 of the data's canonical JSON.
pub async fn put_blob(input: &Value, services: &dyn HostServices) -> Result<Value, StepFailure> {
    let text = canonical_json(field(input, "data", "put_blob")?);
    let id = sha256_hex(text.as_bytes());
    services.blob_put(&id, text.as_bytes()).await.map_err(|e| match e {
        HostError::Quota(q) => StepFailure::new(FailureKind::Quota, q.to_string()),
        HostError::Failed(m) => fail(m),
    })?;
    Ok(json!({ "blob_id": id }))
}

/// `{blob_id}` → `{data}`.
pub async fn get_blob(input: &Value, services: &dyn HostServices) -> Result<Value, StepFailure> {
    let id = field(input, "blob_id", "get_blob")?
        .as_str()
        .ok_or_else(|| fail("/builtin/get_blob: `blob_id` must be a string"))?;
    let bytes = services
        .blob_get(id)
        .await
        .map_err(|e| fail(format!("/builtin/get_blob: {e}")))?
        .ok_or_else(|| fail(format!("/builtin/get_blob: no blob with id {id}")))?;
    let data: Value = serde_json::from_slice(&bytes)
        .map_err(|_| fail(format!("/builtin/get_blob: blob {id} does not hold JSON (it was not stored by put_blob)")))?;
    Ok(json!({ "data": data }))
}

/// `{path, format?}` → `{data}`. Paths are relative to the workflow's
/// directory, and must stay under it or under a directory the workflow
/// grants to one of its components.
pub fn load_file(input: &Value, workflow_dir: &Path, allowed: &[PathBuf]) -> Result<Value, StepFailure> {
    let path = field(input, "path", "load_file")?
        .as_str()
        .ok_or_else(|| fail("/builtin/load_file: `path` must be a string"))?;
    let full = workflow_dir.join(path);
    let canonical = full.canonicalize().map_err(|e| fail(format!("/builtin/load_file: cannot open {path}: {e}")))?;
    let roots = std::iter::once(workflow_dir.to_path_buf()).chain(allowed.iter().cloned());
    let inside = roots.filter_map(|r| r.canonicalize().ok()).any(|root| canonical.starts_with(&root));
    if !inside {
        return Err(StepFailure::component(
            format!("/builtin/load_file: {path} is outside the workflow's directory and every granted directory"),
            false,
        ));
    }
    let text = std::fs::read_to_string(&canonical).map_err(|e| fail(format!("/builtin/load_file: cannot read {path}: {e}")))?;
    let format = match input.get("format").and_then(Value::as_str) {
        Some(f) => f.to_string(),
        None => match canonical.extension().and_then(|e| e.to_str()) {
            Some("json") => "json".into(),
            Some("yaml" | "yml") => "yaml".into(),
            _ => "text".into(),
        },
    };
    let data = match format.as_str() {
        "json" => serde_json::from_str(&text).map_err(|e| fail(format!("/builtin/load_file: {path} is not valid JSON: {e}")))?,
        "yaml" => serde_yaml::from_str::<Value>(&text).map_err(|e| fail(format!("/builtin/load_file: {path} is not valid YAML: {e}")))?,
        "text" => Value::String(text),
        other => return Err(StepFailure::component(format!("/builtin/load_file: unknown format `{other}` (json, yaml or text)"), false)),
    };
    Ok(json!({ "data": data }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::MemoryServices;

    #[tokio::test]
    async fn equal_data_gets_one_blob_id_whatever_the_key_order() {
        let s = MemoryServices::new();
        let a = put_blob(&json!({"data": {"b": 1, "a": [1, {"y": 2, "x": 1}]}}), &s).await.unwrap();
        let b = put_blob(&json!({"data": {"a": [1, {"x": 1, "y": 2}], "b": 1}}), &s).await.unwrap();
        assert_eq!(a, b);
        let back = get_blob(&json!({"blob_id": a["blob_id"]}), &s).await.unwrap();
        assert_eq!(back["data"], json!({"a": [1, {"x": 1, "y": 2}], "b": 1}));
        let missing = get_blob(&json!({"blob_id": "nope"}), &s).await.unwrap_err();
        assert!(missing.retryable && missing.message.contains("no blob with id nope"));
    }

    #[test]
    fn load_file_reads_formats_and_stays_inside_its_roots() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.json"), r#"{"x": 1}"#).unwrap();
        std::fs::write(dir.path().join("b.yaml"), "x: [1, 2]\n").unwrap();
        std::fs::write(dir.path().join("c.txt"), "hello").unwrap();
        let load = |p: &str| load_file(&json!({"path": p}), dir.path(), &[]);
        assert_eq!(load("a.json").unwrap(), json!({"data": {"x": 1}}));
        assert_eq!(load("b.yaml").unwrap(), json!({"data": {"x": [1, 2]}}));
        assert_eq!(load("c.txt").unwrap(), json!({"data": "hello"}));
        let outside = load("../../../../../../etc/passwd").unwrap_err();
        assert!(outside.message.contains("outside the workflow's directory"), "{}", outside.message);
    }
}
