//! The binary form of an [`Op`] in the write-ahead log: a tag byte, then the fields in declaration order.
//! Integers are little-endian, strings and byte strings are a `u32` length and the bytes, an option is a presence
//! byte and the value, a timestamp is seconds (`i64`) and nanoseconds (`i32`). The record segments hold ops in
//! the same form (`segments.rs`), so a logged put is stored as the bytes it was logged as.

use jiff::Timestamp;

use super::super::encode::Op;
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
        Op::User { id, tags, json } => {
            w.tag(USER).str(id).strs(tags).bytes(json);
        }
        Op::Template { id, json } => {
            w.tag(TEMPLATE).str(id).bytes(json);
        }
        Op::Notification { id, seq, open, scheduled, json } => {
            w.tag(NOTIFICATION).str(id).u64(*seq).bool(*open).opt_i64(*scheduled).bytes(json);
        }
        Op::Delivery { id, notification_id, channel, dead, json } => {
            w.tag(DELIVERY).str(id).str(notification_id).str(channel).bool(*dead).bytes(json);
        }
        Op::Idempotency { key, expiry_ms, value } => {
            w.tag(IDEMPOTENCY).str(key).i64(*expiry_ms).bytes(value);
        }
        Op::InboxItem { user_id, id, unread, json } => {
            w.tag(INBOX_ITEM).str(user_id).str(id).bool(*unread).bytes(json);
        }
        Op::MarkRead { user_id, ids, at } => {
            w.tag(MARK_READ).str(user_id).strs(ids).timestamp(*at);
        }
        Op::MarkAllRead { user_id, at } => {
            w.tag(MARK_ALL_READ).str(user_id).timestamp(*at);
        }
        Op::Sequence { id, open, json } => {
            w.tag(SEQUENCE).str(id).bool(*open).bytes(json);
        }
        Op::Campaign { id, active, json } => {
            w.tag(CAMPAIGN).str(id).bool(*active).bytes(json);
        }
        Op::AudiencePage { campaign, page, json } => {
            w.tag(AUDIENCE_PAGE).str(campaign).u32(*page).bytes(json);
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
        USER => Op::User { id: r.string()?, tags: r.strings()?, json: r.bytes()? },
        TEMPLATE => Op::Template { id: r.string()?, json: r.bytes()? },
        NOTIFICATION => Op::Notification {
            id: r.string()?,
            seq: r.u64()?,
            open: r.bool()?,
            scheduled: r.opt_i64()?,
            json: r.bytes()?,
        },
        DELIVERY => Op::Delivery {
            id: r.string()?,
            notification_id: r.string()?,
            channel: {
                let name = r.str()?;
                Channel::parse(name).ok_or_else(|| corrupt(format!("unknown channel `{name}`")))?.as_str()
            },
            dead: r.bool()?,
            json: r.bytes()?,
        },
        IDEMPOTENCY => Op::Idempotency { key: r.string()?, expiry_ms: r.i64()?, value: r.bytes()? },
        INBOX_ITEM => Op::InboxItem { user_id: r.string()?, id: r.string()?, unread: r.bool()?, json: r.bytes()? },
        MARK_READ => Op::MarkRead { user_id: r.string()?, ids: r.strings()?, at: r.timestamp()? },
        MARK_ALL_READ => Op::MarkAllRead { user_id: r.string()?, at: r.timestamp()? },
        SEQUENCE => Op::Sequence { id: r.string()?, open: r.bool()?, json: r.bytes()? },
        CAMPAIGN => Op::Campaign { id: r.string()?, active: r.bool()?, json: r.bytes()? },
        AUDIENCE_PAGE => Op::AudiencePage { campaign: r.string()?, page: r.u32()?, json: r.bytes()? },
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

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn tag(&mut self, tag: u8) -> &mut Self {
        self.u8(tag)
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn opt_i64(&mut self, v: Option<i64>) -> &mut Self {
        match v {
            Some(v) => self.u8(1).i64(v),
            None => self.u8(0),
        }
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        let len = u32::try_from(v.len()).expect("a record is smaller than 4 GiB");
        self.u32(len);
        self.0.extend_from_slice(v);
        self
    }
    fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }
    fn strs(&mut self, v: &[String]) -> &mut Self {
        self.u32(u32::try_from(v.len()).expect("fewer than 4 billion strings"));
        for s in v {
            self.str(s);
        }
        self
    }
    fn timestamp(&mut self, at: Timestamp) -> &mut Self {
        self.i64(at.as_second());
        self.0.extend_from_slice(&at.subsec_nanosecond().to_le_bytes());
        self
    }
}

struct Reader<'a, 'b>(&'a mut &'b [u8]);

impl<'b> Reader<'_, 'b> {
    fn take(&mut self, n: usize) -> Result<&'b [u8], StoreError> {
        if self.0.len() < n {
            return Err(corrupt("op cut short".into()));
        }
        let (head, rest) = self.0.split_at(n);
        *self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }
    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }
    fn bool(&mut self) -> Result<bool, StoreError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(corrupt(format!("bad bool {v}"))),
        }
    }
    fn u32(&mut self) -> Result<u32, StoreError> {
        self.array().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, StoreError> {
        self.array().map(u64::from_le_bytes)
    }
    fn i64(&mut self) -> Result<i64, StoreError> {
        self.array().map(i64::from_le_bytes)
    }
    fn opt_i64(&mut self) -> Result<Option<i64>, StoreError> {
        Ok(if self.bool()? { Some(self.i64()?) } else { None })
    }
    fn raw(&mut self) -> Result<&'b [u8], StoreError> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    fn bytes(&mut self) -> Result<Vec<u8>, StoreError> {
        self.raw().map(<[u8]>::to_vec)
    }
    fn str(&mut self) -> Result<&'b str, StoreError> {
        std::str::from_utf8(self.raw()?).map_err(|_| corrupt("string is not UTF-8".into()))
    }
    fn string(&mut self) -> Result<String, StoreError> {
        self.str().map(str::to_string)
    }
    fn strings(&mut self) -> Result<Vec<String>, StoreError> {
        let n = self.u32()? as usize;
        // Each string takes at least its 4-byte length, which bounds what a corrupt count can allocate.
        if n > self.0.len() / 4 {
            return Err(corrupt("string count exceeds the op".into()));
        }
        (0..n).map(|_| self.string()).collect()
    }
    fn timestamp(&mut self) -> Result<Timestamp, StoreError> {
        let seconds = self.i64()?;
        let nanos = i32::from_le_bytes(self.array()?);
        Timestamp::new(seconds, nanos).map_err(|e| corrupt(format!("bad timestamp: {e}")))
    }
}
