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
    /// How long a Bizppurio access token from `/v1/token` lives (Bizppurio's is 24 h); short for refresh tests.
    #[serde(default = "default_token_lifetime_s")]
    pub bizppurio_token_lifetime_s: u64,
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

fn default_token_lifetime_s() -> u64 {
    86_400
}

/// How one simulated provider misbehaves. Rates are probabilities in [0, 1], each a share of all requests (see
/// `docs/sandbox.md`, "Faults", for the order in which one uniform draw is split between them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultSettings {
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
    /// Share of requests answered with a retryable error (5xx / SMTP 451).
    pub error_rate: f64,
    /// Share of requests answered with a permanent error (invalid argument / SMTP 550).
    pub permanent_error_rate: f64,
    /// Share of requests answered with the provider's rate-limit error (HTTP 429 / SMTP 451 4.7.1).
    pub rate_limit_rate: f64,
    /// The wait a rate-limit answer asks for (`Retry-After`, Bizppurio `RateLimit-Reset`), also FCM's 503.
    pub retry_after_s: u64,
    /// Share of requests answered with the provider's "dead token or recipient" error (FCM 404 UNREGISTERED,
    /// APNs 410 Unregistered, ...).
    pub unregistered_rate: f64,
    /// Base delay before a delivery report or status callback is posted.
    pub report_delay_ms: u64,
    /// Each report waits a further uniform 0..=jitter ms, so reports can overtake each other.
    pub report_jitter_ms: u64,
    /// Share of reports posted a second time, after their own independently drawn delay.
    pub report_duplicate_rate: f64,
    /// Share of reports never posted.
    pub report_drop_rate: f64,
}

impl Default for FaultSettings {
    /// A perfectly behaved provider; a rate limit, when drawn, asks for one second.
    fn default() -> FaultSettings {
        FaultSettings {
            latency_min_ms: 0,
            latency_max_ms: 0,
            error_rate: 0.0,
            permanent_error_rate: 0.0,
            rate_limit_rate: 0.0,
            retry_after_s: 1,
            unregistered_rate: 0.0,
            report_delay_ms: 0,
            report_jitter_ms: 0,
            report_duplicate_rate: 0.0,
            report_drop_rate: 0.0,
        }
    }
}
