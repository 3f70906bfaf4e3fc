//! Where the APNs `authorization` header comes from. Today a static token from the configuration; the ES256
//! provider JWT (signed with the team's `.p8` key, reused 20–60 minutes) will be another [`ProviderTokenSource`].

use std::sync::atomic::{AtomicBool, Ordering};

use reqwest::header::HeaderValue;

use crate::providers::{BuildError, http};

/// Supplies the provider token for APNs requests.
pub trait ProviderTokenSource: Send + Sync + 'static {
    /// The `authorization` header value to send now (`bearer <token>`).
    fn current(&self) -> HeaderValue;

    /// APNs answered `ExpiredProviderToken` to a request sent with `rejected`: make a new token before the next
    /// request (unless that already happened since).
    fn expired(&self, rejected: &HeaderValue);
}

/// A token given in the configuration, which cannot be refreshed.
pub struct StaticProviderToken {
    header: HeaderValue,
    /// The expiry warning is logged once, not once per refused send.
    warned: AtomicBool,
}

impl StaticProviderToken {
    pub fn new(token: &str) -> Result<StaticProviderToken, BuildError> {
        let header = http::secret_header("apns", "provider_token", &format!("bearer {token}"))?;
        Ok(StaticProviderToken { header, warned: AtomicBool::new(false) })
    }
}

impl ProviderTokenSource for StaticProviderToken {
    fn current(&self) -> HeaderValue {
        self.header.clone()
    }

    fn expired(&self, _rejected: &HeaderValue) {
        if self.warned.swap(true, Ordering::Relaxed) {
            return;
        }
        tracing::warn!(
            provider = "apns",
            "static provider token expired; configure a new providers.apns.provider_token"
        );
    }
}
