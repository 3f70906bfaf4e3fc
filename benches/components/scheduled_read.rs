//! `scheduled_read`: the loader's read of due sends (`Store::scheduled`), page by page as `engine/scheduler.rs`
//! reads them (`scheduling.load_batch` per page), from an embedded store holding [`DUE`] scheduled push
//! notifications that were written in due order, as a spike's pre-scheduling writes them. Throughput is in
//! notifications read; a spike reads up to a million of them while the first ones fire.

use std::sync::Arc;

use criterion::{Criterion, Throughput};
use herald::domain::NotificationStatus;
use herald::store::{EmbeddedStore, ScheduleCursor, Store, Write};
use jiff::{SignedDuration, Timestamp};

use super::group_commit::{pairs, run_batch};

const DUE: usize = 100_000;

pub fn scheduled_read(c: &mut Criterion) {
    let settings = super::default_settings();
    let page = settings.scheduling.load_batch;
    let mut group = c.benchmark_group("scheduled_read");
    group.sample_size(10);
    group.throughput(Throughput::Elements(DUE as u64));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let dir = tempfile::TempDir::new().expect("temp dir");
    let store = EmbeddedStore::open(dir.path(), settings.store.commit_batch_max).expect("open embedded store");
    let first_due = Timestamp::now() + SignedDuration::from_hours(1);
    let writes = pairs(DUE)
        .into_iter()
        .enumerate()
        .map(|(i, pair)| {
            let Some(Write::PutNotification(n)) = pair.into_iter().next() else { unreachable!("a notification first") };
            let mut n = Arc::unwrap_or_clone(n);
            n.status = NotificationStatus::Scheduled;
            n.send_at = Some(first_due + SignedDuration::from_micros(600 * i as i64));
            vec![Write::PutNotification(Arc::new(n))]
        })
        .collect();
    run_batch(store.as_ref(), writes);
    let until_ms = (first_due + SignedDuration::from_hours(1)).as_millisecond();
    group.bench_function(format!("embedded/pages_of_{page}"), |b| {
        b.iter(|| {
            runtime.block_on(async {
                let mut cursor: Option<ScheduleCursor> = None;
                let mut read = 0;
                loop {
                    let got = store.scheduled(cursor.as_ref(), until_ms, page).await.expect("a page");
                    read += got.len();
                    match got.last() {
                        Some(last) if got.len() == page => cursor = Some(ScheduleCursor::of(last)),
                        _ => break,
                    }
                }
                assert_eq!(read, DUE, "every scheduled notification read");
            })
        })
    });
    group.finish();
}
