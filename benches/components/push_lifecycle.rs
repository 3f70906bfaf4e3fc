//! `push_lifecycle`: the store's whole cost of a scheduled push, background work included. Each iteration puts
//! 2,000 scheduled notifications (untimed, waited until applied), then times their lifecycle as the shards
//! write it: the fire (notification `dispatching` with a new seq, its delivery `queued`: one submit per push),
//! the outcome (delivery `delivered`, notification `completed`: one more), and a read, which returns only once
//! everything acknowledged is applied (for the embedded store: the checkpointer's redb transactions). Two cases:
//! fire and outcome close enough to be applied in one checkpoint (the embedded store then coalesces each
//! record's two puts into one), and applied apart (a read between them), as under a spike where fired jobs
//! wait seconds for a send slot. The file grows by 2,000 notifications an iteration, as it does in a spike. Throughput is in pushes per second; its inverse is
//! the store's cost per push on the machine's cores, the figure `docs/performance.md` (session 6) found to be
//! Herald's ceiling.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use herald::domain::{Delivery, DeliveryStatus, Notification, NotificationStatus};
use herald::store::{EmbeddedStore, Store, Write};
use jiff::{SignedDuration, Timestamp};

use super::group_commit::{pairs, run_batch};

const PUSHES: usize = 2_000;

pub fn push_lifecycle(c: &mut Criterion) {
    let settings = super::default_settings();
    let mut group = c.benchmark_group("push_lifecycle");
    group.sample_size(10);
    group.throughput(Throughput::Elements(PUSHES as u64));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let dir = tempfile::TempDir::new().expect("temp dir");
    let store = EmbeddedStore::open(dir.path(), settings.store.commit_batch_max).expect("open embedded store");
    let mut seq = 0;
    for (name, apart) in [("fire_and_outcome_in_one_checkpoint", false), ("fire_and_outcome_applied_apart", true)] {
        group.bench_function(format!("embedded/{name}"), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let scheduled = schedule(store.as_ref(), &runtime, &mut seq);
                    let started = Instant::now();
                    let (fired, finished): (Vec<_>, Vec<_>) =
                        scheduled.into_iter().map(|(n, d)| lifecycle(n, d, &mut seq)).unzip();
                    run_batch(store.as_ref(), fired);
                    if apart {
                        runtime.block_on(store.max_seq()).expect("the read after the fire");
                    }
                    run_batch(store.as_ref(), finished);
                    runtime.block_on(store.max_seq()).expect("the read after the lifecycle");
                    timed += started.elapsed();
                }
                timed
            })
        });
    }
    group.finish();
}

type Pair = (Notification, Delivery);

/// Puts [`PUSHES`] scheduled notifications and waits until they are applied; returns them with the delivery
/// each will get at its fire.
fn schedule(store: &dyn Store, runtime: &tokio::runtime::Runtime, seq: &mut u64) -> Vec<Pair> {
    let due = Timestamp::now() + SignedDuration::from_hours(1);
    let mut out = Vec::with_capacity(PUSHES);
    let mut writes = Vec::with_capacity(PUSHES);
    for pair in pairs(PUSHES) {
        let mut pair = pair.into_iter();
        let (Some(Write::PutNotification(n)), Some(Write::PutDelivery(d))) = (pair.next(), pair.next()) else {
            unreachable!("pairs() yields a notification and its delivery")
        };
        let mut n = Arc::unwrap_or_clone(n);
        *seq += 1;
        n.seq = *seq;
        n.status = NotificationStatus::Scheduled;
        n.send_at = Some(due);
        writes.push(vec![Write::PutNotification(Arc::new(n.clone()))]);
        out.push((n, Arc::unwrap_or_clone(d)));
    }
    run_batch(store, writes);
    runtime.block_on(store.max_seq()).expect("the read after scheduling");
    out
}

/// The fire's writes and the outcome's writes of one push.
fn lifecycle(mut n: Notification, mut d: Delivery, seq: &mut u64) -> (Vec<Write>, Vec<Write>) {
    *seq += 1;
    n.seq = *seq;
    n.status = NotificationStatus::Dispatching;
    d.seq = n.seq;
    let fired = vec![Write::PutNotification(Arc::new(n.clone())), Write::PutDelivery(Arc::new(d.clone()))];
    d.status = DeliveryStatus::Delivered;
    n.status = NotificationStatus::Completed;
    let finished = vec![Write::PutDelivery(Arc::new(d)), Write::PutNotification(Arc::new(n))];
    (fired, finished)
}
