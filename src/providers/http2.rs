//! The HTTP/2 client FCM and APNs send with: a few multiplexed connections to one origin, straight on the `h2`
//! crate. Both services speak HTTP/2 only for sends (APNs requires it), so this client does nothing else: no
//! pool keyed by host, no redirects, no retry layer, no URL parsing per request. Under load the reqwest stack
//! it replaces (tower layers, a URL parse and an HTTP/1-or-2 pool per request, a channel hop to hyper's
//! connection task) cost about as much CPU as the HTTP/2 framing itself (`docs/performance.md`, session 9).
//!
//! `https://` origins get TLS (rustls on ring, the platform verifier plus the extra roots, ALPN `h2` only);
//! `http://` origins get cleartext HTTP/2 with prior knowledge (`h2c`: the sandbox's plain listener and test
//! peers). A request goes to the next of [`CONNECTIONS`] connections in turn; a connection is opened on first
//! use and again after it ends (GOAWAY, I/O error). The whole exchange (connecting included) is bounded by the
//! client's timeout. Error texts never carry the URL (it can hold a device token).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use parking_lot::Mutex;
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::BuildError;
use super::cork::Corked;

/// Connections per client. More than one lets the two runtime workers each drive one; each carries up to the
/// server's stream limit (APNs advertises 1,000, the sandbox 200 and queues beyond).
pub const CONNECTIONS: usize = 2;
/// An answer body longer than this is cut (FCM and APNs answers are a few hundred bytes).
const MAX_BODY: usize = 64 * 1024;
/// Receive windows: large enough that answers never wait for a window update.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;

/// A client for one origin (scheme, host, port). Cheap to clone; clones share the connections.
#[derive(Clone)]
pub struct Http2Client {
    inner: Arc<Inner>,
}

/// A request header: name and value.
pub type Header = (HeaderName, HeaderValue);

/// An answer: status, headers and the whole body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

struct Inner {
    provider: &'static str,
    /// `host:port` to connect to.
    address: String,
    /// Some for `https://` origins.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    timeout: Duration,
    slots: Box<[Slot]>,
    next: AtomicUsize,
    opened: AtomicU64,
}

#[derive(Default)]
struct Slot {
    live: Mutex<Option<Live>>,
    /// Held while this slot opens a connection, so that concurrent sends wait for one instead of opening many.
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
struct Live {
    id: u64,
    send: SendRequest<Bytes>,
}

impl Http2Client {
    /// A client for the origin of `base_url` (its path is ignored: requests carry absolute URIs), trusting the
    /// platform's roots plus `extra_roots` for `https://`.
    pub fn new(
        provider: &'static str,
        base_url: &str,
        timeout: Duration,
        extra_roots: &[CertificateDer<'static>],
        connections: usize,
    ) -> Result<Http2Client, BuildError> {
        let invalid = |message: String| BuildError::invalid(provider, "base_url", message);
        let uri: Uri = base_url.parse().map_err(|e| invalid(format!("`{base_url}`: {e}")))?;
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| invalid(format!("`{base_url}` has no host")))?;
        let (tls, default_port) = match uri.scheme_str() {
            Some("https") => (Some(tls_connector(provider, host, extra_roots)?), 443),
            Some("http") => (None, 80),
            _ => return Err(invalid(format!("`{base_url}` is not an http(s) URL"))),
        };
        let address = format!("{host}:{}", uri.port_u16().unwrap_or(default_port));
        let slots = (0..connections.max(1)).map(|_| Slot::default()).collect();
        let inner =
            Inner { provider, address, tls, timeout, slots, next: AtomicUsize::new(0), opened: AtomicU64::new(0) };
        Ok(Http2Client { inner: Arc::new(inner) })
    }

    /// POSTs the JSON `body` to `uri` (absolute, on this client's origin) with `headers` and this client's
    /// `content-type` and `content-length`, and reads the whole answer; an error is a transport failure described
    /// without the URL.
    ///
    /// A request the server refused unprocessed (a GOAWAY that excludes its stream, REFUSED_STREAM: RFC 9113
    /// §8.7) goes once more, on a fresh connection if need be, within the same timeout. Any other failure may
    /// have been processed. The refusing connection is given up, so the second try opens another unless one was
    /// opened meanwhile.
    pub async fn post_json(&self, uri: &Uri, headers: &[Header], body: Bytes) -> Result<Answer, String> {
        // Every send's future holds this one, and it is allocated and copied per send, so it is kept small: one
        // layer of `async fn` (its arguments take room for its whole life), the headers borrowed and the request
        // built between two awaits, the first try awaited in a statement of its own (a future awaited in a
        // `match` scrutinee lives through the whole match), the rare second try boxed.
        let deadline = tokio::time::Instant::now() + self.inner.timeout;
        let index = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.slots.len();
        let first = tokio::time::timeout_at(deadline, self.exchange_once(index, uri, headers, body.clone())).await;
        let connection = match first {
            Ok(Err(Failure::Unprocessed { connection, message })) => {
                tracing::debug!(provider = self.inner.provider, error = %message, "http/2 request refused unprocessed; resent");
                connection
            }
            Ok(answer) => return answer.map_err(Failure::into_message),
            Err(_) => return Err("timed out".to_string()),
        };
        self.inner.slots[index].forget(connection);
        match Box::pin(tokio::time::timeout_at(deadline, self.exchange_once(index, uri, headers, body))).await {
            Ok(answer) => answer.map_err(Failure::into_message),
            Err(_) => Err("timed out".to_string()),
        }
    }

    /// Connections opened so far (a reconnect counts again).
    #[cfg(test)]
    fn connections_opened(&self) -> u64 {
        self.inner.opened.load(Ordering::Relaxed)
    }

    /// One exchange on slot `index`.
    async fn exchange_once(&self, index: usize, uri: &Uri, headers: &[Header], body: Bytes) -> Result<Answer, Failure> {
        let Live { id, send } = self.ready(index).await.map_err(Failure::Other)?;
        let failed = |e: h2::Error| Failure::on(id, &e);
        let answer = {
            // In a block: the sender and the stream are not kept through the awaits below.
            let mut sender = send;
            let (answer, mut stream) =
                sender.send_request(post(uri, headers, body.len()), body.is_empty()).map_err(failed)?;
            if !body.is_empty() {
                // Buffered by h2 until the peer's flow-control window lets it go.
                stream.send_data(body, true).map_err(failed)?;
            }
            answer
        };
        let (http::response::Parts { status, headers, .. }, mut received) = answer.await.map_err(failed)?.into_parts();
        let mut body = Bytes::new();
        // Most answers are one DATA frame: kept as it came; only more frames are copied, into `more`.
        let mut more = Vec::new();
        while let Some(chunk) = received.data().await {
            let chunk = chunk.map_err(|e| Failure::Other(describe(&e)))?;
            let _ = received.flow_control().release_capacity(chunk.len());
            if body.is_empty() && more.is_empty() {
                body = chunk;
            } else {
                if more.is_empty() {
                    more.extend_from_slice(&body);
                }
                more.extend_from_slice(&chunk[..chunk.len().min(MAX_BODY.saturating_sub(more.len()))]);
            }
        }
        if !more.is_empty() {
            body = Bytes::from(more);
        }
        Ok(Answer { status: status.as_u16(), headers, body })
    }

    /// Slot `index`'s connection, ready for one more stream; opened (or reopened) if need be.
    async fn ready(&self, index: usize) -> Result<Live, String> {
        let slot = &self.inner.slots[index];
        let current = slot.live.lock().clone();
        let failed = match current {
            Some(live) => match live.send.ready().await {
                Ok(send) => return Ok(Live { id: live.id, send }),
                Err(e) => {
                    tracing::debug!(provider = self.inner.provider, error = %describe(&e), "http/2 connection gone");
                    slot.forget(live.id);
                    Some(live.id)
                }
            },
            None => None,
        };
        // Boxed: connecting (TCP, TLS, the HTTP/2 handshake) is rare but its state is kilobytes, which every
        // send's future would otherwise carry and copy.
        let live = Box::pin(self.connect(index, failed)).await?;
        let send = live.send.ready().await.map_err(|e| describe(&e))?;
        Ok(Live { id: live.id, send })
    }

    /// The slot's connection, opened here unless another send opened one since `failed` was seen.
    async fn connect(&self, index: usize, failed: Option<u64>) -> Result<Live, String> {
        let slot = &self.inner.slots[index];
        let _connecting = slot.connecting.lock().await;
        if let Some(live) = slot.live.lock().clone().filter(|live| Some(live.id) != failed) {
            return Ok(live);
        }
        let tcp = TcpStream::connect(&self.inner.address).await.map_err(|e| format!("connecting: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let id = self.inner.opened.fetch_add(1, Ordering::Relaxed) + 1;
        let send = match &self.inner.tls {
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await.map_err(|e| format!("tls: {e}"))?;
                if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err("the server did not agree to HTTP/2 (ALPN h2)".to_string());
                }
                self.handshake(Corked::new(tls), index, id).await?
            }
            None => self.handshake(Corked::new(tcp), index, id).await?,
        };
        let live = Live { id, send };
        *slot.live.lock() = Some(live.clone());
        Ok(live)
    }

    /// The HTTP/2 handshake on `io`; the connection is driven by its own task, which empties the slot when the
    /// connection ends. The task holds the client weakly: dropping the last clone closes the connections.
    async fn handshake<T>(&self, io: T, index: usize, id: u64) -> Result<SendRequest<Bytes>, String>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, connection) = h2::client::Builder::new()
            .enable_push(false)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake::<T, Bytes>(io)
            .await
            .map_err(|e| format!("http/2 handshake: {}", describe(&e)))?;
        let client: Weak<Inner> = Arc::downgrade(&self.inner);
        let provider = self.inner.provider;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(provider, error = %describe(&e), "http/2 connection ended");
            }
            if let Some(client) = client.upgrade() {
                client.slots[index].forget(id);
            }
        });
        Ok(send)
    }
}

impl Slot {
    /// Empties the slot if it still holds connection `id`.
    fn forget(&self, id: u64) {
        let mut live = self.live.lock();
        if live.as_ref().is_some_and(|l| l.id == id) {
            *live = None;
        }
    }
}

/// Every certificate of a PEM bundle; none is an error.
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    if certificates.is_empty() {
        return Err("no PEM certificate found".to_string());
    }
    Ok(certificates)
}

/// rustls on ring, the platform verifier with `extra_roots`, offering only `h2`.
fn tls_connector(
    provider: &'static str,
    host: &str,
    extra_roots: &[CertificateDer<'static>],
) -> Result<(TlsConnector, ServerName<'static>), BuildError> {
    let tls_error = |e: rustls::Error| BuildError::Http(format!("{provider}: tls: {e}"));
    let crypto = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots.iter().cloned(), crypto.clone())
            .map_err(tls_error)?;
    let mut config = ClientConfig::builder_with_provider(crypto)
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(bare.to_string())
        .map_err(|e| BuildError::invalid(provider, "base_url", format!("`{host}` is not a server name: {e}")))?;
    Ok((TlsConnector::from(Arc::new(config)), name))
}

/// Why an exchange failed: refused on `connection` before the server processed it (safe to send again), or
/// anything else.
enum Failure {
    Unprocessed { connection: u64, message: String },
    Other(String),
}

impl Failure {
    /// An h2 error on connection `connection`.
    fn on(connection: u64, error: &h2::Error) -> Failure {
        let message = describe(error);
        let unprocessed =
            (error.is_go_away() && error.is_remote()) || error.reason() == Some(h2::Reason::REFUSED_STREAM);
        if unprocessed { Failure::Unprocessed { connection, message } } else { Failure::Other(message) }
    }

    fn into_message(self) -> String {
        match self {
            Failure::Unprocessed { message, .. } | Failure::Other(message) => message,
        }
    }
}

/// A POST of `uri` with `headers` and a JSON body of `length` bytes.
fn post(uri: &Uri, headers: &[Header], length: usize) -> Request<()> {
    let mut request = Request::new(());
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri.clone();
    let map = request.headers_mut();
    map.reserve(headers.len() + 2);
    for (name, value) in headers {
        map.insert(name.clone(), value.clone());
    }
    map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    map.insert(CONTENT_LENGTH, HeaderValue::from(length));
    request
}

/// An h2 error as text, with its cause (`io` errors carry the useful part).
fn describe(error: &h2::Error) -> String {
    match error.get_io() {
        Some(io) => format!("{error}: {io}"),
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::sync::atomic::AtomicUsize;

    use http::header::CONTENT_TYPE;
    use serde_json::json;
    use tokio::net::TcpListener;

    use super::*;
    use crate::providers::testing::{Canned, FakePeer, dead_base_url};

    fn client(base: &str, timeout: Duration, connections: usize) -> Http2Client {
        Http2Client::new("fcm", base, timeout, &[], connections).unwrap()
    }

    async fn post(client: &Http2Client, base: &str, path: &str, body: &'static str) -> Result<Answer, String> {
        let uri: Uri = format!("{base}{path}").parse().unwrap();
        client.post_json(&uri, &[], Bytes::from_static(body.as_bytes())).await
    }

    #[tokio::test]
    async fn requests_take_the_connections_in_turn_and_keep_them() {
        let peer = FakePeer::start(|r| Canned::json(200, json!({"name": r.target}))).await;
        let client = client(&peer.base_url, Duration::from_secs(5), 2);
        for n in 0..6 {
            let answer = post(&client, &peer.base_url, &format!("/v1/send/{n}"), "{\"n\":1}").await.unwrap();
            assert_eq!(answer.status, 200);
            assert_eq!(answer.headers.get(CONTENT_TYPE).unwrap(), "application/json");
            assert_eq!(
                serde_json::from_slice::<serde_json::Value>(&answer.body).unwrap()["name"],
                format!("/v1/send/{n}")
            );
        }
        assert_eq!(client.connections_opened(), 2);
        let requests = peer.requests();
        assert_eq!(requests.len(), 6);
        assert_eq!((requests[0].method.as_str(), requests[0].body.as_ref()), ("POST", b"{\"n\":1}".as_ref()));
        assert_eq!(requests[0].header("content-type"), Some("application/json"));
    }

    #[tokio::test]
    async fn a_long_answer_is_read_across_frames_and_cut() {
        let peer = FakePeer::start(|_| Canned { status: 500, headers: vec![], body: "x".repeat(3 * MAX_BODY) }).await;
        let answer = post(&client(&peer.base_url, Duration::from_secs(5), 1), &peer.base_url, "/", "").await.unwrap();
        assert_eq!((answer.status, answer.body.len()), (500, MAX_BODY));
    }

    /// An h2c server that answers the first request of each connection (`connection <n>`) and refuses every
    /// later one unprocessed (REFUSED_STREAM), keeping the connection open.
    async fn one_answer_per_connection() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let n = accepted.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(async move {
                    let mut connection = h2::server::handshake(tcp).await.unwrap();
                    let mut answered = false;
                    while let Some(Ok((_request, mut respond))) = connection.accept().await {
                        if answered {
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                            continue;
                        }
                        answered = true;
                        let mut body = respond.send_response(http::Response::new(()), false).unwrap();
                        body.send_data(Bytes::from(format!("connection {n}")), true).unwrap();
                    }
                });
            }
        });
        base
    }

    #[tokio::test]
    async fn a_request_refused_unprocessed_is_resent_on_a_new_connection() {
        let base = one_answer_per_connection().await;
        let client = client(&base, Duration::from_secs(5), 1);
        for n in 1..=3 {
            let answer = post(&client, &base, "/send", "{}").await.unwrap();
            assert_eq!((answer.status, answer.body.as_ref()), (200, format!("connection {n}").as_bytes()));
        }
        assert_eq!(client.connections_opened(), 3);
    }

    /// An h2c server that answers one request and then closes the connection (GOAWAY, then EOF).
    async fn closing_after_one_answer() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut connection = h2::server::handshake(tcp).await.unwrap();
                    if let Some(Ok((_request, mut respond))) = connection.accept().await {
                        let mut body = respond.send_response(http::Response::new(()), false).unwrap();
                        body.send_data(Bytes::from_static(b"ok"), true).unwrap();
                    }
                    connection.graceful_shutdown();
                    let _ = poll_fn(|cx| connection.poll_closed(cx)).await;
                });
            }
        });
        base
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_reopened() {
        let base = closing_after_one_answer().await;
        let client = client(&base, Duration::from_secs(5), 1);
        for _ in 0..3 {
            assert_eq!(post(&client, &base, "/send", "{}").await.unwrap().body.as_ref(), b"ok");
        }
        assert_eq!(client.connections_opened(), 3);
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(tcp);
        });
        let error = post(&client(&base, Duration::from_millis(300), 1), &base, "/send", "{}").await.unwrap_err();
        assert_eq!(error, "timed out");
        held.abort();
    }

    #[tokio::test]
    async fn a_refused_connection_is_described_without_the_url() {
        let base = dead_base_url().await;
        let error = post(&client(&base, Duration::from_secs(5), 1), &base, "/3/device/secret-token", "{}").await;
        let error = error.unwrap_err();
        assert!(error.starts_with("connecting:"), "{error}");
        assert!(!error.contains("secret-token") && !error.contains("127.0.0.1"), "{error}");
    }

    #[test]
    fn origins_must_be_http_or_https_with_a_host() {
        let error = |base: &str| Http2Client::new("apns", base, Duration::from_secs(1), &[], 1).err().unwrap();
        assert!(error("ftp://x.example").to_string().starts_with("providers.apns.base_url:"));
        assert!(error("/just/a/path").to_string().starts_with("providers.apns.base_url:"));
        assert!(Http2Client::new("apns", "https://api.push.apple.com", Duration::from_secs(1), &[], 1).is_ok());
    }

    #[test]
    fn pem_bundles_need_a_certificate() {
        assert_eq!(pem_certificates(b"not a pem").unwrap_err(), "no PEM certificate found");
    }
}
