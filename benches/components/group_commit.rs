//! `group_commit`: [`Store::submit`] with a commit callback per submit, as the shards use it on accept. Each
//! submit is one notification and its delivery (two [`Write`]s); a batch of 1, 64 or 1024 submits is queued back
//! to back and timed until its last callback has run (callbacks run in submission order). Throughput is in
//! submits, i.e. accepted notifications per second.
//!
//! Backends: the embedded store (redb, fsync'd) in a temp dir, always; Redis when `redis-server` is on PATH
//! (a private one on a free port with AOF `appendfsync always`, as the tests start it), otherwise skipped with
//! a printed note (`HERALD_REQUIRE_REDIS=1` makes a missing `redis-server` fatal instead).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, Throughput, measurement::WallTime};
use herald::config::{RedisSettings, Secret};
use herald::domain::{
    Address, Category, Channel, Delivery, DeliveryStatus, Event, EventKind, Notification, NotificationStatus, Platform,
    Priority, ProviderKind, Rendered, Strategy, new_id,
};
use herald::store::{EmbeddedStore, RedisStore, Store, Write};
use jiff::Timestamp;

#[allow(dead_code)] // the tests' helper also kills, pauses and restarts its server; the bench only starts one
#[path = "../../tests/common/redis.rs"]
mod redis_server;

const BATCHES: [usize; 3] = [1, 64, 1024];

pub fn group_commit(c: &mut Criterion) {
    let settings = super::default_settings();
    let batch_max = settings.store.commit_batch_max;
    let mut group = c.benchmark_group("group_commit");
    group.sample_size(20);

    let dir = tempfile::TempDir::new().expect("temp dir");
    let embedded = EmbeddedStore::open(dir.path(), batch_max).expect("open embedded store");
    bench_backend(&mut group, "embedded", embedded.as_ref(), || embedded.commits());
    drop(embedded);

    match redis_server::RedisServer::start() {
        Some(server) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            let redis_settings = RedisSettings { url: Secret::new(server.url()), ..RedisSettings::default() };
            let redis = runtime.block_on(RedisStore::open(&redis_settings, batch_max)).expect("open redis store");
            bench_backend(&mut group, "redis", redis.as_ref(), || redis.commits());
        }
        None => eprintln!("note: group_commit/redis skipped: redis-server is not on PATH"),
    }
    group.finish();
}

fn bench_backend(group: &mut BenchmarkGroup<WallTime>, name: &str, store: &dyn Store, commits: impl Fn() -> u64) {
    for size in BATCHES {
        // One batch up front checks that every callback runs with Ok.
        let before = commits();
        run_batch(store, pairs(size));
        assert!(commits() > before, "a batch makes at least one commit");

        let (submits, commits_before) = (AtomicUsize::new(0), commits());
        group.throughput(Throughput::Elements(size as u64));
        group.bench_function(format!("{name}/notification_and_delivery/{size}"), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let batch = pairs(size);
                    let started = Instant::now();
                    run_batch(store, batch);
                    timed += started.elapsed();
                    submits.fetch_add(size, Ordering::Relaxed);
                }
                timed
            })
        });
        let made = commits() - commits_before;
        let submits = submits.into_inner();
        eprintln!(
            "group_commit/{name}/{size}: {submits} submits in {made} commits ({:.1} per commit)",
            submits as f64 / made.max(1) as f64
        );
    }
}

/// Submits every batch entry with its own callback and waits for the last callback; panics if any failed.
pub fn run_batch(store: &dyn Store, batch: Vec<Vec<Write>>) {
    let size = batch.len();
    let (done_tx, done_rx) = mpsc::channel();
    let ok = Arc::new(AtomicUsize::new(0));
    for (i, writes) in batch.into_iter().enumerate() {
        let ok = ok.clone();
        let last = (i + 1 == size).then(|| done_tx.clone());
        store.submit(
            writes,
            Box::new(move |result| {
                if result.is_ok() {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(tx) = last {
                    let _ = tx.send(());
                }
            }),
        );
    }
    done_rx.recv_timeout(Duration::from_secs(60)).expect("the last commit callback runs");
    assert_eq!(ok.load(Ordering::Relaxed), size, "every submit committed");
}

/// `size` submits, each an accepted push notification and its queued delivery, with fresh ids.
pub fn pairs(size: usize) -> Vec<Vec<Write>> {
    let now = Timestamp::now();
    let content = Arc::new(Rendered {
        title: Some("Order shipped".into()),
        body: "Order A-0042 is on its way".into(),
        ..Default::default()
    });
    (0..size)
        .map(|i| {
            let owner = format!("user-{:08}", i % 1000);
            let notification = Notification {
                id: new_id(),
                seq: i as u64 + 1,
                owner: owner.clone(),
                user_id: Some(owner.clone()),
                category: Category::Transaction,
                channels: vec![Channel::Push],
                strategy: Strategy::Parallel,
                priority: Priority::Normal,
                template_id: None,
                contents: vec![(Channel::Push, content.clone())],
                status: NotificationStatus::Accepted,
                current_channel: 0,
                idempotency_key: None,
                metadata: None,
                expires_at: None,
                send_at: None,
                reason: None,
                sequence: None,
                campaign: None,
                created_at: now,
                updated_at: now,
            };
            let delivery = Delivery {
                id: new_id(),
                notification_id: notification.id.clone(),
                seq: notification.seq,
                owner,
                channel: Channel::Push,
                provider: ProviderKind::Fcm,
                address: Address::Device { token: format!("{}-token", new_id()), platform: Platform::Android },
                priority: Priority::Normal,
                status: DeliveryStatus::Queued,
                attempts: 0,
                provider_message_id: None,
                events: vec![Event { kind: EventKind::Requested, at: now, reason: None }],
                updated_at: now,
            };
            vec![Write::PutNotification(Arc::new(notification)), Write::PutDelivery(Arc::new(delivery))]
        })
        .collect()
}
