//! The Bizppurio v3 client: alimtalk through `POST /v3/message` with a cached bearer token from `/v1/token`,
//! refreshed ahead of its `expired` time and once more when a send is refused for the token. With
//! `providers.bizppurio.sms_fallback`, Bizppurio resends the body as SMS when the alimtalk cannot be delivered.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use jiff::Timestamp;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::token::{CachedToken, TokenCache};
use super::{BizppurioError, BizppurioSettings};
use crate::domain::{Address, ProviderKind};
use crate::providers::{Accepted, BuildError, Provider, ProviderError, SendRequest, http, log_refusal, wrong_address};

const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
const JSON_UTF8: HeaderValue = HeaderValue::from_static("application/json; charset=utf-8");
/// Assumed when the token answer has no readable `expired` (Bizppurio tokens live 24 h).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// Floor for a token whose `expired` is already past by our clock (clock skew): use it briefly, then refresh.
const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// A `RateLimit-Reset` at least this large is a unix time (2001-09-09), not a delay of over 31 years.
const UNIX_TIME_FLOOR: u64 = 1_000_000_000;
/// Korea Standard Time, the zone of `expired` (no daylight saving since 1988).
const KST: jiff::tz::Offset = jiff::tz::offset(9);

/// Sends KakaoTalk alimtalk through Bizppurio.
pub struct BizppurioClient {
    http: reqwest::Client,
    token_url: reqwest::Url,
    message_url: reqwest::Url,
    /// `Basic base64(account:password)`, for the token endpoint only.
    basic: HeaderValue,
    account: String,
    sender_key: String,
    from: String,
    sms_fallback: bool,
    tokens: TokenCache,
}

/// A refused request, before it becomes a [`ProviderError`].
struct Refusal {
    error: BizppurioError,
    status: u16,
    message: String,
    retry_after: Option<Duration>,
}

impl Refusal {
    fn new(error: BizppurioError, message: impl Into<String>) -> Refusal {
        Refusal { error, status: 0, message: message.into(), retry_after: None }
    }

    fn into_provider_error(self, phone: &str) -> ProviderError {
        let label = self.error.metric_label();
        let error = self.error.into_provider_error(self.status, self.message, self.retry_after);
        log_refusal(&error, label, phone);
        error
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.error.code(self.status))
    }
}

impl BizppurioClient {
    pub fn new(http: reqwest::Client, settings: &BizppurioSettings) -> Result<BizppurioClient, BuildError> {
        let base = http::base_url("bizppurio", &settings.base_url)?;
        for (field, value) in [("account", &settings.account), ("sender_key", &settings.sender_key)] {
            if value.is_empty() {
                return Err(BuildError::invalid("bizppurio", field, "must not be empty"));
            }
        }
        let credentials = STANDARD.encode(format!("{}:{}", settings.account, settings.password.expose()));
        Ok(BizppurioClient {
            http,
            token_url: http::url("bizppurio", &format!("{base}/v1/token"))?,
            message_url: http::url("bizppurio", &format!("{base}/v3/message"))?,
            basic: http::secret_header("bizppurio", "password", &format!("Basic {credentials}"))?,
            account: settings.account.clone(),
            sender_key: settings.sender_key.clone(),
            from: settings.from.clone(),
            sms_fallback: settings.sms_fallback,
            tokens: TokenCache::default(),
        })
    }

    async fn bearer(&self) -> Result<HeaderValue, Refusal> {
        self.tokens.bearer(|| self.fetch_token()).await
    }

    /// POSTs to Bizppurio and reads the answer: status, `RateLimit-Reset` wait and body.
    async fn exchange(
        &self,
        url: &reqwest::Url,
        authorization: &HeaderValue,
        body: Option<Bytes>,
    ) -> Result<(u16, Option<Duration>, Bytes), Refusal> {
        let mut request =
            self.http.post(url.clone()).header(AUTHORIZATION, authorization.clone()).header(CONTENT_TYPE, JSON_UTF8);
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.map_err(|e| Refusal::new(BizppurioError::Transport, http::describe(e)))?;
        let status = response.status().as_u16();
        let retry_after = rate_limit_wait(response.headers(), Timestamp::now());
        Ok((status, retry_after, response.bytes().await.unwrap_or_default()))
    }

    async fn fetch_token(&self) -> Result<CachedToken, Refusal> {
        let (status, retry_after, bytes) = self.exchange(&self.token_url, &self.basic, None).await?;
        if !(200..300).contains(&status) {
            let mut refusal = classify(status, &bytes, retry_after);
            refusal.message = format!("token request refused: {}", refusal.message);
            return Err(refusal);
        }
        let answer = serde_json::from_slice::<TokenAnswer>(&bytes).ok();
        let Some((token, expired)) = answer.and_then(|a| Some((a.accesstoken.filter(|t| !t.is_empty())?, a.expired)))
        else {
            return Err(Refusal::new(BizppurioError::BadTokenAnswer, "token answer has no accesstoken"));
        };
        let mut header = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| Refusal::new(BizppurioError::BadTokenAnswer, "accesstoken is not a header value"))?;
        header.set_sensitive(true);
        let lifetime = token_lifetime(expired.as_deref(), Timestamp::now());
        Ok(CachedToken::new(header, lifetime, self.tokens.now()))
    }

    async fn post_message(&self, bearer: &HeaderValue, body: Bytes) -> Result<Accepted, Refusal> {
        let (status, retry_after, bytes) = self.exchange(&self.message_url, bearer, Some(body)).await?;
        if (200..300).contains(&status) {
            let Ok(answer) = serde_json::from_slice::<MessageAnswer>(&bytes) else {
                return Ok(Accepted::Sent { provider_message_id: None });
            };
            // 1000 means Bizppurio took the message; the report says whether it arrived.
            if answer.code.as_ref().and_then(code_of).is_none_or(|c| c == 1000) {
                return Ok(Accepted::Sent { provider_message_id: answer.messagekey });
            }
        }
        Err(classify(status, &bytes, retry_after))
    }
}

#[async_trait]
impl Provider for BizppurioClient {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Bizppurio
    }

    async fn send(&self, request: &SendRequest) -> Result<Accepted, ProviderError> {
        let Address::Phone { phone } = &request.address else {
            return Err(wrong_address(ProviderKind::Bizppurio, &request.address));
        };
        let Some(template_code) = request.content.template_code.as_deref().filter(|t| !t.is_empty()) else {
            let refusal = Refusal::new(BizppurioError::MissingTemplateCode, "alimtalk content has no template code");
            return Err(refusal.into_provider_error(phone));
        };
        let Some(to) = domestic_phone(phone) else {
            let refusal = Refusal::new(BizppurioError::InvalidPhone, "alimtalk reaches Korean numbers only");
            return Err(refusal.into_provider_error(phone));
        };
        let body = MessageBody {
            account: &self.account,
            kind: "at",
            from: &self.from,
            to: &to,
            refkey: &request.delivery_id,
            content: Content {
                at: Alimtalk {
                    senderkey: &self.sender_key,
                    templatecode: template_code,
                    message: &request.content.body,
                },
            },
            resend: self.sms_fallback.then_some(Resend { first: "sms" }),
            recontent: self.sms_fallback.then_some(Recontent { sms: SmsContent { message: &request.content.body } }),
        };
        let body = Bytes::from(serde_json::to_vec(&body).expect("the message body serializes"));
        let result = async {
            let bearer = self.bearer().await?;
            match self.post_message(&bearer, body.clone()).await {
                // The token may have been revoked or expired early: once, drop it and try with a new one.
                Err(refusal) if refusal.error.is_token_rejection() => {
                    self.tokens.invalidate(&bearer);
                    let bearer = self.bearer().await?;
                    self.post_message(&bearer, body).await
                }
                other => other,
            }
        }
        .await;
        result.map_err(|refusal| refusal.into_provider_error(phone))
    }
}

/// A phone number as Bizppurio wants it: Korean domestic digits (`+821012345678` → `01012345678`).
/// None for numbers outside Korea or not made of digits.
pub fn domestic_phone(phone: &str) -> Option<String> {
    let phone = phone.trim();
    let national = if let Some(rest) = phone.strip_prefix("+82") {
        rest
    } else if phone.starts_with('0') {
        phone
    } else {
        return None;
    };
    if national.len() < 7 || !national.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if national.starts_with('0') { Some(national.to_string()) } else { Some(format!("0{national}")) }
}

/// How long a token lives from `now`, read from `expired` (`YYYYMMDDHHMMSS`, Korea time).
fn token_lifetime(expired: Option<&str>, now: Timestamp) -> Duration {
    let at = expired
        .and_then(|s| jiff::civil::DateTime::strptime("%Y%m%d%H%M%S", s.trim()).ok())
        .and_then(|local| KST.to_timestamp(local).ok());
    let Some(at) = at else {
        tracing::debug!(provider = "bizppurio", expired, "unreadable token expiry; assuming one hour");
        return DEFAULT_TOKEN_LIFETIME;
    };
    match u64::try_from(at.as_millisecond().saturating_sub(now.as_millisecond())) {
        Ok(millis) if millis > 0 => Duration::from_millis(millis),
        _ => MIN_TOKEN_LIFETIME,
    }
}

/// `RateLimit-Reset`, else `Retry-After`. The reset is a delay in seconds (the IETF draft Bizppurio follows),
/// but a value that can only be a unix time is read as one, since servers differ on this.
fn rate_limit_wait(headers: &reqwest::header::HeaderMap, now: Timestamp) -> Option<Duration> {
    let reset = headers.get(&RATELIMIT_RESET).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    match reset {
        Some(at) if at >= UNIX_TIME_FLOOR => {
            Some(Duration::from_secs(at.saturating_sub(u64::try_from(now.as_second()).unwrap_or(0))))
        }
        Some(seconds) => Some(Duration::from_secs(seconds)),
        None => http::header_seconds(headers, &RATELIMIT_RESET).or_else(|| http::retry_after(headers)),
    }
}

/// A code Bizppurio may write as a number or a string.
fn code_of(value: &Value) -> Option<u32> {
    match value {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Reads a Bizppurio error answer `{"code", "description"}`.
fn classify(status: u16, body: &[u8], retry_after: Option<Duration>) -> Refusal {
    let (code, message) = match serde_json::from_slice::<MessageAnswer>(body) {
        Ok(answer) => (answer.code.as_ref().and_then(code_of), answer.description.unwrap_or_default()),
        Err(_) => (None, http::snippet(body, 200)),
    };
    Refusal { error: BizppurioError::from_answer(status, code), status, message, retry_after }
}

#[derive(Serialize)]
struct MessageBody<'a> {
    account: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    from: &'a str,
    to: &'a str,
    refkey: &'a str,
    content: Content<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resend: Option<Resend>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recontent: Option<Recontent<'a>>,
}

/// Which message Bizppurio falls back to when the alimtalk fails.
#[derive(Serialize)]
struct Resend {
    first: &'static str,
}

#[derive(Serialize)]
struct Recontent<'a> {
    sms: SmsContent<'a>,
}

#[derive(Serialize)]
struct SmsContent<'a> {
    message: &'a str,
}

#[derive(Serialize)]
struct Content<'a> {
    at: Alimtalk<'a>,
}

#[derive(Serialize)]
struct Alimtalk<'a> {
    senderkey: &'a str,
    templatecode: &'a str,
    message: &'a str,
}

#[derive(Deserialize)]
struct TokenAnswer {
    accesstoken: Option<String>,
    expired: Option<String>,
}

#[derive(Deserialize)]
struct MessageAnswer {
    code: Option<Value>,
    description: Option<String>,
    messagekey: Option<String>,
}

#[cfg(test)]
mod tests;
