//! The in-app stream hub: which users have open stream connections, and the events those connections get once
//! an inbox change is committed.
//!
//! A sharded map holds, per user with at least one open connection, a `tokio::sync::broadcast` sender. Commits
//! that touch an inbox (a new item, read marks) reach the hub from their commit callback
//! ([`InboxHub::after_commit`]), so an event never precedes durability. For a user nobody listens to, that is
//! one map lookup that finds nothing. For a user with listeners the change is queued on the user's entry and a
//! short-lived *pump* task (one per user, only while changes are pending) reads the unread count from the store
//! once per batch, serializes each message once, and broadcasts it in commit order.
//!
//! Memory stays bounded: the broadcast buffer holds [`STREAM_BUFFER`] events; a connection that falls further
//! behind gets a final `resync` event and its stream ends ([`InboxSubscription::recv`]); the pending queue of a
//! user is capped the same way. The entry goes away with its last subscription.
//!
//! Exception to "only `api/` knows JSON shapes": the stream's messages are serialized here, once per event
//! rather than once per connection; the item has the inbox API's item shape (the same serde type).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::mem;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::runtime::Handle;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::domain::InboxItem;
use crate::store::{CommitCallback, Store, Write};
use crate::telemetry::Telemetry;

/// Events a connection may fall behind by before it is told to resync and closed.
pub const STREAM_BUFFER: usize = 64;
const HUB_SHARDS: usize = 64;

/// One stream message, serialized once (UTF-8 JSON) and shared by every connection of the user.
#[derive(Clone, Debug)]
pub struct StreamEvent {
    json: Bytes,
    ends_stream: bool,
}

/// The wire shapes of the stream (`docs/api.md`).
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Wire<'a> {
    Notification { item: &'a InboxItem },
    UnreadCount { unread_count: u64 },
}

impl StreamEvent {
    /// The message text: a JSON object, valid UTF-8.
    pub fn json(&self) -> &Bytes {
        &self.json
    }

    /// A `resync`: the connection missed events and must be closed; the client refetches the feed.
    pub fn ends_stream(&self) -> bool {
        self.ends_stream
    }

    fn wire(wire: &Wire<'_>) -> StreamEvent {
        let json = serde_json::to_vec(wire).expect("stream messages serialize");
        StreamEvent { json: Bytes::from(json), ends_stream: false }
    }

    pub fn notification(item: &InboxItem) -> StreamEvent {
        StreamEvent::wire(&Wire::Notification { item })
    }

    pub fn unread_count(unread_count: u64) -> StreamEvent {
        StreamEvent::wire(&Wire::UnreadCount { unread_count })
    }

    pub fn resync() -> StreamEvent {
        StreamEvent { json: Bytes::from_static(br#"{"type":"resync"}"#), ends_stream: true }
    }
}

/// The listeners of one user and the committed changes not yet broadcast to them.
struct Listeners {
    /// Tells a pump or a subscription of an earlier entry of the same user that this one is not theirs.
    generation: u64,
    sender: broadcast::Sender<StreamEvent>,
    pending: Vec<Arc<InboxItem>>,
    /// Read marks committed: the unread count changed.
    recount: bool,
    /// More changes than [`STREAM_BUFFER`] piled up before the pump caught up: everyone resyncs.
    overflowed: bool,
    pumping: bool,
    last_count: Option<u64>,
}

/// One shard of the hub's map: user id → listeners.
type HubShard = Mutex<HashMap<Box<str>, Listeners>>;

/// See the module docs.
pub struct InboxHub {
    shards: Box<[HubShard]>,
    hasher: RandomState,
    generations: AtomicU64,
    capacity: usize,
    store: Arc<dyn Store>,
    telemetry: Arc<Telemetry>,
    /// Commit callbacks run on the store's thread; pumps are spawned onto the engine's runtime from there.
    runtime: Handle,
}

impl InboxHub {
    /// A hub whose connections may lag by `capacity` events. Must be called inside the tokio runtime.
    pub fn new(store: Arc<dyn Store>, telemetry: Arc<Telemetry>, capacity: usize) -> Arc<InboxHub> {
        Arc::new(InboxHub {
            shards: (0..HUB_SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            generations: AtomicU64::new(0),
            capacity: capacity.max(1),
            store,
            telemetry,
            runtime: Handle::current(),
        })
    }

    fn shard(&self, user_id: &str) -> &HubShard {
        &self.shards[(self.hasher.hash_one(user_id) % HUB_SHARDS as u64) as usize]
    }

    /// A new listener for `user_id`'s events; events committed from now on reach it.
    pub fn subscribe(self: &Arc<Self>, user_id: &str) -> InboxSubscription {
        let mut shard = self.shard(user_id).lock();
        let listeners = shard.entry(user_id.into()).or_insert_with(|| Listeners {
            generation: self.generations.fetch_add(1, Ordering::Relaxed),
            sender: broadcast::Sender::new(self.capacity),
            pending: Vec::new(),
            recount: false,
            overflowed: false,
            pumping: false,
            last_count: None,
        });
        let receiver = listeners.sender.subscribe();
        let generation = listeners.generation;
        drop(shard);
        self.telemetry.inbox_streams_changed(1);
        InboxSubscription { hub: self.clone(), user_id: user_id.into(), generation, receiver, ended: false }
    }

    /// Users with at least one open subscription (for tests and diagnostics).
    pub fn listened_users(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Broadcasts `event` to `user_id`'s subscriptions directly, bypassing the store (connection tests).
    #[cfg(test)]
    pub(crate) fn broadcast_for_test(&self, user_id: &str, event: StreamEvent) {
        if let Some(listeners) = self.shard(user_id).lock().get(user_id) {
            let _ = listeners.sender.send(event);
        }
    }

    /// Ends every stream (engine shutdown): dropping the senders closes the receivers.
    pub fn close(&self) {
        for shard in self.shards.iter() {
            shard.lock().clear();
        }
    }

    /// Wraps a commit callback so the inbox changes among `writes` are published once they are durable.
    /// Returns `done` untouched when the writes touch no inbox.
    pub fn after_commit(self: &Arc<Self>, writes: &[Write], done: CommitCallback) -> CommitCallback {
        let touches_inbox = |w: &Write| {
            matches!(w, Write::PutInboxItem(_) | Write::MarkInboxRead { .. } | Write::MarkAllInboxRead { .. })
        };
        if !writes.iter().any(touches_inbox) {
            return done;
        }
        // Who listens is decided when the commit lands, not now: a connection opened while this commit is in
        // flight must still get its events.
        let mut items = Vec::new();
        let mut read = Vec::new();
        for write in writes {
            match write {
                Write::PutInboxItem(item) => items.push(item.clone()),
                Write::MarkInboxRead { user_id, .. } | Write::MarkAllInboxRead { user_id, .. } => {
                    read.push(user_id.clone())
                }
                _ => {}
            }
        }
        let hub = self.clone();
        Box::new(move |result| {
            let committed = result.is_ok();
            done(result);
            if committed {
                for item in items {
                    let user_id = item.user_id.clone();
                    hub.committed(&user_id, |l| l.pending.push(item));
                }
                for user_id in read {
                    hub.committed(&user_id, |l| l.recount = true);
                }
            }
        })
    }

    /// Records a committed change for `user_id`'s listeners, if there are any, and makes sure a pump runs.
    fn committed(self: &Arc<Self>, user_id: &str, change: impl FnOnce(&mut Listeners)) {
        let mut shard = self.shard(user_id).lock();
        let Some(listeners) = shard.get_mut(user_id) else { return };
        if listeners.pending.len() >= self.capacity {
            listeners.overflowed = true;
            listeners.pending.clear();
        } else if !listeners.overflowed {
            change(listeners);
        }
        if mem::replace(&mut listeners.pumping, true) {
            return;
        }
        let generation = listeners.generation;
        drop(shard);
        self.runtime.spawn(self.clone().pump(user_id.into(), generation));
    }

    /// Broadcasts a user's pending changes in commit order, one unread-count read per batch, until none are
    /// left. Holds no lock across the store read.
    async fn pump(self: Arc<Self>, user_id: Box<str>, generation: u64) {
        loop {
            let (items, overflowed) = {
                let mut shard = self.shard(&user_id).lock();
                let Some(l) = shard.get_mut(&user_id).filter(|l| l.generation == generation) else { return };
                if l.pending.is_empty() && !l.recount && !l.overflowed {
                    l.pumping = false;
                    return;
                }
                l.recount = false;
                (mem::take(&mut l.pending), mem::replace(&mut l.overflowed, false))
            };
            // Read after the commits above landed, so the count includes them.
            let count = if overflowed {
                None
            } else {
                match self.store.inbox(&user_id, None, 1, true).await {
                    Ok((_, count)) => Some(count),
                    Err(error) => {
                        tracing::warn!(%error, "inbox stream could not read the unread count; asking clients to resync");
                        None
                    }
                }
            };
            // Serialized once for all of the user's connections, and the notifications outside the lock.
            let events = match count {
                None => {
                    tracing::info!(overflowed, "inbox stream asks its clients to resync");
                    vec![StreamEvent::resync()]
                }
                Some(_) => items.iter().map(|item| StreamEvent::notification(item)).collect(),
            };
            let mut shard = self.shard(&user_id).lock();
            let Some(l) = shard.get_mut(&user_id).filter(|l| l.generation == generation) else { return };
            let count_event = match count {
                // After notifications always, after read marks only when it changed.
                Some(count) if !items.is_empty() || l.last_count != Some(count) => {
                    Some(StreamEvent::unread_count(count))
                }
                _ => None,
            };
            l.last_count = count;
            for event in events.into_iter().chain(count_event) {
                // An error only means every receiver is gone; the last one's drop removes the entry.
                let _ = l.sender.send(event);
            }
        }
    }

    fn unsubscribe(&self, user_id: &str, generation: u64) {
        self.telemetry.inbox_streams_changed(-1);
        let mut shard = self.shard(user_id).lock();
        // The subscription's own receiver is still alive here, hence 1.
        if shard.get(user_id).is_some_and(|l| l.generation == generation && l.sender.receiver_count() <= 1) {
            shard.remove(user_id);
        }
    }
}

/// One connection's view of a user's events. Dropping it unsubscribes (and removes the user's entry if it
/// was the last).
pub struct InboxSubscription {
    hub: Arc<InboxHub>,
    user_id: Box<str>,
    generation: u64,
    receiver: broadcast::Receiver<StreamEvent>,
    ended: bool,
}

impl InboxSubscription {
    /// The next event. A subscriber that fell more than the buffer behind gets [`StreamEvent::resync`], after
    /// which the stream ends (`None`), as it does when the hub closes.
    pub async fn recv(&mut self) -> Option<StreamEvent> {
        if self.ended {
            return None;
        }
        match self.receiver.recv().await {
            Ok(event) => {
                self.ended = event.ends_stream();
                Some(event)
            }
            Err(RecvError::Lagged(skipped)) => {
                tracing::info!(skipped, "inbox stream connection lagged; asking it to resync");
                self.ended = true;
                Some(StreamEvent::resync())
            }
            Err(RecvError::Closed) => {
                self.ended = true;
                None
            }
        }
    }
}

impl Drop for InboxSubscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.user_id, self.generation);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jiff::Timestamp;
    use serde_json::Value;

    use super::*;
    use crate::domain::Category;
    use crate::store::EmbeddedStore;

    fn hub(capacity: usize) -> (Arc<InboxHub>, Arc<Telemetry>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), 64).unwrap();
        let telemetry = Arc::new(Telemetry::default());
        (InboxHub::new(store, telemetry.clone(), capacity), telemetry, dir)
    }

    fn item(user_id: &str, id: &str) -> Arc<InboxItem> {
        Arc::new(InboxItem {
            id: id.into(),
            user_id: user_id.into(),
            notification_id: format!("n-{id}"),
            category: Category::Announcement,
            title: Some("t".into()),
            body: "hello".into(),
            created_at: Timestamp::UNIX_EPOCH,
            read_at: None,
        })
    }

    /// Commits through the store the way the engine does: the hub wraps the callback.
    async fn commit(hub: &Arc<InboxHub>, writes: Vec<Write>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done = hub.after_commit(&writes, Box::new(move |r| drop(tx.send(r))));
        hub.store.submit(writes, done);
        rx.await.unwrap().unwrap();
    }

    /// The next event as JSON; the timeout is a hang guard, not a speed check.
    async fn next(sub: &mut InboxSubscription) -> Option<Value> {
        let event = tokio::time::timeout(Duration::from_secs(10), sub.recv()).await.expect("an event or the end");
        event.map(|e| serde_json::from_slice(e.json()).unwrap())
    }

    fn gauge(telemetry: &Telemetry) -> String {
        telemetry.render().lines().find(|l| l.starts_with("herald_inbox_streams ")).unwrap().to_string()
    }

    #[tokio::test]
    async fn the_entry_goes_away_with_the_last_subscription() {
        let (hub, telemetry, _dir) = hub(STREAM_BUFFER);
        let a = hub.subscribe("u1");
        let b = hub.subscribe("u1");
        let c = hub.subscribe("u2");
        assert_eq!(hub.listened_users(), 2);
        assert_eq!(gauge(&telemetry), "herald_inbox_streams 3");
        drop(a);
        assert_eq!(hub.listened_users(), 2, "u1 still has a listener");
        drop(b);
        drop(c);
        assert_eq!(hub.listened_users(), 0);
        assert_eq!(gauge(&telemetry), "herald_inbox_streams 0");
    }

    #[tokio::test]
    async fn a_lagging_subscriber_gets_resync_and_its_stream_ends() {
        let (hub, _telemetry, _dir) = hub(2);
        let mut slow = hub.subscribe("u1");
        for n in 0..5 {
            hub.broadcast_for_test("u1", StreamEvent::unread_count(n));
        }
        let resync = next(&mut slow).await.expect("a resync before the end");
        assert_eq!(resync, serde_json::json!({"type": "resync"}));
        assert_eq!(next(&mut slow).await, None, "the stream ends after a resync");
        // A subscriber that keeps up is unaffected.
        let mut fresh = hub.subscribe("u1");
        hub.broadcast_for_test("u1", StreamEvent::unread_count(9));
        assert_eq!(next(&mut fresh).await.unwrap()["unread_count"], 9);
    }

    #[tokio::test]
    async fn committed_items_reach_listeners_in_commit_order_followed_by_the_count() {
        let (hub, _telemetry, _dir) = hub(STREAM_BUFFER);
        let mut sub = hub.subscribe("u1");
        for id in ["i1", "i2", "i3"] {
            commit(&hub, vec![Write::PutInboxItem(item("u1", id))]).await;
        }
        // Changes that land while a batch is being read may share one count (and a count read for an earlier
        // batch may already include later items); every notification is followed by a count, and the last
        // count includes them all.
        let mut seen = Vec::new();
        let mut last_count = None;
        while seen.len() < 3 || last_count != Some(3) {
            let event = next(&mut sub).await.unwrap();
            match event["type"].as_str().unwrap() {
                "notification" => {
                    assert_eq!(event["item"]["user_id"], "u1");
                    seen.push(event["item"]["id"].as_str().unwrap().to_string());
                    last_count = None;
                }
                "unread_count" => last_count = event["unread_count"].as_u64(),
                other => panic!("unexpected {other}"),
            }
        }
        assert_eq!(seen, ["i1", "i2", "i3"]);

        let at = Timestamp::now();
        commit(&hub, vec![Write::MarkInboxRead { user_id: "u1".into(), ids: vec!["i2".into()], at }]).await;
        assert_eq!(next(&mut sub).await.unwrap(), serde_json::json!({"type": "unread_count", "unread_count": 2}));
        commit(&hub, vec![Write::MarkAllInboxRead { user_id: "u1".into(), at }]).await;
        assert_eq!(next(&mut sub).await.unwrap(), serde_json::json!({"type": "unread_count", "unread_count": 0}));
    }

    #[tokio::test]
    async fn changes_for_users_nobody_listens_to_create_nothing() {
        let (hub, _telemetry, _dir) = hub(STREAM_BUFFER);
        let mut other = hub.subscribe("u2");
        commit(&hub, vec![Write::PutInboxItem(item("u1", "i1"))]).await;
        assert_eq!(hub.listened_users(), 1, "no entry for u1");
        // u2's first event is its own item: nothing of u1's was queued ahead of it.
        commit(&hub, vec![Write::PutInboxItem(item("u2", "i2"))]).await;
        assert_eq!(next(&mut other).await.unwrap()["item"]["id"], "i2");
    }
}
