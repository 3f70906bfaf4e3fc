//! What the HTTP provider clients share: the pooled `reqwest` client and the HTTP/2 clients' settings,
//! `Retry-After` parsing, status-code fallbacks, percent-encoding of path and query pieces, and error
//! descriptions that never carry a URL (URLs can hold device tokens).

use std::error::Error as _;
use std::time::Duration;

use jiff::Timestamp;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use rustls_pki_types::CertificateDer;

use super::http2::{self, Http2Client, pem_certificates};
use super::{BuildError, ErrorClass};

/// Idle connections kept per provider host: enough for every in-flight send of a busy dispatcher.
const POOL_MAX_IDLE_PER_HOST: usize = 1024;
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// What the HTTP provider clients are built from: the shared reqwest client (Twilio, Bizppurio, FCM's OAuth2
/// token), and the timeout and extra roots FCM's and APNs's own HTTP/2 clients (`http2.rs`) are made with.
#[derive(Clone)]
pub struct HttpClients {
    pub(crate) shared: reqwest::Client,
    timeout: Duration,
    roots: Vec<CertificateDer<'static>>,
}

impl HttpClients {
    /// Clients with `timeout` per request, trusting the system roots plus `extra_roots`.
    pub fn new(timeout: Duration, extra_roots: Vec<CertificateDer<'static>>) -> Result<HttpClients, BuildError> {
        Ok(HttpClients { shared: client(timeout, &extra_roots)?, timeout, roots: extra_roots })
    }

    /// An HTTP/2 client for the origin of `base_url`, with [`http2::CONNECTIONS`] connections.
    pub(crate) fn http2(&self, provider: &'static str, base_url: &str) -> Result<Http2Client, BuildError> {
        Http2Client::new(provider, base_url, self.timeout, &self.roots, http2::CONNECTIONS)
    }
}

/// The HTTP client the providers share: pooled, rustls (ring) trusting the system roots plus `extra_roots`;
/// HTTP/2 where the server offers it by ALPN, HTTP/1.1 otherwise (plain `http://` included).
/// Redirects are not followed: a provider API answering 3xx is an answer to classify, not a place to re-send a
/// message and its credentials to.
fn client(timeout: Duration, extra_roots: &[CertificateDer<'static>]) -> Result<reqwest::Client, BuildError> {
    crate::sandbox::install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .tcp_nodelay(true)
        .http2_adaptive_window(true)
        .redirect(reqwest::redirect::Policy::none());
    for root in extra_roots {
        let root = reqwest::Certificate::from_der(root).map_err(|e| BuildError::Http(e.to_string()))?;
        builder = builder.add_root_certificate(root);
    }
    builder.build().map_err(|e| BuildError::Http(e.to_string()))
}

/// The extra trusted roots: the configured PEM file, then the in-process sandbox's CA.
pub(crate) fn extra_roots(file: &str, pem: Option<&str>) -> Result<Vec<CertificateDer<'static>>, BuildError> {
    let invalid = |message: String| BuildError::invalid("tls", "extra_root_ca_file", message);
    let mut roots = Vec::new();
    if !file.is_empty() {
        let bytes = std::fs::read(file).map_err(|e| invalid(format!("`{file}`: {e}")))?;
        roots.extend(pem_certificates(&bytes).map_err(|e| invalid(format!("`{file}`: {e}")))?);
    }
    if let Some(pem) = pem {
        roots.extend(pem_certificates(pem.as_bytes()).map_err(invalid)?);
    }
    Ok(roots)
}

/// A configured base URL without its trailing slashes, refusing what is not `http(s)://…`.
pub(crate) fn base_url(provider: &'static str, value: &str) -> Result<String, BuildError> {
    let trimmed = value.trim().trim_end_matches('/');
    match reqwest::Url::parse(trimmed) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Ok(trimmed.to_string()),
        _ => Err(BuildError::invalid(provider, "base_url", format!("`{value}` is not an http(s) URL"))),
    }
}

/// A URL assembled at start; a bad one is a configuration error.
pub(crate) fn url(provider: &'static str, value: &str) -> Result<reqwest::Url, BuildError> {
    reqwest::Url::parse(value).map_err(|e| BuildError::invalid(provider, "base_url", format!("`{value}`: {e}")))
}

/// A header value built once at start and marked sensitive (kept out of debug output).
pub(crate) fn secret_header(
    provider: &'static str,
    field: &'static str,
    value: &str,
) -> Result<HeaderValue, BuildError> {
    let mut header = HeaderValue::from_str(value)
        .map_err(|_| BuildError::invalid(provider, field, "contains characters not allowed in a header"))?;
    header.set_sensitive(true);
    Ok(header)
}

/// The wait a `Retry-After` header asks for.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    header_seconds(headers, &RETRY_AFTER)
}

/// The wait a header holding `Retry-After`-style content asks for (seconds or an HTTP date).
pub(crate) fn header_seconds(headers: &HeaderMap, name: &HeaderName) -> Option<Duration> {
    let value = headers.get(name)?.to_str().ok()?;
    parse_retry_after(value, Timestamp::now())
}

/// Parses a `Retry-After` value: delay seconds (`120`) or an HTTP date (`Wed, 21 Oct 2015 07:28:00 GMT`).
/// A date in the past means "now".
pub fn parse_retry_after(value: &str, now: Timestamp) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let wait = at.as_millisecond().saturating_sub(now.as_millisecond());
    Some(Duration::from_millis(u64::try_from(wait).unwrap_or(0)))
}

/// How to treat an HTTP answer whose error code we do not know: 5xx, 429 and 408 may pass, other 4xx will not.
pub(crate) fn class_of_status(status: u16) -> ErrorClass {
    if status >= 500 || status == 429 || status == 408 { ErrorClass::Retryable } else { ErrorClass::Permanent }
}

/// A transport error as text, without the request URL and with its causes (the top level alone says little).
pub(crate) fn describe(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut text = if err.is_timeout() { "timed out".to_string() } else { err.to_string() };
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Appends `piece` percent-encoded so it stays one path segment or one query value.
pub(crate) fn push_encoded(out: &mut String, piece: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in piece.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        }
    }
}

/// At most the first `max` characters of a body, for error messages.
pub(crate) fn snippet(body: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds() {
        let now = Timestamp::UNIX_EPOCH;
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }

    #[test]
    fn retry_after_reads_http_dates() {
        let now: Timestamp = "2015-10-21T07:27:00Z".parse().unwrap();
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now), Some(Duration::from_secs(60)));
        // A date already past asks for no wait at all.
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_header_is_found() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
    }

    #[test]
    fn unknown_statuses_are_classed_by_family() {
        assert_eq!(class_of_status(500), ErrorClass::Retryable);
        assert_eq!(class_of_status(503), ErrorClass::Retryable);
        assert_eq!(class_of_status(429), ErrorClass::Retryable);
        assert_eq!(class_of_status(400), ErrorClass::Permanent);
        assert_eq!(class_of_status(404), ErrorClass::Permanent);
    }

    #[test]
    fn pieces_are_percent_encoded() {
        let mut out = String::new();
        push_encoded(&mut out, "abc-DEF_0.9~");
        assert_eq!(out, "abc-DEF_0.9~");
        out.clear();
        push_encoded(&mut out, "a/b?c=d&e f");
        assert_eq!(out, "a%2Fb%3Fc%3Dd%26e%20f");
    }

    #[test]
    fn base_urls_lose_trailing_slashes() {
        assert_eq!(base_url("fcm", "http://127.0.0.1:8081/").unwrap(), "http://127.0.0.1:8081");
        assert_eq!(base_url("fcm", "https://x.example/prefix").unwrap(), "https://x.example/prefix");
        assert!(base_url("fcm", "127.0.0.1:8081").is_err());
        assert!(base_url("fcm", "ftp://x.example").is_err());
    }

    #[test]
    fn snippets_are_cut_on_characters() {
        assert_eq!(snippet(b"  short ", 10), "short");
        assert_eq!(snippet("가나다라".as_bytes(), 2), "가나…");
    }
}
