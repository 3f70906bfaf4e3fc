//! FCM's error codes (`error.details[].errorCode`, else `error.status`), the OAuth2 token exchange's failures, and
//! what each means for a delivery.

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
    /// The project's send quota is used up: FCM is rate limiting the whole project.
    QuotaExceeded,
    Unavailable,
    Internal,
    /// FCM refused the access token, and a freshly exchanged one too (the client retries once with a new token
    /// before giving this). Retried later, since a token can take a moment to be honoured, but alerted on: a
    /// project or account mismatch, or a clock far off, needs an operator.
    Unauthenticated,
    /// The token endpoint refused our assertion (`invalid_grant`, `invalid_client`, or another 4xx; `code` is the
    /// OAuth2 `error`, or `http_<status>`): the service account is wrong, disabled or revoked.
    TokenRejected {
        code: String,
    },
    /// The token endpoint could not be reached or failed (transport, 5xx, 429).
    TokenUnavailable,
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
            Some("UNAUTHENTICATED") => FcmError::Unauthenticated,
            Some(other) => FcmError::Other { status, code: other.to_string() },
            None => FcmError::Other { status, code: format!("http_{status}") },
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            FcmError::Unregistered => ErrorClass::Unregistered,
            FcmError::InvalidArgument
            | FcmError::SenderIdMismatch
            | FcmError::ThirdPartyAuthError
            | FcmError::TokenRejected { .. } => ErrorClass::Permanent,
            FcmError::QuotaExceeded => ErrorClass::RateLimited,
            FcmError::Unavailable
            | FcmError::Internal
            | FcmError::Unauthenticated
            | FcmError::TokenUnavailable
            | FcmError::Transport => ErrorClass::Retryable,
            FcmError::Other { status, .. } => http::class_of_status(*status),
        }
    }

    /// Whether an operator must fix credentials or configuration (counted on the alert metric).
    pub fn alerts(&self) -> bool {
        matches!(self, FcmError::ThirdPartyAuthError | FcmError::Unauthenticated | FcmError::TokenRejected { .. })
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
            FcmError::Unauthenticated => "unauthenticated",
            FcmError::TokenRejected { .. } => "token_rejected",
            FcmError::TokenUnavailable => "token_unavailable",
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
            FcmError::Unauthenticated => "UNAUTHENTICATED",
            FcmError::TokenRejected { code } => code,
            FcmError::TokenUnavailable => "token_unavailable",
            FcmError::Other { code, .. } => code,
            FcmError::Transport => "transport",
        }
    }

    /// The engine's view; `retry_after` is kept only where a retry makes sense.
    pub fn into_provider_error(self, message: impl Into<String>, retry_after: Option<Duration>) -> ProviderError {
        let error =
            ProviderError::new(ProviderKind::Fcm, self.class(), self.code(), message).with_retry_after(retry_after);
        if self.alerts() { error.alerting() } else { error }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_code_has_its_class_alert_and_label() {
        let cases = [
            ("UNREGISTERED", 404, ErrorClass::Unregistered, false, "unregistered"),
            ("INVALID_ARGUMENT", 400, ErrorClass::Permanent, false, "invalid_argument"),
            ("SENDER_ID_MISMATCH", 403, ErrorClass::Permanent, false, "sender_id_mismatch"),
            ("THIRD_PARTY_AUTH_ERROR", 401, ErrorClass::Permanent, true, "third_party_auth_error"),
            ("QUOTA_EXCEEDED", 429, ErrorClass::RateLimited, false, "quota_exceeded"),
            ("UNAVAILABLE", 503, ErrorClass::Retryable, false, "unavailable"),
            ("INTERNAL", 500, ErrorClass::Retryable, false, "internal"),
            ("UNAUTHENTICATED", 401, ErrorClass::Retryable, true, "unauthenticated"),
            ("SOMETHING_NEW", 502, ErrorClass::Retryable, false, "other_retryable"),
            ("SOMETHING_NEW", 400, ErrorClass::Permanent, false, "other_permanent"),
        ];
        for (code, status, class, alert, label) in cases {
            let error = FcmError::from_answer(status, Some(code));
            assert_eq!((error.class(), error.alerts(), error.metric_label()), (class, alert, label), "{code}");
            assert_eq!(error.code(), code);
            let engine = error.into_provider_error("m", None);
            assert_eq!((engine.class, engine.alert), (class, alert), "{code}");
        }
        assert_eq!(FcmError::from_answer(503, None).code(), "http_503");
        assert_eq!(FcmError::Transport.class(), ErrorClass::Retryable);
    }

    #[test]
    fn token_exchange_failures_have_their_class() {
        let rejected = FcmError::TokenRejected { code: "invalid_grant".into() };
        assert_eq!(
            (rejected.class(), rejected.alerts(), rejected.code()),
            (ErrorClass::Permanent, true, "invalid_grant")
        );
        assert_eq!(rejected.metric_label(), "token_rejected");
        let unavailable = FcmError::TokenUnavailable;
        assert_eq!((unavailable.class(), unavailable.alerts()), (ErrorClass::Retryable, false));
        assert_eq!(unavailable.metric_label(), "token_unavailable");
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
        assert_eq!(FcmError::Unavailable.into_provider_error("", wait).retry_after, wait);
        assert_eq!(FcmError::Internal.into_provider_error("", wait).retry_after, wait);
        assert_eq!(FcmError::InvalidArgument.into_provider_error("", wait).retry_after, None);
    }
}
