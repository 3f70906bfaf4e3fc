//! A shard's wall-clock timers: scheduled sends in the near window and sequence step deadlines.
//!
//! Timers are kept in a `BTreeMap` ordered by due time, so firing pops from the front and nothing scans; one
//! tokio timer (itself a hierarchical timing wheel) is armed for the earliest entry at a time. Due times are
//! wall-clock instants read from the engine's [`Clock`], which tests can move forward: virtual time for
//! schedules a year ahead.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::hash::HashMap;
use crate::key::Key;

/// What a timer is for, by the id's [`Key`]: a spike's due sends are each copied into the timers and then into
/// the shard's held queue, so a copy is 16 bytes, not an allocation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimerKey {
    /// A scheduled notification is due.
    Send(Key),
    /// A sequence's running step has used up its `step_timeout`.
    Step(Key),
}

/// The engine's wall clock: the system clock plus an offset that only tests move.
#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: AtomicI64,
}

impl Clock {
    pub fn now(&self) -> Timestamp {
        let offset = self.offset_ms.load(Ordering::Relaxed);
        let now = Timestamp::now();
        if offset == 0 { now } else { now.checked_add(SignedDuration::from_millis(offset)).unwrap_or(now) }
    }

    /// Moves this clock forward (virtual time for tests).
    pub fn advance(&self, by: Duration) {
        self.offset_ms.fetch_add(i64::try_from(by.as_millis()).unwrap_or(i64::MAX), Ordering::Relaxed);
    }
}

/// Timers by due time.
///
/// A step deadline is in the set at most once: setting it again moves it. A scheduled send's timer is set at
/// its notification's `send_at`, which the shard already keeps, so its due time is not kept a second time here
/// (a map entry per loaded send, and a cold lookup per fired one at a spike): the shard removes it with that due
/// time ([`Timers::remove_send`]) before setting another, and checks a popped send against its notification.
#[derive(Debug, Default)]
pub struct Timers {
    by_due: BTreeMap<(Timestamp, TimerKey), ()>,
    step_due: HashMap<Key, Timestamp>,
    /// The earliest due time a wake-up is already scheduled for.
    armed: Option<Timestamp>,
    /// Scheduled-send timers of every shard (shared), which the loader keeps under `scheduling.max_loaded`.
    sends: Arc<AtomicI64>,
}

impl Timers {
    /// Timers whose scheduled sends are counted in `sends`, shared with other shards' timers.
    pub fn counting(sends: Arc<AtomicI64>) -> Timers {
        Timers { sends, ..Timers::default() }
    }

    /// Sets scheduled send `key`'s timer at `due`.
    pub fn insert_send(&mut self, key: Key, due: Timestamp) {
        if self.by_due.insert((due, TimerKey::Send(key)), ()).is_none() {
            self.sends.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Removes scheduled send `key`'s timer set at `due`, if it is there.
    pub fn remove_send(&mut self, key: Key, due: Timestamp) {
        if self.by_due.remove(&(due, TimerKey::Send(key))).is_some() {
            self.sends.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Sets (or moves) sequence `key`'s step deadline.
    pub fn insert_step(&mut self, key: Key, due: Timestamp) {
        if let Some(old) = self.step_due.insert(key.clone(), due) {
            self.by_due.remove(&(old, TimerKey::Step(key.clone())));
        }
        self.by_due.insert((due, TimerKey::Step(key)), ());
    }

    pub fn remove_step(&mut self, key: &Key) {
        if let Some(old) = self.step_due.remove(key) {
            self.by_due.remove(&(old, TimerKey::Step(key.clone())));
        }
    }

    /// Removes and returns the timers due at or before `now`, earliest first.
    pub fn pop_due(&mut self, now: Timestamp) -> Vec<(Timestamp, TimerKey)> {
        let mut due = Vec::new();
        while let Some(entry) = self.by_due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (at, key) = entry.remove_entry().0;
            match &key {
                TimerKey::Send(_) => drop(self.sends.fetch_sub(1, Ordering::Relaxed)),
                TimerKey::Step(id) => drop(self.step_due.remove(id)),
            }
            due.push((at, key));
        }
        due
    }

    /// The wake-up to schedule, if the earliest timer is earlier than the one already scheduled; the caller
    /// sleeps until then and calls [`Timers::fired`] before [`Timers::pop_due`].
    pub fn arm(&mut self) -> Option<Timestamp> {
        let (earliest, _) = self.by_due.keys().next()?;
        if self.armed.is_some_and(|armed| armed <= *earliest) {
            return None;
        }
        self.armed = Some(*earliest);
        self.armed
    }

    /// A scheduled wake-up happened: the next [`Timers::arm`] schedules again.
    pub fn fired(&mut self) {
        self.armed = None;
    }
}

/// How long to sleep from `now` until `due` (zero if it has passed).
pub fn until(now: Timestamp, due: Timestamp) -> Duration {
    Duration::try_from(due.duration_since(now)).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn timers_pop_in_due_order_and_only_when_due() {
        let mut t = Timers::default();
        t.insert_send(Key::new("b"), at(20));
        t.insert_send(Key::new("a"), at(10));
        t.insert_step(Key::new("s"), at(10));
        assert!(t.pop_due(at(9)).is_empty());
        let due: Vec<_> = t.pop_due(at(10)).into_iter().map(|(_, k)| k).collect();
        assert_eq!(due, [TimerKey::Send(Key::new("a")), TimerKey::Step(Key::new("s"))]);
        assert_eq!(t.pop_due(at(100)).len(), 1);
        assert!(t.step_due.is_empty() && t.by_due.is_empty());
    }

    #[test]
    fn moving_or_removing_a_step_deadline_leaves_no_stale_entry() {
        let mut t = Timers::default();
        let key = Key::new("s");
        t.insert_step(key.clone(), at(10));
        t.insert_step(key.clone(), at(30));
        assert!(t.pop_due(at(20)).is_empty(), "the old deadline is gone");
        assert_eq!(t.pop_due(at(30)).len(), 1);
        t.insert_step(key.clone(), at(40));
        t.remove_step(&key);
        assert!(!t.step_due.contains_key(&key));
        assert!(t.pop_due(at(50)).is_empty());
    }

    #[test]
    fn a_send_is_removed_at_the_due_time_it_was_set() {
        let mut t = Timers::default();
        t.insert_send(Key::new("n"), at(10));
        t.remove_send(Key::new("n"), at(11));
        t.remove_send(Key::new("m"), at(10));
        assert_eq!(t.by_due.len(), 1, "another due time or another send is not this timer");
        t.remove_send(Key::new("n"), at(10));
        assert!(t.pop_due(at(50)).is_empty());
    }

    #[test]
    fn scheduled_sends_are_counted_while_they_wait() {
        let sends = Arc::new(AtomicI64::new(0));
        let mut t = Timers::counting(sends.clone());
        t.insert_send(Key::new("a"), at(10));
        t.insert_send(Key::new("a"), at(10));
        t.insert_send(Key::new("b"), at(30));
        t.insert_send(Key::new("c"), at(40));
        t.insert_step(Key::new("s"), at(10));
        assert_eq!(sends.load(Ordering::Relaxed), 3, "a timer set twice and step deadlines are not counted again");
        t.remove_send(Key::new("b"), at(30));
        t.remove_send(Key::new("b"), at(30));
        assert_eq!(sends.load(Ordering::Relaxed), 2);
        assert_eq!(t.pop_due(at(25)).len(), 2);
        assert_eq!(sends.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn arming_happens_once_per_earliest_deadline() {
        let mut t = Timers::default();
        assert_eq!(t.arm(), None);
        t.insert_send(Key::new("a"), at(10));
        assert_eq!(t.arm(), Some(at(10)));
        assert_eq!(t.arm(), None, "already armed for it");
        t.insert_send(Key::new("b"), at(5));
        assert_eq!(t.arm(), Some(at(5)), "an earlier timer re-arms");
        t.fired();
        assert_eq!(t.arm(), Some(at(5)));
    }

    #[test]
    fn the_clock_moves_forward_when_told() {
        let clock = Clock::default();
        let before = clock.now();
        clock.advance(Duration::from_secs(365 * 86_400));
        assert!(clock.now().duration_since(before).as_secs() >= 365 * 86_400);
    }
}
