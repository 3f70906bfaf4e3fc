//! The engine's own delay for transactional work: how long an accept that is not `low` takes from admission to
//! its durable answer, smoothed. Campaign fan-outs read it as a second queueing signal beside the latency of
//! their own accepts (`campaign/limit.rs`): when transactional accepts take well over what they take unloaded,
//! a blast backs off, giving back CPU, shard mailboxes and group commits before transactional latency suffers
//! (SPEC §5: "campaign fan-out slows down first"). A blast's sends compete with transactional traffic for the
//! cores without slowing the blast's own accepts, so without this signal a blast ran the machine into
//! saturation and the `high` lane's p99 over 50 ms (`docs/performance.md`, session 7).
//!
//! The provider's round trip is not part of it, so a slow provider does not hold a blast back; only the
//! engine's own queues do. The unloaded delay is learned, as the lowest smoothed delay seen, creeping up 1% a
//! second so that a lasting change (a slower disk) is learned rather than read as queueing forever.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// Weight of a new sample in the smoothed delay.
const SMOOTHING: f64 = 1.0 / 8.0;
/// A smoothed delay over `TOLERANCE ×` the unloaded one is queueing...
const TOLERANCE: f64 = 2.0;
/// ...if it is over this too: below it, an accept is fast whatever its baseline (a group commit's fsync alone
/// varies by a few milliseconds).
const FLOOR: Duration = Duration::from_millis(5);
/// Without a sample for this long, there is no transactional traffic to protect.
const STALE: Duration = Duration::from_secs(1);
/// How fast the learned unloaded delay creeps up, per second.
const DRIFT_PER_S: f64 = 1.01;

/// The smoothed transactional accept delay (see the module docs).
#[derive(Default)]
pub struct TransactionalDelay {
    state: Mutex<Option<State>>,
}

struct State {
    smoothed_us: f64,
    baseline_us: f64,
    last: Instant,
}

impl TransactionalDelay {
    /// One transactional accept took `delay`, measured at `now`.
    pub fn record(&self, delay: Duration, now: Instant) {
        let sample = delay.as_secs_f64() * 1e6;
        let mut state = self.state.lock();
        let Some(s) = state.as_mut() else {
            *state = Some(State { smoothed_us: sample, baseline_us: sample, last: now });
            return;
        };
        s.smoothed_us += (sample - s.smoothed_us) * SMOOTHING;
        let drift = DRIFT_PER_S.powf(now.saturating_duration_since(s.last).as_secs_f64());
        s.baseline_us = (s.baseline_us * drift).min(s.smoothed_us);
        s.last = now;
    }

    /// Whether transactional accepts queue: recent ones take well over what they take unloaded.
    pub fn queueing(&self, now: Instant) -> bool {
        let state = self.state.lock();
        let Some(s) = state.as_ref() else { return false };
        now.saturating_duration_since(s.last) < STALE
            && s.smoothed_us > (s.baseline_us * TOLERANCE).max(FLOOR.as_secs_f64() * 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn slow_transactional_accepts_mean_queueing_until_they_stop() {
        let delay = TransactionalDelay::default();
        let t0 = Instant::now();
        assert!(!delay.queueing(t0), "no traffic, nothing to protect");
        for i in 0..20 {
            delay.record(ms(3), t0 + ms(i));
        }
        assert!(!delay.queueing(t0 + ms(20)));
        for i in 0..20 {
            delay.record(ms(30), t0 + ms(20 + i));
        }
        assert!(delay.queueing(t0 + ms(40)), "ten times the unloaded delay");
        assert!(!delay.queueing(t0 + ms(40) + STALE), "no transactional traffic any more");
    }

    #[tokio::test(start_paused = true)]
    async fn below_the_floor_nothing_is_queueing() {
        let delay = TransactionalDelay::default();
        let t0 = Instant::now();
        delay.record(Duration::from_micros(500), t0);
        for i in 1..30 {
            delay.record(ms(4), t0 + ms(i));
        }
        assert!(!delay.queueing(t0 + ms(30)), "8x the baseline, but 4 ms is fast");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lasting_change_is_learned() {
        let delay = TransactionalDelay::default();
        let t0 = Instant::now();
        delay.record(ms(4), t0);
        let mut now = t0;
        for _ in 0..2_000 {
            now += ms(100);
            delay.record(ms(12), now);
        }
        assert!(!delay.queueing(now), "200 s at 12 ms: the new normal");
    }
}
