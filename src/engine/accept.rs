//! The accept path, shared by the API ([`super::Engine::send`]) and campaign fan-outs (`campaign/`):
//! admission control, the idempotency index, then the shard that owns the recipient.
//!
//! Admission refuses `low` requests at half the thresholds of the others, so when the engine fills up the
//! campaign lane is turned away first and transactional traffic still finds room (`docs/engine-semantics.md`,
//! "Rate limits and back-pressure").

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use jiff::Timestamp;
use ractor::ActorRef;

use crate::domain::{Channel, Priority, ProviderKind};

use super::idempotency::Reservation;
use super::request::{AcceptReply, Claim, NewNotification};
use super::shard::ShardMsg;
use super::{EngineCtx, EngineError, shard_index};

/// The shards and how to reach them.
pub struct Acceptor {
    pub(super) ctx: Arc<EngineCtx>,
    pub(super) shards: Vec<ActorRef<ShardMsg>>,
    pub(super) call_timeout: Duration,
}

impl Acceptor {
    pub(super) fn shard(&self, owner: &str) -> usize {
        shard_index(owner, self.shards.len())
    }

    /// Asks the shard that owns `owner`.
    pub(super) async fn call<T: Send + 'static>(
        &self,
        owner: &str,
        message: impl FnOnce(ractor::RpcReplyPort<T>) -> ShardMsg,
    ) -> Result<T, EngineError> {
        self.call_shard(self.shard(owner), message).await
    }

    pub(super) async fn call_shard<T: Send + 'static>(
        &self,
        shard: usize,
        message: impl FnOnce(ractor::RpcReplyPort<T>) -> ShardMsg,
    ) -> Result<T, EngineError> {
        match self.shards[shard].call(message, Some(self.call_timeout)).await {
            Ok(ractor::rpc::CallResult::Success(value)) => Ok(value),
            Ok(ractor::rpc::CallResult::Timeout) => {
                Err(EngineError::Unavailable("timed out waiting for the store".into()))
            }
            Ok(ractor::rpc::CallResult::SenderError) | Err(_) => {
                Err(EngineError::Unavailable("engine is shutting down".into()))
            }
        }
    }

    /// Accepts a notification: admission, idempotency, then the owning shard. Resolves once it is durable
    /// (202) or refused.
    pub async fn send(
        &self,
        mut request: NewNotification,
        body_hash: u64,
        content_hash: u64,
    ) -> Result<AcceptReply, EngineError> {
        let shard = self.shard(&request.owner);
        self.admit(shard, &request.channels, request.priority)?;
        let now = Timestamp::now();
        let (key, ttl) = match &request.idempotency_key {
            Some(key) => (format!("key:{key}"), self.ctx.settings.idempotency_ttl_s),
            None => (format!("content:{content_hash:016x}"), self.ctx.settings.dedupe_window_s),
        };
        match self.ctx.idempotency.reserve(&key, body_hash, now) {
            Reservation::New => {}
            Reservation::Replay(entry) => {
                return Ok(AcceptReply { id: entry.notification_id, status: entry.status, duplicate: true });
            }
            Reservation::Conflict => {
                return Err(EngineError::Conflict("idempotency key was used with a different request body".into()));
            }
            // The first request's commit failed; whether it landed is known after the reconcile.
            Reservation::InProgress if self.ctx.reconcile.is_held(&key) => {
                return Err(EngineError::Unavailable("the store is recovering; retry shortly".into()));
            }
            Reservation::InProgress => {
                return Err(EngineError::Conflict("a request with this idempotency key is in progress".into()));
            }
        }
        let expires_at = now.checked_add(Duration::from_secs(ttl)).unwrap_or(now);
        request.claims.push(Claim { key: key.clone(), body_hash, expires_at });
        self.ctx.shard_pending[shard].fetch_add(1, Ordering::Relaxed);
        let transactional = (request.priority != Priority::Low).then(tokio::time::Instant::now);
        let result = self.call_shard(shard, |reply| ShardMsg::Accept(Box::new(request), reply)).await;
        match result {
            Ok(Ok(reply)) => {
                if let Some(started) = transactional {
                    let now = tokio::time::Instant::now();
                    self.ctx.transactional.record(now.saturating_duration_since(started), now);
                }
                Ok(reply)
            }
            Ok(Err(e)) => {
                self.ctx.reconcile.release_unless_held(&self.ctx.idempotency, &key);
                Err(e)
            }
            // Timed out: the commit may still land; its callback completes the key, or holds it for a reconcile.
            Err(e) => Err(e),
        }
    }

    /// Refuses work the engine cannot queue: 429 rather than unbounded memory. A dispatcher counts the jobs the
    /// request would wait behind (its lane and the more urgent ones), so a backlog of `normal` scheduled sends
    /// does not turn `high` away. `low` is refused at half the thresholds and counts every lane, so a campaign
    /// backs off before transactional traffic is refused.
    pub(super) fn admit(&self, shard: usize, channels: &[Channel], priority: Priority) -> Result<(), EngineError> {
        let settings = &self.ctx.settings;
        let share = |limit: usize| if priority == Priority::Low { (limit / 2).max(1) } else { limit };
        let shard_full = self.ctx.shard_pending[shard].load(Ordering::Relaxed) >= share(settings.shard_pending_max);
        if shard_full || self.ctx.backed_up(ProviderKind::for_channels(channels), priority, share).is_some() {
            self.ctx.telemetry.overloaded();
            return Err(EngineError::Overloaded);
        }
        Ok(())
    }
}
