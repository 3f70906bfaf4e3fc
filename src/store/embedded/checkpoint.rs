//! The checkpointer thread: applies what the writer logged to the record segments and the index, in the
//! background.
//!
//! It collects logged records for up to [`INTERVAL`] (or [`MAX_OPS`] ops, or until a read asks for them),
//! keeps only the last of several puts of one record ([`coalesce`]: a push that is fired and sent within one
//! checkpoint is stored once, not twice per record), appends them with a checkpoint mark to the newest segment
//! and points the index at them (`apply.rs`), and publishes the LSN, which reads wait for (a read sees every
//! write acknowledged before it started). At most every [`SYNC_EVERY`] it syncs the segment and deletes the log
//! segments that synced checkpoints cover, then starts a new segment when the newest is full and compacts one
//! mostly-dead segment (`compact.rs`). After a crash, replay resumes from the last mark that made it to disk;
//! the log still holds everything after the last synced one.
//!
//! A failed write of the segment is retried with a growing pause; while it lasts, reads and `health` answer
//! `Unavailable`. A failed sync stops the log from being trimmed for the rest of the process (after a failed
//! fsync the kernel may have dropped the pages, and only the log still has them for sure).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use parking_lot::RwLock;
use tokio::sync::watch;

use super::apply::{self, State};
use super::compact;
use super::encode::Op;
use super::wal;
use crate::hash::HashMap;
use crate::store::StoreError;

/// Ops applied in one checkpoint at most (a record is never split, so one may overshoot).
pub const MAX_OPS: usize = 20_000;
/// How long records are collected before they are applied, unless a read is waiting for them.
pub const INTERVAL: Duration = Duration::from_millis(200);
/// The newest segment is synced (and the log trimmed) at most this often; starting a new segment and compaction
/// follow a sync.
const SYNC_EVERY: Duration = Duration::from_millis(500);
/// Ops applied per second (between two syncs) from which the store counts as busy: compaction then waits for
/// dead bytes to pile up (`Segments::compaction_candidate`). A 30,000/s spike applies over 60,000.
const BUSY_OPS_PER_S: u64 = 20_000;
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

/// The checkpointer's loop. Returns when the writer is gone and everything it logged is applied.
pub fn run(state: Arc<RwLock<State>>, queue: Receiver<Msg>, wal_dir: PathBuf, progress: Arc<Progress>) {
    let mut open = true;
    let mut trim_log = true;
    let mut last_sync = Instant::now();
    let mut ops_since_sync = 0u64;
    let mut compaction_buffer = Vec::new();
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
        ops_since_sync += ops as u64;
        let lsn = batch.last().expect("one record at least").lsn;
        // Written under the same hold of the lock as the index change: a reader never finds a frame that is not
        // in the file yet.
        let (applied, written) = {
            let mut state = state.write();
            let applied = apply::apply(&mut state, &coalesce(&batch), lsn, Timestamp::now());
            (applied, state.segments.flush())
        };
        drop(batch);
        if !retry_flush(&state, &progress, written) {
            return;
        }
        progress.applied.send_replace(lsn);
        let ms = started.elapsed().as_millis() as u64;
        tracing::debug!(ops, applied, ms, "checkpoint");
        // Reads make checkpoints as often as they come; syncs (each a device cache flush, which the log's own
        // syncs queue behind) come at most every SYNC_EVERY.
        if open && last_sync.elapsed() < SYNC_EVERY {
            continue;
        }
        let busy = ops_since_sync * 1000 > BUSY_OPS_PER_S * (last_sync.elapsed().as_millis() as u64).max(1);
        (last_sync, ops_since_sync) = (Instant::now(), 0);
        trim_log &= sync(&state);
        if trim_log {
            trim(&wal_dir, lsn);
        }
        if !maintain(&state, &progress, lsn, busy, &mut trim_log, &mut compaction_buffer) {
            return;
        }
    }
    // The last records applied since the last sync (a clean stop leaves the log empty but for them).
    if sync(&state) && trim_log {
        trim(&wal_dir, progress.applied.borrow().to_owned());
    }
}

/// After a sync: starts a new segment if the newest is full (its frames are synced), then compacts one segment
/// if one needs it (while `busy`, only if dead bytes piled up). Returns false if the store closed while a write
/// was failing.
fn maintain(
    state: &RwLock<State>,
    progress: &Progress,
    lsn: u64,
    busy: bool,
    synced: &mut bool,
    buffer: &mut Vec<u8>,
) -> bool {
    if let Err(error) = state.write().segments.roll_if_full() {
        tracing::error!(%error, "cannot start a new record segment; the newest one grows on");
    }
    let compacted = match compact::copy_live(state, lsn, busy, buffer) {
        Ok(Some(compacted)) => compacted,
        Ok(None) => return true,
        Err(error) => {
            tracing::error!(%error, "compaction failed; the segment stays");
            let written = state.write().segments.flush();
            return retry_flush(state, progress, written);
        }
    };
    *synced &= sync(state);
    if !*synced {
        return true;
    }
    match state.write().segments.remove(compacted.segment) {
        Ok(()) => tracing::debug!(
            segment = compacted.segment,
            bytes = compacted.bytes,
            moved = compacted.moved,
            moved_bytes = compacted.moved_bytes,
            "compacted a record segment"
        ),
        Err(error) => tracing::error!(%error, "cannot delete a compacted record segment"),
    }
    true
}

/// Retries writing the pending frames after `written` failed, with a growing pause, until it works; false if
/// the store closed first (the log keeps the writes for the next start).
fn retry_flush(state: &RwLock<State>, progress: &Progress, mut written: Result<(), StoreError>) -> bool {
    let mut pause = RETRY_FIRST;
    loop {
        match written {
            Ok(()) => {
                progress.failing.store(false, Ordering::Relaxed);
                return true;
            }
            Err(error) => {
                tracing::error!(%error, "writing a checkpoint failed; retrying (the write-ahead log keeps the writes)");
                progress.failing.store(true, Ordering::Relaxed);
            }
        }
        if progress.closing.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(RETRY_MAX);
        written = state.write().segments.flush();
    }
}

/// Syncs the newest segment; false (logged) if that failed.
fn sync(state: &RwLock<State>) -> bool {
    let file = state.read().segments.active_file();
    match file.sync_data() {
        Ok(()) => true,
        Err(error) => {
            tracing::error!(%error, "syncing a record segment failed; the write-ahead log is kept from now on");
            false
        }
    }
}

fn trim(wal_dir: &std::path::Path, lsn: u64) {
    if let Err(e) = wal::remove_through(wal_dir, lsn) {
        tracing::warn!(error = %e, "could not delete covered write-ahead log segments");
    }
}

/// The ops of `batch` in order, where a put of a record that a later op of the batch puts again is left out.
/// Puts replace the whole record and the index upkeep follows the op alone, so applying only the last one ends
/// in the same state. Ops that add to or edit what is stored (inbox items and read marks,
/// audience pages, campaign counts) are all kept, in order.
pub fn coalesce(batch: &[Logged]) -> Vec<&Op> {
    let total = batch.iter().map(|l| l.ops.len()).sum();
    let mut ops: Vec<Option<&Op>> = Vec::with_capacity(total);
    let mut last: HashMap<(u8, &str), usize> = HashMap::with_capacity_and_hasher(total, Default::default());
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
        | Op::CampaignFinal { .. }
        | Op::CampaignCounts { .. } => return None,
    })
}
