//! APNs's error reasons (`{"reason": ...}`) and what each means for a delivery.

use std::time::Duration;

use crate::domain::ProviderKind;
use crate::providers::{ErrorClass, ProviderError, http};

/// A failed APNs send, by the reason APNs gave (the table in PROVIDERS.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApnsError {
    /// 410 `Unregistered` / `ExpiredToken`: the device token is dead.
    Unregistered { reason: String },
    /// The request can never succeed as is (bad device token, topic, headers or payload).
    Rejected { status: u16, reason: String },
    /// 403 `Forbidden`, `InvalidProviderToken`, `MissingProviderToken`: our key, key id or team id is wrong.
    /// Nothing will pass until an operator fixes `providers.apns`.
    CredentialsRefused { reason: String },
    /// 403 `ExpiredProviderToken`: sign a new provider token, then retry.
    ExpiredProviderToken,
    /// 429 `TooManyProviderTokenUpdates`: we re-signed too often; the current token stays usable.
    TooManyProviderTokenUpdates,
    /// 429 `TooManyRequests` (or a 429 without a known reason): APNs is throttling us as a whole.
    RateLimited { reason: String },
    /// 500 `InternalServerError`, 503 `ServiceUnavailable` / `Shutdown`: come back later.
    Unavailable { status: u16, reason: String },
    /// A reason Herald does not know, classed by HTTP status (`http_<status>` when there was none).
    Other { status: u16, reason: String },
    /// No HTTP answer.
    Transport,
}

/// Reasons after which the request must not be repeated as is.
const PERMANENT_REASONS: [&str; 9] = [
    "BadDeviceToken",
    "BadTopic",
    "DeviceTokenNotForTopic",
    "BadCollapseId",
    "BadExpirationDate",
    "PayloadEmpty",
    "MissingTopic",
    "InvalidPushType",
    "PayloadTooLarge",
];

const CREDENTIAL_REASONS: [&str; 3] = ["Forbidden", "InvalidProviderToken", "MissingProviderToken"];

const UNAVAILABLE_REASONS: [&str; 3] = ["InternalServerError", "ServiceUnavailable", "Shutdown"];

impl ApnsError {
    pub fn from_answer(status: u16, reason: Option<&str>) -> ApnsError {
        let Some(reason) = reason else {
            let reason = format!("http_{status}");
            return match status {
                410 => ApnsError::Unregistered { reason },
                429 => ApnsError::RateLimited { reason },
                500 | 503 => ApnsError::Unavailable { status, reason },
                _ => ApnsError::Other { status, reason },
            };
        };
        let owned = || reason.to_string();
        match reason {
            "Unregistered" | "ExpiredToken" => ApnsError::Unregistered { reason: owned() },
            "ExpiredProviderToken" => ApnsError::ExpiredProviderToken,
            "TooManyProviderTokenUpdates" => ApnsError::TooManyProviderTokenUpdates,
            "TooManyRequests" => ApnsError::RateLimited { reason: owned() },
            r if PERMANENT_REASONS.contains(&r) => ApnsError::Rejected { status, reason: owned() },
            r if CREDENTIAL_REASONS.contains(&r) => ApnsError::CredentialsRefused { reason: owned() },
            r if UNAVAILABLE_REASONS.contains(&r) => ApnsError::Unavailable { status, reason: owned() },
            // APNs answers 410 only for dead tokens and 429 only for throttling, whatever the reason says.
            _ if status == 410 => ApnsError::Unregistered { reason: owned() },
            _ if status == 429 => ApnsError::RateLimited { reason: owned() },
            _ => ApnsError::Other { status, reason: owned() },
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            ApnsError::Unregistered { .. } => ErrorClass::Unregistered,
            ApnsError::Rejected { .. } | ApnsError::CredentialsRefused { .. } => ErrorClass::Permanent,
            ApnsError::RateLimited { .. } => ErrorClass::RateLimited,
            ApnsError::ExpiredProviderToken
            | ApnsError::TooManyProviderTokenUpdates
            | ApnsError::Unavailable { .. }
            | ApnsError::Transport => ErrorClass::Retryable,
            ApnsError::Other { status, .. } => http::class_of_status(*status),
        }
    }

    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ApnsError::Unregistered { .. } => "unregistered",
            ApnsError::Rejected { status: 413, .. } => "payload_too_large",
            ApnsError::Rejected { .. } => "bad_request",
            ApnsError::CredentialsRefused { .. } => "auth_rejected",
            ApnsError::ExpiredProviderToken => "expired_provider_token",
            ApnsError::TooManyProviderTokenUpdates => "too_many_token_updates",
            ApnsError::RateLimited { .. } => "too_many_requests",
            ApnsError::Unavailable { .. } => "unavailable",
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
            | ApnsError::CredentialsRefused { reason }
            | ApnsError::RateLimited { reason }
            | ApnsError::Unavailable { reason, .. }
            | ApnsError::Other { reason, .. } => reason,
            ApnsError::ExpiredProviderToken => "ExpiredProviderToken",
            ApnsError::TooManyProviderTokenUpdates => "TooManyProviderTokenUpdates",
            ApnsError::Transport => "transport",
        }
    }

    pub fn into_provider_error(self, message: impl Into<String>, retry_after: Option<Duration>) -> ProviderError {
        let alert = matches!(self, ApnsError::CredentialsRefused { .. });
        let error =
            ProviderError::new(ProviderKind::Apns, self.class(), self.code(), message).with_retry_after(retry_after);
        if alert { error.alerting() } else { error }
    }
}

/// Every reason APNs documents, with its status and class; the classification and wire tests share it.
#[cfg(test)]
pub(crate) const DOCUMENTED_REASONS: [(u16, &str, ErrorClass); 20] = [
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
    (429, "TooManyRequests", ErrorClass::RateLimited),
    (429, "TooManyProviderTokenUpdates", ErrorClass::Retryable),
    (500, "InternalServerError", ErrorClass::Retryable),
    (503, "ServiceUnavailable", ErrorClass::Retryable),
    (503, "Shutdown", ErrorClass::Retryable),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_reason_has_its_class() {
        let undocumented = [
            (400, "SomethingNew", ErrorClass::Permanent),
            (403, "SomethingNew", ErrorClass::Permanent),
            (429, "SomethingNew", ErrorClass::RateLimited),
            (502, "SomethingNew", ErrorClass::Retryable),
        ];
        for (status, reason, class) in DOCUMENTED_REASONS.into_iter().chain(undocumented) {
            let error = ApnsError::from_answer(status, Some(reason));
            assert_eq!(error.class(), class, "{status} {reason}");
            assert_eq!(error.code(), reason);
        }
    }

    #[test]
    fn only_refused_credentials_alert_the_operator() {
        for reason in ["Forbidden", "InvalidProviderToken", "MissingProviderToken"] {
            let error = ApnsError::from_answer(403, Some(reason));
            assert_eq!(error.metric_label(), "auth_rejected");
            assert!(error.into_provider_error("refused", None).alert, "{reason}");
        }
        for (status, reason) in [(403, "ExpiredProviderToken"), (400, "BadDeviceToken"), (503, "Shutdown")] {
            assert!(!ApnsError::from_answer(status, Some(reason)).into_provider_error("x", None).alert, "{reason}");
        }
    }

    #[test]
    fn retry_after_is_kept_for_throttling_and_outages_only() {
        let wait = Some(Duration::from_secs(30));
        let kept = |status, reason| ApnsError::from_answer(status, Some(reason)).into_provider_error("x", wait);
        let too_many = kept(429, "TooManyRequests");
        assert_eq!((too_many.class, too_many.retry_after), (ErrorClass::RateLimited, wait));
        assert_eq!(ApnsError::from_answer(429, Some("TooManyRequests")).metric_label(), "too_many_requests");
        let updates = kept(429, "TooManyProviderTokenUpdates");
        assert_eq!((updates.class, updates.code.as_str()), (ErrorClass::Retryable, "TooManyProviderTokenUpdates"));
        for reason in ["InternalServerError", "ServiceUnavailable", "Shutdown"] {
            let error = kept(503, reason);
            assert_eq!((error.class, error.retry_after), (ErrorClass::Retryable, wait), "{reason}");
        }
        assert_eq!(kept(400, "BadTopic").retry_after, None);
    }

    #[test]
    fn metric_labels_are_bounded() {
        let label = |status, reason| ApnsError::from_answer(status, reason).metric_label();
        assert_eq!(label(410, Some("ExpiredToken")), "unregistered");
        assert_eq!(label(400, Some("BadTopic")), "bad_request");
        assert_eq!(label(413, Some("PayloadTooLarge")), "payload_too_large");
        assert_eq!(label(403, Some("ExpiredProviderToken")), "expired_provider_token");
        assert_eq!(label(429, Some("TooManyProviderTokenUpdates")), "too_many_token_updates");
        assert_eq!(label(503, None), "unavailable");
        assert_eq!(label(502, Some("Whatever")), "other_retryable");
        assert_eq!(label(404, Some("Whatever")), "other_permanent");
    }

    #[test]
    fn answers_without_a_reason_go_by_status() {
        assert_eq!(ApnsError::from_answer(410, None).class(), ErrorClass::Unregistered);
        assert_eq!(ApnsError::from_answer(503, None).class(), ErrorClass::Retryable);
        assert_eq!(ApnsError::from_answer(429, None).class(), ErrorClass::RateLimited);
        assert_eq!(ApnsError::from_answer(400, None).class(), ErrorClass::Permanent);
        assert_eq!(ApnsError::from_answer(400, None).code(), "http_400");
    }
}
