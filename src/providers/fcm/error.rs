//! FCM's error codes (`error.details[].errorCode`, else `error.status`) and what each means for a delivery.

use std::time::Duration;

use crate::domain::ProviderKind;
use crate::providers::{ErrorClass, ProviderError, http};

/// A failed FCM send, by the code FCM gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FcmError {
    /// The token is dead (app uninstalled, token rotated): drop the device.
    Unregistered,
    /// Bad token format, payload too big, bad TTL…
    InvalidArgument,
    /// The token belongs to another sender.
    SenderIdMismatch,
    /// FCM could not use our APNs or web push credentials: a configuration problem.
    ThirdPartyAuthError,
    QuotaExceeded,
    Unavailable,
    Internal,
    /// A code Herald does not tell apart, classed by HTTP status. `code` is FCM's, or `http_<status>`.
    Other {
        status: u16,
        code: String,
    },
    /// No HTTP answer (refused, reset, timed out).
    Transport,
}

impl FcmError {
    /// Reads FCM's code; `code` is `errorCode` when given, else the top-level `status`.
    pub fn from_answer(status: u16, code: Option<&str>) -> FcmError {
        match code {
            Some("UNREGISTERED") => FcmError::Unregistered,
            Some("INVALID_ARGUMENT") => FcmError::InvalidArgument,
            Some("SENDER_ID_MISMATCH") => FcmError::SenderIdMismatch,
            Some("THIRD_PARTY_AUTH_ERROR") => FcmError::ThirdPartyAuthError,
            Some("QUOTA_EXCEEDED") => FcmError::QuotaExceeded,
            Some("UNAVAILABLE") => FcmError::Unavailable,
            Some("INTERNAL") => FcmError::Internal,
            Some(other) => FcmError::Other { status, code: other.to_string() },
            None => FcmError::Other { status, code: format!("http_{status}") },
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            FcmError::Unregistered => ErrorClass::Unregistered,
            FcmError::InvalidArgument | FcmError::SenderIdMismatch | FcmError::ThirdPartyAuthError => {
                ErrorClass::Permanent
            }
            FcmError::QuotaExceeded | FcmError::Unavailable | FcmError::Internal | FcmError::Transport => {
                ErrorClass::Retryable
            }
            FcmError::Other { status, .. } => http::class_of_status(*status),
        }
    }

    /// A bounded label for metrics (unknown codes share one per class).
    pub fn metric_label(&self) -> &'static str {
        match self {
            FcmError::Unregistered => "unregistered",
            FcmError::InvalidArgument => "invalid_argument",
            FcmError::SenderIdMismatch => "sender_id_mismatch",
            FcmError::ThirdPartyAuthError => "third_party_auth_error",
            FcmError::QuotaExceeded => "quota_exceeded",
            FcmError::Unavailable => "unavailable",
            FcmError::Internal => "internal",
            FcmError::Other { .. } if self.class() == ErrorClass::Retryable => "other_retryable",
            FcmError::Other { .. } => "other_permanent",
            FcmError::Transport => "transport",
        }
    }

    /// FCM's own code, for the delivery timeline.
    pub fn code(&self) -> &str {
        match self {
            FcmError::Unregistered => "UNREGISTERED",
            FcmError::InvalidArgument => "INVALID_ARGUMENT",
            FcmError::SenderIdMismatch => "SENDER_ID_MISMATCH",
            FcmError::ThirdPartyAuthError => "THIRD_PARTY_AUTH_ERROR",
            FcmError::QuotaExceeded => "QUOTA_EXCEEDED",
            FcmError::Unavailable => "UNAVAILABLE",
            FcmError::Internal => "INTERNAL",
            FcmError::Other { code, .. } => code,
            FcmError::Transport => "transport",
        }
    }

    /// The engine's view; `retry_after` is kept only where a retry makes sense.
    pub fn into_provider_error(self, message: impl Into<String>, retry_after: Option<Duration>) -> ProviderError {
        ProviderError::new(ProviderKind::Fcm, self.class(), self.code(), message).with_retry_after(retry_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_code_has_its_class() {
        let cases = [
            ("UNREGISTERED", 404, ErrorClass::Unregistered),
            ("INVALID_ARGUMENT", 400, ErrorClass::Permanent),
            ("SENDER_ID_MISMATCH", 403, ErrorClass::Permanent),
            ("THIRD_PARTY_AUTH_ERROR", 401, ErrorClass::Permanent),
            ("QUOTA_EXCEEDED", 429, ErrorClass::Retryable),
            ("UNAVAILABLE", 503, ErrorClass::Retryable),
            ("INTERNAL", 500, ErrorClass::Retryable),
            ("SOMETHING_NEW", 502, ErrorClass::Retryable),
            ("SOMETHING_NEW", 400, ErrorClass::Permanent),
        ];
        for (code, status, class) in cases {
            let error = FcmError::from_answer(status, Some(code));
            assert_eq!(error.class(), class, "{code}");
            assert_eq!(error.code(), code);
        }
        assert_eq!(FcmError::from_answer(503, None).code(), "http_503");
        assert_eq!(FcmError::Transport.class(), ErrorClass::Retryable);
    }

    #[test]
    fn transport_matches_the_contract_helper() {
        let ours = FcmError::Transport.into_provider_error("refused", None);
        let contract = ProviderError::transport(ProviderKind::Fcm, "refused");
        assert_eq!((ours.class, ours.code), (contract.class, contract.code));
    }

    #[test]
    fn retry_after_is_dropped_on_permanent_errors() {
        let wait = Some(Duration::from_secs(3));
        assert_eq!(FcmError::QuotaExceeded.into_provider_error("", wait).retry_after, wait);
        assert_eq!(FcmError::InvalidArgument.into_provider_error("", wait).retry_after, None);
    }
}
