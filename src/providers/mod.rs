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
    /// Never going to work: fail the delivery.
    Permanent,
    /// The device token is dead: fail the delivery and remove the device.
    Unregistered,
    /// The recipient opted out at the provider: the delivery is `filtered`.
    OptedOut,
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
}

impl ProviderError {
    pub fn new(provider: ProviderKind, class: ErrorClass, code: impl Into<String>, message: impl Into<String>) -> Self {
        ProviderError { provider, class, code: code.into(), message: message.into(), retry_after: None }
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

/// The engine routed an address this provider cannot use (a bug upstream, never worth a retry).
pub(crate) fn wrong_address(provider: ProviderKind, address: &Address) -> ProviderError {
    let kind = match address {
        Address::Device { .. } => "a device token",
        Address::Email { .. } => "an e-mail address",
        Address::Phone { .. } => "a phone number",
        Address::Inbox { .. } => "an inbox",
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
pub mod fcm;
mod http;
pub mod smtp;
#[cfg(test)]
mod testing;
pub mod twilio;

pub use http::parse_retry_after;

