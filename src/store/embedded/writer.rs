//! The single writer thread: group commit into the write-ahead log.
//!
//! It blocks for the first submission, drains whatever else is queued (up to `commit_batch_max` writes; after a
//! commit of several submissions it also waits up to [`GATHER`] for more, so that load shares fsyncs),
//! appends the whole batch to the log as one record and syncs it (`wal/`), and only then hands the ops to the
//! checkpointer (`checkpoint.rs`, which applies them to the record segments) and runs the callbacks, in
//! submission order. If the append fails every callback of the batch gets `Unavailable` and nothing of it is
//! applied.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::Duration;

use super::checkpoint::{Logged, Msg};
use super::encode::Op;
use super::wal::Wal;
use crate::store::{CommitCallback, StoreError};

/// How long a commit under load waits for more submissions before it syncs.
const GATHER: Duration = Duration::from_millis(1);
/// A commit of this many submissions means load: the next one gathers.
const BUSY: usize = 4;

/// One `submit` call: its encoded writes (or why they could not be encoded) and its callback.
pub struct Submission {
    pub ops: Result<Vec<Op>, StoreError>,
    pub done: CommitCallback,
}

impl Submission {
    fn len(&self) -> usize {
        self.ops.as_ref().map_or(0, Vec::len)
    }
}

/// State shared between the writer thread and the store handle.
#[derive(Default)]
pub struct WriterStats {
    /// Group commits made durable.
    pub commits: AtomicU64,
    /// Whether the last batch failed; `health` then probes with a write.
    pub last_batch_failed: AtomicBool,
    /// The LSN of the last record made durable: a read waits until the checkpointer has applied it.
    pub durable_lsn: AtomicU64,
}

/// The writer thread's loop. Returns when every sender is gone and the queue is drained.
pub fn run(
    mut wal: Wal,
    queue: Receiver<Submission>,
    batch_max: usize,
    stats: Arc<WriterStats>,
    checkpoint: SyncSender<Msg>,
) {
    let mut busy = false;
    while let Ok(first) = queue.recv() {
        let mut writes = first.len();
        let mut batch = vec![first];
        // Under concurrent load a commit gathers for a moment before it syncs: one fdatasync for more writes
        // (each costs ~100 µs of kernel CPU here), at a latency of at most GATHER. It sleeps through the gather
        // instead of waking for every submission, and then takes what came. Alone, a commit syncs at once.
        if busy {
            std::thread::sleep(GATHER);
        }
        // A submission is never split, so a batch may exceed `batch_max` by the last one's size.
        while writes < batch_max {
            let Ok(next) = queue.try_recv() else { break };
            writes += next.len();
            batch.push(next);
        }
        busy = batch.len() >= BUSY;
        let result = wal.append(batch.iter().filter_map(|s| s.ops.as_deref().ok()));
        let mut ops = Vec::with_capacity(if result.is_ok() { writes } else { 0 });
        let mut callbacks = Vec::with_capacity(batch.len());
        for submission in batch {
            let outcome = match (submission.ops, &result) {
                (Err(encode_error), _) => Err(encode_error),
                (Ok(submitted), Ok(_)) => {
                    ops.extend(submitted);
                    Ok(())
                }
                (Ok(_), Err(e)) => Err(StoreError::Unavailable(format!("commit failed: {e}"))),
            };
            callbacks.push((submission.done, outcome));
        }
        match result {
            Ok(lsn) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats.last_batch_failed.store(false, Ordering::Relaxed);
                stats.durable_lsn.store(lsn, Ordering::Release);
                // A checkpointer that is gone shows in reads and `health` (its thread has finished).
                let _ = checkpoint.send(Msg::Logged(Logged { lsn, ops }));
            }
            Err(e) => {
                tracing::error!(error = %e, submissions = callbacks.len(), writes, "store batch failed");
                stats.last_batch_failed.store(true, Ordering::Relaxed);
            }
        }
        for (done, outcome) in callbacks {
            // A panicking callback must not take the writer (and every later commit) down with it.
            if catch_unwind(AssertUnwindSafe(move || done(outcome))).is_err() {
                tracing::error!("store commit callback panicked");
            }
        }
    }
}
