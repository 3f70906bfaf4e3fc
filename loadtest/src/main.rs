//! `herald-loadtest`: the load generator of SPEC §8. One run: set up Herald and its sandbox (spawned, or the
//! running ones named by `--herald`/`--sandbox`), measure the raw loopback HTTP rate to the sandbox, run a
//! profile open loop, verify every message against the sandbox's record, and write `summary.json` and
//! `plot.svg`. Exit code 0: nothing lost, duplicated, reordered or unexpected; 1: something was; 2: the run
//! could not be made (bad options, Herald or the sandbox unreachable, a phase that could not finish).
//!
//! Code map:
//! - `cli` the options and their per-profile defaults; `spawn` the self-contained setup; `raw` the bare-client
//!   baseline.
//! - `openloop` paces arrivals (wrk2 style); `notify` posts to Herald (the shared context, the body template,
//!   answers, the notification stream); `users` creates the recipients.
//! - `ledger` keeps each stream's book and judges it (losses, duplicates, ordering, HDR latencies); `record`
//!   follows the sandbox's record and routes arrivals to the books; `clock` is the run's one time axis.
//! - `profiles/` the four profiles; `timeline`, `summary` and `plot` the outputs; `progress` the live line.

mod cli;
mod clock;
mod ledger;
mod notify;
mod openloop;
mod plot;
mod profiles;
mod progress;
mod raw;
mod record;
mod rfc3339;
mod spawn;
mod summary;
mod timeline;
mod users;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;

use cli::{Args, Profile};
use notify::{Answers, Ctx};
use progress::{Counters, Progress};
use spawn::{Spawned, Usage};
use summary::{Latency, Percentiles, StreamSummary, Summary};

/// Long enough for any answer from a loaded Herald; a request that hangs past it is counted as unanswered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("herald-loadtest: {message}");
            ExitCode::from(2)
        }
    }
}

/// An id that differs between runs, so the bodies (and users' messages) of different runs differ.
fn run_id() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{:x}{:x}", nanos, std::process::id())
}

/// `YYYYMMDD-HHMMSS` (UTC) of an RFC 3339 instant, for directory names.
fn stamp(rfc3339: &str) -> String {
    rfc3339.chars().take(19).filter(|c| !matches!(c, '-' | ':')).map(|c| if c == 'T' { '-' } else { c }).collect()
}

/// Runs the whole thing; whether it passed.
async fn run(args: Args) -> Result<bool, String> {
    args.check()?;
    let run_id = run_id();
    let started_at = rfc3339::format_unix_ms(rfc3339::now_unix_ms());
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("loadtest-results").join(format!("{}-{}", args.profile.name(), stamp(&started_at)))
    });
    std::fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;

    let counters = Arc::new(Counters::default());
    let progress = Progress::start(counters.clone(), args.no_progress);
    let spawned = match &args.herald {
        None => {
            progress.phase("starting `herald sandbox` and `herald serve`");
            Some(Spawned::start(&args, &out, &run_id).await?)
        }
        Some(_) => None,
    };
    let (herald, sandbox, raw_target) = match &spawned {
        Some(s) => {
            let ca = std::fs::read(&s.ca_file).map_err(|e| format!("reading {}: {e}", s.ca_file.display()))?;
            let target = raw::Target { base: s.sandbox_tls_url.clone(), ca_pem: Some(ca) };
            (s.herald_url.clone(), s.sandbox_url.clone(), target)
        }
        None => {
            let sandbox = args.sandbox.clone().expect("clap requires --sandbox with --herald");
            let ca_pem = match &args.sandbox_ca {
                Some(path) => Some(std::fs::read(path).map_err(|e| format!("--sandbox-ca {}: {e}", path.display()))?),
                None => None,
            };
            let base = args.sandbox_tls.clone().unwrap_or_else(|| sandbox.clone());
            (args.herald.clone().expect("checked above"), sandbox, raw::Target { base, ca_pem })
        }
    };
    let tag = format!("lt{run_id}");

    let raw = if args.raw_seconds > 0.0 {
        progress
            .phase(format!("raw loopback HTTP rate: bare FCM client → {} for {} s", raw_target.base, args.raw_seconds));
        let raw = raw::measure(&raw_target, args.raw_seconds, args.raw_concurrency, &tag).await?;
        progress.line(&format!("   {:.0} req/s ({}, {} errors)", raw.requests_per_s, raw.transport, raw.errors));
        Some(raw)
    } else {
        None
    };

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.max_outstanding.max(args.concurrency))
        .timeout(REQUEST_TIMEOUT)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| format!("building the HTTP client: {e}"))?;
    let ctx = Arc::new(Ctx {
        args: args.clone(),
        http,
        herald,
        sandbox,
        clock: clock::Clock::start(),
        counters,
        answers: Answers::default(),
        tag,
        progress,
    });
    let outcome = match args.profile {
        Profile::Steady => profiles::steady::run(ctx.clone()).await,
        Profile::MidnightSpike => profiles::spike::run(ctx.clone()).await,
        Profile::Campaign => profiles::campaign::run(ctx.clone()).await,
        Profile::Sequences => profiles::sequences::run(ctx.clone()).await,
    };
    ctx.progress.finish();
    let usage = spawned.as_ref().map_or_else(Usage::own, Spawned::usage);
    drop(spawned);
    let outcome = outcome?;

    let summary = summarize(&ctx, &args, outcome, raw, usage, started_at, &out);
    let json = serde_json::to_string_pretty(&summary).expect("the summary serializes");
    let path = out.join("summary.json");
    std::fs::write(&path, json + "\n").map_err(|e| format!("writing {}: {e}", path.display()))?;
    plot::write(&out.join("plot.svg"), &format!("herald-loadtest {}", args.profile.name()), &summary.timeline)?;
    print!("{}", summary.text());
    Ok(summary.passed)
}

fn summarize(
    ctx: &Ctx,
    args: &Args,
    outcome: profiles::Outcome,
    raw: Option<raw::Raw>,
    usage: Usage,
    started_at: String,
    out: &std::path::Path,
) -> Summary {
    let streams: Vec<StreamSummary> = outcome.streams.iter().map(|(name, v, _)| StreamSummary::of(name, v)).collect();
    let headline = streams.iter().find(|s| s.name == outcome.headline);
    let times: Vec<(&str, timeline::Times)> =
        outcome.streams.iter().map(|(name, _, times)| (name.as_str(), times.clone())).collect();
    let mut problems = summary::problems(&streams);
    problems.extend(outcome.problems);
    let mut warnings = summary::warnings(&streams);
    warnings.extend(outcome.warnings);
    let mut summary = Summary {
        profile: args.profile.name(),
        parameters: args.clone(),
        started_at,
        out_dir: out.display().to_string(),
        raw_http_rps: raw.as_ref().map(|r| r.requests_per_s),
        raw_http: raw,
        ratio: None,
        accepted_per_s: outcome.accepted_per_s,
        delivered_per_s: outcome.delivered_per_s,
        sustained: outcome.sustained,
        latency_ms: Latency {
            stream: outcome.headline.clone(),
            accept: headline.and_then(|s| s.accept_latency_ms.clone()),
            e2e: headline.and_then(|s| s.e2e_latency_ms.clone()),
        },
        lateness_ms: outcome.lateness.as_ref().and_then(Percentiles::of),
        lost: 0,
        duplicates: 0,
        ordering_violations: 0,
        unexpected: 0,
        skipped: 0,
        streams,
        answers: ctx.answers.counts(),
        refusals: ctx.answers.messages(),
        herald_rss_max_bytes: None,
        sandbox_rss_max_bytes: None,
        cpu_seconds: summary::CpuSeconds::default(),
        details: outcome.details,
        timeline: timeline::build(&times, outcome.origin_us),
        problems,
        warnings,
        passed: false,
    };
    summary.finish(usage);
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_directories_are_named_by_profile_and_utc_time() {
        assert_eq!(stamp("2026-11-22T23:59:07.123Z"), "20261122-235907");
        assert_ne!(run_id(), "");
    }
}
