//! Matching arrivals to due times, and the result: counts, lateness percentiles, the summary line, the JSON
//! summary and whether the run met SPEC §5 (everything arrived once, never early, p99 lateness within 1 s).

use serde_json::{Value, json};

use super::Plan;
use super::accept::Accepted;
use crate::sandbox::Arrival;
use crate::stats::Distribution;

/// SPEC §5: a scheduled notification reaches its provider within this of its due time at p99.
const P99_TARGET_NS: i64 = 1_000_000_000;

/// What the sandbox received of this run so far.
pub struct Arrivals {
    /// Per notification index: when its first message arrived.
    first_ns: Vec<Option<i64>>,
    /// Notifications that have arrived at least once.
    unique: u64,
    /// Messages beyond the first for a notification.
    duplicates: u64,
    /// Messages for notifications that were never accepted (or an index past the plan).
    unexpected: u64,
}

impl Arrivals {
    pub fn new(total: u64) -> Self {
        Self { first_ns: vec![None; total as usize], unique: 0, duplicates: 0, unexpected: 0 }
    }

    /// Counts one received message.
    pub fn record(&mut self, arrival: Arrival, scheduled: &[bool]) {
        let index = arrival.index as usize;
        if !scheduled.get(index).copied().unwrap_or(false) {
            self.unexpected += 1;
            return;
        }
        match &mut self.first_ns[index] {
            Some(_) => self.duplicates += 1,
            first @ None => {
                *first = Some(arrival.received_at_ns);
                self.unique += 1;
            }
        }
    }

    /// How many accepted notifications have arrived.
    pub fn unique(&self) -> u64 {
        self.unique
    }
}

/// A finished run's numbers.
#[derive(Debug, PartialEq)]
pub struct Report {
    pub scheduled: u64,
    pub refused: u64,
    pub arrived: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub unexpected: u64,
    /// Arrived before their due time.
    pub early: u64,
    /// Lateness (received_at − due) of each arrived notification's first message, in nanoseconds.
    pub lateness_ns: Option<Distribution>,
}

impl Report {
    pub fn new(plan: &Plan, accepted: &Accepted, arrivals: &Arrivals) -> Self {
        let scheduled = accepted.count();
        let mut lateness: Vec<i64> = (0..plan.total)
            .filter_map(|index| Some(arrivals.first_ns[index as usize]? - plan.due_ms(index) * 1_000_000))
            .collect();
        let early = lateness.iter().filter(|&&ns| ns < 0).count() as u64;
        Self {
            scheduled,
            refused: plan.total - scheduled,
            arrived: arrivals.unique,
            missing: scheduled - arrivals.unique,
            duplicates: arrivals.duplicates,
            unexpected: arrivals.unexpected,
            early,
            lateness_ns: Distribution::of(&mut lateness),
        }
    }

    /// Whether the run met the scheduling guarantee: all scheduled, all arrived exactly once, none early, p99
    /// lateness within 1 s.
    pub fn met_target(&self) -> bool {
        self.refused == 0
            && self.missing == 0
            && self.duplicates == 0
            && self.unexpected == 0
            && self.early == 0
            && self.lateness_ns.is_some_and(|l| l.p99 <= P99_TARGET_NS)
    }

    /// The one-line summary.
    pub fn line(&self, plan: &Plan, accepted: &Accepted) -> String {
        let accept_s = accepted.elapsed.as_secs_f64();
        let mut line = format!(
            "schedule: {} due in {} s | scheduled {} in {accept_s:.1} s = {:.0}/s",
            plan.total,
            plan.window_ms / 1000,
            self.scheduled,
            self.scheduled as f64 / accept_s
        );
        if self.refused > 0 {
            line += &format!(", refused {}", self.refused);
        }
        line += &format!(
            " | arrived {}, missing {}, duplicates {}, early {}",
            self.arrived, self.missing, self.duplicates, self.early
        );
        if self.unexpected > 0 {
            line += &format!(", unexpected {}", self.unexpected);
        }
        match self.lateness_ns {
            Some(l) => {
                line += &format!(
                    " | lateness p50 {:.1} p90 {:.1} p99 {:.1} max {:.1} ms",
                    ms(l.p50),
                    ms(l.p90),
                    ms(l.p99),
                    ms(l.max)
                )
            }
            None => line += " | lateness: nothing arrived",
        }
        line
    }

    /// The machine-readable summary (`--json`).
    pub fn json(&self, plan: &Plan, accepted: &Accepted, settings: Value) -> Value {
        let accept_s = accepted.elapsed.as_secs_f64();
        let lateness = self.lateness_ns.map(|l| {
            json!({"count": l.count, "min": ms(l.min), "p50": ms(l.p50), "p90": ms(l.p90), "p99": ms(l.p99),
                   "max": ms(l.max)})
        });
        json!({
            "run_id": plan.run_id,
            "settings": settings,
            "total": plan.total,
            "scheduled": self.scheduled,
            "refused": self.refused,
            "answers": &accepted.answers,
            "refusal_messages": &accepted.refusal_messages,
            "accept_s": accept_s,
            "accept_per_s": self.scheduled as f64 / accept_s,
            "arrived": self.arrived,
            "missing": self.missing,
            "duplicates": self.duplicates,
            "unexpected": self.unexpected,
            "early": self.early,
            "lateness_ms": lateness,
            "p99_target_ms": ms(P99_TARGET_NS),
            "met_target": self.met_target(),
        })
    }
}

/// Nanoseconds as milliseconds, to the microsecond.
fn ms(ns: i64) -> f64 {
    (ns as f64 / 1_000.0).round() / 1_000.0
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;

    fn plan(total: u64) -> Plan {
        Plan { run_id: "r".to_string(), total, window_start_ms: 1_000_000, window_ms: 10_000 }
    }

    fn accepted(scheduled: Vec<bool>) -> Accepted {
        let count = scheduled.iter().filter(|&&s| s).count() as u64;
        Accepted {
            answers: BTreeMap::from([("202 scheduled".to_string(), count)]),
            refusal_messages: BTreeMap::new(),
            scheduled,
            elapsed: Duration::from_secs(2),
            ran_into_window: false,
        }
    }

    /// An arrival of notification `index` `late_ms` after its due time.
    fn arrival(plan: &Plan, index: u64, late_ms: i64) -> Arrival {
        Arrival { index, received_at_ns: (plan.due_ms(index) + late_ms) * 1_000_000 }
    }

    #[test]
    fn counts_missing_duplicates_and_early() {
        let plan = plan(4);
        let accepted = accepted(vec![true, true, true, false]);
        let mut arrivals = Arrivals::new(plan.total);
        for a in [arrival(&plan, 0, 5), arrival(&plan, 1, -1), arrival(&plan, 0, 30), arrival(&plan, 3, 0)] {
            arrivals.record(a, &accepted.scheduled);
        }
        arrivals.record(Arrival { index: 99, received_at_ns: 0 }, &accepted.scheduled);
        assert_eq!(arrivals.unique(), 2);

        let report = Report::new(&plan, &accepted, &arrivals);
        assert_eq!(
            report,
            Report {
                scheduled: 3,
                refused: 1,
                arrived: 2,
                missing: 1,
                duplicates: 1,
                unexpected: 2,
                early: 1,
                lateness_ns: Some(Distribution {
                    count: 2,
                    min: -1_000_000,
                    p50: -1_000_000,
                    p90: 5_000_000,
                    p99: 5_000_000,
                    max: 5_000_000
                }),
            }
        );
        assert!(!report.met_target());
        assert_eq!(
            report.line(&plan, &accepted),
            "schedule: 4 due in 10 s | scheduled 3 in 2.0 s = 2/s, refused 1 | arrived 2, missing 1, duplicates 1, \
             early 1, unexpected 2 | lateness p50 -1.0 p90 5.0 p99 5.0 max 5.0 ms"
        );
    }

    #[test]
    fn a_clean_run_meets_the_target_unless_p99_is_over_a_second() {
        let plan = plan(200);
        let accepted = accepted(vec![true; 200]);
        let mut arrivals = Arrivals::new(plan.total);
        for index in 0..200 {
            let late_ms = if index < 198 { 20 } else { 1_500 };
            arrivals.record(arrival(&plan, index, late_ms), &accepted.scheduled);
        }
        let report = Report::new(&plan, &accepted, &arrivals);
        assert!(report.met_target(), "{report:?}");
        let json = report.json(&plan, &accepted, json!({"lead_s": 90}));
        assert_eq!(json["lateness_ms"]["p99"], json!(20.0));
        assert_eq!(json["lateness_ms"]["max"], json!(1500.0));
        assert_eq!(json["answers"]["202 scheduled"], json!(200));
        assert_eq!(json["met_target"], json!(true));

        arrivals.record(arrival(&plan, 0, 0), &accepted.scheduled);
        assert!(!Report::new(&plan, &accepted, &arrivals).met_target(), "a duplicate fails the run");

        let mut slow = Arrivals::new(plan.total);
        for index in 0..200 {
            let late_ms = if index < 197 { 20 } else { 1_500 };
            slow.record(arrival(&plan, index, late_ms), &accepted.scheduled);
        }
        let report = Report::new(&plan, &accepted, &slow);
        assert_eq!(report.lateness_ns.unwrap().p99, 1_500_000_000);
        assert!(!report.met_target());
    }

    #[test]
    fn nothing_arrived_reads_plainly() {
        let plan = plan(2);
        let accepted = accepted(vec![true, true]);
        let report = Report::new(&plan, &accepted, &Arrivals::new(2));
        assert_eq!(report.missing, 2);
        assert!(report.line(&plan, &accepted).ends_with("| lateness: nothing arrived"));
        assert!(!report.met_target());
    }
}
