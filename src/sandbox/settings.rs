//! Sandbox settings: where it listens and how each provider misbehaves.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::domain::ProviderKind;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSettings {
    /// Start the sandbox inside `herald serve` and point the providers at it.
    pub enabled: bool,
    /// HTTP address (FCM, APNs, Twilio, Bizppurio and `/_sandbox/*`).
    pub listen: SocketAddr,
    pub smtp_listen: SocketAddr,
    /// HTTPS address (HTTP/2 or HTTP/1.1 by ALPN) serving the same providers: FCM and APNs are reached here.
    pub tls_listen: SocketAddr,
    /// Where to write the generated CA certificate (PEM) for engines in other processes; empty: not written.
    #[serde(default)]
    pub ca_out: String,
    /// Where Bizppurio delivery reports are POSTed; empty: the engine's `/webhooks/alimtalk`.
    #[serde(default)]
    pub report_url: String,
    /// Seed for latency and fault draws, so a run can be repeated.
    pub seed: u64,
    #[serde(default)]
    pub faults: BTreeMap<ProviderKind, FaultSettings>,
    /// Service-account JSON files whose OAuth2 assertions `/token` accepts, besides the development account.
    #[serde(default)]
    pub fcm_service_accounts: Vec<String>,
    /// Lifetime of the FCM access tokens `/token` issues (short in tests that exercise expiry).
    #[serde(default = "default_fcm_token_lifetime_s")]
    pub fcm_token_lifetime_s: u64,
    /// SMTP refuses MAIL before STARTTLS (`530 5.7.0`), as relays that require encryption do.
    #[serde(default)]
    pub smtp_require_tls: bool,
    /// APNs signing keys trusted besides the development key (`providers::dev_credentials`).
    #[serde(default)]
    pub apns_keys: Vec<ApnsKeySettings>,
    /// APNs provider tokens issued longer ago than this are answered `ExpiredProviderToken` (APNs: one hour).
    #[serde(default = "default_apns_token_max_age_s")]
    pub apns_token_max_age_s: u64,
}

fn default_fcm_token_lifetime_s() -> u64 {
    3600
}

fn default_apns_token_max_age_s() -> u64 {
    3600
}

/// A key APNs provider tokens may be signed with: tokens naming `key_id` must carry `team_id` as `iss`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsKeySettings {
    pub key_id: String,
    pub team_id: String,
    /// The `.p8` private key, or the key's PEM public key.
    pub key_file: String,
}

/// How one simulated provider misbehaves. Rates are probabilities in [0, 1].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultSettings {
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
    /// Share of requests answered with a retryable error (5xx / SMTP 451).
    pub error_rate: f64,
    /// Share of requests answered with a permanent error (invalid argument / SMTP 550).
    pub permanent_error_rate: f64,
    /// Delay before delivery reports are sent.
    pub report_delay_ms: u64,
}
