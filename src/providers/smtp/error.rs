//! SMTP failures and what each means for a delivery. The reply code's first digit decides retryable (4xx) or
//! permanent (5xx); on top of that:
//!
//! - **Throttling → `RateLimited`** (the engine pauses all e-mail, since Herald talks to one relay): a 4xx reply
//!   whose enhanced status code (RFC 3463) is `4.7.x` (policy: Gmail `4.7.28`, Microsoft `4.7.500`–`699`,
//!   Postfix's `450 4.7.1 too much mail`, SES `454 4.7.0 throttling`); any `452` (the relay is out of resources
//!   or its recipient quota); and `421`/`450`/`451`/`454` whose text speaks of rates (`rate limit`, `sending
//!   rate`, `throttl…`, `too many`, `too much mail`, `slow down`). Never a `4.2.x` reply: that is about one
//!   recipient's mailbox (full, receiving too fast), not about us.
//! - **Authentication → permanent and alerting**: `530` (authentication or TLS required), `534`, `535` (bad
//!   credentials), `538`, or no AUTH mechanism in common.
//! - **TLS → permanent and alerting**: the handshake failed, the certificate is not trusted or not for the host,
//!   or the relay does not offer STARTTLS when it is required. An operator must fix the configuration; retrying
//!   would only fail the same way.
//! - Connection refused, reset, timed out → retryable.

use std::error::Error as StdError;

use crate::domain::ProviderKind;
use crate::providers::{ErrorClass, ProviderError};

/// A failed SMTP send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SmtpError {
    /// A 4xx reply: the server may take it later (greylisting, mailbox busy, a local problem).
    Transient { code: u16 },
    /// A 4xx reply saying the relay is throttling us (see the module header).
    Throttled { code: u16 },
    /// A 5xx reply: the server will never take it (unknown user, policy rejection).
    Rejected { code: u16 },
    /// The relay refused our credentials or wants some we cannot give (`code` is `None` when no AUTH mechanism
    /// is shared).
    Unauthorized { code: Option<u16> },
    /// No TLS: handshake failure, untrusted certificate, or STARTTLS required but not offered.
    Tls,
    /// The recipient address cannot be written into a message.
    InvalidAddress,
    /// The message could not be built (bad header content), or the relay lacks an extension it needs.
    InvalidMessage,
    /// No usable SMTP conversation: connection refused or dropped, timeout, unparseable reply.
    Transport,
}

/// Words with which relays say they are rate limiting (matched lowercase).
const THROTTLING_WORDS: [&str; 9] = [
    "rate limit",
    "rate-limit",
    "ratelimit",
    "rate exceeded",
    "sending rate",
    "throttl",
    "too many",
    "too much mail",
    "slow down",
];

impl SmtpError {
    /// Reads a lettre error: reply codes by severity and meaning, TLS failures found in the error's sources,
    /// everything else is the connection's fault.
    pub fn from_lettre(error: &lettre::transport::smtp::Error) -> SmtpError {
        let code = error.status().and_then(|c| c.to_string().parse::<u16>().ok());
        // For a negative reply, lettre's source is the reply text (without the code).
        let text = error.source().map(|s| s.to_string()).unwrap_or_default();
        match code {
            Some(code) => SmtpError::from_reply(code, &text),
            None if error.is_tls() || caused_by_tls(error) => SmtpError::Tls,
            // lettre's own refusals come as "client" errors; these two are about the relay's configuration.
            None if error.is_client() && text.contains("STARTTLS") => SmtpError::Tls,
            None if error.is_client() && text.contains("authentication mechanism") => {
                SmtpError::Unauthorized { code: None }
            }
            None if error.is_client() => SmtpError::InvalidMessage,
            None => SmtpError::Transport,
        }
    }

    /// Classifies a negative reply: `code` and the text after it (which starts with the enhanced status code when
    /// the relay sends one).
    pub fn from_reply(code: u16, text: &str) -> SmtpError {
        match code {
            530 | 534 | 535 | 538 => SmtpError::Unauthorized { code: Some(code) },
            500..=599 => SmtpError::Rejected { code },
            400..=499 if is_throttling(code, text) => SmtpError::Throttled { code },
            _ => SmtpError::Transient { code },
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            SmtpError::Transient { .. } | SmtpError::Transport => ErrorClass::Retryable,
            SmtpError::Throttled { .. } => ErrorClass::RateLimited,
            SmtpError::Rejected { .. }
            | SmtpError::Unauthorized { .. }
            | SmtpError::Tls
            | SmtpError::InvalidAddress
            | SmtpError::InvalidMessage => ErrorClass::Permanent,
        }
    }

    /// Whether an operator must fix the configuration (credentials, TLS trust, the relay's address).
    pub fn alerts(&self) -> bool {
        matches!(self, SmtpError::Unauthorized { .. } | SmtpError::Tls)
    }

    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            SmtpError::Transient { .. } => "transient",
            SmtpError::Throttled { .. } => "throttled",
            SmtpError::Rejected { .. } => "rejected",
            SmtpError::Unauthorized { .. } => "unauthorized",
            SmtpError::Tls => "tls",
            SmtpError::InvalidAddress => "invalid_address",
            SmtpError::InvalidMessage => "invalid_message",
            SmtpError::Transport => "transport",
        }
    }

    /// The SMTP reply code (`451`, `550`) or our own name, for the delivery timeline.
    pub fn code(&self) -> String {
        match self {
            SmtpError::Transient { code }
            | SmtpError::Throttled { code }
            | SmtpError::Rejected { code }
            | SmtpError::Unauthorized { code: Some(code) } => code.to_string(),
            other => other.metric_label().to_string(),
        }
    }

    pub fn into_provider_error(self, message: impl Into<String>) -> ProviderError {
        let alerts = self.alerts();
        let error = ProviderError::new(ProviderKind::Smtp, self.class(), self.code(), message);
        if alerts { error.alerting() } else { error }
    }
}

/// The throttling rules of the module header, for a 4xx reply.
fn is_throttling(code: u16, text: &str) -> bool {
    let subject = enhanced_subject(text);
    if subject == Some(2) {
        return false;
    }
    if subject == Some(7) || code == 452 {
        return true;
    }
    let text = text.to_ascii_lowercase();
    matches!(code, 421 | 450 | 451 | 454) && THROTTLING_WORDS.iter().any(|word| text.contains(word))
}

/// The subject of an RFC 3463 enhanced status code at the start of `text` (`7` in `4.7.28 ...`).
fn enhanced_subject(text: &str) -> Option<u16> {
    let first = text.split_ascii_whitespace().next()?;
    let mut parts = first.split('.');
    let (class, subject, detail) = (parts.next()?, parts.next()?, parts.next()?);
    let numeric = |s: &str| !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit());
    if parts.next().is_some() || !matches!(class, "2" | "4" | "5") || !numeric(subject) || !numeric(detail) {
        return None;
    }
    subject.parse().ok()
}

/// Whether rustls refused the connection somewhere down the error chain. tokio-rustls wraps rustls errors in an
/// `io::Error`, whose `source()` skips the wrapped error, so each `io::Error` is looked into as well.
fn caused_by_tls(error: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && io.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        next = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_the_reply_family() {
        assert_eq!(SmtpError::from_reply(451, "4.3.0 try again later").class(), ErrorClass::Retryable);
        assert_eq!(SmtpError::from_reply(550, "5.1.1 user unknown").class(), ErrorClass::Permanent);
        assert_eq!(SmtpError::InvalidAddress.class(), ErrorClass::Permanent);
        assert_eq!(SmtpError::Transport.class(), ErrorClass::Retryable);
        assert_eq!(SmtpError::Rejected { code: 550 }.code(), "550");
        assert_eq!(SmtpError::Transport.code(), "transport");
        assert!(!SmtpError::from_reply(550, "5.1.1 user unknown").alerts());
    }

    #[test]
    fn throttling_replies_are_rate_limited() {
        for (code, text) in [
            (421, "4.7.28 Our system has detected an unusual rate of unsolicited mail"),
            (451, "4.7.500 Server busy. Please try again later"),
            (450, "4.7.1 Error: too much mail from 192.0.2.1"),
            (454, "Throttling failure: Maximum sending rate exceeded."),
            (452, "4.3.1 Insufficient system resources"),
            (452, "Too many recipients received this hour"),
            (421, "4.3.2 Too many connections, try again later"),
            (451, "Rate limit exceeded, slow down"),
        ] {
            let error = SmtpError::from_reply(code, text);
            assert_eq!(error, SmtpError::Throttled { code }, "{code} {text}");
            assert_eq!((error.class(), error.alerts()), (ErrorClass::RateLimited, false));
        }
    }

    #[test]
    fn other_transient_replies_are_plain_retries() {
        for (code, text) in [
            (451, "4.3.0 Error: temporary failure, try again later"),
            (421, "4.4.2 Error: timeout exceeded"),
            (450, "4.2.1 The user you are trying to contact is receiving mail at a rate that prevents delivery"),
            (452, "4.2.2 The email account that you tried to reach is over quota"),
            (450, "Requested mail action not taken: mailbox unavailable"),
            // Words that contain "rate" are not rate limiting.
            (451, "Could not generate a separate queue file"),
        ] {
            assert_eq!(SmtpError::from_reply(code, text), SmtpError::Transient { code }, "{code} {text}");
        }
    }

    #[test]
    fn authentication_failures_are_permanent_and_alert() {
        for code in [530, 534, 535, 538] {
            let error = SmtpError::from_reply(code, "5.7.8 Authentication credentials invalid");
            assert_eq!((error.class(), error.alerts(), error.code()), (ErrorClass::Permanent, true, code.to_string()));
            assert!(error.into_provider_error("x").alert);
        }
        let no_mechanism = SmtpError::Unauthorized { code: None };
        assert_eq!((no_mechanism.class(), no_mechanism.code().as_str()), (ErrorClass::Permanent, "unauthorized"));
    }

    #[test]
    fn tls_failures_are_found_behind_io_errors() {
        let rustls_error = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls_error);
        assert!(caused_by_tls(&io));
        assert!(!caused_by_tls(&std::io::Error::from(std::io::ErrorKind::ConnectionRefused)));
        let tls = SmtpError::Tls;
        assert_eq!((tls.class(), tls.alerts(), tls.code().as_str()), (ErrorClass::Permanent, true, "tls"));
        assert!(tls.into_provider_error("x").alert);
    }

    #[test]
    fn enhanced_codes_are_read_only_at_the_start() {
        assert_eq!(enhanced_subject("4.7.28 rate"), Some(7));
        assert_eq!(enhanced_subject("5.1.1"), Some(1));
        assert_eq!(enhanced_subject("version 4.7.1 of"), None);
        assert_eq!(enhanced_subject("4.7 short"), None);
        assert_eq!(enhanced_subject("3.7.1 wrong class"), None);
        assert_eq!(enhanced_subject(""), None);
    }
}
