//! FCM endpoint and credentials.

use serde::{Deserialize, Serialize};

use crate::config::Secret;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmSettings {
    pub base_url: String,
    pub project_id: String,
    /// Static bearer token (until service-account OAuth lands).
    pub access_token: Secret,
}
