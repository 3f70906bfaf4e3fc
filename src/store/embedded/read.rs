//! Queries over one redb read transaction (a consistent snapshot). They block, so the store runs them in
//! `spawn_blocking`. Pages fetch one item more than asked to know whether a next page exists; the cursor is the
//! last id returned.

use std::ops::Bound;

use jiff::Timestamp;
use redb::{ReadOnlyMultimapTable, ReadOnlyTable, ReadTransaction, ReadableTable};

use super::encode::from_json;
use super::tables::*;
use crate::domain::{
    Campaign, Channel, Delivery, FinalCounts, IdempotencyEntry, InboxItem, Notification, Sequence, Template, User,
};
use crate::store::{Page, ScheduleCursor, StoreError, StoredNotification};

type Records = ReadOnlyTable<&'static str, &'static [u8]>;

pub fn users(txn: &ReadTransaction) -> Result<Vec<User>, StoreError> {
    all_records(&txn.open_table(USERS).map_err(db_error)?, "user")
}

pub fn templates(txn: &ReadTransaction) -> Result<Vec<Template>, StoreError> {
    all_records(&txn.open_table(TEMPLATES).map_err(db_error)?, "template")
}

pub fn open_notifications(txn: &ReadTransaction) -> Result<Vec<StoredNotification>, StoreError> {
    let open = txn.open_table(OPEN_BY_SEQ).map_err(db_error)?;
    let tables = NotificationTables::open(txn)?;
    let mut result = Vec::new();
    for entry in open.iter().map_err(db_error)? {
        let (seq, id) = entry.map_err(db_error)?;
        let stored = tables.load(id.value())?.ok_or_else(|| {
            StoreError::Corrupt(format!("open index names missing notification {} (seq {})", id.value(), seq.value()))
        })?;
        result.push(stored);
    }
    Ok(result)
}

pub fn notification(txn: &ReadTransaction, id: &str) -> Result<Option<StoredNotification>, StoreError> {
    NotificationTables::open(txn)?.load(id)
}

/// The tables a notification is read from, opened once for however many notifications are loaded.
struct NotificationTables {
    notifications: Records,
    by_notification: ReadOnlyMultimapTable<&'static str, &'static str>,
    deliveries: Records,
}

impl NotificationTables {
    fn open(txn: &ReadTransaction) -> Result<Self, StoreError> {
        Ok(NotificationTables {
            notifications: txn.open_table(NOTIFICATIONS).map_err(db_error)?,
            by_notification: txn.open_multimap_table(DELIVERIES_BY_NOTIFICATION).map_err(db_error)?,
            deliveries: txn.open_table(DELIVERIES).map_err(db_error)?,
        })
    }

    fn load(&self, id: &str) -> Result<Option<StoredNotification>, StoreError> {
        let Some(notification) = record::<Notification>(&self.notifications, id, "notification")? else {
            return Ok(None);
        };
        let mut deliveries = Vec::new();
        for delivery_id in self.by_notification.get(id).map_err(db_error)? {
            let delivery_id = delivery_id.map_err(db_error)?;
            let delivery = record(&self.deliveries, delivery_id.value(), "delivery")?
                .ok_or_else(|| StoreError::Corrupt(format!("missing delivery {} of {id}", delivery_id.value())))?;
            deliveries.push(delivery);
        }
        Ok(Some(StoredNotification { notification, deliveries }))
    }
}

pub fn delivery(txn: &ReadTransaction, id: &str) -> Result<Option<Delivery>, StoreError> {
    record(&txn.open_table(DELIVERIES).map_err(db_error)?, id, "delivery")
}

pub fn idempotency_entries(
    txn: &ReadTransaction,
    now: Timestamp,
) -> Result<Vec<(String, IdempotencyEntry)>, StoreError> {
    let expiry = txn.open_table(IDEMPOTENCY_EXPIRY).map_err(db_error)?;
    let entries = txn.open_table(IDEMPOTENCY).map_err(db_error)?;
    let mut result = Vec::new();
    // The index is in milliseconds; the exact comparison below drops entries expiring within `now`'s ms.
    for key in expiry.range::<(i64, &str)>((now.as_millisecond(), "")..).map_err(db_error)? {
        let (key, _) = key.map_err(db_error)?;
        let key = key.value().1;
        let value =
            entries.get(key).map_err(db_error)?.ok_or_else(|| StoreError::Corrupt(format!("missing key {key}")))?;
        let (_, json) = split_idempotency_value(value.value())?;
        let entry: IdempotencyEntry = from_json("idempotency entry", json)?;
        if entry.expires_at > now {
            result.push((key.to_string(), entry));
        }
    }
    Ok(result)
}

pub fn dlq(
    txn: &ReadTransaction,
    channel: Option<Channel>,
    cursor: Option<&str>,
    limit: usize,
) -> Result<Page<Delivery>, StoreError> {
    let limit = limit.max(1);
    let mut ids = Vec::with_capacity(limit + 1);
    match channel {
        None => {
            let dlq = txn.open_table(DLQ).map_err(db_error)?;
            let start = cursor.map_or(Bound::Unbounded, Bound::Excluded);
            for entry in dlq.range::<&str>((start, Bound::Unbounded)).map_err(db_error)?.take(limit + 1) {
                ids.push(entry.map_err(db_error)?.0.value().to_string());
            }
        }
        Some(channel) => {
            let by_channel = txn.open_table(DLQ_BY_CHANNEL).map_err(db_error)?;
            let channel = channel.as_str();
            let start = cursor.map_or(Bound::Included((channel, "")), |c| Bound::Excluded((channel, c)));
            let next = successor(channel);
            let end = Bound::Excluded((next.as_str(), ""));
            for entry in by_channel.range::<(&str, &str)>((start, end)).map_err(db_error)?.take(limit + 1) {
                ids.push(entry.map_err(db_error)?.0.value().1.to_string());
            }
        }
    }
    let deliveries = txn.open_table(DELIVERIES).map_err(db_error)?;
    let (items, next_cursor) = page(ids, limit, |id| {
        record(&deliveries, id, "delivery")?.ok_or_else(|| StoreError::Corrupt(format!("dlq names missing {id}")))
    })?;
    Ok(Page { items, next_cursor })
}

pub fn inbox(
    txn: &ReadTransaction,
    user_id: &str,
    cursor: Option<&str>,
    limit: usize,
    unread_only: bool,
) -> Result<(Page<InboxItem>, u64), StoreError> {
    let limit = limit.max(1);
    let next_user = successor(user_id);
    let bounds = (
        Bound::Included((user_id, "")),
        cursor.map_or(Bound::Excluded((next_user.as_str(), "")), |c| Bound::Excluded((user_id, c))),
    );
    let inbox = txn.open_table(INBOX).map_err(db_error)?;
    let mut ids = Vec::with_capacity(limit + 1);
    if unread_only {
        let unread = txn.open_table(INBOX_UNREAD).map_err(db_error)?;
        for entry in unread.range::<(&str, &str)>(bounds).map_err(db_error)?.rev().take(limit + 1) {
            ids.push(entry.map_err(db_error)?.0.value().1.to_string());
        }
    } else {
        for entry in inbox.range::<(&str, &str)>(bounds).map_err(db_error)?.rev().take(limit + 1) {
            ids.push(entry.map_err(db_error)?.0.value().1.to_string());
        }
    }
    let (items, next_cursor) = page(ids, limit, |id| {
        let value = inbox
            .get((user_id, id))
            .map_err(db_error)?
            .ok_or_else(|| StoreError::Corrupt(format!("unread index names missing inbox item {id}")))?;
        from_json("inbox item", value.value())
    })?;
    let unread_count = txn.open_table(UNREAD_COUNT).map_err(db_error)?.get(user_id).map_err(db_error)?;
    Ok((Page { items, next_cursor }, unread_count.map_or(0, |v| v.value())))
}

/// Reads the scheduled index from just after `after` while entries are due by `until_ms`.
pub fn scheduled(
    txn: &ReadTransaction,
    after: Option<&ScheduleCursor>,
    until_ms: i64,
    limit: usize,
) -> Result<Vec<Notification>, StoreError> {
    let index = txn.open_table(SCHEDULED).map_err(db_error)?;
    let notifications = txn.open_table(NOTIFICATIONS).map_err(db_error)?;
    let start = after.map_or(Bound::Unbounded, |c| Bound::Excluded((c.due_ms, c.id.as_str())));
    let mut result = Vec::with_capacity(limit.min(1024));
    for entry in index.range::<(i64, &str)>((start, Bound::Unbounded)).map_err(db_error)?.take(limit) {
        let (key, _) = entry.map_err(db_error)?;
        let (due_ms, id) = key.value();
        if due_ms > until_ms {
            break;
        }
        let notification = record(&notifications, id, "notification")?
            .ok_or_else(|| StoreError::Corrupt(format!("scheduled index names missing notification {id}")))?;
        result.push(notification);
    }
    Ok(result)
}

pub fn sequence(txn: &ReadTransaction, id: &str) -> Result<Option<Sequence>, StoreError> {
    record(&txn.open_table(SEQUENCES).map_err(db_error)?, id, "sequence")
}

pub fn open_sequences(txn: &ReadTransaction) -> Result<Vec<Sequence>, StoreError> {
    let open = txn.open_table(OPEN_SEQUENCES).map_err(db_error)?;
    let sequences = txn.open_table(SEQUENCES).map_err(db_error)?;
    let mut result = Vec::new();
    for entry in open.iter().map_err(db_error)? {
        let (id, _) = entry.map_err(db_error)?;
        let id = id.value();
        let sequence = record(&sequences, id, "sequence")?
            .ok_or_else(|| StoreError::Corrupt(format!("open sequence index names missing sequence {id}")))?;
        result.push(sequence);
    }
    Ok(result)
}

pub fn campaign(txn: &ReadTransaction, id: &str) -> Result<Option<Campaign>, StoreError> {
    let finals = txn.open_table(CAMPAIGN_FINALS).map_err(db_error)?;
    let campaign = record(&txn.open_table(CAMPAIGNS).map_err(db_error)?, id, "campaign")?;
    campaign.map(|c| with_finals(c, &finals)).transpose()
}

pub fn active_campaigns(txn: &ReadTransaction) -> Result<Vec<Campaign>, StoreError> {
    let active = txn.open_table(ACTIVE_CAMPAIGNS).map_err(db_error)?;
    let campaigns = txn.open_table(CAMPAIGNS).map_err(db_error)?;
    let finals = txn.open_table(CAMPAIGN_FINALS).map_err(db_error)?;
    let mut result = Vec::new();
    for entry in active.iter().map_err(db_error)? {
        let (id, _) = entry.map_err(db_error)?;
        let id = id.value();
        let campaign = record(&campaigns, id, "campaign")?
            .ok_or_else(|| StoreError::Corrupt(format!("active campaign index names missing campaign {id}")))?;
        result.push(with_finals(campaign, &finals)?);
    }
    Ok(result)
}

fn with_finals(
    mut campaign: Campaign,
    finals: &ReadOnlyTable<&'static str, (u64, u64, u64)>,
) -> Result<Campaign, StoreError> {
    if let Some(value) = finals.get(campaign.id.as_str()).map_err(db_error)? {
        let (completed, failed, cancelled) = value.value();
        campaign.finals = FinalCounts { completed, failed, cancelled };
    }
    Ok(campaign)
}

pub fn audience_page(txn: &ReadTransaction, id: &str, page: u32) -> Result<Option<Vec<String>>, StoreError> {
    let pages = txn.open_table(AUDIENCE_PAGES).map_err(db_error)?;
    pages.get((id, page)).map_err(db_error)?.map(|v| from_json("audience page", v.value())).transpose()
}

/// From the users table itself (keys only) for all users, from `users_by_tag` for a tag.
pub fn user_ids(
    txn: &ReadTransaction,
    after: Option<&str>,
    tag: Option<&str>,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let mut ids = Vec::with_capacity(limit.min(1024));
    match tag {
        None => {
            let users = txn.open_table(USERS).map_err(db_error)?;
            let start = after.map_or(Bound::Unbounded, Bound::Excluded);
            for entry in users.range::<&str>((start, Bound::Unbounded)).map_err(db_error)?.take(limit) {
                ids.push(entry.map_err(db_error)?.0.value().to_string());
            }
        }
        Some(tag) => {
            let by_tag = txn.open_table(USERS_BY_TAG).map_err(db_error)?;
            let start = after.map_or(Bound::Included((tag, "")), |a| Bound::Excluded((tag, a)));
            let next = successor(tag);
            let end = Bound::Excluded((next.as_str(), ""));
            for entry in by_tag.range::<(&str, &str)>((start, end)).map_err(db_error)?.take(limit) {
                ids.push(entry.map_err(db_error)?.0.value().1.to_string());
            }
        }
    }
    Ok(ids)
}

pub fn max_seq(txn: &ReadTransaction) -> Result<u64, StoreError> {
    Ok(txn.open_table(META).map_err(db_error)?.get(MAX_SEQ).map_err(db_error)?.map_or(0, |v| v.value()))
}

/// Loads the first `limit` of `ids` (which holds up to `limit + 1`); the cursor is set only if one was left.
fn page<T>(
    mut ids: Vec<String>,
    limit: usize,
    load: impl FnMut(&str) -> Result<T, StoreError>,
) -> Result<(Vec<T>, Option<String>), StoreError> {
    let more = ids.len() > limit;
    ids.truncate(limit);
    let items = ids.iter().map(String::as_str).map(load).collect::<Result<Vec<_>, _>>()?;
    let next_cursor = if more { ids.pop() } else { None };
    Ok((items, next_cursor))
}

fn record<T: serde::de::DeserializeOwned>(table: &Records, id: &str, what: &str) -> Result<Option<T>, StoreError> {
    table.get(id).map_err(db_error)?.map(|v| from_json(what, v.value())).transpose()
}

fn all_records<T: serde::de::DeserializeOwned>(table: &Records, what: &str) -> Result<Vec<T>, StoreError> {
    let mut result = Vec::new();
    for entry in table.iter().map_err(db_error)? {
        result.push(from_json(what, entry.map_err(db_error)?.1.value())?);
    }
    Ok(result)
}
