//! Deliveries waiting for their delivery report (status `sent`), in the order their waits end.
//!
//! Every wait has the same length (`engine.report_timeout_ms`), so deadlines arrive already sorted and a FIFO
//! is a priority queue: O(1) to add and to expire, one timer per shard however many deliveries wait. At
//! start-up, restored waits are added oldest first, before any new one, which keeps the order.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use jiff::Timestamp;

use crate::domain::{DeliveryId, NotificationId};

/// A delivery waiting for its report, and the notification it belongs to (which the shard looks it up by).
pub type Waiting = (NotificationId, DeliveryId);

#[derive(Debug)]
pub struct ReportWaits {
    timeout: Duration,
    queue: VecDeque<(Instant, Waiting)>,
    /// The deadline a wake-up is already scheduled for.
    armed: Option<Instant>,
}

impl ReportWaits {
    pub fn new(timeout: Duration) -> ReportWaits {
        ReportWaits { timeout, queue: VecDeque::new(), armed: None }
    }

    /// Starts the wait of a delivery that just became `sent`.
    pub fn start(&mut self, delivery: Waiting, now: Instant) {
        self.queue.push_back((now + self.timeout, delivery));
    }

    /// Resumes waits after a restart: `sent_at` is when each delivery became `sent` (wall clock, from the store).
    /// Waits that already ran out expire at the next tick.
    pub fn restore(&mut self, mut sent: Vec<(Timestamp, Waiting)>, now: Instant, wall_now: Timestamp) {
        sent.sort_by_key(|(at, _)| *at);
        for (sent_at, delivery) in sent {
            let waited = wall_now.duration_since(sent_at).try_into().unwrap_or(Duration::ZERO);
            let left = self.timeout.saturating_sub(waited);
            self.queue.push_back((now + left, delivery));
        }
    }

    /// Removes and returns the deliveries whose wait has ended. Some may have had their report meanwhile: the
    /// caller checks each is still `sent`.
    pub fn expired(&mut self, now: Instant) -> Vec<Waiting> {
        let mut due = Vec::new();
        while let Some((deadline, _)) = self.queue.front()
            && *deadline <= now
        {
            due.push(self.queue.pop_front().expect("front checked").1);
        }
        due
    }

    /// The next deadline that needs a wake-up, if none is scheduled for it yet; marks it scheduled.
    pub fn arm(&mut self) -> Option<Instant> {
        let next = self.queue.front()?.0;
        if self.armed.is_some_and(|armed| armed <= next) {
            return None;
        }
        self.armed = Some(next);
        Some(next)
    }

    /// The scheduled wake-up happened.
    pub fn fired(&mut self) {
        self.armed = None;
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Waiting {
        ("n".into(), s.into())
    }

    #[test]
    fn waits_expire_in_order_and_only_when_due() {
        let mut waits = ReportWaits::new(Duration::from_secs(10));
        let t0 = Instant::now();
        waits.start(id("a"), t0);
        waits.start(id("b"), t0 + Duration::from_secs(1));
        assert!(waits.expired(t0 + Duration::from_secs(9)).is_empty());
        assert_eq!(waits.expired(t0 + Duration::from_secs(10)), vec![id("a")]);
        assert_eq!(waits.expired(t0 + Duration::from_secs(60)), vec![id("b")]);
        assert_eq!(waits.len(), 0);
    }

    #[test]
    fn one_wake_up_is_armed_per_deadline() {
        let mut waits = ReportWaits::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(waits.arm(), None);
        waits.start(id("a"), t0);
        waits.start(id("b"), t0);
        assert_eq!(waits.arm(), Some(t0 + Duration::from_secs(10)));
        assert_eq!(waits.arm(), None, "already armed");
        waits.fired();
        waits.expired(t0 + Duration::from_secs(10));
        assert_eq!(waits.arm(), None, "nothing left");
    }

    #[test]
    fn restored_waits_keep_what_they_already_waited() {
        let mut waits = ReportWaits::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let wall = Timestamp::now();
        let ago = |s: i64| wall - jiff::SignedDuration::from_secs(s);
        waits.restore(vec![(ago(4), id("newer")), (ago(30), id("overdue")), (ago(8), id("older"))], t0, wall);
        assert_eq!(waits.expired(t0), vec![id("overdue")]);
        assert_eq!(waits.expired(t0 + Duration::from_secs(2)), vec![id("older")]);
        assert_eq!(waits.expired(t0 + Duration::from_secs(6)), vec![id("newer")]);
    }
}
