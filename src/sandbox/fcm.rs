//! Simulated FCM HTTP v1: `POST /v1/projects/{project}/messages:send` with a bearer access token issued by the
//! sandbox's OAuth2 endpoint (`oauth.rs`) and not yet expired. Answers `{"name": "projects/P/messages/ID"}` or
//! FCM's error shape with an `FcmError` detail carrying the errorCode.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::post;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};

use super::SandboxState;
use super::faults::Verdict;
use super::http::{bearer, new_message_id};
use super::journal::Reference;
use super::record::Incoming;
use crate::domain::ProviderKind;
use crate::domain::contact::mask;

/// FCM's limit on what the device receives (notification + data).
const MAX_PAYLOAD_BYTES: usize = 4096;

pub(crate) fn routes() -> Router<Arc<SandboxState>> {
    Router::new().route("/v1/projects/{project}/messages:send", post(send))
}

/// The errors this simulation answers, each in FCM's shape.
#[derive(Debug)]
enum FcmError {
    /// No bearer token at all.
    CredentialsMissing,
    /// A bearer token the sandbox did not issue, or one that has expired.
    CredentialsInvalid,
    InvalidArgument(String),
    Unregistered,
    Unavailable,
}

impl IntoResponse for FcmError {
    fn into_response(self) -> Response {
        let (status, status_name, error_code, message) = match self {
            FcmError::CredentialsMissing => {
                return unauthenticated(
                    "Request is missing required authentication credential. Expected OAuth 2 access token, login \
                     cookie or other valid authentication credential.",
                    "CREDENTIALS_MISSING",
                );
            }
            FcmError::CredentialsInvalid => {
                return unauthenticated("Request had invalid authentication credentials.", "ACCESS_TOKEN_EXPIRED");
            }
            FcmError::InvalidArgument(message) => {
                (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", "INVALID_ARGUMENT", message)
            }
            FcmError::Unregistered => {
                (StatusCode::NOT_FOUND, "NOT_FOUND", "UNREGISTERED", "Requested entity was not found.".into())
            }
            FcmError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "UNAVAILABLE",
                "The service is currently unavailable.".into(),
            ),
        };
        let body = json!({"error": {
            "code": status.as_u16(),
            "message": message,
            "status": status_name,
            "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code}],
        }});
        if status == StatusCode::SERVICE_UNAVAILABLE {
            (status, [(header::RETRY_AFTER, "1")], Json(body)).into_response()
        } else {
            (status, Json(body)).into_response()
        }
    }
}

/// Google answers auth failures with a generic ErrorInfo detail, not an FcmError one.
fn unauthenticated(message: &str, reason: &str) -> Response {
    let body = json!({"error": {
        "code": 401,
        "message": message,
        "status": "UNAUTHENTICATED",
        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "googleapis.com"}],
    }});
    (StatusCode::UNAUTHORIZED, Json(body)).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    #[serde(default)]
    validate_only: bool,
    message: Message,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    #[serde(default, rename = "name")]
    _name: Option<IgnoredAny>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    condition: Option<String>,
    #[serde(default)]
    notification: Option<Notification>,
    /// FCM only carries strings here; a number or object fails deserialization, as it does at Google.
    #[serde(default)]
    data: Option<BTreeMap<String, String>>,
    #[serde(default)]
    android: Option<Value>,
    #[serde(default, rename = "apns")]
    _apns: Option<IgnoredAny>,
    #[serde(default, rename = "webpush")]
    _webpush: Option<IgnoredAny>,
    #[serde(default, rename = "fcm_options")]
    _fcm_options: Option<IgnoredAny>,
}

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct Notification {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    image: Option<String>,
}

async fn send(
    State(state): State<Arc<SandboxState>>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer(&state, &project, &headers, &body).await
}

/// The project of a send's path, `/v1/projects/{project}/messages:send`, when it needs no decoding: the path
/// the sandbox's HTTP service answers without its router (`http.rs`); any other goes through the router.
pub(crate) fn send_path_project(path: &str) -> Option<&str> {
    let project = path.strip_prefix("/v1/projects/")?.strip_suffix("/messages:send")?;
    (!project.is_empty() && !project.contains(['/', '%'])).then_some(project)
}

/// Answers one send and counts the answer.
pub(crate) async fn answer(state: &SandboxState, project: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let answer = handle(state, project, headers, body).await.map_err(IntoResponse::into_response);
    state.stats.tally(ProviderKind::Fcm, answer)
}

async fn handle(state: &SandboxState, project: &str, headers: &HeaderMap, body: &[u8]) -> Result<Response, FcmError> {
    let Some(token) = bearer(headers) else {
        return Err(FcmError::CredentialsMissing);
    };
    if !state.fcm_oauth.honours(token) {
        return Err(FcmError::CredentialsInvalid);
    }
    let request: SendBody = serde_json::from_slice(body)
        .map_err(|e| FcmError::InvalidArgument(format!("Invalid JSON payload received. {e}")))?;
    let message = request.message;
    let target = target(&message)?;
    check_payload(&message, body.len())?;
    if let Some(android) = &message.android {
        check_android(android)?;
    }

    match state.faults.apply(ProviderKind::Fcm).await {
        Verdict::Pass => {}
        Verdict::Retryable => return Err(FcmError::Unavailable),
        Verdict::Permanent => return Err(FcmError::InvalidArgument("Request contains an invalid argument.".into())),
        // A ready 429 QUOTA_EXCEEDED (counted by its status); the request layer adds `Retry-After`.
        Verdict::RateLimited { .. } => return Ok(super::faults::fcm_quota_exceeded()),
        Verdict::Unregistered => return Err(FcmError::Unregistered),
    }
    if target.contains("unregistered") {
        return Err(FcmError::Unregistered);
    }
    if target.contains("invalid") {
        return Err(FcmError::InvalidArgument("The registration token is not a valid FCM registration token".into()));
    }

    if request.validate_only {
        return Ok(Json(json!({"name": format!("projects/{project}/messages/fake_message_id")})).into_response());
    }
    let name = format!("projects/{project}/messages/{}", new_message_id());
    let (title, text) = match message.notification {
        Some(n) => (n.title, n.body.unwrap_or_default()),
        None => (None, String::new()),
    };
    let reference = message.data.and_then(|mut data| data.remove("herald_delivery_id"));
    tracing::debug!(to = %mask(&target), "sandbox fcm accepted");
    let mut response = Json(Named { name: &name }).into_response();
    // The request log takes the reference from here instead of parsing the body a second time.
    response.extensions_mut().insert(Reference(reference.clone()));
    state.record.push(
        ProviderKind::Fcm,
        Incoming { to: target, title, body: text, html: None, reference, provider_message_id: name },
    );
    Ok(response)
}

/// FCM's answer to a send.
#[derive(serde::Serialize)]
struct Named<'a> {
    name: &'a str,
}

/// The one target of the message, as recorded: the token, `/topics/<topic>` or the condition.
fn target(message: &Message) -> Result<String, FcmError> {
    let target = match (&message.token, &message.topic, &message.condition) {
        (Some(token), None, None) if !token.is_empty() => token.clone(),
        (None, Some(topic), None) => {
            let topic = topic.strip_prefix("/topics/").unwrap_or(topic);
            let valid = !topic.is_empty() && topic.chars().all(|c| c.is_ascii_alphanumeric() || "-_.~%".contains(c));
            if !valid {
                return Err(FcmError::InvalidArgument(format!("Invalid topic name: {topic}")));
            }
            format!("/topics/{topic}")
        }
        (None, None, Some(condition)) if !condition.trim().is_empty() => condition.clone(),
        _ => {
            return Err(FcmError::InvalidArgument(
                "Exactly one of message.token, message.topic or message.condition must be set".into(),
            ));
        }
    };
    Ok(target)
}

/// FCM's 4 KiB limit on notification + data. A body no larger than the limit cannot hold more (both are strings
/// written back compactly, never longer than they came), so only larger bodies are measured.
fn check_payload(message: &Message, body_len: usize) -> Result<(), FcmError> {
    if body_len <= MAX_PAYLOAD_BYTES {
        return Ok(());
    }
    let bytes = json_len(&message.notification) + json_len(&message.data);
    if bytes > MAX_PAYLOAD_BYTES {
        return Err(FcmError::InvalidArgument(format!(
            "Message payload is {bytes} bytes; the limit is {MAX_PAYLOAD_BYTES} bytes"
        )));
    }
    Ok(())
}

/// The length of `value`'s JSON, counted as it is written rather than built.
fn json_len(value: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).map_or(0, |()| count.0)
}

/// The Android options FCM rejects most often: an unknown priority or a TTL not written as seconds (`"3.5s"`).
fn check_android(android: &Value) -> Result<(), FcmError> {
    let Some(android) = android.as_object() else {
        return Err(FcmError::InvalidArgument("message.android must be an object".into()));
    };
    if let Some(priority) = android.get("priority")
        && !matches!(priority.as_str(), Some("NORMAL" | "HIGH"))
    {
        return Err(FcmError::InvalidArgument(format!("Invalid value at 'message.android.priority': {priority}")));
    }
    if let Some(ttl) = android.get("ttl") {
        let valid = ttl.as_str().and_then(|t| t.strip_suffix('s')).is_some_and(|seconds| {
            let (whole, fraction) = seconds.split_once('.').unwrap_or((seconds, "0"));
            !whole.is_empty()
                && whole.chars().all(|c| c.is_ascii_digit())
                && (1..=9).contains(&fraction.len())
                && fraction.chars().all(|c| c.is_ascii_digit())
        });
        if !valid {
            return Err(FcmError::InvalidArgument(format!("Invalid value at 'message.android.ttl': {ttl}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_send_paths_bypass_the_router() {
        assert_eq!(send_path_project("/v1/projects/herald-dev/messages:send"), Some("herald-dev"));
        for other in [
            "/v1/projects//messages:send",
            "/v1/projects/a/b/messages:send",
            "/v1/projects/my%20app/messages:send",
            "/v1/projects/p/messages:sendx",
            "/v1/token",
        ] {
            assert_eq!(send_path_project(other), None, "{other}");
        }
    }

    #[test]
    fn android_ttl_and_priority_are_checked() {
        for ok in [json!({}), json!({"ttl": "3.5s", "priority": "HIGH"}), json!({"ttl": "0s", "priority": "NORMAL"})] {
            assert!(check_android(&ok).is_ok(), "{ok}");
        }
        for bad in
            [json!({"ttl": "3.5"}), json!({"ttl": 3}), json!({"ttl": "s"}), json!({"priority": "urgent"}), json!([])]
        {
            assert!(check_android(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_payload_limit_counts_notification_and_data_as_written_back() {
        let check = |body: &str| {
            let request: SendBody = serde_json::from_str(body).unwrap();
            check_payload(&request.message, body.len())
        };
        // Escapes come back no longer than they came (`\u00e9` as two bytes of UTF-8): a body under the limit is.
        let escaped = format!(r#"{{"message": {{"token": "t", "data": {{"k": "{}"}}}}}}"#, r#"\u00e9\n\""#.repeat(300));
        let request: SendBody = serde_json::from_str(&escaped).unwrap();
        assert!(json_len(&request.message.data) < escaped.len() && escaped.len() <= MAX_PAYLOAD_BYTES);
        assert!(check(&escaped).is_ok());
        // Larger bodies are measured: 1,000 two-byte characters fit, 2,100 do not.
        let sized =
            |n: usize| format!(r#"{{"message": {{"token": "t", "data": {{"k": "{}"}}}}}}"#, "\\u00e9".repeat(n));
        assert!(check(&sized(1000)).is_ok());
        assert!(check(&sized(2100)).is_err());
    }

    #[test]
    fn exactly_one_target_is_required() {
        let message = |value: Value| serde_json::from_value::<Message>(value).unwrap();
        assert_eq!(target(&message(json!({"token": "abc"}))).unwrap(), "abc");
        assert_eq!(target(&message(json!({"topic": "news"}))).unwrap(), "/topics/news");
        assert!(target(&message(json!({}))).is_err());
        assert!(target(&message(json!({"token": "abc", "topic": "news"}))).is_err());
        assert!(target(&message(json!({"topic": "bad topic"}))).is_err());
    }
}
