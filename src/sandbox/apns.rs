//! Simulated APNs provider API: `POST /3/device/{token}` over HTTP/2 (so, in practice, on the TLS listener with
//! `h2` by ALPN), with `authorization: bearer <provider JWT>` (verified in `jwt.rs`) and `apns-*` headers.
//! Answers 200 with an empty body and the `apns-id` header, or `{"reason": "..."}` errors. A request over
//! HTTP/1.x is answered 505 `HTTP2Required` (the real service only speaks HTTP/2).

mod jwt;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::SandboxState;
use super::faults::Verdict;
use super::http::bearer;
use super::record::Incoming;
use crate::domain::ProviderKind;
use crate::domain::contact::mask;

/// APNs' limit for regular (non-VoIP) notifications.
const MAX_PAYLOAD_BYTES: usize = 4096;
const APNS_ID: HeaderName = HeaderName::from_static("apns-id");
const PUSH_TYPES: [&str; 10] = [
    "alert",
    "background",
    "location",
    "voip",
    "complication",
    "fileprovider",
    "mdm",
    "liveactivity",
    "pushtotalk",
    "widgets",
];

pub(crate) use jwt::TrustedKeys;

pub(crate) fn routes() -> Router<Arc<SandboxState>> {
    Router::new().route("/3/device/{token}", post(send))
}

/// An APNs error: the HTTP status and the `reason` string.
#[derive(Debug)]
struct ApnsError {
    status: StatusCode,
    reason: &'static str,
}

const fn error(status: StatusCode, reason: &'static str) -> ApnsError {
    ApnsError { status, reason }
}

impl IntoResponse for ApnsError {
    fn into_response(self) -> Response {
        let body = if self.status == StatusCode::GONE {
            json!({"reason": self.reason, "timestamp": jiff::Timestamp::now().as_millisecond()})
        } else {
            json!({"reason": self.reason})
        };
        (self.status, Json(body)).into_response()
    }
}

async fn send(
    State(state): State<Arc<SandboxState>>,
    Path(token): Path<String>,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = handle(&state, token, version, &headers, &body).await;
    // APNs echoes the apns-id on errors too, so a client can match them.
    let apns_id = match &answer {
        Ok(id) => Some(id.clone()),
        Err(_) => headers.get(&APNS_ID).and_then(|v| v.to_str().ok()).map(str::to_string),
    };
    let answer = answer.map(|_| StatusCode::OK.into_response()).map_err(IntoResponse::into_response);
    let mut response = state.stats.tally(ProviderKind::Apns, answer);
    if let Some(value) = apns_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        response.headers_mut().insert(APNS_ID, value);
    }
    response
}

/// Returns the apns-id of the accepted notification.
async fn handle(
    state: &SandboxState,
    token: String,
    version: Version,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, ApnsError> {
    if version != Version::HTTP_2 {
        return Err(error(StatusCode::HTTP_VERSION_NOT_SUPPORTED, "HTTP2Required"));
    }
    check_auth(&state.apns_keys, headers, jiff::Timestamp::now().as_second())?;
    check_headers(headers)?;
    if body.len() > MAX_PAYLOAD_BYTES {
        return Err(error(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge"));
    }
    let payload: Value = serde_json::from_slice(body).map_err(|_| error(StatusCode::BAD_REQUEST, "PayloadEmpty"))?;
    let Some(aps) = payload.get("aps").and_then(Value::as_object) else {
        return Err(error(StatusCode::BAD_REQUEST, "PayloadEmpty"));
    };

    match state.faults.apply(ProviderKind::Apns).await {
        Verdict::Pass => {}
        Verdict::Retryable => return Err(error(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable")),
        Verdict::Permanent => return Err(error(StatusCode::BAD_REQUEST, "BadDeviceToken")),
        // Real APNs sends no Retry-After with its 429; the sandbox's request layer adds one.
        Verdict::RateLimited { .. } => return Err(error(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests")),
        Verdict::Unregistered => return Err(error(StatusCode::GONE, "Unregistered")),
    }
    if token.contains("unregistered") {
        return Err(error(StatusCode::GONE, "Unregistered"));
    }
    let hex = !token.is_empty() && token.len() <= 200 && token.bytes().all(|b| b.is_ascii_hexdigit());
    if token.contains("invalid") || !hex {
        return Err(error(StatusCode::BAD_REQUEST, "BadDeviceToken"));
    }

    let apns_id = match headers.get(&APNS_ID).and_then(|v| v.to_str().ok()) {
        Some(id) => id.to_string(),
        None => uuid::Uuid::now_v7().hyphenated().to_string().to_uppercase(),
    };
    let (title, text) = match aps.get("alert") {
        Some(Value::String(text)) => (None, text.clone()),
        Some(Value::Object(alert)) => (
            alert.get("title").and_then(Value::as_str).map(str::to_string),
            alert.get("body").and_then(Value::as_str).unwrap_or_default().to_string(),
        ),
        _ => (None, String::new()),
    };
    let reference = payload.get("herald_delivery_id").and_then(Value::as_str).map(str::to_string);
    tracing::debug!(to = %mask(&token), "sandbox apns accepted");
    state.record.push(
        ProviderKind::Apns,
        Incoming { to: token, title, body: text, html: None, reference, provider_message_id: apns_id.clone() },
    );
    Ok(apns_id)
}

/// The provider token: present, a bearer JWT, signed by a trusted key for its team, and not too old.
fn check_auth(keys: &TrustedKeys, headers: &HeaderMap, now: i64) -> Result<(), ApnsError> {
    if headers.get(axum::http::header::AUTHORIZATION).is_none() {
        return Err(error(StatusCode::FORBIDDEN, "MissingProviderToken"));
    }
    let jwt = bearer(headers).ok_or(error(StatusCode::FORBIDDEN, "InvalidProviderToken"))?;
    keys.check(jwt, now).map_err(|refusal| error(StatusCode::FORBIDDEN, refusal.reason()))
}

/// The `apns-*` headers, checked after auth and before the payload as APNs does.
fn check_headers(headers: &HeaderMap) -> Result<(), ApnsError> {
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    if header("apns-topic").is_none_or(|topic| topic.trim().is_empty()) {
        return Err(error(StatusCode::BAD_REQUEST, "MissingTopic"));
    }
    if header("apns-push-type").is_some_and(|t| !PUSH_TYPES.contains(&t)) {
        return Err(error(StatusCode::BAD_REQUEST, "InvalidPushType"));
    }
    if header("apns-priority").is_some_and(|p| !matches!(p, "1" | "5" | "10")) {
        return Err(error(StatusCode::BAD_REQUEST, "BadPriority"));
    }
    if header("apns-expiration").is_some_and(|e| e.parse::<u64>().is_err()) {
        return Err(error(StatusCode::BAD_REQUEST, "BadExpirationDate"));
    }
    if header("apns-collapse-id").is_some_and(|c| c.len() > 64) {
        return Err(error(StatusCode::BAD_REQUEST, "BadCollapseId"));
    }
    if header("apns-id").is_some_and(|id| uuid::Uuid::try_parse(id).is_err() || id.len() != 36) {
        return Err(error(StatusCode::BAD_REQUEST, "BadMessageId"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn reason(pairs: &[(&'static str, &'static str)]) -> Option<&'static str> {
        check_headers(&headers(pairs)).err().map(|e| e.reason)
    }

    #[test]
    fn headers_are_checked_in_order() {
        let topic = ("apns-topic", "com.example.app");
        assert_eq!(reason(&[]), Some("MissingTopic"));
        assert_eq!(reason(&[topic]), None);
        assert_eq!(reason(&[topic, ("apns-push-type", "shout")]), Some("InvalidPushType"));
        assert_eq!(reason(&[topic, ("apns-priority", "7")]), Some("BadPriority"));
        assert_eq!(reason(&[topic, ("apns-expiration", "soon")]), Some("BadExpirationDate"));
        assert_eq!(reason(&[topic, ("apns-collapse-id", "c".repeat(65).leak())]), Some("BadCollapseId"));
        assert_eq!(reason(&[topic, ("apns-id", "nope")]), Some("BadMessageId"));
        assert_eq!(reason(&[topic, ("apns-id", "123e4567-e89b-12d3-a456-426614174000")]), None);
    }

    #[test]
    fn auth_needs_a_bearer_provider_token() {
        let keys = TrustedKeys::new(&[], 3600).unwrap();
        let refused = |pairs: &[(&'static str, &'static str)]| {
            check_auth(&keys, &headers(pairs), 1_700_000_000).err().map(|e| (e.status.as_u16(), e.reason))
        };
        assert_eq!(refused(&[]), Some((403, "MissingProviderToken")));
        assert_eq!(refused(&[("authorization", "basic x")]), Some((403, "InvalidProviderToken")));
        assert_eq!(refused(&[("authorization", "bearer eyJ.x.y")]), Some((403, "InvalidProviderToken")));
    }
}
