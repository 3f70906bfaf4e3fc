//! Durable state behind one trait, [`Store`], with one backend per module.
//!
//! Architecture invariant: only `store/` knows the embedded database and Redis. The engine sees
//! [`Write`]s it submits for group commit, and reads for start-up recovery and API queries.
//!
//! Durability contract (`docs/engine-semantics.md`): when a [`CommitCallback`] runs with `Ok(())`, every write
//! submitted with it (and before it) survives a crash of the process. Callbacks run in submission order, so a
//! caller that submits in order and acts inside the callback acts in order.

use std::sync::Arc;

use async_trait::async_trait;
use jiff::Timestamp;
use thiserror::Error;

use crate::domain::{
    Campaign, CampaignId, Channel, Delivery, IdempotencyEntry, InboxItem, Notification, NotificationStatus, Sequence,
    Template, User,
};

mod codec;
pub mod embedded;
pub mod redis;

pub use embedded::EmbeddedStore;
pub use redis::RedisStore;

/// One change to durable state. The backend keeps its secondary indexes (open deliveries, DLQ, inbox order)
/// consistent with these; callers never write index entries themselves.
#[derive(Clone, Debug)]
pub enum Write {
    /// Insert or replace a user; the backend keeps the user id index and the tag index (tags added and removed)
    /// in step, for [`Store::user_ids`].
    PutUser(Arc<User>),
    PutTemplate(Arc<Template>),
    /// Insert or replace a notification. While its status is `scheduled` it is in the scheduled index (by
    /// `send_at`, then id) and returned by [`Store::scheduled`]; otherwise, while its status is not final, it is
    /// "open" and returned by [`Store::open_notifications`].
    PutNotification(Arc<Notification>),
    /// Insert or replace a delivery. A delivery whose status is `dead` is in the DLQ.
    PutDelivery(Arc<Delivery>),
    PutIdempotency {
        key: String,
        entry: IdempotencyEntry,
    },
    PutInboxItem(Arc<InboxItem>),
    /// Mark these inbox items read (ignoring unknown or already-read ones).
    MarkInboxRead {
        user_id: String,
        ids: Vec<String>,
        at: Timestamp,
    },
    MarkAllInboxRead {
        user_id: String,
        at: Timestamp,
    },
    /// Insert or replace a sequence. While its status is not final it is returned by [`Store::open_sequences`].
    PutSequence(Arc<Sequence>),
    /// Insert or replace a campaign record (its `finals` are ignored: see [`Write::CountCampaignFinal`]). While
    /// its status is active it is returned by [`Store::active_campaigns`]; once it is not, its audience pages
    /// are deleted.
    PutCampaign(Arc<Campaign>),
    /// One page of a campaign's explicit audience, written with the campaign when it is created.
    PutAudiencePage {
        campaign: CampaignId,
        page: u32,
        user_ids: Arc<[String]>,
    },
    /// Adds `delta` to the count of one of a campaign's notifications' final statuses (`completed`, `failed`,
    /// `cancelled`; any other status is ignored). Submitted in the commit that makes the notification final,
    /// so the counts are exactly as durable as the statuses; a DLQ replay takes its old status back with -1.
    CountCampaignFinal {
        campaign: CampaignId,
        status: NotificationStatus,
        delta: i64,
    },
}

/// Runs once the writes it was submitted with are committed (or have failed). Runs on the store's own thread,
/// in submission order: it must be quick and must not block (send on a channel, tell an actor).
pub type CommitCallback = Box<dyn FnOnce(Result<(), StoreError>) + Send + 'static>;

/// Store failures. `Unavailable` becomes a 503 at the API.
#[derive(Debug, Clone, Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
}

/// A page of results and the cursor for the next one.
#[derive(Clone, Debug, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// Everything needed to resume a notification after a restart.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredNotification {
    pub notification: Notification,
    /// Ordered by id (UUIDv7 ids are monotonic within a process, so this is creation order).
    pub deliveries: Vec<Delivery>,
}

/// A position in the scheduled index: entries are ordered by due time (ms since the epoch), then id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ScheduleCursor {
    pub due_ms: i64,
    pub id: String,
}

impl ScheduleCursor {
    /// The cursor of a scheduled notification (its `send_at`, or the epoch if it has none).
    pub fn of(n: &Notification) -> Self {
        Self { due_ms: n.send_at.map_or(0, |t| t.as_millisecond()), id: n.id.clone() }
    }
}

/// Which index a notification belongs in, by its status: every backend keeps exactly one of the open index (by
/// `seq`) and the scheduled index (by due time, then id) for a notification that is not final, and neither for a
/// final one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    Open,
    /// Due at this many ms since the epoch ([`ScheduleCursor::of`]).
    Scheduled(i64),
    Final,
}

impl Placement {
    fn of(n: &Notification) -> Self {
        match n.status {
            NotificationStatus::Scheduled => Placement::Scheduled(ScheduleCursor::of(n).due_ms),
            status if status.is_final() => Placement::Final,
            _ => Placement::Open,
        }
    }
}

/// The durable state of Herald. See the module docs for the durability contract.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Queues writes for the next group commit; `done` runs after the commit, in submission order.
    fn submit(&self, writes: Vec<Write>, done: CommitCallback);

    /// Commits and waits. Convenience over [`Store::submit`].
    async fn commit(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(writes, Box::new(move |result| drop(tx.send(result))));
        rx.await.unwrap_or_else(|_| Err(StoreError::Unavailable("store writer stopped".into())))
    }

    /// All users.
    async fn users(&self) -> Result<Vec<User>, StoreError>;
    /// All templates.
    async fn templates(&self) -> Result<Vec<Template>, StoreError>;
    /// Notifications whose status is neither final nor `scheduled`, with all their deliveries, in acceptance
    /// (`seq`) order.
    async fn open_notifications(&self) -> Result<Vec<StoredNotification>, StoreError>;
    /// One notification with its deliveries.
    async fn notification(&self, id: &str) -> Result<Option<StoredNotification>, StoreError>;
    /// One delivery.
    async fn delivery(&self, id: &str) -> Result<Option<Delivery>, StoreError>;
    /// Idempotency entries that expire after `now`.
    async fn idempotency_entries(&self, now: Timestamp) -> Result<Vec<(String, IdempotencyEntry)>, StoreError>;
    /// Dead deliveries, oldest first, optionally of one channel. The cursor is opaque.
    async fn dlq(
        &self,
        channel: Option<Channel>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<Delivery>, StoreError>;
    /// A user's inbox, newest first; returns the page and the user's unread count.
    async fn inbox(
        &self,
        user_id: &str,
        cursor: Option<&str>,
        limit: usize,
        unread_only: bool,
    ) -> Result<(Page<InboxItem>, u64), StoreError>;
    /// Scheduled notifications (status `scheduled`) after `after` (exclusive; from the start when `None`) and
    /// due at or before `until_ms`, in (due, id) order, at most `limit`. Reads the index, never the whole store.
    async fn scheduled(
        &self,
        after: Option<&ScheduleCursor>,
        until_ms: i64,
        limit: usize,
    ) -> Result<Vec<Notification>, StoreError>;
    /// One sequence.
    async fn sequence(&self, id: &str) -> Result<Option<Sequence>, StoreError>;
    /// Sequences whose status is not final, in id (creation) order.
    async fn open_sequences(&self) -> Result<Vec<Sequence>, StoreError>;
    /// One campaign, with its `finals`.
    async fn campaign(&self, id: &str) -> Result<Option<Campaign>, StoreError>;
    /// Campaigns whose status is active (scheduled, running, paused), with their `finals`, in id (creation)
    /// order: the fan-outs to resume at start.
    async fn active_campaigns(&self) -> Result<Vec<Campaign>, StoreError>;
    /// Page `page` of a campaign's explicit audience; `None` past the last page or once the campaign ended.
    async fn audience_page(&self, id: &str, page: u32) -> Result<Option<Vec<String>>, StoreError>;
    /// User ids after `after` (exclusive; from the first when `None`) in id (byte) order, at most `limit`: all
    /// users, or only those carrying `tag`. Reads an index, never the user records.
    async fn user_ids(&self, after: Option<&str>, tag: Option<&str>, limit: usize) -> Result<Vec<String>, StoreError>;
    /// The highest notification `seq` stored (0 when empty), so sequence numbers continue after a restart.
    async fn max_seq(&self) -> Result<u64, StoreError>;
    /// Ok when the store can serve reads and writes.
    async fn health(&self) -> Result<(), StoreError>;
}
