//! `POST /hooks/NAME`: a webhook delivery starts a run of the workflow
//! whose `triggers:` registered the hook (`sandflow schedule add`).
//!
//! A delivery carries no token: its signature is its authentication, an
//! HMAC-SHA256 of the body with the hook's secret (which `serve` holds, per
//! namespace, as workers hold theirs), in GitHub's form
//! (`X-Hub-Signature-256: sha256=HEX`) or a plain timestamped one
//! (`X-Sandflow-Signature: t=UNIX,v1=HEX` over `UNIX.BODY`, within
//! [`WINDOW`] of the server's clock). A delivery taken before (the same
//! `X-GitHub-Delivery`/`X-Sandflow-Delivery` id, or without one the same
//! signature) starts nothing and is answered with the run it started then.

use super::api::Noted;
use super::guard::refused;
use super::serve::{App, failure};
use sandflow::store::schedules::{Delivered, HookRecord};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ring::hmac;
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// How far a plain signature's timestamp may be from the server's clock.
pub(crate) const WINDOW: std::time::Duration = std::time::Duration::from_secs(300);

/// Headers a run's input never sees.
const UNSEEN: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

pub(super) async fn deliver(State(app): State<Arc<App>>, Path(name): Path<String>, request: axum::extract::Request) -> Response {
    let (parts, body) = request.into_parts();
    let mut response = match take(&app, &name, &parts.headers, body).await {
        Ok(r) | Err(r) => r,
    };
    if response.extensions().get::<Noted>().is_none() {
        response.extensions_mut().insert(Noted { detail: Some(format!("webhook {name}")), ..Noted::default() });
    }
    response
}

async fn take(app: &App, name: &str, headers: &HeaderMap, body: axum::body::Body) -> Result<Response, Response> {
    let unknown = || refused(StatusCode::NOT_FOUND, format!("no webhook `{name}` (see `sandflow schedule list`)"));
    let Some(store) = &app.pg else { return Err(unknown()) };
    let hook = store.hook(name).await.map_err(failure)?.ok_or_else(unknown)?;
    let noted = |run_id: Option<String>, detail: String| Noted { namespace: Some(hook.namespace.clone()), run_id, detail: Some(detail) };
    if hook.paused {
        return Err(refused(StatusCode::SERVICE_UNAVAILABLE, format!("webhook `{name}` is paused (`sandflow schedule resume {name}`)")));
    }
    let too_large = || refused(StatusCode::PAYLOAD_TOO_LARGE, format!("a delivery's body may be at most {} (serve --max-hook-body)", sandflow::units::format_size(app.max_hook_body as u64)));
    let length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if length.is_some_and(|n| n > app.max_hook_body as u64) {
        return Err(too_large());
    }
    let body = axum::body::to_bytes(body, app.max_hook_body).await.map_err(|_| too_large())?;
    let kind = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).and_then(|t| t.split(';').next()).map(str::trim).unwrap_or("");
    if !(kind.eq_ignore_ascii_case("application/json") || kind.to_ascii_lowercase().ends_with("+json")) {
        return Err(refused(StatusCode::UNSUPPORTED_MEDIA_TYPE, "a delivery's body must be JSON (`Content-Type: application/json`)".into()));
    }
    let secret = app.secrets.get(&hook.namespace).and_then(|s| s.get(&hook.secret)).ok_or_else(|| {
        super::render::say!("webhook {name}: this server has no secret {} for namespace `{}`: its deliveries are refused", hook.secret, hook.namespace);
        refused(StatusCode::INTERNAL_SERVER_ERROR, format!("this server cannot check webhook `{name}`'s signatures (it has no secret {}): its operator must give it one", hook.secret))
    })?;
    let signature = signed(headers, &body, secret.as_bytes(), jiff::Timestamp::now().as_second()).map_err(|why| refused(StatusCode::UNAUTHORIZED, why))?;
    let delivery = ["x-github-delivery", "x-sandflow-delivery"]
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .map_or_else(|| format!("signature:{signature}"), |id| format!("id:{id}"));
    let body: Value = serde_json::from_slice(&body).map_err(|e| refused(StatusCode::BAD_REQUEST, format!("the body is not JSON: {e}")))?;
    let input = input(app, store, &hook, body, headers).await?;
    match store.deliver(&hook, &delivery, input).await {
        Ok(Delivered::Started(id)) => {
            let mut r = (StatusCode::CREATED, Json(json!({ "id": id }))).into_response();
            r.extensions_mut().insert(noted(Some(id.clone()), format!("webhook {name}: started")));
            Ok(r)
        }
        Ok(Delivered::Again(id)) => {
            let mut r = (StatusCode::OK, Json(json!({ "id": id, "duplicate": true }))).into_response();
            r.extensions_mut().insert(noted(id, format!("webhook {name}: a delivery taken before; nothing started")));
            Ok(r)
        }
        Err(e) => {
            let mut r = failure(e);
            r.extensions_mut().insert(noted(None, format!("webhook {name}: refused")));
            Err(r)
        }
    }
}

/// Checks the delivery's signature against `secret` at `now` (Unix
/// seconds); returns the signature (hex). `Err`: why it is refused.
pub(crate) fn signed(headers: &HeaderMap, body: &[u8], secret: &[u8], now: i64) -> Result<String, String> {
    let text = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    if let Some(value) = text("x-hub-signature-256") {
        let hex = value.strip_prefix("sha256=").ok_or("X-Hub-Signature-256 must be `sha256=HEX`")?;
        let mac = unhex(hex).ok_or("X-Hub-Signature-256 is not hex")?;
        hmac::verify(&key, body, &mac).map_err(|_| "the signature does not match the body (X-Hub-Signature-256): wrong secret, or the body was changed".to_string())?;
        return Ok(hex.to_ascii_lowercase());
    }
    if let Some(value) = text("x-sandflow-signature") {
        let (mut t, mut v1) = (None, None);
        for part in value.split(',') {
            match part.trim().split_once('=') {
                Some(("t", x)) => t = x.parse::<i64>().ok(),
                Some(("v1", x)) => v1 = Some(x),
                _ => {}
            }
        }
        let (Some(t), Some(hex)) = (t, v1) else { return Err("X-Sandflow-Signature must be `t=UNIX_SECONDS,v1=HEX`".into()) };
        if (now - t).unsigned_abs() > WINDOW.as_secs() {
            return Err(format!("the signature's time (t={t}) is more than {}s from this server's clock: a replay, or a clock to fix", WINDOW.as_secs()));
        }
        let mac = unhex(hex).ok_or("X-Sandflow-Signature's v1 is not hex")?;
        let mut message = format!("{t}.").into_bytes();
        message.extend_from_slice(body);
        hmac::verify(&key, &message, &mac).map_err(|_| "the signature does not match (X-Sandflow-Signature, over `t.BODY`): wrong secret, or the body was changed".to_string())?;
        return Ok(hex.to_ascii_lowercase());
    }
    Err("a delivery must be signed: X-Hub-Signature-256 (GitHub's: sha256=HMAC-SHA256 of the body) or X-Sandflow-Signature (t=UNIX,v1=HMAC-SHA256 of `t.BODY`)".into())
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// The run's input: the trigger's `input` made from `{body, headers}`
/// (as `inputs`), or the body itself; checked against the workflow's
/// `input` schema. `Err`: 422 saying why.
async fn input(app: &App, store: &sandflow::store::PgStore, hook: &HookRecord, body: Value, headers: &HeaderMap) -> Result<Value, Response> {
    let unusable = |why: String| refused(StatusCode::UNPROCESSABLE_ENTITY, why);
    let workflow = workflow_of(app, store, hook).await.map_err(|e| refused(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let trigger = workflow.triggers.iter().find(|t| t.webhook == hook.name);
    let input = match trigger.and_then(|t| t.input.as_ref()) {
        None => body,
        Some(template) => {
            let mut seen = Map::new();
            for (name, value) in headers {
                if UNSEEN.contains(&name.as_str()) {
                    continue;
                }
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                match seen.get_mut(name.as_str()) {
                    Some(Value::String(s)) => {
                        s.push_str(", ");
                        s.push_str(&value);
                    }
                    _ => {
                        seen.insert(name.as_str().to_string(), Value::String(value));
                    }
                }
            }
            let request = json!({ "body": body, "headers": seen });
            let (cache, outputs, secrets) = (sandflow::expr::CelCache::default(), std::collections::BTreeMap::<String, Option<Value>>::new(), Default::default());
            let scope = sandflow::expr::Scope {
                inputs: &request,
                cache: &cache,
                outputs: &outputs,
                item: None,
                index: None,
                run_id: "",
                attempt: 1,
                secrets: &secrets,
                ending: None,
                step_input: None,
                variables: &Value::Null,
                trigger: None,
            };
            template.eval(&scope).map_err(|e| unusable(format!("webhook `{}`'s `input` cannot be made from this delivery: {e}", hook.name)))?
        }
    };
    if let Some(schema) = &workflow.input_schema
        && let Ok(validator) = jsonschema::validator_for(schema)
        && let Some(e) = validator.iter_errors(&input).next()
    {
        return Err(unusable(format!("the run's input does not match workflow {}'s `input` schema: {e}", workflow.name)));
    }
    Ok(input)
}

/// The hook's workflow, parsed from its stored text (once per content).
async fn workflow_of(app: &App, store: &sandflow::store::PgStore, hook: &HookRecord) -> Result<Arc<sandflow::workflow::Workflow>, String> {
    if let Some(wf) = app.hook_workflows.lock().expect("not poisoned").get(&hook.sha256) {
        return Ok(wf.clone());
    }
    let bytes = store.files_by_hash(&hook.namespace, &[hook.sha256.as_str()]).await.map_err(|e| e.to_string())?;
    let text = bytes.get(&hook.sha256).ok_or_else(|| format!("webhook `{}`'s workflow file is not in the store", hook.name))?;
    let wf = sandflow::workflow::load_str(std::path::Path::new(&hook.file), &String::from_utf8_lossy(text)).map_err(|d| d.to_string())?;
    let wf = Arc::new(wf);
    app.hook_workflows.lock().expect("not poisoned").insert(hook.sha256.clone(), wf.clone());
    Ok(wf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn sign(secret: &[u8], message: &[u8]) -> String {
        hex(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), message).as_ref())
    }

    #[test]
    fn both_signature_forms_are_checked() {
        let body = br#"{"ref":"main"}"#;
        let mut h = HeaderMap::new();
        // RFC 4231's first HMAC-SHA256 case, as a check of the construction.
        assert_eq!(sign(&[0x0b; 20], b"Hi There"), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
        h.insert("x-hub-signature-256", format!("sha256={}", sign(b"s3cret", body)).parse().unwrap());
        assert!(signed(&h, body, b"s3cret", 0).is_ok());
        assert!(signed(&h, body, b"other", 0).unwrap_err().contains("does not match"));
        assert!(signed(&h, br#"{"ref":"evil"}"#, b"s3cret", 0).unwrap_err().contains("does not match"));
        let mut p = HeaderMap::new();
        let t = 1_800_000_000;
        p.insert("x-sandflow-signature", format!("t={t},v1={}", sign(b"s3cret", &[format!("{t}.").as_bytes(), body].concat())).parse().unwrap());
        assert!(signed(&p, body, b"s3cret", t + 10).is_ok());
        assert!(signed(&p, body, b"s3cret", t + 301).unwrap_err().contains("more than 300s"));
        assert!(signed(&HeaderMap::new(), body, b"s3cret", t).unwrap_err().contains("must be signed"));
    }
}
