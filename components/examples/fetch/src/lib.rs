//! `fetch`: one HTTP request (wasi:http), for steps that call an API.
//!
//! The workflow must grant the hosts it may reach
//! (`grants: { http: { allow: [api.example.com] } }`); the host refuses
//! anything else, and this component reports that as a permanent failure.
//!
//! Input: `{url, method?, headers?, body?, json?, max_redirects?}`:
//! `method` defaults to GET; `json` sends a JSON body (and its content
//! type); redirects (301, 302, 303, 307, 308) are followed up to
//! `max_redirects` (default 5), each one a new request the host checks
//! against the allow-list.
//!
//! Output: `{status, url, headers, body, json?}`: `url` is the final
//! address, `json` the body parsed when the response says it is JSON.
//! A non-2xx status is an output, not a failure: use `when` or `depends`.

use sandflow_sdk::{Describe, Error, Step, log};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, IncomingResponse, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    url: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    headers: Map<String, Value>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    json: Option<Value>,
    #[serde(default)]
    max_redirects: Option<u32>,
}

struct Fetch;

impl Step for Fetch {
    type Input = Input;
    type Output = Value;

    fn describe() -> Describe {
        Describe {
            description: "Sends one HTTP request to a host the workflow grants, following redirects, and returns the status, headers and body.".into(),
            input_schema: Some(json!({
                "type": "object",
                "required": ["url"],
                "properties": {
                    "url": { "type": "string" },
                    "method": { "type": "string" },
                    "headers": { "type": "object", "additionalProperties": { "type": "string" } },
                    "body": { "type": "string" },
                    "json": {},
                    "max_redirects": { "type": "integer", "minimum": 0, "maximum": 20 }
                },
                "additionalProperties": false
            })),
            output_schema: Some(json!({ "type": "object", "required": ["status", "url", "headers", "body"] })),
        }
    }

    fn run(input: Input) -> Result<Value, Error> {
        let mut method = input.method.as_deref().unwrap_or("GET").to_ascii_uppercase();
        let mut headers: Vec<(String, String)> = Vec::new();
        for (name, value) in &input.headers {
            let Some(value) = value.as_str() else {
                return Err(Error::permanent(format!("header `{name}` must be a string")));
            };
            headers.push((name.to_ascii_lowercase(), value.to_string()));
        }
        let mut body = input.body.map(String::into_bytes);
        if let Some(v) = &input.json {
            body = Some(v.to_string().into_bytes());
            if !headers.iter().any(|(n, _)| n == "content-type") {
                headers.push(("content-type".into(), "application/json".into()));
            }
        }
        let mut url = input.url.clone();
        let max_redirects = input.max_redirects.unwrap_or(5);
        let mut redirects = 0;
        loop {
            let response = send(&method, &url, &headers, body.as_deref())?;
            let status = response.status();
            let location = header_values(&response).into_iter().find(|(n, _)| n == "location").map(|(_, v)| v);
            match (status, location) {
                (301 | 302 | 303 | 307 | 308, Some(location)) if redirects < max_redirects => {
                    redirects += 1;
                    let next = resolve(&url, &location);
                    log::info(&format!("{status} redirect to {next}"));
                    if status == 303 || ((status == 301 || status == 302) && method == "POST") {
                        method = "GET".into();
                        body = None;
                    }
                    url = next;
                }
                _ => return finish(response, &url),
            }
        }
    }
}

/// `{status, url, headers, body, json?}` of the final response.
fn finish(response: IncomingResponse, url: &str) -> Result<Value, Error> {
    let status = response.status();
    let mut headers = Map::new();
    for (name, value) in header_values(&response) {
        headers.insert(name, Value::String(value));
    }
    let bytes = read_body(response)?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let is_json = headers.get("content-type").and_then(Value::as_str).is_some_and(|t| t.contains("json"));
    let mut out = json!({ "status": status, "url": url, "headers": headers, "body": text });
    if is_json && let Ok(v) = serde_json::from_str::<Value>(&text) {
        out["json"] = v;
    }
    Ok(out)
}

fn header_values(response: &IncomingResponse) -> Vec<(String, String)> {
    response
        .headers()
        .entries()
        .into_iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), String::from_utf8_lossy(&v).into_owned()))
        .collect()
}

/// Sends one request and waits for its response head.
fn send(method: &str, url: &str, headers: &[(String, String)], body: Option<&[u8]>) -> Result<IncomingResponse, Error> {
    let (scheme, authority, path) = split_url(url)?;
    let fields: Vec<(String, Vec<u8>)> = headers.iter().map(|(n, v)| (n.clone(), v.clone().into_bytes())).collect();
    let fields = Fields::from_list(&fields).map_err(|e| Error::permanent(format!("bad header: {e:?}")))?;
    let request = OutgoingRequest::new(fields);
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "OPTIONS" => Method::Options,
        other => Method::Other(other.to_string()),
    };
    let invalid = |what: &str| Error::permanent(format!("{url}: invalid {what}"));
    request.set_method(&method).map_err(|()| invalid("method"))?;
    request.set_scheme(Some(&scheme)).map_err(|()| invalid("scheme"))?;
    request.set_authority(Some(authority)).map_err(|()| invalid("host"))?;
    request.set_path_with_query(Some(path)).map_err(|()| invalid("path"))?;
    let outgoing = request.body().map_err(|()| Error::new("the request body was already taken"))?;
    if let Some(data) = body {
        let stream = outgoing.write().map_err(|()| Error::new("cannot write the request body"))?;
        for chunk in data.chunks(4096) {
            stream.blocking_write_and_flush(chunk).map_err(|e| Error::new(format!("sending the body: {e:?}")))?;
        }
    }
    let pending = outgoing_handler::handle(request, None).map_err(|e| failed(url, e))?;
    OutgoingBody::finish(outgoing, None).map_err(|e| failed(url, e))?;
    loop {
        match pending.get() {
            Some(Ok(Ok(response))) => return Ok(response),
            Some(Ok(Err(e))) => return Err(failed(url, e)),
            Some(Err(())) => return Err(Error::new("the response was already taken")),
            None => pending.subscribe().block(),
        }
    }
}

fn read_body(response: IncomingResponse) -> Result<Vec<u8>, Error> {
    let body = response.consume().map_err(|()| Error::new("the response body was already taken"))?;
    let stream = body.stream().map_err(|()| Error::new("the response body was already taken"))?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(match wasip2::http::types::http_error_code(&e) {
                    Some(code) => failed("the response body", code),
                    // The first line: the rest is the host's detail.
                    None => Error::new(format!(
                        "reading the response body: {}",
                        e.to_debug_string().lines().next().unwrap_or("failed")
                    )),
                });
            }
        }
    }
    Ok(bytes)
}

/// A failed request as a step error: refusals and bad requests are
/// permanent, network trouble may pass.
fn failed(what: &str, code: ErrorCode) -> Error {
    match code {
        ErrorCode::HttpRequestDenied => Error::permanent(format!(
            "{what}: the host refused the request (not in the step's `grants.http.allow`, or past its request quota; see the log)"
        )),
        ErrorCode::HttpResponseBodySize(limit) => Error::permanent(format!(
            "{what}: the response is larger than the grant's max_response{}",
            limit.map(|l| format!(" ({l} bytes)")).unwrap_or_default()
        )),
        ErrorCode::HttpRequestUriInvalid | ErrorCode::HttpRequestMethodInvalid | ErrorCode::HttpProtocolError => {
            Error::permanent(format!("{what}: {code:?}"))
        }
        ErrorCode::ConnectionTimeout | ErrorCode::ConnectionReadTimeout | ErrorCode::HttpResponseTimeout => {
            Error::new(format!("{what}: timed out ({code:?})"))
        }
        other => Error::new(format!("{what}: {other:?}")),
    }
}

/// `http(s)://AUTHORITY/PATH?QUERY` into its parts.
fn split_url(url: &str) -> Result<(Scheme, &str, &str), Error> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else {
        return Err(Error::permanent(format!("`{url}` is not an http:// or https:// URL")));
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.is_empty() {
        return Err(Error::permanent(format!("`{url}` has no host")));
    }
    Ok((scheme, authority, if path.is_empty() { "/" } else { path }))
}

/// A `Location` against the URL it came from.
fn resolve(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_string();
    }
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let origin_end = base[scheme_end..].find(['/', '?']).map(|i| scheme_end + i).unwrap_or(base.len());
    if let Some(rest) = location.strip_prefix("//") {
        return format!("{}{rest}", &base[..scheme_end]);
    }
    if location.starts_with('/') {
        return format!("{}{location}", &base[..origin_end]);
    }
    let dir_end = base[..base.find('?').unwrap_or(base.len())].rfind('/').filter(|&i| i >= origin_end).map(|i| i + 1);
    match dir_end {
        Some(end) => format!("{}{location}", &base[..end]),
        None => format!("{}/{location}", &base[..origin_end]),
    }
}

sandflow_sdk::export_step!(Fetch);
