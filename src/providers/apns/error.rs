//! APNs's error reasons (`{"reason": ...}`) and what each means for a delivery.

use std::time::Duration;

use crate::domain::ProviderKind;
use crate::providers::{ErrorClass, ProviderError, http};

/// A failed APNs send, by the reason APNs gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApnsError {
    /// 410 `Unregistered` / `ExpiredToken`: the device token is dead.
    Unregistered { reason: String },
    /// The request can never succeed (bad token, topic, payload, or our credentials were refused).
    Rejected { status: u16, reason: String },
    /// 403 `ExpiredProviderToken`: make a new provider token, then retry.
    ExpiredProviderToken,
    /// 429 or 5xx: APNs asks us to come back later.
    Throttled { status: u16, reason: String },
    /// A reason Herald does not know, classed by HTTP status (`http_<status>` when there was none).
    Other { status: u16, reason: String },
    /// No HTTP answer.
    Transport,
}

/// Reasons after which the request must not be repeated as is.
const PERMANENT_REASONS: [&str; 12] = [
    "BadDeviceToken",
    "BadTopic",
    "DeviceTokenNotForTopic",
    "BadCollapseId",
    "BadExpirationDate",
    "PayloadEmpty",
    "MissingTopic",
    "InvalidPushType",
    "PayloadTooLarge",
    "Forbidden",
    "InvalidProviderToken",
    "MissingProviderToken",
];

const RETRY_REASONS: [&str; 5] =
    ["TooManyRequests", "TooManyProviderTokenUpdates", "InternalServerError", "ServiceUnavailable", "Shutdown"];

impl ApnsError {
    pub fn from_answer(status: u16, reason: Option<&str>) -> ApnsError {
        let Some(reason) = reason else {
            let reason = format!("http_{status}");
            return match status {
                410 => ApnsError::Unregistered { reason },
                429 | 500 | 503 => ApnsError::Throttled { status, reason },
                _ => ApnsError::Other { status, reason },
            };
        };
        match reason {
            "Unregistered" | "ExpiredToken" => ApnsError::Unregistered { reason: reason.to_string() },
            "ExpiredProviderToken" => ApnsError::ExpiredProviderToken,
            r if PERMANENT_REASONS.contains(&r) => ApnsError::Rejected { status, reason: r.to_string() },
            r if RETRY_REASONS.contains(&r) => ApnsError::Throttled { status, reason: r.to_string() },
            // APNs answers 410 only for dead tokens, whatever the reason says.
            r if status == 410 => ApnsError::Unregistered { reason: r.to_string() },
            r => ApnsError::Other { status, reason: r.to_string() },
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            ApnsError::Unregistered { .. } => ErrorClass::Unregistered,
            ApnsError::Rejected { .. } => ErrorClass::Permanent,
            ApnsError::ExpiredProviderToken | ApnsError::Throttled { .. } | ApnsError::Transport => {
                ErrorClass::Retryable
            }
            ApnsError::Other { status, .. } => http::class_of_status(*status),
        }
    }

    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ApnsError::Unregistered { .. } => "unregistered",
            ApnsError::Rejected { status: 403, .. } => "auth_rejected",
            ApnsError::Rejected { status: 413, .. } => "payload_too_large",
            ApnsError::Rejected { .. } => "bad_request",
            ApnsError::ExpiredProviderToken => "expired_provider_token",
            ApnsError::Throttled { status: 429, .. } => "too_many_requests",
            ApnsError::Throttled { .. } => "unavailable",
            ApnsError::Other { .. } if self.class() == ErrorClass::Retryable => "other_retryable",
            ApnsError::Other { .. } => "other_permanent",
            ApnsError::Transport => "transport",
        }
    }

    /// APNs's reason, for the delivery timeline.
    pub fn code(&self) -> &str {
        match self {
            ApnsError::Unregistered { reason }
            | ApnsError::Rejected { reason, .. }
            | ApnsError::Throttled { reason, .. }
            | ApnsError::Other { reason, .. } => reason,
            ApnsError::ExpiredProviderToken => "ExpiredProviderToken",
            ApnsError::Transport => "transport",
        }
    }

    pub fn into_provider_error(self, message: impl Into<String>, retry_after: Option<Duration>) -> ProviderError {
        ProviderError::new(ProviderKind::Apns, self.class(), self.code(), message).with_retry_after(retry_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_reason_has_its_class() {
        let cases = [
            (410, "Unregistered", ErrorClass::Unregistered),
            (410, "ExpiredToken", ErrorClass::Unregistered),
            (400, "BadDeviceToken", ErrorClass::Permanent),
            (400, "BadTopic", ErrorClass::Permanent),
            (400, "DeviceTokenNotForTopic", ErrorClass::Permanent),
            (400, "BadCollapseId", ErrorClass::Permanent),
            (400, "BadExpirationDate", ErrorClass::Permanent),
            (400, "PayloadEmpty", ErrorClass::Permanent),
            (400, "MissingTopic", ErrorClass::Permanent),
            (400, "InvalidPushType", ErrorClass::Permanent),
            (413, "PayloadTooLarge", ErrorClass::Permanent),
            (403, "Forbidden", ErrorClass::Permanent),
            (403, "InvalidProviderToken", ErrorClass::Permanent),
            (403, "MissingProviderToken", ErrorClass::Permanent),
            (403, "ExpiredProviderToken", ErrorClass::Retryable),
            (429, "TooManyRequests", ErrorClass::Retryable),
            (429, "TooManyProviderTokenUpdates", ErrorClass::Retryable),
            (500, "InternalServerError", ErrorClass::Retryable),
            (503, "ServiceUnavailable", ErrorClass::Retryable),
            (503, "Shutdown", ErrorClass::Retryable),
            (400, "SomethingNew", ErrorClass::Permanent),
            (502, "SomethingNew", ErrorClass::Retryable),
        ];
        for (status, reason, class) in cases {
            let error = ApnsError::from_answer(status, Some(reason));
            assert_eq!(error.class(), class, "{status} {reason}");
            assert_eq!(error.code(), reason);
        }
    }

    #[test]
    fn answers_without_a_reason_go_by_status() {
        assert_eq!(ApnsError::from_answer(410, None).class(), ErrorClass::Unregistered);
        assert_eq!(ApnsError::from_answer(503, None).class(), ErrorClass::Retryable);
        assert_eq!(ApnsError::from_answer(429, None).class(), ErrorClass::Retryable);
        assert_eq!(ApnsError::from_answer(400, None).class(), ErrorClass::Permanent);
        assert_eq!(ApnsError::from_answer(400, None).code(), "http_400");
    }
}
