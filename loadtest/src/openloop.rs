//! Open-loop arrivals, wrk2 style: arrival n is due at `start + n / rate` whatever happened to the earlier ones,
//! and its latency is measured from that intended time, so a stalled server shows up as latency instead of as
//! a slower client (no coordinated omission). At most `max_outstanding` requests are in flight; an arrival that
//! finds them all busy is skipped and counted, never sent late.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Semaphore;

use crate::clock::Clock;

/// When arrival `n` is due, in microseconds after the start.
pub fn due_offset_us(n: u64, rate: f64) -> i64 {
    (n as f64 * 1_000_000.0 / rate).round() as i64
}

/// How many arrivals a rate makes over a duration (at least one).
pub fn arrivals(rate: f64, duration_s: f64) -> u64 {
    ((rate * duration_s).round() as u64).max(1)
}

/// A stream of requests the driver paces.
pub trait Stream: Send + Sync + 'static {
    /// Books arrival `n`, due at `due_us`, and returns its key (e.g. its ledger index).
    fn book(&self, n: u64, due_us: i64) -> u64;
    /// The arrival found no free slot.
    fn skip(&self, key: u64);
    /// Sends it and records the answer.
    fn send(self: Arc<Self>, key: u64) -> impl Future<Output = ()> + Send + 'static;
}

/// When to stop issuing.
#[derive(Clone, Copy, Debug)]
pub enum Until {
    Count(u64),
    /// Until the flag given to [`drive`] is set.
    Stopped,
}

/// What the driver did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Driven {
    pub issued: u64,
    pub skipped: u64,
}

/// Issues `stream`'s arrivals at `rate` from `start_us`, then waits for the requests in flight.
pub async fn drive<S: Stream>(
    clock: &Clock,
    stream: Arc<S>,
    rate: f64,
    start_us: i64,
    until: Until,
    max_outstanding: usize,
    stop: &AtomicBool,
) -> Driven {
    let slots = Arc::new(Semaphore::new(max_outstanding));
    let mut driven = Driven::default();
    for n in 0.. {
        let done = match until {
            Until::Count(count) => n >= count,
            Until::Stopped => false,
        };
        if done || stop.load(Ordering::Acquire) {
            break;
        }
        let due_us = start_us + due_offset_us(n, rate);
        clock.sleep_until(due_us).await;
        let key = stream.book(n, due_us);
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                let request = stream.clone().send(key);
                tokio::spawn(async move {
                    request.await;
                    drop(slot);
                });
                driven.issued += 1;
            }
            Err(_) => {
                stream.skip(key);
                driven.skipped += 1;
            }
        }
    }
    let all = u32::try_from(max_outstanding).unwrap_or(u32::MAX);
    drop(slots.acquire_many(all).await.expect("the semaphore is never closed"));
    driven
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    #[test]
    fn arrivals_are_evenly_spaced_from_the_start() {
        assert_eq!(due_offset_us(0, 1000.0), 0);
        assert_eq!(due_offset_us(1, 1000.0), 1000);
        assert_eq!(due_offset_us(2500, 1000.0), 2_500_000);
        assert_eq!(due_offset_us(1, 3.0), 333_333);
        assert_eq!(due_offset_us(3, 3.0), 1_000_000, "no drift: each due time is computed from the start");
        assert_eq!(due_offset_us(1_500_000, 50_000.0), 30_000_000);
        assert_eq!(arrivals(5000.0, 60.0), 300_000);
        assert_eq!(arrivals(0.1, 1.0), 1);
    }

    /// A stream whose requests take `delay`; remembers what was booked and skipped, and raises `stop` once
    /// `stop_after` arrivals were booked.
    struct Slow {
        delay: Duration,
        booked: Mutex<Vec<(u64, i64)>>,
        skipped: Mutex<Vec<u64>>,
        stop_after: u64,
        stop: Arc<AtomicBool>,
    }

    impl Slow {
        fn new(delay: Duration, stop_after: u64) -> Arc<Slow> {
            let (booked, skipped, stop) = (Mutex::default(), Mutex::default(), Arc::default());
            Arc::new(Slow { delay, booked, skipped, stop_after, stop })
        }
    }

    impl Stream for Slow {
        fn book(&self, n: u64, due_us: i64) -> u64 {
            let mut booked = self.booked.lock().unwrap();
            booked.push((n, due_us));
            if booked.len() as u64 == self.stop_after {
                self.stop.store(true, Ordering::Release);
            }
            n
        }
        fn skip(&self, key: u64) {
            self.skipped.lock().unwrap().push(key);
        }
        async fn send(self: Arc<Self>, _key: u64) {
            tokio::time::sleep(self.delay).await
        }
    }

    #[tokio::test]
    async fn a_slow_server_makes_skips_not_a_slower_client() {
        let clock = Clock::start();
        // 1000/s for 10 arrivals with two slots and answers that take 2 s: arrivals 0 and 1 take the slots, the
        // other eight come due (every millisecond) while both are busy.
        let stream = Slow::new(Duration::from_secs(2), u64::MAX);
        let start = clock.now_us();
        let driven = drive(&clock, stream.clone(), 1000.0, start, Until::Count(10), 2, &stream.stop).await;
        assert_eq!(driven, Driven { issued: 2, skipped: 8 });
        assert_eq!(*stream.skipped.lock().unwrap(), (2..10).collect::<Vec<_>>());
        let booked = stream.booked.lock().unwrap();
        let dues: Vec<i64> = booked.iter().map(|&(_, due)| due - start).collect();
        assert_eq!(dues, (0..10).map(|n| n * 1000).collect::<Vec<_>>(), "due times follow the rate, not the answers");
    }

    #[tokio::test]
    async fn an_unbounded_stream_runs_until_stopped() {
        let clock = Clock::start();
        let stream = Slow::new(Duration::ZERO, 10);
        let driven = drive(&clock, stream.clone(), 1000.0, clock.now_us(), Until::Stopped, 4, &stream.stop).await;
        assert_eq!(driven.issued + driven.skipped, 10, "the tenth arrival raised the flag");
    }
}
