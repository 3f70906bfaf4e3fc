//! How many accepts a campaign keeps in flight: adapted to the latency of its own accepts, so a blast slows
//! down as soon as it makes the shared queues (shard mailboxes, the store's group commit) grow, before
//! transactional traffic feels them (SPEC §5, "campaign fan-out slows down first").
//!
//! The rule is TCP Vegas's, per window of accepts: the lowest mean latency seen is the baseline (what an accept
//! costs without queueing); a window whose mean is over twice the baseline means the campaign is queueing behind
//! itself or others, and the limit shrinks by a quarter; otherwise it grows, doubling until the first sign of
//! queueing, then by an eighth. An `Overloaded` answer halves it. The baseline creeps up 2% per window, so a
//! lasting change (a slower disk, a busier engine) is learned rather than read as queueing forever.
//!
//! A window also counts as queueing while transactional accepts queue (`engine/pressure.rs`): a blast's sends
//! take the cores from transactional traffic without slowing the blast's own accepts, so its own latency alone
//! let it run the machine into saturation.

use std::time::Duration;

use tokio::time::Instant;

/// A window lasts at least this long and holds at least [`MIN_SAMPLES`] accepts.
const WINDOW: Duration = Duration::from_millis(100);
const MIN_SAMPLES: u32 = 8;
/// A window mean over `baseline × TOLERANCE` is queueing.
const TOLERANCE: f64 = 2.0;
const DECREASE: f64 = 0.75;
const DRIFT: f64 = 1.02;
const START: f64 = 4.0;

/// The in-flight limit of one campaign's fan-out, between 1 and its maximum.
pub struct InFlightLimit {
    max: f64,
    limit: f64,
    /// Doubling until the first queueing is seen.
    slow_start: bool,
    baseline: Option<Duration>,
    sum: Duration,
    samples: u32,
    window_start: Instant,
}

impl InFlightLimit {
    pub fn new(max: usize) -> InFlightLimit {
        let max = max.max(1) as f64;
        InFlightLimit {
            max,
            limit: START.min(max),
            slow_start: true,
            baseline: None,
            sum: Duration::ZERO,
            samples: 0,
            window_start: Instant::now(),
        }
    }

    /// Accepts that may be in flight now.
    pub fn get(&self) -> usize {
        self.limit as usize
    }

    /// One accept finished after `latency` (of its last attempt); `transactional_queueing` says whether
    /// transactional accepts queue now.
    pub fn record(&mut self, latency: Duration, transactional_queueing: bool, now: Instant) {
        self.sum += latency;
        self.samples += 1;
        if self.samples < MIN_SAMPLES || now.duration_since(self.window_start) < WINDOW {
            return;
        }
        let mean = self.sum / self.samples;
        let baseline = self.baseline.map_or(mean, |b| b.mul_f64(DRIFT).min(mean));
        self.baseline = Some(baseline);
        if transactional_queueing || mean.as_secs_f64() > baseline.as_secs_f64() * TOLERANCE {
            self.slow_start = false;
            self.limit = (self.limit * DECREASE).max(1.0);
        } else if self.slow_start {
            self.limit = (self.limit * 2.0).min(self.max);
        } else {
            self.limit = (self.limit + (self.limit / 8.0).max(1.0)).min(self.max);
        }
        self.sum = Duration::ZERO;
        self.samples = 0;
        self.window_start = now;
    }

    /// Admission refused an accept: the engine is full, back off at once.
    pub fn overloaded(&mut self) {
        self.slow_start = false;
        self.limit = (self.limit / 2.0).max(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds one full window of accepts that each took `latency`, starting at `at`; returns the window's end.
    fn window(limit: &mut InFlightLimit, latency: Duration, at: Instant) -> Instant {
        window_with(limit, latency, false, at)
    }

    /// [`window`], with transactional accepts queueing or not meanwhile.
    fn window_with(limit: &mut InFlightLimit, latency: Duration, transactional_queueing: bool, at: Instant) -> Instant {
        let end = at + WINDOW;
        for _ in 0..MIN_SAMPLES {
            limit.record(latency, transactional_queueing, end);
        }
        end
    }

    #[test]
    fn it_doubles_while_accepts_stay_fast_up_to_the_maximum() {
        let mut limit = InFlightLimit::new(64);
        let mut at = Instant::now();
        assert_eq!(limit.get(), 4);
        for expected in [8, 16, 32, 64, 64] {
            at = window(&mut limit, Duration::from_millis(5), at);
            assert_eq!(limit.get(), expected);
        }
    }

    #[test]
    fn queueing_shrinks_it_and_it_grows_back_slowly() {
        let mut limit = InFlightLimit::new(64);
        let mut at = Instant::now();
        for _ in 0..4 {
            at = window(&mut limit, Duration::from_millis(5), at);
        }
        assert_eq!(limit.get(), 64);
        at = window(&mut limit, Duration::from_millis(30), at);
        assert_eq!(limit.get(), 48, "over twice the baseline: down by a quarter");
        at = window(&mut limit, Duration::from_millis(30), at);
        assert_eq!(limit.get(), 36);
        at = window(&mut limit, Duration::from_millis(6), at);
        assert_eq!(limit.get(), 40, "fast again: up by an eighth, not doubling");
        for _ in 0..20 {
            at = window(&mut limit, Duration::from_millis(500), at);
        }
        assert_eq!(limit.get(), 1, "never below one");
    }

    #[test]
    fn queueing_transactional_accepts_shrink_it_though_its_own_stay_fast() {
        let mut limit = InFlightLimit::new(64);
        let mut at = Instant::now();
        for _ in 0..4 {
            at = window(&mut limit, Duration::from_millis(5), at);
        }
        assert_eq!(limit.get(), 64);
        for expected in [48, 36, 27] {
            at = window_with(&mut limit, Duration::from_millis(5), true, at);
            assert_eq!(limit.get(), expected);
        }
        window(&mut limit, Duration::from_millis(5), at);
        assert_eq!(limit.get(), 30, "transactional traffic is fast again: it grows back slowly");
    }

    #[test]
    fn a_window_needs_its_samples_and_its_time() {
        let mut limit = InFlightLimit::new(64);
        let start = Instant::now();
        for _ in 0..100 {
            limit.record(Duration::from_millis(1), false, start);
        }
        assert_eq!(limit.get(), 4, "many samples, no time");
        limit.record(Duration::from_millis(1), false, start + WINDOW);
        assert_eq!(limit.get(), 8);
    }

    #[test]
    fn overload_halves_it_and_ends_the_doubling() {
        let mut limit = InFlightLimit::new(64);
        let at = window(&mut limit, Duration::from_millis(5), Instant::now());
        assert_eq!(limit.get(), 8);
        limit.overloaded();
        assert_eq!(limit.get(), 4);
        window(&mut limit, Duration::from_millis(5), at);
        assert_eq!(limit.get(), 5);
    }

    #[test]
    fn the_baseline_follows_a_lasting_slowdown() {
        let mut limit = InFlightLimit::new(64);
        let mut at = window(&mut limit, Duration::from_millis(10), Instant::now());
        // Latency settles at 25 ms for good (a busier engine): after the baseline has crept up, it grows again.
        let mut grew = false;
        for _ in 0..100 {
            let before = limit.get();
            at = window(&mut limit, Duration::from_millis(25), at);
            grew |= limit.get() > before;
        }
        assert!(grew, "the baseline adapts");
    }
}
