//! APNs endpoint and identity.

use serde::{Deserialize, Serialize};

use crate::config::Secret;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsSettings {
    pub base_url: String,
    /// Bundle id, sent as `apns-topic`.
    pub topic: String,
    pub team_id: String,
    pub key_id: String,
    /// Static provider token (until ES256 JWT signing lands).
    pub provider_token: Secret,
}
