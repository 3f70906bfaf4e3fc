//! `campaign`: creates `--users` users, starts one campaign to all of them (`POST /v1/campaigns`, category
//! `promotion`, at `--rate` per second if given) and runs live `high` transactional traffic open loop at
//! `--live-rate` until the campaign's messages have all arrived. Reports the campaign's delivered/s and the
//! live lane's end-to-end latency: the isolation figure (issue #6: p99 < 50 ms while a 200k blast runs).
//!
//! The campaign API is coded against its announced shape: `202 {id}`, then `GET /v1/campaigns/{id}` →
//! `{status, progress: {processed, total}, counts: {accepted, skipped, completed, failed, cancelled}}`.
//! Every campaign message has the same body, so the recipient is read from the address it went to. The audience
//! is all users: on a Herald with other users (--herald), their messages are ignored, and Herald's skipped,
//! failed and cancelled counts excuse missing messages without saying which: exact on a fresh (spawned) Herald.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Outcome, drain, follow, set_up};
use crate::ledger::{Arrived, Ledger, OrderBy, State};
use crate::notify::{Ctx, Lanes, Notifications, TEMPLATE, post};
use crate::openloop::{self, Until};
use crate::record::{Arrival, Routes, Sink};
use crate::summary::Percentiles;
use crate::users;

/// The isolation target of issue #6: the high lane's p99 while a blast runs.
const HIGH_P99_TARGET_MS: f64 = 50.0;
const POLL_EVERY: Duration = Duration::from_millis(500);
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// After the campaign is final, how long without a new campaign arrival before the live traffic stops.
const QUIET_AFTER_FINAL: Duration = Duration::from_secs(5);

/// Campaign arrivals, keyed by the recipient's user number read from the address.
struct CampaignSink {
    ledger: Arc<Ledger>,
    channel: String,
    users: usize,
}

impl Sink for CampaignSink {
    fn arrive(&self, arrival: &Arrival<'_>) -> Arrived {
        match user_of_address(&self.channel, arrival.to) {
            Some(n) if n < self.users => self.ledger.arrive(n as u64, arrival.seq, arrival.at_us),
            // Another user of the same Herald: not this run's audience.
            _ => Arrived::Stray,
        }
    }
}

/// The user number of an address this tool gave user n on `channel`.
fn user_of_address(channel: &str, to: &str) -> Option<usize> {
    match channel {
        "push" => users::user_of_token(to),
        "email" => to.strip_prefix("lt-")?.strip_suffix("@example.com")?.parse().ok(),
        _ => {
            let digits = to.strip_prefix("+8210").or_else(|| to.strip_prefix("010"))?;
            (digits.len() == 8).then(|| digits.parse().ok()).flatten()
        }
    }
}

/// Whether a campaign status is final.
fn is_final(status: &str) -> bool {
    matches!(status, "completed" | "cancelled" | "canceled" | "failed" | "done" | "finished")
}

pub async fn run(ctx: Arc<Ctx>) -> Result<Outcome, String> {
    let users = ctx.args.users();
    // Before creating 200,000 users: an empty campaign is refused as invalid where the API exists.
    let probe = post(&ctx.http, reqwest::Method::POST, &ctx.url("/v1/campaigns"), &json!({})).await;
    if matches!(probe.status, Some(404 | 405) | None) {
        return Err(format!("this Herald has no POST /v1/campaigns ({})", probe.describe()));
    }
    set_up(&ctx, users).await?;
    let channels = ctx.args.channels();
    let ledgers: Vec<Arc<Ledger>> = channels
        .iter()
        .map(|c| {
            let name = if channels.len() == 1 { "campaign".to_string() } else { format!("campaign/{c}") };
            Arc::new(Ledger::new(name, OrderBy::None))
        })
        .collect();
    let live = Arc::new(Notifications::new(&ctx, "live", 'l', Lanes::High, OrderBy::Acceptance));
    let mut routes = Routes::new(&ctx.tag);
    for (channel, ledger) in channels.iter().zip(&ledgers) {
        let sink = CampaignSink { ledger: ledger.clone(), channel: channel.clone(), users };
        routes.add('c', channel, Arc::new(sink));
    }
    live.route(&mut routes);
    let following = follow(&ctx, routes);

    let mut body = json!({
        "template": {"id": TEMPLATE, "params": {"b": ctx.body('c', 0)}},
        "channels": channels,
        "category": "promotion",
        "audience": {"all_users": true},
    });
    if let Some(rate) = ctx.args.rate() {
        body["rate_per_second"] = json!(rate_per_second(rate));
    }
    ctx.progress.phase(format!("campaign to {users} users, live high traffic at {}/s", ctx.args.live_rate));
    let posted_at = ctx.clock.now_us();
    let answer = post(&ctx.http, reqwest::Method::POST, &ctx.url("/v1/campaigns"), &body).await;
    let id = match (answer.status, answer.body["id"].as_str()) {
        (Some(202), Some(id)) => id.to_string(),
        (Some(404 | 405), _) => {
            return Err(format!("this Herald has no POST /v1/campaigns ({})", answer.describe()));
        }
        _ => return Err(format!("POST /v1/campaigns: {}", answer.describe())),
    };
    let answered_at = ctx.clock.now_us();
    for ledger in &ledgers {
        for n in 0..users {
            let index = ledger.plan(n as u32, 3, posted_at);
            ledger.sent(index, posted_at);
            ledger.answered(index, State::Accepted, answered_at);
        }
    }

    let stop_live = Arc::new(AtomicBool::new(false));
    let live_task = (ctx.args.live_rate > 0.0).then(|| {
        let (ctx, live, stop) = (ctx.clone(), live.clone(), stop_live.clone());
        tokio::spawn(async move {
            let start = ctx.clock.now_us();
            let (rate, max) = (ctx.args.live_rate, ctx.args.max_outstanding);
            openloop::drive(&ctx.clock, live, rate, start, Until::Stopped, max, &stop).await
        })
    });
    let watched = watch(&ctx, &id, &ledgers[0]).await;
    stop_live.store(true, std::sync::atomic::Ordering::Release);
    let driven = match live_task {
        Some(task) => task.await.map_err(|e| format!("the live traffic failed: {e}"))?,
        None => openloop::Driven::default(),
    };
    let all: Vec<Arc<Ledger>> = live.ledgers.iter().chain(&ledgers).cloned().collect();
    drain(&ctx, &all).await;
    let last = get_campaign(&ctx, &id).await.unwrap_or(watched.last.clone());
    let counts = &last["counts"];
    let not_deliverable: u64 = ["skipped", "failed", "cancelled"].iter().filter_map(|k| counts[k].as_u64()).sum();
    for ledger in &ledgers {
        ledger.excuse_missing(not_deliverable);
    }
    let read_error = following.stop(&ctx).await;

    let reported = if ctx.args.live_rate > 0.0 { &all[..] } else { &ledgers[..] };
    let mut outcome = Outcome::of(reported, posted_at);
    let verdict = ledgers[0].verdict();
    let delivered_per_s = crate::ledger::per_second(verdict.delivered, posted_at, verdict.last_arrival_us.unwrap_or(0));
    outcome.delivered_per_s = delivered_per_s;
    outcome.accepted_per_s = watched.fanned_out_s.map(|s| users as f64 / s);
    let high = outcome.verdict(&live.ledgers[0].name).and_then(|v| Percentiles::of(&v.e2e_latency));
    let met = high.as_ref().map(|p| p.p99_ms < HIGH_P99_TARGET_MS);
    if met == Some(false) {
        outcome.warnings.push(format!(
            "live high p99 {:.1} ms while the campaign ran: the isolation target is < {HIGH_P99_TARGET_MS} ms",
            high.as_ref().map_or(0.0, |p| p.p99_ms)
        ));
    }
    if !watched.finished {
        outcome.problems.push(format!(
            "the campaign was not final after --duration {} s (last status {})",
            ctx.args.duration_s(),
            last["status"]
        ));
    }
    outcome.details = json!({
        "campaign": {"id": id, "users": users, "status": last["status"], "progress": last["progress"],
                     "counts": last["counts"], "fanned_out_s": watched.fanned_out_s,
                     "delivered": verdict.delivered, "delivered_per_s": delivered_per_s,
                     "rate_per_second": ctx.args.rate()},
        "live": {"rate": ctx.args.live_rate, "issued": driven.issued, "skipped": driven.skipped},
        "isolation": {"high_e2e_ms": high, "target_p99_ms": HIGH_P99_TARGET_MS, "met": met},
    });
    outcome.warnings.extend(read_error);
    Ok(outcome)
}

/// What watching the campaign saw.
struct Watched {
    /// The last answer of `GET /v1/campaigns/{id}`.
    last: Value,
    /// Seconds from the POST until every recipient was processed (to the next poll, half a second).
    fanned_out_s: Option<f64>,
    finished: bool,
}

/// Polls the campaign until it is final and its messages stopped arriving, or `--duration` passed.
async fn watch(ctx: &Ctx, id: &str, ledger: &Ledger) -> Watched {
    let started = Instant::now();
    let limit = Duration::from_secs_f64(ctx.args.duration_s());
    let mut watched = Watched { last: Value::Null, fanned_out_s: None, finished: false };
    let (mut last_line, mut quiet_since, mut last_arrived) = (Instant::now(), Instant::now(), 0);
    loop {
        tokio::time::sleep(POLL_EVERY).await;
        if let Some(campaign) = get_campaign(ctx, id).await {
            watched.last = campaign;
        }
        let campaign = &watched.last;
        // `total` is null while an all-users audience is still being counted.
        let (processed, total) = (campaign["progress"]["processed"].as_u64(), campaign["progress"]["total"].as_u64());
        let status = campaign["status"].as_str().unwrap_or("?");
        let fanned_out = is_final(status) || total.is_some_and(|total| processed >= Some(total));
        if watched.fanned_out_s.is_none() && fanned_out {
            watched.fanned_out_s = Some(started.elapsed().as_secs_f64());
        }
        let (_, _, arrived) = ledger.progress();
        if arrived != last_arrived {
            (last_arrived, quiet_since) = (arrived, Instant::now());
        }
        if last_line.elapsed() >= PROGRESS_EVERY {
            last_line = Instant::now();
            let total = total.map_or("?".to_string(), |t| t.to_string());
            let progress = format!("{}/{total}", processed.unwrap_or(0));
            ctx.progress.line(&format!("   campaign {status}: processed {progress}, {arrived} arrived"));
        }
        if is_final(status) && (ledger.complete() || quiet_since.elapsed() >= QUIET_AFTER_FINAL) {
            watched.finished = true;
            return watched;
        }
        if started.elapsed() >= limit {
            return watched;
        }
    }
}

async fn get_campaign(ctx: &Ctx, id: &str) -> Option<Value> {
    let response = ctx.http.get(ctx.url(&format!("/v1/campaigns/{id}"))).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

/// `--rate` as the campaign's `rate_per_second`, which Herald takes as a whole number: rounded up, at least 1.
fn rate_per_second(rate: f64) -> u64 {
    rate.ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_campaign_rate_is_sent_as_a_whole_number() {
        assert_eq!(json!(rate_per_second(6000.0)), json!(6000));
        assert_eq!((rate_per_second(2.5), rate_per_second(0.1)), (3, 1));
    }

    #[test]
    fn recipients_are_read_from_their_addresses() {
        assert_eq!(user_of_address("push", "lt-token-42"), Some(42));
        assert_eq!(user_of_address("email", "lt-42@example.com"), Some(42));
        assert_eq!(user_of_address("sms", &users::phone(42)), Some(42));
        assert_eq!(user_of_address("alimtalk", "01000000042"), Some(42));
        assert_eq!(user_of_address("push", "someone-else"), None);
        assert_eq!(user_of_address("sms", "+8210123"), None);
    }

    #[test]
    fn arrivals_of_other_users_are_not_this_runs() {
        let ledger = Arc::new(Ledger::new("campaign", OrderBy::None));
        ledger.plan(0, 3, 0);
        let sink = CampaignSink { ledger: ledger.clone(), channel: "push".into(), users: 1 };
        let arrival = |to| Arrival { seq: 1, to, rest: "0", reference: None, at_us: 5 };
        assert_eq!(sink.arrive(&arrival("lt-token-0")), Arrived::First);
        assert_eq!(sink.arrive(&arrival("lt-token-7")), Arrived::Stray);
        assert_eq!(ledger.verdict().unexpected, 0, "another user's message is not held against the run");
        assert!(is_final("completed") && !is_final("running"));
    }
}
