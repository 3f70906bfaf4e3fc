//! The Redis backend: every record, index and expiry in one Redis (standalone or a primary with replicas), under
//! one key prefix, group-committed by one writer task.
//!
//! `submit` encodes on the caller's thread ([`encode`]) and queues the commands for the writer ([`writer`]),
//! which sends each batch as one MULTI/EXEC and then runs the callbacks in submission order. Reads go through
//! the same multiplexed, auto-reconnecting connection ([`read`]). Every call is bounded by
//! `store.redis.command_timeout_ms`, so a stopped or unreachable Redis makes calls fail with `Unavailable` (503)
//! instead of hanging. The key layout is in [`keys`], the read-modify-write writes in [`scripts`]; see
//! `docs/store.md` ("Redis backend") for the layout table, the loss window of each Redis persistence setting, and
//! what a failed batch may leave behind.

mod encode;
mod keys;
mod read;
mod scripts;
mod writer;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use async_trait::async_trait;
use jiff::Timestamp;
use tokio::sync::mpsc::{self, UnboundedSender};

use crate::config::RedisSettings;
use crate::domain::{Campaign, Channel, Delivery, IdempotencyEntry, InboxItem, Notification, Sequence, Template, User};
use crate::store::{CommitCallback, Page, ScheduleCursor, Store, StoreError, StoredNotification, Write};
use encode::Layout;
use keys::Keys;
use writer::{Submission, Writer, WriterStats};

/// The Redis [`Store`]: a connection, the writer task's queue, and the layout to encode writes with.
pub struct RedisStore {
    conn: ConnectionManager,
    layout: Layout,
    queue: UnboundedSender<Submission>,
    stats: Arc<WriterStats>,
    timeout: Duration,
}

impl RedisStore {
    /// Connects (and pings) within `command_timeout_ms`, then starts the writer task on the current tokio
    /// runtime. A Redis that cannot be reached fails the open: the caller decides whether to retry.
    pub async fn open(settings: &RedisSettings, commit_batch_max: usize) -> Result<Arc<RedisStore>, StoreError> {
        let timeout = Duration::from_millis(settings.command_timeout_ms.max(1));
        let client = ::redis::Client::open(settings.url.expose())
            .map_err(|e| StoreError::Unavailable(format!("store.redis.url is not a Redis URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // Few retries per reconnect: the next command after a failure starts another reconnect anyway, and
            // callers must hear `Unavailable` within the timeout rather than wait out a long backoff.
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let connect = ConnectionManager::new_with_config(client, config);
        let mut conn = bounded(timeout, "connect", async { connect.await.map_err(|e| unavailable("connect", e)) })
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot reach redis at {}: {e}", redact(settings))))?;
        bounded(timeout, "ping", async {
            ::redis::cmd("PING").query_async::<()>(&mut conn).await.map_err(|e| unavailable("ping", e))
        })
        .await?;

        let keys = Keys::new(&settings.prefix);
        // Not bounded as a whole: it reads every user id once, in round trips each bounded by the connection.
        let backfilled = read::backfill_user_ids(&mut conn, &keys).await?;
        if backfilled > 0 {
            tracing::info!(users = backfilled, "indexed user ids written before the index existed");
        }
        let stats = Arc::new(WriterStats::default());
        let (queue, receiver) = mpsc::unbounded_channel();
        let writer = Writer {
            conn: conn.clone(),
            keys: keys.clone(),
            batch_max: commit_batch_max.max(1),
            timeout,
            stats: stats.clone(),
        };
        tokio::spawn(writer.run(receiver));
        tracing::info!(redis = %redact(settings), prefix = %settings.prefix, commit_batch_max, "redis store open");
        let layout = Layout { keys, inbox_cap: settings.inbox_cap.max(1), retention_s: settings.retention_s.max(1) };
        Ok(Arc::new(RedisStore { conn, layout, queue, stats, timeout }))
    }

    /// Batches Redis has answered EXEC for (each one a group commit of one or more submissions).
    pub fn commits(&self) -> u64 {
        self.stats.commits.load(Ordering::Relaxed)
    }

    /// Runs one query on a clone of the multiplexed connection, bounded by the command timeout.
    async fn read<'a, T, F, Fut>(&'a self, what: &str, query: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager, &'a Keys) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + 'a,
    {
        bounded(self.timeout, what, query(self.conn.clone(), &self.layout.keys)).await
    }
}

/// Bounds a Redis call: past `timeout` it is `Unavailable` (a stopped Redis never answers, it does not refuse).
async fn bounded<T>(
    timeout: Duration,
    what: &str,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| Err(StoreError::Unavailable(format!("{what}: redis did not answer within {timeout:?}"))))
}

/// Maps a Redis error. Every failure to talk to Redis is `Unavailable` (a 503 the client may retry).
fn unavailable(what: &str, err: ::redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("{what}: {err}"))
}

/// `host:port/db` of the configured Redis, without credentials, for logs and errors.
fn redact(settings: &RedisSettings) -> String {
    let url = settings.url.expose();
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.rsplit_once('@').map_or(rest, |(_, host)| host).to_string()
}

#[async_trait]
impl Store for RedisStore {
    fn submit(&self, writes: Vec<Write>, done: CommitCallback) {
        let encoded = encode::encode(&self.layout, writes, Timestamp::now().as_millisecond());
        if let Err(mpsc::error::SendError(submission)) = self.queue.send(Submission { encoded, done }) {
            (submission.done)(Err(StoreError::Unavailable("store writer stopped".into())));
        }
    }

    async fn users(&self) -> Result<Vec<User>, StoreError> {
        self.read("users", |mut c, k| async move { read::users(&mut c, k).await }).await
    }

    async fn templates(&self) -> Result<Vec<Template>, StoreError> {
        self.read("templates", |mut c, k| async move { read::templates(&mut c, k).await }).await
    }

    /// Not bounded by one command timeout as a whole (it is many round trips over possibly large state); each
    /// round trip is bounded by the connection's response timeout.
    async fn open_notifications(&self) -> Result<Vec<StoredNotification>, StoreError> {
        read::open_notifications(&mut self.conn.clone(), &self.layout.keys).await
    }

    async fn notification(&self, id: &str) -> Result<Option<StoredNotification>, StoreError> {
        self.read("notification", |mut c, k| async move { read::notification(&mut c, k, id).await }).await
    }

    async fn delivery(&self, id: &str) -> Result<Option<Delivery>, StoreError> {
        self.read("delivery", |mut c, k| async move { read::delivery(&mut c, k, id).await }).await
    }

    async fn idempotency_entries(&self, now: Timestamp) -> Result<Vec<(String, IdempotencyEntry)>, StoreError> {
        read::idempotency_entries(&mut self.conn.clone(), &self.layout.keys, now).await
    }

    /// A `limit` of 0 is read as 1. The cursor is the last delivery id of the previous page.
    async fn dlq(
        &self,
        channel: Option<Channel>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<Delivery>, StoreError> {
        self.read("dlq", |mut c, k| async move { read::dlq(&mut c, k, channel, cursor, limit).await }).await
    }

    /// A `limit` of 0 is read as 1. The cursor is the last item id of the previous page.
    async fn inbox(
        &self,
        user_id: &str,
        cursor: Option<&str>,
        limit: usize,
        unread_only: bool,
    ) -> Result<(Page<InboxItem>, u64), StoreError> {
        self.read("inbox", |mut c, k| async move { read::inbox(&mut c, k, user_id, cursor, limit, unread_only).await })
            .await
    }

    /// A `limit` of 0 returns nothing.
    async fn scheduled(
        &self,
        after: Option<&ScheduleCursor>,
        until_ms: i64,
        limit: usize,
    ) -> Result<Vec<Notification>, StoreError> {
        self.read("scheduled", |mut c, k| async move { read::scheduled(&mut c, k, after, until_ms, limit).await }).await
    }

    async fn sequence(&self, id: &str) -> Result<Option<Sequence>, StoreError> {
        self.read("sequence", |mut c, k| async move { read::sequence(&mut c, k, id).await }).await
    }

    /// Not bounded by one command timeout as a whole, like `open_notifications`.
    async fn open_sequences(&self) -> Result<Vec<Sequence>, StoreError> {
        read::open_sequences(&mut self.conn.clone(), &self.layout.keys).await
    }

    async fn campaign(&self, id: &str) -> Result<Option<Campaign>, StoreError> {
        self.read("campaign", |mut c, k| async move { read::campaign(&mut c, k, id).await }).await
    }

    async fn active_campaigns(&self) -> Result<Vec<Campaign>, StoreError> {
        self.read("active_campaigns", |mut c, k| async move { read::active_campaigns(&mut c, k).await }).await
    }

    async fn audience_page(&self, id: &str, page: u32) -> Result<Option<Vec<String>>, StoreError> {
        self.read("audience_page", |mut c, k| async move { read::audience_page(&mut c, k, id, page).await }).await
    }

    async fn user_ids(&self, after: Option<&str>, tag: Option<&str>, limit: usize) -> Result<Vec<String>, StoreError> {
        self.read("user_ids", |mut c, k| async move { read::user_ids(&mut c, k, after, tag, limit).await }).await
    }

    async fn max_seq(&self) -> Result<u64, StoreError> {
        self.read("max_seq", |mut c, k| async move { read::max_seq(&mut c, k).await }).await
    }

    /// Pings; if the last batch failed, an empty commit checks that writes work again (so readiness recovers
    /// without waiting for traffic).
    async fn health(&self) -> Result<(), StoreError> {
        self.read("ping", |mut c, _| async move {
            ::redis::cmd("PING").query_async::<()>(&mut c).await.map_err(|e| unavailable("ping", e))
        })
        .await?;
        if self.stats.last_batch_failed.load(Ordering::Relaxed) {
            self.commit(Vec::new()).await?;
        }
        Ok(())
    }
}
