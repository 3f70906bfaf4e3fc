//! Twilio's error codes (`{"code", "message", "status"}`) and what each means for a delivery.

use std::time::Duration;

use crate::domain::ProviderKind;
use crate::providers::{ErrorClass, ProviderError, http};

/// A failed Twilio send, by the code Twilio gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TwilioError {
    /// 21211 invalid `To`, 21614 not a mobile number.
    InvalidNumber { code: u32 },
    /// 21610: the recipient replied STOP; the delivery is filtered.
    OptedOut,
    /// 20429 or HTTP 429 (`code` is None when the answer had none).
    TooManyRequests { code: Option<u32> },
    /// 20003: our account credentials were refused.
    Authentication,
    /// A code Herald does not tell apart, classed by HTTP status.
    Other { status: u16, code: Option<u32> },
    /// No HTTP answer.
    Transport,
}

impl TwilioError {
    pub fn from_answer(status: u16, code: Option<u32>) -> TwilioError {
        match code {
            Some(code @ (21211 | 21614)) => TwilioError::InvalidNumber { code },
            Some(21610) => TwilioError::OptedOut,
            Some(20429) => TwilioError::TooManyRequests { code: Some(20429) },
            Some(20003) => TwilioError::Authentication,
            code if status == 429 => TwilioError::TooManyRequests { code },
            code => TwilioError::Other { status, code },
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            TwilioError::InvalidNumber { .. } | TwilioError::Authentication => ErrorClass::Permanent,
            TwilioError::OptedOut => ErrorClass::OptedOut,
            // Twilio limits the account as a whole: the engine pauses the provider for the Retry-After.
            TwilioError::TooManyRequests { .. } => ErrorClass::RateLimited,
            TwilioError::Transport => ErrorClass::Retryable,
            TwilioError::Other { status, .. } => http::class_of_status(*status),
        }
    }

    /// Whether an operator must act: the account SID or auth token was refused.
    pub fn needs_operator(&self) -> bool {
        matches!(self, TwilioError::Authentication | TwilioError::Other { status: 401 | 403, .. })
    }

    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            TwilioError::InvalidNumber { .. } => "invalid_number",
            TwilioError::OptedOut => "opted_out",
            TwilioError::TooManyRequests { .. } => "too_many_requests",
            TwilioError::Authentication => "authentication",
            TwilioError::Other { .. } if self.class() == ErrorClass::Retryable => "other_retryable",
            TwilioError::Other { .. } => "other_permanent",
            TwilioError::Transport => "transport",
        }
    }

    /// Twilio's code (`21211`), or `http_<status>` when the answer had none, for the delivery timeline.
    pub fn code(&self, status: u16) -> String {
        match self {
            TwilioError::InvalidNumber { code }
            | TwilioError::TooManyRequests { code: Some(code) }
            | TwilioError::Other { code: Some(code), .. } => code.to_string(),
            TwilioError::OptedOut => "21610".into(),
            TwilioError::Authentication => "20003".into(),
            TwilioError::TooManyRequests { code: None } | TwilioError::Other { code: None, .. } => {
                format!("http_{status}")
            }
            TwilioError::Transport => "transport".into(),
        }
    }

    pub fn into_provider_error(
        self,
        status: u16,
        message: impl Into<String>,
        retry_after: Option<Duration>,
    ) -> ProviderError {
        let alert = self.needs_operator();
        let error = ProviderError::new(ProviderKind::Twilio, self.class(), self.code(status), message)
            .with_retry_after(retry_after);
        if alert { error.alerting() } else { error }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_code_has_its_class() {
        let cases = [
            (400, Some(21211), ErrorClass::Permanent),
            (400, Some(21614), ErrorClass::Permanent),
            (400, Some(21610), ErrorClass::OptedOut),
            (429, Some(20429), ErrorClass::RateLimited),
            (429, None, ErrorClass::RateLimited),
            (400, Some(20429), ErrorClass::RateLimited),
            (401, Some(20003), ErrorClass::Permanent),
            (500, None, ErrorClass::Retryable),
            (503, Some(20500), ErrorClass::Retryable),
            (400, Some(21602), ErrorClass::Permanent),
        ];
        for (status, code, class) in cases {
            assert_eq!(TwilioError::from_answer(status, code).class(), class, "{status} {code:?}");
        }
        assert_eq!(TwilioError::from_answer(429, None).code(429), "http_429");
        assert_eq!(TwilioError::from_answer(429, Some(20429)).code(429), "20429");
        assert_eq!(TwilioError::from_answer(429, Some(20001)).code(429), "20001");
        assert_eq!(TwilioError::from_answer(400, Some(21211)).code(400), "21211");
    }

    #[test]
    fn only_credential_refusals_alert() {
        for (status, code) in [(401, Some(20003)), (401, None), (403, None)] {
            assert!(TwilioError::from_answer(status, code).into_provider_error(status, "x", None).alert);
        }
        for (status, code) in [(400, Some(21211)), (400, Some(21610)), (429, Some(20429)), (503, None)] {
            assert!(!TwilioError::from_answer(status, code).into_provider_error(status, "x", None).alert);
        }
    }
}
