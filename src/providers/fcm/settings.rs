//! FCM endpoint and credentials: where to send, which Google service account signs the OAuth2 assertions, and
//! when to refresh the access token.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmSettings {
    pub base_url: String,
    /// The Firebase project; empty: the service account's `project_id`.
    #[serde(default)]
    pub project_id: String,
    /// Path to a Google service-account JSON key; empty: the development account the sandbox trusts
    /// (`providers::dev_credentials`), which grants nothing at Google.
    #[serde(default)]
    pub service_account_file: String,
    /// The OAuth2 token endpoint; empty: the service account's `token_uri`. Set to point at the sandbox.
    #[serde(default)]
    pub token_uri: String,
    /// Refresh the access token when fewer than this many seconds remain (at half its life if it lives shorter
    /// than twice this).
    #[serde(default = "default_token_refresh_margin_s")]
    pub token_refresh_margin_s: u64,
}

fn default_token_refresh_margin_s() -> u64 {
    300
}
