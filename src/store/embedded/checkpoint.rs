//! The checkpointer thread: applies what the writer logged to redb, in the background.
//!
//! It collects logged records for up to [`INTERVAL`] (or [`MAX_OPS`] ops, or until a read asks for them),
//! keeps only the last of several puts of one record ([`coalesce`]: a push that is fired and sent within one
//! checkpoint is written once, not twice per record), applies them in one durable transaction that also
//! records the last LSN applied, publishes that LSN, which reads wait for (a read sees every write
//! acknowledged before it started), and deletes the log segments the checkpoint covers. After a crash, replay
//! resumes from the last checkpoint. (Non-durable redb commits in between were tried: redb keeps their pages in
//! its write buffer until a durable one, so checkpoints grew slower the longer they ran.)
//!
//! An op that fails because the record it reads back is corrupt is logged and skipped (the write was already
//! acknowledged; refusing it would wedge every later one). Any other failure (I/O) is retried with a growing
//! pause; while it lasts, reads and `health` answer `Unavailable`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use redb::Database;
use tokio::sync::watch;

use super::apply;
use super::encode::Op;
use super::wal;

/// Ops applied in one transaction at most (a record is never split, so one may overshoot): redb keeps a
/// transaction's dirty pages in its write buffer (half of `store.cache_mb`), and a transaction that outgrows it
/// writes pages out and reads them back.
pub const MAX_OPS: usize = 20_000;
/// How long records are collected before they are applied, unless a read is waiting for them.
pub const INTERVAL: Duration = Duration::from_millis(200);
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// One record of the log, as the writer hands it over once it is durable.
pub struct Logged {
    pub lsn: u64,
    pub ops: Vec<Op>,
}

/// What the checkpointer's queue carries.
pub enum Msg {
    Logged(Logged),
    /// A read waits for what is collected: apply it now.
    Wake,
}

/// What the checkpointer shares with the store handle.
pub struct Progress {
    /// The last LSN applied (visible to reads).
    pub applied: watch::Sender<u64>,
    /// A checkpoint is failing and being retried.
    pub failing: AtomicBool,
    /// The store is being dropped: stop retrying a failing checkpoint.
    pub closing: AtomicBool,
}

/// The checkpointer's loop. Returns when the writer is gone and everything it logged is applied durably.
pub fn run(db: Arc<Database>, queue: Receiver<Msg>, wal_dir: PathBuf, progress: Arc<Progress>) {
    let mut open = true;
    while open {
        let first = match queue.recv() {
            Ok(Msg::Logged(first)) => first,
            Ok(Msg::Wake) => continue,
            Err(_) => break,
        };
        let deadline = Instant::now() + INTERVAL;
        let mut ops = first.ops.len();
        let mut batch = vec![first];
        while ops < MAX_OPS {
            match queue.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Msg::Logged(next)) => {
                    ops += next.ops.len();
                    batch.push(next);
                }
                Ok(Msg::Wake) | Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        let started = Instant::now();
        let Some(applied) = apply_with_retries(&db, &batch, &progress) else { return };
        let lsn = batch.last().expect("one record at least").lsn;
        let ms = started.elapsed().as_millis() as u64;
        tracing::debug!(records = batch.len(), ops, applied, ms, "checkpoint");
        progress.applied.send_replace(lsn);
        trim(&wal_dir, lsn);
    }
}

fn trim(wal_dir: &std::path::Path, lsn: u64) {
    if let Err(e) = wal::remove_through(wal_dir, lsn) {
        tracing::warn!(error = %e, "could not delete covered write-ahead log segments");
    }
}

/// Applies `batch`, retrying failures other than corrupt records until it lands, and returns how many ops it
/// applied after coalescing; None if the store closed while it was still failing (its records stay in the log
/// for the next start).
fn apply_with_retries(db: &Database, batch: &[Logged], progress: &Progress) -> Option<usize> {
    let ops = coalesce(batch);
    let lsn = batch.last().expect("one record at least").lsn;
    let mut pause = RETRY_FIRST;
    loop {
        match apply::commit_skipping_corrupt(db, &ops, lsn) {
            Ok(applied) => {
                progress.failing.store(false, Ordering::Relaxed);
                return Some(applied);
            }
            Err(error) => {
                tracing::error!(%error, "checkpoint failed; retrying (the write-ahead log keeps the writes)");
                progress.failing.store(true, Ordering::Relaxed);
                if progress.closing.load(Ordering::Relaxed) {
                    return None;
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(RETRY_MAX);
            }
        }
    }
}

/// The ops of `batch` in order, where a put of a record that a later op of the batch puts again is left out.
/// Puts replace the whole record and the index upkeep reads the old state from the database, so applying only
/// the last one ends in the same state. Ops that add to or edit what is stored (inbox items and read marks,
/// audience pages, campaign counts) are all kept, in order.
pub fn coalesce(batch: &[Logged]) -> Vec<&Op> {
    let total = batch.iter().map(|l| l.ops.len()).sum();
    let mut ops: Vec<Option<&Op>> = Vec::with_capacity(total);
    let mut last: HashMap<(u8, &str), usize> = HashMap::with_capacity(total);
    for op in batch.iter().flat_map(|l| &l.ops) {
        if let Some(key) = record_key(op)
            && let Some(earlier) = last.insert(key, ops.len())
        {
            ops[earlier] = None;
        }
        ops.push(Some(op));
    }
    ops.into_iter().flatten().collect()
}

/// The record a whole-record put replaces, as (kind, id); None for ops that are not such puts.
fn record_key(op: &Op) -> Option<(u8, &str)> {
    Some(match op {
        Op::User { id, .. } => (0, id),
        Op::Template { id, .. } => (1, id),
        Op::Notification { id, .. } => (2, id),
        Op::Delivery { id, .. } => (3, id),
        Op::Idempotency { key, .. } => (4, key),
        Op::Sequence { id, .. } => (5, id),
        Op::Campaign { id, .. } => (6, id),
        Op::InboxItem { .. }
        | Op::MarkRead { .. }
        | Op::MarkAllRead { .. }
        | Op::AudiencePage { .. }
        | Op::CampaignFinal { .. } => return None,
    })
}
