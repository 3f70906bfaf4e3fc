//! The command line: which profile, how hard, against what. Defaults depend on the profile (see
//! [`Args::rate`] and friends), so `herald-loadtest --profile midnight-spike` alone is a meaningful run.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use serde::Serialize;

/// What traffic a run sends (SPEC §8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// Immediate high and normal notifications at `--rate` for `--duration`.
    Steady,
    /// `rate × duration` notifications scheduled for one "midnight", plus live high traffic from then on.
    MidnightSpike,
    /// One campaign to `--users` users while live high traffic runs.
    Campaign,
    /// Three-step alimtalk sequences started at `--rate`, each step gated on the previous one's report.
    Sequences,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Steady => "steady",
            Profile::MidnightSpike => "midnight-spike",
            Profile::Campaign => "campaign",
            Profile::Sequences => "sequences",
        }
    }
}

#[derive(Parser, Clone, Debug, Serialize)]
#[command(
    name = "herald-loadtest",
    about = "SPEC §8 load generator: open-loop profiles against Herald, verified from the sandbox's record",
    long_about = "Spawns `herald sandbox` and `herald serve` (the `herald` binary beside this one) unless --herald \
                  and --sandbox name running ones, measures the raw loopback HTTP rate to the sandbox, runs the \
                  profile, and writes summary.json and plot.svg to --out."
)]
pub struct Args {
    #[arg(long, value_enum)]
    pub profile: Profile,
    /// Target arrivals per second. steady: notifications (5000); midnight-spike: due times (5000);
    /// campaign: the campaign's rate_per_second (none: Herald's pace); sequences: sequences started (100).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of traffic. steady 30, midnight-spike 60 (the due window), sequences 30; campaign: the live
    /// traffic runs until the campaign ends, at most this long (600).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Recipients (each with one Android device, an e-mail address and a phone number as the channels need).
    /// Default 10,000; campaign 200,000; sequences 1,000.
    #[arg(long)]
    pub users: Option<usize>,
    /// Channels of every notification (steady, midnight-spike, live traffic, campaign): push, email, sms,
    /// alimtalk. Sequences always use alimtalk.
    #[arg(long, value_delimiter = ',', default_value = "push")]
    pub channels: Vec<String>,
    /// A running Herald's base URL (with --sandbox); default: spawn one.
    #[arg(long, requires = "sandbox")]
    pub herald: Option<String>,
    /// The running sandbox's plain HTTP base URL (with --herald).
    #[arg(long, requires = "herald")]
    pub sandbox: Option<String>,
    /// The running sandbox's TLS base URL Herald's FCM client uses (e.g. https://127.0.0.1:8443), for the raw
    /// rate; without it the raw rate goes over --sandbox (plain HTTP/1.1).
    #[arg(long, requires_all = ["sandbox", "sandbox_ca"])]
    pub sandbox_tls: Option<String>,
    /// The PEM CA that signed the running sandbox's TLS certificate (`herald sandbox --ca-out`).
    #[arg(long, requires = "sandbox_tls")]
    pub sandbox_ca: Option<PathBuf>,
    /// Where summary.json, plot.svg and the spawned processes' logs go; default
    /// loadtest-results/<profile>-<UTC timestamp>.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seeds which user and priority each notification gets, so a run repeats.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Live high-priority notifications per second (midnight-spike from the midnight on, campaign while it runs).
    #[arg(long, default_value_t = 200.0)]
    pub live_rate: f64,
    /// midnight-spike: seconds from the start of pre-scheduling to the midnight; default 20 s plus the
    /// notifications at an assumed 10,000 accepted/s. A run whose pre-scheduling reaches the midnight aborts.
    #[arg(long)]
    pub lead_s: Option<f64>,
    /// Herald's `scheduling.min_lead_s`: midnight-spike must post every notification this long before it is due.
    #[arg(long, default_value_t = 10.0)]
    pub min_lead_s: f64,
    /// Open-loop requests outstanding at once; an arrival that finds them all busy is skipped and counted.
    #[arg(long, default_value_t = 1024)]
    pub max_outstanding: usize,
    /// Requests in flight in the closed-loop phases (creating users, pre-scheduling).
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    /// Seconds of the raw loopback HTTP measurement (0 skips it).
    #[arg(long, default_value_t = 5.0)]
    pub raw_seconds: f64,
    /// Requests in flight during the raw measurement (Herald's FCM `max_requests` is 256).
    #[arg(long, default_value_t = 256)]
    pub raw_concurrency: usize,
    /// Steps per sequence.
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Seconds to wait, after the traffic, for accepted messages still missing at the sandbox.
    #[arg(long, default_value_t = 60.0)]
    pub drain_s: f64,
    /// The `herald` binary to spawn; default: the one beside this executable.
    #[arg(long)]
    pub herald_bin: Option<PathBuf>,
    /// Herald's configuration directory for the spawned processes; default ./config, else the source tree's.
    #[arg(long)]
    pub config_dir: Option<PathBuf>,
    /// Leave the sandbox's record as it is instead of forgetting each page once read (to measure its memory).
    #[arg(long)]
    pub keep_record: bool,
    /// No progress bar (phase lines still go to stderr).
    #[arg(long)]
    pub no_progress: bool,
}

/// Channels the sandbox can see (in-app is Herald's own inbox).
const CHANNELS: [&str; 4] = ["push", "email", "sms", "alimtalk"];

impl Args {
    pub fn rate(&self) -> Option<f64> {
        match self.profile {
            Profile::Steady | Profile::MidnightSpike => Some(self.rate.unwrap_or(5000.0)),
            Profile::Campaign => self.rate,
            Profile::Sequences => Some(self.rate.unwrap_or(100.0)),
        }
    }

    pub fn duration_s(&self) -> f64 {
        self.duration.unwrap_or(match self.profile {
            Profile::Steady | Profile::Sequences => 30.0,
            Profile::MidnightSpike => 60.0,
            Profile::Campaign => 600.0,
        })
    }

    pub fn users(&self) -> usize {
        self.users.unwrap_or(match self.profile {
            Profile::Campaign => 200_000,
            Profile::Sequences => 1_000,
            Profile::Steady | Profile::MidnightSpike => 10_000,
        })
    }

    /// The channels the profile's notifications use.
    pub fn channels(&self) -> Vec<String> {
        match self.profile {
            Profile::Sequences => vec!["alimtalk".to_string()],
            _ => self.channels.clone(),
        }
    }

    /// Refuses what cannot be measured, naming the flag.
    pub fn check(&self) -> Result<(), String> {
        for channel in &self.channels {
            if !CHANNELS.contains(&channel.as_str()) {
                return Err(format!(
                    "--channels: `{channel}` is not one of {} (in_app never reaches the sandbox)",
                    CHANNELS.join(", ")
                ));
            }
        }
        if self.channels.is_empty() {
            return Err("--channels: name at least one".to_string());
        }
        if let Some(rate) = self.rate
            && !(rate > 0.0 && rate.is_finite())
        {
            return Err("--rate must be a positive number".to_string());
        }
        if !(self.duration_s() > 0.0 && self.duration_s().is_finite()) {
            return Err("--duration must be a positive number of seconds".to_string());
        }
        if !(self.live_rate >= 0.0 && self.live_rate.is_finite()) {
            return Err("--live-rate must be zero or more".to_string());
        }
        if self.users() == 0 || self.users() > 99_999_999 {
            return Err("--users must be between 1 and 99,999,999 (phone numbers have eight digits)".to_string());
        }
        if self.max_outstanding == 0 || self.concurrency == 0 || self.raw_concurrency == 0 {
            return Err("--max-outstanding, --concurrency and --raw-concurrency must be at least 1".to_string());
        }
        if self.steps == 0 || self.steps > 50 {
            return Err("--steps must be between 1 and 50 (Herald's limit)".to_string());
        }
        if let Some(lead) = self.lead_s
            && !(lead > 0.0 && lead.is_finite())
        {
            return Err("--lead-s must be a positive number of seconds".to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from([&["herald-loadtest"], args].concat())
    }

    #[test]
    fn defaults_depend_on_the_profile() {
        let spike = parse(&["--profile", "midnight-spike"]).unwrap();
        assert_eq!((spike.rate(), spike.duration_s(), spike.users()), (Some(5000.0), 60.0, 10_000));
        assert_eq!(spike.channels(), ["push"]);
        let campaign = parse(&["--profile", "campaign"]).unwrap();
        assert_eq!((campaign.rate(), campaign.users()), (None, 200_000));
        let sequences = parse(&["--profile", "sequences", "--channels", "push,email"]).unwrap();
        assert_eq!(sequences.channels(), ["alimtalk"], "sequences are alimtalk whatever --channels says");
        let steady = parse(&["--profile", "steady", "--rate", "100", "--duration", "2", "--users", "5"]).unwrap();
        assert_eq!((steady.rate(), steady.duration_s(), steady.users()), (Some(100.0), 2.0, 5));
        assert!(steady.check().is_ok());
    }

    #[test]
    fn bad_values_name_their_flag() {
        let error = |args: &[&str]| parse(args).unwrap().check().unwrap_err();
        assert!(error(&["--profile", "steady", "--channels", "in_app"]).contains("--channels"));
        assert!(error(&["--profile", "steady", "--rate", "0"]).contains("--rate"));
        assert!(error(&["--profile", "steady", "--duration=-1"]).contains("--duration"));
        assert!(error(&["--profile", "steady", "--users", "0"]).contains("--users"));
        assert!(error(&["--profile", "sequences", "--steps", "51"]).contains("--steps"));
    }

    #[test]
    fn a_running_herald_needs_its_sandbox() {
        assert!(parse(&["--profile", "steady", "--herald", "http://127.0.0.1:8080"]).is_err());
        assert!(parse(&["--profile", "steady", "--sandbox", "http://127.0.0.1:8081"]).is_err());
        let both = parse(&["--profile", "steady", "--herald", "http://h", "--sandbox", "http://s"]).unwrap();
        assert_eq!(both.herald.as_deref(), Some("http://h"));
        assert!(parse(&["--profile", "steady", "--herald", "h", "--sandbox", "s", "--sandbox-tls", "t"]).is_err());
        assert!(parse(&["--profile", "nightly"]).is_err());
    }
}
