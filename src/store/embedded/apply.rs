//! Applying logged ops to redb: the tables of one write transaction and the index upkeep of every op. Callers
//! never write index entries; this is the only code that does. The checkpointer (`checkpoint.rs`) and the replay
//! at start (`mod.rs`) apply through [`commit`].

use jiff::Timestamp;
use redb::{Database, Durability, MultimapTable, ReadableTable, Table, WriteTransaction};

use super::encode::{Op, from_json, to_json};
use super::tables::*;
use crate::domain::{FinalCounts, InboxItem, NotificationStatus};
use crate::store::StoreError;

/// Expired idempotency entries removed per commit at most, so purging never makes one commit slow.
const PURGE_PER_COMMIT: usize = 64;

/// Why [`commit`] failed: the error, and the op that caused it when one did (its index in the `ops` given).
#[derive(Debug)]
pub struct ApplyError {
    pub op: Option<usize>,
    pub error: StoreError,
}

impl From<StoreError> for ApplyError {
    fn from(error: StoreError) -> Self {
        ApplyError { op: None, error }
    }
}

/// Applies `ops` (skipping the indexes in `skip`) in one transaction that also records `wal_lsn` as applied,
/// and commits it with `durability`. Dropping the transaction on error aborts all of it.
pub fn commit(
    db: &Database,
    ops: &[&Op],
    skip: &[usize],
    wal_lsn: u64,
    durability: Durability,
    now: Timestamp,
) -> Result<(), ApplyError> {
    let mut txn = db.begin_write().map_err(db_error)?;
    txn.set_durability(durability).map_err(db_error)?;
    {
        let mut tables = WriteTables::open(&txn)?;
        for (index, op) in ops.iter().enumerate() {
            if skip.contains(&index) {
                continue;
            }
            tables.apply(op).map_err(|error| ApplyError { op: Some(index), error })?;
        }
        tables.purge_expired_idempotency(now, PURGE_PER_COMMIT)?;
        tables.save_max_seq()?;
        tables.meta.insert(WAL_APPLIED, wal_lsn).map_err(db_error)?;
    }
    txn.commit().map_err(db_error)?;
    Ok(())
}

/// Commits `ops` durably as applied through `wal_lsn`, leaving out each op that fails because a record it reads
/// back is corrupt (with an error in the log: the write was acknowledged already, and refusing it would wedge
/// every later one); returns how many ops were applied. Other failures are returned.
pub fn commit_skipping_corrupt(db: &Database, ops: &[&Op], wal_lsn: u64) -> Result<usize, StoreError> {
    let mut skip = Vec::new();
    loop {
        match commit(db, ops, &skip, wal_lsn, Durability::Immediate, Timestamp::now()) {
            Ok(()) => return Ok(ops.len() - skip.len()),
            Err(ApplyError { op: Some(index), error: StoreError::Corrupt(reason) }) => {
                tracing::error!(%reason, "a logged write reads back a corrupt record; skipped");
                skip.push(index);
            }
            Err(e) => return Err(e.error),
        }
    }
}

/// The last write-ahead log record applied to the database (0 for none).
pub fn wal_applied(db: &Database) -> Result<u64, StoreError> {
    use redb::ReadableDatabase;
    let txn = db.begin_read().map_err(db_error)?;
    Ok(txn.open_table(META).map_err(db_error)?.get(WAL_APPLIED).map_err(db_error)?.map_or(0, |v| v.value()))
}

/// Creates every table, so that readers of a fresh file find them.
pub fn create_tables(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(db_error)?;
    WriteTables::open(&txn)?;
    txn.commit().map_err(db_error)
}

type Records<'txn> = Table<'txn, &'static str, &'static [u8]>;
type PairSet<'txn> = Table<'txn, (&'static str, &'static str), ()>;

/// Every table, opened once per transaction.
struct WriteTables<'txn> {
    users: Records<'txn>,
    templates: Records<'txn>,
    notifications: Records<'txn>,
    open_by_seq: Table<'txn, u64, &'static str>,
    scheduled: Table<'txn, (i64, &'static str), ()>,
    scheduled_due: Table<'txn, &'static str, i64>,
    deliveries: Records<'txn>,
    deliveries_by_notification: MultimapTable<'txn, &'static str, &'static str>,
    dlq: Table<'txn, &'static str, &'static str>,
    dlq_by_channel: PairSet<'txn>,
    idempotency: Records<'txn>,
    idempotency_expiry: Table<'txn, (i64, &'static str), ()>,
    inbox: Table<'txn, (&'static str, &'static str), &'static [u8]>,
    inbox_unread: PairSet<'txn>,
    unread_count: Table<'txn, &'static str, u64>,
    sequences: Records<'txn>,
    open_sequences: Table<'txn, &'static str, ()>,
    users_by_tag: PairSet<'txn>,
    user_tags: PairSet<'txn>,
    campaigns: Records<'txn>,
    active_campaigns: Table<'txn, &'static str, ()>,
    audience_pages: Table<'txn, (&'static str, u32), &'static [u8]>,
    campaign_finals: Table<'txn, &'static str, (u64, u64, u64)>,
    meta: Table<'txn, &'static str, u64>,
    max_seq: u64,
    max_seq_stored: u64,
}

impl<'txn> WriteTables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        let meta = txn.open_table(META).map_err(db_error)?;
        let max_seq = meta.get(MAX_SEQ).map_err(db_error)?.map_or(0, |v| v.value());
        Ok(WriteTables {
            users: txn.open_table(USERS).map_err(db_error)?,
            templates: txn.open_table(TEMPLATES).map_err(db_error)?,
            notifications: txn.open_table(NOTIFICATIONS).map_err(db_error)?,
            open_by_seq: txn.open_table(OPEN_BY_SEQ).map_err(db_error)?,
            scheduled: txn.open_table(SCHEDULED).map_err(db_error)?,
            scheduled_due: txn.open_table(SCHEDULED_DUE).map_err(db_error)?,
            deliveries: txn.open_table(DELIVERIES).map_err(db_error)?,
            deliveries_by_notification: txn.open_multimap_table(DELIVERIES_BY_NOTIFICATION).map_err(db_error)?,
            dlq: txn.open_table(DLQ).map_err(db_error)?,
            dlq_by_channel: txn.open_table(DLQ_BY_CHANNEL).map_err(db_error)?,
            idempotency: txn.open_table(IDEMPOTENCY).map_err(db_error)?,
            idempotency_expiry: txn.open_table(IDEMPOTENCY_EXPIRY).map_err(db_error)?,
            inbox: txn.open_table(INBOX).map_err(db_error)?,
            inbox_unread: txn.open_table(INBOX_UNREAD).map_err(db_error)?,
            unread_count: txn.open_table(UNREAD_COUNT).map_err(db_error)?,
            sequences: txn.open_table(SEQUENCES).map_err(db_error)?,
            open_sequences: txn.open_table(OPEN_SEQUENCES).map_err(db_error)?,
            users_by_tag: txn.open_table(USERS_BY_TAG).map_err(db_error)?,
            user_tags: txn.open_table(USER_TAGS).map_err(db_error)?,
            campaigns: txn.open_table(CAMPAIGNS).map_err(db_error)?,
            active_campaigns: txn.open_table(ACTIVE_CAMPAIGNS).map_err(db_error)?,
            audience_pages: txn.open_table(AUDIENCE_PAGES).map_err(db_error)?,
            campaign_finals: txn.open_table(CAMPAIGN_FINALS).map_err(db_error)?,
            meta,
            max_seq,
            max_seq_stored: max_seq,
        })
    }

    fn apply(&mut self, op: &Op) -> Result<(), StoreError> {
        match op {
            Op::User { id, tags, json } => {
                put(&mut self.users, id, json)?;
                self.retag(id, tags)
            }
            Op::Template { id, json } => put(&mut self.templates, id, json),
            Op::Notification { id, seq, open, scheduled, json } => {
                self.put_notification(id, *seq, *open, json)?;
                self.schedule(id, *scheduled)
            }
            Op::Delivery { id, notification_id, channel, dead, json } => {
                self.put_delivery(id, notification_id, channel, *dead, json)
            }
            Op::Idempotency { key, expiry_ms, value } => self.put_idempotency(key, *expiry_ms, value),
            Op::InboxItem { user_id, id, unread, json } => self.put_inbox_item(user_id, id, *unread, json),
            Op::MarkRead { user_id, ids, at } => ids.iter().try_for_each(|id| self.mark_read(user_id, id, *at)),
            Op::MarkAllRead { user_id, at } => {
                let next = successor(user_id);
                let unread: Vec<String> = self
                    .inbox_unread
                    .range::<(&str, &str)>((user_id.as_str(), "")..(next.as_str(), ""))
                    .map_err(db_error)?
                    .map(|entry| entry.map(|(key, _)| key.value().1.to_string()))
                    .collect::<Result<_, _>>()
                    .map_err(db_error)?;
                unread.iter().try_for_each(|id| self.mark_read(user_id, id, *at))
            }
            Op::Sequence { id, open, json } => {
                put(&mut self.sequences, id, json)?;
                if *open {
                    self.open_sequences.insert(id.as_str(), ())
                } else {
                    self.open_sequences.remove(id.as_str())
                }
                .map(drop)
                .map_err(db_error)
            }
            Op::Campaign { id, active, json } => self.put_campaign(id, *active, json),
            Op::AudiencePage { campaign, page, json } => {
                self.audience_pages.insert((campaign.as_str(), *page), json.as_slice()).map(drop).map_err(db_error)
            }
            Op::CampaignFinal { campaign, status, delta } => self.count_final(campaign, *status, *delta),
        }
    }

    /// Makes the tag index say exactly `tags` for user `id`, finding the old tags through `user_tags`.
    fn retag(&mut self, id: &str, tags: &[String]) -> Result<(), StoreError> {
        let next = successor(id);
        let old: Vec<String> = self
            .user_tags
            .range::<(&str, &str)>((id, "")..(next.as_str(), ""))
            .map_err(db_error)?
            .map(|entry| entry.map(|(key, _)| key.value().1.to_string()))
            .collect::<Result<_, _>>()
            .map_err(db_error)?;
        for tag in old.iter().filter(|t| !tags.contains(t)) {
            self.user_tags.remove((id, tag.as_str())).map_err(db_error)?;
            self.users_by_tag.remove((tag.as_str(), id)).map_err(db_error)?;
        }
        for tag in tags.iter().filter(|t| !old.contains(t)) {
            self.user_tags.insert((id, tag.as_str()), ()).map_err(db_error)?;
            self.users_by_tag.insert((tag.as_str(), id), ()).map_err(db_error)?;
        }
        Ok(())
    }

    /// Puts the record; an active campaign is in `active_campaigns`, one that ended loses its audience pages.
    fn put_campaign(&mut self, id: &str, active: bool, json: &[u8]) -> Result<(), StoreError> {
        put(&mut self.campaigns, id, json)?;
        if active {
            self.active_campaigns.insert(id, ()).map_err(db_error)?;
            return Ok(());
        }
        self.active_campaigns.remove(id).map_err(db_error)?;
        let pages: Vec<u32> = self
            .audience_pages
            .range::<(&str, u32)>((id, 0)..=(id, u32::MAX))
            .map_err(db_error)?
            .map(|entry| entry.map(|(key, _)| key.value().1))
            .collect::<Result<_, _>>()
            .map_err(db_error)?;
        for page in pages {
            self.audience_pages.remove((id, page)).map_err(db_error)?;
        }
        Ok(())
    }

    fn count_final(&mut self, campaign: &str, status: NotificationStatus, delta: i64) -> Result<(), StoreError> {
        let (completed, failed, cancelled) =
            self.campaign_finals.get(campaign).map_err(db_error)?.map_or((0, 0, 0), |v| v.value());
        let mut counts = FinalCounts { completed, failed, cancelled };
        counts.add(status, delta);
        let value = (counts.completed, counts.failed, counts.cancelled);
        self.campaign_finals.insert(campaign, value).map(drop).map_err(db_error)
    }

    fn put_notification(&mut self, id: &str, seq: u64, open: bool, json: &[u8]) -> Result<(), StoreError> {
        put(&mut self.notifications, id, json)?;
        if open {
            self.open_by_seq.insert(seq, id).map_err(db_error)?;
        } else {
            // Only this notification's own entry: a seq is assigned once and never reused.
            let indexed = self.open_by_seq.get(seq).map_err(db_error)?.is_some_and(|v| v.value() == id);
            if indexed {
                self.open_by_seq.remove(seq).map_err(db_error)?;
            }
        }
        self.max_seq = self.max_seq.max(seq);
        Ok(())
    }

    /// Keeps the notification's scheduled index entry at `due_ms`, or removes it when it is not scheduled (any
    /// more). The old entry is found through `scheduled_due`, so a changed `send_at` moves it.
    fn schedule(&mut self, id: &str, due_ms: Option<i64>) -> Result<(), StoreError> {
        let old = match due_ms {
            Some(due_ms) => self.scheduled_due.insert(id, due_ms),
            None => self.scheduled_due.remove(id),
        }
        .map_err(db_error)?
        .map(|old| old.value());
        if let Some(old) = old
            && Some(old) != due_ms
        {
            self.scheduled.remove((old, id)).map_err(db_error)?;
        }
        if let Some(due_ms) = due_ms {
            self.scheduled.insert((due_ms, id), ()).map_err(db_error)?;
        }
        Ok(())
    }

    fn put_delivery(
        &mut self,
        id: &str,
        notification_id: &str,
        channel: &str,
        dead: bool,
        json: &[u8],
    ) -> Result<(), StoreError> {
        put(&mut self.deliveries, id, json)?;
        self.deliveries_by_notification.insert(notification_id, id).map_err(db_error)?;
        let previous = if dead { self.dlq.insert(id, channel) } else { self.dlq.remove(id) }
            .map_err(db_error)?
            .map(|old| old.value().to_string());
        if let Some(old_channel) = previous
            && !(dead && old_channel == channel)
        {
            self.dlq_by_channel.remove((old_channel.as_str(), id)).map_err(db_error)?;
        }
        if dead {
            self.dlq_by_channel.insert((channel, id), ()).map_err(db_error)?;
        }
        Ok(())
    }

    fn put_idempotency(&mut self, key: &str, expiry_ms: i64, value: &[u8]) -> Result<(), StoreError> {
        let old = self.idempotency.insert(key, value).map_err(db_error)?.map(|old| old.value().to_vec());
        if let Some(old) = old {
            let (old_expiry, _) = split_idempotency_value(&old)?;
            self.idempotency_expiry.remove((old_expiry, key)).map_err(db_error)?;
        }
        self.idempotency_expiry.insert((expiry_ms, key), ()).map_err(db_error)?;
        Ok(())
    }

    fn put_inbox_item(&mut self, user_id: &str, id: &str, unread: bool, json: &[u8]) -> Result<(), StoreError> {
        self.inbox.insert((user_id, id), json).map_err(db_error)?;
        let was_unread =
            if unread { self.inbox_unread.insert((user_id, id), ()) } else { self.inbox_unread.remove((user_id, id)) }
                .map_err(db_error)?
                .is_some();
        match (was_unread, unread) {
            (false, true) => self.add_unread(user_id, 1),
            (true, false) => self.add_unread(user_id, -1),
            _ => Ok(()),
        }
    }

    /// Marks one item read; unknown and already-read items are left alone.
    fn mark_read(&mut self, user_id: &str, id: &str, at: Timestamp) -> Result<(), StoreError> {
        let was_unread = self.inbox_unread.remove((user_id, id)).map_err(db_error)?.is_some();
        if !was_unread {
            return Ok(());
        }
        let stored = self.inbox.get((user_id, id)).map_err(db_error)?.map(|v| v.value().to_vec());
        if let Some(bytes) = stored {
            let mut item: InboxItem = from_json("inbox item", &bytes)?;
            item.read_at = Some(at);
            self.inbox.insert((user_id, id), to_json(&item)?.as_slice()).map_err(db_error)?;
        }
        self.add_unread(user_id, -1)
    }

    fn add_unread(&mut self, user_id: &str, delta: i64) -> Result<(), StoreError> {
        let current = self.unread_count.get(user_id).map_err(db_error)?.map_or(0, |v| v.value());
        let next = current.saturating_add_signed(delta);
        if next == 0 {
            self.unread_count.remove(user_id).map_err(db_error)?;
        } else {
            self.unread_count.insert(user_id, next).map_err(db_error)?;
        }
        Ok(())
    }

    /// Removes up to `max` idempotency entries that expired before `now` (to the millisecond, conservatively).
    fn purge_expired_idempotency(&mut self, now: Timestamp, max: usize) -> Result<(), StoreError> {
        let now_ms = now.as_millisecond();
        let expired: Vec<(i64, String)> = self
            .idempotency_expiry
            .range::<(i64, &str)>(..(now_ms, ""))
            .map_err(db_error)?
            .take(max)
            .map(|entry| entry.map(|(key, _)| (key.value().0, key.value().1.to_string())))
            .collect::<Result<_, _>>()
            .map_err(db_error)?;
        for (expiry, key) in expired {
            self.idempotency_expiry.remove((expiry, key.as_str())).map_err(db_error)?;
            self.idempotency.remove(key.as_str()).map_err(db_error)?;
        }
        Ok(())
    }

    fn save_max_seq(&mut self) -> Result<(), StoreError> {
        if self.max_seq != self.max_seq_stored {
            self.meta.insert(MAX_SEQ, self.max_seq).map_err(db_error)?;
            self.max_seq_stored = self.max_seq;
        }
        Ok(())
    }
}

fn put(table: &mut Records<'_>, id: &str, json: &[u8]) -> Result<(), StoreError> {
    table.insert(id, json).map(drop).map_err(db_error)
}
