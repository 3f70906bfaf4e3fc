//! Fault injection: per simulated provider, a latency range, shares of error answers (retryable, permanent, rate
//! limited, unregistered) and report behaviour (delay, jitter, duplicates, drops), all drawn from seeded RNGs so
//! that a run can be repeated. Each provider has its own request stream and its own report stream behind one
//! short lock, so providers do not contend with each other, a provider's outcomes do not depend on traffic to the
//! others, and report decisions do not shift the request faults.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::FaultSettings;
use crate::domain::ProviderKind;

/// Longest latency or report delay the sandbox accepts (10 minutes): anything longer is a typo.
const MAX_DELAY_MS: u64 = 600_000;
/// Longest wait a rate-limit answer may ask for (one hour).
const MAX_RETRY_AFTER_S: u64 = 3600;

/// What the fault draw decided for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Handle the request normally.
    Pass,
    /// Answer the provider's retryable error (5xx, SMTP 451).
    Retryable,
    /// Answer the provider's permanent error (invalid argument, SMTP 550).
    Permanent,
    /// Answer the provider's rate-limit error (HTTP 429), asking for a wait of `retry_after_s`.
    RateLimited { retry_after_s: u64 },
    /// Answer the provider's "this token or recipient is dead" error.
    Unregistered,
}

tokio::task_local! {
    /// The verdict drawn for the HTTP request being served, with the provider's `retry_after_s`: the request layer
    /// (`journal.rs`) opens this slot around each provider request, logs what was drawn and sets `Retry-After`.
    /// Outside such a request (SMTP) there is no slot and nothing is noted.
    pub(crate) static DRAWN: Cell<Option<(Verdict, u64)>>;
}

/// When and how often one delivery report is posted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReportPlan {
    /// Never posted.
    Drop,
    /// Posted once after `first`, and a second time after `duplicate` when drawn.
    Post { first: Duration, duplicate: Option<Duration> },
}

struct Slot {
    settings: FaultSettings,
    rng: StdRng,
    /// Report decisions have their own stream, so posting a report does not change later request faults.
    report_rng: StdRng,
}

/// The fault settings and RNG of every simulated provider.
pub(crate) struct Faults {
    seed: u64,
    slots: [Mutex<Slot>; ProviderKind::ALL.len()],
}

/// Checks that rates are probabilities and delays are sane.
pub(crate) fn validate(settings: &FaultSettings) -> Result<(), String> {
    for (name, rate) in [
        ("error_rate", settings.error_rate),
        ("permanent_error_rate", settings.permanent_error_rate),
        ("rate_limit_rate", settings.rate_limit_rate),
        ("unregistered_rate", settings.unregistered_rate),
        ("report_duplicate_rate", settings.report_duplicate_rate),
        ("report_drop_rate", settings.report_drop_rate),
    ] {
        if !(0.0..=1.0).contains(&rate) {
            return Err(format!("{name} must be between 0 and 1"));
        }
    }
    if settings.latency_min_ms > settings.latency_max_ms {
        return Err("latency_min_ms must not exceed latency_max_ms".to_string());
    }
    let longest_report = settings.report_delay_ms.saturating_add(settings.report_jitter_ms);
    if settings.latency_max_ms > MAX_DELAY_MS || longest_report > MAX_DELAY_MS {
        return Err(format!("latencies and report delays (with jitter) must be at most {MAX_DELAY_MS} ms"));
    }
    if settings.retry_after_s > MAX_RETRY_AFTER_S {
        return Err(format!("retry_after_s must be at most {MAX_RETRY_AFTER_S}"));
    }
    Ok(())
}

/// Each provider's stream starts from the seed mixed with the provider (and the stream), so streams differ.
fn rng_for(seed: u64, kind: ProviderKind, stream: u64) -> StdRng {
    let mixed =
        (kind.index() as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
    StdRng::seed_from_u64(seed ^ mixed)
}

const REQUESTS: u64 = 0;
const REPORTS: u64 = 1;

impl Slot {
    fn new(seed: u64, kind: ProviderKind, settings: FaultSettings) -> Slot {
        Slot { settings, rng: rng_for(seed, kind, REQUESTS), report_rng: rng_for(seed, kind, REPORTS) }
    }
}

/// A uniform delay in `[base, base + jitter]` ms; draws nothing without jitter.
fn jittered(rng: &mut StdRng, base: u64, jitter: u64) -> Duration {
    let extra = if jitter > 0 { rng.random_range(0..=jitter) } else { 0 };
    Duration::from_millis(base + extra)
}

impl Faults {
    /// Faults from the settings file; providers not named behave perfectly.
    pub fn new(seed: u64, initial: &BTreeMap<ProviderKind, FaultSettings>) -> Result<Faults, String> {
        for (kind, settings) in initial {
            validate(settings).map_err(|e| format!("sandbox.faults.{}: {e}", kind.as_str()))?;
        }
        let slots = ProviderKind::ALL
            .map(|kind| Mutex::new(Slot::new(seed, kind, initial.get(&kind).cloned().unwrap_or_default())));
        Ok(Faults { seed, slots })
    }

    /// Replaces a provider's faults and restarts its random streams from the seed, so the same settings applied
    /// to the same request sequence give the same outcomes.
    pub fn set(&self, kind: ProviderKind, settings: FaultSettings) -> Result<(), String> {
        validate(&settings)?;
        *self.slots[kind.index()].lock() = Slot::new(self.seed, kind, settings);
        Ok(())
    }

    pub fn get(&self, kind: ProviderKind) -> FaultSettings {
        self.slots[kind.index()].lock().settings.clone()
    }

    /// Decides whether and when one delivery report of this provider is posted: dropped with
    /// `report_drop_rate`; else after `report_delay_ms` plus a uniform jitter, and with `report_duplicate_rate`
    /// once more after its own delay and jitter. Draws come from the provider's report stream, always in that
    /// order (drop roll, delay, duplicate roll, duplicate delay).
    pub fn report_plan(&self, kind: ProviderKind) -> ReportPlan {
        let mut slot = self.slots[kind.index()].lock();
        let Slot { settings, report_rng: rng, .. } = &mut *slot;
        let (base, jitter) = (settings.report_delay_ms, settings.report_jitter_ms);
        if settings.report_drop_rate == 0.0 && settings.report_duplicate_rate == 0.0 && jitter == 0 {
            return ReportPlan::Post { first: Duration::from_millis(base), duplicate: None };
        }
        if rng.random::<f64>() < settings.report_drop_rate {
            return ReportPlan::Drop;
        }
        let first = jittered(rng, base, jitter);
        let duplicate = (rng.random::<f64>() < settings.report_duplicate_rate).then(|| jittered(rng, base, jitter));
        ReportPlan::Post { first, duplicate }
    }

    /// Draws the latency and verdict of one request. The rates are shares of all requests taken from one uniform
    /// draw `r`, in this order: `error_rate` (retryable), `permanent_error_rate`, `rate_limit_rate`,
    /// `unregistered_rate`, each capped at what is left; the rest pass.
    pub fn draw(&self, kind: ProviderKind) -> (Duration, Verdict) {
        let mut slot = self.slots[kind.index()].lock();
        let Slot { settings, rng, .. } = &mut *slot;
        let shares = [
            (settings.error_rate, Verdict::Retryable),
            (settings.permanent_error_rate, Verdict::Permanent),
            (settings.rate_limit_rate, Verdict::RateLimited { retry_after_s: settings.retry_after_s }),
            (settings.unregistered_rate, Verdict::Unregistered),
        ];
        if settings.latency_max_ms == 0 && shares.iter().all(|(rate, _)| *rate == 0.0) {
            return (Duration::ZERO, Verdict::Pass);
        }
        let latency_ms = if settings.latency_max_ms > settings.latency_min_ms {
            rng.random_range(settings.latency_min_ms..=settings.latency_max_ms)
        } else {
            settings.latency_min_ms
        };
        let roll: f64 = rng.random();
        let mut bound = 0.0;
        let verdict = shares
            .into_iter()
            .find(|(rate, _)| {
                bound += rate;
                roll < bound
            })
            .map_or(Verdict::Pass, |(_, verdict)| verdict);
        (Duration::from_millis(latency_ms), verdict)
    }

    /// Sleeps the drawn latency, then returns the verdict (also noted for the request layer, see [`DRAWN`]).
    pub async fn apply(&self, kind: ProviderKind) -> Verdict {
        let (latency, verdict) = self.draw(kind);
        let retry_after_s = match verdict {
            Verdict::Pass | Verdict::Permanent | Verdict::Unregistered => 0,
            Verdict::RateLimited { retry_after_s } => retry_after_s,
            Verdict::Retryable => self.slots[kind.index()].lock().settings.retry_after_s,
        };
        // No slot outside an HTTP provider request (SMTP): nothing to note.
        let _ = DRAWN.try_with(|drawn| drawn.set(Some((verdict, retry_after_s))));
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        verdict
    }
}

/// FCM's answer to an injected rate limit: 429 `QUOTA_EXCEEDED` (the layer adds `Retry-After`). Built here so
/// that the FCM simulation only maps the verdict.
pub(crate) fn fcm_quota_exceeded() -> Response {
    let body = json!({"error": {
        "code": 429,
        "message": "Quota exceeded for quota metric 'Messages sent' of service 'fcm.googleapis.com'.",
        "status": "RESOURCE_EXHAUSTED",
        "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "QUOTA_EXCEEDED"}],
    }});
    (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response()
}

/// Sets `Retry-After` on the answer to a request whose draw asked for a wait: a rate limit always (unless the
/// provider answered with Bizppurio's `RateLimit-Reset` instead), a retryable error only where the provider's
/// answer already carries one (FCM's 503), which then says `retry_after_s` rather than its default.
pub(crate) fn set_retry_after(response: &mut Response, verdict: Verdict, retry_after_s: u64) {
    let headers = response.headers_mut();
    let wanted = match verdict {
        Verdict::RateLimited { .. } => !headers.contains_key("ratelimit-reset"),
        Verdict::Retryable => headers.contains_key(header::RETRY_AFTER),
        _ => false,
    };
    if wanted {
        headers.insert(header::RETRY_AFTER, retry_after_s.into());
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
            FaultSettings { rate_limit_rate: 1.01, ..Default::default() },
            FaultSettings { unregistered_rate: -1.0, ..Default::default() },
            FaultSettings { report_duplicate_rate: 2.0, ..Default::default() },
            FaultSettings { report_drop_rate: f64::NAN, ..Default::default() },
            FaultSettings { report_delay_ms: MAX_DELAY_MS, report_jitter_ms: 1, ..Default::default() },
            FaultSettings { retry_after_s: MAX_RETRY_AFTER_S + 1, ..Default::default() },
        ] {
            assert!(validate(&bad).is_err(), "{bad:?}");
        }
        let faults = Faults::new(1, &BTreeMap::new()).unwrap();
        assert!(faults.set(ProviderKind::Smtp, FaultSettings { error_rate: 2.0, ..Default::default() }).is_err());
    }

    #[test]
    fn new_fields_default_when_absent() {
        let old: FaultSettings = serde_json::from_str(r#"{"error_rate": 0.5}"#).unwrap();
        assert_eq!(old, FaultSettings { error_rate: 0.5, ..Default::default() });
        assert_eq!((old.retry_after_s, old.rate_limit_rate, old.report_jitter_ms), (1, 0.0, 0));
    }

    #[test]
    fn every_share_is_drawn_in_order_and_repeats() {
        let settings = FaultSettings {
            error_rate: 0.2,
            permanent_error_rate: 0.2,
            rate_limit_rate: 0.2,
            retry_after_s: 3,
            unregistered_rate: 0.2,
            ..Default::default()
        };
        let a = faults(5, ProviderKind::Fcm, settings.clone());
        let first = verdicts(&a, ProviderKind::Fcm, 500);
        assert_eq!(first, verdicts(&faults(5, ProviderKind::Fcm, settings), ProviderKind::Fcm, 500));
        for verdict in [
            Verdict::Pass,
            Verdict::Retryable,
            Verdict::Permanent,
            Verdict::RateLimited { retry_after_s: 3 },
            Verdict::Unregistered,
        ] {
            let n = first.iter().filter(|d| d.1 == verdict).count();
            assert!((50..=150).contains(&n), "{verdict:?} drawn {n} times of 500");
        }

        let storm = faults(5, ProviderKind::Apns, FaultSettings { rate_limit_rate: 1.0, ..Default::default() });
        assert!(
            verdicts(&storm, ProviderKind::Apns, 100).iter().all(|d| d.1 == Verdict::RateLimited { retry_after_s: 1 })
        );
        let dead = faults(5, ProviderKind::Apns, FaultSettings { unregistered_rate: 1.0, ..Default::default() });
        assert!(verdicts(&dead, ProviderKind::Apns, 100).iter().all(|d| d.1 == Verdict::Unregistered));
    }

    #[test]
    fn adding_later_shares_keeps_the_earlier_outcomes() {
        // The new shares come after the old ones in the draw, so a run with only the old rates is unchanged.
        let old = FaultSettings { error_rate: 0.3, permanent_error_rate: 0.2, ..Default::default() };
        let new = FaultSettings { rate_limit_rate: 0.1, unregistered_rate: 0.1, ..old.clone() };
        let old_run = verdicts(&faults(9, ProviderKind::Twilio, old), ProviderKind::Twilio, 300);
        let new_run = verdicts(&faults(9, ProviderKind::Twilio, new), ProviderKind::Twilio, 300);
        for (before, after) in old_run.iter().zip(&new_run) {
            if before.1 != Verdict::Pass {
                assert_eq!(before, after);
            }
        }
    }

    fn plans(faults: &Faults, kind: ProviderKind, n: usize) -> Vec<ReportPlan> {
        (0..n).map(|_| faults.report_plan(kind)).collect()
    }

    #[test]
    fn report_plans_follow_the_rates_and_repeat() {
        let plain = faults(3, ProviderKind::Twilio, FaultSettings { report_delay_ms: 7, ..Default::default() });
        let once = ReportPlan::Post { first: Duration::from_millis(7), duplicate: None };
        assert!(plans(&plain, ProviderKind::Twilio, 50).iter().all(|p| *p == once));

        let drop = faults(3, ProviderKind::Twilio, FaultSettings { report_drop_rate: 1.0, ..Default::default() });
        assert!(plans(&drop, ProviderKind::Twilio, 50).iter().all(|p| *p == ReportPlan::Drop));
        let twice = faults(3, ProviderKind::Twilio, FaultSettings { report_duplicate_rate: 1.0, ..Default::default() });
        assert!(
            plans(&twice, ProviderKind::Twilio, 50)
                .iter()
                .all(|p| matches!(p, ReportPlan::Post { duplicate: Some(_), .. }))
        );

        let chaos = FaultSettings {
            report_delay_ms: 10,
            report_jitter_ms: 100,
            report_duplicate_rate: 0.3,
            report_drop_rate: 0.2,
            ..Default::default()
        };
        let a = faults(11, ProviderKind::Bizppurio, chaos.clone());
        let first = plans(&a, ProviderKind::Bizppurio, 200);
        assert_eq!(first, plans(&faults(11, ProviderKind::Bizppurio, chaos.clone()), ProviderKind::Bizppurio, 200));
        let delays: Vec<Duration> = first
            .iter()
            .flat_map(|p| match p {
                ReportPlan::Drop => vec![],
                ReportPlan::Post { first, duplicate } => std::iter::once(*first).chain(*duplicate).collect(),
            })
            .collect();
        assert!(delays.iter().all(|d| (10..=110).contains(&d.as_millis())));
        assert!(delays.iter().any(|d| *d != delays[0]), "jitter varies the delays");
        assert!(first.contains(&ReportPlan::Drop));
        assert!(first.iter().any(|p| matches!(p, ReportPlan::Post { duplicate: Some(_), .. })));
        assert!(first.iter().any(|p| matches!(p, ReportPlan::Post { duplicate: None, .. })));
        a.set(ProviderKind::Bizppurio, chaos).unwrap();
        assert_eq!(first, plans(&a, ProviderKind::Bizppurio, 200), "set restarts the report stream");
    }

    #[test]
    fn report_decisions_do_not_shift_request_faults() {
        let settings = FaultSettings {
            error_rate: 0.5,
            report_jitter_ms: 50,
            report_drop_rate: 0.5,
            report_duplicate_rate: 0.5,
            ..Default::default()
        };
        let quiet = faults(21, ProviderKind::Twilio, settings.clone());
        let busy = faults(21, ProviderKind::Twilio, settings);
        let mut interleaved = Vec::new();
        for _ in 0..100 {
            interleaved.push(busy.draw(ProviderKind::Twilio));
            busy.report_plan(ProviderKind::Twilio);
        }
        assert_eq!(interleaved, verdicts(&quiet, ProviderKind::Twilio, 100));
    }

    #[test]
    fn retry_after_is_set_for_injected_waits_only() {
        let answer = |status: StatusCode, headers: &[(&'static str, &'static str)]| {
            let mut response = status.into_response();
            for (name, value) in headers {
                response.headers_mut().insert(*name, axum::http::HeaderValue::from_static(value));
            }
            response
        };
        let retry =
            |response: &Response| response.headers().get(header::RETRY_AFTER).map(|v| v.to_str().unwrap().to_string());

        let mut limited = answer(StatusCode::TOO_MANY_REQUESTS, &[]);
        set_retry_after(&mut limited, Verdict::RateLimited { retry_after_s: 4 }, 4);
        assert_eq!(retry(&limited).as_deref(), Some("4"));
        let mut bizppurio = answer(StatusCode::TOO_MANY_REQUESTS, &[("ratelimit-reset", "4")]);
        set_retry_after(&mut bizppurio, Verdict::RateLimited { retry_after_s: 4 }, 4);
        assert_eq!(retry(&bizppurio), None);
        let mut fcm_503 = answer(StatusCode::SERVICE_UNAVAILABLE, &[("retry-after", "1")]);
        set_retry_after(&mut fcm_503, Verdict::Retryable, 9);
        assert_eq!(retry(&fcm_503).as_deref(), Some("9"));
        let mut twilio_503 = answer(StatusCode::SERVICE_UNAVAILABLE, &[]);
        set_retry_after(&mut twilio_503, Verdict::Retryable, 9);
        assert_eq!(retry(&twilio_503), None);
        let mut passed = answer(StatusCode::OK, &[]);
        set_retry_after(&mut passed, Verdict::Pass, 9);
        assert_eq!(retry(&passed), None);
    }
}
