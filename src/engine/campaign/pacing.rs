//! A campaign's `rate_per_second`: accepts are spaced evenly, with a little credit for time lost to slow
//! accepts so that a hiccup does not lower the average rate, but never a burst after a pause.

use std::time::Duration;

use tokio::time::Instant;

/// Time behind schedule that may be caught up at once (at 500/s: 25 accepts).
const CREDIT: Duration = Duration::from_millis(50);

/// Spaces calls of [`Pacer::ready`] `1 / rate` apart.
pub struct Pacer {
    interval: Option<Duration>,
    next: Instant,
}

impl Pacer {
    /// `None`: no pacing (admission control is then the only brake).
    pub fn new(rate_per_second: Option<u32>) -> Pacer {
        let interval = rate_per_second.filter(|r| *r > 0).map(|r| Duration::from_secs(1) / r);
        Pacer { interval, next: Instant::now() }
    }

    /// Starts counting from now: after a pause or a wait, time spent idle is no credit.
    pub fn restart(&mut self) {
        self.next = Instant::now();
    }

    /// Waits for the next slot. Cancel-safe: a slot is taken only when this returns.
    pub async fn ready(&mut self) {
        let Some(interval) = self.interval else { return };
        let now = Instant::now();
        let earliest = now.checked_sub(CREDIT).unwrap_or(now);
        if self.next < earliest {
            self.next = earliest;
        }
        if self.next > now {
            tokio::time::sleep_until(self.next).await;
        }
        self.next += interval;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn slots_are_spaced_by_the_rate_after_a_small_catch_up() {
        let mut pacer = Pacer::new(Some(100));
        let start = Instant::now();
        for _ in 0..105 {
            pacer.ready().await;
        }
        // 10 ms apart from the first: the 105th slot comes 1.04 s later (paused, virtual time).
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(1_000) && took <= Duration::from_millis(1_050), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_is_no_credit_for_a_burst() {
        let mut pacer = Pacer::new(Some(10));
        pacer.ready().await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        pacer.restart();
        let start = Instant::now();
        for _ in 0..11 {
            pacer.ready().await;
        }
        assert!(start.elapsed() >= Duration::from_millis(1_000), "{:?}", start.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_rate_nothing_waits() {
        let mut pacer = Pacer::new(None);
        let start = Instant::now();
        for _ in 0..1_000 {
            pacer.ready().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
