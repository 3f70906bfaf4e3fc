//! The FCM HTTP v1 client: one `messages:send` request per delivery.

use async_trait::async_trait;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::{Deserialize, Serialize};

use super::{FcmError, FcmSettings};
use crate::domain::{Address, Priority, ProviderKind};
use crate::providers::{Accepted, BuildError, Provider, ProviderError, SendRequest, http, log_refusal, wrong_address};

/// Sends Android and web push through FCM.
pub struct FcmClient {
    http: reqwest::Client,
    /// `{base}/v1/projects/{project}/messages:send`, parsed once.
    url: reqwest::Url,
    /// `Bearer {access_token}`. Service-account OAuth will replace this static value with a refreshed one.
    authorization: HeaderValue,
}

impl FcmClient {
    pub fn new(http: reqwest::Client, settings: &FcmSettings) -> Result<FcmClient, BuildError> {
        let base = http::base_url("fcm", &settings.base_url)?;
        if settings.project_id.is_empty() {
            return Err(BuildError::invalid("fcm", "project_id", "must not be empty"));
        }
        let mut url = format!("{base}/v1/projects/");
        http::push_encoded(&mut url, &settings.project_id);
        url.push_str("/messages:send");
        let authorization = format!("Bearer {}", settings.access_token.expose());
        Ok(FcmClient {
            http,
            url: http::url("fcm", &url)?,
            authorization: http::secret_header("fcm", "access_token", &authorization)?,
        })
    }
}

#[async_trait]
impl Provider for FcmClient {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Fcm
    }

    async fn send(&self, request: &SendRequest) -> Result<Accepted, ProviderError> {
        let Address::Device { token, .. } = &request.address else {
            return Err(wrong_address(ProviderKind::Fcm, &request.address));
        };
        let body = SendBody {
            message: Message {
                token,
                notification: Notification { title: request.content.title.as_deref(), body: &request.content.body },
                data: Data { herald_delivery_id: &request.delivery_id },
                android: Android { priority: android_priority(request.priority) },
            },
        };
        let sent =
            self.http.post(self.url.clone()).header(AUTHORIZATION, self.authorization.clone()).json(&body).send().await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => return Err(refused(FcmError::Transport, http::describe(e), None, token)),
        };
        let status = response.status().as_u16();
        let retry_after = http::retry_after(response.headers());
        // A read failure after the status line still leaves the status to go by.
        let bytes = response.bytes().await.unwrap_or_default();
        if (200..300).contains(&status) {
            let name = serde_json::from_slice::<SendAnswer>(&bytes).ok().and_then(|a| a.name);
            return Ok(Accepted::Delivered { provider_message_id: name });
        }
        let (error, message) = classify(status, &bytes);
        Err(refused(error, message, retry_after, token))
    }
}

fn refused(error: FcmError, message: String, retry_after: Option<std::time::Duration>, token: &str) -> ProviderError {
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
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::config::Secret;
    use crate::domain::Platform;
    use crate::providers::ErrorClass;
    use crate::providers::testing::{Canned, DELIVERY_ID, FakePeer, dead_base_url, http_client, request};

    fn client(base_url: &str) -> FcmClient {
        let settings = FcmSettings {
            base_url: format!("{base_url}/"),
            project_id: "herald-test".into(),
            access_token: Secret::new("ya29.token"),
        };
        FcmClient::new(http_client(), &settings).unwrap()
    }

    fn push(token: &str, priority: Priority) -> SendRequest {
        request(Address::Device { token: token.into(), platform: Platform::Android }, Some("Hi"), "Body", priority)
    }

    fn fcm_error(status: u16, error_code: &str) -> serde_json::Value {
        json!({"error": {"code": status, "message": format!("because {error_code}"), "status": "GENERIC",
            "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code}]}})
    }

    #[tokio::test]
    async fn send_posts_the_v1_message_and_reads_the_name() {
        let peer = FakePeer::start(|_| Canned::json(200, json!({"name": "projects/herald-test/messages/42"}))).await;
        let accepted = client(&peer.base_url).send(&push("tok-1", Priority::High)).await.unwrap();
        assert_eq!(
            accepted,
            Accepted::Delivered { provider_message_id: Some("projects/herald-test/messages/42".into()) }
        );
        let sent = &peer.requests()[0];
        assert_eq!(sent.method, "POST");
        assert_eq!(sent.target, "/v1/projects/herald-test/messages:send");
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
        let peer = FakePeer::start(|_| Canned::json(200, json!({"name": "n"}))).await;
        let mut req = push("tok-1", Priority::Low);
        req.content = std::sync::Arc::new(crate::domain::Rendered { title: None, ..(*req.content).clone() });
        client(&peer.base_url).send(&req).await.unwrap();
        let body = peer.requests()[0].json();
        assert_eq!(body["message"]["android"]["priority"], "NORMAL");
        assert_eq!(body["message"]["notification"], json!({"body": "Body"}));
    }

    #[test]
    fn android_priority_follows_herald_priority() {
        assert_eq!(android_priority(Priority::Critical), "HIGH");
        assert_eq!(android_priority(Priority::High), "HIGH");
        assert_eq!(android_priority(Priority::Normal), "NORMAL");
        assert_eq!(android_priority(Priority::Low), "NORMAL");
    }

    #[tokio::test]
    async fn every_error_code_is_classified_from_the_wire() {
        let cases = [
            ("UNREGISTERED", 404, ErrorClass::Unregistered),
            ("INVALID_ARGUMENT", 400, ErrorClass::Permanent),
            ("SENDER_ID_MISMATCH", 403, ErrorClass::Permanent),
            ("THIRD_PARTY_AUTH_ERROR", 401, ErrorClass::Permanent),
            ("QUOTA_EXCEEDED", 429, ErrorClass::Retryable),
            ("UNAVAILABLE", 503, ErrorClass::Retryable),
            ("INTERNAL", 500, ErrorClass::Retryable),
        ];
        // The peer answers by token, so one server covers every case.
        let peer = FakePeer::start(move |r| {
            let token = r.json()["message"]["token"].as_str().unwrap().to_string();
            let (code, status, _) = cases.iter().find(|c| c.0 == token).unwrap();
            Canned::json(*status, fcm_error(*status, code))
        })
        .await;
        let client = client(&peer.base_url);
        for (code, _, class) in cases {
            let error = client.send(&push(code, Priority::Normal)).await.unwrap_err();
            assert_eq!((error.class, error.code.as_str()), (class, code));
            assert_eq!(error.provider, ProviderKind::Fcm);
            assert_eq!(error.message, format!("because {code}"));
        }
    }

    #[tokio::test]
    async fn retry_after_is_honoured_in_seconds_and_dates() {
        let peer = FakePeer::start(|r| {
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
        let error = client(&dead_base_url().await).send(&push("tok", Priority::Normal)).await.unwrap_err();
        assert_eq!((error.class, error.code.as_str()), (ErrorClass::Retryable, "transport"));
        assert!(!error.message.contains("127.0.0.1"), "no URL in {}", error.message);
    }

    #[tokio::test]
    async fn other_addresses_are_refused_without_a_request() {
        let peer = FakePeer::start(|_| Canned::empty(200)).await;
        let req = request(Address::Email { email: "a@b.co".into() }, None, "x", Priority::Normal);
        let error = client(&peer.base_url).send(&req).await.unwrap_err();
        assert_eq!((error.class, error.code.as_str()), (ErrorClass::Permanent, "wrong_address"));
        assert!(peer.requests().is_empty());
    }
}
