//! `rate_limit`: the dispatcher's per-provider token bucket, built exactly as `src/engine/dispatcher.rs` builds
//! it (governor's direct GCRA limiter from the provider's `DispatchLimits`), checked once per job it hands out.
//!
//! Herald has no per-user caps yet (SPEC §5 lists them; no code enforces them), so there is nothing per user
//! to measure.

use std::hint::black_box;
use std::num::NonZeroU32;

use criterion::{Criterion, Throughput};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use herald::config::DispatchLimits;
use herald::domain::ProviderKind;

/// Same construction as the dispatcher's `pre_start`.
fn provider_bucket(limits: &DispatchLimits) -> DefaultDirectRateLimiter {
    let rate = NonZeroU32::new(limits.rate_per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(limits.burst).unwrap_or(NonZeroU32::MIN);
    RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
}

pub fn rate_limit(c: &mut Criterion) {
    let settings = super::default_settings();
    let fcm = settings.providers.limits.get(&ProviderKind::Fcm).expect("config/default.toml has FCM limits").clone();
    let mut group = c.benchmark_group("rate_limit");
    group.throughput(Throughput::Elements(1));

    // A bucket that refills faster than the bench can take (1 token/ns), so every check takes a token.
    let roomy = provider_bucket(&DispatchLimits { rate_per_second: 1_000_000_000, burst: 1_000_000, ..fcm.clone() });
    assert!((0..10_000).all(|_| roomy.check().is_ok()), "the roomy bucket never runs dry");
    group.bench_function("provider_bucket/check_and_take", |b| b.iter(|| black_box(&roomy).check().is_ok()));

    // The shipped FCM limits, drained: each check is refused and, as in the dispatcher's pump, the wait until
    // the next token is computed for the wake-up timer.
    let drained = provider_bucket(&fcm);
    while drained.check().is_ok() {}
    let clock = DefaultClock::default();
    let wait = drained.check().expect_err("drained").wait_time_from(clock.now());
    assert!(wait.as_nanos() > 0 && wait.as_secs() < 1, "a refused check names a short wait: {wait:?}");
    group.bench_function("provider_bucket/refused_with_wait", |b| {
        b.iter(|| match black_box(&drained).check() {
            Ok(()) => None,
            Err(not_until) => Some(not_until.wait_time_from(clock.now())),
        })
    });
    group.finish();
}
