//! The binary form of an [`Op`] in the write-ahead log: a tag byte, then the fields in declaration order.
//! Integers are little-endian, strings and byte strings are a `u32` length and the bytes, an option is a presence
//! byte and the value, a timestamp is seconds (`i64`) and nanoseconds (`i32`). The record segments hold ops in
//! the same form (`segments.rs`), so a logged put is stored as the bytes it was logged as.

use super::super::encode::Op;
use super::super::wire::{Reader, Writer};
use crate::domain::{Channel, FinalCounts, NotificationStatus};
use crate::store::StoreError;

const USER: u8 = 1;
const TEMPLATE: u8 = 2;
const NOTIFICATION: u8 = 3;
const DELIVERY: u8 = 4;
const IDEMPOTENCY: u8 = 5;
const INBOX_ITEM: u8 = 6;
const MARK_READ: u8 = 7;
const MARK_ALL_READ: u8 = 8;
const SEQUENCE: u8 = 9;
const CAMPAIGN: u8 = 10;
const AUDIENCE_PAGE: u8 = 11;
const CAMPAIGN_FINAL: u8 = 12;
const CAMPAIGN_COUNTS: u8 = 13;

/// Every notification status, by its code in the log (the index); the order must never change.
const STATUSES: [NotificationStatus; 6] = [
    NotificationStatus::Accepted,
    NotificationStatus::Scheduled,
    NotificationStatus::Dispatching,
    NotificationStatus::Completed,
    NotificationStatus::Failed,
    NotificationStatus::Cancelled,
];

/// Appends `op` to `out`.
pub fn encode(op: &Op, out: &mut Vec<u8>) {
    let mut w = Writer(out);
    match op {
        Op::User { id, tags, value } => {
            w.tag(USER).str(id).strs(tags).bytes(value);
        }
        Op::Template { id, value } => {
            w.tag(TEMPLATE).str(id).bytes(value);
        }
        Op::Notification { id, seq, open, scheduled, value } => {
            w.tag(NOTIFICATION).str(id).u64(*seq).bool(*open).opt_i64(*scheduled).bytes(value);
        }
        Op::Delivery { id, notification_id, channel, dead, value } => {
            w.tag(DELIVERY).str(id).str(notification_id).str(channel).bool(*dead).bytes(value);
        }
        Op::Idempotency { key, expiry_ms, value } => {
            w.tag(IDEMPOTENCY).str(key).i64(*expiry_ms).bytes(value);
        }
        Op::InboxItem { user_id, id, unread, value } => {
            w.tag(INBOX_ITEM).str(user_id).str(id).bool(*unread).bytes(value);
        }
        Op::MarkRead { user_id, ids, at } => {
            w.tag(MARK_READ).str(user_id).strs(ids).timestamp(*at);
        }
        Op::MarkAllRead { user_id, at } => {
            w.tag(MARK_ALL_READ).str(user_id).timestamp(*at);
        }
        Op::Sequence { id, open, value } => {
            w.tag(SEQUENCE).str(id).bool(*open).bytes(value);
        }
        Op::Campaign { id, active, value } => {
            w.tag(CAMPAIGN).str(id).bool(*active).bytes(value);
        }
        Op::AudiencePage { campaign, page, value } => {
            w.tag(AUDIENCE_PAGE).str(campaign).u32(*page).bytes(value);
        }
        Op::CampaignFinal { campaign, status, delta } => {
            let code = STATUSES.iter().position(|s| s == status).expect("every status has a code");
            w.tag(CAMPAIGN_FINAL).str(campaign).u8(code as u8).i64(*delta);
        }
        Op::CampaignCounts { campaign, counts } => {
            w.tag(CAMPAIGN_COUNTS).str(campaign).u64(counts.completed).u64(counts.failed).u64(counts.cancelled);
        }
    }
}

/// Reads one op from the front of `input`, advancing it.
pub fn decode(input: &mut &[u8]) -> Result<Op, StoreError> {
    let mut r = Reader(input);
    Ok(match r.u8()? {
        USER => Op::User { id: r.string()?, tags: r.strings()?, value: r.bytes()? },
        TEMPLATE => Op::Template { id: r.string()?, value: r.bytes()? },
        NOTIFICATION => Op::Notification {
            id: r.string()?,
            seq: r.u64()?,
            open: r.bool()?,
            scheduled: r.opt_i64()?,
            value: r.bytes()?,
        },
        DELIVERY => Op::Delivery {
            id: r.string()?,
            notification_id: r.string()?,
            channel: {
                let name = r.str()?;
                Channel::parse(name).ok_or_else(|| corrupt(format!("unknown channel `{name}`")))?.as_str()
            },
            dead: r.bool()?,
            value: r.bytes()?,
        },
        IDEMPOTENCY => Op::Idempotency { key: r.string()?, expiry_ms: r.i64()?, value: r.bytes()? },
        INBOX_ITEM => Op::InboxItem { user_id: r.string()?, id: r.string()?, unread: r.bool()?, value: r.bytes()? },
        MARK_READ => Op::MarkRead { user_id: r.string()?, ids: r.strings()?, at: r.timestamp()? },
        MARK_ALL_READ => Op::MarkAllRead { user_id: r.string()?, at: r.timestamp()? },
        SEQUENCE => Op::Sequence { id: r.string()?, open: r.bool()?, value: r.bytes()? },
        CAMPAIGN => Op::Campaign { id: r.string()?, active: r.bool()?, value: r.bytes()? },
        AUDIENCE_PAGE => Op::AudiencePage { campaign: r.string()?, page: r.u32()?, value: r.bytes()? },
        CAMPAIGN_FINAL => Op::CampaignFinal {
            campaign: r.string()?,
            status: *STATUSES.get(usize::from(r.u8()?)).ok_or_else(|| corrupt("unknown status code".into()))?,
            delta: r.i64()?,
        },
        CAMPAIGN_COUNTS => Op::CampaignCounts {
            campaign: r.string()?,
            counts: FinalCounts { completed: r.u64()?, failed: r.u64()?, cancelled: r.u64()? },
        },
        tag => return Err(corrupt(format!("unknown op tag {tag}"))),
    })
}

fn corrupt(what: String) -> StoreError {
    StoreError::Corrupt(format!("write-ahead log: {what}"))
}
