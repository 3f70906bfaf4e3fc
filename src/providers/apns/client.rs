//! The APNs client: one `POST /3/device/{token}` per delivery, over HTTP/2 + TLS (the shared client negotiates
//! `h2` by ALPN), authorized by the ES256 provider token from a [`ProviderTokenSource`]. An
//! `ExpiredProviderToken` answer is handled inside the send: re-sign, retry once.

use std::sync::Arc;
use std::time::Duration;

use ::http::header::AUTHORIZATION;
use ::http::{HeaderName, HeaderValue, Uri};
use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{ApnsError, ApnsSettings, ProviderTokenSource};
use crate::domain::{Address, Priority, ProviderKind};
use crate::providers::http::HttpClients;
use crate::providers::http2::Http2Client;
use crate::providers::{Accepted, BuildError, Provider, ProviderError, SendRequest, http, log_refusal, wrong_address};

const APNS_TOPIC: HeaderName = HeaderName::from_static("apns-topic");
const APNS_PUSH_TYPE: HeaderName = HeaderName::from_static("apns-push-type");
const APNS_PRIORITY: HeaderName = HeaderName::from_static("apns-priority");
const APNS_EXPIRATION: HeaderName = HeaderName::from_static("apns-expiration");
const APNS_ID: HeaderName = HeaderName::from_static("apns-id");

/// Sends iOS push through APNs.
pub struct ApnsClient {
    sends: Http2Client,
    /// `{base}/3/device/`; the token is appended per request.
    device_url: String,
    topic: HeaderValue,
    tokens: Arc<dyn ProviderTokenSource>,
}

impl ApnsClient {
    pub fn new(
        http: &HttpClients,
        settings: &ApnsSettings,
        tokens: Arc<dyn ProviderTokenSource>,
    ) -> Result<ApnsClient, BuildError> {
        let base = http::base_url("apns", &settings.base_url)?;
        let topic = HeaderValue::from_str(&settings.topic)
            .ok()
            .filter(|_| !settings.topic.is_empty())
            .ok_or_else(|| BuildError::invalid("apns", "topic", "must be a non-empty bundle id"))?;
        Ok(ApnsClient { sends: http.http2("apns", &base)?, device_url: format!("{base}/3/device/"), topic, tokens })
    }

    /// One POST of `notification` with `authorization`.
    async fn post(&self, notification: &Outgoing, authorization: &HeaderValue) -> Result<Accepted, Refusal> {
        let headers = [
            (AUTHORIZATION, authorization.clone()),
            (APNS_TOPIC, self.topic.clone()),
            (APNS_PUSH_TYPE, HeaderValue::from_static("alert")),
            (APNS_PRIORITY, HeaderValue::from_static(notification.priority)),
            // The engine carries no per-message expiry yet: 0 asks APNs to try once and not store it.
            (APNS_EXPIRATION, HeaderValue::from_static("0")),
            (APNS_ID, notification.apns_id.clone().unwrap_or_else(|| HeaderValue::from_static(""))),
        ];
        // `apns-id` only when there is one.
        let headers = if notification.apns_id.is_some() { &headers[..] } else { &headers[..headers.len() - 1] };
        let sent = self.sends.post_json(&notification.uri, headers, notification.payload.clone()).await;
        let answer = match sent {
            Ok(answer) => answer,
            Err(message) => return Err((ApnsError::Transport, message, None)),
        };
        let status = answer.status;
        if (200..300).contains(&status) {
            let echoed = answer.headers.get(APNS_ID).and_then(|v| v.to_str().ok()).map(str::to_string);
            let sent = notification.apns_id.as_ref().and_then(|v| v.to_str().ok().map(str::to_string));
            return Ok(Accepted::Delivered { provider_message_id: echoed.or(sent) });
        }
        let retry_after = http::retry_after(&answer.headers);
        let (error, message) = classify(status, &answer.body);
        Err((error, message, retry_after))
    }
}

#[async_trait]
impl Provider for ApnsClient {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Apns
    }

    async fn send(&self, request: &SendRequest) -> Result<Accepted, ProviderError> {
        let Address::Device { token, .. } = &request.address else {
            return Err(wrong_address(ProviderKind::Apns, &request.address));
        };
        let mut url = String::with_capacity(self.device_url.len() + token.len());
        url.push_str(&self.device_url);
        http::push_encoded(&mut url, token);
        let payload = Payload {
            aps: Aps { alert: Alert { title: request.content.title.as_deref(), body: &request.content.body } },
            herald_delivery_id: &request.delivery_id,
        };
        // Percent-encoded above, the token cannot break the URI; a base URL that parsed at start still does.
        let Ok(uri) = Uri::try_from(url) else {
            let message = "the device token does not make a valid URL".to_string();
            return Err(refused(ApnsError::from_answer(400, Some("BadDeviceToken")), message, None, token));
        };
        let notification = Outgoing {
            uri,
            payload: Bytes::from(serde_json::to_vec(&payload).expect("serializable")),
            apns_id: apns_id(&request.delivery_id),
            priority: apns_priority(request.priority),
        };

        let authorization = self.tokens.current();
        let first = self.post(&notification, &authorization).await;
        let (error, message, retry_after) = match first {
            Err((ApnsError::ExpiredProviderToken, ..)) => {
                // APNs judged the token older than an hour (clock skew, a suspended process): re-sign and try
                // once more. A second refusal is left to the engine's retry.
                self.tokens.expired(&authorization);
                let authorization = self.tokens.current();
                match self.post(&notification, &authorization).await {
                    Ok(accepted) => return Ok(accepted),
                    Err(failed) => failed,
                }
            }
            Ok(accepted) => return Ok(accepted),
            Err(failed) => failed,
        };
        Err(refused(error, message, retry_after, token))
    }
}

/// One notification ready to post; built once, since an expired provider token sends it twice.
struct Outgoing {
    uri: Uri,
    payload: Bytes,
    apns_id: Option<HeaderValue>,
    priority: &'static str,
}

/// A failed post: the classified error, its message and the `Retry-After` asked for.
type Refusal = (ApnsError, String, Option<Duration>);

fn refused(error: ApnsError, message: String, retry_after: Option<Duration>, token: &str) -> ProviderError {
    let label = error.metric_label();
    let error = error.into_provider_error(message, retry_after);
    log_refusal(&error, label, token);
    error
}

/// 10 delivers at once; 5 lets the device save power.
fn apns_priority(priority: Priority) -> &'static str {
    match priority {
        Priority::Critical | Priority::High => "10",
        Priority::Normal | Priority::Low => "5",
    }
}

/// The delivery id (32 hex digits) as the hyphenated UUID APNs wants; none if the id is not a UUID.
fn apns_id(delivery_id: &str) -> Option<HeaderValue> {
    let uuid = uuid::Uuid::try_parse(delivery_id).ok()?;
    let mut buffer = uuid::Uuid::encode_buffer();
    HeaderValue::from_str(uuid.hyphenated().encode_lower(&mut buffer)).ok()
}

/// Reads an APNs error answer `{"reason": ..., "timestamp"?: ...}`.
pub(crate) fn classify(status: u16, body: &[u8]) -> (ApnsError, String) {
    let reason = serde_json::from_slice::<ErrorAnswer>(body).ok().and_then(|a| a.reason);
    let message = match &reason {
        Some(reason) => format!("APNs answered {status} {reason}"),
        None => format!("APNs answered {status} {}", http::snippet(body, 200)),
    };
    (ApnsError::from_answer(status, reason.as_deref()), message)
}

#[derive(Serialize)]
struct Payload<'a> {
    aps: Aps<'a>,
    herald_delivery_id: &'a str,
}

#[derive(Serialize)]
struct Aps<'a> {
    alert: Alert<'a>,
}

#[derive(Serialize)]
struct Alert<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    body: &'a str,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;

    use super::*;
    use crate::domain::Platform;
    use crate::providers::ErrorClass;
    use crate::providers::testing::{Canned, DELIVERY_ID, FakePeer, dead_base_url, http_clients, request};

    fn settings(base_url: &str) -> ApnsSettings {
        ApnsSettings {
            base_url: base_url.into(),
            topic: "com.example.herald".into(),
            team_id: "TEAMID1234".into(),
            key_id: "KEYID12345".into(),
            key_file: String::new(),
            token_ttl_s: 2400,
        }
    }

    /// Tokens `bearer jwt-1`, `bearer jwt-2`, …: `expired` moves on to the next one (the signing itself is
    /// tested in `token.rs` and against the sandbox).
    #[derive(Default)]
    struct NumberedTokens {
        generation: AtomicUsize,
        expired: AtomicUsize,
    }

    impl ProviderTokenSource for NumberedTokens {
        fn current(&self) -> HeaderValue {
            let n = self.generation.load(Ordering::SeqCst) + 1;
            HeaderValue::from_str(&format!("bearer jwt-{n}")).unwrap()
        }
        fn expired(&self, rejected: &HeaderValue) {
            self.expired.fetch_add(1, Ordering::SeqCst);
            if *rejected == self.current() {
                self.generation.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    fn client_with(base_url: &str) -> (ApnsClient, Arc<NumberedTokens>) {
        let tokens = Arc::new(NumberedTokens::default());
        (ApnsClient::new(&http_clients(), &settings(base_url), tokens.clone()).unwrap(), tokens)
    }

    fn client(base_url: &str) -> ApnsClient {
        client_with(base_url).0
    }

    fn push(token: &str, priority: Priority) -> SendRequest {
        request(Address::Device { token: token.into(), platform: Platform::Ios }, Some("Hi"), "Body", priority)
    }

    #[tokio::test]
    async fn send_posts_to_the_device_with_every_header() {
        let peer = FakePeer::start(|r| {
            let id = r.header("apns-id").unwrap_or("none").to_uppercase();
            Canned::empty(200).with_header("apns-id", id)
        })
        .await;
        let accepted = client(&peer.base_url).send(&push("a1b2c3", Priority::Critical)).await.unwrap();
        assert_eq!(
            accepted,
            Accepted::Delivered { provider_message_id: Some("0190F5E2-A3B4-7C8D-9E0F-1A2B3C4D5E6F".into()) }
        );
        let sent = &peer.requests()[0];
        assert_eq!((sent.method.as_str(), sent.target.as_str()), ("POST", "/3/device/a1b2c3"));
        assert_eq!(sent.header("authorization"), Some("bearer jwt-1"));
        assert_eq!(sent.header("apns-topic"), Some("com.example.herald"));
        assert_eq!(sent.header("apns-push-type"), Some("alert"));
        assert_eq!(sent.header("apns-priority"), Some("10"));
        assert_eq!(sent.header("apns-expiration"), Some("0"));
        assert_eq!(sent.header("apns-id"), Some("0190f5e2-a3b4-7c8d-9e0f-1a2b3c4d5e6f"));
        assert_eq!(
            sent.json(),
            json!({"aps": {"alert": {"title": "Hi", "body": "Body"}}, "herald_delivery_id": DELIVERY_ID})
        );
    }

    #[tokio::test]
    async fn normal_priority_is_5_and_the_sent_id_stands_in_for_a_missing_echo() {
        let peer = FakePeer::start(|_| Canned::empty(200)).await;
        let accepted = client(&peer.base_url).send(&push("a1b2c3", Priority::Normal)).await.unwrap();
        assert_eq!(
            accepted,
            Accepted::Delivered { provider_message_id: Some("0190f5e2-a3b4-7c8d-9e0f-1a2b3c4d5e6f".into()) }
        );
        assert_eq!(peer.requests()[0].header("apns-priority"), Some("5"));
    }

    #[tokio::test]
    async fn odd_tokens_stay_one_path_segment() {
        let peer = FakePeer::start(|_| Canned::empty(200)).await;
        client(&peer.base_url).send(&push("ab/../cd?x", Priority::Normal)).await.unwrap();
        assert_eq!(peer.requests()[0].target, "/3/device/ab%2F..%2Fcd%3Fx");
    }

    #[test]
    fn apns_ids_are_hyphenated_uuids() {
        assert_eq!(apns_id(DELIVERY_ID).unwrap(), "0190f5e2-a3b4-7c8d-9e0f-1a2b3c4d5e6f");
        assert!(apns_id("not-a-uuid").is_none());
    }

    #[tokio::test]
    async fn every_reason_is_classified_from_the_wire() {
        let cases = crate::providers::apns::error::DOCUMENTED_REASONS;
        let peer = FakePeer::start(move |r| {
            let reason = r.target.rsplit('/').next().unwrap().to_string();
            let (status, ..) = cases.iter().find(|c| c.1 == reason).unwrap();
            Canned::json(*status, json!({"reason": reason, "timestamp": 1_700_000_000_000_u64}))
                .with_header("retry-after", "5")
        })
        .await;
        let client = client(&peer.base_url);
        for (_, reason, class) in cases {
            let error = client.send(&push(reason, Priority::Normal)).await.unwrap_err();
            assert_eq!((error.class, error.code.as_str()), (class, reason));
            let expected_wait = class.is_retried().then_some(Duration::from_secs(5));
            assert_eq!(error.retry_after, expected_wait, "{reason}");
            let alert = matches!(reason, "Forbidden" | "InvalidProviderToken" | "MissingProviderToken");
            assert_eq!(error.alert, alert, "{reason}");
        }
    }

    #[tokio::test]
    async fn an_expired_provider_token_is_re_signed_and_the_send_retried_once() {
        let peer = FakePeer::start(|r| match r.header("authorization") {
            Some("bearer jwt-1") => Canned::json(403, json!({"reason": "ExpiredProviderToken"})),
            _ => Canned::empty(200),
        })
        .await;
        let (client, tokens) = client_with(&peer.base_url);
        let accepted = client.send(&push("a1", Priority::Normal)).await.unwrap();
        assert!(matches!(accepted, Accepted::Delivered { .. }));
        let sent = peer.requests();
        let auth: Vec<_> = sent.iter().map(|r| r.header("authorization").unwrap()).collect();
        assert_eq!(auth, ["bearer jwt-1", "bearer jwt-2"]);
        assert_eq!(sent[0].body, sent[1].body, "the same notification, sent again");
        assert_eq!(sent[1].header("apns-id"), Some("0190f5e2-a3b4-7c8d-9e0f-1a2b3c4d5e6f"));
        assert_eq!(tokens.expired.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_second_expired_answer_is_left_to_the_engine_retry() {
        let peer = FakePeer::start(|_| Canned::json(403, json!({"reason": "ExpiredProviderToken"}))).await;
        let (client, tokens) = client_with(&peer.base_url);
        let error = client.send(&push("a1", Priority::Normal)).await.unwrap_err();
        assert_eq!((error.class, error.code.as_str()), (ErrorClass::Retryable, "ExpiredProviderToken"));
        assert_eq!(peer.requests().len(), 2, "one retry, not a loop");
        assert_eq!(tokens.expired.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn connection_failures_are_transport_errors_without_the_token() {
        let error = client(&dead_base_url().await).send(&push("secret-device-token", Priority::Normal)).await;
        let error = error.unwrap_err();
        assert_eq!((error.class, error.code.as_str()), (ErrorClass::Retryable, "transport"));
        assert!(!error.message.contains("secret-device-token"), "{}", error.message);
    }
}
