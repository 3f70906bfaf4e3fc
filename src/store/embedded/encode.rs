//! Turns [`Write`]s into [`Op`]s on the submitting thread: records become bytes (each op's `value`: the binary
//! form of `binary.rs` for notifications and deliveries, JSON for the rest) and every fact the index
//! upkeep needs (seq, open, scheduled or final, dead or not, expiry, unread, tags, active) is pulled out
//! beforehand, so neither the writer nor the checkpointer decodes a record (only read marks decode and rewrite
//! an inbox item there). The same ops, in the same binary form, are what the log and the record segments hold.

use jiff::Timestamp;

use super::binary;
use crate::domain::{DeliveryStatus, FinalCounts, NotificationStatus};
pub use crate::store::codec::{from_json, to_json};
use crate::store::{Placement, StoreError, Write};

/// One encoded write, ready for the writer thread.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    User {
        id: String,
        tags: Vec<String>,
        value: Vec<u8>,
    },
    Template {
        id: String,
        value: Vec<u8>,
    },
    /// `open` and `scheduled` (the due ms) are never both set; neither is for a final notification.
    Notification {
        id: String,
        seq: u64,
        open: bool,
        scheduled: Option<i64>,
        value: Vec<u8>,
    },
    Delivery {
        id: String,
        notification_id: String,
        channel: &'static str,
        dead: bool,
        value: Vec<u8>,
    },
    /// `value` is the entry's JSON prefixed with its expiry ([`idempotency_value`]).
    Idempotency {
        key: String,
        expiry_ms: i64,
        value: Vec<u8>,
    },
    InboxItem {
        user_id: String,
        id: String,
        unread: bool,
        value: Vec<u8>,
    },
    MarkRead {
        user_id: String,
        ids: Vec<String>,
        at: Timestamp,
    },
    MarkAllRead {
        user_id: String,
        at: Timestamp,
    },
    Sequence {
        id: String,
        open: bool,
        value: Vec<u8>,
    },
    Campaign {
        id: String,
        active: bool,
        value: Vec<u8>,
    },
    AudiencePage {
        campaign: String,
        page: u32,
        value: Vec<u8>,
    },
    CampaignFinal {
        campaign: String,
        status: NotificationStatus,
        delta: i64,
    },
    /// A campaign's final counts as they stand: what the record segments keep instead of the log's
    /// [`Op::CampaignFinal`] deltas (never made from a [`Write`]).
    CampaignCounts {
        campaign: String,
        counts: FinalCounts,
    },
}

/// Encodes an idempotency value: the expiry prefix (ms, big-endian), then the entry's JSON.
pub fn idempotency_value(expiry_ms: i64, json: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(8 + json.len());
    value.extend_from_slice(&expiry_ms.to_be_bytes());
    value.extend_from_slice(json);
    value
}

/// Splits an idempotency value into its expiry and its JSON.
pub fn split_idempotency_value(value: &[u8]) -> Result<(i64, &[u8]), StoreError> {
    let (prefix, json) =
        value.split_first_chunk::<8>().ok_or_else(|| StoreError::Corrupt("idempotency value too short".into()))?;
    Ok((i64::from_be_bytes(*prefix), json))
}

/// Encodes a submission. Fails only if a record cannot be serialized, which the domain types never cause.
pub fn encode(writes: Vec<Write>) -> Result<Vec<Op>, StoreError> {
    writes.into_iter().map(encode_one).collect()
}

fn encode_one(write: Write) -> Result<Op, StoreError> {
    Ok(match write {
        Write::PutUser(user) => Op::User { value: to_json(&*user)?, id: user.id.clone(), tags: user.tags.clone() },
        Write::PutTemplate(template) => Op::Template { value: to_json(&*template)?, id: template.id.clone() },
        Write::PutNotification(n) => {
            let placement = Placement::of(&n);
            let scheduled = if let Placement::Scheduled(due_ms) = placement { Some(due_ms) } else { None };
            Op::Notification {
                value: binary::notification(&n)?,
                id: n.id.clone(),
                seq: n.seq,
                open: placement == Placement::Open,
                scheduled,
            }
        }
        Write::PutDelivery(d) => Op::Delivery {
            value: binary::delivery(&d),
            id: d.id.clone(),
            notification_id: d.notification_id.clone(),
            channel: d.channel.as_str(),
            dead: d.status == DeliveryStatus::Dead,
        },
        Write::PutIdempotency { key, entry } => {
            let expiry_ms = entry.expires_at.as_millisecond();
            Op::Idempotency { value: idempotency_value(expiry_ms, &to_json(&entry)?), key, expiry_ms }
        }
        Write::PutInboxItem(item) => Op::InboxItem {
            value: to_json(&*item)?,
            user_id: item.user_id.clone(),
            id: item.id.clone(),
            unread: item.read_at.is_none(),
        },
        Write::MarkInboxRead { user_id, ids, at } => Op::MarkRead { user_id, ids, at },
        Write::MarkAllInboxRead { user_id, at } => Op::MarkAllRead { user_id, at },
        Write::PutSequence(sequence) => {
            Op::Sequence { value: to_json(&*sequence)?, id: sequence.id.clone(), open: !sequence.status.is_final() }
        }
        Write::PutCampaign(campaign) => {
            Op::Campaign { value: to_json(&*campaign)?, id: campaign.id.clone(), active: campaign.status.is_active() }
        }
        Write::PutAudiencePage { campaign, page, user_ids } => {
            Op::AudiencePage { value: to_json(&user_ids)?, campaign, page }
        }
        Write::CountCampaignFinal { campaign, status, delta } => Op::CampaignFinal { campaign, status, delta },
    })
}
