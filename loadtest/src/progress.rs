//! What the run shows while it runs: live counters (bumped by the senders and the record follower) and an
//! indicatif line with the phase, what was sent, accepted and delivered, and the delivered rate of the last
//! second. Phase changes are also printed as lines, so a log without a terminal still tells the story.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Live totals over every stream of the run.
#[derive(Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
    pub skipped: AtomicU64,
    /// First arrivals of this run's messages at the sandbox.
    pub delivered: AtomicU64,
    pub duplicates: AtomicU64,
    /// Arrivals naming a message the run never planned.
    pub strays: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

pub struct Progress {
    bar: ProgressBar,
    phase: Arc<Mutex<String>>,
    ticker: tokio::task::JoinHandle<()>,
}

const TICK: Duration = Duration::from_millis(250);

impl Progress {
    /// Draws to stderr (nothing when stderr is not a terminal, or with `hidden`).
    pub fn start(counters: Arc<Counters>, hidden: bool) -> Progress {
        let target = if hidden { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}").expect("a valid progress template"),
        );
        let phase = Arc::new(Mutex::new(String::from("starting")));
        let ticker = tokio::spawn(tick(bar.clone(), phase.clone(), counters));
        Progress { bar, phase, ticker }
    }

    /// Names the current phase and prints it as a line.
    pub fn phase(&self, phase: impl Into<String>) {
        let phase = phase.into();
        self.line(&format!("== {phase}"));
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner) = phase;
    }

    /// Renames the current phase on the bar only (for a phase that reports its own progress).
    pub fn status(&self, phase: impl Into<String>) {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner) = phase.into();
    }

    /// Prints a line above the bar (or to stderr when there is no bar).
    pub fn line(&self, line: &str) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    pub fn finish(&self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}

async fn tick(bar: ProgressBar, phase: Arc<Mutex<String>>, counters: Arc<Counters>) {
    let mut window = (Instant::now(), 0_u64);
    let mut rate = 0.0;
    loop {
        tokio::time::sleep(TICK).await;
        let delivered = counters.delivered.load(Ordering::Relaxed);
        let elapsed = window.0.elapsed();
        if elapsed >= Duration::from_secs(1) {
            rate = (delivered - window.1) as f64 / elapsed.as_secs_f64();
            window = (Instant::now(), delivered);
        }
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let phase = phase.lock().unwrap_or_else(PoisonError::into_inner).clone();
        bar.set_message(format!(
            "{phase} | sent {} accepted {} refused {} skipped {} | delivered {delivered} ({rate:.0}/s) dup {}",
            load(&counters.sent),
            load(&counters.accepted),
            load(&counters.refused),
            load(&counters.skipped),
            load(&counters.duplicates),
        ));
        bar.tick();
    }
}
