//! The redb table layout of the embedded store, the key helpers shared by the writer and the readers, and the
//! mapping of redb errors onto [`StoreError`].
//!
//! Records are stored as serde_json bytes; every other table is an index the writer derives from the records
//! (see `docs/store.md` for the layout and why each index exists).

use redb::{MultimapTableDefinition, TableDefinition};

use crate::store::StoreError;

/// User id → `User` (JSON).
pub const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// Template id → `Template` (JSON).
pub const TEMPLATES: TableDefinition<&str, &[u8]> = TableDefinition::new("templates");
/// Notification id → `Notification` (JSON).
pub const NOTIFICATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("notifications");
/// `seq` → notification id, for every notification whose status is not final.
pub const OPEN_BY_SEQ: TableDefinition<u64, &str> = TableDefinition::new("open_by_seq");
/// (due ms, notification id) of every notification whose status is `scheduled`: [`crate::store::Store::scheduled`]
/// pages through it in (due, id) order.
pub const SCHEDULED: TableDefinition<(i64, &str), ()> = TableDefinition::new("scheduled");
/// Scheduled notification id → its due ms: where its [`SCHEDULED`] entry is, so a status or `send_at` change
/// finds the old entry without decoding the old record.
pub const SCHEDULED_DUE: TableDefinition<&str, i64> = TableDefinition::new("scheduled_due");
/// Delivery id → `Delivery` (JSON).
pub const DELIVERIES: TableDefinition<&str, &[u8]> = TableDefinition::new("deliveries");
/// Notification id → its delivery ids (a multimap keeps the values sorted, so ids come back in id order).
pub const DELIVERIES_BY_NOTIFICATION: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("deliveries_by_notification");
/// Dead delivery id → its channel name: the DLQ in id (creation) order, and where to find its channel entry.
pub const DLQ: TableDefinition<&str, &str> = TableDefinition::new("dlq");
/// (channel name, dead delivery id): the DLQ of one channel, for filtered paging without a scan.
pub const DLQ_BY_CHANNEL: TableDefinition<(&str, &str), ()> = TableDefinition::new("dlq_by_channel");
/// Idempotency key → `[expiry ms: i64 BE] ++ IdempotencyEntry (JSON)`. The prefix lets the writer find the old
/// expiry index entry of a replaced key without decoding JSON.
pub const IDEMPOTENCY: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency");
/// (expiry in Unix ms, idempotency key): what the writer purges once it is in the past.
pub const IDEMPOTENCY_EXPIRY: TableDefinition<(i64, &str), ()> = TableDefinition::new("idempotency_expiry");
/// (user id, item id) → `InboxItem` (JSON). Item ids are UUIDv7 hex, so a reverse range is newest first.
pub const INBOX: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("inbox");
/// (user id, item id) of every unread inbox item, for `unread_only` pages and "mark all read".
pub const INBOX_UNREAD: TableDefinition<(&str, &str), ()> = TableDefinition::new("inbox_unread");
/// User id → number of unread inbox items (absent when zero).
pub const UNREAD_COUNT: TableDefinition<&str, u64> = TableDefinition::new("unread_count");
/// Sequence id → `Sequence` (JSON).
pub const SEQUENCES: TableDefinition<&str, &[u8]> = TableDefinition::new("sequences");
/// Ids of the sequences whose status is not final, in id (creation) order.
pub const OPEN_SEQUENCES: TableDefinition<&str, ()> = TableDefinition::new("open_sequences");
/// (tag, user id) of every tag a user carries: [`crate::store::Store::user_ids`] with a tag pages through it.
pub const USERS_BY_TAG: TableDefinition<(&str, &str), ()> = TableDefinition::new("users_by_tag");
/// (user id, tag): the same pairs the other way round, so a changed user's old tags are found without decoding
/// the old record.
pub const USER_TAGS: TableDefinition<(&str, &str), ()> = TableDefinition::new("user_tags");
/// Campaign id → `Campaign` (JSON).
pub const CAMPAIGNS: TableDefinition<&str, &[u8]> = TableDefinition::new("campaigns");
/// Ids of the campaigns whose status is active (scheduled, running, paused), in id (creation) order.
pub const ACTIVE_CAMPAIGNS: TableDefinition<&str, ()> = TableDefinition::new("active_campaigns");
/// (campaign id, page) → the page's user ids (JSON array), while the campaign is active.
pub const AUDIENCE_PAGES: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("audience_pages");
/// Campaign id → (completed, failed, cancelled): its notifications' final statuses.
pub const CAMPAIGN_FINALS: TableDefinition<&str, (u64, u64, u64)> = TableDefinition::new("campaign_finals");
/// Small named counters: [`MAX_SEQ`], [`WAL_APPLIED`].
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Key in [`META`] of the highest notification `seq` ever put.
pub const MAX_SEQ: &str = "max_seq";
/// Key in [`META`] of the last write-ahead log record applied (see `wal/`): replay at start skips up to it.
pub const WAL_APPLIED: &str = "wal_applied";

/// The immediate successor of `s` in byte order (`s` + NUL), so `(s, "")..(successor(s), "")` covers exactly the
/// tuple keys whose first element is `s`.
pub fn successor(s: &str) -> String {
    let mut next = String::with_capacity(s.len() + 1);
    next.push_str(s);
    next.push('\0');
    next
}

/// Encodes an idempotency value: the expiry prefix, then the entry's JSON.
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

/// Maps a redb error: corruption and schema mismatches are `Corrupt`, everything else (I/O, a closed or
/// poisoned database) is `Unavailable`.
pub fn db_error(err: impl Into<redb::Error>) -> StoreError {
    let err: redb::Error = err.into();
    match err {
        redb::Error::Corrupted(_)
        | redb::Error::TableTypeMismatch { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TableIsNotMultimap(_)
        | redb::Error::TypeDefinitionChanged { .. }
        | redb::Error::UpgradeRequired(_) => StoreError::Corrupt(err.to_string()),
        _ => StoreError::Unavailable(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successor_bounds_exactly_one_users_keys() {
        let next = successor("u1");
        assert!(("u1", "ffff") < (next.as_str(), ""));
        assert!(("u1\u{1}", "") > (next.as_str(), ""));
        assert!(("u10", "") > (next.as_str(), ""));
        assert!(("u1", "") < (next.as_str(), ""));
    }

    #[test]
    fn idempotency_values_round_trip_and_short_ones_are_corrupt() {
        let value = idempotency_value(-5, b"{}");
        assert_eq!(split_idempotency_value(&value).unwrap(), (-5, &b"{}"[..]));
        assert!(matches!(split_idempotency_value(b"1234"), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn redb_errors_map_to_store_errors() {
        assert!(matches!(db_error(redb::StorageError::Corrupted("x".into())), StoreError::Corrupt(_)));
        let io = redb::StorageError::Io(std::io::Error::other("disk gone"));
        assert!(matches!(db_error(io), StoreError::Unavailable(_)));
    }
}
