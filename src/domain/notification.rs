//! Notifications, their per-channel deliveries, statuses and event timelines (SPEC §4).

use std::sync::Arc;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{Category, Channel, Platform, Priority, ProviderKind, Strategy};

/// 32 lowercase hex digits (a UUIDv7, so ids sort by creation time). Fits Bizppurio's 32-char `refkey`.
pub type NotificationId = String;
/// Same form as [`NotificationId`].
pub type DeliveryId = String;

/// A new time-ordered id.
pub fn new_id() -> String {
    // Encoded into a buffer and copied once: `to_string` goes through `Display` and grows the string three times.
    let mut buffer = uuid::Uuid::encode_buffer();
    String::from(uuid::Uuid::now_v7().simple().encode_lower(&mut buffer) as &str)
}

/// Status of a notification as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationStatus {
    Accepted,
    Scheduled,
    Dispatching,
    /// Every delivery is final and at least one was delivered.
    Completed,
    /// Every delivery is final and none was delivered.
    Failed,
    Cancelled,
}

impl NotificationStatus {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// Status of one delivery (one channel, one address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Queued,
    Retrying,
    /// The provider accepted it; a delivery report will say more.
    Sent,
    Delivered,
    Failed,
    /// Not sent because of preferences or a missing contact; `reason` says which.
    Filtered,
    /// Retries exhausted; in the dead-letter queue.
    Dead,
    Cancelled,
}

impl DeliveryStatus {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Delivered | Self::Failed | Self::Filtered | Self::Dead | Self::Cancelled)
    }

    /// Progress rank: a status never moves to a lower rank (except an explicit DLQ replay).
    pub fn rank(self) -> u8 {
        match self {
            Self::Queued => 0,
            Self::Retrying => 1,
            Self::Sent => 2,
            _ => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Retrying => "retrying",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Filtered => "filtered",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
        }
    }
}

/// What happened to a delivery, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Requested,
    Filtered,
    Sent,
    Delivered,
    Retry,
    Failed,
    DeadLettered,
    Replayed,
    Cancelled,
    Read,
    Clicked,
}

/// One entry of a delivery's append-only timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The content of one channel after rendering.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rendered {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// Alimtalk template code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_code: Option<String>,
}

/// Where one delivery goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Address {
    Device {
        token: String,
        platform: Platform,
    },
    Email {
        email: String,
    },
    Phone {
        phone: String,
    },
    Inbox {
        user_id: String,
    },
    /// The recipient has no contact for this channel; only on `filtered` deliveries.
    Missing,
}

impl Address {
    /// The address as providers see it: token, e-mail, E.164 phone or user id.
    pub fn value(&self) -> &str {
        match self {
            Address::Device { token, .. } => token,
            Address::Email { email } => email,
            Address::Phone { phone } => phone,
            Address::Inbox { user_id } => user_id,
            Address::Missing => "",
        }
    }
}

/// An accepted request to notify one recipient.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub id: NotificationId,
    /// Global acceptance order; per-recipient FIFO follows it.
    pub seq: u64,
    /// Ordering and sharding key: the user id, or `adhoc:<address>` for ad-hoc recipients.
    pub owner: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    pub category: Category,
    pub channels: Vec<Channel>,
    pub strategy: Strategy,
    pub priority: Priority,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<String>,
    /// Rendered content per channel, in `channels` order.
    pub contents: Vec<(Channel, Arc<Rendered>)>,
    pub status: NotificationStatus,
    /// For `priority`: index in `channels` of the channel being tried.
    #[serde(default)]
    pub current_channel: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Boxed (same JSON): most notifications have none, and an open notification is kept per queued one
    /// (8 bytes here instead of 32 keeps a shared record in a smaller allocation class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Box<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// When a scheduled send is due. While the status is `scheduled` the notification has no deliveries yet and
    /// is in the store's scheduled index instead of its open index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_at: Option<Timestamp>,
    /// Why the notification ended without deliveries (e.g. `expired`), or why it was deferred (`quiet_hours`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Set when this notification is one step of a sequence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<StepRef>,
    /// Set when this notification was sent by a campaign's fan-out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Which step of which sequence a notification carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRef {
    pub sequence_id: String,
    pub step: usize,
}

impl Notification {
    pub fn content(&self, channel: Channel) -> Option<&Arc<Rendered>> {
        self.contents.iter().find(|(c, _)| *c == channel).map(|(_, r)| r)
    }
}

/// One message to one address through one provider.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: DeliveryId,
    pub notification_id: NotificationId,
    /// The notification's acceptance sequence.
    pub seq: u64,
    /// The notification's owner (ordering key).
    pub owner: String,
    pub channel: Channel,
    pub provider: ProviderKind,
    pub address: Address,
    pub priority: Priority,
    pub status: DeliveryStatus,
    pub attempts: u32,
    /// A boxed `str` (same JSON): 8 bytes less than a `String` keeps the shard's shared record of a queued
    /// delivery in a smaller allocation class (issue #6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_message_id: Option<Box<str>>,
    pub events: Vec<Event>,
    pub updated_at: Timestamp,
}

impl Delivery {
    /// Records a status change with its event, unless it would move the status backwards.
    /// Returns false (and changes nothing) for a backwards or repeated final move.
    pub fn advance(&mut self, status: DeliveryStatus, kind: EventKind, reason: Option<String>, now: Timestamp) -> bool {
        if self.status.is_final() || status.rank() < self.status.rank() {
            return false;
        }
        self.status = status;
        self.events.push(Event { kind, at: now, reason });
        self.updated_at = now;
        true
    }
}

/// What an idempotency key (or a content hash) maps to, for 24 h (resp. 60 s).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyEntry {
    pub notification_id: NotificationId,
    /// Hash of the request body, to tell a replay (same body) from a conflict (different body).
    pub body_hash: u64,
    pub status: NotificationStatus,
    pub expires_at: Timestamp,
}

/// One item of a user's in-app inbox. Its id is the in-app delivery's id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InboxItem {
    pub id: DeliveryId,
    pub user_id: String,
    pub notification_id: NotificationId,
    pub category: Category,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub body: String,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_at: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_32_lowercase_hex_digits_in_creation_order() {
        let (first, second) = (new_id(), new_id());
        for id in [&first, &second] {
            assert_eq!(id.len(), 32, "{id}");
            assert!(id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{id}");
        }
        assert!(first < second, "{first} then {second}");
    }

    fn delivery() -> Delivery {
        Delivery {
            id: new_id(),
            notification_id: new_id(),
            seq: 1,
            owner: "u".into(),
            channel: Channel::Sms,
            provider: ProviderKind::Twilio,
            address: Address::Phone { phone: "+821012345678".into() },
            priority: Priority::Normal,
            status: DeliveryStatus::Queued,
            attempts: 0,
            provider_message_id: None,
            events: vec![],
            updated_at: Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn statuses_never_move_backwards() {
        let now = Timestamp::UNIX_EPOCH;
        let mut d = delivery();
        assert!(d.advance(DeliveryStatus::Delivered, EventKind::Delivered, None, now));
        assert!(!d.advance(DeliveryStatus::Sent, EventKind::Sent, None, now));
        assert!(!d.advance(DeliveryStatus::Failed, EventKind::Failed, None, now));
        assert_eq!(d.status, DeliveryStatus::Delivered);
        assert_eq!(d.events.len(), 1);
    }

    #[test]
    fn a_report_before_the_accept_answer_wins() {
        let now = Timestamp::UNIX_EPOCH;
        let mut d = delivery();
        assert!(d.advance(DeliveryStatus::Sent, EventKind::Sent, None, now));
        assert!(d.advance(DeliveryStatus::Delivered, EventKind::Delivered, None, now));
        assert!(!d.advance(DeliveryStatus::Sent, EventKind::Sent, None, now));
    }

    #[test]
    fn boxed_metadata_keeps_its_json_shape() {
        let json = serde_json::json!({
            "id": "n1", "seq": 1, "owner": "u1", "category": "transaction", "channels": ["sms"],
            "strategy": "parallel", "priority": "high", "contents": [["sms", {"body": "hi"}]], "status": "accepted",
            "metadata": {"order": 42}, "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
        });
        let n: Notification = serde_json::from_value(json.clone()).expect("a stored notification");
        assert_eq!(n.metadata.as_deref(), Some(&serde_json::json!({"order": 42})));
        assert_eq!(serde_json::to_value(&n).expect("serializable")["metadata"], json["metadata"]);
        let mut without = json;
        without["metadata"] = serde_json::Value::Null;
        let n: Notification = serde_json::from_value(without).expect("null metadata");
        assert_eq!(n.metadata, None);
        assert!(serde_json::to_value(&n).expect("serializable").get("metadata").is_none());
    }

    #[test]
    fn boxed_provider_message_id_keeps_its_json_shape() {
        let mut d = delivery();
        d.provider_message_id = Some("SM123".into());
        let json = serde_json::to_value(&d).expect("serializable");
        assert_eq!(json["provider_message_id"], "SM123");
        assert_eq!(serde_json::from_value::<Delivery>(json).expect("readable"), d);
    }

    #[test]
    fn ids_are_32_hex_and_time_ordered() {
        let a = new_id();
        let b = new_id();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(a < b);
    }
}
