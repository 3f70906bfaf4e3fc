//! The cached Bizppurio access token: shared by every sender, refreshed by one sender at a time, ahead of its
//! expiry so sends never wait for it while it is still valid. Time comes from an injectable clock so tests can
//! move past a refresh point without waiting.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use reqwest::header::HeaderValue;

/// Refresh this long before the token expires (at most half its lifetime, so short-lived tokens are not
/// refreshed on every send).
pub(crate) const REFRESH_AHEAD: Duration = Duration::from_secs(10 * 60);

/// Where the cache reads the time.
pub(crate) type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// An access token ready to send.
#[derive(Debug)]
pub(crate) struct CachedToken {
    /// `Bearer <accesstoken>`.
    pub header: HeaderValue,
    refresh_at: Instant,
    expires_at: Instant,
}

impl CachedToken {
    /// A token that lives `lifetime` from `now`.
    pub fn new(header: HeaderValue, lifetime: Duration, now: Instant) -> CachedToken {
        let margin = REFRESH_AHEAD.min(lifetime / 2);
        CachedToken { header, refresh_at: now + (lifetime - margin), expires_at: now + lifetime }
    }
}

/// The token all senders share.
pub(crate) struct TokenCache {
    current: RwLock<Option<Arc<CachedToken>>>,
    /// Held by the one sender fetching a token.
    refresh: tokio::sync::Mutex<()>,
    clock: Clock,
}

impl Default for TokenCache {
    fn default() -> TokenCache {
        TokenCache::with_clock(Arc::new(Instant::now))
    }
}

impl TokenCache {
    pub fn with_clock(clock: Clock) -> TokenCache {
        TokenCache { current: RwLock::new(None), refresh: tokio::sync::Mutex::new(()), clock }
    }

    /// The cache's current time, for stamping a fetched token.
    pub fn now(&self) -> Instant {
        (self.clock)()
    }

    /// The header to send now, fetching a token with `fetch` when there is none worth using.
    ///
    /// A token still valid but due for refresh is refreshed by one sender while the others keep using it; if
    /// that refresh fails, the old token is used while it lasts. With no valid token, senders queue behind the
    /// one fetch.
    pub async fn bearer<F, Fut, E>(&self, fetch: F) -> Result<HeaderValue, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<CachedToken, E>>,
        E: std::fmt::Display,
    {
        let cached = self.current.read().clone();
        if let Some(token) = cached {
            let now = self.now();
            if now < token.refresh_at {
                return Ok(token.header.clone());
            }
            if now < token.expires_at {
                let Ok(_refreshing) = self.refresh.try_lock() else {
                    return Ok(token.header.clone());
                };
                if let Some(newer) = self.valid(REFRESH_AHEAD) {
                    return Ok(newer);
                }
                return match fetch().await {
                    Ok(fresh) => Ok(self.store(fresh)),
                    Err(error) => {
                        tracing::warn!(provider = "bizppurio", %error, "token refresh failed; using the current one");
                        Ok(token.header.clone())
                    }
                };
            }
        }
        let _refreshing = self.refresh.lock().await;
        // Whoever held the lock before us may have fetched one already.
        if let Some(header) = self.valid(Duration::ZERO) {
            return Ok(header);
        }
        let fresh = fetch().await?;
        Ok(self.store(fresh))
    }

    /// Forgets the token if it is still the one that was refused (a newer one is kept).
    pub fn invalidate(&self, refused: &HeaderValue) {
        let mut current = self.current.write();
        if current.as_ref().is_some_and(|t| t.header == *refused) {
            *current = None;
        }
    }

    /// The cached header if it stays valid for at least `margin`.
    fn valid(&self, margin: Duration) -> Option<HeaderValue> {
        let current = self.current.read();
        let token = current.as_ref()?;
        (self.now() + margin < token.expires_at).then(|| token.header.clone())
    }

    fn store(&self, token: CachedToken) -> HeaderValue {
        let header = token.header.clone();
        *self.current.write() = Some(Arc::new(token));
        header
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn token(value: &'static str, lifetime: Duration) -> CachedToken {
        CachedToken::new(HeaderValue::from_static(value), lifetime, Instant::now())
    }

    /// A clock that only moves when told to.
    fn manual_clock() -> (Clock, Arc<parking_lot::Mutex<Instant>>) {
        let now = Arc::new(parking_lot::Mutex::new(Instant::now()));
        let read = Arc::clone(&now);
        (Arc::new(move || *read.lock()), now)
    }

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch() {
        let cache = Arc::new(TokenCache::default());
        let fetches = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (cache, fetches) = (Arc::clone(&cache), Arc::clone(&fetches));
            tasks.push(tokio::spawn(async move {
                cache
                    .bearer(|| async {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok::<_, String>(token("Bearer t1", DAY))
                    })
                    .await
                    .unwrap()
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap(), "Bearer t1");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn refresh_comes_ten_minutes_or_half_a_lifetime_ahead() {
        let (clock, now) = manual_clock();
        let cache = TokenCache::with_clock(clock);
        let fetched = |value: &'static str, lifetime: Duration| {
            let at = cache.now();
            move || async move { Ok::<_, String>(CachedToken::new(HeaderValue::from_static(value), lifetime, at)) }
        };
        let refuse = || async { Err::<CachedToken, _>("must not fetch".to_string()) };
        assert_eq!(cache.bearer(fetched("Bearer day", DAY)).await.unwrap(), "Bearer day");
        *now.lock() += DAY - REFRESH_AHEAD - Duration::from_secs(1);
        assert_eq!(cache.bearer(refuse).await.unwrap(), "Bearer day");
        *now.lock() += Duration::from_secs(2);
        assert_eq!(cache.bearer(fetched("Bearer short", Duration::from_secs(60))).await.unwrap(), "Bearer short");
        // A one-minute token is refreshed after half a minute, not on every send.
        *now.lock() += Duration::from_secs(29);
        assert_eq!(cache.bearer(refuse).await.unwrap(), "Bearer short");
        *now.lock() += Duration::from_secs(2);
        assert_eq!(cache.bearer(fetched("Bearer next", Duration::from_secs(60))).await.unwrap(), "Bearer next");
        // Past its expiry a token is never used: senders wait for the fetch.
        *now.lock() += Duration::from_secs(61);
        assert!(cache.bearer(refuse).await.is_err());
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_still_valid_token() {
        let (clock, now) = manual_clock();
        let cache = TokenCache::with_clock(clock);
        let at = cache.now();
        let old = CachedToken::new(HeaderValue::from_static("Bearer old"), Duration::from_secs(300), at);
        cache.bearer(|| async { Ok::<_, String>(old) }).await.unwrap();
        *now.lock() += Duration::from_secs(200);
        let header = cache.bearer(|| async { Err::<CachedToken, _>("down".to_string()) }).await.unwrap();
        assert_eq!(header, "Bearer old");
    }

    #[tokio::test]
    async fn without_a_token_a_failed_fetch_is_an_error() {
        let cache = TokenCache::default();
        let result = cache.bearer(|| async { Err::<CachedToken, _>("down".to_string()) }).await;
        assert_eq!(result.unwrap_err(), "down");
    }

    #[tokio::test]
    async fn invalidation_only_drops_the_refused_token() {
        let cache = TokenCache::default();
        cache.bearer(|| async { Ok::<_, String>(token("Bearer t1", DAY)) }).await.unwrap();
        cache.invalidate(&HeaderValue::from_static("Bearer other"));
        assert_eq!(cache.valid(Duration::ZERO).unwrap(), "Bearer t1");
        cache.invalidate(&HeaderValue::from_static("Bearer t1"));
        assert!(cache.valid(Duration::ZERO).is_none());
    }
}
