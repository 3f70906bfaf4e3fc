//! One traffic stream's book: per message, who it was for, when it was due, what Herald answered and when the
//! sandbox received it. The verdict (losses, duplicates, ordering, latencies) is computed from the book at the
//! end, so the hot paths only write a few integers under a short lock.
//!
//! Times are microseconds since the run's epoch (`crate::clock`), the tool's clock and the sandbox's wall clock
//! mapped onto one axis.

use std::sync::{Mutex, MutexGuard, PoisonError};

use hdrhistogram::Histogram;

/// What Herald did with one message's request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Planned, not sent yet.
    Planned,
    /// Not sent: every outstanding slot was busy at its arrival time (open loop, counted, never retried).
    Skipped,
    InFlight,
    /// Answered 202: it must reach the sandbox exactly once.
    Accepted,
    /// Answered otherwise (429, 4xx, 5xx): it must not reach the sandbox.
    Refused,
    /// No answer (transport error, timeout): it may or may not arrive; neither is an error.
    Uncertain,
    /// Accepted, but Herald says it will not be delivered (a campaign's skipped recipient, a sequence step after
    /// a failed one): not expected, and an arrival is not an error either.
    Excused,
}

/// How a user's messages must be ordered at the sandbox (SPEC §4: per-recipient FIFO, per priority lane).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderBy {
    /// In acceptance order: a message sent after another's 202 came back must not arrive before it.
    Acceptance,
    /// In due order (scheduled sends).
    Due,
    /// No order to check (one message per user, or a check of its own).
    None,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    user: u32,
    /// Messages are ordered within a user and a lane (priority).
    lane: u8,
    state: State,
    arrivals: u16,
    /// The intended send time (open loop) or the due time (scheduled).
    due_us: i64,
    sent_us: i64,
    answered_us: i64,
    first_arrival_us: i64,
    first_arrival_seq: u64,
}

#[derive(Default)]
struct Book {
    entries: Vec<Entry>,
    accepted: u64,
    /// Accepted entries that arrived at least once.
    accepted_arrived: u64,
    /// Arrivals naming an index never planned.
    strays: u64,
    /// Violations found by a check of the caller's own (sequence steps against their reports).
    extra_violations: u64,
}

/// A stream's book (see the module header).
pub struct Ledger {
    pub name: String,
    order_by: OrderBy,
    book: Mutex<Book>,
}

/// What one arrival was, for the caller's live counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrived {
    First,
    Again,
    Stray,
}

/// Exact counts and HDR histograms of a stream, in microseconds.
pub struct Verdict {
    pub planned: u64,
    pub sent: u64,
    pub skipped: u64,
    pub accepted: u64,
    pub refused: u64,
    pub uncertain: u64,
    pub excused: u64,
    /// Accepted messages that arrived (once or more).
    pub delivered: u64,
    /// Accepted messages that never arrived.
    pub lost: u64,
    /// Arrivals beyond the first, of any message.
    pub duplicates: u64,
    /// Refused or skipped messages that arrived anyway, and arrivals of indexes never planned.
    pub unexpected: u64,
    pub ordering_violations: u64,
    /// The first few violations the ledger found itself (indexes and times), to look into.
    pub ordering_examples: Vec<Overtaken>,
    /// Answer time − due time of accepted messages.
    pub accept_latency: Histogram<u64>,
    /// First arrival − due time of accepted messages (for scheduled messages: the lateness).
    pub e2e_latency: Histogram<u64>,
    /// Accepted messages that arrived before they were due (the clock or the scheduler is off).
    pub early: u64,
    pub first_due_us: Option<i64>,
    /// The last answer to an accepted message.
    pub last_answer_us: Option<i64>,
    pub last_arrival_us: Option<i64>,
}

impl Verdict {
    /// Accepted messages per second, from the first due time to the last answer.
    pub fn accepted_per_s(&self) -> Option<f64> {
        per_second(self.accepted, self.first_due_us?, self.last_answer_us?)
    }

    /// Delivered messages per second, from the first due time to the last first arrival.
    pub fn delivered_per_s(&self) -> Option<f64> {
        per_second(self.delivered, self.first_due_us?, self.last_arrival_us?)
    }
}

/// `count` over the span from `from_us` to `to_us` (at least a millisecond).
pub fn per_second(count: u64, from_us: i64, to_us: i64) -> Option<f64> {
    (count > 0).then(|| count as f64 / ((to_us - from_us).max(1000) as f64 / 1e6))
}

/// Longest latency a histogram holds (larger values are clamped to it): an hour.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;

/// An empty histogram of microseconds with three significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Records a latency, clamped into the histogram's range (a latency under 1 µs counts as 1 µs).
pub fn record(histogram: &mut Histogram<u64>, latency_us: i64) {
    let value = u64::try_from(latency_us).unwrap_or(0).clamp(1, MAX_LATENCY_US);
    histogram.record(value).expect("a clamped value fits");
}

impl Ledger {
    pub fn new(name: impl Into<String>, order_by: OrderBy) -> Ledger {
        Ledger { name: name.into(), order_by, book: Mutex::new(Book::default()) }
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Plans the next message and returns its index.
    pub fn plan(&self, user: u32, lane: u8, due_us: i64) -> u64 {
        let mut book = self.book();
        book.entries.push(Entry {
            user,
            lane,
            state: State::Planned,
            arrivals: 0,
            due_us,
            sent_us: -1,
            answered_us: -1,
            first_arrival_us: -1,
            first_arrival_seq: 0,
        });
        book.entries.len() as u64 - 1
    }

    /// The user and lane message `index` was planned for.
    pub fn target(&self, index: u64) -> (u32, u8) {
        let entry = self.book().entries[index as usize];
        (entry.user, entry.lane)
    }

    pub fn skipped(&self, index: u64) {
        self.book().entries[index as usize].state = State::Skipped;
    }

    pub fn sent(&self, index: u64, at_us: i64) {
        let mut book = self.book();
        let entry = &mut book.entries[index as usize];
        entry.state = State::InFlight;
        entry.sent_us = at_us;
    }

    /// Herald's answer (or its absence) to a sent message.
    pub fn answered(&self, index: u64, state: State, at_us: i64) {
        let mut book = self.book();
        let entry = &mut book.entries[index as usize];
        entry.state = state;
        entry.answered_us = at_us;
        let arrived = entry.arrivals > 0;
        if state == State::Accepted {
            book.accepted += 1;
            book.accepted_arrived += u64::from(arrived);
        }
    }

    /// Withdraws the expectation of an accepted message (see [`State::Excused`]).
    pub fn excuse(&self, index: u64) {
        let mut book = self.book();
        let entry = &mut book.entries[index as usize];
        if entry.state == State::Accepted {
            entry.state = State::Excused;
            let arrived = entry.arrivals > 0;
            book.accepted -= 1;
            book.accepted_arrived -= u64::from(arrived);
        }
    }

    /// Excuses up to `count` accepted messages that have not arrived (Herald reported that many as not
    /// deliverable without saying which); returns how many it excused.
    pub fn excuse_missing(&self, count: u64) -> u64 {
        let mut book = self.book();
        let mut excused = 0;
        for entry in &mut book.entries {
            if excused == count {
                break;
            }
            if entry.state == State::Accepted && entry.arrivals == 0 {
                entry.state = State::Excused;
                excused += 1;
            }
        }
        book.accepted -= excused;
        excused
    }

    /// Adds ordering violations found by a check outside the ledger.
    pub fn add_violations(&self, count: u64) {
        self.book().extra_violations += count;
    }

    /// The sandbox received message `index` (record `seq`, at `at_us`).
    pub fn arrive(&self, index: u64, seq: u64, at_us: i64) -> Arrived {
        let mut book = self.book();
        let Some(entry) = book.entries.get_mut(index as usize) else {
            book.strays += 1;
            return Arrived::Stray;
        };
        entry.arrivals = entry.arrivals.saturating_add(1);
        if entry.arrivals > 1 {
            return Arrived::Again;
        }
        entry.first_arrival_us = at_us;
        entry.first_arrival_seq = seq;
        if entry.state == State::Accepted {
            book.accepted_arrived += 1;
        }
        Arrived::First
    }

    /// How many messages there are, how many were accepted and how many of those arrived so far.
    pub fn progress(&self) -> (u64, u64, u64) {
        let book = self.book();
        (book.entries.len() as u64, book.accepted, book.accepted_arrived)
    }

    /// Whether every message has an answer and every accepted one arrived.
    pub fn complete(&self) -> bool {
        let book = self.book();
        book.accepted == book.accepted_arrived
            && book.entries.iter().all(|e| !matches!(e.state, State::Planned | State::InFlight))
    }

    /// Per entry `(due_us, answered_us if accepted, first_arrival_us if any)`, for the timeline.
    pub fn times(&self) -> Vec<(i64, Option<i64>, Option<i64>)> {
        let book = self.book();
        book.entries
            .iter()
            .map(|e| {
                let answered = (e.state == State::Accepted).then_some(e.answered_us);
                let arrived = (e.arrivals > 0 && e.state == State::Accepted).then_some(e.first_arrival_us);
                (e.due_us, answered, arrived)
            })
            .collect()
    }

    pub fn verdict(&self) -> Verdict {
        let book = self.book();
        let ordering = ordering_violations(&book.entries, self.order_by);
        let mut verdict = Verdict {
            planned: book.entries.len() as u64,
            sent: 0,
            skipped: 0,
            accepted: 0,
            refused: 0,
            uncertain: 0,
            excused: 0,
            delivered: 0,
            lost: 0,
            duplicates: 0,
            unexpected: book.strays,
            ordering_violations: ordering.0 + book.extra_violations,
            ordering_examples: ordering.1,
            accept_latency: histogram(),
            e2e_latency: histogram(),
            early: 0,
            first_due_us: book.entries.iter().map(|e| e.due_us).min(),
            last_answer_us: book.entries.iter().filter(|e| e.state == State::Accepted).map(|e| e.answered_us).max(),
            last_arrival_us: book
                .entries
                .iter()
                .filter(|e| e.arrivals > 0 && e.state == State::Accepted)
                .map(|e| e.first_arrival_us)
                .max(),
        };
        for e in &book.entries {
            verdict.duplicates += u64::from(e.arrivals.saturating_sub(1));
            verdict.sent += u64::from(e.sent_us >= 0);
            match e.state {
                State::Planned | State::InFlight => {}
                State::Skipped => {
                    verdict.skipped += 1;
                    verdict.unexpected += u64::from(e.arrivals > 0);
                }
                State::Refused => {
                    verdict.refused += 1;
                    verdict.unexpected += u64::from(e.arrivals > 0);
                }
                State::Uncertain => verdict.uncertain += 1,
                State::Excused => verdict.excused += 1,
                State::Accepted => {
                    verdict.accepted += 1;
                    if e.answered_us >= 0 {
                        // From the intended send: the due time of an open-loop arrival; for a notification
                        // posted ahead of its due time (scheduled), the moment it was posted.
                        record(&mut verdict.accept_latency, e.answered_us - e.due_us.min(e.sent_us));
                    }
                    if e.arrivals == 0 {
                        verdict.lost += 1;
                        continue;
                    }
                    verdict.delivered += 1;
                    let latency = e.first_arrival_us - e.due_us;
                    verdict.early += u64::from(latency < 0);
                    record(&mut verdict.e2e_latency, latency);
                }
            }
        }
        verdict
    }
}

/// Most ordering violations described in a verdict.
const EXAMPLES: usize = 5;

/// One ordering violation: message `overtaken` arrived after `overtaker`, which had to come after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Overtaken {
    pub user: u32,
    pub lane: u8,
    pub overtaken: u64,
    pub overtaker: u64,
    /// The overtaken message's bounds and the overtaker's lower bound, µs on the run's axis.
    pub overtaken_bounds: (i64, i64),
    pub overtaker_lower: i64,
}

/// Counts the accepted messages that arrived after a message of the same user and lane that had to come after
/// them: in arrival order, a message is a violation when an earlier arrival's lower bound is past its upper
/// bound. Bounds: `[sent, answered]` for acceptance order (two requests in flight together may be accepted in
/// either order), `[due, due]` for due order. Returns the count and the first few violations.
fn ordering_violations(entries: &[Entry], order_by: OrderBy) -> (u64, Vec<Overtaken>) {
    let bounds = |e: &Entry| match order_by {
        OrderBy::Acceptance => (e.sent_us, e.answered_us),
        OrderBy::Due | OrderBy::None => (e.due_us, e.due_us),
    };
    if order_by == OrderBy::None {
        return (0, Vec::new());
    }
    let mut arrived: Vec<(u64, &Entry)> = (0_u64..)
        .zip(entries)
        .filter(|(_, e)| e.state == State::Accepted && e.arrivals > 0 && e.sent_us >= 0)
        .collect();
    arrived.sort_unstable_by_key(|(_, e)| (e.user, e.lane, e.first_arrival_seq));
    let (mut violations, mut examples) = (0, Vec::new());
    let mut previous: Option<(u32, u8)> = None;
    // The largest lower bound among the user's earlier arrivals, and whose it is.
    let mut highest: (i64, u64) = (i64::MIN, 0);
    for (index, e) in arrived {
        if previous != Some((e.user, e.lane)) {
            previous = Some((e.user, e.lane));
            highest = (i64::MIN, 0);
        }
        let (lower, upper) = bounds(e);
        if highest.0 > upper {
            violations += 1;
            if examples.len() < EXAMPLES {
                examples.push(Overtaken {
                    user: e.user,
                    lane: e.lane,
                    overtaken: index,
                    overtaker: highest.1,
                    overtaken_bounds: (lower, upper),
                    overtaker_lower: highest.0,
                });
            }
        }
        if lower > highest.0 {
            highest = (lower, index);
        }
    }
    (violations, examples)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plans, sends and accepts one message; returns its index.
    fn accepted(ledger: &Ledger, user: u32, due: i64, sent: i64, answered: i64) -> u64 {
        let index = ledger.plan(user, 0, due);
        ledger.sent(index, sent);
        ledger.answered(index, State::Accepted, answered);
        index
    }

    #[test]
    fn losses_duplicates_and_unexpected_arrivals_are_counted() {
        let ledger = Ledger::new("t", OrderBy::Acceptance);
        let a = accepted(&ledger, 1, 0, 0, 10);
        let b = accepted(&ledger, 2, 0, 0, 10);
        let _lost = accepted(&ledger, 3, 0, 0, 10);
        let refused = ledger.plan(4, 0, 0);
        ledger.sent(refused, 0);
        ledger.answered(refused, State::Refused, 5);
        let skipped = ledger.plan(5, 0, 0);
        ledger.skipped(skipped);
        let uncertain = ledger.plan(6, 0, 0);
        ledger.sent(uncertain, 0);
        ledger.answered(uncertain, State::Uncertain, 30_000_000);

        assert_eq!(ledger.arrive(a, 1, 100), Arrived::First);
        assert_eq!(ledger.arrive(b, 2, 100), Arrived::First);
        assert_eq!(ledger.arrive(b, 3, 200), Arrived::Again);
        assert_eq!(ledger.arrive(refused, 4, 100), Arrived::First);
        assert_eq!(ledger.arrive(uncertain, 5, 100), Arrived::First);
        assert_eq!(ledger.arrive(99, 6, 100), Arrived::Stray);
        assert!(!ledger.complete(), "one accepted message is missing");

        let v = ledger.verdict();
        assert_eq!((v.planned, v.sent, v.accepted, v.refused, v.skipped, v.uncertain), (6, 5, 3, 1, 1, 1));
        assert_eq!((v.delivered, v.lost, v.duplicates), (2, 1, 1));
        assert_eq!(v.unexpected, 2, "the refused message that arrived, and the stray index");
        assert_eq!(ledger.progress(), (6, 3, 2));
    }

    #[test]
    fn latency_counts_from_the_intended_time_not_the_actual_send() {
        // Due at 0, but the client only got to send it at 40 ms (coordinated omission if measured from there).
        let ledger = Ledger::new("t", OrderBy::Acceptance);
        let index = accepted(&ledger, 1, 0, 40_000, 45_000);
        ledger.arrive(index, 1, 50_000);
        let v = ledger.verdict();
        assert_eq!(v.accept_latency.value_at_quantile(1.0), v.accept_latency.highest_equivalent(45_000));
        assert_eq!(v.e2e_latency.value_at_quantile(0.5), v.e2e_latency.highest_equivalent(50_000));
        assert_eq!((v.early, v.first_due_us, v.last_arrival_us), (0, Some(0), Some(50_000)));
        assert_eq!(v.accepted_per_s(), Some(1.0 / 0.045));
        assert_eq!(v.delivered_per_s(), Some(1.0 / 0.05));
        assert_eq!(per_second(0, 0, 10), None);
        assert_eq!(per_second(5, 0, 0), Some(5000.0), "a span under a millisecond counts as one");
    }

    #[test]
    fn acceptance_order_is_only_checked_between_requests_that_did_not_overlap() {
        let ledger = Ledger::new("t", OrderBy::Acceptance);
        // User 1: `first` answered at 10, `second` sent at 20: `second` must arrive after `first`.
        let first = accepted(&ledger, 1, 0, 0, 10);
        let second = accepted(&ledger, 1, 20, 20, 30);
        ledger.arrive(second, 1, 100);
        ledger.arrive(first, 2, 101);
        // User 2: two requests in flight together (sent 0 and 5, answered 30 and 31) may arrive in either order.
        let x = accepted(&ledger, 2, 0, 0, 30);
        let y = accepted(&ledger, 2, 5, 5, 31);
        ledger.arrive(y, 3, 100);
        ledger.arrive(x, 4, 101);
        // User 3 in order; a different lane of user 1 is not compared with lane 0.
        let p = accepted(&ledger, 3, 0, 0, 10);
        let q = accepted(&ledger, 3, 20, 20, 30);
        ledger.arrive(p, 5, 100);
        ledger.arrive(q, 6, 101);
        let other_lane = ledger.plan(1, 1, 50);
        ledger.sent(other_lane, 50);
        ledger.answered(other_lane, State::Accepted, 60);
        ledger.arrive(other_lane, 0, 70);
        assert_eq!(ledger.verdict().ordering_violations, 1);
    }

    #[test]
    fn due_order_is_checked_for_scheduled_messages() {
        let ledger = Ledger::new("t", OrderBy::Due);
        // Both posted long before; due at 1 s and 2 s; the later one arrived first.
        let early = accepted(&ledger, 7, 1_000_000, 0, 10);
        let late = accepted(&ledger, 7, 2_000_000, 5, 15);
        ledger.arrive(late, 1, 2_000_100);
        ledger.arrive(early, 2, 2_000_200);
        let v = ledger.verdict();
        assert_eq!(v.ordering_violations, 1);
        let example = Overtaken {
            user: 7,
            lane: 0,
            overtaken: early,
            overtaker: late,
            overtaken_bounds: (1_000_000, 1_000_000),
            overtaker_lower: 2_000_000,
        };
        assert_eq!(v.ordering_examples, [example]);
        assert_eq!(Ledger::new("t", OrderBy::None).verdict().ordering_violations, 0);
        // Posted at 0 and 5 µs, answered 10 µs later: that is their accept latency, not answer − due.
        assert_eq!(v.accept_latency.max(), v.accept_latency.highest_equivalent(10));
    }

    #[test]
    fn an_excused_message_is_neither_lost_nor_unexpected() {
        let ledger = Ledger::new("t", OrderBy::None);
        let a = accepted(&ledger, 1, 0, 0, 10);
        let b = accepted(&ledger, 2, 0, 0, 10);
        ledger.arrive(b, 1, 100);
        ledger.excuse(a);
        ledger.excuse(b);
        assert!(ledger.complete());
        let v = ledger.verdict();
        assert_eq!((v.accepted, v.excused, v.lost, v.unexpected), (0, 2, 0, 0));

        // Three sent, one arrived, Herald says one was skipped: one is excused, one is lost.
        let ledger = Ledger::new("t", OrderBy::None);
        let arrived = accepted(&ledger, 1, 0, 0, 10);
        accepted(&ledger, 2, 0, 0, 10);
        accepted(&ledger, 3, 0, 0, 10);
        ledger.arrive(arrived, 1, 100);
        assert_eq!(ledger.excuse_missing(1), 1);
        ledger.add_violations(2);
        let v = ledger.verdict();
        assert_eq!((v.accepted, v.excused, v.delivered, v.lost, v.ordering_violations), (2, 1, 1, 1, 2));
        assert_eq!(ledger.excuse_missing(5), 1, "only what is missing can be excused");
    }
}
