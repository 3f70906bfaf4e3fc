//! This machine's raw loopback HTTP limit: a bare client sends the FCM v1 requests Herald sends, straight to the
//! sandbox, closed loop with enough requests in flight to saturate it, for a few seconds. Same transport as
//! Herald's FCM client: the same reqwest settings (HTTP/2 by ALPN over the sandbox's TLS, one pooled connection),
//! the same service-account OAuth2 token from the sandbox's `/token`, the same message shape. Herald's
//! delivered/s divided by this rate is the share of the bare limit the engine reaches.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herald::providers::dev_credentials::FCM_SERVICE_ACCOUNT_JSON;
use herald::providers::fcm::ServiceAccount;
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
    /// `HTTP/2.0 over TLS`, `HTTP/1.1 plain`, ...
    pub transport: String,
}

const TIMEOUT: Duration = Duration::from_secs(10);
const GRANT_TYPE: &str = "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer";

/// Herald's provider client settings (`providers/http.rs`), with `target`'s CA trusted.
fn client(target: &Target) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .pool_max_idle_per_host(1024)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .http2_adaptive_window(true)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(pem) = &target.ca_pem {
        let ca = reqwest::Certificate::from_pem(pem).map_err(|e| format!("the sandbox CA: {e}"))?;
        builder = builder.add_root_certificate(ca);
    }
    builder.build().map_err(|e| format!("building the raw client: {e}"))
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
    let http = client(target)?;
    let account = ServiceAccount::from_json(FCM_SERVICE_ACCOUNT_JSON)
        .map_err(|e| format!("the development service account: {e}"))?;
    let bearer = format!("Bearer {}", access_token(&http, &target.base, &account).await?);
    let url = format!("{}/v1/projects/{}/messages:send", target.base, account.project_id);

    // One request first, to open the connection and learn the protocol.
    let probe = http
        .post(&url)
        .header("authorization", &bearer)
        .json(&message("lt-token-raw", &format!("{tag} r probe"), "raw-probe"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("POST {url}: {e}"))?;
    let scheme = if target.base.starts_with("https") { "TLS" } else { "plain" };
    let transport = format!("{:?} over {scheme}", probe.version());

    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (http, url, bearer, tag) = (http.clone(), url.clone(), bearer.clone(), tag.to_string());
        let (next, ok, errors) = (next.clone(), ok.clone(), errors.clone());
        workers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let body = serde_json::to_vec(&message("lt-token-raw", &format!("{tag} r {n}"), &format!("raw-{n}")))
                    .expect("a JSON value serializes");
                let sent = http
                    .post(&url)
                    .header("authorization", &bearer)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let answered = match sent {
                    Ok(response) if response.status().is_success() => response.bytes().await.is_ok(),
                    _ => false,
                };
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
