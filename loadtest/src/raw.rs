//! This machine's raw loopback HTTP limit: a bare client sends the FCM v1 requests Herald sends, straight to the
//! sandbox, closed loop with enough requests in flight to saturate it, for a few seconds. Same transport as
//! Herald's FCM client: its HTTP/2 client (`herald::providers::http2`, over the sandbox's TLS, the same number
//! of connections), the same service-account OAuth2 token from the sandbox's `/token`, the same message shape.
//! Herald's delivered/s divided by this rate is the share of the bare limit the engine reaches.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herald::providers::dev_credentials::FCM_SERVICE_ACCOUNT_JSON;
use herald::providers::fcm::ServiceAccount;
use herald::providers::http2::{self, Http2Client};
use http::header::AUTHORIZATION;
use http::{HeaderValue, Uri};
use serde::Serialize;
use serde_json::{Value, json};

/// Where the raw client sends: the sandbox base URL Herald's FCM client uses, and the CA to trust for it.
pub struct Target {
    pub base: String,
    pub ca_pem: Option<Vec<u8>>,
}

/// What the raw measurement saw.
#[derive(Clone, Debug, Serialize)]
pub struct Raw {
    pub requests_per_s: f64,
    /// Successful sends within the measured time.
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub concurrency: usize,
    /// `HTTP/2 over TLS` or `HTTP/2 plain (h2c)`
    pub transport: String,
}

const TIMEOUT: Duration = Duration::from_secs(10);
const GRANT_TYPE: &str = "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer";

/// A client for the token request (HTTP/1.1 or 2, once), with `target`'s CA trusted.
fn token_client(target: &Target) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder().timeout(TIMEOUT);
    if let Some(pem) = &target.ca_pem {
        let ca = reqwest::Certificate::from_pem(pem).map_err(|e| format!("the sandbox CA: {e}"))?;
        builder = builder.add_root_certificate(ca);
    }
    builder.build().map_err(|e| format!("building the token client: {e}"))
}

/// Herald's FCM send client (`providers/http2.rs`, as many connections), with `target`'s CA trusted.
fn send_client(target: &Target) -> Result<Http2Client, String> {
    let roots = match &target.ca_pem {
        Some(pem) => http2::pem_certificates(pem).map_err(|e| format!("the sandbox CA: {e}"))?,
        None => Vec::new(),
    };
    Http2Client::new("fcm", &target.base, TIMEOUT, &roots, http2::CONNECTIONS).map_err(|e| e.to_string())
}

/// An access token from the sandbox's OAuth2 endpoint for the development service account.
async fn access_token(http: &reqwest::Client, base: &str, account: &ServiceAccount) -> Result<String, String> {
    let token_uri = format!("{base}/token");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let form = format!("grant_type={GRANT_TYPE}&assertion={}", account.assertion(&token_uri, now));
    let answer: Value = http
        .post(&token_uri)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("POST {token_uri}: {e}"))?
        .json()
        .await
        .map_err(|e| format!("POST {token_uri}: {e}"))?;
    answer["access_token"].as_str().map(str::to_string).ok_or_else(|| format!("POST {token_uri}: no access_token"))
}

/// The message Herald's FCM client would send for an Android push (`providers/fcm/client.rs`).
pub fn message(token: &str, body: &str, delivery_id: &str) -> Value {
    json!({"message": {
        "token": token,
        "notification": {"title": "lt", "body": body},
        "data": {"herald_delivery_id": delivery_id},
        "android": {"priority": "HIGH"},
    }})
}

/// Sends for `seconds` with `concurrency` requests in flight; bodies are `<tag> r <n>`.
pub async fn measure(target: &Target, seconds: f64, concurrency: usize, tag: &str) -> Result<Raw, String> {
    let sends = send_client(target)?;
    let account = ServiceAccount::from_json(FCM_SERVICE_ACCOUNT_JSON)
        .map_err(|e| format!("the development service account: {e}"))?;
    let token = access_token(&token_client(target)?, &target.base, &account).await?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| format!("the access token: {e}"))?;
    let url = format!("{}/v1/projects/{}/messages:send", target.base, account.project_id);
    let uri: Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let headers = [(AUTHORIZATION, bearer)];

    // One request first, to open the connection and see that it works.
    let probe = serde_json::to_vec(&message("lt-token-raw", &format!("{tag} r probe"), "raw-probe")).expect("JSON");
    let answer = sends.post_json(&uri, &headers, probe.into()).await;
    let answer = answer.map_err(|e| format!("POST {url}: {e}"))?;
    if !(200..300).contains(&answer.status) {
        return Err(format!("POST {url}: answered {}", answer.status));
    }
    let scheme = if target.base.starts_with("https") { "over TLS" } else { "plain (h2c)" };
    let transport = format!("HTTP/2 {scheme}, {} connections", http2::CONNECTIONS);

    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (sends, uri, headers, tag) = (sends.clone(), uri.clone(), headers.clone(), tag.to_string());
        let (next, ok, errors) = (next.clone(), ok.clone(), errors.clone());
        workers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let body = serde_json::to_vec(&message("lt-token-raw", &format!("{tag} r {n}"), &format!("raw-{n}")))
                    .expect("a JSON value serializes");
                let sent = sends.post_json(&uri, &headers, body.into()).await;
                let answered = matches!(sent, Ok(a) if (200..300).contains(&a.status));
                // Only answers within the window count, so the rate is over exactly the measured seconds.
                if Instant::now() <= deadline {
                    let counter = if answered { &ok } else { &errors };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for worker in workers {
        worker.await.map_err(|e| format!("a raw-rate task failed: {e}"))?;
    }
    let requests = ok.load(Ordering::Relaxed);
    Ok(Raw {
        requests_per_s: requests as f64 / seconds,
        requests,
        errors: errors.load(Ordering::Relaxed),
        seconds,
        concurrency,
        transport,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_has_herald_fcm_shape() {
        let message = message("tok", "lt1 r 3", "raw-3");
        assert_eq!(message["message"]["token"], "tok");
        assert_eq!(message["message"]["notification"]["body"], "lt1 r 3");
        assert_eq!(message["message"]["data"]["herald_delivery_id"], "raw-3");
        assert_eq!(message["message"]["android"]["priority"], "HIGH");
    }
}
