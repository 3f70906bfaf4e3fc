//! The run second by second, from the streams' books: accepted/s (by answer time), delivered/s (by first
//! arrival at the sandbox) and each stream's latency p50/p99 (by the second the message was due in, so a slow
//! second shows where the traffic that suffered it was sent).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::ledger::{MAX_LATENCY_US, record};

/// One stream's per-message times: `(due_us, answered_us if accepted, first_arrival_us if it arrived)`.
pub type Times = Vec<(i64, Option<i64>, Option<i64>)>;

/// Latency percentiles of one stream in one second.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SecondLatency {
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Second {
    /// Seconds since the origin.
    pub second: i64,
    pub accepted: u64,
    pub delivered: u64,
    /// Per stream with messages due in this second.
    pub latency: BTreeMap<String, SecondLatency>,
}

fn second_of(at_us: i64, origin_us: i64) -> i64 {
    (at_us - origin_us).div_euclid(1_000_000)
}

/// The timeline of `streams` from `origin_us` (earlier events are left out).
pub fn build(streams: &[(&str, Times)], origin_us: i64) -> Vec<Second> {
    let mut seconds: BTreeMap<i64, Second> = BTreeMap::new();
    let mut latencies: BTreeMap<(String, i64), Histogram<u64>> = BTreeMap::new();
    for (name, times) in streams {
        for &(due, answered, arrived) in times {
            if let Some(at) = answered.filter(|&at| at >= origin_us) {
                bump(&mut seconds, second_of(at, origin_us), |s| s.accepted += 1);
            }
            if let Some(at) = arrived.filter(|&at| at >= origin_us) {
                bump(&mut seconds, second_of(at, origin_us), |s| s.delivered += 1);
                if due >= origin_us {
                    let histogram = latencies
                        .entry((name.to_string(), second_of(due, origin_us)))
                        .or_insert_with(|| Histogram::new_with_bounds(1, MAX_LATENCY_US, 2).expect("valid bounds"));
                    record(histogram, at - due);
                }
            }
        }
    }
    for ((name, s), histogram) in latencies {
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        let latency = SecondLatency { p50_ms: ms(0.5), p99_ms: ms(0.99) };
        bump(&mut seconds, s, |second| {
            second.latency.insert(name.clone(), latency.clone());
        });
    }
    // Every second from the first to the last, so a stalled second shows as zero rather than as a gap.
    let (Some(&first), Some(&last)) = (seconds.keys().next(), seconds.keys().next_back()) else { return Vec::new() };
    (first..=last)
        .map(|s| {
            seconds.remove(&s).unwrap_or(Second { second: s, accepted: 0, delivered: 0, latency: BTreeMap::new() })
        })
        .collect()
}

fn bump(seconds: &mut BTreeMap<i64, Second>, s: i64, change: impl FnOnce(&mut Second)) {
    change(seconds.entry(s).or_insert_with(|| Second {
        second: s,
        accepted: 0,
        delivered: 0,
        latency: BTreeMap::new(),
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_count_answers_and_arrivals_and_fill_gaps() {
        let steady: Times = vec![
            (0, Some(1_000), Some(5_000)),
            (500_000, Some(600_000), Some(1_200_000)),
            (2_100_000, None, None),
            (3_000_000, Some(3_001_000), Some(3_010_000)),
            (-2_000_000, Some(-1_000_000), Some(100)),
        ];
        let timeline = build(&[("steady", steady)], 0);
        assert_eq!(timeline.iter().map(|s| s.second).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(timeline.iter().map(|s| s.accepted).collect::<Vec<_>>(), [2, 0, 0, 1]);
        assert_eq!(timeline.iter().map(|s| s.delivered).collect::<Vec<_>>(), [2, 1, 0, 1]);
        let second_0 = &timeline[0].latency["steady"];
        // Due in second 0: 5 ms and 700 ms (two significant digits); the message due before the origin is left out.
        assert!((4.9..=5.1).contains(&second_0.p50_ms), "{second_0:?}");
        assert!((690.0..=710.0).contains(&second_0.p99_ms), "{second_0:?}");
        assert!(timeline[1].latency.is_empty() && timeline[2].latency.is_empty());
        assert!(build(&[("steady", Vec::new())], 0).is_empty());
    }
}
