//! The four profiles of SPEC §8 and what they share: setting up the recipients and the template, following
//! the sandbox's record while traffic runs, waiting for the stragglers, and the outcome a profile hands back.
//!
//! Stream letters in message bodies: `s` steady, `m` midnight (scheduled), `l` live, `c` campaign,
//! `q` sequence steps (`r` is the raw measurement, which no profile routes).

pub mod campaign;
pub mod sequences;
pub mod spike;
pub mod steady;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::Value;

use crate::ledger::{Ledger, Verdict};
use crate::notify::{Ctx, put_template};
use crate::record::{Follower, Routes, get_json};
use crate::timeline::Times;
use crate::users::{self, Needs};

/// What a profile measured.
pub struct Outcome {
    /// Every stream's verdict and times, by stream name.
    pub streams: Vec<(String, Verdict, Times)>,
    /// The stream whose latencies are the headline ones.
    pub headline: String,
    /// Where the timeline starts.
    pub origin_us: i64,
    pub accepted_per_s: Option<f64>,
    pub delivered_per_s: Option<f64>,
    pub sustained: Option<f64>,
    pub lateness: Option<Histogram<u64>>,
    pub details: Value,
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

impl Outcome {
    /// The verdicts of `ledgers`, with the rates of the first one as the headline.
    pub fn of(ledgers: &[Arc<Ledger>], origin_us: i64) -> Outcome {
        let streams: Vec<(String, Verdict, Times)> =
            ledgers.iter().map(|l| (l.name.clone(), l.verdict(), l.times())).collect();
        let (headline, accepted_per_s, delivered_per_s) = streams
            .first()
            .map(|(name, v, _)| (name.clone(), v.accepted_per_s(), v.delivered_per_s()))
            .unwrap_or_default();
        Outcome {
            streams,
            headline,
            origin_us,
            accepted_per_s,
            delivered_per_s,
            sustained: None,
            lateness: None,
            details: Value::Null,
            problems: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub fn verdict(&self, name: &str) -> Option<&Verdict> {
        self.streams.iter().find(|(n, ..)| n == name).map(|(_, v, _)| v)
    }
}

/// Creates the users the run's channels need and the body template.
pub async fn set_up(ctx: &Arc<Ctx>, users: usize) -> Result<(), String> {
    put_template(ctx).await?;
    ctx.progress.phase(format!("creating {users} users"));
    let started = Instant::now();
    users::create(ctx, users, Needs::of(&ctx.args.channels())).await?;
    let seconds = started.elapsed().as_secs_f64();
    ctx.progress.line(&format!("   {users} users in {seconds:.1} s ({:.0}/s)", users as f64 / seconds));
    Ok(())
}

/// The record follower running in the background.
pub struct Following {
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Option<String>>,
}

/// Starts following the sandbox's record with `routes`.
pub fn follow(ctx: &Arc<Ctx>, routes: Routes) -> Following {
    let follower =
        Follower::new(ctx.http.clone(), &ctx.sandbox, !ctx.args.keep_record, routes, ctx.clock, ctx.counters.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let paused = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(follower.run(stop.clone(), paused.clone()));
    Following { stop, paused, task }
}

impl Following {
    /// Stops reading the record until [`Following::resume`]; the sandbox keeps what arrives meanwhile.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::Release);
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::Release);
    }

    /// Reads what is left and stops; a read error seen on the way is a warning.
    pub async fn stop(self, ctx: &Ctx) -> Option<String> {
        self.stop.store(true, Ordering::Release);
        match self.task.await {
            Ok(Some(error)) => {
                ctx.progress.line(&format!("warning: {error}"));
                Some(error)
            }
            Ok(None) => None,
            Err(error) => Some(format!("the record follower failed: {error}")),
        }
    }
}

/// Requests the sandbox accepted so far, all providers together (`GET /_sandbox/stats`).
pub async fn sandbox_accepted(ctx: &Ctx) -> Result<u64, String> {
    let url = format!("{}/_sandbox/stats", ctx.sandbox);
    let stats: BTreeMap<String, Value> = get_json(&ctx.http, &url, "the sandbox's stats").await?;
    Ok(stats.values().filter_map(|p| p["accepted"].as_u64()).sum())
}

/// Waits, without reading the record, until the sandbox accepted `expected` requests beyond `base`, or
/// nothing new for `--drain-s`: a profile that pauses its [`Following`] while the traffic runs watches the
/// sandbox's counters instead, which cost nothing measurable.
pub async fn await_accepted(ctx: &Ctx, base: u64, expected: u64) -> Result<(), String> {
    let mut quiet = Quiet::new(ctx);
    loop {
        let accepted = sandbox_accepted(ctx).await?.saturating_sub(base);
        if accepted >= expected {
            return Ok(());
        }
        if quiet.moved(accepted) {
            ctx.progress.status(format!("{accepted} of {expected} at the sandbox (the record is read after)"));
        }
        if quiet.over() {
            return Ok(());
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

/// How often the waits for arrivals look again.
const WAIT_POLL: Duration = Duration::from_millis(200);

/// When a count last moved, for the waits that give up after `--drain-s` without anything new.
struct Quiet {
    limit: Duration,
    last: u64,
    since: Instant,
}

impl Quiet {
    fn new(ctx: &Ctx) -> Quiet {
        Quiet { limit: Duration::from_secs_f64(ctx.args.drain_s), last: u64::MAX, since: Instant::now() }
    }

    /// Notes `count`; whether it changed since the last note.
    fn moved(&mut self, count: u64) -> bool {
        let moved = count != self.last;
        if moved {
            (self.last, self.since) = (count, Instant::now());
        }
        moved
    }

    fn over(&self) -> bool {
        self.since.elapsed() >= self.limit
    }
}

/// How long to keep reading once everything arrived, to see duplicates that follow closely.
const DUPLICATE_WAIT: Duration = Duration::from_secs(2);

/// Waits until every accepted message of `ledgers` arrived (then a little longer, for duplicates), or until
/// nothing new arrived for `--drain-s`.
pub async fn drain(ctx: &Ctx, ledgers: &[Arc<Ledger>]) {
    ctx.progress.phase("waiting for the last messages at the sandbox");
    let mut quiet = Quiet::new(ctx);
    loop {
        if ledgers.iter().all(|l| l.complete()) {
            tokio::time::sleep(DUPLICATE_WAIT).await;
            return;
        }
        quiet.moved(ledgers.iter().map(|l| l.progress().2).sum());
        if quiet.over() {
            let missing: u64 = ledgers.iter().map(|l| l.progress()).map(|(_, a, d)| a - d).sum();
            ctx.progress.line(&format!("   gave up waiting: {missing} accepted messages still missing"));
            return;
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}
