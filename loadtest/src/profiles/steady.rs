//! `steady`: immediate notifications, half `high` and half `normal`, open loop at `--rate` for `--duration`.
//! Each user's messages of one priority must reach the sandbox in acceptance order.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde_json::json;

use super::{Outcome, drain, follow, set_up};
use crate::ledger::OrderBy;
use crate::notify::{Ctx, Lanes, Notifications};
use crate::openloop::{self, Until};
use crate::record::Routes;

/// The open-loop start is this far after the setup, so the first arrivals are not already late.
pub const START_DELAY_US: i64 = 100_000;

pub async fn run(ctx: Arc<Ctx>) -> Result<Outcome, String> {
    let (rate, duration) = (ctx.args.rate().expect("steady has a rate"), ctx.args.duration_s());
    set_up(&ctx, ctx.args.users()).await?;
    let stream = Arc::new(Notifications::new(&ctx, "steady", 's', Lanes::HighAndNormal, OrderBy::Acceptance));
    let mut routes = Routes::new(&ctx.tag);
    stream.route(&mut routes);
    let following = follow(&ctx, routes);

    let count = openloop::arrivals(rate, duration);
    ctx.progress.phase(format!("steady: {count} notifications at {rate}/s, open loop"));
    let start_us = ctx.clock.now_us() + START_DELAY_US;
    let never = AtomicBool::new(false);
    let driven = openloop::drive(
        &ctx.clock,
        stream.clone(),
        rate,
        start_us,
        Until::Count(count),
        ctx.args.max_outstanding,
        &never,
    )
    .await;
    drain(&ctx, &stream.ledgers).await;
    let read_error = following.stop(&ctx).await;

    let mut outcome = Outcome::of(&stream.ledgers, start_us);
    outcome.details = json!({"rate": rate, "duration_s": duration, "issued": driven.issued, "skipped": driven.skipped});
    outcome.warnings.extend(read_error);
    Ok(outcome)
}
