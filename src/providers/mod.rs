//! Provider clients: one folder per provider protocol, each a [`Provider`].
//!
//! Architecture invariant: only `providers/` knows provider wire formats (request bodies, auth, error codes,
//! webhook payloads). The engine sees [`SendRequest`] in and [`Accepted`] / [`ProviderError`] out, and
//! [`Report`]s parsed from webhooks.
//!
//! Each folder holds `settings.rs` (its config section), `client.rs` (the [`Provider`]), and `error.rs` (the
//! provider's error codes, each knowing its [`ErrorClass`] and metric label). [`build`] makes every client from
//! the configuration; the in-app inbox is the engine's own and is not built here.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use thiserror::Error;

use crate::config::ProvidersSettings;
use crate::domain::{Address, DeliveryId, Priority, ProviderKind, Rendered};

/// One message to hand to a provider.
#[derive(Clone, Debug)]
pub struct SendRequest {
    pub delivery_id: DeliveryId,
    pub address: Address,
    pub content: Arc<Rendered>,
    pub priority: Priority,
    /// 1 for the first attempt.
    pub attempt: u32,
}

/// A provider's success answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// The provider's answer is final (FCM/APNs 200, SMTP 250).
    Delivered { provider_message_id: Option<String> },
    /// The provider queued it; a delivery report (webhook) will finish it (Twilio 201, Bizppurio 1000).
    Sent { provider_message_id: Option<String> },
}

/// What the engine does about a failed send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try again after backoff (or `retry_after`).
    Retryable,
    /// The provider is rate limiting us as a whole (HTTP 429 and its codes): retry this delivery, and send
    /// nothing more to the provider until `retry_after` (or a default pause) has passed.
    RateLimited,
    /// Never going to work: fail the delivery.
    Permanent,
    /// The device token is dead: fail the delivery and remove the device.
    Unregistered,
    /// The recipient opted out at the provider: the delivery is `filtered`.
    OptedOut,
}

impl ErrorClass {
    /// Whether the delivery is tried again (within its retry budget).
    pub fn is_retried(self) -> bool {
        matches!(self, ErrorClass::Retryable | ErrorClass::RateLimited)
    }
}

/// A classified provider failure. `code` is the provider's own (e.g. `UNREGISTERED`, `21211`) for the timeline
/// and the metric label.
#[derive(Clone, Debug, Error)]
#[error("{provider:?} {class:?} {code}: {message}")]
pub struct ProviderError {
    pub provider: ProviderKind,
    pub class: ErrorClass,
    pub code: String,
    pub message: String,
    /// The provider asked us to wait at least this long before the next request.
    pub retry_after: Option<Duration>,
    /// A configuration problem an operator must fix (bad credentials, revoked key): counted on the alert metric.
    pub alert: bool,
}

impl ProviderError {
    pub fn new(provider: ProviderKind, class: ErrorClass, code: impl Into<String>, message: impl Into<String>) -> Self {
        ProviderError { provider, class, code: code.into(), message: message.into(), retry_after: None, alert: false }
    }

    /// Keeps the provider's `Retry-After` only where a retry makes sense.
    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        if self.class.is_retried() {
            self.retry_after = retry_after;
        }
        self
    }

    /// Marks the failure as one an operator must act on (see [`ProviderError::alert`]).
    pub fn alerting(mut self) -> Self {
        self.alert = true;
        self
    }

    /// A connection-level failure (refused, reset, timed out): retryable.
    pub fn transport(provider: ProviderKind, message: impl Into<String>) -> Self {
        ProviderError::new(provider, ErrorClass::Retryable, "transport", message)
    }
}

/// A client for one provider protocol.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    fn kind(&self) -> ProviderKind;
    async fn send(&self, request: &SendRequest) -> Result<Accepted, ProviderError>;
}

/// The outcome a delivery report (webhook) says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReportOutcome {
    /// Still on its way (e.g. Twilio `sending`); changes nothing final.
    Progress,
    Delivered,
    Failed {
        code: String,
        reason: String,
    },
}

/// A delivery report from a provider webhook, already mapped to our delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub delivery_id: DeliveryId,
    pub provider: ProviderKind,
    pub provider_message_id: Option<String>,
    pub outcome: ReportOutcome,
}

/// Why the provider clients could not be made from the configuration.
#[derive(Debug, Error)]
pub enum BuildError {
    #[error("providers.{provider}.{field}: {message}")]
    Invalid { provider: &'static str, field: &'static str, message: String },
    #[error("provider HTTP client: {0}")]
    Http(String),
}

impl BuildError {
    pub(crate) fn invalid(provider: &'static str, field: &'static str, message: impl Into<String>) -> BuildError {
        BuildError::Invalid { provider, field, message: message.into() }
    }
}

/// Why a provider webhook (delivery report) could not be understood. The API answers it with a 400.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum WebhookError {
    #[error("webhook: missing `{0}`")]
    Missing(&'static str),
    #[error("webhook: `{field}` is not valid: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("webhook: body is not valid: {0}")]
    Body(String),
    #[error("webhook: signature does not match")]
    Signature,
}

/// Makes the clients for FCM, APNs, SMTP, Twilio and Bizppurio, in that order.
///
/// FCM and APNs send on HTTP/2 clients of their own (`http2.rs`); Twilio, Bizppurio and FCM's token requests
/// share one pooled `reqwest::Client`. `settings.timeout_ms` bounds every request.
/// `callback_base` is Herald's public URL, for status callbacks (`{callback_base}/webhooks/sms?...`).
/// Must be called inside a Tokio runtime (the SMTP pool starts its cleanup task).
pub fn build(settings: &ProvidersSettings, callback_base: &str) -> Result<Vec<Arc<dyn Provider>>, BuildError> {
    let timeout = Duration::from_millis(settings.timeout_ms.max(1));
    let roots = http::extra_roots(&settings.extra_root_ca_file, settings.extra_root_ca_pem.as_deref())?;
    let http = http::HttpClients::new(timeout, roots)?;
    let smtp_roots = smtp::extra_root_pems(&settings.extra_root_ca_file, settings.extra_root_ca_pem.as_deref())?;
    let apns_token = Arc::new(apns::Es256ProviderToken::from_settings(&settings.apns)?);
    Ok(vec![
        Arc::new(fcm::FcmClient::new(&http, &settings.fcm)?),
        Arc::new(apns::ApnsClient::new(&http, &settings.apns, apns_token)?),
        Arc::new(smtp::SmtpClient::new(&settings.smtp, timeout, &smtp_roots)?),
        Arc::new(twilio::TwilioClient::new(http.shared.clone(), &settings.twilio, callback_base)?),
        Arc::new(bizppurio::BizppurioClient::new(http.shared, &settings.bizppurio)?),
    ])
}

/// The engine routed an address this provider cannot use (a bug upstream, never worth a retry).
pub(crate) fn wrong_address(provider: ProviderKind, address: &Address) -> ProviderError {
    let kind = match address {
        Address::Device { .. } => "a device token",
        Address::Email { .. } => "an e-mail address",
        Address::Phone { .. } => "a phone number",
        Address::Inbox { .. } => "an inbox",
        Address::Missing => "a missing contact",
    };
    ProviderError::new(provider, ErrorClass::Permanent, "wrong_address", format!("cannot send to {kind}"))
}

/// The one log line for a refused send. The recipient is masked here, and only when the line is enabled.
pub(crate) fn log_refusal(error: &ProviderError, metric_label: &'static str, recipient: &str) {
    tracing::debug!(
        provider = error.provider.as_str(),
        class = ?error.class,
        code = %error.code,
        error = metric_label,
        recipient = %crate::domain::contact::mask(recipient),
        "provider refused send"
    );
}

pub mod apns;
pub mod bizppurio;
pub(crate) mod cork;
pub mod dev_credentials;
pub mod fcm;
mod http;
pub mod http2;
pub use http::HttpClients;
pub mod smtp;
#[cfg(test)]
mod testing;
pub mod twilio;

pub use http::parse_retry_after;

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::Settings;

    fn settings() -> ProvidersSettings {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config");
        let env = figment::providers::Env::prefixed("HERALD_PROVIDERS_TEST_NONE__");
        Settings::load(&dir, "default", env).unwrap().providers
    }

    #[tokio::test]
    async fn build_makes_the_five_clients_in_order() {
        let providers = build(&settings(), "http://127.0.0.1:8080").unwrap();
        let kinds: Vec<_> = providers.iter().map(|p| p.kind()).collect();
        let expected =
            [ProviderKind::Fcm, ProviderKind::Apns, ProviderKind::Smtp, ProviderKind::Twilio, ProviderKind::Bizppurio];
        assert_eq!(kinds, expected);
    }

    #[tokio::test]
    async fn build_names_the_bad_setting() {
        let mut settings = settings();
        settings.fcm.base_url = "fcm.googleapis.com".into();
        let error = build(&settings, "http://127.0.0.1:8080").err().unwrap();
        assert!(error.to_string().starts_with("providers.fcm.base_url:"), "{error}");
        let mut settings = self::settings();
        settings.smtp.from = "not a mailbox".into();
        let error = build(&settings, "http://127.0.0.1:8080").err().unwrap();
        assert!(error.to_string().starts_with("providers.smtp.from:"), "{error}");
    }
}
