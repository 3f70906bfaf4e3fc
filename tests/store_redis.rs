//! Redis-backend behaviour beyond the conformance suite, against a private redis-server this test kills,
//! stops and restarts: acknowledged writes survive a Redis crash (AOF `appendfsync always`), a dead or stopped
//! Redis makes commits fail with `Unavailable` instead of hanging, the store recovers without being reopened,
//! inboxes are capped, final notifications expire, and Herald end to end runs on Redis with `/readyz` tracking
//! it. Waits are bounded polls of observable state.

mod app;
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::config::{RedisSettings, Secret};
use herald::domain::{Channel, DeliveryStatus, NotificationStatus};
use herald::store::{RedisStore, Store, StoreError, Write};
use parking_lot::Mutex;
use serde_json::json;

use common::redis::RedisServer;
use common::*;

/// Short, so the fault tests fail over quickly; the assertions are about the outcome, not the time taken.
const TIMEOUT_MS: u64 = 300;

fn settings(server: &RedisServer) -> RedisSettings {
    RedisSettings { url: Secret::new(server.url()), command_timeout_ms: TIMEOUT_MS, ..RedisSettings::default() }
}

async fn open(settings: &RedisSettings) -> Arc<RedisStore> {
    RedisStore::open(settings, 256).await.expect("open redis store")
}

/// Retries `attempt` until it succeeds (bounded): the connection comes back in the background after Redis does.
async fn eventually_ok<T, F: Future<Output = Result<T, StoreError>>>(what: &str, attempt: impl Fn() -> F) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(e) => assert!(Instant::now() < deadline, "{what} never worked again: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn commit_eventually(store: &RedisStore, writes: impl Fn() -> Vec<Write>) {
    eventually_ok("commits", || store.commit(writes())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_write_survives_a_redis_kill_and_restart() {
    let Some(mut server) = RedisServer::start() else { return };
    let store = open(&settings(&server)).await;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..8)
        .map(|task| {
            let (store, acked) = (store.clone(), acked.clone());
            tokio::spawn(async move {
                for n in 0.. {
                    let id = format!("u{task}-{n}");
                    if store.commit(vec![Write::PutUser(user(&id))]).await.is_err() {
                        return;
                    }
                    acked.lock().push(id);
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().len() < 500 {
        assert!(Instant::now() < deadline, "writes never got going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    for writer in writers {
        writer.await.unwrap();
    }
    server.restart();

    let acked = acked.lock().clone();
    let stored = eventually_ok("reads", || store.users()).await;
    let stored: std::collections::HashSet<_> = stored.into_iter().map(|u| u.id).collect();
    let lost: Vec<_> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(lost.is_empty(), "{} of {} acknowledged writes lost: {lost:?}", lost.len(), acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn while_redis_is_killed_commits_are_unavailable_and_they_work_again_after_a_restart() {
    let Some(mut server) = RedisServer::start() else { return };
    let store = open(&settings(&server)).await;
    store.commit(vec![Write::PutUser(user("before"))]).await.unwrap();

    server.kill();
    let result = store.commit(vec![Write::PutUser(user("during"))]).await;
    assert!(matches!(result, Err(StoreError::Unavailable(_))), "{result:?}");
    assert!(store.health().await.is_err());
    assert!(matches!(store.users().await, Err(StoreError::Unavailable(_))));

    server.restart();
    commit_eventually(&store, || vec![Write::PutUser(user("after"))]).await;
    store.health().await.unwrap();
    let mut ids: Vec<_> = store.users().await.unwrap().into_iter().map(|u| u.id).collect();
    ids.sort();
    assert_eq!(ids, ["after", "before"], "the failed commit never reached the killed Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn while_redis_is_stopped_commits_are_unavailable_and_they_work_again_after_sigcont() {
    let Some(server) = RedisServer::start() else { return };
    let store = open(&settings(&server)).await;
    store.commit(vec![Write::PutUser(user("before"))]).await.unwrap();

    server.pause();
    let result = store.commit(vec![Write::PutUser(user("during"))]).await;
    assert!(matches!(result, Err(StoreError::Unavailable(_))), "{result:?}");
    assert!(store.health().await.is_err(), "health fails instead of hanging");
    assert!(matches!(store.inbox("u1", None, 10, false).await, Err(StoreError::Unavailable(_))));

    server.resume();
    commit_eventually(&store, || vec![Write::PutUser(user("after"))]).await;
    store.health().await.unwrap();
    let ids: Vec<_> = store.users().await.unwrap().into_iter().map(|u| u.id).collect();
    assert!(ids.contains(&"before".to_string()) && ids.contains(&"after".to_string()), "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inboxes_are_capped_oldest_first_with_their_read_state() {
    let Some(server) = RedisServer::start() else { return };
    let store = open(&RedisSettings { inbox_cap: 3, ..settings(&server) }).await;
    let writes = (1..=5).map(|n| Write::PutInboxItem(inbox_item("u1", &id(n)))).collect();
    store.commit(writes).await.unwrap();
    let (page, unread) = store.inbox("u1", None, 10, false).await.unwrap();
    let ids: Vec<_> = page.items.iter().map(|i| i.id.clone()).collect();
    assert_eq!((ids, unread), (vec![id(5), id(4), id(3)], 3), "the two oldest are trimmed with their unread marks");

    let at = jiff::Timestamp::now();
    store.commit(vec![Write::MarkInboxRead { user_id: "u1".into(), ids: vec![id(3)], at }]).await.unwrap();
    store.commit(vec![Write::PutInboxItem(inbox_item("u1", &id(6)))]).await.unwrap();
    let (page, unread) = store.inbox("u1", None, 10, false).await.unwrap();
    let ids: Vec<_> = page.items.iter().map(|i| i.id.clone()).collect();
    assert_eq!((ids, unread), (vec![id(6), id(5), id(4)], 3), "a read item trimmed leaves the count alone");
}

/// Remaining time to live of a key, through a plain connection (-1: none, -2: no key).
async fn ttl(server: &RedisServer, key: &str) -> i64 {
    let client = ::redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    ::redis::cmd("TTL").arg(key).query_async(&mut conn).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn final_notifications_expire_with_their_deliveries_unless_one_is_dead() {
    let Some(server) = RedisServer::start() else { return };
    let store = open(&RedisSettings { retention_s: 3600, ..settings(&server) }).await;
    let put = |nid: &str, status| Write::PutNotification(notification(nid, 1, status));
    let sent = |n: u32, nid: &str, status| Write::PutDelivery(delivery(&id(n), nid, Channel::Sms, status));
    store
        .commit(vec![
            put("n1", NotificationStatus::Dispatching),
            sent(1, "n1", DeliveryStatus::Sent),
            put("n2", NotificationStatus::Dispatching),
            sent(2, "n2", DeliveryStatus::Sent),
        ])
        .await
        .unwrap();
    assert_eq!((ttl(&server, "herald:n:n1").await, ttl(&server, &format!("herald:d:{}", id(1))).await), (-1, -1));

    store.commit(vec![put("n1", NotificationStatus::Completed)]).await.unwrap();
    for key in ["herald:n:n1".to_string(), "herald:nd:n1".into(), format!("herald:d:{}", id(1))] {
        assert!((1..=3600).contains(&ttl(&server, &key).await), "{key} expires with its final notification");
    }
    // A late report on a delivery of a final notification keeps the notification's expiry.
    store.commit(vec![sent(1, "n1", DeliveryStatus::Delivered)]).await.unwrap();
    assert!(ttl(&server, &format!("herald:d:{}", id(1))).await > 0);

    // A dead delivery stays in the DLQ, and keeps its notification, until it is replayed.
    store.commit(vec![sent(2, "n2", DeliveryStatus::Dead), put("n2", NotificationStatus::Failed)]).await.unwrap();
    assert_eq!((ttl(&server, "herald:n:n2").await, ttl(&server, &format!("herald:d:{}", id(2))).await), (-1, -1));
    assert_eq!(store.dlq(None, None, 10).await.unwrap().items.len(), 1);
    // Replayed: open again, then final again, then it expires.
    store
        .commit(vec![sent(2, "n2", DeliveryStatus::Queued), put("n2", NotificationStatus::Dispatching)])
        .await
        .unwrap();
    store
        .commit(vec![sent(2, "n2", DeliveryStatus::Delivered), put("n2", NotificationStatus::Completed)])
        .await
        .unwrap();
    assert!(ttl(&server, "herald:n:n2").await > 0);
    assert!(store.dlq(None, None, 10).await.unwrap().items.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn herald_delivers_end_to_end_on_redis_and_readyz_follows_redis() {
    let Some(server) = RedisServer::start() else { return };
    let url = server.url();
    let app = app::spawn_app_with(|s| {
        s.store.backend = "redis".into();
        s.store.redis.url = Secret::new(url);
        s.store.redis.command_timeout_ms = TIMEOUT_MS;
    })
    .await;
    app.user("u-1", &[("android-token-1", "android")]).await;
    let id =
        app.send(json!({"user_id": "u-1", "channels": ["push"], "content": {"title": "Hi", "body": "On Redis"}})).await;
    let n = app.wait_final(&id).await;
    assert_eq!(n["status"], "completed", "{n:#}");
    assert_eq!(app::statuses(&n), vec![("push".to_string(), "delivered".to_string())]);
    assert_eq!(app.sandbox().record().len(), 1);
    assert_eq!(app.get("/readyz").await.0, 200);

    server.pause();
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    server.resume();
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.get("/readyz").await.0 != 200 {
        assert!(Instant::now() < deadline, "readyz never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(server);
}
