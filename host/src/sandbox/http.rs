//! Outbound HTTP for steps granted it (`grants.http`), through wasi:http.
//!
//! A component that imports `wasi:http` runs only when its workflow grants
//! HTTP; then every request it sends is checked here, by the host, before
//! any connection is made:
//!
//! - its scheme, host and port must match an entry of the allow-list
//!   ([`AllowedHost`]); a hostname entry never matches an IP literal, and a
//!   request with user info (`user@host`) is refused;
//! - at most [`Quota::http_requests`](super::Quota) requests per attempt;
//!   past it the step fails with kind `quota`;
//! - the exchange has the grant's `timeout` (connect, first byte, between
//!   bytes), and the step's own deadline and cancellation drop it at once;
//! - at most the grant's `max_response` bytes of response body.
//!
//! The host never follows redirects: a guest that does sends a new request,
//! checked like the first. A refused request is an HTTP error the guest sees
//! (`HTTP-request-denied`, `HTTP-response-body-size`, `connection-timeout`)
//! and a `warn` line in the step's log, never a crash.

use super::log::{LogSink, LogSource};
use bytes::Bytes;
use http::uri::Scheme;
use http_body::{Body, Frame, SizeHint};
use std::fmt;
use std::pin::Pin;
use super::quota::{QuotaExceeded, QuotaKind, QuotaScope};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// Default of `grants.http.max_response`.
pub const DEFAULT_MAX_RESPONSE: u64 = 4 << 20;
/// Default of `grants.http.timeout`.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// What a step may reach over HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGrant {
    /// Where requests may go; anything else is refused.
    pub allow: Vec<AllowedHost>,
    /// Most bytes of one response's body.
    pub max_response: u64,
    /// Connect, first-byte and between-bytes timeout of one request.
    pub timeout: Duration,
}

impl HttpGrant {
    /// A grant of `allow` with the default size cap and timeout.
    pub fn new(allow: Vec<AllowedHost>) -> Self {
        HttpGrant { allow, max_response: DEFAULT_MAX_RESPONSE, timeout: DEFAULT_HTTP_TIMEOUT }
    }

    /// The entries, as written, for messages.
    fn allowed_list(&self) -> String {
        if self.allow.is_empty() {
            return "nothing".into();
        }
        self.allow.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
    }
}

/// One entry of `grants.http.allow`: `[SCHEME://]HOST[:PORT]`.
///
/// - `SCHEME` is `http` or `https`; without it both are allowed.
/// - `HOST` is a name (`api.example.com`, matched exactly, case-insensitive),
///   `*.example.com` (any subdomain, not `example.com` itself), an IP
///   literal (`127.0.0.1`, `[::1]`), or `*` (any host: use with care).
///   A name never matches a request to an IP literal, even one it resolves to.
/// - `PORT` is a number or `*`; without it, the scheme's default port (443
///   for https, 80 for http).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    scheme: Option<Scheme>,
    host: HostPattern,
    port: PortPattern,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    Exact(String),
    /// `*.example.com`: stored as `.example.com`.
    Subdomains(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortPattern {
    Default,
    Any,
    Exact(u16),
}

impl fmt::Display for AllowedHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for AllowedHost {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("`{text}` is not an allowed host ({why}); write HOST, HOST:PORT or https://HOST[:PORT]");
        let (scheme, rest) = match text.split_once("://") {
            Some(("http", rest)) => (Some(Scheme::HTTP), rest),
            Some(("https", rest)) => (Some(Scheme::HTTPS), rest),
            Some((other, _)) => return Err(bad(&format!("scheme `{other}`: only http and https"))),
            None => (None, text),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() {
            return Err(bad("no host"));
        }
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad("a host, not a URL: no path, query or user"));
        }
        let (host, port) = split_host_port(rest).ok_or_else(|| bad("bad port"))?;
        let (raw, host) = (host, normalize_host(host));
        if host.is_empty() || (host == "*" && raw != "*") {
            return Err(bad("no host"));
        }
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(domain) = host.strip_prefix("*.") {
            if domain.is_empty() || domain.contains('*') {
                return Err(bad("`*` only as a whole label at the start"));
            }
            HostPattern::Subdomains(format!(".{domain}"))
        } else if host.contains('*') {
            return Err(bad("`*` only as a whole label at the start"));
        } else {
            HostPattern::Exact(host)
        };
        let port = match port {
            None => PortPattern::Default,
            Some("*") => PortPattern::Any,
            Some(p) => PortPattern::Exact(p.parse().map_err(|_| bad("bad port"))?),
        };
        Ok(AllowedHost { scheme, host, port, text: text.to_string() })
    }
}

/// `host:port`, `[v6]:port`, `host`, `[v6]`; `None` for a malformed port.
fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    if let Some(end) = s.strip_prefix('[').and_then(|r| r.find(']')) {
        let host = &s[..end + 2];
        return match &s[end + 2..] {
            "" => Some((host, None)),
            rest => rest.strip_prefix(':').filter(|p| !p.is_empty()).map(|p| (host, Some(p))),
        };
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && !host.contains(':') => Some((host, Some(port))),
        Some(_) => None,
        None => Some((s, None)),
    }
}

/// Lowercase, without a trailing dot (`Example.COM.` is `example.com`).
fn normalize_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn default_port(scheme: &Scheme) -> u16 {
    if *scheme == Scheme::HTTPS { 443 } else { 80 }
}

impl AllowedHost {
    fn matches(&self, scheme: &Scheme, host: &str, port: u16) -> bool {
        if self.scheme.as_ref().is_some_and(|s| s != scheme) {
            return false;
        }
        let port_ok = match self.port {
            PortPattern::Any => true,
            PortPattern::Exact(p) => p == port,
            PortPattern::Default => port == default_port(scheme),
        };
        port_ok
            && match &self.host {
                HostPattern::Any => true,
                HostPattern::Exact(h) => h == host,
                HostPattern::Subdomains(suffix) => host.ends_with(suffix.as_str()) && !is_ip_literal(host),
            }
    }
}

fn is_ip_literal(host: &str) -> bool {
    host.starts_with('[') || host.parse::<std::net::Ipv4Addr>().is_ok()
}

/// Why a request may not go out, for the log line.
fn refusal(grant: &HttpGrant, uri: &http::Uri) -> Option<String> {
    let Some(scheme) = uri.scheme() else { return Some("it has no scheme".into()) };
    if *scheme != Scheme::HTTP && *scheme != Scheme::HTTPS {
        return Some(format!("scheme `{scheme}` is not http or https"));
    }
    let Some(authority) = uri.authority() else { return Some("it has no host".into()) };
    if authority.as_str().contains('@') {
        return Some("it has user info in its address".into());
    }
    let host = normalize_host(authority.host());
    let port = authority.port_u16().unwrap_or_else(|| default_port(scheme));
    if grant.allow.iter().any(|a| a.matches(scheme, &host, port)) {
        return None;
    }
    Some(format!("{scheme}://{host}:{port} is not in grants.http.allow (which allows {})", grant.allowed_list()))
}

/// Per-attempt HTTP state: the grant, the request count and the log.
pub(crate) struct HttpHooks {
    grant: Option<Arc<HttpGrant>>,
    /// Requests the guest asked to send, refused ones included.
    sent: u64,
    limit: u64,
    log: LogSink,
}

impl HttpHooks {
    pub(crate) fn new(grant: Option<Arc<HttpGrant>>, limit: u64, log: LogSink) -> Self {
        HttpHooks { grant, sent: 0, limit, log }
    }

    /// The quota the guest went past, once it asked for more requests than
    /// it may send: the attempt then fails with kind `quota` (see
    /// `Sandbox::in_fresh_store`).
    pub(crate) fn exceeded(&self) -> Option<QuotaExceeded> {
        (self.sent > self.limit).then_some(QuotaExceeded { kind: QuotaKind::HttpRequests, scope: QuotaScope::Attempt, limit: self.limit })
    }

    fn deny(&self, method: &http::Method, uri: &http::Uri, why: &str) {
        self.log.line(LogSource::Warn, &format!("sandflow: HTTP {method} {uri} refused: {why}"));
    }
}

type SendFuture = Box<
    dyn Future<Output = Result<(http::Response<WasiBody>, Box<dyn Future<Output = Result<(), Error>> + Send>), Error>>
        + Send,
>;

impl WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> SendFuture {
        drop(fut);
        let denied = |e: Error| -> SendFuture { Box::new(async move { Err(e) }) };
        let (method, uri) = (request.method().clone(), request.uri().clone());
        let Some(grant) = self.grant.clone() else {
            // Not reachable: a component importing wasi:http is refused
            // before it is instantiated unless HTTP is granted.
            self.deny(&method, &uri, "HTTP is not granted to this step");
            return denied(Error::HttpRequestDenied);
        };
        self.sent += 1;
        if self.sent > self.limit {
            // One line for the first refusal: the attempt ends at the next
            // epoch tick, and a flood must not fill its log meanwhile.
            if self.sent == self.limit + 1 {
                self.deny(&method, &uri, &format!("past the quota of {} HTTP requests per attempt", self.limit));
            }
            return denied(Error::HttpRequestDenied);
        }
        if let Some(why) = refusal(&grant, &uri) {
            self.deny(&method, &uri, &why);
            return denied(Error::HttpRequestDenied);
        }
        // The grant's timeout bounds each phase; the step's deadline and
        // cancellation drop the whole exchange with the store.
        let options = RequestOptions {
            connect_timeout: Some(grant.timeout),
            first_byte_timeout: Some(grant.timeout),
            between_bytes_timeout: Some(grant.timeout),
        };
        let log = self.log.clone();
        Box::new(async move {
            let timed = tokio::time::timeout(grant.timeout, wasmtime_wasi_http::default_send_request(request, Some(options)));
            let (response, io) = match timed.await {
                Ok(Ok(sent)) => sent,
                Ok(Err(e)) => {
                    log.line(LogSource::Warn, &format!("sandflow: HTTP {method} {uri} failed: {}", describe(&e)));
                    return Err(e);
                }
                Err(_) => {
                    let why = format!("no response within the grant's timeout of {}", crate::units::format_duration(grant.timeout));
                    log.line(LogSource::Warn, &format!("sandflow: HTTP {method} {uri} failed: {why}"));
                    return Err(Error::ConnectionTimeout);
                }
            };
            let max = grant.max_response;
            let declared = response.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|n| n > max) {
                let why = format!("its response declares {} bytes, over the grant's max_response of {}", declared.unwrap_or(0), crate::units::format_size(max));
                log.line(LogSource::Warn, &format!("sandflow: HTTP {method} {uri} refused: {why}"));
                return Err(Error::HttpResponseBodySize(declared));
            }
            let response = response.map(|body| {
                let capped = CappedBody { inner: WasiBody::new(body), left: max, max, log: log.clone(), what: format!("{method} {uri}") };
                WasiBody::new(capped)
            });
            Ok((response, Box::new(io) as Box<dyn Future<Output = Result<(), Error>> + Send>))
        })
    }
}

/// What a failed exchange was, in words (the guest gets the error code).
fn describe(e: &Error) -> String {
    match e {
        Error::Connect(io) => format!("cannot connect: {io}"),
        Error::ConnectionRefused => "connection refused".into(),
        Error::ConnectionTimeout => "timed out connecting".into(),
        Error::HttpResponseTimeout | Error::ConnectionReadTimeout => "timed out waiting for the response".into(),
        Error::Tls(io) => format!("TLS: {io}"),
        other => format!("{other:?}"),
    }
}

/// A response body that ends in `HTTP-response-body-size` past `max` bytes.
struct CappedBody {
    inner: WasiBody,
    left: u64,
    max: u64,
    log: LogSink,
    what: String,
}

impl Body for CappedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if len > self.left {
                let why = format!("its response is over the grant's max_response of {}", crate::units::format_size(self.max));
                self.log.line(LogSource::Warn, &format!("sandflow: HTTP {} cut off: {why}", self.what));
                self.left = 0;
                return Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(self.max)))));
            }
            self.left -= len;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(allow: &[&str]) -> HttpGrant {
        HttpGrant::new(allow.iter().map(|a| a.parse().unwrap()).collect())
    }

    fn allowed(g: &HttpGrant, url: &str) -> bool {
        refusal(g, &url.parse().unwrap()).is_none()
    }

    #[test]
    fn a_name_allows_its_default_ports_only() {
        let g = grant(&["api.example.com"]);
        assert!(allowed(&g, "https://api.example.com/v1"));
        assert!(allowed(&g, "http://API.Example.com./v1"));
        assert!(!allowed(&g, "https://api.example.com:8443/"));
        assert!(!allowed(&g, "https://example.com/"));
        assert!(!allowed(&g, "https://evil-api.example.com/"));
    }

    #[test]
    fn scheme_and_port_narrow_an_entry() {
        let g = grant(&["https://api.example.com", "127.0.0.1:8080", "http://local.test:*"]);
        assert!(!allowed(&g, "http://api.example.com/"));
        assert!(allowed(&g, "http://127.0.0.1:8080/x"));
        assert!(allowed(&g, "https://127.0.0.1:8080/x"));
        assert!(!allowed(&g, "http://127.0.0.1:8081/x"));
        assert!(allowed(&g, "http://local.test:9999/"));
        assert!(!allowed(&g, "https://local.test:9999/"));
    }

    #[test]
    fn a_name_never_matches_an_ip_literal_and_user_info_is_refused() {
        let g = grant(&["localhost:8080", "*.example.com"]);
        assert!(allowed(&g, "http://localhost:8080/"));
        assert!(!allowed(&g, "http://127.0.0.1:8080/"));
        assert!(!allowed(&g, "http://[::1]:8080/"));
        assert!(!allowed(&g, "http://2130706433:8080/"));
        assert!(!allowed(&g, "http://localhost:8080@evil.com:8080/"));
        assert!(!allowed(&g, "http://evil.com@localhost:8080/"), "user info is refused even toward an allowed host");
        assert!(allowed(&g, "https://a.b.example.com/"));
        assert!(!allowed(&g, "https://example.com/"));
    }

    #[test]
    fn ipv6_and_wildcards_parse() {
        let g = grant(&["[::1]:8080", "*"]);
        assert!(allowed(&g, "http://[::1]:8080/"));
        assert!(allowed(&g, "https://anything.test/"));
        assert!(!allowed(&grant(&["[::1]:8080"]), "http://[::1]:8081/"));
    }

    #[test]
    fn bad_entries_say_what_to_write() {
        for bad in ["ftp://x", "https://x/path", "x:notaport", "a.*.com", "", "user@x", "*."] {
            let e = bad.parse::<AllowedHost>().unwrap_err();
            assert!(e.contains("write HOST, HOST:PORT or https://HOST[:PORT]"), "{bad}: {e}");
        }
    }
}
