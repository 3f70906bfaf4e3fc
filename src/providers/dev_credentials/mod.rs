//! Development credentials: the FCM service account and APNs signing key a fresh install uses when none are
//! configured, and that the sandbox trusts by default. They sign requests to the sandbox only: the real FCM and
//! APNs know nothing of them, so they grant nothing anywhere. Never use them against a real provider.

/// A Google service-account JSON (RS256 key) for the FCM OAuth2 exchange with the sandbox.
pub const FCM_SERVICE_ACCOUNT_JSON: &str = include_str!("fcm-service-account.json");

/// An APNs `.p8` signing key (PKCS#8 P-256) for ES256 provider tokens to the sandbox.
pub const APNS_KEY_P8: &str = include_str!("apns.p8");

/// The key id (`kid`) and team id (`iss`) that go with [`APNS_KEY_P8`].
pub const APNS_KEY_ID: &str = "SANDBOXKEY";
pub const APNS_TEAM_ID: &str = "SANDBOXTEAM";
