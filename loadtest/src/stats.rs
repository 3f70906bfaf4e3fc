//! Exact percentiles over every sample (the whole sorted list, so no histogram bucketing error): a run's samples
//! fit in memory, and the tail is what the benchmark is about.

/// The distribution of a set of samples, in the samples' unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Distribution {
    pub count: usize,
    pub min: i64,
    pub p50: i64,
    pub p90: i64,
    pub p99: i64,
    pub max: i64,
}

impl Distribution {
    /// The distribution of `samples` (reordered in place), or `None` when there are none.
    pub fn of(samples: &mut [i64]) -> Option<Self> {
        samples.sort_unstable();
        Some(Self {
            count: samples.len(),
            min: *samples.first()?,
            p50: percentile(samples, 50.0)?,
            p90: percentile(samples, 90.0)?,
            p99: percentile(samples, 99.0)?,
            max: *samples.last()?,
        })
    }
}

/// The nearest-rank percentile of ascending `sorted`: the smallest sample that at least `p` % of the samples are
/// less than or equal to. `None` for no samples.
pub fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    debug_assert!(sorted.is_sorted(), "percentile wants sorted samples");
    debug_assert!((0.0..=100.0).contains(&p), "percentile {p} out of 0..=100");
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_on_one_to_a_hundred() {
        let samples: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&samples, 0.0), Some(1));
        assert_eq!(percentile(&samples, 50.0), Some(50));
        assert_eq!(percentile(&samples, 90.0), Some(90));
        assert_eq!(percentile(&samples, 99.0), Some(99));
        assert_eq!(percentile(&samples, 99.5), Some(100));
        assert_eq!(percentile(&samples, 100.0), Some(100));
    }

    #[test]
    fn small_sets_round_up_to_a_sample() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7], 99.0), Some(7));
        // Three samples: p50 is the second (rank ceil(1.5) = 2), p99 the third.
        assert_eq!(percentile(&[1, 2, 3], 50.0), Some(2));
        assert_eq!(percentile(&[1, 2, 3], 99.0), Some(3));
    }

    #[test]
    fn one_slow_sample_in_a_hundred_is_not_p99_but_is_max() {
        let mut samples = vec![10; 99];
        samples.push(5_000);
        samples.reverse();
        let distribution = Distribution::of(&mut samples).unwrap();
        assert_eq!(distribution, Distribution { count: 100, min: 10, p50: 10, p90: 10, p99: 10, max: 5_000 });
        samples.push(4_000);
        assert_eq!(Distribution::of(&mut samples).unwrap().p99, 4_000);
    }

    #[test]
    fn negative_samples_sort_first() {
        let distribution = Distribution::of(&mut [3, -2, 1]).unwrap();
        assert_eq!((distribution.min, distribution.p50, distribution.max), (-2, 1, 3));
        assert_eq!(Distribution::of(&mut []), None);
    }
}
