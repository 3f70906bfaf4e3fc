//! Importing the store of an earlier Herald: until the record segments, the embedded store applied its log to a
//! redb file (`herald.redb`). Opening a data directory that has that file and no segments copies every record
//! of it into a first segment, with a checkpoint mark at the file's last applied log LSN, so the log it left
//! is replayed on top as usual; then the file is renamed `herald.redb.imported` (kept, not deleted).
//!
//! The import reads only the record tables: the new indexes are derived from the records, as for any put.
//! It writes into `records.importing/` and renames that to `records/` once it is synced, so a crash during
//! the import leaves the redb file in charge and the next start imports again.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;

use super::apply::State;
use super::encode::{Op, encode, from_json, split_idempotency_value};
use super::index::Index;
use super::segments::{Scanned, Segments};
use crate::domain::{Campaign, Delivery, FinalCounts, InboxItem, Notification, Sequence, User};
use crate::store::{StoreError, Write};

/// The earlier store's file inside the data directory.
pub const FILE_NAME: &str = "herald.redb";
const IMPORTED_SUFFIX: &str = ".imported";
/// Frames appended before each flush, to keep the buffer small.
const FLUSH_EVERY: usize = 10_000;

// The record tables of the earlier layout (its other tables were indexes).
pub(super) const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
pub(super) const TEMPLATES: TableDefinition<&str, &[u8]> = TableDefinition::new("templates");
pub(super) const NOTIFICATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("notifications");
pub(super) const DELIVERIES: TableDefinition<&str, &[u8]> = TableDefinition::new("deliveries");
/// Key → expiry ms (8 bytes, big-endian) ++ entry JSON: the value the log's idempotency op carries.
pub(super) const IDEMPOTENCY: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency");
pub(super) const INBOX: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("inbox");
pub(super) const SEQUENCES: TableDefinition<&str, &[u8]> = TableDefinition::new("sequences");
pub(super) const CAMPAIGNS: TableDefinition<&str, &[u8]> = TableDefinition::new("campaigns");
/// Pages of active campaigns only (an ended campaign's pages were deleted).
pub(super) const AUDIENCE_PAGES: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("audience_pages");
pub(super) const CAMPAIGN_FINALS: TableDefinition<&str, (u64, u64, u64)> = TableDefinition::new("campaign_finals");
/// `max_seq` and `wal_applied`.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Imports `dir/herald.redb` into `records_dir` if the file is there and the segments are not.
pub fn import_redb_if_present(dir: &Path, records_dir: &Path) -> Result<(), StoreError> {
    let path = dir.join(FILE_NAME);
    if !path.exists() || records_dir.exists() {
        return Ok(());
    }
    let staging = records_dir.with_extension("importing");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| io_error(&staging, e))?;
    }
    let db = Database::open(&path).map_err(|e| db_error(&path, e))?;
    let txn = db.begin_read().map_err(|e| db_error(&path, e))?;
    let mut state = State { index: Index::default(), segments: Segments::open(&staging, &mut Index::default())?.0 };
    let records = copy_records(&txn, &mut state).map_err(|e| match e {
        StoreError::Corrupt(why) => StoreError::Corrupt(format!("importing {}: {why}", path.display())),
        other => other,
    })?;
    let meta = |key| -> Result<u64, StoreError> {
        let table = txn.open_table(META).map_err(|e| db_error(&path, e))?;
        Ok(table.get(key).map_err(|e| db_error(&path, e))?.map_or(0, |v| v.value()))
    };
    let mark = Scanned { lsn: meta("wal_applied")?, max_seq: meta("max_seq")?.max(state.index.max_seq) };
    state.segments.append_mark(mark);
    state.segments.flush()?;
    state.segments.active_file().sync_all().map_err(|e| io_error(&staging, e))?;
    drop((state, txn, db));
    std::fs::rename(&staging, records_dir).map_err(|e| io_error(records_dir, e))?;
    let imported = dir.join(format!("{FILE_NAME}{IMPORTED_SUFFIX}"));
    std::fs::rename(&path, &imported).map_err(|e| io_error(&imported, e))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_error(dir, e))?;
    tracing::info!(records, lsn = mark.lsn, from = %path.display(), "imported the store of an earlier Herald");
    Ok(())
}

/// Appends every record of the file as the op that would have put it; returns how many.
fn copy_records(txn: &ReadTransaction, state: &mut State) -> Result<usize, StoreError> {
    let mut count = 0;
    let mut put = |state: &mut State, op: Op| -> Result<(), StoreError> {
        state.store(&op, &mut Vec::new());
        count += 1;
        if count % FLUSH_EVERY == 0 {
            state.segments.flush()?;
        }
        Ok(())
    };
    let from_write = |write: Write| encode(vec![write]).map(|mut ops| ops.remove(0));
    for_each::<User>(txn, USERS, "user", |user| put(state, from_write(Write::PutUser(Arc::new(user)))?))?;
    let templates = txn.open_table(TEMPLATES).map_err(table_error)?;
    for entry in templates.iter().map_err(table_error)? {
        let (id, value) = entry.map_err(table_error)?;
        put(state, Op::Template { id: id.value().to_string(), value: value.value().to_vec() })?;
    }
    for_each::<Notification>(txn, NOTIFICATIONS, "notification", |n| {
        put(state, from_write(Write::PutNotification(Arc::new(n)))?)
    })?;
    for_each::<Delivery>(txn, DELIVERIES, "delivery", |d| put(state, from_write(Write::PutDelivery(Arc::new(d)))?))?;
    let idempotency = txn.open_table(IDEMPOTENCY).map_err(table_error)?;
    for entry in idempotency.iter().map_err(table_error)? {
        let (key, value) = entry.map_err(table_error)?;
        let (expiry_ms, _) = split_idempotency_value(value.value())?;
        put(state, Op::Idempotency { key: key.value().to_string(), expiry_ms, value: value.value().to_vec() })?;
    }
    let inbox = txn.open_table(INBOX).map_err(table_error)?;
    for entry in inbox.iter().map_err(table_error)? {
        let item: InboxItem = from_json("inbox item", entry.map_err(table_error)?.1.value())?;
        put(state, from_write(Write::PutInboxItem(Arc::new(item)))?)?;
    }
    for_each::<Sequence>(txn, SEQUENCES, "sequence", |s| put(state, from_write(Write::PutSequence(Arc::new(s)))?))?;
    for_each::<Campaign>(txn, CAMPAIGNS, "campaign", |c| put(state, from_write(Write::PutCampaign(Arc::new(c)))?))?;
    let pages = txn.open_table(AUDIENCE_PAGES).map_err(table_error)?;
    for entry in pages.iter().map_err(table_error)? {
        let (key, value) = entry.map_err(table_error)?;
        let (campaign, page) = key.value();
        put(state, Op::AudiencePage { campaign: campaign.to_string(), page, value: value.value().to_vec() })?;
    }
    let finals = txn.open_table(CAMPAIGN_FINALS).map_err(table_error)?;
    for entry in finals.iter().map_err(table_error)? {
        let (campaign, counts) = entry.map_err(table_error)?;
        let (completed, failed, cancelled) = counts.value();
        let counts = FinalCounts { completed, failed, cancelled };
        put(state, Op::CampaignCounts { campaign: campaign.value().to_string(), counts })?;
    }
    Ok(count)
}

/// Decodes every record of `table` and passes it to `f`.
fn for_each<T: DeserializeOwned>(
    txn: &ReadTransaction,
    table: TableDefinition<&str, &[u8]>,
    what: &str,
    mut f: impl FnMut(T) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let table: ReadOnlyTable<&str, &[u8]> = txn.open_table(table).map_err(table_error)?;
    for entry in table.iter().map_err(table_error)? {
        f(from_json(what, entry.map_err(table_error)?.1.value())?)?;
    }
    Ok(())
}

/// A table missing from the file (an older layout without it) reads as an error too: the file is not one the
/// import knows.
fn table_error(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Corrupt(e.into().to_string())
}

fn db_error(path: &Path, e: impl Into<redb::Error>) -> StoreError {
    StoreError::Unavailable(format!("cannot read {}: {}", path.display(), e.into()))
}

fn io_error(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("importing into {}: {e}", path.display()))
}

/// Writes a redb file of the earlier layout for the tests: every record table, then what `write` puts.
#[cfg(test)]
pub(super) fn write_earlier_store(path: &Path, write: impl FnOnce(&redb::WriteTransaction)) {
    let db = Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(USERS).unwrap();
    txn.open_table(TEMPLATES).unwrap();
    txn.open_table(NOTIFICATIONS).unwrap();
    txn.open_table(DELIVERIES).unwrap();
    txn.open_table(IDEMPOTENCY).unwrap();
    txn.open_table(INBOX).unwrap();
    txn.open_table(SEQUENCES).unwrap();
    txn.open_table(CAMPAIGNS).unwrap();
    txn.open_table(AUDIENCE_PAGES).unwrap();
    txn.open_table(CAMPAIGN_FINALS).unwrap();
    txn.open_table(META).unwrap();
    write(&txn);
    txn.commit().unwrap();
}
