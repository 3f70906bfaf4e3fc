//! The single writer task: group commit over one MULTI/EXEC per batch.
//!
//! It waits for the first submission, drains whatever else is queued (up to `commit_batch_max` writes), and
//! sends the whole batch as one atomic pipeline: `MULTI`, a `SCRIPT LOAD` of each script the batch calls, every
//! submission's commands, a purge of expired idempotency index entries, `EXEC`: one round trip. Only after
//! EXEC has answered does it run the callbacks, in submission order. If the round trip fails or takes longer
//! than `command_timeout_ms`, every callback of the batch gets `Unavailable`; see `docs/store.md` for what a
//! failed batch may have left in Redis (all of it or none of it, never part).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use jiff::Timestamp;
use tokio::sync::mpsc::UnboundedReceiver;

use super::encode::Encoded;
use super::keys::Keys;
use super::scripts::SCRIPTS;
use super::unavailable;
use crate::store::{CommitCallback, StoreError};

/// One `submit` call: its encoded commands (or why they could not be encoded) and its callback.
pub struct Submission {
    pub encoded: Result<Encoded, StoreError>,
    pub done: CommitCallback,
}

impl Submission {
    fn writes(&self) -> usize {
        self.encoded.as_ref().map_or(0, |e| e.writes)
    }
}

/// State shared between the writer task and the store handle.
#[derive(Default)]
pub struct WriterStats {
    /// Batches Redis answered EXEC for.
    pub commits: AtomicU64,
    /// Whether the last batch failed; `health` then probes with an empty commit.
    pub last_batch_failed: AtomicBool,
}

/// The writer's fixed inputs.
pub struct Writer {
    pub conn: ConnectionManager,
    pub keys: Keys,
    pub batch_max: usize,
    pub timeout: Duration,
    pub stats: Arc<WriterStats>,
}

impl Writer {
    /// The writer task's loop. Returns when every sender is gone and the queue is drained.
    pub async fn run(mut self, mut queue: UnboundedReceiver<Submission>) {
        while let Some(first) = queue.recv().await {
            let mut writes = first.writes();
            let mut batch = vec![first];
            // A submission is never split, so a batch may exceed `batch_max` by the last one's size.
            while writes < self.batch_max {
                match queue.try_recv() {
                    Ok(next) => {
                        writes += next.writes();
                        batch.push(next);
                    }
                    Err(_) => break,
                }
            }
            let result = self.commit(&mut batch).await;
            match &result {
                Ok(()) => {
                    self.stats.commits.fetch_add(1, Ordering::Relaxed);
                    self.stats.last_batch_failed.store(false, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::error!(error = %e, submissions = batch.len(), writes, "store batch failed");
                    self.stats.last_batch_failed.store(true, Ordering::Relaxed);
                }
            }
            for submission in batch {
                let outcome = match (&submission.encoded, &result) {
                    (Err(encode_error), _) => Err(encode_error.clone()),
                    (Ok(_), Ok(())) => Ok(()),
                    (Ok(_), Err(e)) => Err(e.clone()),
                };
                let done = submission.done;
                // A panicking callback must not take the writer (and every later commit) down with it.
                if catch_unwind(AssertUnwindSafe(move || done(outcome))).is_err() {
                    tracing::error!("store commit callback panicked");
                }
            }
        }
    }

    /// Sends the batch as one MULTI/EXEC and waits for EXEC's answer (bounded by the timeout). The commands
    /// are moved into the pipeline, so the batch keeps only the callbacks.
    async fn commit(&mut self, batch: &mut [Submission]) -> Result<(), StoreError> {
        let mut pipe = ::redis::pipe();
        pipe.atomic();
        let scripts = batch.iter().filter_map(|s| s.encoded.as_ref().ok()).fold(0u8, |mask, e| mask | e.scripts);
        for script in SCRIPTS.iter().filter(|s| scripts & (1 << s.bit) != 0) {
            pipe.cmd("SCRIPT").arg("LOAD").arg(script.code).ignore();
        }
        for encoded in batch.iter_mut().filter_map(|s| s.encoded.as_mut().ok()) {
            for cmd in encoded.cmds.drain(..) {
                pipe.add_command(cmd).ignore();
            }
        }
        // The entries expire by themselves; this keeps their recovery index from growing with history.
        let now_ms = Timestamp::now().as_millisecond();
        pipe.cmd("ZREMRANGEBYSCORE").arg(self.keys.idempotency_index()).arg("-inf").arg(format!("({now_ms}")).ignore();
        match tokio::time::timeout(self.timeout, pipe.query_async::<()>(&mut self.conn)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(unavailable("commit", e)),
            Err(_) => Err(StoreError::Unavailable(format!("commit: redis did not answer within {:?}", self.timeout))),
        }
    }
}
