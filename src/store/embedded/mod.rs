//! The embedded backend: a write-ahead log, then record segments with in-memory indexes, under the data
//! directory.
//!
//! `submit` encodes on the caller's thread and queues the result for the writer ([`writer`]), which appends
//! batches to the log ([`wal`]) durably (fdatasync) and then runs their callbacks in submission order. The
//! checkpointer ([`checkpoint`]) appends logged ops to the record segments ([`segments`]) in the background
//! and points the in-memory indexes ([`index`]) at them ([`apply`]), compacting mostly-dead segments
//! ([`compact`]). Reads ([`read`]) look locations up under the state's lock, once every write acknowledged
//! before them is applied, and read the frames after releasing it. At start the segments are scanned to
//! rebuild the indexes and the log is replayed on top. See `docs/store.md` for the reasoning and the crash
//! guarantee.

mod apply;
mod binary;
mod checkpoint;
mod compact;
mod encode;
mod import;
mod index;
mod read;
mod segments;
mod wal;
mod wire;
mod writer;

#[cfg(test)]
mod tests;

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Sender, SyncSender};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use parking_lot::RwLock;

use crate::domain::{Campaign, Channel, Delivery, IdempotencyEntry, InboxItem, Notification, Sequence, Template, User};
use crate::store::{CommitCallback, Page, ScheduleCursor, Store, StoreError, StoredNotification, Write};
use apply::State;
use checkpoint::{Logged, Msg, Progress};
use index::Index;
use segments::Segments;
use writer::{Submission, WriterStats};

/// The file in the data directory that one store at a time holds a lock on.
pub const LOCK_FILE: &str = "LOCK";

/// The embedded [`Store`]: a write-ahead log, record segments with in-memory indexes, the thread that appends
/// to the log and the one that applies it to the segments.
pub struct EmbeddedStore {
    state: Arc<RwLock<State>>,
    queue: Option<Sender<Submission>>,
    writer: Option<JoinHandle<()>>,
    checkpointer: Option<JoinHandle<()>>,
    /// For reads to ask the checkpointer to apply what it has collected at once.
    wake: Option<SyncSender<Msg>>,
    stats: Arc<WriterStats>,
    progress: Arc<Progress>,
    /// Held (locked) for as long as the store is open.
    _lock: File,
}

/// Logged records the checkpointer may fall behind by before the writer waits for it.
const CHECKPOINT_QUEUE: usize = 1024;
/// How long a read waits for the checkpointer to apply what was acknowledged before it.
const READ_WAIT: Duration = Duration::from_secs(30);

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`, creating `dir` if needed: rebuilds the indexes from the record
    /// segments, applies what only the log holds, and starts the writer and checkpointer threads. A store of an
    /// earlier Herald (a `herald.redb` file) is imported first. `commit_batch_max` bounds the writes of one
    /// commit. Fails if another store has `dir` open.
    pub fn open(dir: &Path, commit_batch_max: usize) -> Result<Arc<EmbeddedStore>, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
        let lock = lock(dir)?;
        let started = std::time::Instant::now();
        let records_dir = dir.join(segments::DIR_NAME);
        import::import_redb_if_present(dir, &records_dir)?;
        let mut index = Index::default();
        let (segments, scanned) = Segments::open(&records_dir, &mut index)?;
        let mut state = State { index, segments };
        let wal_dir = dir.join(wal::DIR_NAME);
        let applied = replay(&mut state, &wal_dir, scanned.lsn)?;
        tracing::info!(
            path = %dir.display(),
            notifications = state.index.notifications.len(),
            segments = state.segments.usage().len(),
            ms = started.elapsed().as_millis() as u64,
            "embedded store open"
        );
        let state = Arc::new(RwLock::new(state));
        let (queue, receiver) = mpsc::channel();
        let (to_checkpoint, logged) = mpsc::sync_channel(CHECKPOINT_QUEUE);
        let wake = to_checkpoint.clone();
        let stats = Arc::new(WriterStats::default());
        stats.durable_lsn.store(applied, Ordering::Relaxed);
        let progress = Arc::new(Progress {
            applied: tokio::sync::watch::Sender::new(applied),
            failing: Default::default(),
            closing: Default::default(),
        });
        let log = wal::Wal::new(&wal_dir, applied + 1)?;
        let spawn_error = |e| StoreError::Unavailable(format!("cannot start the store threads: {e}"));
        let checkpointer = std::thread::Builder::new()
            .name("herald-store-checkpoint".into())
            .spawn({
                let (state, progress) = (state.clone(), progress.clone());
                move || checkpoint::run(state, logged, wal_dir, progress)
            })
            .map_err(spawn_error)?;
        let writer = std::thread::Builder::new()
            .name("herald-store-writer".into())
            .spawn({
                let stats = stats.clone();
                move || writer::run(log, receiver, commit_batch_max.max(1), stats, to_checkpoint)
            })
            .map_err(spawn_error)?;
        Ok(Arc::new(EmbeddedStore {
            state,
            queue: Some(queue),
            writer: Some(writer),
            checkpointer: Some(checkpointer),
            wake: Some(wake),
            stats,
            progress,
            _lock: lock,
        }))
    }

    /// Group commits made durable so far (each one of one or more submissions).
    pub fn commits(&self) -> u64 {
        self.stats.commits.load(Ordering::Relaxed)
    }

    /// Runs `query` on the state off the async runtime, once everything acknowledged before is applied.
    async fn read<T, F>(&self, query: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&RwLock<State>) -> Result<T, StoreError> + Send + 'static,
    {
        self.applied_up_to(self.stats.durable_lsn.load(Ordering::Acquire)).await?;
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || query(&state))
            .await
            .map_err(|e| StoreError::Unavailable(format!("store read task failed: {e}")))?
    }

    /// Waits until the checkpointer has applied the log up to `lsn`.
    async fn applied_up_to(&self, lsn: u64) -> Result<(), StoreError> {
        let mut applied = self.progress.applied.subscribe();
        if *applied.borrow() >= lsn {
            return Ok(());
        }
        if self.progress.failing.load(Ordering::Relaxed)
            || self.checkpointer.as_ref().is_none_or(JoinHandle::is_finished)
        {
            return Err(StoreError::Unavailable("the store cannot apply its write-ahead log".into()));
        }
        // A full queue means the checkpointer has records coming in anyway.
        if let Some(wake) = &self.wake {
            let _ = wake.try_send(Msg::Wake);
        }
        match tokio::time::timeout(READ_WAIT, applied.wait_for(|applied| *applied >= lsn)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(StoreError::Unavailable("store checkpointer stopped".into())),
            Err(_) => Err(StoreError::Unavailable("the store's checkpoint is behind".into())),
        }
    }
}

/// Takes the data directory's lock, so two stores never write one directory.
fn lock(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    file.try_lock().map_err(|e| {
        StoreError::Unavailable(format!("{} is in use by another Herald ({}): {e}", dir.display(), path.display()))
    })?;
    Ok(file)
}

/// Applies every record of the log that the segments do not have yet (in checkpoints of up to
/// [`checkpoint::MAX_OPS`] ops, coalesced as the checkpointer does), syncs, and empties the log; returns the
/// last LSN applied (where the log continues).
fn replay(state: &mut State, wal_dir: &Path, applied: u64) -> Result<u64, StoreError> {
    let (mut batch, mut ops, mut replayed) = (Vec::new(), 0, 0);
    let mut flush = |batch: &mut Vec<Logged>| -> Result<usize, StoreError> {
        let Some(last) = batch.last() else { return Ok(0) };
        let applied = apply::apply(state, &checkpoint::coalesce(batch), last.lsn, Timestamp::now());
        state.segments.flush()?;
        batch.clear();
        Ok(applied)
    };
    let last = wal::replay(wal_dir, |lsn, logged| {
        if lsn > applied {
            ops += logged.len();
            batch.push(Logged { lsn, ops: logged });
        }
        if ops >= checkpoint::MAX_OPS {
            replayed += flush(&mut batch)?;
            ops = 0;
        }
        Ok(())
    })?;
    replayed += flush(&mut batch)?;
    let applied = applied.max(last);
    if last > 0 {
        state.segments.active_file().sync_data().map_err(|e| StoreError::Unavailable(format!("syncing: {e}")))?;
    }
    wal::remove_all(wal_dir)?;
    state.segments.roll_if_full()?;
    if replayed > 0 {
        tracing::info!(writes = replayed, lsn = applied, "replayed the write-ahead log");
    }
    Ok(applied)
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued and exit, which closes the checkpointer's
        // queue in turn; joining both means the files are closed and the lock released when the drop returns,
        // so the store can be reopened at once.
        drop(self.queue.take());
        drop(self.wake.take());
        self.progress.closing.store(true, Ordering::Relaxed);
        let (writer, checkpointer) = (self.writer.take(), self.checkpointer.take());
        // A commit callback may hold the last handle, and then this runs on the writer itself: joining nothing
        // lets the writer return from the callback, drain its queue and exit, and the checkpointer after it (the
        // checkpointer waits for the writer's side of its queue to close, so joining it here would never end).
        if writer.as_ref().is_some_and(|w| w.thread().id() == std::thread::current().id()) {
            return;
        }
        for (name, thread) in [("writer", writer), ("checkpointer", checkpointer)] {
            if let Some(thread) = thread
                && thread.join().is_err()
            {
                tracing::error!("store {name} panicked");
            }
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn submit(&self, writes: Vec<Write>, done: CommitCallback) {
        let submission = Submission { ops: encode::encode(writes), done };
        let Some(queue) = &self.queue else { unreachable!("the queue is only closed on drop") };
        if let Err(mpsc::SendError(submission)) = queue.send(submission) {
            (submission.done)(Err(StoreError::Unavailable("store writer stopped".into())));
        }
    }

    async fn users(&self) -> Result<Vec<User>, StoreError> {
        self.read(read::users).await
    }

    async fn templates(&self) -> Result<Vec<Template>, StoreError> {
        self.read(read::templates).await
    }

    async fn open_notifications(&self) -> Result<Vec<StoredNotification>, StoreError> {
        self.read(read::open_notifications).await
    }

    async fn notification(&self, id: &str) -> Result<Option<StoredNotification>, StoreError> {
        let id = id.to_string();
        self.read(move |state| read::notification(state, &id)).await
    }

    async fn delivery(&self, id: &str) -> Result<Option<Delivery>, StoreError> {
        let id = id.to_string();
        self.read(move |state| read::delivery(state, &id)).await
    }

    async fn idempotency_entries(&self, now: Timestamp) -> Result<Vec<(String, IdempotencyEntry)>, StoreError> {
        self.read(move |state| read::idempotency_entries(state, now)).await
    }

    /// A `limit` of 0 is read as 1. The cursor is the last delivery id of the previous page.
    async fn dlq(
        &self,
        channel: Option<Channel>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<Delivery>, StoreError> {
        let cursor = cursor.map(str::to_string);
        self.read(move |state| read::dlq(state, channel, cursor.as_deref(), limit)).await
    }

    /// A `limit` of 0 is read as 1. The cursor is the last item id of the previous page.
    async fn inbox(
        &self,
        user_id: &str,
        cursor: Option<&str>,
        limit: usize,
        unread_only: bool,
    ) -> Result<(Page<InboxItem>, u64), StoreError> {
        let (user_id, cursor) = (user_id.to_string(), cursor.map(str::to_string));
        self.read(move |state| read::inbox(state, &user_id, cursor.as_deref(), limit, unread_only)).await
    }

    /// A `limit` of 0 returns nothing.
    async fn scheduled(
        &self,
        after: Option<&ScheduleCursor>,
        until_ms: i64,
        limit: usize,
    ) -> Result<Vec<Notification>, StoreError> {
        let after = after.cloned();
        self.read(move |state| read::scheduled(state, after.as_ref(), until_ms, limit)).await
    }

    async fn sequence(&self, id: &str) -> Result<Option<Sequence>, StoreError> {
        let id = id.to_string();
        self.read(move |state| read::sequence(state, &id)).await
    }

    async fn open_sequences(&self) -> Result<Vec<Sequence>, StoreError> {
        self.read(read::open_sequences).await
    }

    async fn campaign(&self, id: &str) -> Result<Option<Campaign>, StoreError> {
        let id = id.to_string();
        self.read(move |state| read::campaign(state, &id)).await
    }

    async fn active_campaigns(&self) -> Result<Vec<Campaign>, StoreError> {
        self.read(read::active_campaigns).await
    }

    async fn audience_page(&self, id: &str, page: u32) -> Result<Option<Vec<String>>, StoreError> {
        let id = id.to_string();
        self.read(move |state| read::audience_page(state, &id, page)).await
    }

    async fn user_ids(&self, after: Option<&str>, tag: Option<&str>, limit: usize) -> Result<Vec<String>, StoreError> {
        let (after, tag) = (after.map(str::to_string), tag.map(str::to_string));
        self.read(move |state| read::user_ids(state, after.as_deref(), tag.as_deref(), limit)).await
    }

    async fn max_seq(&self) -> Result<u64, StoreError> {
        self.read(read::max_seq).await
    }

    /// Reads a snapshot; if the writer is gone that is fatal, and if the last batch failed an empty commit
    /// checks whether writes work again (so readiness recovers without waiting for traffic).
    async fn health(&self) -> Result<(), StoreError> {
        if self.writer.as_ref().is_none_or(JoinHandle::is_finished)
            || self.checkpointer.as_ref().is_none_or(JoinHandle::is_finished)
        {
            return Err(StoreError::Unavailable("store writer stopped".into()));
        }
        self.read(read::max_seq).await?;
        if self.stats.last_batch_failed.load(Ordering::Relaxed) {
            self.commit(Vec::new()).await?;
        }
        Ok(())
    }
}
