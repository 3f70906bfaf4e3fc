//! Bizppurio account settings.

use serde::{Deserialize, Serialize};

use crate::config::Secret;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BizppurioSettings {
    pub base_url: String,
    pub account: String,
    pub password: Secret,
    /// Kakao channel sender key.
    pub sender_key: String,
    /// Callback number shown for SMS fallback.
    pub from: String,
    /// Ask Bizppurio to resend the body as SMS when the alimtalk cannot be delivered (`resend.first = "sms"`).
    #[serde(default = "enabled")]
    pub sms_fallback: bool,
}

fn enabled() -> bool {
    true
}
