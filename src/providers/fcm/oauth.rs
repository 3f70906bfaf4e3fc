//! FCM's OAuth2 access token: a signed service-account assertion is exchanged for it at the token endpoint; it is
//! cached and shared by every send, refreshed ahead of expiry by one sender at a time (single flight), and dropped
//! when FCM refuses it. Time comes from a [`Clock`] so tests can move it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;
use reqwest::header::HeaderValue;
use serde::Deserialize;

use super::FcmError;
use super::account::ServiceAccount;
use crate::providers::http;

/// The grant type of the service-account flow (RFC 7523).
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// What Google gives when an answer leaves `expires_in` out.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// The wall clock the token logic reads (assertion `iat`, token expiry).
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;
}

/// The system's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Why no access token could be had, as the send will report it.
#[derive(Clone, Debug)]
pub(crate) struct TokenFailure {
    pub error: FcmError,
    pub message: String,
    pub retry_after: Option<Duration>,
}

struct Cached {
    /// `Bearer <access_token>`, marked sensitive.
    header: HeaderValue,
    refresh_at: SystemTime,
    expires_at: SystemTime,
}

/// Where the token comes from and the one every send shares.
pub(crate) struct AccessTokens {
    http: reqwest::Client,
    account: ServiceAccount,
    token_uri: reqwest::Url,
    margin: Duration,
    clock: Arc<dyn Clock>,
    /// Read without awaiting by every send; written only by the refresher.
    current: RwLock<Option<Cached>>,
    /// Held by the one sender exchanging an assertion; holds the last exchange's failure, so senders queued
    /// behind a failed exchange share it instead of each trying again.
    refresh: tokio::sync::Mutex<Option<TokenFailure>>,
    /// Exchanges finished, to tell whether one happened while a sender queued.
    exchanges: AtomicU64,
}

impl AccessTokens {
    pub fn new(
        http: reqwest::Client,
        account: ServiceAccount,
        token_uri: reqwest::Url,
        margin: Duration,
        clock: Arc<dyn Clock>,
    ) -> AccessTokens {
        AccessTokens {
            http,
            account,
            token_uri,
            margin,
            clock,
            current: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(None),
            exchanges: AtomicU64::new(0),
        }
    }

    /// The `authorization` header to send now.
    ///
    /// A token not yet due for refresh is returned at once. One due but still valid is refreshed by one sender
    /// while the others keep using it (and if that refresh fails, the old one is used while it lasts). With no
    /// valid token, senders queue behind the one exchange.
    pub async fn header(&self) -> Result<HeaderValue, TokenFailure> {
        let now = self.clock.now();
        let usable = {
            let current = self.current.read();
            match current.as_ref() {
                Some(token) if now < token.refresh_at => return Ok(token.header.clone()),
                Some(token) if now < token.expires_at => Some(token.header.clone()),
                _ => None,
            }
        };
        if let Some(usable) = usable {
            let Ok(mut last_failure) = self.refresh.try_lock() else {
                return Ok(usable);
            };
            if let Some(newer) = self.cached(|token| now < token.refresh_at) {
                return Ok(newer);
            }
            return match self.exchange().await {
                Ok(header) => {
                    *last_failure = None;
                    Ok(header)
                }
                Err(failure) => {
                    tracing::warn!(
                        provider = "fcm",
                        code = failure.error.code(),
                        "token refresh failed; using the current one"
                    );
                    *last_failure = Some(failure);
                    Ok(usable)
                }
            };
        }
        let seen = self.exchanges.load(Ordering::Acquire);
        let mut last_failure = self.refresh.lock().await;
        // Whoever held the lock before us may have fetched one already, or failed to.
        if let Some(header) = self.cached(|token| self.clock.now() < token.expires_at) {
            return Ok(header);
        }
        if self.exchanges.load(Ordering::Acquire) != seen
            && let Some(failure) = last_failure.as_ref()
        {
            return Err(failure.clone());
        }
        let result = self.exchange().await;
        if let Err(failure) = &result {
            tracing::warn!(provider = "fcm", code = failure.error.code(), "token exchange failed");
        }
        *last_failure = result.as_ref().err().cloned();
        result
    }

    /// Forgets the token FCM refused, unless a newer one has replaced it already.
    pub fn invalidate(&self, refused: &HeaderValue) {
        let mut current = self.current.write();
        if current.as_ref().is_some_and(|token| token.header == *refused) {
            *current = None;
        }
    }

    fn cached(&self, keep: impl Fn(&Cached) -> bool) -> Option<HeaderValue> {
        self.current.read().as_ref().filter(|token| keep(token)).map(|token| token.header.clone())
    }

    /// One assertion-for-token exchange; the new token is cached.
    async fn exchange(&self) -> Result<HeaderValue, TokenFailure> {
        // Boxed: the HTTP exchange's state is large, and a send's future would otherwise carry it on every send.
        let result = Box::pin(self.exchange_once()).await;
        self.exchanges.fetch_add(1, Ordering::Release);
        let (header, cached) = result?;
        *self.current.write() = Some(cached);
        Ok(header)
    }

    async fn exchange_once(&self) -> Result<(HeaderValue, Cached), TokenFailure> {
        // Expiry counts from before the request, so our view of it errs early.
        let issued = self.clock.now();
        let iat = issued.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let assertion = self.account.assertion(self.token_uri.as_str(), iat);
        let form = [("grant_type", GRANT_TYPE), ("assertion", assertion.as_str())];
        let unavailable =
            |message: String, retry_after| TokenFailure { error: FcmError::TokenUnavailable, message, retry_after };
        let response = match self.http.post(self.token_uri.clone()).form(&form).send().await {
            Ok(response) => response,
            Err(e) => return Err(unavailable(format!("token endpoint: {}", http::describe(e)), None)),
        };
        let status = response.status().as_u16();
        let retry_after = http::retry_after(response.headers());
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(e) => return Err(unavailable(format!("token endpoint: {}", http::describe(e)), retry_after)),
        };
        if !(200..300).contains(&status) {
            return Err(refused(status, &body, retry_after));
        }
        let malformed = || TokenFailure {
            error: FcmError::TokenRejected { code: "invalid_token_response".into() },
            message: format!("token endpoint answered {status} without a bearer access_token"),
            retry_after: None,
        };
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|_| malformed())?;
        if !answer.token_type.as_deref().unwrap_or("Bearer").eq_ignore_ascii_case("bearer") {
            return Err(malformed());
        }
        let mut header = HeaderValue::from_str(&format!("Bearer {}", answer.access_token)).map_err(|_| malformed())?;
        header.set_sensitive(true);
        let lifetime = answer.expires_in.map_or(DEFAULT_LIFETIME, Duration::from_secs);
        let cached = Cached {
            header: header.clone(),
            refresh_at: issued + refresh_after(lifetime, self.margin),
            expires_at: issued + lifetime,
        };
        Ok((header, cached))
    }
}

/// How long after issue a token of `lifetime` is refreshed: `margin` before it expires, or at half its life if
/// it lives shorter than twice the margin (so it is still used for a while).
fn refresh_after(lifetime: Duration, margin: Duration) -> Duration {
    if lifetime < margin * 2 { lifetime / 2 } else { lifetime - margin }
}

/// A refused exchange: `{"error": "invalid_grant", "error_description": "..."}` on 4xx (our credentials), or a
/// 5xx/429 worth retrying.
fn refused(status: u16, body: &[u8], retry_after: Option<Duration>) -> TokenFailure {
    let answer = serde_json::from_slice::<OAuthError>(body).ok();
    let message = match &answer {
        Some(OAuthError { error_description: Some(description), .. }) => format!("token endpoint: {description}"),
        _ => format!("token endpoint answered {status}: {}", http::snippet(body, 200)),
    };
    let error = if http::class_of_status(status).is_retried() {
        FcmError::TokenUnavailable
    } else {
        let code = answer.and_then(|a| a.error).unwrap_or_else(|| format!("http_{status}"));
        FcmError::TokenRejected { code }
    };
    TokenFailure { error, message, retry_after }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: Option<u64>,
    token_type: Option<String>,
}

#[derive(Deserialize)]
struct OAuthError {
    error: Option<String>,
    error_description: Option<String>,
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use parking_lot::Mutex;
    use serde_json::json;

    use super::*;
    use crate::providers::ErrorClass;
    use crate::providers::dev_credentials::FCM_SERVICE_ACCOUNT_JSON;
    use crate::providers::testing::{Canned, FakePeer, dead_base_url, http_client};

    /// A clock that moves only when told.
    pub(crate) struct ManualClock(Mutex<SystemTime>);

    impl ManualClock {
        pub fn new() -> Arc<ManualClock> {
            Arc::new(ManualClock(Mutex::new(UNIX_EPOCH + Duration::from_secs(1_700_000_000))))
        }

        pub fn advance(&self, by: Duration) {
            *self.0.lock() += by;
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> SystemTime {
            *self.0.lock()
        }
    }

    /// A token endpoint handing out `ya29.1`, `ya29.2`… living `lifetime_s`.
    async fn token_endpoint(lifetime_s: u64) -> FakePeer {
        let issued = AtomicUsize::new(0);
        FakePeer::start(move |_| {
            let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
            Canned::json(
                200,
                json!({"access_token": format!("ya29.{n}"), "expires_in": lifetime_s, "token_type": "Bearer"}),
            )
        })
        .await
    }

    fn tokens(base_url: &str, clock: Arc<ManualClock>) -> AccessTokens {
        let account = ServiceAccount::from_json(FCM_SERVICE_ACCOUNT_JSON).unwrap();
        let uri = reqwest::Url::parse(&format!("{base_url}/token")).unwrap();
        AccessTokens::new(http_client(), account, uri, Duration::from_secs(300), clock)
    }

    #[tokio::test]
    async fn the_exchange_posts_the_jwt_bearer_form() {
        let peer = token_endpoint(3600).await;
        let header = tokens(&peer.base_url, ManualClock::new()).header().await.unwrap();
        assert_eq!(header, "Bearer ya29.1");
        assert!(header.is_sensitive());
        let sent = &peer.requests()[0];
        assert_eq!((sent.method.as_str(), sent.target.as_str()), ("POST", "/token"));
        assert_eq!(sent.header("content-type"), Some("application/x-www-form-urlencoded"));
        let form = sent.form();
        assert_eq!(form[0], ("grant_type".to_string(), GRANT_TYPE.to_string()));
        assert_eq!(form[1].0, "assertion");
        assert_eq!(form[1].1.split('.').count(), 3, "a JWT");
    }

    #[tokio::test]
    async fn the_token_is_reused_then_refreshed_inside_the_margin() {
        let peer = token_endpoint(3600).await;
        let clock = ManualClock::new();
        let tokens = tokens(&peer.base_url, clock.clone());
        assert_eq!(tokens.header().await.unwrap(), "Bearer ya29.1");
        clock.advance(Duration::from_secs(3600 - 301));
        assert_eq!(tokens.header().await.unwrap(), "Bearer ya29.1", "outside the margin: reused");
        assert_eq!(peer.count("/token"), 1);
        clock.advance(Duration::from_secs(2));
        assert_eq!(tokens.header().await.unwrap(), "Bearer ya29.2", "inside the margin: refreshed");
        assert_eq!(tokens.header().await.unwrap(), "Bearer ya29.2");
        assert_eq!(peer.count("/token"), 2);
    }

    #[tokio::test]
    async fn short_lived_tokens_are_refreshed_at_half_life() {
        let peer = token_endpoint(100).await;
        let clock = ManualClock::new();
        let tokens = tokens(&peer.base_url, clock.clone());
        tokens.header().await.unwrap();
        clock.advance(Duration::from_secs(49));
        assert_eq!(tokens.header().await.unwrap(), "Bearer ya29.1");
        clock.advance(Duration::from_secs(1));
        assert_eq!(tokens.header().await.unwrap(), "Bearer ya29.2");
        assert_eq!(refresh_after(Duration::from_secs(3600), Duration::from_secs(300)), Duration::from_secs(3300));
        assert_eq!(refresh_after(Duration::from_secs(600), Duration::from_secs(300)), Duration::from_secs(300));
    }

    #[tokio::test]
    async fn invalidate_drops_only_the_refused_token() {
        let peer = token_endpoint(3600).await;
        let tokens = tokens(&peer.base_url, ManualClock::new());
        let first = tokens.header().await.unwrap();
        tokens.invalidate(&first);
        let second = tokens.header().await.unwrap();
        assert_eq!(second, "Bearer ya29.2");
        // A late 401 for the old token must not throw away the new one.
        tokens.invalidate(&first);
        assert_eq!(tokens.header().await.unwrap(), second);
        assert_eq!(peer.count("/token"), 2);
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_exchange() {
        let peer = token_endpoint(3600).await;
        let tokens = Arc::new(tokens(&peer.base_url, ManualClock::new()));
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let tokens = Arc::clone(&tokens);
                tokio::spawn(async move { tokens.header().await.unwrap() })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), "Bearer ya29.1");
        }
        assert_eq!(peer.count("/token"), 1);
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_valid_token() {
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failing = Arc::clone(&fail);
        let peer = FakePeer::start(move |_| {
            if failing.load(Ordering::SeqCst) {
                Canned::json(503, json!({"error": "internal_failure"}))
            } else {
                Canned::json(200, json!({"access_token": "ya29.ok", "expires_in": 3600}))
            }
        })
        .await;
        let clock = ManualClock::new();
        let tokens = tokens(&peer.base_url, clock.clone());
        tokens.header().await.unwrap();
        fail.store(true, Ordering::SeqCst);
        clock.advance(Duration::from_secs(3400));
        assert_eq!(tokens.header().await.unwrap(), "Bearer ya29.ok");
        clock.advance(Duration::from_secs(200));
        let failure = tokens.header().await.unwrap_err();
        assert_eq!(failure.error, FcmError::TokenUnavailable);
    }

    #[tokio::test]
    async fn exchange_failures_are_classified() {
        let peer = FakePeer::start(|_| {
            Canned::json(400, json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}))
        })
        .await;
        let failure = tokens(&peer.base_url, ManualClock::new()).header().await.unwrap_err();
        assert_eq!(failure.error, FcmError::TokenRejected { code: "invalid_grant".into() });
        assert_eq!(failure.message, "token endpoint: Invalid JWT Signature.");
        let engine = failure.error.into_provider_error(failure.message, None);
        assert_eq!((engine.class, engine.alert), (ErrorClass::Permanent, true));

        let failure =
            refused(401, br#"{"error":"invalid_client","error_description":"The OAuth client was not found."}"#, None);
        assert_eq!(failure.error, FcmError::TokenRejected { code: "invalid_client".into() });
        let failure = refused(500, b"oops", Some(Duration::from_secs(2)));
        assert_eq!((failure.error, failure.retry_after), (FcmError::TokenUnavailable, Some(Duration::from_secs(2))));
        assert_eq!(refused(404, b"<html>", None).error, FcmError::TokenRejected { code: "http_404".into() });

        let failure = tokens(&dead_base_url().await, ManualClock::new()).header().await.unwrap_err();
        assert_eq!(failure.error, FcmError::TokenUnavailable);
        assert_eq!(failure.error.into_provider_error("", None).class, ErrorClass::Retryable);
    }

    #[tokio::test]
    async fn senders_queued_behind_a_failed_exchange_share_its_failure() {
        let peer = FakePeer::start(|_| Canned::json(400, json!({"error": "invalid_grant"}))).await;
        let tokens = Arc::new(tokens(&peer.base_url, ManualClock::new()));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let tokens = Arc::clone(&tokens);
                tokio::spawn(async move { tokens.header().await.unwrap_err().error })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), FcmError::TokenRejected { code: "invalid_grant".into() });
        }
        // Each caller that arrived after a failure finished tries once more, but queued ones do not pile up.
        assert!(peer.count("/token") < 16, "{} exchanges", peer.count("/token"));
        // A later caller tries again: the credentials may have been fixed.
        let before = peer.count("/token");
        tokens.header().await.unwrap_err();
        assert_eq!(peer.count("/token"), before + 1);
    }
}
