//! `midnight-spike` (seed 004: gifts scheduled for midnight, 30% of a day's volume in its first minute).
//! First pre-schedules `rate × duration` notifications as fast as Herald accepts them (`--concurrency` in
//! flight, each with an idempotency key, so a retried 429/503 never schedules twice), due over
//! [T0, T0 + duration] where the "midnight" T0 is `--lead-s` after scheduling began. At T0 live `high`
//! transactional traffic starts, open loop at `--live-rate`, for the same duration.
//!
//! Reports the scheduled notifications' delivered/s second by second and sustained (all of them over the
//! window, or until the last arrived if that is later), their lateness (arrival − due), and the live
//! traffic's end-to-end latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;

use super::{Outcome, await_accepted, drain, follow, sandbox_accepted, set_up};
use crate::ledger::OrderBy;
use crate::notify::{Answer, Ctx, Lanes, Notifications, post};
use crate::openloop::{self, Until, due_offset_us};
use crate::record::Routes;
use crate::rfc3339::format_unix_ms;
use crate::summary::Percentiles;

/// The default lead assumes Herald accepts scheduled notifications at least this fast: a third of what a
/// release build pre-schedules on two cores (27,000–30,000/s, `docs/performance.md`), so a slower machine still
/// makes it, while a spike of millions does not wait many minutes for its midnight.
const ASSUMED_ACCEPT_RATE: f64 = 10_000.0;
const BASE_LEAD_S: f64 = 20.0;
/// Tries per notification; only 429, 503 and transport errors are retried.
const MAX_ATTEMPTS: u32 = 5;
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

pub async fn run(ctx: Arc<Ctx>) -> Result<Outcome, String> {
    let (rate, duration) = (ctx.args.rate().expect("midnight-spike has a rate"), ctx.args.duration_s());
    set_up(&ctx, ctx.args.users()).await?;
    let gifts = Arc::new(Notifications::new(&ctx, "midnight", 'm', Lanes::Normal, OrderBy::Due));
    let live = Arc::new(Notifications::new(&ctx, "live", 'l', Lanes::High, OrderBy::Acceptance));
    let mut routes = Routes::new(&ctx.tag);
    gifts.route(&mut routes);
    live.route(&mut routes);
    let following = follow(&ctx, routes);

    let count = openloop::arrivals(rate, duration);
    let lead_s = ctx.args.lead_s.unwrap_or(BASE_LEAD_S + count as f64 / ASSUMED_ACCEPT_RATE);
    let scheduling_start = ctx.clock.now_us();
    let midnight = scheduling_start + (lead_s * 1e6) as i64;
    for n in 0..count {
        // send_at carries milliseconds: two due in the same millisecond are due together.
        gifts.plan(n, ctx.clock.floor_ms(midnight + due_offset_us(n, rate)));
    }
    ctx.progress.phase(format!(
        "pre-scheduling {count} notifications due from {} over {duration} s (midnight in {lead_s:.0} s)",
        format_unix_ms(ctx.clock.wall_ms(midnight))
    ));
    // Herald refuses a send_at less than scheduling.min_lead_s ahead; everything must be in before then.
    let cutoff = midnight - (ctx.args.min_lead_s * 1e6) as i64;
    let posted = pre_schedule(&ctx, &gifts, count, rate, midnight, cutoff).await;
    let scheduling_s = (ctx.clock.now_us() - scheduling_start) as f64 / 1e6;
    if posted < count {
        return Err(format!(
            "pre-scheduling reached the midnight: {posted} of {count} posted in {scheduling_s:.1} s, but all had to \
             be in {:.0} s after it began (--lead-s {lead_s:.0} minus Herald's minimum lead {} s). Raise --lead-s \
             (the default assumes {ASSUMED_ACCEPT_RATE} accepted/s) or lower --rate × --duration.",
            lead_s - ctx.args.min_lead_s,
            ctx.args.min_lead_s
        ));
    }
    let scheduled = gifts.ledgers[0].progress().1;
    ctx.progress.phase(format!(
        "{scheduled} of {count} scheduled in {scheduling_s:.1} s ({:.0}/s); waiting {:.1} s for midnight",
        scheduled as f64 / scheduling_s,
        (midnight - ctx.clock.now_us()) as f64 / 1e6
    ));
    // The record is read once the spike is in, not while it runs: following it live cost the sandbox (serving
    // pages) and this tool (parsing them) ~0.1 of the two cores, taken from what is measured.
    let base = sandbox_accepted(&ctx).await?;
    ctx.clock.sleep_until(midnight).await;
    following.pause();

    let live_rate = ctx.args.live_rate;
    ctx.progress.phase(format!("midnight: {count} due over {duration} s, live high traffic at {live_rate}/s"));
    let driven = if live_rate > 0.0 {
        let live_count = openloop::arrivals(live_rate, duration);
        let never = AtomicBool::new(false);
        let max_outstanding = ctx.args.max_outstanding;
        openloop::drive(
            &ctx.clock,
            live.clone(),
            live_rate,
            midnight,
            Until::Count(live_count),
            max_outstanding,
            &never,
        )
        .await
    } else {
        openloop::Driven::default()
    };
    let ledgers: Vec<_> = live.ledgers.iter().chain(&gifts.ledgers).cloned().collect();
    let expected = ledgers.iter().map(|l| l.progress().1).sum();
    ctx.progress.phase(format!("waiting for {expected} accepted messages at the sandbox"));
    let counted = await_accepted(&ctx, base, expected).await;
    following.resume();
    drain(&ctx, &ledgers).await;
    let read_error = following.stop(&ctx).await;

    // The headline latency is the live traffic's, when there is any.
    let reported = if live_rate > 0.0 { &ledgers[..] } else { &gifts.ledgers[..] };
    let mut outcome = Outcome::of(reported, scheduling_start);
    let gift = &gifts.ledgers[0];
    let verdict = gift.verdict();
    let window_s = verdict.last_arrival_us.map_or(duration, |last| ((last - midnight) as f64 / 1e6).max(duration));
    outcome.accepted_per_s = Some(verdict.accepted as f64 / scheduling_s);
    outcome.delivered_per_s =
        verdict.last_arrival_us.map(|last| verdict.delivered as f64 / ((last - midnight).max(1000) as f64 / 1e6));
    outcome.sustained = Some(verdict.delivered as f64 / window_s);
    outcome.lateness = Some(verdict.e2e_latency.clone());
    let per_second = per_second_from(&gift.times(), midnight);
    outcome.details = json!({
        "due": count,
        "due_rate": rate,
        "window_s": duration,
        "lead_s": lead_s,
        "midnight": format_unix_ms(ctx.clock.wall_ms(midnight)),
        "scheduling": {"posted": posted, "accepted": verdict.accepted, "seconds": scheduling_s,
                       "accepted_per_s": verdict.accepted as f64 / scheduling_s},
        "delivered_per_second_from_midnight": per_second,
        "peak_delivered_per_s": per_second.iter().max(),
        "sustained_window_s": window_s,
        "lateness_ms": Percentiles::of(&verdict.e2e_latency),
        "live": {"rate": live_rate, "issued": driven.issued, "skipped": driven.skipped},
    });
    outcome.warnings.extend(read_error);
    outcome.warnings.extend(counted.err());
    Ok(outcome)
}

/// Posts every planned notification in due order with `--concurrency` workers, until all are posted or the
/// cutoff passes; returns how many were posted.
async fn pre_schedule(
    ctx: &Arc<Ctx>,
    gifts: &Arc<Notifications>,
    count: u64,
    rate: f64,
    midnight: i64,
    cutoff: i64,
) -> u64 {
    let next = Arc::new(AtomicU64::new(0));
    let posted = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..ctx.args.concurrency {
        let (ctx, gifts, next, posted) = (ctx.clone(), gifts.clone(), next.clone(), posted.clone());
        workers.push(tokio::spawn(async move {
            let url = ctx.url("/v1/notifications");
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count || ctx.clock.now_us() >= cutoff {
                    return;
                }
                let due = midnight + due_offset_us(n, rate);
                let body = gifts.request(n, Some(ctx.clock.wall_ms(due)));
                gifts.sent(n);
                let answer = post_with_retries(&ctx, &url, &body, cutoff).await;
                gifts.answered(n, &answer, ctx.clock.now_us());
                posted.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for worker in workers {
        worker.await.expect("a scheduling task panicked");
    }
    posted.load(Ordering::Relaxed)
}

/// The final answer to one notification; 429, 503 and transport errors are retried (after `Retry-After`, at
/// most 5 s) while the cutoff allows.
async fn post_with_retries(ctx: &Ctx, url: &str, body: &serde_json::Value, cutoff: i64) -> Answer {
    let mut attempt = 1;
    loop {
        let answer = post(&ctx.http, reqwest::Method::POST, url, body).await;
        let retryable = answer.status.is_none_or(|s| s == 429 || s == 503);
        let wait = answer.retry_after.unwrap_or(Duration::from_secs(1)).min(MAX_RETRY_AFTER);
        let resume = ctx.clock.now_us() + wait.as_micros() as i64;
        if !retryable || attempt >= MAX_ATTEMPTS || resume >= cutoff {
            return answer;
        }
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

/// First arrivals per second from `from_us` (second 0 starts there); earlier arrivals are left out.
fn per_second_from(times: &[(i64, Option<i64>, Option<i64>)], from_us: i64) -> Vec<u64> {
    let mut seconds: Vec<u64> = Vec::new();
    for &(_, _, arrived) in times {
        let Some(at) = arrived.filter(|&at| at >= from_us) else { continue };
        let second = ((at - from_us) / 1_000_000) as usize;
        if seconds.len() <= second {
            seconds.resize(second + 1, 0);
        }
        seconds[second] += 1;
    }
    seconds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_are_counted_per_second_from_midnight() {
        let times = vec![
            (0, Some(0), Some(1_000_000)),
            (0, Some(0), Some(1_999_999)),
            (0, Some(0), Some(3_000_000)),
            (0, Some(0), None),
            (0, Some(0), Some(999_999)),
        ];
        assert_eq!(per_second_from(&times, 1_000_000), [2, 0, 1]);
        assert!(per_second_from(&[], 0).is_empty());
    }
}
