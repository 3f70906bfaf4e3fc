//! APNs endpoint, identity and signing key.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsSettings {
    pub base_url: String,
    /// Bundle id, sent as `apns-topic`.
    pub topic: String,
    /// Developer team id: the provider token's `iss`.
    pub team_id: String,
    /// Id of the signing key: the provider token's `kid`.
    pub key_id: String,
    /// Path to the team's `.p8` signing key (PKCS#8 P-256). Empty: the development key, which only the sandbox
    /// trusts (see `providers::dev_credentials`).
    #[serde(default)]
    pub key_file: String,
    /// How long one provider token is used before a new one is signed; 1200..=3600 (APNs refuses refreshes
    /// within 20 minutes and tokens older than 60).
    #[serde(default = "default_token_ttl_s")]
    pub token_ttl_s: u64,
}

fn default_token_ttl_s() -> u64 {
    2400
}
