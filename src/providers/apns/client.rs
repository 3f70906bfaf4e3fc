//! The APNs client: one `POST /3/device/{token}` per delivery. HTTP/1.1 without TLS for now (the sandbox);
//! TLS, HTTP/2 and the ES256 JWT come with their own issue: pass an HTTP/2 client and another
//! [`ProviderTokenSource`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{AUTHORIZATION, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use super::{ApnsError, ApnsSettings, ProviderTokenSource};
use crate::domain::{Address, Priority, ProviderKind};
use crate::providers::{Accepted, BuildError, Provider, ProviderError, SendRequest, http, log_refusal, wrong_address};

const APNS_TOPIC: HeaderName = HeaderName::from_static("apns-topic");
const APNS_PUSH_TYPE: HeaderName = HeaderName::from_static("apns-push-type");
const APNS_PRIORITY: HeaderName = HeaderName::from_static("apns-priority");
const APNS_EXPIRATION: HeaderName = HeaderName::from_static("apns-expiration");
const APNS_ID: HeaderName = HeaderName::from_static("apns-id");

/// Sends iOS push through APNs.
pub struct ApnsClient {
    http: reqwest::Client,
    /// `{base}/3/device/`; the token is appended per request.
    device_url: String,
    topic: HeaderValue,
    tokens: Arc<dyn ProviderTokenSource>,
}

impl ApnsClient {
    pub fn new(
        http: reqwest::Client,
        settings: &ApnsSettings,
        tokens: Arc<dyn ProviderTokenSource>,
    ) -> Result<ApnsClient, BuildError> {
        let base = http::base_url("apns", &settings.base_url)?;
        let topic = HeaderValue::from_str(&settings.topic)
            .ok()
            .filter(|_| !settings.topic.is_empty())
            .ok_or_else(|| BuildError::invalid("apns", "topic", "must be a non-empty bundle id"))?;
        Ok(ApnsClient { http, device_url: format!("{base}/3/device/"), topic, tokens })
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
        let apns_id = apns_id(&request.delivery_id);
        let authorization = self.tokens.current();
        let mut builder = self
            .http
            .post(url)
            .header(AUTHORIZATION, authorization.clone())
            .header(APNS_TOPIC, self.topic.clone())
            .header(APNS_PUSH_TYPE, HeaderValue::from_static("alert"))
            .header(APNS_PRIORITY, HeaderValue::from_static(apns_priority(request.priority)))
            .header(APNS_EXPIRATION, HeaderValue::from_static("0"))
            .json(&payload);
        if let Some(id) = &apns_id {
            builder = builder.header(APNS_ID, id.clone());
        }
        let response = match builder.send().await {
            Ok(response) => response,
            Err(e) => return Err(refused(ApnsError::Transport, http::describe(e), None, token)),
        };
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            let echoed = response.headers().get(APNS_ID).and_then(|v| v.to_str().ok()).map(str::to_string);
            let sent = apns_id.and_then(|v| v.to_str().ok().map(str::to_string));
            return Ok(Accepted::Delivered { provider_message_id: echoed.or(sent) });
        }
        let retry_after = http::retry_after(response.headers());
        let bytes = response.bytes().await.unwrap_or_default();
        let (error, message) = classify(status, &bytes);
        if error == ApnsError::ExpiredProviderToken {
            self.tokens.expired(&authorization);
        }
        Err(refused(error, message, retry_after, token))
    }
}

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
    use crate::config::Secret;
    use crate::domain::Platform;
    use crate::providers::ErrorClass;
    use crate::providers::apns::StaticProviderToken;
    use crate::providers::testing::{Canned, DELIVERY_ID, FakePeer, dead_base_url, http_client, request};

    fn settings(base_url: &str) -> ApnsSettings {
        ApnsSettings {
            base_url: base_url.into(),
            topic: "com.example.herald".into(),
            team_id: "TEAMID1234".into(),
            key_id: "KEYID12345".into(),
            provider_token: Secret::new("jwt-1"),
        }
    }

    fn client(base_url: &str) -> ApnsClient {
        let tokens = Arc::new(StaticProviderToken::new("jwt-1").unwrap());
        ApnsClient::new(http_client(), &settings(base_url), tokens).unwrap()
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
        let cases = [
            (410, "Unregistered", ErrorClass::Unregistered),
            (410, "ExpiredToken", ErrorClass::Unregistered),
            (400, "BadDeviceToken", ErrorClass::Permanent),
            (400, "BadTopic", ErrorClass::Permanent),
            (400, "DeviceTokenNotForTopic", ErrorClass::Permanent),
            (400, "BadCollapseId", ErrorClass::Permanent),
            (400, "BadExpirationDate", ErrorClass::Permanent),
            (400, "PayloadEmpty", ErrorClass::Permanent),
            (400, "MissingTopic", ErrorClass::Permanent),
            (400, "InvalidPushType", ErrorClass::Permanent),
            (413, "PayloadTooLarge", ErrorClass::Permanent),
            (403, "Forbidden", ErrorClass::Permanent),
            (403, "InvalidProviderToken", ErrorClass::Permanent),
            (403, "MissingProviderToken", ErrorClass::Permanent),
            (403, "ExpiredProviderToken", ErrorClass::Retryable),
            (429, "TooManyRequests", ErrorClass::Retryable),
            (500, "InternalServerError", ErrorClass::Retryable),
            (503, "ServiceUnavailable", ErrorClass::Retryable),
        ];
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
            let expected_wait = (class == ErrorClass::Retryable).then_some(Duration::from_secs(5));
            assert_eq!(error.retry_after, expected_wait, "{reason}");
        }
    }

    struct CountingTokens {
        expired: AtomicUsize,
    }

    impl ProviderTokenSource for CountingTokens {
        fn current(&self) -> HeaderValue {
            HeaderValue::from_static("bearer old")
        }
        fn expired(&self, rejected: &HeaderValue) {
            assert_eq!(rejected, "bearer old");
            self.expired.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn an_expired_provider_token_is_reported_to_its_source() {
        let peer = FakePeer::start(|_| Canned::json(403, json!({"reason": "ExpiredProviderToken"}))).await;
        let tokens = Arc::new(CountingTokens { expired: AtomicUsize::new(0) });
        let client = ApnsClient::new(http_client(), &settings(&peer.base_url), tokens.clone()).unwrap();
        let error = client.send(&push("a1", Priority::Normal)).await.unwrap_err();
        assert_eq!(error.class, ErrorClass::Retryable);
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
