//! What a provider's answer means for a delivery: its next status and event, and how long to wait before a
//! retry (exponential backoff with equal jitter, never sooner than the provider's `Retry-After`). Pure functions,
//! so the shard's bookkeeping and these rules can be read and tested apart.

use std::time::Duration;

use rand::Rng;

use crate::domain::{DeliveryStatus, EventKind};
use crate::providers::{Accepted, ErrorClass, ProviderError};

/// Maps a provider's answer to the delivery's next status.
pub fn classify(
    result: &Result<Accepted, ProviderError>,
    attempt: u32,
    max_retries: u32,
) -> (DeliveryStatus, EventKind, Option<String>, Option<Duration>) {
    match result {
        Ok(Accepted::Delivered { .. }) => (DeliveryStatus::Delivered, EventKind::Delivered, None, None),
        Ok(Accepted::Sent { .. }) => (DeliveryStatus::Sent, EventKind::Sent, None, None),
        Err(e) => {
            let reason = Some(format!("{}: {}", e.code, e.message));
            match e.class {
                ErrorClass::Retryable | ErrorClass::RateLimited if attempt <= max_retries => {
                    (DeliveryStatus::Retrying, EventKind::Retry, reason, e.retry_after)
                }
                ErrorClass::Retryable | ErrorClass::RateLimited => {
                    (DeliveryStatus::Dead, EventKind::DeadLettered, reason, None)
                }
                ErrorClass::Permanent | ErrorClass::Unregistered => {
                    (DeliveryStatus::Failed, EventKind::Failed, reason, None)
                }
                ErrorClass::OptedOut => (DeliveryStatus::Filtered, EventKind::Filtered, reason, None),
            }
        }
    }
}

/// Exponential backoff with "equal jitter": half fixed, half random, capped.
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20)).min(max);
    let half = exp / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_with_bounded_jitter() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for _ in 0..50 {
            let first = backoff(base, max, 1);
            assert!(first >= Duration::from_millis(50) && first <= base);
            let third = backoff(base, max, 3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            assert!(backoff(base, max, 30) <= max);
        }
    }

    #[test]
    fn retryable_errors_retry_until_the_budget_then_dead_letter() {
        let err = Err(ProviderError::transport(crate::domain::ProviderKind::Fcm, "reset"));
        assert_eq!(classify(&err, 1, 3).0, DeliveryStatus::Retrying);
        assert_eq!(classify(&err, 3, 3).0, DeliveryStatus::Retrying);
        assert_eq!(classify(&err, 4, 3).0, DeliveryStatus::Dead);
        let perm =
            Err(ProviderError::new(crate::domain::ProviderKind::Fcm, ErrorClass::Permanent, "INVALID_ARGUMENT", "bad"));
        assert_eq!(classify(&perm, 1, 3).0, DeliveryStatus::Failed);
        let opted = Err(ProviderError::new(crate::domain::ProviderKind::Twilio, ErrorClass::OptedOut, "21610", "stop"));
        assert_eq!(classify(&opted, 1, 3).0, DeliveryStatus::Filtered);
    }
}
