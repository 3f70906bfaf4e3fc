//! Twilio account settings.

use serde::{Deserialize, Serialize};

use crate::config::Secret;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioSettings {
    pub base_url: String,
    pub account_sid: String,
    pub auth_token: Secret,
    /// Sender number (E.164).
    pub from: String,
}
