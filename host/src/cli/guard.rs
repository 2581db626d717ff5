//! What keeps `sandflow serve` safe to expose to a browser: every request
//! passes [`guard`] before any route sees it.
//!
//! - **DNS rebinding**: a request must name this server in `Host`: an IP
//!   address (a rebinding page uses a name of its own), `localhost`, or the
//!   host of `--public-url`. Any other name is refused, on every route.
//! - **Cross-site requests**: a request that changes something (any method
//!   but GET and HEAD) must come from the server's own pages: not from
//!   another site by `Sec-Fetch-Site`, with an `Origin`, when sent, that is
//!   the server's own (never `null`), and with a JSON body type (or
//!   `application/octet-stream`, an upload's), which a page of another
//!   origin cannot send without a CORS preflight that this server never
//!   grants.
//! - **Framing**: every answer says `frame-ancestors 'none'` and
//!   `X-Frame-Options: DENY`, with a Content-Security-Policy the pages
//!   themselves keep (scripts and styles from the server only; the run
//!   graph's one inline `<style>` by its hash).
//! - **The token**: `Authorization: Bearer TOKEN` (scripts, the CLI), a
//!   cookie, or `?token=TOKEN` once: a page opened with it is answered
//!   with an HttpOnly, SameSite=Strict cookie and sent to the same address
//!   without the token, so the pages and everything they load carry it.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use sandflow::store::PgStore;
use sandflow::store::tokens::{self, Role};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The cookie a page opened with `?token=` gets.
pub(crate) const COOKIE: &str = "sandflow_session";

/// Who a request comes from, as [`guard`] found it: every handler reads
/// it from the request's extensions.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The token's name: `admin` for `serve --token`, `anyone` when the
    /// server asks for none.
    pub(crate) name: String,
    /// The namespaces whose runs it sees (`None`: every namespace).
    pub(crate) namespaces: Option<Vec<String>>,
    pub(crate) role: Role,
}

impl Caller {
    /// Whether it sees runs of `namespace`.
    pub(crate) fn sees(&self, namespace: &str) -> bool {
        self.namespaces.as_ref().is_none_or(|n| n.iter().any(|n| n == namespace))
    }
}

/// How the server recognises its own requests.
pub(crate) struct Guard {
    /// Every request must carry it, when set: `serve --token`, whose
    /// caller is [`Role::Admin`].
    token: Option<String>,
    /// The cookie value that stands for the token.
    session: Option<String>,
    /// The store's tokens (PostgreSQL), each scoped to namespaces and a role.
    tokens: Option<Arc<PgStore>>,
    /// `--public-url`: its host is accepted in `Host`, its origin in `Origin`.
    public: Option<url::Url>,
    /// The Content-Security-Policy of every answer.
    policy: HeaderValue,
}

impl Guard {
    pub(crate) fn new(token: Option<String>, public: Option<url::Url>, tokens: Option<Arc<PgStore>>) -> Guard {
        let session = token.as_deref().map(tokens::session);
        // The graph's inline style, allowed by its hash alone.
        let style = base64(&Sha256::digest(sandflow::plan::svg::STYLE.as_bytes()));
        let policy = format!(
            "default-src 'none'; script-src 'self'; style-src 'self' 'sha256-{style}'; img-src 'self' data:; connect-src 'self'; \
             base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
        );
        Guard { token, session, tokens, public, policy: HeaderValue::from_str(&policy).expect("ASCII") }
    }

    /// Whether `host` (a `Host` header, with or without a port) names this
    /// server.
    fn host_allowed(&self, host: &str) -> bool {
        let name = match host.strip_prefix('[') {
            // `[::1]:7878`
            Some(v6) => return v6.split(']').next().is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok()),
            None => host.rsplit_once(':').filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(name, _)| name),
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        name.parse::<std::net::Ipv4Addr>().is_ok()
            || name == "localhost"
            || self.public.as_ref().and_then(|u| u.host_str()).is_some_and(|h| h.eq_ignore_ascii_case(&name))
    }

    /// Why a request that changes something is not the server's own
    /// pages', if it is not.
    fn cross_site(&self, headers: &HeaderMap) -> Option<String> {
        let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
            && !matches!(site, "same-origin" | "none")
        {
            return Some(format!("a {site} request may not change runs (Sec-Fetch-Site)"));
        }
        if let Some(origin) = text(header::ORIGIN) {
            let host = text(header::HOST).unwrap_or("");
            let own = [format!("http://{host}"), format!("https://{host}")];
            let public = self.public.as_ref().map(|u| u.origin().ascii_serialization());
            if !own.iter().any(|o| o == origin) && public.as_deref() != Some(origin) {
                return Some(format!("a request from origin `{origin}` may not change runs: only this server's pages may"));
            }
        }
        // Neither is a type a form or a simple cross-site `fetch` may send.
        let kind = text(header::CONTENT_TYPE).and_then(|t| t.split(';').next()).map(str::trim).unwrap_or("");
        if !kind.eq_ignore_ascii_case("application/json") && !kind.eq_ignore_ascii_case("application/octet-stream") {
            return Some("a request that changes runs must send `Content-Type: application/json` (an upload: `application/octet-stream`)".into());
        }
        None
    }

    /// Who the request comes from: `serve --token`'s bearer (or its
    /// cookie) is the admin; a token of the store's is its own scope; no
    /// token is anyone, with every right, only on a server that asks for
    /// none (no `--token`, no token in the store). `Err`: 401 with why, or
    /// 503 when the store cannot say.
    async fn caller(&self, (presented, cookie): (Option<String>, Option<String>)) -> Result<Caller, (StatusCode, String)> {
        let admin = || Caller { name: "admin".into(), namespaces: None, role: Role::Admin };
        if let (Some(token), Some(given)) = (&self.token, &presented)
            && same(given, token)
        {
            return Ok(admin());
        }
        if let (Some(session), Some(given)) = (&self.session, &cookie)
            && same(given, session)
        {
            return Ok(admin());
        }
        let unavailable = |e: sandflow::store::StoreError| (StatusCode::SERVICE_UNAVAILABLE, format!("cannot check the token: {e}"));
        let looked_up = match (&self.tokens, &presented, &cookie) {
            (Some(store), Some(token), _) => store.token_by(&tokens::digest(token), false).await.map_err(unavailable)?,
            (Some(store), None, Some(session)) => store.token_by(session, true).await.map_err(unavailable)?,
            _ => None,
        };
        match looked_up {
            Some(Ok(t)) => Ok(Caller { name: t.name, namespaces: Some(t.namespaces), role: t.role }),
            Some(Err(revoked)) => Err((StatusCode::UNAUTHORIZED, format!("{revoked}: ask for a new one"))),
            None => {
                let asks = self.token.is_some()
                    || match &self.tokens {
                        Some(store) => store.has_tokens().await.map_err(unavailable)?,
                        None => false,
                    };
                match (asks, presented.is_some()) {
                    (true, true) => Err((StatusCode::UNAUTHORIZED, format!("the token given is not known here; {REQUIRED}"))),
                    (true, false) => Err((StatusCode::UNAUTHORIZED, REQUIRED.to_string())),
                    (false, _) => Ok(Caller { name: ANYONE.into(), namespaces: None, role: Role::Admin }),
                }
            }
        }
    }
}

/// What a request presents: a token (`Authorization: Bearer`, else
/// `?token=`), and the session cookie.
fn credentials(request: &Request) -> (Option<String>, Option<String>) {
    let headers = request.headers();
    let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::to_string);
    (bearer.or_else(|| query_token(request)), cookie(headers, COOKIE))
}

/// The caller of a server that asks for no token.
const ANYONE: &str = "anyone";

/// Why a request without a (known) token is refused.
const REQUIRED: &str = "a token is required: open the address with ?token=TOKEN, or send `Authorization: Bearer TOKEN`";

/// Compares without stopping at the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The value of cookie `name`, if sent.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(name)?.strip_prefix('=').map(str::to_string))
}

/// `?token=` of the request's address, decoded.
fn query_token(request: &Request) -> Option<String> {
    let query = request.uri().query()?;
    url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned())
}

/// The address without its `token` parameter.
fn without_token(request: &Request) -> String {
    let uri = request.uri();
    let kept: Vec<(String, String)> = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .filter(|(k, _)| k != "token")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    match kept.is_empty() {
        true => uri.path().to_string(),
        false => format!("{}?{}", uri.path(), url::form_urlencoded::Serializer::new(String::new()).extend_pairs(kept).finish()),
    }
}

/// Refuses what is not this server's (see the module's docs), then lets
/// the request through with the answer's safety headers added.
pub(crate) async fn guard(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let mut response = check(&guard, request, next).await;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, guard.policy.clone());
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    headers.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
    response
}

async fn check(guard: &Guard, request: Request, next: Next) -> Response {
    let host = request.headers().get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !guard.host_allowed(host) {
        let why = format!(
            "this server does not answer to the name `{host}`: open it by its IP address or `localhost`, or start `sandflow serve --public-url URL` with the address users open"
        );
        return refused(StatusCode::MISDIRECTED_REQUEST, why);
    }
    // A webhook delivery carries no token and is cross-site by nature: its
    // signature (an HMAC of its body with the hook's secret, which no web
    // page has) is its authentication (see `hooks.rs`).
    if request.method() == Method::POST && request.uri().path().starts_with("/hooks/") {
        let mut request = request;
        request.extensions_mut().insert(Caller { name: "webhook".into(), namespaces: Some(Vec::new()), role: Role::Viewer });
        return next.run(request).await;
    }
    let changes = !matches!(*request.method(), Method::GET | Method::HEAD);
    if changes && let Some(why) = guard.cross_site(request.headers()) {
        return refused(StatusCode::FORBIDDEN, why);
    }
    // Probes (a load balancer's, Kubernetes') carry no token; the answers
    // say only whether the server and its store are up.
    let probe = matches!(request.uri().path(), "/healthz" | "/readyz");
    let caller = match probe {
        true => Caller { name: "probe".into(), namespaces: Some(Vec::new()), role: Role::Viewer },
        false => match guard.caller(credentials(&request)).await {
            Ok(caller) => caller,
            Err((status, why)) => {
                let mut response = refused(status, why);
                if status == StatusCode::UNAUTHORIZED {
                    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                }
                return response;
            }
        },
    };
    // A page opened with `?token=`: the cookie from now on, and the
    // address without the token (nor in the history, nor in a Referer).
    let page = request.method() == Method::GET && !request.uri().path().starts_with("/api/") && !request.uri().path().starts_with("/assets/");
    if let (true, Some(token), false) = (page, query_token(&request), caller.name == ANYONE) {
        let session = tokens::session(&token);
        let secure = if guard.public.as_ref().is_some_and(|u| u.scheme() == "https") { "; Secure" } else { "" };
        let cookie = format!("{COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict{secure}");
        let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, without_token(&request))]).into_response();
        response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("hex and ASCII"));
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return response;
    }
    let mut request = request;
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// An answer that refuses, and says why: `{"error": why}` (every route's).
pub(crate) fn refused(status: StatusCode, why: String) -> Response {
    (status, Json(json!({ "error": why }))).into_response()
}

/// Standard base64 with padding (RFC 4648), as CSP hashes are written.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            match i <= chunk.len() {
                true => out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char),
                false => out.push('='),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_rfc_4648s() {
        for (input, encoded) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64(input.as_bytes()), encoded);
        }
    }

    #[test]
    fn only_addresses_localhost_and_the_public_name_are_this_server() {
        let guard = Guard::new(None, Some(url::Url::parse("https://runs.example.com/").unwrap()), None);
        for ok in ["127.0.0.1:7878", "10.0.0.5", "[::1]:7878", "localhost:7878", "LOCALHOST", "runs.example.com", "runs.example.com.:443"] {
            assert!(guard.host_allowed(ok), "{ok}");
        }
        for refused in ["evil.example", "evil.example:7878", "localhost.evil.example", "127.0.0.1.evil.example", "", "[evil]:1", "runs.example.com.evil"] {
            assert!(!guard.host_allowed(refused), "{refused}");
        }
    }
}
