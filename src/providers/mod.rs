//! Provider clients: one folder per provider protocol, each a [`Provider`].
//!
//! Architecture invariant: only `providers/` knows provider wire formats (request bodies, auth, error codes,
//! webhook payloads). The engine sees [`SendRequest`] in and [`Accepted`] / [`ProviderError`] out, and
//! [`Report`]s parsed from webhooks.

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

pub mod apns;
pub mod bizppurio;
pub mod fcm;
pub mod smtp;
pub mod twilio;
