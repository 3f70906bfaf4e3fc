//! `idempotency`: [`IdempotencyIndex`] with 1,000,000 remembered keys (a busy day of explicit keys), measuring
//! `reserve` of a key never seen, `reserve` of a completed key with the same body (a replay), and `complete`.
//!
//! The index must not grow with the iteration count (a 3 s run makes millions of calls), so the timed calls run
//! in chunks and the untimed work between chunks puts the index back: fresh reservations are released, and
//! completed entries are written already expired so the next chunk's reserve finds them new again.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use herald::domain::{IdempotencyEntry, NotificationStatus, new_id};
use herald::engine::{IdempotencyIndex, Reservation};
use jiff::{SignedDuration, Timestamp};

const REMEMBERED: usize = 1_000_000;
/// Keys per timed chunk.
const CHUNK: usize = 4096;

fn key(i: usize) -> String {
    format!("order-{i:012}-checkout")
}

fn entry(body_hash: u64, expires_at: Timestamp) -> IdempotencyEntry {
    IdempotencyEntry { notification_id: new_id(), body_hash, status: NotificationStatus::Accepted, expires_at }
}

pub fn idempotency(c: &mut Criterion) {
    let now = Timestamp::now();
    let tomorrow = now + SignedDuration::from_hours(24);
    let index = IdempotencyIndex::default();
    for i in 0..REMEMBERED {
        index.restore(key(i), entry(i as u64, tomorrow));
    }
    assert_eq!(index.purge(now), REMEMBERED);

    let mut group = c.benchmark_group("idempotency");
    group.throughput(Throughput::Elements(1));

    // Keys past the remembered ones; each chunk takes the next CHUNK of them and releases them afterwards.
    let mut fresh = REMEMBERED;
    group.bench_function("reserve/new_key_1m_held", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let keys: Vec<String> = (fresh..fresh + left.min(CHUNK)).map(key).collect();
                fresh += keys.len();
                left -= keys.len();
                let started = Instant::now();
                for k in &keys {
                    black_box(index.reserve(k, 7, now));
                }
                timed += started.elapsed();
                for k in &keys {
                    index.release(k);
                }
            }
            timed
        })
    });
    assert_eq!(index.purge(now), REMEMBERED, "released reservations leave the index as it was");

    let replays: Vec<String> = (0..CHUNK).map(|i| key(i * (REMEMBERED / CHUNK))).collect();
    assert!(matches!(index.reserve(&replays[1], (REMEMBERED / CHUNK) as u64, now), Reservation::Replay(_)));
    let mut next = 0usize;
    group.bench_function("reserve/replay_1m_held", |b| {
        b.iter(|| {
            next = (next + 1) % CHUNK;
            let i = next * (REMEMBERED / CHUNK);
            index.reserve(black_box(&replays[next]), i as u64, now)
        })
    });

    // A pool of keys cycled through reserve (untimed) → complete (timed); completed entries expire before the
    // `later` the next reserve runs at, so each round finds them new again and the index does not grow.
    let later = now + SignedDuration::from_secs(1);
    let pool: Vec<String> = (0..CHUNK).map(|i| format!("pool-{i:08}")).collect();
    let entries: Vec<IdempotencyEntry> = (0..CHUNK).map(|i| entry(i as u64, now)).collect();
    group.bench_function("complete/after_reserve_1m_held", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let n = left.min(CHUNK);
                left -= n;
                for (i, k) in pool[..n].iter().enumerate() {
                    assert_eq!(index.reserve(k, i as u64, later), Reservation::New);
                }
                let batch = entries[..n].to_vec();
                let started = Instant::now();
                for (k, e) in pool[..n].iter().zip(batch) {
                    index.complete(k, e);
                }
                timed += started.elapsed();
            }
            timed
        })
    });
    group.finish();
}
