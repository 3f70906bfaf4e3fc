//! The store conformance suite: what every [`Store`] backend must do, written once as generic functions in
//! [`suite`] and run against each backend by one `conformance!` invocation at the bottom of this file.
//!
//! A backend is a [`Backend`]: something that opens a store over its own state (a temp dir, a private
//! redis-server) and can open it again after the first one is dropped. No test sleeps: waits are on callbacks.

#[path = "store_conformance/campaigns.rs"]
mod campaigns;
mod common;
#[path = "store_conformance/scheduling.rs"]
mod scheduling;

use std::sync::Arc;

use herald::config::{RedisSettings, Secret};
use herald::store::{EmbeddedStore, RedisStore, Store};

use common::redis::RedisServer;

/// A store backend under test.
pub trait Backend {
    type Store: Store;
    /// Opens a store over this backend's state; after the previous one is dropped this reopens the same state.
    fn open(&self) -> Arc<Self::Store>;
    /// Write transactions (group commits) the backend has made so far.
    fn commits(store: &Self::Store) -> u64;
}

/// The embedded redb store in a temp dir.
pub struct Embedded {
    dir: tempfile::TempDir,
}

/// Small enough that the group-commit tests see several batches (both backends use it).
const BATCH_MAX: usize = 256;

impl Embedded {
    fn new() -> Embedded {
        Embedded { dir: tempfile::tempdir().expect("temp dir") }
    }
}

impl Backend for Embedded {
    type Store = EmbeddedStore;

    fn open(&self) -> Arc<EmbeddedStore> {
        EmbeddedStore::open(self.dir.path(), BATCH_MAX).expect("open embedded store")
    }

    fn commits(store: &EmbeddedStore) -> u64 {
        store.commits()
    }
}

/// A private redis-server; every `open` connects a new store to it (same prefix, so it sees the same data).
pub struct Redis {
    server: RedisServer,
}

impl Redis {
    /// `None` when redis-server is missing (the test is skipped unless `HERALD_REQUIRE_REDIS=1`).
    fn new() -> Option<Redis> {
        RedisServer::start().map(|server| Redis { server })
    }
}

impl Backend for Redis {
    type Store = RedisStore;

    fn open(&self) -> Arc<RedisStore> {
        let settings = RedisSettings { url: Secret::new(self.server.url()), ..RedisSettings::default() };
        // `open` is async (it connects); the suite runs on a multi-threaded runtime, so blocking here is allowed.
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(RedisStore::open(&settings, BATCH_MAX))
        })
        .expect("open redis store")
    }

    fn commits(store: &RedisStore) -> u64 {
        store.commits()
    }
}

/// One `#[tokio::test]` per suite function for the backend `$make` builds.
macro_rules! conformance {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;

            conformance!(@store $make;
                users_and_templates_round_trip,
                notifications_come_back_with_their_deliveries_in_id_order,
                open_notifications_follow_status_in_seq_order,
                dlq_holds_exactly_the_dead_deliveries,
                idempotency_entries_are_returned_until_they_expire,
                inbox_is_newest_first_and_pages_by_cursor,
                read_marking_is_idempotent_and_unread_counts_are_exact,
                max_seq_is_the_highest_seq_put,
                callbacks_run_in_submission_order,
                health_is_ok_on_a_working_store,
                scheduled_is_in_due_then_id_order_up_to_until,
                scheduled_pages_through_a_shared_due_time_exactly_once,
                scheduled_notifications_leave_and_move_in_the_index_as_they_change,
                sequences_round_trip_and_only_running_ones_are_open,
                campaigns_round_trip_and_only_active_ones_are_listed,
                audience_pages_round_trip_and_go_when_the_campaign_ends,
                campaign_final_counts_add_up_beside_the_record,
                user_ids_page_in_id_order_by_tag_as_tags_change
            );
            conformance!(@backend $make;
                writes_survive_close_and_reopen,
                campaigns_survive_close_and_reopen,
                queued_submits_are_committed_in_few_transactions,
                concurrent_submits_share_commits
            );
        }
    };
    (@store $make:expr; $($test:ident),+) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $test() {
            let backend = $make;
            suite::$test(backend.open()).await;
        }
    )+};
    (@backend $make:expr; $($test:ident),+) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $test() {
            suite::$test(&$make).await;
        }
    )+};
}

conformance!(embedded, Embedded::new());
conformance!(
    redis,
    match Redis::new() {
        Some(redis) => redis,
        None => return,
    }
);

pub mod suite {
    use std::sync::Arc;

    use herald::domain::*;
    use herald::store::{Page, Store, Write};
    use jiff::{SignedDuration, Timestamp};
    use parking_lot::Mutex;
    use tokio::sync::mpsc;

    use super::Backend;
    pub use crate::campaigns::*;
    use crate::common::*;
    pub use crate::scheduling::*;

    pub async fn users_and_templates_round_trip(store: Arc<dyn Store>) {
        assert!(store.users().await.unwrap().is_empty());
        let mut changed = (*user("u1")).clone();
        changed.locale = Some("ko".into());
        let writes = vec![
            Write::PutUser(user("u1")),
            Write::PutUser(user("u2")),
            Write::PutUser(Arc::new(changed.clone())),
            Write::PutTemplate(template("order_shipped")),
        ];
        store.commit(writes).await.unwrap();
        let mut users = store.users().await.unwrap();
        users.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(users, vec![changed, (*user("u2")).clone()], "a put replaces");
        assert_eq!(store.templates().await.unwrap(), vec![(*template("order_shipped")).clone()]);
    }

    pub async fn notifications_come_back_with_their_deliveries_in_id_order(store: Arc<dyn Store>) {
        let n = notification("n1", 1, NotificationStatus::Dispatching);
        let (d1, d2, d3) = (
            delivery(&id(1), "n1", Channel::Sms, DeliveryStatus::Sent),
            delivery(&id(2), "n1", Channel::Push, DeliveryStatus::Queued),
            delivery(&id(3), "n1", Channel::Email, DeliveryStatus::Queued),
        );
        let other = delivery(&id(4), "n2", Channel::Sms, DeliveryStatus::Queued);
        let writes = [&d3, &other, &d1, &d2].map(|d| Write::PutDelivery(Arc::clone(d)));
        store.commit([vec![Write::PutNotification(n.clone())], writes.to_vec()].concat()).await.unwrap();
        let mut sent = (*d2).clone();
        sent.status = DeliveryStatus::Sent;
        store.commit(vec![Write::PutDelivery(Arc::new(sent.clone()))]).await.unwrap();

        let stored = store.notification("n1").await.unwrap().expect("stored");
        assert_eq!(stored.notification, *n);
        assert_eq!(stored.deliveries, vec![(*d1).clone(), sent.clone(), (*d3).clone()]);
        assert_eq!(store.delivery(&id(2)).await.unwrap(), Some(sent));
        assert_eq!(store.notification("nope").await.unwrap(), None);
        assert_eq!(store.delivery("nope").await.unwrap(), None);
    }

    pub async fn open_notifications_follow_status_in_seq_order(store: Arc<dyn Store>) {
        let put = |id: &str, seq, status| Write::PutNotification(notification(id, seq, status));
        let writes = vec![
            put("n3", 30, NotificationStatus::Scheduled),
            put("n1", 10, NotificationStatus::Accepted),
            put("n2", 20, NotificationStatus::Dispatching),
            put("n4", 40, NotificationStatus::Completed),
            Write::PutDelivery(delivery(&id(2), "n1", Channel::Push, DeliveryStatus::Queued)),
            Write::PutDelivery(delivery(&id(1), "n1", Channel::Sms, DeliveryStatus::Queued)),
        ];
        store.commit(writes).await.unwrap();
        let open = store.open_notifications().await.unwrap();
        let ids: Vec<_> = open.iter().map(|s| s.notification.id.as_str()).collect();
        assert_eq!(ids, ["n1", "n2"], "final and scheduled ones are not open; seq order");
        let delivery_ids: Vec<_> = open[0].deliveries.iter().map(|d| d.id.clone()).collect();
        assert_eq!(delivery_ids, [id(1), id(2)]);

        store
            .commit(vec![put("n2", 20, NotificationStatus::Failed), put("n3", 30, NotificationStatus::Cancelled)])
            .await
            .unwrap();
        let ids: Vec<_> = store.open_notifications().await.unwrap().into_iter().map(|s| s.notification.id).collect();
        assert_eq!(ids, ["n1"]);
        assert!(store.scheduled(None, i64::MAX, 10).await.unwrap().is_empty(), "a cancelled one is not scheduled");
        let closed = store.notification("n2").await.unwrap().expect("final notifications stay readable");
        assert_eq!(closed.notification.status, NotificationStatus::Failed);
    }

    pub async fn dlq_holds_exactly_the_dead_deliveries(store: Arc<dyn Store>) {
        let channels = [Channel::Sms, Channel::Push, Channel::Sms, Channel::Email, Channel::Sms, Channel::Push];
        let mut writes: Vec<_> = (1..=6)
            .map(|n| Write::PutDelivery(delivery(&id(n), "n1", channels[n as usize - 1], DeliveryStatus::Dead)))
            .collect();
        writes.push(Write::PutDelivery(delivery(&id(7), "n1", Channel::Sms, DeliveryStatus::Failed)));
        store.commit(writes).await.unwrap();

        let ids = |page: &Page<Delivery>| page.items.iter().map(|d| d.id.clone()).collect::<Vec<_>>();
        let first = store.dlq(None, None, 4).await.unwrap();
        assert_eq!(ids(&first), [id(1), id(2), id(3), id(4)], "oldest first");
        let cursor = first.next_cursor.expect("more pages");
        let second = store.dlq(None, Some(&cursor), 4).await.unwrap();
        assert_eq!((ids(&second), second.next_cursor), (vec![id(5), id(6)], None));
        let exact = store.dlq(None, None, 6).await.unwrap();
        assert_eq!(exact.next_cursor, None, "no cursor when nothing is left");

        let sms = store.dlq(Some(Channel::Sms), None, 2).await.unwrap();
        assert_eq!(ids(&sms), [id(1), id(3)]);
        let sms_rest = store.dlq(Some(Channel::Sms), sms.next_cursor.as_deref(), 2).await.unwrap();
        assert_eq!((ids(&sms_rest), sms_rest.next_cursor), (vec![id(5)], None));
        assert!(store.dlq(Some(Channel::Alimtalk), None, 10).await.unwrap().items.is_empty());

        // A replay moves it out of the DLQ; dying again puts it back.
        store
            .commit(vec![Write::PutDelivery(delivery(&id(3), "n1", Channel::Sms, DeliveryStatus::Retrying))])
            .await
            .unwrap();
        assert_eq!(ids(&store.dlq(Some(Channel::Sms), None, 10).await.unwrap()), [id(1), id(5)]);
        assert_eq!(store.dlq(None, None, 10).await.unwrap().items.len(), 5);
        store
            .commit(vec![Write::PutDelivery(delivery(&id(3), "n1", Channel::Sms, DeliveryStatus::Dead))])
            .await
            .unwrap();
        assert_eq!(ids(&store.dlq(Some(Channel::Sms), None, 10).await.unwrap()), [id(1), id(3), id(5)]);
    }

    pub async fn idempotency_entries_are_returned_until_they_expire(store: Arc<dyn Store>) {
        let now = Timestamp::now();
        let live = idempotency_entry("n1", now + SignedDuration::from_hours(24));
        let short = idempotency_entry("n2", now + SignedDuration::from_secs(60));
        let expired = idempotency_entry("n3", now - SignedDuration::from_secs(1));
        let put = |key: &str, entry: &IdempotencyEntry| Write::PutIdempotency { key: key.into(), entry: entry.clone() };
        store.commit(vec![put("k1", &live), put("k2", &short), put("k3", &expired)]).await.unwrap();

        let mut entries = store.idempotency_entries(now).await.unwrap();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(entries, vec![("k1".to_string(), live.clone()), ("k2".to_string(), short)]);
        let later = store.idempotency_entries(now + SignedDuration::from_secs(61)).await.unwrap();
        assert_eq!(later, vec![("k1".to_string(), live.clone())], "an entry is gone once its expiry has passed");
        let at_expiry = store.idempotency_entries(live.expires_at).await.unwrap();
        assert!(at_expiry.is_empty(), "entries that expire after `now`, not at it");

        let replaced = idempotency_entry("n9", now + SignedDuration::from_secs(30));
        store.commit(vec![put("k1", &replaced)]).await.unwrap();
        let later = store.idempotency_entries(now + SignedDuration::from_secs(61)).await.unwrap();
        assert!(later.is_empty(), "a replaced entry expires with its new expiry");
    }

    pub async fn inbox_is_newest_first_and_pages_by_cursor(store: Arc<dyn Store>) {
        let mut writes: Vec<_> = [3, 1, 5, 2, 4].map(|n| Write::PutInboxItem(inbox_item("u1", &id(n)))).to_vec();
        writes.push(Write::PutInboxItem(inbox_item("u10", &id(9))));
        writes.push(Write::PutInboxItem(inbox_item("u", &id(8))));
        store.commit(writes).await.unwrap();
        let ids = |page: &Page<InboxItem>| page.items.iter().map(|i| i.id.clone()).collect::<Vec<_>>();

        let (first, unread) = store.inbox("u1", None, 2, false).await.unwrap();
        assert_eq!((ids(&first), unread), (vec![id(5), id(4)], 5));
        let (second, _) = store.inbox("u1", first.next_cursor.as_deref(), 2, false).await.unwrap();
        assert_eq!(ids(&second), [id(3), id(2)]);
        let (last, _) = store.inbox("u1", second.next_cursor.as_deref(), 2, false).await.unwrap();
        assert_eq!((ids(&last), last.next_cursor), (vec![id(1)], None), "no other user's items");
        assert_eq!(store.inbox("u1", None, 5, false).await.unwrap().0.next_cursor, None);
        assert_eq!(store.inbox("u1", None, 10, false).await.unwrap().0.items[0], *inbox_item("u1", &id(5)));

        let mark = Write::MarkInboxRead { user_id: "u1".into(), ids: vec![id(5), id(3)], at: Timestamp::now() };
        store.commit(vec![mark]).await.unwrap();
        let (unread_page, unread) = store.inbox("u1", None, 2, true).await.unwrap();
        assert_eq!((ids(&unread_page), unread), (vec![id(4), id(2)], 3));
        let (rest, _) = store.inbox("u1", unread_page.next_cursor.as_deref(), 2, true).await.unwrap();
        assert_eq!((ids(&rest), rest.next_cursor), (vec![id(1)], None));

        let (empty, unread) = store.inbox("nobody", None, 10, false).await.unwrap();
        assert_eq!((empty, unread), (Page { items: vec![], next_cursor: None }, 0));
    }

    pub async fn read_marking_is_idempotent_and_unread_counts_are_exact(store: Arc<dyn Store>) {
        let writes = (1..=4)
            .map(|n| Write::PutInboxItem(inbox_item("u1", &id(n))))
            .chain((1..=2).map(|n| Write::PutInboxItem(inbox_item("u2", &id(10 + n)))))
            .collect();
        store.commit(writes).await.unwrap();
        let unread = |user: &'static str| {
            let store = store.clone();
            async move { store.inbox(user, None, 100, false).await.unwrap().1 }
        };
        assert_eq!((unread("u1").await, unread("u2").await), (4, 2));

        let at = Timestamp::now();
        let mark = |ids: Vec<String>| Write::MarkInboxRead { user_id: "u1".into(), ids, at };
        store.commit(vec![mark(vec![id(1), id(2), "unknown".into(), id(11)])]).await.unwrap();
        assert_eq!((unread("u1").await, unread("u2").await), (2, 2), "another user's id is unknown to u1");
        store.commit(vec![mark(vec![id(1), id(2)]), mark(vec![id(2)])]).await.unwrap();
        assert_eq!(unread("u1").await, 2, "marking again changes nothing");
        let items = store.inbox("u1", None, 100, false).await.unwrap().0.items;
        let read: Vec<_> = items.iter().map(|i| i.read_at.is_some()).collect();
        assert_eq!(read, [false, false, true, true]);
        assert_eq!(items[3].read_at, Some(at));

        store.commit(vec![Write::MarkAllInboxRead { user_id: "u1".into(), at }]).await.unwrap();
        store.commit(vec![Write::MarkAllInboxRead { user_id: "u1".into(), at }]).await.unwrap();
        assert_eq!((unread("u1").await, unread("u2").await), (0, 2));
        assert!(store.inbox("u1", None, 100, true).await.unwrap().0.items.is_empty());
        let items = store.inbox("u1", None, 100, false).await.unwrap().0.items;
        assert!(items.iter().all(|i| i.read_at == Some(at)));

        store.commit(vec![Write::PutInboxItem(inbox_item("u1", &id(5)))]).await.unwrap();
        assert_eq!(unread("u1").await, 1, "a new item is unread");
    }

    pub async fn max_seq_is_the_highest_seq_put(store: Arc<dyn Store>) {
        assert_eq!(store.max_seq().await.unwrap(), 0);
        let put = |id: &str, seq| Write::PutNotification(notification(id, seq, NotificationStatus::Accepted));
        store.commit(vec![put("a", 7), put("b", 3)]).await.unwrap();
        assert_eq!(store.max_seq().await.unwrap(), 7);
        store.commit(vec![Write::PutNotification(notification("a", 7, NotificationStatus::Completed))]).await.unwrap();
        assert_eq!(store.max_seq().await.unwrap(), 7, "closing the highest does not lower it");
        store.commit(vec![put("c", 8)]).await.unwrap();
        assert_eq!(store.max_seq().await.unwrap(), 8);
    }

    pub async fn callbacks_run_in_submission_order(store: Arc<dyn Store>) {
        const TASKS: u64 = 8;
        const PER_TASK: u64 = 125;
        // Submission order across tasks is the order of `submit` calls, made visible by a ticket taken under
        // the same lock.
        let ticket = Arc::new(Mutex::new(0u64));
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let (store, ticket, done_tx) = (store.clone(), ticket.clone(), done_tx.clone());
                tokio::spawn(async move {
                    for _ in 0..PER_TASK {
                        {
                            let mut next = ticket.lock();
                            let n = *next;
                            *next += 1;
                            let done_tx = done_tx.clone();
                            let writes = vec![Write::PutUser(user(&format!("u{n}")))];
                            store.submit(writes, Box::new(move |result| drop(done_tx.send((n, result)))));
                        }
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let mut order = Vec::new();
        while order.len() < (TASKS * PER_TASK) as usize {
            let (n, result) = done_rx.recv().await.expect("every callback runs");
            result.unwrap();
            order.push(n);
        }
        assert_eq!(order, (0..TASKS * PER_TASK).collect::<Vec<_>>());
        assert_eq!(store.users().await.unwrap().len(), (TASKS * PER_TASK) as usize);
    }

    pub async fn health_is_ok_on_a_working_store(store: Arc<dyn Store>) {
        store.health().await.unwrap();
        store.commit(vec![Write::PutUser(user("u1"))]).await.unwrap();
        store.health().await.unwrap();
    }

    pub async fn writes_survive_close_and_reopen<B: Backend>(backend: &B) {
        let now = Timestamp::now();
        let entry = idempotency_entry("n1", now + SignedDuration::from_hours(24));
        let writes = vec![
            Write::PutUser(user("u1")),
            Write::PutTemplate(template("t1")),
            Write::PutNotification(notification("n1", 41, NotificationStatus::Dispatching)),
            Write::PutDelivery(delivery(&id(1), "n1", Channel::Sms, DeliveryStatus::Dead)),
            Write::PutIdempotency { key: "k1".into(), entry: entry.clone() },
            Write::PutInboxItem(inbox_item("u1", &id(2))),
            Write::PutNotification(scheduled("n2", 42, 5_000)),
            Write::PutSequence(sequence("s1", SequenceStatus::Running)),
            Write::PutSequence(sequence("s2", SequenceStatus::Completed)),
        ];
        let store = backend.open();
        store.commit(writes).await.unwrap();
        let before = (store.open_notifications().await.unwrap(), store.inbox("u1", None, 10, false).await.unwrap());
        drop(store);

        let store = backend.open();
        assert_eq!(store.users().await.unwrap(), vec![(*user("u1")).clone()]);
        assert_eq!(store.templates().await.unwrap(), vec![(*template("t1")).clone()]);
        assert_eq!(store.open_notifications().await.unwrap(), before.0);
        assert_eq!(store.inbox("u1", None, 10, false).await.unwrap(), before.1);
        assert_eq!(
            store.dlq(None, None, 10).await.unwrap().items,
            vec![(*delivery(&id(1), "n1", Channel::Sms, DeliveryStatus::Dead)).clone()]
        );
        assert_eq!(store.idempotency_entries(now).await.unwrap(), vec![("k1".to_string(), entry)]);
        assert_eq!(store.max_seq().await.unwrap(), 42);
        assert_eq!(store.scheduled(None, i64::MAX, 10).await.unwrap(), vec![(*scheduled("n2", 42, 5_000)).clone()]);
        assert_eq!(store.open_sequences().await.unwrap(), vec![(*sequence("s1", SequenceStatus::Running)).clone()]);
        assert_eq!(store.sequence("s2").await.unwrap(), Some((*sequence("s2", SequenceStatus::Completed)).clone()));
    }

    /// Deterministic: the first callback holds the backend's callback thread while 2,000 submissions queue up
    /// behind it, so they must be committed in batches.
    pub async fn queued_submits_are_committed_in_few_transactions<B: Backend>(backend: &B) {
        const SUBMITS: u64 = 2_000;
        let store = backend.open();
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        store.submit(
            vec![],
            Box::new(move |_| {
                let _ = entered_tx.send(());
                let _ = release_rx.recv();
            }),
        );
        entered_rx.await.unwrap();
        let before = B::commits(&store);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        for n in 0..SUBMITS {
            let done_tx = done_tx.clone();
            let writes = vec![Write::PutUser(user(&format!("u{n}")))];
            store.submit(writes, Box::new(move |result| drop(done_tx.send(result))));
        }
        release_tx.send(()).unwrap();
        for _ in 0..SUBMITS {
            done_rx.recv().await.unwrap().unwrap();
        }
        let commits = B::commits(&store) - before;
        eprintln!("queued: {SUBMITS} submits -> {commits} commits");
        assert!((1..=SUBMITS / 50).contains(&commits), "{SUBMITS} queued submits took {commits} commits");
    }

    /// The realistic case: 2,000 tasks each awaiting their own commit.
    pub async fn concurrent_submits_share_commits<B: Backend>(backend: &B) {
        const SUBMITS: u64 = 2_000;
        let store = backend.open();
        let before = B::commits(&store);
        let tasks: Vec<_> = (0..SUBMITS)
            .map(|n| {
                let store = store.clone();
                tokio::spawn(async move { store.commit(vec![Write::PutUser(user(&format!("u{n}")))]).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let commits = B::commits(&store) - before;
        eprintln!("concurrent: {SUBMITS} submits -> {commits} commits");
        assert!(commits <= SUBMITS / 4, "{SUBMITS} concurrent submits took {commits} commits");
        assert_eq!(store.users().await.unwrap().len(), SUBMITS as usize);
    }
}
