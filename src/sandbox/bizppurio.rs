//! Simulated Bizppurio v3 alimtalk API: `POST /v1/token` (basic auth → bearer token, 24 h unless
//! `sandbox.bizppurio_token_lifetime_s` says otherwise) and `POST /v3/message` (bearer, JSON with `refkey`).
//! Answers `{"code": 1000, ...}` (accepted, not delivered) and then posts the delivery-report JSON to the report
//! URL as the provider's report faults decide (`reports.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::post;
use jiff::tz::{Offset, TimeZone};
use jiff::{SignedDuration, Timestamp};
use parking_lot::Mutex;
use rand::Rng;
use serde::Deserialize;
use serde_json::{Value, json};

use super::SandboxState;
use super::faults::Verdict;
use super::http::{basic_auth, bearer, new_message_id};
use super::record::Incoming;
use super::reports::{self, Body, Report};
use crate::domain::ProviderKind;
use crate::domain::contact::mask;

/// Expired tokens are swept once this many are held, so token churn cannot grow memory without bound.
const TOKEN_SWEEP_AT: usize = 1024;
const MAX_REFKEY_CHARS: usize = 32;
const MAX_MESSAGE_CHARS: usize = 1000;
const MAX_BUTTONS: usize = 5;
const BUTTON_TYPES: [&str; 8] = ["WL", "AL", "DS", "BK", "MD", "BC", "BT", "AC"];

pub(crate) fn routes() -> Router<Arc<SandboxState>> {
    Router::new().route("/v1/token", post(token)).route("/v3/message", post(message))
}

/// The limit announced in `RateLimit-Limit` on an injected rate limit: nominal, the sandbox has no real quota.
const NOMINAL_RATE_LIMIT: u64 = 1000;

/// The bearer tokens this sandbox issued, with their account and expiry.
pub(crate) struct Tokens {
    lifetime: SignedDuration,
    issued: Mutex<HashMap<String, (String, Timestamp)>>,
}

impl Tokens {
    /// Tokens living `lifetime_s` seconds (at least one).
    pub fn new(lifetime_s: u64) -> Tokens {
        let lifetime = SignedDuration::from_secs(i64::try_from(lifetime_s.max(1)).unwrap_or(i64::MAX));
        Tokens { lifetime, issued: Mutex::default() }
    }

    fn issue(&self, account: &str) -> (String, Timestamp) {
        let bytes: [u8; 24] = rand::rng().random();
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let now = Timestamp::now();
        let expires = now.checked_add(self.lifetime).unwrap_or(now);
        let mut issued = self.issued.lock();
        if issued.len() >= TOKEN_SWEEP_AT {
            issued.retain(|_, (_, expiry)| *expiry > now);
        }
        issued.insert(token.clone(), (account.to_string(), expires));
        (token, expires)
    }

    /// The account a live token was issued to.
    fn account(&self, token: &str) -> Option<String> {
        let issued = self.issued.lock();
        let (account, expiry) = issued.get(token)?;
        (*expiry > Timestamp::now()).then(|| account.clone())
    }
}

/// A Bizppurio error: HTTP status and the body's `code`; a rate limit also says when it resets.
#[derive(Debug)]
struct BizError {
    status: StatusCode,
    code: u32,
    description: String,
    reset_s: Option<u64>,
}

fn error(status: StatusCode, code: u32, description: impl Into<String>) -> BizError {
    BizError { status, code, description: description.into(), reset_s: None }
}

/// HTTP 429 code 5002 with the `RateLimit-*` headers (`RateLimit-Reset` in seconds).
fn rate_limited(reset_s: u64) -> BizError {
    BizError { reset_s: Some(reset_s), ..error(StatusCode::TOO_MANY_REQUESTS, 5002, "too many requests") }
}

fn invalid(description: impl Into<String>) -> BizError {
    error(StatusCode::BAD_REQUEST, 2000, description)
}

impl IntoResponse for BizError {
    fn into_response(self) -> Response {
        let mut response =
            (self.status, Json(json!({"code": self.code, "description": self.description}))).into_response();
        if let Some(reset_s) = self.reset_s {
            let headers = response.headers_mut();
            headers.insert("ratelimit-limit", HeaderValue::from(NOMINAL_RATE_LIMIT));
            headers.insert("ratelimit-remaining", HeaderValue::from(0));
            headers.insert("ratelimit-reset", HeaderValue::from(reset_s));
        }
        response
    }
}

async fn token(State(state): State<Arc<SandboxState>>, headers: HeaderMap) -> Response {
    let answer = match basic_auth(&headers) {
        Some((account, password)) if !account.is_empty() && !password.is_empty() => {
            let (token, expires) = state.bizppurio_tokens.issue(&account);
            // Bizppurio writes expiry in Korean local time; Korea has kept +09:00 without DST since 1988.
            let expired = expires.to_zoned(TimeZone::fixed(Offset::constant(9))).strftime("%Y%m%d%H%M%S").to_string();
            Ok(Json(json!({"accesstoken": token, "type": "Bearer", "expired": expired})).into_response())
        }
        _ => Err(error(StatusCode::UNAUTHORIZED, 3001, "authentication failed").into_response()),
    };
    state.stats.tally(ProviderKind::Bizppurio, answer)
}

#[derive(Deserialize)]
struct MessageBody {
    account: String,
    #[serde(rename = "type")]
    kind: String,
    from: String,
    to: String,
    #[serde(default)]
    refkey: Option<String>,
    content: Content,
    #[serde(default)]
    resend: Option<Resend>,
    #[serde(default, rename = "recontent")]
    _recontent: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct Content {
    #[serde(default)]
    at: Option<Alimtalk>,
}

#[derive(Deserialize)]
struct Alimtalk {
    senderkey: String,
    templatecode: String,
    message: String,
    #[serde(default)]
    button: Vec<Button>,
}

#[derive(Deserialize)]
struct Button {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    url_mobile: Option<String>,
}

#[derive(Deserialize)]
struct Resend {
    first: String,
}

async fn message(State(state): State<Arc<SandboxState>>, headers: HeaderMap, body: Bytes) -> Response {
    let answer = handle(&state, &headers, &body).await.map_err(IntoResponse::into_response);
    state.stats.tally(ProviderKind::Bizppurio, answer)
}

async fn handle(state: &Arc<SandboxState>, headers: &HeaderMap, body: &[u8]) -> Result<Response, BizError> {
    // Unknown and expired tokens get the same answer, so a client cannot tell them apart (nor needs to).
    let Some(account) = bearer(headers).and_then(|token| state.bizppurio_tokens.account(token)) else {
        return Err(error(StatusCode::UNAUTHORIZED, 3006, "invalid or expired access token"));
    };
    let request: MessageBody = serde_json::from_slice(body).map_err(|e| invalid(format!("invalid message: {e}")))?;
    if request.account != account {
        return Err(error(StatusCode::UNAUTHORIZED, 3006, "account does not match the access token"));
    }
    let at = validate(&request)?;

    // Alimtalk learns that a recipient cannot be reached only after accepting: an injected "unregistered" is an
    // accepted message whose report fails (or falls back), like an `undeliverable` number.
    let mut unreachable = false;
    match state.faults.apply(ProviderKind::Bizppurio).await {
        Verdict::Pass => {}
        Verdict::Retryable => return Err(error(StatusCode::INTERNAL_SERVER_ERROR, 9000, "internal server error")),
        Verdict::Permanent => return Err(invalid("invalid message")),
        Verdict::RateLimited { retry_after_s } => return Err(rate_limited(retry_after_s)),
        Verdict::Unregistered => unreachable = true,
    }
    // `undeliverable` numbers are accepted and then reported failed (or fallen back to SMS when `resend` asks).
    let undeliverable = request.to.contains("undeliverable");
    if request.to.contains("invalid") || (!undeliverable && !is_phone(&request.to)) {
        return Err(invalid("invalid phone number"));
    }

    let messagekey = new_message_id();
    let refkey = request.refkey.clone().unwrap_or_default();
    tracing::debug!(to = %mask(&request.to), "sandbox bizppurio accepted");
    state.record.push(
        ProviderKind::Bizppurio,
        Incoming {
            to: request.to.clone(),
            title: None,
            body: at.message.clone(),
            html: None,
            reference: request.refkey.clone(),
            provider_message_id: messagekey.clone(),
        },
    );
    let fallback = request.resend.as_ref().map(|r| r.first.as_str());
    schedule_report(state, &messagekey, &refkey, &request.to, undeliverable || unreachable, fallback);
    Ok(Json(json!({"code": 1000, "description": "Success", "refkey": refkey, "messagekey": messagekey}))
        .into_response())
}

/// Checks what Bizppurio checks before accepting; returns the alimtalk content.
fn validate(request: &MessageBody) -> Result<&Alimtalk, BizError> {
    if request.account.is_empty() {
        return Err(invalid("account is required"));
    }
    if request.kind != "at" {
        return Err(invalid(format!("unsupported message type {:?}", request.kind)));
    }
    if request.from.is_empty() || !request.from.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        return Err(invalid("from must be a registered sender number"));
    }
    if request.refkey.as_ref().is_some_and(|r| r.chars().count() > MAX_REFKEY_CHARS) {
        return Err(invalid(format!("refkey is longer than {MAX_REFKEY_CHARS} characters")));
    }
    let Some(at) = &request.content.at else {
        return Err(invalid("content.at is required for type at"));
    };
    if at.senderkey.is_empty() || at.templatecode.is_empty() {
        return Err(invalid("senderkey and templatecode are required"));
    }
    let chars = at.message.chars().count();
    if chars == 0 || chars > MAX_MESSAGE_CHARS {
        return Err(invalid(format!("message must be 1 to {MAX_MESSAGE_CHARS} characters")));
    }
    if at.button.len() > MAX_BUTTONS {
        return Err(invalid(format!("at most {MAX_BUTTONS} buttons")));
    }
    for button in &at.button {
        if button.name.is_empty() || !BUTTON_TYPES.contains(&button.kind.as_str()) {
            return Err(invalid("button needs a name and a known type"));
        }
        if button.kind == "WL" && button.url_mobile.as_deref().is_none_or(str::is_empty) {
            return Err(invalid("web link button needs url_mobile"));
        }
    }
    if let Some(resend) = &request.resend
        && !matches!(resend.first.as_str(), "sms" | "lms")
    {
        return Err(invalid("resend.first must be sms or lms"));
    }
    Ok(at)
}

/// A phone number as Bizppurio takes it: digits (domestic `010…` or with country code), optionally `+`.
fn is_phone(to: &str) -> bool {
    let digits = to.strip_prefix('+').unwrap_or(to);
    (8..=16).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
}

/// The report Bizppurio would post: delivered by KakaoTalk, or for an undeliverable number either the
/// fallback's result (SMS 4100, LMS 6600, `RESEND_FLAG` Y) or a KakaoTalk failure (7308).
fn report_body(messagekey: &str, refkey: &str, to: &str, undeliverable: bool, fallback: Option<&str>) -> Value {
    let (media, result, resend_flag, kaores) = match (undeliverable, fallback) {
        (false, _) => ("KAT", "7000", "N", "1000"),
        (true, Some("lms")) => ("LMS", "6600", "Y", "3018"),
        (true, Some(_)) => ("SMS", "4100", "Y", "3018"),
        (true, None) => ("KAT", "7308", "N", "3018"),
    };
    json!({
        "DEVICE": "KAT",
        "CMSGID": messagekey,
        "MSGID": messagekey,
        "PHONE": to,
        "MEDIA": media,
        "UNIXTIME": Timestamp::now().as_second().to_string(),
        "RESULT": result,
        "REFKEY": refkey,
        "RESEND_FLAG": resend_flag,
        "TELRES": "",
        "KAORES": kaores,
    })
}

fn schedule_report(
    state: &Arc<SandboxState>,
    messagekey: &str,
    refkey: &str,
    to: &str,
    undeliverable: bool,
    fallback: Option<&str>,
) {
    let Some(url) = state.reports.bizppurio_url() else {
        return;
    };
    let body = report_body(messagekey, refkey, to, undeliverable, fallback);
    let report = Report {
        provider: ProviderKind::Bizppurio,
        reference: Some(refkey.to_string()).filter(|r| !r.is_empty()),
        result: body["RESULT"].as_str().unwrap_or_default().to_string(),
        url: url.clone(),
        headers: Vec::new(),
        body: Body::Json(body),
    };
    reports::schedule(state, report);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(value: Value) -> MessageBody {
        serde_json::from_value(value).unwrap()
    }

    fn valid() -> Value {
        json!({"account": "herald", "type": "at", "from": "0212345678", "to": "01012345678", "refkey": "d-1",
               "content": {"at": {"senderkey": "sk", "templatecode": "T1", "message": "hello",
                                  "button": [{"name": "open", "type": "WL", "url_mobile": "https://x"}]}}})
    }

    #[test]
    fn a_valid_request_passes_and_each_rule_refuses() {
        assert!(validate(&request(valid())).is_ok());
        let cases: [(&str, Value); 6] = [
            ("/type", json!("sms")),
            ("/refkey", json!("x".repeat(33))),
            ("/content/at/message", json!("가".repeat(1001))),
            ("/content/at/message", json!("")),
            ("/content/at/button/0/type", json!("XX")),
            ("/content/at/button/0/url_mobile", json!("")),
        ];
        for (pointer, value) in cases {
            let mut body = valid();
            *body.pointer_mut(pointer).unwrap() = value;
            assert_eq!(validate(&request(body)).err().map(|e| e.code), Some(2000), "{pointer}");
        }
    }

    #[test]
    fn reports_say_delivered_or_what_went_wrong() {
        let ok = report_body("mk", "d-1", "01012345678", false, None);
        assert_eq!(
            (ok["RESULT"].as_str(), ok["REFKEY"].as_str(), ok["MSGID"].as_str()),
            (Some("7000"), Some("d-1"), Some("mk"))
        );
        assert_eq!(report_body("mk", "r", "x", true, None)["RESULT"], "7308");
        assert_eq!(report_body("mk", "r", "x", true, Some("sms"))["RESULT"], "4100");
        assert_eq!(report_body("mk", "r", "x", true, Some("lms"))["MEDIA"], "LMS");
    }

    #[test]
    fn tokens_are_checked_and_tied_to_their_account() {
        let tokens = Tokens::new(86_400);
        let (token, expires) = tokens.issue("herald");
        assert_eq!(token.len(), 48);
        assert!(expires > Timestamp::now());
        assert_eq!(tokens.account(&token).as_deref(), Some("herald"));
        assert_eq!(tokens.account("forged"), None);
    }
}
