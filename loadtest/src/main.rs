//! `herald-loadtest`: load tools that drive a running Herald over its HTTP API and read its sandbox's record.
//!
//! - `rate` (the default when no subcommand is given): closed-loop accepted/s and delivered/s.
//! - `schedule`: the scheduling-accuracy benchmark (SPEC §5): lateness of scheduled sends against their due times.
//!
//! Code map: `rate` and `schedule/` are the subcommands; `users` creates the recipients both send to; `sandbox`
//! follows the sandbox's record; `stats` computes exact percentiles; `rfc3339` formats and parses instants.

mod rate;
mod rfc3339;
mod sandbox;
mod schedule;
mod stats;
mod users;

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    about = "Load tools for Herald: closed-loop rate (the default) and scheduling accuracy",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a subcommand, the options are `rate`'s.
    #[command(flatten)]
    rate: rate::Args,
}

#[derive(Subcommand)]
enum Command {
    /// Closed-loop rate: accepted/s and delivered/s of immediate push notifications (the default).
    Rate(rate::Args),
    /// Scheduling accuracy: how late scheduled push notifications reach the provider.
    Schedule(schedule::Args),
}

/// Long enough for any answer from a loaded Herald; a request that hangs past it counts as a transport error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("an HTTP client without TLS settings builds");
    match cli.command {
        Some(Command::Rate(args)) => rate::run(args, http).await,
        None => rate::run(cli.rate, http).await,
        Some(Command::Schedule(args)) => return schedule::run(args, http).await,
    }
    ExitCode::SUCCESS
}

/// An id that differs between runs, so message bodies (and the record's entries) of different runs differ.
fn run_id() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{:x}{:x}", nanos, std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_the_default_and_schedule_is_a_subcommand() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["herald-loadtest"], args].concat());
        assert!(parse(&["--total", "5"]).unwrap().command.is_none());
        assert!(matches!(parse(&["rate", "--total", "5"]).unwrap().command, Some(Command::Rate(_))));
        assert!(matches!(parse(&["schedule", "--lead-s", "30"]).unwrap().command, Some(Command::Schedule(_))));
        assert!(parse(&["--total", "5", "schedule"]).is_err(), "rate's options do not mix with a subcommand");
        assert!(parse(&["rate", "--lead-s", "30"]).is_err());
    }
}
