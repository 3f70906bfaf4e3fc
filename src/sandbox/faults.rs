//! Fault injection: per simulated provider, a latency range and error shares drawn from a seeded RNG so that a
//! run can be repeated. Each provider has its own RNG stream behind its own short lock, so providers do not
//! contend with each other and a provider's outcomes do not depend on traffic to the others.

use std::collections::BTreeMap;
use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::FaultSettings;
use crate::domain::ProviderKind;

/// Longest latency or report delay the sandbox accepts (10 minutes): anything longer is a typo.
const MAX_DELAY_MS: u64 = 600_000;

/// What the fault draw decided for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Handle the request normally.
    Pass,
    /// Answer the provider's retryable error (5xx, SMTP 451).
    Retryable,
    /// Answer the provider's permanent error (invalid argument, SMTP 550).
    Permanent,
}

struct Slot {
    settings: FaultSettings,
    rng: StdRng,
}

/// The fault settings and RNG of every simulated provider.
pub(crate) struct Faults {
    seed: u64,
    slots: [Mutex<Slot>; ProviderKind::ALL.len()],
}

/// Checks that rates are probabilities and delays are sane.
pub(crate) fn validate(settings: &FaultSettings) -> Result<(), String> {
    for (name, rate) in [("error_rate", settings.error_rate), ("permanent_error_rate", settings.permanent_error_rate)] {
        if !(0.0..=1.0).contains(&rate) {
            return Err(format!("{name} must be between 0 and 1"));
        }
    }
    if settings.latency_min_ms > settings.latency_max_ms {
        return Err("latency_min_ms must not exceed latency_max_ms".to_string());
    }
    if settings.latency_max_ms > MAX_DELAY_MS || settings.report_delay_ms > MAX_DELAY_MS {
        return Err(format!("latencies and report delays must be at most {MAX_DELAY_MS} ms"));
    }
    Ok(())
}

/// Each provider's stream starts from the seed mixed with the provider, so streams differ between providers.
fn rng_for(seed: u64, kind: ProviderKind) -> StdRng {
    StdRng::seed_from_u64(seed ^ (kind.index() as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

impl Faults {
    /// Faults from the settings file; providers not named behave perfectly.
    pub fn new(seed: u64, initial: &BTreeMap<ProviderKind, FaultSettings>) -> Result<Faults, String> {
        for (kind, settings) in initial {
            validate(settings).map_err(|e| format!("sandbox.faults.{}: {e}", kind.as_str()))?;
        }
        let slots = ProviderKind::ALL.map(|kind| {
            Mutex::new(Slot { settings: initial.get(&kind).cloned().unwrap_or_default(), rng: rng_for(seed, kind) })
        });
        Ok(Faults { seed, slots })
    }

    /// Replaces a provider's faults and restarts its random stream from the seed, so the same settings applied
    /// to the same request sequence give the same outcomes.
    pub fn set(&self, kind: ProviderKind, settings: FaultSettings) -> Result<(), String> {
        validate(&settings)?;
        let mut slot = self.slots[kind.index()].lock();
        slot.settings = settings;
        slot.rng = rng_for(self.seed, kind);
        Ok(())
    }

    pub fn get(&self, kind: ProviderKind) -> FaultSettings {
        self.slots[kind.index()].lock().settings.clone()
    }

    /// Delay before a delivery report or status callback of this provider.
    pub fn report_delay(&self, kind: ProviderKind) -> Duration {
        Duration::from_millis(self.slots[kind.index()].lock().settings.report_delay_ms)
    }

    /// Draws the latency and verdict of one request. `error_rate` and `permanent_error_rate` are shares of all
    /// requests taken from one uniform draw: below `error_rate` is retryable, the next `permanent_error_rate`
    /// is permanent (capped at what is left).
    pub fn draw(&self, kind: ProviderKind) -> (Duration, Verdict) {
        let mut slot = self.slots[kind.index()].lock();
        let Slot { settings, rng } = &mut *slot;
        if settings.latency_max_ms == 0 && settings.error_rate == 0.0 && settings.permanent_error_rate == 0.0 {
            return (Duration::ZERO, Verdict::Pass);
        }
        let latency_ms = if settings.latency_max_ms > settings.latency_min_ms {
            rng.random_range(settings.latency_min_ms..=settings.latency_max_ms)
        } else {
            settings.latency_min_ms
        };
        let roll: f64 = rng.random();
        let verdict = if roll < settings.error_rate {
            Verdict::Retryable
        } else if roll < settings.error_rate + settings.permanent_error_rate {
            Verdict::Permanent
        } else {
            Verdict::Pass
        };
        (Duration::from_millis(latency_ms), verdict)
    }

    /// Sleeps the drawn latency, then returns the verdict.
    pub async fn apply(&self, kind: ProviderKind) -> Verdict {
        let (latency, verdict) = self.draw(kind);
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults(seed: u64, kind: ProviderKind, settings: FaultSettings) -> Faults {
        Faults::new(seed, &BTreeMap::from([(kind, settings)])).unwrap()
    }

    fn verdicts(faults: &Faults, kind: ProviderKind, n: usize) -> Vec<(Duration, Verdict)> {
        (0..n).map(|_| faults.draw(kind)).collect()
    }

    #[test]
    fn default_settings_always_pass_without_latency() {
        let faults = Faults::new(7, &BTreeMap::new()).unwrap();
        assert!(verdicts(&faults, ProviderKind::Fcm, 100).iter().all(|d| *d == (Duration::ZERO, Verdict::Pass)));
    }

    #[test]
    fn full_rates_are_certain() {
        let retry = faults(1, ProviderKind::Apns, FaultSettings { error_rate: 1.0, ..Default::default() });
        assert!(verdicts(&retry, ProviderKind::Apns, 200).iter().all(|d| d.1 == Verdict::Retryable));
        let permanent =
            faults(1, ProviderKind::Apns, FaultSettings { permanent_error_rate: 1.0, ..Default::default() });
        assert!(verdicts(&permanent, ProviderKind::Apns, 200).iter().all(|d| d.1 == Verdict::Permanent));
    }

    #[test]
    fn same_seed_repeats_and_set_restarts_the_stream() {
        let settings = FaultSettings {
            latency_min_ms: 1,
            latency_max_ms: 9,
            error_rate: 0.3,
            permanent_error_rate: 0.2,
            ..Default::default()
        };
        let a = faults(42, ProviderKind::Twilio, settings.clone());
        let b = faults(42, ProviderKind::Twilio, settings.clone());
        let first = verdicts(&a, ProviderKind::Twilio, 300);
        assert_eq!(first, verdicts(&b, ProviderKind::Twilio, 300));
        assert!(first.iter().any(|d| d.1 == Verdict::Pass));
        assert!(first.iter().any(|d| d.1 == Verdict::Retryable));
        assert!(first.iter().any(|d| d.1 == Verdict::Permanent));
        assert!(first.iter().all(|d| (1..=9).contains(&d.0.as_millis())));

        a.set(ProviderKind::Twilio, settings).unwrap();
        assert_eq!(first, verdicts(&a, ProviderKind::Twilio, 300));
        let other_seed = faults(43, ProviderKind::Twilio, a.get(ProviderKind::Twilio));
        assert_ne!(first, verdicts(&other_seed, ProviderKind::Twilio, 300));
    }

    #[test]
    fn bad_settings_are_refused() {
        for bad in [
            FaultSettings { error_rate: 1.5, ..Default::default() },
            FaultSettings { permanent_error_rate: -0.1, ..Default::default() },
            FaultSettings { error_rate: f64::NAN, ..Default::default() },
            FaultSettings { latency_min_ms: 5, latency_max_ms: 1, ..Default::default() },
            FaultSettings { report_delay_ms: MAX_DELAY_MS + 1, ..Default::default() },
        ] {
            assert!(validate(&bad).is_err(), "{bad:?}");
        }
        let faults = Faults::new(1, &BTreeMap::new()).unwrap();
        assert!(faults.set(ProviderKind::Smtp, FaultSettings { error_rate: 2.0, ..Default::default() }).is_err());
    }
}
