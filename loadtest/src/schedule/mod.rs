//! `schedule`: the scheduling-accuracy benchmark of SPEC §5. Posts `--total` push notifications whose `send_at`
//! spread uniformly over a `--window-s` window starting `--lead-s` after scheduling begins, then follows the
//! sandbox's record until all arrived (or the window ended a minute ago) and reports how late each was.
//!
//! Herald and the sandbox must run on this machine: lateness compares the sandbox's `received_at` stamps with
//! due times from this process's clock.

mod accept;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::rfc3339::now_unix_ms;
use crate::sandbox::RecordReader;
use crate::users;
use report::{Arrivals, Report};

/// The benchmark's users are `sched-<n>`, apart from the rate tool's `load-<n>`.
const USER_PREFIX: &str = "sched";
/// Herald refuses a `send_at` less than `scheduling.min_lead_s` ahead (10 s by default).
const MIN_LEAD_S: u64 = 10;
const MAX_AHEAD_S: u64 = 365 * 86_400;
/// How long after the last due time the tool waits for stragglers.
const STRAGGLER_WAIT_MS: i64 = 60_000;
/// How long the tool keeps reading once everything arrived, to see duplicates that follow closely.
const DUPLICATE_WAIT: Duration = Duration::from_secs(2);
const POLL_EVERY: Duration = Duration::from_millis(500);
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

#[derive(clap::Args)]
pub struct Args {
    /// How many notifications to schedule.
    #[arg(long, default_value_t = 150_000)]
    total: u64,
    /// The due times spread uniformly over a window of this many seconds.
    #[arg(long, default_value_t = 60)]
    window_s: u64,
    /// The window starts this many seconds after scheduling begins; it must cover the whole accept phase.
    #[arg(long, default_value_t = 90)]
    lead_s: u64,
    /// How many users (one Android device each) the notifications rotate over.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Requests in flight while creating users and scheduling.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Herald's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    herald: String,
    /// The sandbox's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    sandbox: String,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl Args {
    fn check(&self) -> Result<(), String> {
        if self.total == 0 || self.users == 0 || self.concurrency == 0 || self.window_s == 0 {
            return Err("--total, --users, --concurrency and --window-s must be at least 1".to_string());
        }
        if self.lead_s <= MIN_LEAD_S {
            return Err(format!(
                "--lead-s must be more than {MIN_LEAD_S}: Herald refuses a send_at less than scheduling.min_lead_s \
                 ({MIN_LEAD_S} s by default) ahead, and scheduling itself takes time"
            ));
        }
        if self.lead_s.saturating_add(self.window_s) > MAX_AHEAD_S {
            return Err("--lead-s plus --window-s must stay within a year".to_string());
        }
        Ok(())
    }
}

/// When each notification is due and how it is recognised in the sandbox's record.
pub struct Plan {
    /// Unique per run, so the record's other messages (earlier runs, other tools) are told apart.
    pub run_id: String,
    pub total: u64,
    /// The first due time, in Unix milliseconds.
    pub window_start_ms: i64,
    pub window_ms: i64,
}

impl Plan {
    /// Notification `index`'s due time in Unix milliseconds: `total` due times evenly spaced from the window's
    /// start, the last one less than one spacing before its end.
    pub fn due_ms(&self, index: u64) -> i64 {
        let offset = i128::from(index) * i128::from(self.window_ms) / i128::from(self.total);
        self.window_start_ms + offset as i64
    }

    pub fn window_end_ms(&self) -> i64 {
        self.window_start_ms + self.window_ms
    }

    /// What every body of this run starts with.
    pub fn tag(&self) -> String {
        run_tag(&self.run_id)
    }

    pub fn body(&self, index: u64) -> String {
        format!("{} {index}", self.tag())
    }

    pub fn idempotency_key(&self, index: u64) -> String {
        format!("sched-{}-{index}", self.run_id)
    }
}

fn run_tag(run_id: &str) -> String {
    format!("sched {run_id}")
}

/// Runs the benchmark: 0 if it met the target, 1 if not, 2 if it could not measure.
pub async fn run(args: Args, http: reqwest::Client) -> ExitCode {
    match measure(&args, &http).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("schedule: {message}");
            ExitCode::from(2)
        }
    }
}

/// Whether the run met the target, or why it could not be measured.
async fn measure(args: &Args, http: &reqwest::Client) -> Result<bool, String> {
    args.check()?;
    eprintln!("creating {} users", args.users);
    users::create(http, &args.herald, USER_PREFIX, args.users, args.concurrency).await?;
    let run_id = crate::run_id();
    // Skip what the record already holds, so the reads during the window only carry new messages.
    let mut reader = RecordReader::new(&args.sandbox, &run_tag(&run_id), 0);
    reader.read(http).await?;

    let started_ms = now_unix_ms();
    let plan = Arc::new(Plan {
        run_id,
        total: args.total,
        window_start_ms: started_ms + (args.lead_s * 1000) as i64,
        window_ms: (args.window_s * 1000) as i64,
    });
    eprintln!("scheduling {} notifications due {}–{} s from now", args.total, args.lead_s, args.lead_s + args.window_s);
    let accepted = accept::schedule_all(http, &args.herald, &plan, args.users, args.concurrency).await;
    if accepted.ran_into_window {
        return Err(format!(
            "the accept phase ran into the window: {} of {} scheduled in {:.1} s, but the first send was due {} s \
             after scheduling began. Raise --lead-s (or lower --total). What was scheduled will still be sent.",
            accepted.count(),
            args.total,
            accepted.elapsed.as_secs_f64(),
            args.lead_s
        ));
    }

    let arrivals = follow_record(http, &mut reader, &plan, &accepted.scheduled).await;
    let report = Report::new(&plan, &accepted, &arrivals);
    println!("{}", report.line(&plan, &accepted));
    for (answer, message) in &accepted.refusal_messages {
        eprintln!("refused: {} × {answer} ({message})", accepted.answers[answer]);
    }
    if let Some(path) = &args.json {
        let settings = json!({"total": args.total, "window_s": args.window_s, "lead_s": args.lead_s,
                              "users": args.users, "concurrency": args.concurrency});
        let summary = report.json(&plan, &accepted, settings);
        let text = serde_json::to_string_pretty(&summary).expect("a JSON value serializes");
        std::fs::write(path, text + "\n").map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(report.met_target())
}

/// Reads the record until every scheduled notification arrived (and a little longer, for duplicates) or a
/// minute after the last due time.
async fn follow_record(http: &reqwest::Client, reader: &mut RecordReader, plan: &Plan, scheduled: &[bool]) -> Arrivals {
    let expected = scheduled.iter().filter(|&&s| s).count() as u64;
    let deadline_ms = plan.window_end_ms() + STRAGGLER_WAIT_MS;
    let mut arrivals = Arrivals::new(plan.total);
    let mut all_arrived: Option<Instant> = None;
    let mut last_progress = Instant::now();
    loop {
        match reader.read(http).await {
            Ok(page) => page.into_iter().for_each(|arrival| arrivals.record(arrival, scheduled)),
            Err(message) => eprintln!("warning: {message}"),
        }
        if arrivals.unique() >= expected {
            let since = *all_arrived.get_or_insert_with(Instant::now);
            if since.elapsed() >= DUPLICATE_WAIT {
                break;
            }
        }
        let now_ms = now_unix_ms();
        if now_ms > deadline_ms {
            break;
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            let phase = if now_ms < plan.window_start_ms {
                format!("window starts in {:.0} s", (plan.window_start_ms - now_ms) as f64 / 1000.0)
            } else {
                format!("{:.0} s into the window", (now_ms - plan.window_start_ms) as f64 / 1000.0)
            };
            eprintln!("waiting: {}/{expected} arrived, {phase}", arrivals.unique());
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    arrivals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_spread_evenly_inside_the_window() {
        let plan = Plan { run_id: "r".to_string(), total: 150_000, window_start_ms: 5_000, window_ms: 60_000 };
        assert_eq!(plan.due_ms(0), 5_000);
        assert_eq!(plan.due_ms(2_500), 6_000);
        assert_eq!(plan.due_ms(75_000), 35_000);
        assert_eq!(plan.due_ms(149_999), 64_999);
        assert!((1..plan.total).all(|i| plan.due_ms(i) >= plan.due_ms(i - 1)));
        assert!(plan.due_ms(plan.total - 1) < plan.window_end_ms());

        let sparse = Plan { total: 3, window_ms: 60_000, ..plan };
        assert_eq!([0, 1, 2].map(|i| sparse.due_ms(i)), [5_000, 25_000, 45_000]);
    }

    #[test]
    fn bodies_carry_the_run_and_the_index() {
        let plan = Plan { run_id: "abc".to_string(), total: 1, window_start_ms: 0, window_ms: 1 };
        assert_eq!(plan.body(42), "sched abc 42");
        assert!(plan.body(42).starts_with(&plan.tag()));
        assert_eq!(plan.idempotency_key(42), "sched-abc-42");
    }

    fn args(lead_s: u64, window_s: u64) -> Args {
        Args {
            total: 10,
            window_s,
            lead_s,
            users: 1,
            concurrency: 1,
            herald: String::new(),
            sandbox: String::new(),
            json: None,
        }
    }

    #[test]
    fn checks_the_lead_and_the_window() {
        assert!(args(90, 60).check().is_ok());
        assert!(args(10, 60).check().unwrap_err().contains("--lead-s"));
        assert!(args(90, 0).check().is_err());
        assert!(args(90, MAX_AHEAD_S).check().unwrap_err().contains("a year"));
    }
}
