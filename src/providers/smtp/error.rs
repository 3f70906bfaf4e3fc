//! SMTP failures and what each means for a delivery: the reply code's first digit decides.

use crate::domain::ProviderKind;
use crate::providers::{ErrorClass, ProviderError};

/// A failed SMTP send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SmtpError {
    /// A 4xx reply: the server may take it later (greylisting, mailbox busy, too many connections).
    Transient { code: u16 },
    /// A 5xx reply: the server will never take it (unknown user, policy rejection).
    Rejected { code: u16 },
    /// The recipient address cannot be written into a message.
    InvalidAddress,
    /// The message could not be built (bad header content).
    InvalidMessage,
    /// No usable SMTP conversation: connection refused or dropped, timeout, unparseable reply.
    Transport,
}

impl SmtpError {
    /// Reads a lettre error: reply codes by severity, everything else is the connection's fault.
    pub fn from_lettre(error: &lettre::transport::smtp::Error) -> SmtpError {
        let code = error.status().and_then(|c| c.to_string().parse::<u16>().ok());
        match code {
            Some(code @ 400..=499) => SmtpError::Transient { code },
            Some(code @ 500..=599) => SmtpError::Rejected { code },
            _ if error.is_client() => SmtpError::InvalidMessage,
            _ => SmtpError::Transport,
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            SmtpError::Transient { .. } | SmtpError::Transport => ErrorClass::Retryable,
            SmtpError::Rejected { .. } | SmtpError::InvalidAddress | SmtpError::InvalidMessage => ErrorClass::Permanent,
        }
    }

    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            SmtpError::Transient { .. } => "transient",
            SmtpError::Rejected { .. } => "rejected",
            SmtpError::InvalidAddress => "invalid_address",
            SmtpError::InvalidMessage => "invalid_message",
            SmtpError::Transport => "transport",
        }
    }

    /// The SMTP reply code (`451`, `550`) or our own name, for the delivery timeline.
    pub fn code(&self) -> String {
        match self {
            SmtpError::Transient { code } | SmtpError::Rejected { code } => code.to_string(),
            other => other.metric_label().to_string(),
        }
    }

    pub fn into_provider_error(self, message: impl Into<String>) -> ProviderError {
        ProviderError::new(ProviderKind::Smtp, self.class(), self.code(), message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_the_reply_family() {
        assert_eq!(SmtpError::Transient { code: 451 }.class(), ErrorClass::Retryable);
        assert_eq!(SmtpError::Rejected { code: 550 }.class(), ErrorClass::Permanent);
        assert_eq!(SmtpError::InvalidAddress.class(), ErrorClass::Permanent);
        assert_eq!(SmtpError::Transport.class(), ErrorClass::Retryable);
        assert_eq!(SmtpError::Rejected { code: 550 }.code(), "550");
        assert_eq!(SmtpError::Transport.code(), "transport");
    }
}
