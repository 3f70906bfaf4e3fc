//! SMTP relay settings: where the relay is, how the connection is encrypted, and the optional AUTH login.

use serde::{Deserialize, Serialize};

use crate::config::Secret;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    /// The relay's host name; also the name its TLS certificate must carry.
    pub host: String,
    pub port: u16,
    /// Envelope and header sender.
    pub from: String,
    /// Pooled connections.
    pub pool_size: u32,
    /// How the connection is encrypted.
    #[serde(default)]
    pub tls: SmtpTls,
    /// AUTH login; empty: no AUTH. Only sent over TLS (`tls` = `starttls` or `wrapper`).
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: Secret,
}

/// `providers.smtp.tls`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain SMTP, for a relay on the same host or a network that is trusted.
    None,
    /// STARTTLS is required (RFC 3207): a relay that does not offer it, or whose certificate is not trusted, fails
    /// the send instead of getting the message in clear text.
    #[default]
    Starttls,
    /// STARTTLS when the relay offers it, plain otherwise. An attacker on the path can strip the offer.
    Opportunistic,
    /// TLS from the first byte (implicit TLS, "SMTPS", usually port 465).
    Wrapper,
}

impl SmtpTls {
    /// Whether every byte after the greeting is certainly encrypted (so credentials may be sent).
    pub fn always_encrypted(self) -> bool {
        matches!(self, SmtpTls::Starttls | SmtpTls::Wrapper)
    }
}
