//! Reconciling with the store after a failed accept commit (docs/engine-semantics.md, "Acceptance and
//! durability").
//!
//! A failed commit is *not acknowledged*, but with Redis it may still be *applied*: a batch whose `EXEC` reached
//! Redis before the timeout, or that a stopped Redis runs once continued. The shard forgets such a notification
//! at once (the client got a 503), so without this module it would stay open in the store, undelivered until the
//! next start, and a client retrying with its idempotency key would create a second one.
//!
//! So, for every failed accept: the shard remembers the id it forgot ([`Forgotten`]), and the [`Reconciler`]
//! holds the request's idempotency claims, so a retry is answered 503 (not 409, not a second notification)
//! until the store has been asked. Once `store.health()` is Ok again, the reconcile task runs a pass: it reads
//! the open notifications and hands them to their shards, which adopt those they forgot (and only those:
//! never one a shard finished itself, never one still open), then reads the idempotency entries and restores
//! each held claim whose entry names the held notification, so a retry is a duplicate of the first. The pass
//! runs twice, at once and again [`SETTLE`] later, because a Redis that was stopped may still be applying
//! batches sent before it stopped; after the second pass, claims whose notification never landed are released
//! and a retry is accepted as new.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use parking_lot::Mutex;
use ractor::ActorRef;
use ractor::rpc::CallResult;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::domain::{IdempotencyEntry, NotificationId};
use crate::store::{StoreError, StoredNotification};

use super::idempotency::IdempotencyIndex;
use super::request::Claim;
use super::shard::ShardMsg;
use super::{EngineCtx, shard_index};

/// How long after the first pass the second one runs: time for a continued Redis to apply what it had queued.
const SETTLE: Duration = Duration::from_secs(3);
/// How often the task asks the store whether it is back.
const HEALTH_POLL: Duration = Duration::from_millis(200);
/// Bound on how long a pass waits for one shard to adopt.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(60);
/// Claims held at most; past it a failed accept releases its claims at once (a retry is then a new request).
const HELD_MAX: usize = 131_072;
/// Ids a shard remembers at most; the oldest go first.
const FORGOTTEN_MAX: usize = 16_384;
/// How long a shard remembers an id: a batch that lands later is re-driven only at the next start.
const FORGOTTEN_TTL: Duration = Duration::from_secs(3600);

/// The notifications a shard forgot after their accept commit failed, oldest first, bounded in count and age.
#[derive(Default)]
pub struct Forgotten {
    order: VecDeque<(Instant, NotificationId)>,
    ids: HashSet<NotificationId>,
}

impl Forgotten {
    /// Remembers `id`, dropping the oldest entries past the bounds.
    pub fn insert(&mut self, id: NotificationId, now: Instant) {
        while let Some((at, _)) = self.order.front()
            && (self.order.len() >= FORGOTTEN_MAX || now.duration_since(*at) > FORGOTTEN_TTL)
        {
            let (_, old) = self.order.pop_front().expect("front checked");
            self.ids.remove(&old);
        }
        self.ids.insert(id.clone());
        self.order.push_back((now, id));
    }

    /// Whether `id` was forgotten; it is not remembered any more after this (adopted ids are open again).
    pub fn take(&mut self, id: &str) -> bool {
        self.ids.remove(id)
    }
}

/// A claim whose accept commit failed: the notification it was made for, and when.
struct Held {
    notification_id: NotificationId,
    at: Instant,
}

/// The engine's side of reconciling: held claims and the wake-up of the reconcile task.
#[derive(Default)]
pub struct Reconciler {
    held: Mutex<HashMap<String, Held>>,
    wake: Notify,
}

impl Reconciler {
    /// An accept commit failed: hold its claims (they stay reserved in the index) and schedule a reconcile.
    /// Called before the 503 is answered, so the caller sees the claims held.
    pub fn accept_failed(&self, notification_id: &str, claims: &[Claim]) {
        let mut held = self.held.lock();
        for claim in claims {
            if held.len() >= HELD_MAX {
                break;
            }
            let entry = Held { notification_id: notification_id.to_string(), at: Instant::now() };
            held.insert(claim.key.clone(), entry);
        }
        drop(held);
        self.wake.notify_one();
    }

    /// Whether `key` waits for a reconcile (a retry is then answered 503).
    pub fn is_held(&self, key: &str) -> bool {
        self.held.lock().contains_key(key)
    }

    /// The request reserving `key` was not accepted: release the key unless a reconcile must decide.
    pub fn release_unless_held(&self, index: &IdempotencyIndex, key: &str) {
        let held = self.held.lock();
        if !held.contains_key(key) {
            index.release(key);
        }
    }

    /// Restores every held claim whose stored entry names the notification it was held for; with
    /// `release_before`, releases the claims held before it that are still held. Returns (restored, released).
    fn settle_claims(
        &self,
        entries: Vec<(String, IdempotencyEntry)>,
        index: &IdempotencyIndex,
        release_before: Option<Instant>,
    ) -> (usize, usize) {
        let mut held = self.held.lock();
        let mut restored = 0;
        for (key, entry) in entries {
            if held.get(&key).is_some_and(|h| h.notification_id == entry.notification_id) {
                index.restore(key.clone(), entry);
                held.remove(&key);
                restored += 1;
            }
        }
        let before = held.len();
        if let Some(cutoff) = release_before {
            held.retain(|key, h| {
                let keep = h.at >= cutoff;
                if !keep {
                    index.release(key);
                }
                keep
            });
        }
        (restored, before - held.len())
    }
}

/// Starts the reconcile task; it ends with `shutdown`.
pub(super) fn spawn(ctx: Arc<EngineCtx>, shards: Vec<ActorRef<ShardMsg>>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ctx.reconcile.wake.notified() => {}
            }
            if shutdown.run_until_cancelled(round(&ctx, &shards)).await.is_none() {
                return;
            }
        }
    });
}

/// Waits for the store, then runs the two passes; starts over if the store fails again meanwhile.
async fn round(ctx: &EngineCtx, shards: &[ActorRef<ShardMsg>]) {
    loop {
        while ctx.store.health().await.is_err() {
            tokio::time::sleep(HEALTH_POLL).await;
        }
        let started = Instant::now();
        let result = match pass(ctx, shards, None).await {
            Ok(()) => {
                tokio::time::sleep(SETTLE).await;
                pass(ctx, shards, Some(started)).await
            }
            Err(error) => Err(error),
        };
        match result {
            Ok(()) => return,
            Err(error) => tracing::warn!(%error, "reconcile pass failed; waiting for the store again"),
        }
        tokio::time::sleep(HEALTH_POLL).await;
    }
}

/// One pass: the shards adopt the open notifications they forgot, then held claims are settled.
async fn pass(
    ctx: &EngineCtx,
    shards: &[ActorRef<ShardMsg>],
    release_before: Option<Instant>,
) -> Result<(), StoreError> {
    let open = ctx.store.open_notifications().await?;
    let mut by_shard: Vec<Vec<StoredNotification>> = (0..shards.len()).map(|_| Vec::new()).collect();
    for stored in open {
        by_shard[shard_index(&stored.notification.owner, shards.len())].push(stored);
    }
    let mut adopted = 0;
    for (shard, stored) in shards.iter().zip(by_shard) {
        match shard.call(|reply| ShardMsg::Adopt(stored, reply), Some(ADOPT_TIMEOUT)).await {
            Ok(CallResult::Success(count)) => adopted += count,
            _ => return Err(StoreError::Unavailable("a shard did not answer the reconcile".into())),
        }
    }
    let entries = ctx.store.idempotency_entries(Timestamp::now()).await?;
    let (restored, released) = ctx.reconcile.settle_claims(entries, &ctx.idempotency, release_before);
    if adopted + restored + released > 0 {
        tracing::info!(adopted, restored, released, "reconciled with the store after failed accepts");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::NotificationStatus;

    fn claim(key: &str) -> Claim {
        Claim { key: key.into(), body_hash: 7, expires_at: Timestamp::now() + jiff::SignedDuration::from_hours(1) }
    }

    #[test]
    fn forgotten_ids_are_taken_once_and_bounded_by_age() {
        let mut forgotten = Forgotten::default();
        let t0 = Instant::now();
        forgotten.insert("a".into(), t0);
        assert!(forgotten.take("a"));
        assert!(!forgotten.take("a"), "an adopted id is not adopted twice");
        forgotten.insert("b".into(), t0);
        forgotten.insert("c".into(), t0 + FORGOTTEN_TTL + Duration::from_secs(1));
        assert!(!forgotten.take("b"), "too old");
        assert!(forgotten.take("c"));
    }

    #[test]
    fn held_claims_are_restored_when_stored_for_their_notification_and_released_otherwise() {
        let reconciler = Reconciler::default();
        let index = IdempotencyIndex::default();
        let now = Timestamp::now();
        for key in ["key:landed", "key:lost"] {
            assert_eq!(index.reserve(key, 7, now), super::super::Reservation::New);
        }
        reconciler.accept_failed("n1", &[claim("key:landed")]);
        reconciler.accept_failed("n2", &[claim("key:lost")]);
        reconciler.release_unless_held(&index, "key:lost");
        assert!(reconciler.is_held("key:lost"), "a failed accept keeps its claim until reconciled");

        let entry = claim("key:landed").entry("n1", NotificationStatus::Accepted);
        let other = IdempotencyEntry {
            notification_id: "n9".into(),
            ..claim("key:lost").entry("n9", NotificationStatus::Accepted)
        };
        let entries = vec![("key:landed".to_string(), entry), ("key:lost".to_string(), other)];
        assert_eq!(reconciler.settle_claims(entries.clone(), &index, None), (1, 0));
        match index.reserve("key:landed", 7, now) {
            super::super::Reservation::Replay(e) => {
                assert_eq!((e.notification_id.as_str(), e.status), ("n1", NotificationStatus::Accepted))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(reconciler.settle_claims(entries, &index, Some(Instant::now())), (0, 1));
        assert!(!reconciler.is_held("key:lost"));
        assert_eq!(index.reserve("key:lost", 7, now), super::super::Reservation::New, "released: a retry is new");
    }
}
