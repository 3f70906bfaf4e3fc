//! The run's one time axis: microseconds since the run's epoch. The tool's own events (sends, answers) are read
//! from a monotonic clock; the sandbox stamps `received_at` with the wall clock, which is mapped onto the same
//! axis through the wall time taken at the epoch. Both processes must run on this machine. The monotonic clock
//! is tokio's, so tests with paused time drive it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    epoch: Instant,
    /// Wall time at `epoch`, in whole microseconds since the Unix epoch (so conversions both ways round the same).
    epoch_wall_us: i64,
}

impl Clock {
    pub fn start() -> Clock {
        let epoch = Instant::now();
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970");
        Clock { epoch, epoch_wall_us: i64::try_from(wall.as_micros()).expect("microseconds since 1970 fit in i64") }
    }

    /// Now, in microseconds since the epoch.
    pub fn now_us(&self) -> i64 {
        i64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(i64::MAX)
    }

    /// Waits until `at_us` (returns at once if it has passed). Tokio's timer has millisecond resolution, so an
    /// open-loop driver wakes once per millisecond and sends everything due by then.
    pub async fn sleep_until(&self, at_us: i64) {
        let wait = at_us - self.now_us();
        if wait > 0 {
            tokio::time::sleep(Duration::from_micros(wait as u64)).await;
        }
    }

    /// A wall-clock instant (nanoseconds since the Unix epoch) on this axis.
    pub fn on_axis(&self, wall_ns: i64) -> i64 {
        wall_ns.div_euclid(1000) - self.epoch_wall_us
    }

    /// A point of this axis as wall-clock milliseconds since the Unix epoch (for `send_at`).
    pub fn wall_ms(&self, at_us: i64) -> i64 {
        (self.epoch_wall_us + at_us).div_euclid(1000)
    }

    /// The point of this axis at the start of the wall-clock millisecond `at_us` is in: the instant a `send_at`
    /// written in milliseconds names.
    pub fn floor_ms(&self, at_us: i64) -> i64 {
        self.on_axis(self.wall_ms(at_us) * 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_and_monotonic_times_share_one_axis() {
        let clock = Clock { epoch: Instant::now(), epoch_wall_us: 1_700_000_000_000_000 };
        assert_eq!(clock.on_axis(1_700_000_000_000_000_000), 0);
        assert_eq!(clock.on_axis(1_700_000_000_250_000_999), 250_000);
        assert_eq!(clock.on_axis(1_699_999_999_999_999_000), -1);
        assert_eq!(clock.wall_ms(1_500_000), 1_700_000_001_500);
        assert_eq!(clock.wall_ms(clock.on_axis(1_700_000_123_456_000_000)), 1_700_000_123_456);

        // An epoch inside a millisecond: a due time rounds down to its millisecond, and stays there.
        let clock = Clock { epoch: Instant::now(), epoch_wall_us: 1_700_000_000_000_250 };
        assert_eq!(clock.floor_ms(1_000), 750);
        assert_eq!(clock.floor_ms(749), -250);
        assert_eq!(clock.floor_ms(750), 750);
        assert_eq!(clock.wall_ms(clock.floor_ms(1_000)), 1_700_000_000_001);
    }
}
