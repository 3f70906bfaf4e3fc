//! Integration tests of the provider sandbox: each one starts a real sandbox on port 0 (HTTP and SMTP) and
//! talks to it with real clients (reqwest, lettre, raw TCP). Events that happen later (status callbacks,
//! delivery reports) are awaited through channels or polled with a bounded deadline, never with fixed sleeps.

// The crate root is this file, so submodules need explicit paths into `tests/sandbox/`.
#[path = "sandbox/admin.rs"]
mod admin;
#[path = "sandbox/apns.rs"]
mod apns;
#[path = "sandbox/email.rs"]
mod email;
#[path = "sandbox/faults.rs"]
mod faults;
#[path = "sandbox/fcm.rs"]
mod fcm;
#[path = "sandbox/messaging.rs"]
mod messaging;
#[path = "sandbox/push.rs"]
mod push;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use herald::domain::ProviderKind;
use herald::sandbox::{FaultSettings, SandboxHandle, SandboxSettings};
use serde_json::Value;
use tokio::sync::mpsc;

/// How long a test waits for something asynchronous before failing.
const DEADLINE: Duration = Duration::from_secs(10);

/// A running sandbox and an HTTP client for it.
pub struct Sandbox {
    pub handle: SandboxHandle,
    pub http: reqwest::Client,
}

impl Sandbox {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.handle.http_addr())
    }

    /// `GET path` and the JSON answer.
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// Waits until the record holds `n` messages.
    pub async fn wait_for_records(&self, n: usize) -> Vec<herald::sandbox::ReceivedMessage> {
        eventually(|| async {
            let record = self.handle.record();
            (record.len() >= n).then_some(record)
        })
        .await
    }
}

pub fn settings(seed: u64, faults: BTreeMap<ProviderKind, FaultSettings>) -> SandboxSettings {
    SandboxSettings {
        enabled: true,
        listen: "127.0.0.1:0".parse().unwrap(),
        smtp_listen: "127.0.0.1:0".parse().unwrap(),
        tls_listen: "127.0.0.1:0".parse().unwrap(),
        ca_out: String::new(),
        report_url: String::new(),
        seed,
        faults,
        fcm_service_accounts: Vec::new(),
        fcm_token_lifetime_s: 3600,
        smtp_require_tls: false,
        apns_keys: Vec::new(),
        apns_token_max_age_s: 3600,
        bizppurio_token_lifetime_s: 86_400,
    }
}

/// A perfectly behaved sandbox that posts Bizppurio reports to `report_url` (may be empty).
pub async fn spawn_with_reports(report_url: &str) -> Sandbox {
    spawn_configured(settings(42, BTreeMap::new()), report_url).await
}

pub async fn spawn() -> Sandbox {
    spawn_with_reports("").await
}

pub async fn spawn_configured(settings: SandboxSettings, report_url: &str) -> Sandbox {
    let handle = herald::sandbox::start(&settings, report_url.to_string()).await.expect("sandbox starts");
    // No proxy: the sandbox is on loopback and an HTTP_PROXY in the environment must not reroute requests.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    Sandbox { handle, http }
}

/// A client for the sandbox's TLS listener: trusts its CA, speaks HTTP/2 when offered by ALPN.
pub fn tls_client(handle: &SandboxHandle) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(handle.ca_pem().as_bytes()).expect("the sandbox CA is PEM");
    reqwest::Client::builder().no_proxy().add_root_certificate(ca).build().unwrap()
}

/// The URL of `path` on the sandbox's TLS listener.
pub fn tls_url(handle: &SandboxHandle, path: &str) -> String {
    format!("https://{}{path}", handle.tls_addr())
}

/// Polls `check` until it yields a value; fails the test after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let give_up = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < give_up, "condition not met within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One request received by a [`webhook_receiver`].
#[derive(Debug)]
pub struct Received {
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A tiny HTTP server standing in for Herald's webhooks: every POST to any path is passed to the channel.
pub async fn webhook_receiver() -> (SocketAddr, mpsc::UnboundedReceiver<Received>) {
    async fn receive(
        State(tx): State<mpsc::UnboundedSender<Received>>,
        uri: axum::http::Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> &'static str {
        let _ = tx.send(Received { uri: uri.to_string(), headers, body });
        "ok"
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let router = Router::new().fallback(post(receive)).with_state(tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (addr, rx)
}

/// The next request the receiver got, within [`DEADLINE`].
pub async fn next_received(rx: &mut mpsc::UnboundedReceiver<Received>) -> Received {
    tokio::time::timeout(DEADLINE, rx.recv()).await.expect("webhook within the deadline").expect("receiver open")
}

#[tokio::test]
async fn start_refuses_invalid_fault_settings() {
    let bad = BTreeMap::from([(ProviderKind::Fcm, FaultSettings { error_rate: 1.5, ..Default::default() })]);
    let error = herald::sandbox::start(&settings(1, bad), String::new()).await.err().expect("refused");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn a_report_url_off_this_host_disables_reports_but_not_the_sandbox() {
    let sandbox = spawn_with_reports("https://herald.example.com/webhooks/alimtalk").await;
    let (status, _) = sandbox.get_json("/_sandbox/stats").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn shutdown_stops_both_listeners() {
    let sandbox = spawn().await;
    let (http, smtp) = (sandbox.handle.http_addr(), sandbox.handle.smtp_addr());
    assert_ne!(http.port(), 0);
    assert_ne!(smtp.port(), 0);
    sandbox.handle.shutdown();
    tokio::time::timeout(DEADLINE, sandbox.handle.stopped()).await.expect("listeners stop");
    assert!(tokio::net::TcpStream::connect(smtp).await.is_err());
    assert!(tokio::net::TcpStream::connect(http).await.is_err());
}
