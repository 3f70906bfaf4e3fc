//! The engine hot path: accept → shard → store commit → dispatcher → a no-op provider, measured as
//! notifications per second for batches of concurrent sends. Two stores: the embedded one (real fsync'd group
//! commit) and a null store (commits instantly), which isolates the engine's own cost.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::future::join_all;
use herald::config::{DispatchLimits, Settings};
use herald::domain::{
    Campaign, Category, Channel, Delivery, Device, IdempotencyEntry, InboxItem, Notification, Platform, Priority,
    ProviderKind, Rendered, Sequence, Strategy, Template, User,
};
use herald::engine::{Engine, Message, NewNotification, UserUpdate};
use herald::providers::{Accepted, Provider, ProviderError, SendRequest};
use herald::store::{
    CommitCallback, EmbeddedStore, Page, ScheduleCursor, Store, StoreError, StoredNotification, Write,
};
use herald::telemetry::Telemetry;
use jiff::Timestamp;
use tokio_util::sync::CancellationToken;

const USERS: usize = 1000;
const BATCH: u64 = 2000;

/// Accepts everything at once and counts.
struct NoopProvider(AtomicU64);

#[async_trait]
impl Provider for NoopProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Fcm
    }
    async fn send(&self, _: &SendRequest) -> Result<Accepted, ProviderError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(Accepted::Delivered { provider_message_id: None })
    }
}

/// Commits instantly and remembers nothing.
struct NullStore;

#[async_trait]
impl Store for NullStore {
    fn submit(&self, _: Vec<Write>, done: CommitCallback) {
        done(Ok(()));
    }
    async fn users(&self) -> Result<Vec<User>, StoreError> {
        Ok(vec![])
    }
    async fn templates(&self) -> Result<Vec<Template>, StoreError> {
        Ok(vec![])
    }
    async fn open_notifications(&self) -> Result<Vec<StoredNotification>, StoreError> {
        Ok(vec![])
    }
    async fn notification(&self, _: &str) -> Result<Option<StoredNotification>, StoreError> {
        Ok(None)
    }
    async fn delivery(&self, _: &str) -> Result<Option<Delivery>, StoreError> {
        Ok(None)
    }
    async fn idempotency_entries(&self, _: Timestamp) -> Result<Vec<(String, IdempotencyEntry)>, StoreError> {
        Ok(vec![])
    }
    async fn dlq(&self, _: Option<Channel>, _: Option<&str>, _: usize) -> Result<Page<Delivery>, StoreError> {
        Ok(Page { items: vec![], next_cursor: None })
    }
    async fn inbox(&self, _: &str, _: Option<&str>, _: usize, _: bool) -> Result<(Page<InboxItem>, u64), StoreError> {
        Ok((Page { items: vec![], next_cursor: None }, 0))
    }
    async fn scheduled(&self, _: Option<&ScheduleCursor>, _: i64, _: usize) -> Result<Vec<Notification>, StoreError> {
        Ok(vec![])
    }
    async fn sequence(&self, _: &str) -> Result<Option<Sequence>, StoreError> {
        Ok(None)
    }
    async fn open_sequences(&self) -> Result<Vec<Sequence>, StoreError> {
        Ok(vec![])
    }
    async fn campaign(&self, _: &str) -> Result<Option<Campaign>, StoreError> {
        Ok(None)
    }
    async fn active_campaigns(&self) -> Result<Vec<Campaign>, StoreError> {
        Ok(vec![])
    }
    async fn audience_page(&self, _: &str, _: u32) -> Result<Option<Vec<String>>, StoreError> {
        Ok(None)
    }
    async fn user_ids(&self, _: Option<&str>, _: Option<&str>, _: usize) -> Result<Vec<String>, StoreError> {
        Ok(vec![])
    }
    async fn max_seq(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
    async fn health(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

fn settings(data: PathBuf) -> Settings {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut s = Settings::load(&dir, "default", figment::providers::Env::prefixed("HERALD_BENCH_UNSET__")).unwrap();
    s.store.data_dir = data;
    s.engine.queue_capacity = 1_000_000;
    s.engine.shard_pending_max = 1_000_000;
    let limits =
        DispatchLimits { rate_per_second: 10_000_000, burst: 1_000_000, max_in_flight: 1024, max_requests: None };
    s.providers.limits.insert(ProviderKind::Fcm, limits);
    s
}

struct Bench {
    engine: Arc<Engine>,
    provider: Arc<NoopProvider>,
    next: AtomicU64,
}

async fn start(store: Arc<dyn Store>, settings: &Settings) -> Bench {
    let provider = Arc::new(NoopProvider(AtomicU64::new(0)));
    let providers: Vec<Arc<dyn Provider>> = vec![provider.clone()];
    let telemetry = Arc::new(Telemetry::default());
    let engine = Engine::start(settings, store, providers, telemetry, CancellationToken::new()).await.unwrap();
    for u in 0..USERS {
        let id = format!("bench-{u}");
        engine.put_user(id.clone(), UserUpdate::default()).await.unwrap();
        let device = Device { token: format!("token-{u}"), platform: Platform::Android, created_at: Timestamp::now() };
        engine.put_device(&id, device).await.unwrap();
    }
    Bench { engine, provider, next: AtomicU64::new(0) }
}

impl Bench {
    /// Sends `BATCH` notifications concurrently and waits until the provider has all of them.
    async fn round(&self) {
        let target = self.provider.0.load(Ordering::Relaxed) + BATCH;
        let sends = (0..BATCH).map(|_| {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let request = NewNotification {
                owner: format!("bench-{}", n as usize % USERS),
                adhoc: None,
                category: Category::Transaction,
                channels: vec![Channel::Push],
                strategy: Strategy::Parallel,
                priority: Priority::Normal,
                message: Message::Content(Arc::new(Rendered { body: format!("bench {n}"), ..Default::default() })),
                idempotency_key: None,
                claims: Vec::new(),
                metadata: None,
                expires_at: None,
                send_at: None,
                campaign: None,
            };
            self.engine.send(request, n, n)
        });
        for result in join_all(sends).await {
            result.unwrap();
        }
        while self.provider.0.load(Ordering::Relaxed) < target {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
}

fn hot_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let dir = tempfile::TempDir::new().unwrap();
    let settings = settings(dir.path().join("data"));
    let mut group = c.benchmark_group("hot_path");
    group.throughput(Throughput::Elements(BATCH));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));

    let null = rt.block_on(start(Arc::new(NullStore), &settings));
    group.bench_function("accept_to_noop_provider/null_store", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    null.round().await;
                }
                started.elapsed()
            })
        })
    });
    null.engine.stop();

    let store = EmbeddedStore::open(&settings.store.data_dir, settings.store.commit_batch_max).unwrap();
    let embedded = rt.block_on(start(store, &settings));
    group.bench_function("accept_to_noop_provider/embedded_store", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    embedded.round().await;
                }
                started.elapsed()
            })
        })
    });
    embedded.engine.stop();
    group.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
