//! SMTP relay settings.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    /// Envelope and header sender.
    pub from: String,
    /// Pooled connections.
    pub pool_size: u32,
}
