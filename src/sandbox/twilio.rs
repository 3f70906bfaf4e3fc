//! Simulated Twilio Messages API: `POST /2010-04-01/Accounts/{sid}/Messages.json`, form-encoded, basic auth
//! `sid:auth_token`. Answers 201 with the message resource, then posts a signed status callback
//! (`X-Twilio-Signature`) to the `StatusCallback` URL as the provider's report faults decide (`reports.rs`).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha1::Sha1;

use super::SandboxState;
use super::faults::Verdict;
use super::http::{basic_auth, new_message_id};
use super::record::Incoming;
use super::reports::{self, Body, Report};
use crate::domain::ProviderKind;
use crate::domain::contact::mask;

/// Twilio refuses bodies longer than this (in characters, after concatenation).
const MAX_BODY_CHARS: usize = 1600;
const API_VERSION: &str = "2010-04-01";

pub(crate) fn routes() -> Router<Arc<SandboxState>> {
    Router::new().route("/2010-04-01/Accounts/{sid}/Messages.json", post(send))
}

/// A Twilio REST error: HTTP status, Twilio's numeric code and message.
#[derive(Debug)]
struct TwilioError {
    status: StatusCode,
    code: u32,
    message: String,
}

fn error(status: StatusCode, code: u32, message: impl Into<String>) -> TwilioError {
    TwilioError { status, code, message: message.into() }
}

impl IntoResponse for TwilioError {
    fn into_response(self) -> Response {
        let body = json!({
            "code": self.code,
            "message": self.message,
            "more_info": format!("https://www.twilio.com/docs/errors/{}", self.code),
            "status": self.status.as_u16(),
        });
        if self.status == StatusCode::UNAUTHORIZED {
            (self.status, [(header::WWW_AUTHENTICATE, "Basic realm=\"Twilio API\"")], Json(body)).into_response()
        } else {
            (self.status, Json(body)).into_response()
        }
    }
}

/// `X-Twilio-Signature`: base64(HMAC-SHA1(auth_token, url + each param's name and value, sorted by name)).
pub(crate) fn signature(auth_token: &str, url: &str, params: &[(&str, String)]) -> String {
    let mut sorted: Vec<_> = params.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0).then_with(|| a.1.cmp(&b.1)));
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

/// E.164: `+`, then 8 to 15 digits, the first not 0.
fn is_e164(number: &str) -> bool {
    number.strip_prefix('+').is_some_and(|digits| {
        (8..=15).contains(&digits.len()) && !digits.starts_with('0') && digits.bytes().all(|b| b.is_ascii_digit())
    })
}

async fn send(
    State(state): State<Arc<SandboxState>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = handle(&state, &sid, &headers, &body).await.map_err(IntoResponse::into_response);
    state.stats.tally(ProviderKind::Twilio, answer)
}

async fn handle(
    state: &Arc<SandboxState>,
    sid: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, TwilioError> {
    let auth_token = match basic_auth(headers) {
        Some((user, password)) if user == sid && !password.is_empty() => password,
        _ => return Err(error(StatusCode::UNAUTHORIZED, 20003, "Authenticate")),
    };
    let params: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
        .map_err(|_| error(StatusCode::BAD_REQUEST, 20001, "Unable to parse the request body"))?;
    let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty());

    let Some(to) = param("To") else {
        return Err(error(StatusCode::BAD_REQUEST, 21604, "A 'To' phone number is required."));
    };
    let from = param("From").or(param("MessagingServiceSid"));
    let Some(from) = from else {
        return Err(error(StatusCode::BAD_REQUEST, 21603, "A 'From' phone number is required."));
    };
    let Some(text) = param("Body") else {
        return Err(error(StatusCode::BAD_REQUEST, 21602, "Message body is required."));
    };
    if text.chars().count() > MAX_BODY_CHARS {
        return Err(error(
            StatusCode::BAD_REQUEST,
            21617,
            "The concatenated message body exceeds the 1600 character limit.",
        ));
    }
    let callback = match param("StatusCallback") {
        None => None,
        Some(raw) => match reqwest::Url::parse(raw) {
            Ok(_) => Some(raw),
            Err(_) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    21609,
                    format!("The StatusCallback URL {raw} is not a valid URL."),
                ));
            }
        },
    };

    match state.faults.apply(ProviderKind::Twilio).await {
        Verdict::Pass => {}
        Verdict::Retryable => {
            return Err(error(StatusCode::SERVICE_UNAVAILABLE, 20500, "An internal server error has occurred"));
        }
        Verdict::Permanent => return Err(invalid_to(to)),
        // The layer adds `Retry-After` (Twilio sends one with its 429s).
        Verdict::RateLimited { .. } => {
            return Err(error(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests"));
        }
        // SMS has no dead-token error; the nearest is a number that cannot receive messages.
        Verdict::Unregistered => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                21614,
                format!("'To' number {} is not a valid mobile number", mask(to)),
            ));
        }
    }
    if to.contains("optout") {
        return Err(error(StatusCode::BAD_REQUEST, 21610, "Attempt to send to unsubscribed recipient"));
    }
    // `undeliverable` numbers are accepted and then reported undelivered, so clients can test failed reports.
    let undeliverable = to.contains("undeliverable");
    if to.contains("invalid") || (!undeliverable && !is_e164(to)) {
        return Err(invalid_to(to));
    }

    let message_sid = format!("SM{}", new_message_id());
    let reference = callback.and_then(|raw| {
        let url = reqwest::Url::parse(raw).ok()?;
        url.query_pairs().find(|(k, _)| k == "delivery_id").map(|(_, v)| v.into_owned())
    });
    tracing::debug!(to = %mask(to), "sandbox twilio accepted");
    state.record.push(
        ProviderKind::Twilio,
        Incoming {
            to: to.to_string(),
            title: None,
            body: text.to_string(),
            html: None,
            reference: reference.clone(),
            provider_message_id: message_sid.clone(),
        },
    );
    if let Some(raw) = callback {
        let params = callback_params(sid, &message_sid, from, to, undeliverable);
        schedule_callback(state, raw, &auth_token, params, reference);
    }

    let now = jiff::Timestamp::now().strftime("%a, %d %b %Y %H:%M:%S +0000").to_string();
    let resource = json!({
        "sid": message_sid,
        "account_sid": sid,
        "to": to,
        "from": from,
        "body": text,
        "status": "queued",
        "num_segments": "1",
        "num_media": "0",
        "direction": "outbound-api",
        "api_version": API_VERSION,
        "date_created": now,
        "date_updated": now,
        "date_sent": null,
        "price": null,
        "price_unit": "USD",
        "error_code": null,
        "error_message": null,
        "messaging_service_sid": param("MessagingServiceSid"),
        "uri": format!("/{API_VERSION}/Accounts/{sid}/Messages/{message_sid}.json"),
    });
    Ok((StatusCode::CREATED, Json(resource)).into_response())
}

fn invalid_to(to: &str) -> TwilioError {
    error(StatusCode::BAD_REQUEST, 21211, format!("The 'To' number {} is not a valid phone number.", mask(to)))
}

/// The final status of a message as Twilio posts it: `delivered`, or `undelivered` with ErrorCode 30003.
fn callback_params(
    account_sid: &str,
    message_sid: &str,
    from: &str,
    to: &str,
    undeliverable: bool,
) -> Vec<(&'static str, String)> {
    let status = if undeliverable { "undelivered" } else { "delivered" };
    let mut params = vec![
        ("MessageSid", message_sid.to_string()),
        ("SmsSid", message_sid.to_string()),
        ("AccountSid", account_sid.to_string()),
        ("From", from.to_string()),
        ("To", to.to_string()),
        ("MessageStatus", status.to_string()),
        ("SmsStatus", status.to_string()),
        ("ApiVersion", API_VERSION.to_string()),
    ];
    if undeliverable {
        params.push(("ErrorCode", "30003".to_string()));
    }
    params
}

/// Posts `params` to the callback URL as the report faults decide, signed with the auth token the request
/// authenticated with.
fn schedule_callback(
    state: &Arc<SandboxState>,
    raw_url: &str,
    auth_token: &str,
    params: Vec<(&'static str, String)>,
    reference: Option<String>,
) {
    let url = match reports::loopback_url(raw_url) {
        Ok(url) => url,
        Err(error) => {
            tracing::warn!(%error, "sandbox twilio status callback not sent");
            return;
        }
    };
    // Signed over the URL exactly as the client gave it, as Twilio does.
    let signature = signature(auth_token, raw_url, &params);
    let result = params.iter().find(|(k, _)| *k == "MessageStatus").map(|(_, v)| v.clone()).unwrap_or_default();
    let report = Report {
        provider: ProviderKind::Twilio,
        reference,
        result,
        url,
        headers: vec![("X-Twilio-Signature", signature)],
        body: Body::Form(params),
    };
    reports::schedule(state, report);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164_numbers_are_recognised() {
        assert!(is_e164("+821012345678"));
        assert!(is_e164("+14155550100"));
        for bad in ["", "+", "01012345678", "+0123456789", "+1234567", "+1234567890123456", "+1415555o100"] {
            assert!(!is_e164(bad), "{bad}");
        }
    }

    #[test]
    fn signature_matches_twilio_documentation_example() {
        // The example from Twilio's "Webhooks security" page.
        let params: Vec<(&str, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect();
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(signature("12345", url, &params), "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
    }
}
