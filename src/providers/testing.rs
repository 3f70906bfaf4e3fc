//! Test support for the provider clients: a tiny HTTP peer on `127.0.0.1:0` that records every request and
//! answers with a canned response, and helpers to build requests. Below the trait boundary only: the engine's
//! tests use the real sandbox.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, Response, StatusCode};
use parking_lot::Mutex;

use super::SendRequest;
use crate::domain::{Address, Priority, Rendered};

/// One request the peer received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    pub fn form(&self) -> Vec<(String, String)> {
        serde_urlencoded::from_bytes(&self.body).expect("a form body")
    }
}

/// A canned answer.
pub struct Canned {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Canned {
    pub fn json(status: u16, body: serde_json::Value) -> Canned {
        Canned { status, headers: vec![("content-type", "application/json".into())], body: body.to_string() }
    }

    pub fn empty(status: u16) -> Canned {
        Canned { status, headers: vec![], body: String::new() }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Canned {
        self.headers.push((name, value.into()));
        self
    }
}

type Responder = dyn Fn(&Recorded) -> Canned + Send + Sync;

/// The fake provider. Dropping it stops the server.
pub struct FakePeer {
    pub base_url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakePeer {
    /// Starts a peer answering every request with `respond`.
    pub async fn start(respond: impl Fn(&Recorded) -> Canned + Send + Sync + 'static) -> FakePeer {
        let respond: Arc<Responder> = Arc::new(respond);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&requests);
        let app = axum::Router::new().fallback(move |request: Request<Body>| {
            let respond = Arc::clone(&respond);
            let recorded = Arc::clone(&recorded);
            async move {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
                let request = Recorded {
                    method: parts.method.to_string(),
                    target: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
                    headers: parts.headers,
                    body,
                };
                let canned = respond(&request);
                recorded.lock().push(request);
                let mut response = Response::new(Body::from(canned.body));
                *response.status_mut() = StatusCode::from_u16(canned.status).unwrap();
                for (name, value) in canned.headers {
                    response.headers_mut().insert(name, value.parse().unwrap());
                }
                response
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakePeer { base_url, requests, task }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().clone()
    }

    /// Requests whose path starts with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.requests.lock().iter().filter(|r| r.target.starts_with(prefix)).count()
    }
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A base URL nothing listens on.
pub async fn dead_base_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

pub const DELIVERY_ID: &str = "0190f5e2a3b47c8d9e0f1a2b3c4d5e6f";

pub fn request(address: Address, title: Option<&str>, body: &str, priority: Priority) -> SendRequest {
    SendRequest {
        delivery_id: DELIVERY_ID.to_string(),
        address,
        content: Arc::new(Rendered {
            title: title.map(str::to_string),
            body: body.to_string(),
            html: None,
            template_code: None,
        }),
        priority,
        attempt: 1,
    }
}

pub fn http_clients() -> super::http::HttpClients {
    super::http::HttpClients::new(std::time::Duration::from_secs(5), Vec::new()).unwrap()
}

pub fn http_client() -> reqwest::Client {
    http_clients().shared
}
