//! Each profile for a few seconds at a low rate against a real Herald (API, engine, embedded store, its
//! in-process sandbox on loopback, all on port 0 in a temporary directory), driven by the real
//! `herald-loadtest` binary through `--herald`/`--sandbox`. A run passes only when every accepted message reached
//! the sandbox exactly once and in order; the summary must say what the run measured.
//!
//! The self-contained mode (spawning the `herald` binary) is not run here: the shared target directory's
//! `herald` binary may be another branch's.

use std::path::PathBuf;
use std::process::Command;

use herald::config::Settings;
use herald::server::{Running, serve};
use serde_json::Value;

/// A Herald with its sandbox, and a directory for the run's files; removed on drop.
struct Herald {
    running: Option<Running>,
    dir: PathBuf,
}

impl Herald {
    async fn start(name: &str, tweak: impl FnOnce(&mut Settings)) -> Herald {
        let dir = std::env::temp_dir().join(format!("herald-loadtest-smoke-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config");
        let mut settings = Settings::load(&config, "default", Settings::env()).unwrap();
        settings.server.listen = "127.0.0.1:0".parse().unwrap();
        settings.sandbox.listen = "127.0.0.1:0".parse().unwrap();
        settings.sandbox.smtp_listen = "127.0.0.1:0".parse().unwrap();
        settings.sandbox.tls_listen = "127.0.0.1:0".parse().unwrap();
        settings.store.data_dir = dir.join("data");
        for limits in settings.providers.limits.values_mut() {
            limits.rate_per_second = 1_000_000;
            limits.burst = 100_000;
        }
        tweak(&mut settings);
        // A fresh shutdown token (its type is tokio-util's, which this crate does not name).
        let running = serve(settings, Default::default()).await.expect("herald starts");
        Herald { running: Some(running), dir }
    }

    /// Runs `herald-loadtest` against this Herald; returns its exit code and summary.json.
    async fn load(&self, args: &[&str]) -> (i32, Value) {
        let running = self.running.as_ref().unwrap();
        let sandbox = running.sandbox.as_ref().unwrap();
        let ca = self.dir.join("sandbox-ca.pem");
        std::fs::write(&ca, sandbox.ca_pem()).unwrap();
        let out = self.dir.join("out");
        let mut command = Command::new(env!("CARGO_BIN_EXE_herald-loadtest"));
        command
            .args(["--herald", &running.base_url()])
            .args(["--sandbox", &format!("http://{}", sandbox.http_addr())])
            .args(["--sandbox-tls", &format!("https://{}", sandbox.tls_addr())])
            .arg("--sandbox-ca")
            .arg(&ca)
            .arg("--out")
            .arg(&out)
            .args(["--no-progress", "--raw-seconds", "0.5", "--raw-concurrency", "16", "--drain-s", "10"])
            .args(args);
        let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let summary = std::fs::read_to_string(out.join("summary.json"))
            .unwrap_or_else(|e| panic!("no summary.json ({e})\nstdout:\n{stdout}\nstderr:\n{stderr}"));
        assert!(out.join("plot.svg").is_file(), "no plot.svg");
        let code = output.status.code().unwrap_or(-1);
        assert_eq!(code, 0, "herald-loadtest failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
        (code, serde_json::from_str(&summary).unwrap())
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown.cancel();
            running.engine.stop();
            if let Some(sandbox) = &running.sandbox {
                sandbox.shutdown();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn stream<'a>(summary: &'a Value, name: &str) -> &'a Value {
    summary["streams"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("{summary:#}"))
}

/// Every message the stream planned was accepted and delivered exactly once, in order.
fn all_delivered(summary: &Value, name: &str, planned: u64) {
    let s = stream(summary, name);
    assert_eq!(s["planned"], planned, "{s:#}");
    assert_eq!(s["accepted"], planned, "{s:#}");
    assert_eq!(s["delivered"], planned, "{s:#}");
    for zero in ["lost", "duplicates", "ordering_violations", "unexpected", "skipped"] {
        assert_eq!(s[zero], 0, "{zero}: {s:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_delivers_every_notification_once_and_in_order() {
    let herald = Herald::start("steady", |_| {}).await;
    let (_, summary) = herald.load(&["--profile", "steady", "--rate", "100", "--duration", "2", "--users", "20"]).await;
    assert_eq!(summary["profile"], "steady");
    all_delivered(&summary, "steady", 200);
    assert!(summary["raw_http_rps"].as_f64().unwrap() > 0.0);
    assert!(summary["raw_http"]["transport"].as_str().unwrap().contains("HTTP/2"), "{summary:#}");
    assert!(summary["ratio"].as_f64().unwrap() > 0.0);
    assert!(summary["latency_ms"]["e2e"]["p99_ms"].as_f64().is_some());
    assert!(summary["timeline"].as_array().unwrap().len() >= 2);
    assert_eq!(summary["passed"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn midnight_spike_fires_every_scheduled_notification_once_in_due_order() {
    let herald = Herald::start("spike", |s| s.scheduling.min_lead_s = 1).await;
    let args = [
        "--profile",
        "midnight-spike",
        "--rate",
        "100",
        "--duration",
        "2",
        "--users",
        "20",
        "--live-rate",
        "20",
        "--lead-s",
        "3",
        "--min-lead-s",
        "1",
    ];
    let (_, summary) = herald.load(&args).await;
    all_delivered(&summary, "midnight", 200);
    all_delivered(&summary, "live", 40);
    assert_eq!(summary["latency_ms"]["stream"], "live");
    assert_eq!(summary["lateness_ms"]["count"], 200);
    assert!(summary["sustained"].as_f64().unwrap() > 0.0);
    assert_eq!(stream(&summary, "midnight")["early"], 0);
    assert!(summary["details"]["delivered_per_second_from_midnight"].as_array().unwrap().len() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_send_each_step_after_the_previous_report() {
    let herald = Herald::start("sequences", |_| {}).await;
    let args = ["--profile", "sequences", "--rate", "20", "--duration", "2", "--users", "10", "--steps", "3"];
    let (_, summary) = herald.load(&args).await;
    all_delivered(&summary, "sequences", 120);
    let details = &summary["details"];
    assert_eq!(details["sequences"]["completed"], 40, "{details:#}");
    assert_eq!(details["step_order"]["checked"], 80, "{details:#}");
    assert_eq!(details["step_order"]["violations"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_reaches_every_user_while_live_traffic_runs() {
    let herald = Herald::start("campaign", |_| {}).await;
    let args = ["--profile", "campaign", "--users", "200", "--live-rate", "20", "--duration", "60"];
    let (_, summary) = herald.load(&args).await;
    let campaign = stream(&summary, "campaign");
    assert_eq!((campaign["delivered"].as_u64(), campaign["lost"].as_u64()), (Some(200), Some(0)), "{campaign:#}");
    assert_eq!(campaign["duplicates"], 0);
    assert!(stream(&summary, "live")["delivered"].as_u64().unwrap() > 0);
    assert!(summary["details"]["isolation"]["high_e2e_ms"]["p99_ms"].as_f64().is_some());
}
