//! The FCM HTTP v1 client: one `messages:send` request per delivery, authorized by the shared OAuth2 access
//! token (`oauth.rs`); a token FCM refuses is replaced and the send tried once more.

use std::sync::Arc;
use std::time::Duration;

use ::http::header::AUTHORIZATION;
use ::http::{HeaderValue, Uri};
use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::account::ServiceAccount;
use super::oauth::{AccessTokens, Clock, SystemClock, TokenFailure};
use super::{FcmError, FcmSettings};
use crate::domain::{Address, Platform, Priority, ProviderKind};
use crate::providers::dev_credentials::FCM_SERVICE_ACCOUNT_JSON;
use crate::providers::http::HttpClients;
use crate::providers::http2::{Answer, Http2Client};
use crate::providers::{Accepted, BuildError, Provider, ProviderError, SendRequest, http, log_refusal, wrong_address};

/// Sends Android and web push through FCM.
pub struct FcmClient {
    sends: Http2Client,
    /// `{base}/v1/projects/{project}/messages:send`, parsed once.
    uri: Uri,
    tokens: AccessTokens,
}

impl FcmClient {
    /// A client on the system clock.
    pub fn new(http: &HttpClients, settings: &FcmSettings) -> Result<FcmClient, BuildError> {
        FcmClient::with_clock(http, settings, Arc::new(SystemClock))
    }

    /// A client whose token expiry follows `clock` (tests).
    pub fn with_clock(
        http: &HttpClients,
        settings: &FcmSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<FcmClient, BuildError> {
        let base = http::base_url("fcm", &settings.base_url)?;
        let account = load_account(&settings.service_account_file)?;
        let project = if settings.project_id.is_empty() { &account.project_id } else { &settings.project_id };
        if project.is_empty() {
            return Err(BuildError::invalid("fcm", "project_id", "must be set (the service account has none)"));
        }
        let token_uri = if settings.token_uri.is_empty() { &account.token_uri } else { &settings.token_uri };
        let token_uri = match reqwest::Url::parse(token_uri) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => url,
            _ => return Err(BuildError::invalid("fcm", "token_uri", format!("`{token_uri}` is not an http(s) URL"))),
        };
        if settings.service_account_file.is_empty() && !is_loopback(&base) {
            tracing::warn!(
                provider = "fcm",
                "providers.fcm.service_account_file is empty: the development account only works with the \
                 sandbox, and providers.fcm.base_url is not on this host"
            );
        }
        let mut url = format!("{base}/v1/projects/");
        http::push_encoded(&mut url, project);
        url.push_str("/messages:send");
        let margin = Duration::from_secs(settings.token_refresh_margin_s);
        let tokens = AccessTokens::new(http.shared.clone(), account, token_uri, margin, clock);
        let uri = url.parse().map_err(|e| BuildError::invalid("fcm", "base_url", format!("`{url}`: {e}")))?;
        Ok(FcmClient { sends: http.http2("fcm", &base)?, uri, tokens })
    }

    async fn authorization(&self, token: &str) -> Result<HeaderValue, ProviderError> {
        self.tokens
            .header()
            .await
            .map_err(|TokenFailure { error, message, retry_after }| refused(error, message, retry_after, token))
    }
}

/// Reads FCM's answer to one POST: an error answer comes back classified.
fn read_answer(answer: Result<Answer, String>) -> Result<Accepted, Refusal> {
    let answer = answer.map_err(|message| (FcmError::Transport, message, None))?;
    if (200..300).contains(&answer.status) {
        let name = serde_json::from_slice::<SendAnswer>(&answer.body).ok().and_then(|a| a.name);
        return Ok(Accepted::Delivered { provider_message_id: name });
    }
    let (error, message) = classify(answer.status, &answer.body);
    Err((error, message, http::retry_after(&answer.headers)))
}

/// A classified error answer: the error, its message, the `Retry-After` wait.
type Refusal = (FcmError, String, Option<Duration>);

/// The configured service account, or the development one when none is configured.
fn load_account(file: &str) -> Result<ServiceAccount, BuildError> {
    let invalid = |message: String| BuildError::invalid("fcm", "service_account_file", message);
    if file.is_empty() {
        return ServiceAccount::from_json(FCM_SERVICE_ACCOUNT_JSON)
            .map_err(|e| invalid(format!("the development account: {e}")));
    }
    let json = std::fs::read_to_string(file).map_err(|e| invalid(format!("`{file}`: {e}")))?;
    ServiceAccount::from_json(&json).map_err(|e| invalid(format!("`{file}`: {e}")))
}

/// Whether a base URL names this host (the sandbox), where the development account is fine.
fn is_loopback(base: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(base) else { return false };
    match url.host_str() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

#[async_trait]
impl Provider for FcmClient {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Fcm
    }

    async fn send(&self, request: &SendRequest) -> Result<Accepted, ProviderError> {
        let Address::Device { token, platform } = &request.address else {
            return Err(wrong_address(ProviderKind::Fcm, &request.address));
        };
        // Serialized once: a retry with a fresh token sends the same bytes.
        let body = message_body(request, token, *platform);
        let mut headers = [(AUTHORIZATION, self.authorization(token).await?)];
        let mut outcome = read_answer(self.sends.post_json(&self.uri, &headers, body.clone()).await);
        if matches!(outcome, Err((FcmError::Unauthenticated, ..))) {
            // FCM no longer takes this token (revoked, expired early, our clock off): drop it and try once more
            // with a fresh one. A second refusal is reported (retryable, alerting).
            self.tokens.invalidate(&headers[0].1);
            headers[0].1 = self.authorization(token).await?;
            outcome = read_answer(self.sends.post_json(&self.uri, &headers, body).await);
        }
        outcome.map_err(|(error, message, retry_after)| refused(error, message, retry_after, token))
    }
}

/// The `messages:send` body for `request` to device `token`. A plain function, so that none of its temporaries
/// take room in the send's future.
fn message_body(request: &SendRequest, token: &str, platform: Platform) -> Bytes {
    let body = SendBody {
        message: Message {
            token,
            notification: Notification { title: request.content.title.as_deref(), body: &request.content.body },
            data: Data { herald_delivery_id: &request.delivery_id },
            android: Android { priority: android_priority(request.priority) },
            apns: (platform == Platform::Ios)
                .then(|| Apns { headers: ApnsHeaders { priority: apns_priority(request.priority) } }),
        },
    };
    // Sized up front (the fixed fields take ~170 bytes): growing from serde_json's 128 bytes copied it two or
    // three times.
    let title = request.content.title.as_ref().map_or(0, String::len);
    let mut bytes = Vec::with_capacity(224 + token.len() + title + request.content.body.len());
    serde_json::to_writer(&mut bytes, &body).expect("the FCM message serializes");
    Bytes::from(bytes)
}

fn refused(error: FcmError, message: String, retry_after: Option<Duration>, token: &str) -> ProviderError {
    let label = error.metric_label();
    let error = error.into_provider_error(message, retry_after);
    log_refusal(&error, label, token);
    error
}

/// HIGH wakes the device at once; critical and high notifications need that.
fn android_priority(priority: Priority) -> &'static str {
    match priority {
        Priority::Critical | Priority::High => "HIGH",
        Priority::Normal | Priority::Low => "NORMAL",
    }
}

/// The same choice for iOS devices reached through FCM: 10 delivers at once, 5 when the device sees fit.
fn apns_priority(priority: Priority) -> &'static str {
    match priority {
        Priority::Critical | Priority::High => "10",
        Priority::Normal | Priority::Low => "5",
    }
}

/// Reads an FCM error answer: `details[].errorCode` first (the top-level status can be generic).
pub(crate) fn classify(status: u16, body: &[u8]) -> (FcmError, String) {
    let answer = serde_json::from_slice::<ErrorAnswer>(body).ok().map(|a| a.error);
    let Some(answer) = answer else {
        return (FcmError::from_answer(status, None), http::snippet(body, 200));
    };
    let code = answer.details.iter().find_map(|d| d.error_code.as_deref()).or(answer.status.as_deref());
    (FcmError::from_answer(status, code), answer.message.unwrap_or_default())
}

#[derive(Serialize)]
struct SendBody<'a> {
    message: Message<'a>,
}

#[derive(Serialize)]
struct Message<'a> {
    token: &'a str,
    notification: Notification<'a>,
    data: Data<'a>,
    android: Android,
    #[serde(skip_serializing_if = "Option::is_none")]
    apns: Option<Apns>,
}

#[derive(Serialize)]
struct Notification<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    body: &'a str,
}

#[derive(Serialize)]
struct Data<'a> {
    herald_delivery_id: &'a str,
}

#[derive(Serialize)]
struct Android {
    priority: &'static str,
}

#[derive(Serialize)]
struct Apns {
    headers: ApnsHeaders,
}

#[derive(Serialize)]
struct ApnsHeaders {
    #[serde(rename = "apns-priority")]
    priority: &'static str,
}

#[derive(Deserialize)]
struct SendAnswer {
    name: Option<String>,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    message: Option<String>,
    status: Option<String>,
    #[serde(default)]
    details: Vec<ErrorDetail>,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(rename = "errorCode")]
    error_code: Option<String>,
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;

    use super::*;
    use crate::providers::ErrorClass;
    use crate::providers::testing::{Canned, DELIVERY_ID, FakePeer, Recorded, dead_base_url, http_clients, request};

    const SEND_PATH: &str = "/v1/projects/herald-test/messages:send";

    fn settings(base_url: &str) -> FcmSettings {
        FcmSettings {
            base_url: format!("{base_url}/"),
            project_id: "herald-test".into(),
            service_account_file: String::new(),
            token_uri: format!("{base_url}/token"),
            token_refresh_margin_s: 300,
        }
    }

    fn client(base_url: &str) -> FcmClient {
        FcmClient::new(&http_clients(), &settings(base_url)).unwrap()
    }

    /// A peer that hands out `ya29.token` at `/token` and answers sends with `respond`.
    async fn peer(respond: impl Fn(&Recorded) -> Canned + Send + Sync + 'static) -> FakePeer {
        FakePeer::start(move |r| {
            if r.target == "/token" {
                Canned::json(200, json!({"access_token": "ya29.token", "expires_in": 3600, "token_type": "Bearer"}))
            } else {
                respond(r)
            }
        })
        .await
    }

    fn sends(peer: &FakePeer) -> Vec<Recorded> {
        peer.requests().into_iter().filter(|r| r.target != "/token").collect()
    }

    fn push(token: &str, priority: Priority) -> SendRequest {
        request(Address::Device { token: token.into(), platform: Platform::Android }, Some("Hi"), "Body", priority)
    }

    fn fcm_error(status: u16, error_code: &str) -> serde_json::Value {
        json!({"error": {"code": status, "message": format!("because {error_code}"), "status": "GENERIC",
            "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code}]}})
    }

    fn unauthenticated() -> Canned {
        Canned::json(
            401,
            json!({"error": {"code": 401, "message": "Request had invalid authentication credentials.",
                "status": "UNAUTHENTICATED"}}),
        )
    }

    #[tokio::test]
    async fn send_posts_the_v1_message_and_reads_the_name() {
        let peer = peer(|_| Canned::json(200, json!({"name": "projects/herald-test/messages/42"}))).await;
        let accepted = client(&peer.base_url).send(&push("tok-1", Priority::High)).await.unwrap();
        assert_eq!(
            accepted,
            Accepted::Delivered { provider_message_id: Some("projects/herald-test/messages/42".into()) }
        );
        let sent = &sends(&peer)[0];
        assert_eq!(sent.method, "POST");
        assert_eq!(sent.target, SEND_PATH);
        assert_eq!(sent.header("authorization"), Some("Bearer ya29.token"));
        assert_eq!(sent.header("content-type"), Some("application/json"));
        assert_eq!(
            sent.json(),
            json!({"message": {
                "token": "tok-1",
                "notification": {"title": "Hi", "body": "Body"},
                "data": {"herald_delivery_id": DELIVERY_ID},
                "android": {"priority": "HIGH"}
            }})
        );
    }

    #[tokio::test]
    async fn normal_priority_and_no_title() {
        let peer = peer(|_| Canned::json(200, json!({"name": "n"}))).await;
        let mut req = push("tok-1", Priority::Low);
        req.content = std::sync::Arc::new(crate::domain::Rendered { title: None, ..(*req.content).clone() });
        client(&peer.base_url).send(&req).await.unwrap();
        let body = sends(&peer)[0].json();
        assert_eq!(body["message"]["android"]["priority"], "NORMAL");
        assert_eq!(body["message"]["notification"], json!({"body": "Body"}));
    }

    #[tokio::test]
    async fn ios_tokens_carry_the_apns_priority() {
        let peer = peer(|_| Canned::json(200, json!({"name": "n"}))).await;
        let client = client(&peer.base_url);
        for (priority, expected) in [(Priority::Critical, "10"), (Priority::Normal, "5")] {
            let address = Address::Device { token: "ios-tok".into(), platform: Platform::Ios };
            client.send(&request(address, None, "x", priority)).await.unwrap();
            let body = sends(&peer).pop().unwrap().json();
            assert_eq!(body["message"]["apns"], json!({"headers": {"apns-priority": expected}}));
        }
    }

    #[test]
    fn priorities_follow_herald_priority() {
        assert_eq!(android_priority(Priority::Critical), "HIGH");
        assert_eq!(android_priority(Priority::High), "HIGH");
        assert_eq!(android_priority(Priority::Normal), "NORMAL");
        assert_eq!(android_priority(Priority::Low), "NORMAL");
        assert_eq!(apns_priority(Priority::High), "10");
        assert_eq!(apns_priority(Priority::Low), "5");
    }

    #[tokio::test]
    async fn every_error_code_is_classified_from_the_wire() {
        let cases = [
            ("UNREGISTERED", 404, ErrorClass::Unregistered, false),
            ("INVALID_ARGUMENT", 400, ErrorClass::Permanent, false),
            ("SENDER_ID_MISMATCH", 403, ErrorClass::Permanent, false),
            ("THIRD_PARTY_AUTH_ERROR", 401, ErrorClass::Permanent, true),
            ("QUOTA_EXCEEDED", 429, ErrorClass::RateLimited, false),
            ("UNAVAILABLE", 503, ErrorClass::Retryable, false),
            ("INTERNAL", 500, ErrorClass::Retryable, false),
        ];
        // The peer answers by token, so one server covers every case.
        let peer = peer(move |r| {
            let token = r.json()["message"]["token"].as_str().unwrap().to_string();
            let (code, status, ..) = cases.iter().find(|c| c.0 == token).unwrap();
            Canned::json(*status, fcm_error(*status, code))
        })
        .await;
        let client = client(&peer.base_url);
        for (code, _, class, alert) in cases {
            let error = client.send(&push(code, Priority::Normal)).await.unwrap_err();
            assert_eq!((error.class, error.code.as_str(), error.alert), (class, code, alert));
            assert_eq!(error.provider, ProviderKind::Fcm);
            assert_eq!(error.message, format!("because {code}"));
        }
        // THIRD_PARTY_AUTH_ERROR is a 401 too, but about our APNs credentials: no token refresh, no retry.
        assert_eq!(peer.count("/token"), 1);
        assert_eq!(sends(&peer).len(), cases.len());
    }

    #[tokio::test]
    async fn retry_after_is_honoured_in_seconds_and_dates() {
        let peer = peer(|r| {
            let token = r.json()["message"]["token"].as_str().unwrap().to_string();
            let wait = if token == "seconds" { "30".to_string() } else { "Fri, 01 Jan 2100 00:00:00 GMT".to_string() };
            Canned::json(429, fcm_error(429, "QUOTA_EXCEEDED")).with_header("retry-after", wait)
        })
        .await;
        let client = client(&peer.base_url);
        let error = client.send(&push("seconds", Priority::Normal)).await.unwrap_err();
        assert_eq!(error.retry_after, Some(Duration::from_secs(30)));
        let error = client.send(&push("date", Priority::Normal)).await.unwrap_err();
        assert!(error.retry_after.unwrap() > Duration::from_secs(365 * 24 * 3600));
    }

    /// Every send allocates its future and copies it through each layer of `async fn`s. Connecting, the token
    /// exchange and the second try are boxed so that their kilobytes of state are not part of it (it was 8 KiB;
    /// the copies and the allocator's slow path took ~4% of Herald's CPU at a 35,000/s spike), and it stays
    /// within mimalloc's small objects (1 KiB), which take its fast path.
    #[tokio::test]
    async fn a_send_future_stays_small() {
        let client = client(&dead_base_url().await);
        let request = push("token-1", Priority::High);
        let send = Provider::send(&client, &request);
        let size = std::mem::size_of_val(&*send);
        assert!(size <= 1024, "a send's future takes {size} bytes");
    }

    #[tokio::test]
    async fn a_refused_token_is_replaced_and_the_send_retried_once() {
        let issued = AtomicUsize::new(0);
        let peer = FakePeer::start(move |r| {
            if r.target == "/token" {
                let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
                return Canned::json(200, json!({"access_token": format!("ya29.{n}"), "expires_in": 3600}));
            }
            // FCM has stopped honouring the first token.
            if r.header("authorization") == Some("Bearer ya29.1") {
                unauthenticated()
            } else {
                Canned::json(200, json!({"name": "n"}))
            }
        })
        .await;
        let client = client(&peer.base_url);
        client.send(&push("tok", Priority::Normal)).await.unwrap();
        let auth: Vec<_> = sends(&peer).iter().map(|r| r.header("authorization").unwrap().to_string()).collect();
        assert_eq!(auth, ["Bearer ya29.1", "Bearer ya29.2"]);
        client.send(&push("tok", Priority::Normal)).await.unwrap();
        assert_eq!(peer.count("/token"), 2, "the new token is kept");
    }

    #[tokio::test]
    async fn a_second_refusal_is_retryable_and_alerts() {
        let peer = peer(|_| unauthenticated()).await;
        let error = client(&peer.base_url).send(&push("tok", Priority::Normal)).await.unwrap_err();
        assert_eq!((error.class, error.code.as_str(), error.alert), (ErrorClass::Retryable, "UNAUTHENTICATED", true));
        assert_eq!((peer.count("/token"), sends(&peer).len()), (2, 2), "one retry, not more");
    }

    #[tokio::test]
    async fn a_refused_assertion_fails_the_send_without_sending() {
        let peer =
            FakePeer::start(|_| Canned::json(400, json!({"error": "invalid_grant", "error_description": "bad"}))).await;
        let error = client(&peer.base_url).send(&push("tok", Priority::Normal)).await.unwrap_err();
        assert_eq!((error.class, error.code.as_str(), error.alert), (ErrorClass::Permanent, "invalid_grant", true));
        assert!(sends(&peer).is_empty());
    }

    #[test]
    fn the_status_is_the_fallback_code() {
        let body = json!({"error": {"code": 503, "message": "down", "status": "UNAVAILABLE"}}).to_string();
        let (error, message) = classify(503, body.as_bytes());
        assert_eq!((error, message.as_str()), (FcmError::Unavailable, "down"));
        let body = json!({"error": {"code": 404, "message": "gone", "status": "NOT_FOUND"}}).to_string();
        assert_eq!(classify(404, body.as_bytes()).0.class(), ErrorClass::Permanent);
    }

    #[test]
    fn unknown_answers_are_classed_by_status() {
        assert_eq!(classify(502, b"<html>bad gateway</html>").0.class(), ErrorClass::Retryable);
        assert_eq!(classify(502, b"").0.code(), "http_502");
        assert_eq!(classify(418, b"{}").0.class(), ErrorClass::Permanent);
        let body = json!({"error": {"code": 500, "status": "DATA_LOSS"}}).to_string();
        assert_eq!(classify(500, body.as_bytes()).0, FcmError::Other { status: 500, code: "DATA_LOSS".into() });
    }

    #[tokio::test]
    async fn connection_failures_are_transport_errors() {
        let dead = dead_base_url().await;
        let token_peer = peer(|_| Canned::empty(500)).await;
        let settings = FcmSettings { token_uri: format!("{}/token", token_peer.base_url), ..settings(&dead) };
        let client = FcmClient::new(&http_clients(), &settings).unwrap();
        let error = client.send(&push("tok", Priority::Normal)).await.unwrap_err();
        assert_eq!((error.class, error.code.as_str()), (ErrorClass::Retryable, "transport"));
        assert!(!error.message.contains("127.0.0.1"), "no URL in {}", error.message);
    }

    #[tokio::test]
    async fn other_addresses_are_refused_without_a_request() {
        let peer = peer(|_| Canned::empty(200)).await;
        let req = request(Address::Email { email: "a@b.co".into() }, None, "x", Priority::Normal);
        let error = client(&peer.base_url).send(&req).await.unwrap_err();
        assert_eq!((error.class, error.code.as_str()), (ErrorClass::Permanent, "wrong_address"));
        assert!(peer.requests().is_empty());
    }

    #[test]
    fn settings_errors_name_the_field() {
        let error = |settings: FcmSettings| FcmClient::new(&http_clients(), &settings).err().unwrap().to_string();
        let base = settings("http://127.0.0.1:1");
        let missing = FcmSettings { service_account_file: "/nonexistent/sa.json".into(), ..base.clone() };
        assert!(error(missing).starts_with("providers.fcm.service_account_file: `/nonexistent/sa.json`"));
        let dir = tempfile::tempdir().unwrap();
        let bad_json = dir.path().join("bad.json");
        std::fs::write(&bad_json, "{").unwrap();
        let file = bad_json.to_str().unwrap().to_string();
        let message = error(FcmSettings { service_account_file: file, ..base.clone() });
        assert!(message.starts_with("providers.fcm.service_account_file:") && message.contains("JSON"), "{message}");
        let bad_key = dir.path().join("bad-key.json");
        std::fs::write(&bad_key, json!({"client_email": "a@b", "private_key": "nope"}).to_string()).unwrap();
        let file = bad_key.to_str().unwrap().to_string();
        let message = error(FcmSettings { service_account_file: file, ..base.clone() });
        assert!(message.starts_with("providers.fcm.service_account_file:") && message.contains("PEM"), "{message}");
        let message = error(FcmSettings { token_uri: "oauth2/token".into(), ..base.clone() });
        assert!(message.starts_with("providers.fcm.token_uri:"), "{message}");
    }

    #[test]
    fn empty_settings_fall_back_to_the_service_account() {
        let settings =
            FcmSettings { project_id: String::new(), token_uri: String::new(), ..settings("http://127.0.0.1:1") };
        let client = FcmClient::new(&http_clients(), &settings).unwrap();
        assert_eq!(client.uri.path(), "/v1/projects/herald-dev/messages:send");
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        for base in ["http://127.0.0.1:8081", "https://localhost", "https://[::1]:8443"] {
            assert!(is_loopback(base), "{base}");
        }
        for base in ["https://fcm.googleapis.com", "http://10.0.0.1"] {
            assert!(!is_loopback(base), "{base}");
        }
    }
}
