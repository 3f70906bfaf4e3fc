//! Bizppurio's answer codes (`{"code", "description"}`) and what each means for a delivery.

use std::time::Duration;

use crate::domain::ProviderKind;
use crate::providers::{ErrorClass, ProviderError, http};

/// A failed Bizppurio send or token request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BizppurioError {
    /// The rendered content has no alimtalk template code.
    MissingTemplateCode,
    /// The phone number is not a Korean one alimtalk can reach.
    InvalidPhone,
    /// 2000: the message was refused as invalid.
    InvalidMessage,
    /// 3000–3013: authentication, IP or account refused.
    Account { code: u32 },
    /// 5001: bad request URI.
    BadUri,
    /// 5002 or HTTP 429 (`code` is None when the answer had none).
    RateLimited { code: Option<u32> },
    /// 9000: Bizppurio's own failure.
    ServerError,
    /// A code Herald does not tell apart, classed by HTTP status.
    Other { status: u16, code: Option<u32> },
    /// The token endpoint answered 2xx without a usable token.
    BadTokenAnswer,
    /// No HTTP answer.
    Transport,
}

impl BizppurioError {
    pub fn from_answer(status: u16, code: Option<u32>) -> BizppurioError {
        match code {
            Some(2000) => BizppurioError::InvalidMessage,
            Some(code @ 3000..=3013) => BizppurioError::Account { code },
            Some(5001) => BizppurioError::BadUri,
            Some(5002) => BizppurioError::RateLimited { code: Some(5002) },
            Some(9000) => BizppurioError::ServerError,
            code if status == 429 => BizppurioError::RateLimited { code },
            code => BizppurioError::Other { status, code },
        }
    }

    /// An answer that may only mean our cached token went stale: worth one retry with a new token.
    pub fn is_token_rejection(&self) -> bool {
        match self {
            BizppurioError::Account { .. } => true,
            BizppurioError::Other { status, code } => *status == 401 || code.is_some_and(|c| (3000..4000).contains(&c)),
            _ => false,
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            BizppurioError::MissingTemplateCode
            | BizppurioError::InvalidPhone
            | BizppurioError::InvalidMessage
            | BizppurioError::Account { .. }
            | BizppurioError::BadUri => ErrorClass::Permanent,
            // Bizppurio limits the account as a whole: the engine pauses the provider until the reset.
            BizppurioError::RateLimited { .. } => ErrorClass::RateLimited,
            BizppurioError::ServerError | BizppurioError::BadTokenAnswer | BizppurioError::Transport => {
                ErrorClass::Retryable
            }
            BizppurioError::Other { status, .. } => http::class_of_status(*status),
        }
    }

    /// Whether an operator must act: the account, password, IP allow-list or sender settings were refused.
    pub fn needs_operator(&self) -> bool {
        match self {
            BizppurioError::Account { .. } => true,
            BizppurioError::Other { status, .. } => matches!(status, 401 | 403),
            _ => false,
        }
    }

    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            BizppurioError::MissingTemplateCode => "missing_template_code",
            BizppurioError::InvalidPhone => "invalid_phone",
            BizppurioError::InvalidMessage => "invalid_message",
            BizppurioError::Account { .. } => "account",
            BizppurioError::BadUri => "bad_uri",
            BizppurioError::RateLimited { .. } => "rate_limited",
            BizppurioError::ServerError => "server_error",
            BizppurioError::Other { .. } if self.class() == ErrorClass::Retryable => "other_retryable",
            BizppurioError::Other { .. } => "other_permanent",
            BizppurioError::BadTokenAnswer => "bad_token_answer",
            BizppurioError::Transport => "transport",
        }
    }

    /// Bizppurio's code (`3001`), `http_<status>` when there was none, or our own name.
    pub fn code(&self, status: u16) -> String {
        match self {
            BizppurioError::InvalidMessage => "2000".into(),
            BizppurioError::Account { code }
            | BizppurioError::RateLimited { code: Some(code) }
            | BizppurioError::Other { code: Some(code), .. } => code.to_string(),
            BizppurioError::BadUri => "5001".into(),
            BizppurioError::ServerError => "9000".into(),
            BizppurioError::RateLimited { code: None } | BizppurioError::Other { code: None, .. } => {
                format!("http_{status}")
            }
            other => other.metric_label().into(),
        }
    }

    pub fn into_provider_error(
        self,
        status: u16,
        message: impl Into<String>,
        retry_after: Option<Duration>,
    ) -> ProviderError {
        let alert = self.needs_operator();
        let error = ProviderError::new(ProviderKind::Bizppurio, self.class(), self.code(status), message)
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
            (200, Some(2000), ErrorClass::Permanent, "2000"),
            (401, Some(3000), ErrorClass::Permanent, "3000"),
            (200, Some(3013), ErrorClass::Permanent, "3013"),
            (400, Some(5001), ErrorClass::Permanent, "5001"),
            (429, Some(5002), ErrorClass::RateLimited, "5002"),
            (200, Some(5002), ErrorClass::RateLimited, "5002"),
            (429, None, ErrorClass::RateLimited, "http_429"),
            (500, Some(9000), ErrorClass::Retryable, "9000"),
            (502, None, ErrorClass::Retryable, "http_502"),
            (400, Some(4321), ErrorClass::Permanent, "4321"),
        ];
        for (status, code, class, shown) in cases {
            let error = BizppurioError::from_answer(status, code);
            assert_eq!((error.class(), error.code(status).as_str()), (class, shown), "{status} {code:?}");
        }
    }

    #[test]
    fn account_refusals_alert_the_operator() {
        for (status, code) in [(401, Some(3000)), (200, Some(3013)), (401, None), (403, Some(4321))] {
            let error = BizppurioError::from_answer(status, code).into_provider_error(status, "refused", None);
            assert!(error.alert, "{status} {code:?}");
            assert_eq!(error.class, ErrorClass::Permanent);
        }
        for (status, code) in [(400, Some(2000)), (429, Some(5002)), (500, Some(9000)), (400, None)] {
            assert!(!BizppurioError::from_answer(status, code).into_provider_error(status, "x", None).alert);
        }
    }

    #[test]
    fn token_rejections_are_recognised() {
        assert!(BizppurioError::from_answer(401, Some(3004)).is_token_rejection());
        assert!(BizppurioError::from_answer(401, None).is_token_rejection());
        assert!(BizppurioError::from_answer(200, Some(3100)).is_token_rejection());
        assert!(!BizppurioError::from_answer(500, Some(9000)).is_token_rejection());
        assert!(!BizppurioError::from_answer(400, Some(2000)).is_token_rejection());
    }
}
