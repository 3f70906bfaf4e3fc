//! Crash safety (docs/engine-semantics.md, "Crash"): `herald serve` is a child process, on the embedded store
//! or on a private redis-server (AOF `appendfsync always`). Concurrent clients post notifications for many
//! users, each with its own idempotency key; at a random point, while clients post and deliveries are in
//! flight, Herald is killed with SIGKILL and restarted on the same store, and the clients retry what was not
//! answered (same key). Every acknowledged notification must reach the sandbox (a separate process over TLS,
//! so its record survives) and end `completed`, and provider-side duplicates must stay within the in-flight
//! cap. Each test prints a summary line with the counts and how long each phase took.
//!
//! A third test kills Herald while 100 sequences wait for their first step's delivery report (docs/scheduling.md,
//! "Sequences"): after the restart the reports arrive and every sequence completes, each step sent once.
//!
//! `HERALD_CRASH_TOTAL` sets how many notifications the Redis test acknowledges (default 100,000).

mod common;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::{Child, Command};

use common::redis::RedisServer;

/// FCM's in-flight cap in Herald: the bound on duplicates after a crash.
const IN_FLIGHT: usize = 64;
const CLIENTS: usize = 16;
const EMBEDDED_TOTAL: usize = 2_000;
const REDIS_TOTAL: usize = 100_000;
/// Notifications per user (the user count follows the total).
const PER_USER: usize = 50;

/// The two tests share two cores with their Herald, sandbox (and Redis): one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn herald() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR")).stdout(Stdio::null()).stderr(Stdio::null()).kill_on_drop(true);
    cmd
}

/// The sandbox's ports: plain HTTP, SMTP, HTTPS.
#[derive(Clone, Copy)]
struct SandboxPorts {
    http: u16,
    smtp: u16,
    tls: u16,
}

/// The sandbox as its own process; `report_url` is where it posts Bizppurio delivery reports (none if empty).
fn start_sandbox(ports: SandboxPorts, ca_out: &Path, report_url: &str) -> Child {
    let listen = |port: u16| format!("127.0.0.1:{port}");
    herald()
        .args(["sandbox", "--listen", &listen(ports.http), "--smtp-listen", &listen(ports.smtp)])
        .args(["--tls-listen", &listen(ports.tls), "--report-url", report_url])
        .arg("--ca-out")
        .arg(ca_out)
        .spawn()
        .expect("sandbox starts")
}

/// Which store Herald runs on (the variables that select it; the embedded store lives in `--data-dir`), and
/// how fast FCM deliveries may drain: slower than the clients post, so the kill lands while deliveries are
/// queued and in flight.
struct StoreUnderTest {
    name: &'static str,
    env: Vec<(&'static str, String)>,
    drain_per_second: u32,
}

/// Everything a Herald start needs; a restart reuses it, so it finds the same store.
struct Setup<'a> {
    port: u16,
    data: &'a Path,
    sandbox: SandboxPorts,
    ca_file: &'a Path,
    store: &'a StoreUnderTest,
}

fn start_herald(setup: &Setup) -> Child {
    let base = format!("http://127.0.0.1:{}", setup.sandbox.http);
    let tls_base = format!("https://127.0.0.1:{}", setup.sandbox.tls);
    herald()
        .args(["serve", "--no-sandbox", "--listen", &format!("127.0.0.1:{}", setup.port)])
        .arg("--data-dir")
        .arg(setup.data)
        .env("HERALD__PROVIDERS__EXTRA_ROOT_CA_FILE", setup.ca_file)
        .env("HERALD__PROVIDERS__FCM__BASE_URL", &tls_base)
        .env("HERALD__PROVIDERS__FCM__TOKEN_URI", format!("{tls_base}/token"))
        .env("HERALD__PROVIDERS__APNS__BASE_URL", &tls_base)
        .env("HERALD__PROVIDERS__TWILIO__BASE_URL", &base)
        .env("HERALD__PROVIDERS__BIZPPURIO__BASE_URL", &base)
        .env("HERALD__PROVIDERS__SMTP__PORT", setup.sandbox.smtp.to_string())
        .env("HERALD__PROVIDERS__LIMITS__FCM__RATE_PER_SECOND", setup.store.drain_per_second.to_string())
        .env("HERALD__PROVIDERS__LIMITS__FCM__BURST", "50")
        .env("HERALD__PROVIDERS__LIMITS__FCM__MAX_IN_FLIGHT", IN_FLIGHT.to_string())
        .envs(setup.store.env.iter().map(|(k, v)| (*k, v)))
        .spawn()
        .expect("herald starts")
}

async fn wait_healthy(http: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while http.get(url).send().await.map(|r| !r.status().is_success()).unwrap_or(true) {
        assert!(Instant::now() < deadline, "{url} never became healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The push messages the sandbox received, counted by body; fetched incrementally (`after`), since the record
/// grows to the whole run.
struct SandboxTally {
    url: String,
    last_seq: u64,
    counts: HashMap<String, usize>,
    messages: usize,
}

impl SandboxTally {
    async fn refresh(&mut self, http: &reqwest::Client) {
        let url = format!("{}/_sandbox/messages?channel=push&after={}", self.url, self.last_seq);
        let batch: Vec<Value> = http.get(url).send().await.unwrap().json().await.unwrap();
        for m in batch {
            self.last_seq = self.last_seq.max(m["seq"].as_u64().unwrap());
            *self.counts.entry(m["body"].as_str().unwrap().to_string()).or_default() += 1;
            self.messages += 1;
        }
    }
}

/// Wall time of one phase, for the summary.
struct Phases(Vec<(&'static str, Duration)>, Instant);

impl Phases {
    fn start() -> Phases {
        Phases(Vec::new(), Instant::now())
    }

    fn done(&mut self, name: &'static str) {
        let now = Instant::now();
        self.0.push((name, now - self.1));
        self.1 = now;
    }

    fn render(&self) -> String {
        self.0.iter().map(|(name, d)| format!("{name} {:.1}s", d.as_secs_f64())).collect::<Vec<_>>().join(", ")
    }
}

/// Posts notification `i` until it is acknowledged, riding out the kill and restart (connection errors, 503):
/// the retry carries the same idempotency key, so a first attempt whose commit landed is answered as its
/// duplicate. Returns the notification id.
async fn post_until_acked(http: &reqwest::Client, url: &str, i: usize, users: usize) -> String {
    let body = json!({"user_id": format!("crash-{}", i % users), "channels": ["push"],
                      "content": {"body": format!("crash message {i}")}});
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match http.post(url).header("Idempotency-Key", format!("crash-{i}")).json(&body).send().await {
            Ok(resp) if resp.status().as_u16() == 202 => {
                let reply: Value = resp.json().await.unwrap();
                return reply["id"].as_str().unwrap().to_string();
            }
            Ok(resp) if matches!(resp.status().as_u16(), 503 | 429) => {}
            Ok(resp) => panic!("notification {i}: unexpected {} {}", resp.status(), resp.text().await.unwrap()),
            // Herald is down between the kill and the restart.
            Err(_) => {}
        }
        assert!(Instant::now() < deadline, "notification {i} was never acknowledged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the whole scenario against `store` with `total` notifications.
async fn crash_and_recover(store: StoreUnderTest, total: usize) {
    let started = Instant::now();
    let mut phases = Phases::start();
    let dir = tempfile::TempDir::new().unwrap();
    let sandbox = SandboxPorts { http: free_port(), smtp: free_port(), tls: free_port() };
    let ca_file = dir.path().join("sandbox-ca.pem");
    let setup = Setup { port: free_port(), data: &dir.path().join("data"), sandbox, ca_file: &ca_file, store: &store };
    let sandbox_url = format!("http://127.0.0.1:{}", sandbox.http);
    let base = format!("http://127.0.0.1:{}", setup.port);
    herald::sandbox::install_crypto_provider();
    let http = reqwest::Client::new();

    let _sandbox = start_sandbox(sandbox, &ca_file, "");
    wait_healthy(&http, &format!("{sandbox_url}/_sandbox/messages")).await;
    let faults = json!({"latency_min_ms": 1, "latency_max_ms": 20});
    http.put(format!("{sandbox_url}/_sandbox/faults/fcm")).json(&faults).send().await.unwrap();
    let herald_proc = start_herald(&setup);
    wait_healthy(&http, &format!("{base}/healthz")).await;

    let users = total.div_ceil(PER_USER).max(1);
    let next_user = Arc::new(AtomicUsize::new(0));
    let creators: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (http, base, next_user) = (http.clone(), base.clone(), next_user.clone());
            tokio::spawn(async move {
                loop {
                    let u = next_user.fetch_add(1, Ordering::Relaxed);
                    if u >= users {
                        return;
                    }
                    let user = format!("{base}/v1/users/crash-{u}");
                    assert!(http.put(&user).json(&json!({})).send().await.unwrap().status().is_success());
                    let device = json!({"token": format!("crash-token-{u}"), "platform": "android"});
                    let status = http.post(format!("{user}/devices")).json(&device).send().await.unwrap().status();
                    assert_eq!(status.as_u16(), 201);
                }
            })
        })
        .collect();
    for creator in creators {
        creator.await.unwrap();
    }
    phases.done("users");

    // The clients take notification numbers from a shared counter until `total` are acknowledged.
    let next = Arc::new(AtomicUsize::new(0));
    let acked_count = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (http, url) = (http.clone(), format!("{base}/v1/notifications"));
            let (next, acked_count) = (next.clone(), acked_count.clone());
            tokio::spawn(async move {
                let mut acked = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return acked;
                    }
                    acked.push((i, post_until_acked(&http, &url, i, users).await));
                    acked_count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    // The kill lands at a random point of the acceptance, while deliveries drain behind it.
    let kill_at = rand::random_range(total / 5..=total * 3 / 5).max(1);
    let deadline = Instant::now() + Duration::from_secs(600);
    while acked_count.load(Ordering::Relaxed) < kill_at {
        assert!(Instant::now() < deadline, "only {} acknowledged before the kill", acked_count.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut herald_proc = herald_proc;
    herald_proc.start_kill().unwrap();
    herald_proc.wait().await.unwrap();
    let acked_at_kill = acked_count.load(Ordering::Relaxed);
    let mut tally = SandboxTally { url: sandbox_url.clone(), last_seq: 0, counts: HashMap::new(), messages: 0 };
    tally.refresh(&http).await;
    let at_kill = tally.counts.len();
    assert!(at_kill < acked_at_kill, "the kill must land mid-flight (delivered {at_kill} of {acked_at_kill})");
    phases.done("accept until the kill");

    let mut herald_proc = start_herald(&setup);
    wait_healthy(&http, &format!("{base}/healthz")).await;
    phases.done("restart");
    let mut acked: Vec<(usize, String)> = Vec::with_capacity(total);
    for client in clients {
        acked.extend(client.await.unwrap());
    }
    assert_eq!(acked.len(), total);
    phases.done("accept the rest");

    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        tally.refresh(&http).await;
        if tally.counts.len() >= total {
            break;
        }
        let delivered = tally.counts.len();
        assert!(Instant::now() < deadline, "only {delivered} of {total} notifications delivered after the restart");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    phases.done("deliver the rest");
    for (i, _) in &acked {
        assert!(tally.counts.contains_key(&format!("crash message {i}")), "notification {i} never delivered");
    }

    // Every acknowledged notification ends `completed` in the store.
    let ids = Arc::new(acked.into_iter().map(|(_, id)| id).collect::<Vec<_>>());
    let next_id = Arc::new(AtomicUsize::new(0));
    let checkers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (http, base, ids, next_id) = (http.clone(), base.clone(), ids.clone(), next_id.clone());
            tokio::spawn(async move {
                loop {
                    let k = next_id.fetch_add(1, Ordering::Relaxed);
                    if k >= ids.len() {
                        return;
                    }
                    let deadline = Instant::now() + Duration::from_secs(60);
                    loop {
                        let url = format!("{base}/v1/notifications/{}", ids[k]);
                        let n: Value = http.get(url).send().await.unwrap().json().await.unwrap();
                        if n["status"] == "completed" {
                            break;
                        }
                        // The last outcomes may still be committing when the last message arrives.
                        assert!(Instant::now() < deadline, "{n}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();
    for checker in checkers {
        checker.await.unwrap();
    }
    phases.done("check statuses");

    tally.refresh(&http).await;
    let duplicates = tally.messages - tally.counts.len();
    println!(
        "crash summary ({}): acknowledged {total} for {users} users by {CLIENTS} clients | killed at {acked_at_kill} \
         acknowledged, {at_kill} at the sandbox | after restart {} distinct, {duplicates} duplicates (cap {IN_FLIGHT}) \
         | {} | total {:.1}s",
        store.name,
        tally.counts.len(),
        phases.render(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(tally.counts.len(), total, "the sandbox got bodies nobody posted");
    assert!(duplicates <= IN_FLIGHT, "{duplicates} duplicates exceed the in-flight cap {IN_FLIGHT}");
    herald_proc.start_kill().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_notification_survives_a_kill_9_on_the_embedded_store() {
    let _serial = SERIAL.lock().await;
    let store = StoreUnderTest { name: "embedded", env: Vec::new(), drain_per_second: 400 };
    crash_and_recover(store, EMBEDDED_TOTAL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_notification_survives_a_kill_9_on_redis() {
    let _serial = SERIAL.lock().await;
    let Some(redis) = RedisServer::start() else { return };
    let total = std::env::var("HERALD_CRASH_TOTAL").map_or(REDIS_TOTAL, |v| v.parse().expect("HERALD_CRASH_TOTAL"));
    let env = vec![("HERALD__STORE__BACKEND", "redis".to_string()), ("HERALD__STORE__REDIS__URL", redis.url())];
    crash_and_recover(StoreUnderTest { name: "redis", env, drain_per_second: 1500 }, total).await;
    drop(redis);
}

/// A Bizppurio delivery report with a success RESULT for `refkey`, as the provider posts it.
fn alimtalk_report(refkey: &str) -> Value {
    json!({"DEVICE": "KAT", "CMSGID": format!("c-{refkey}"), "MSGID": format!("m-{refkey}"), "PHONE": "821012345678",
           "MEDIA": "KAT", "UNIXTIME": "1700000000", "RESULT": "7000", "REFKEY": refkey, "RESEND_FLAG": "N"})
}

/// Sequences survive a kill -9 while every one of them waits for its first step's delivery report: after the
/// restart the reports arrive (posted here, as a provider redelivers them), and every sequence runs to its end
/// with each step sent exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_waiting_on_reports_survive_a_kill_9() {
    const SEQUENCES: usize = 100;
    const STEPS: usize = 3;
    let _serial = SERIAL.lock().await;
    let data = tempfile::TempDir::new().unwrap();
    let sandbox = SandboxPorts { http: free_port(), smtp: free_port(), tls: free_port() };
    let port = free_port();
    let ca_file = data.path().join("sandbox-ca.pem");
    let sandbox_url = format!("http://127.0.0.1:{}", sandbox.http);
    let base = format!("http://127.0.0.1:{port}");
    herald::sandbox::install_crypto_provider();
    let http = reqwest::Client::new();

    // Reports go to Herald's port, after a delay long enough for the kill to land before any is posted.
    let report_url = format!("{base}/webhooks/alimtalk");
    let _sandbox = start_sandbox(sandbox, &ca_file, &report_url);
    wait_healthy(&http, &format!("{sandbox_url}/_sandbox/messages")).await;
    let slow_reports = json!({"report_delay_ms": 15000});
    http.put(format!("{sandbox_url}/_sandbox/faults/bizppurio")).json(&slow_reports).send().await.unwrap();

    let store = StoreUnderTest { name: "embedded", env: Vec::new(), drain_per_second: 1000 };
    let setup = Setup { port, data: data.path(), sandbox, ca_file: &ca_file, store: &store };
    let mut herald_proc = start_herald(&setup);
    wait_healthy(&http, &format!("{base}/healthz")).await;
    let template =
        json!({"channels": {"alimtalk": {"ko": {"body": "{{user}} step {{step}}", "templatecode": "T-SEQ"}}}});
    assert!(http.put(format!("{base}/v1/templates/seq")).json(&template).send().await.unwrap().status().is_success());
    let mut ids = Vec::with_capacity(SEQUENCES);
    for u in 0..SEQUENCES {
        let user = format!("seq-{u}");
        let profile = json!({"phone": format!("010-3000-{u:04}")});
        assert!(http.put(format!("{base}/v1/users/{user}")).json(&profile).send().await.unwrap().status().is_success());
        let steps: Vec<Value> = (1..=STEPS)
            .map(|k| json!({"channels": ["alimtalk"], "template": {"id": "seq", "params": {"user": user, "step": k}}}))
            .collect();
        let body = json!({"user_id": user, "steps": steps, "step_timeout": "10m"});
        let resp = http.post(format!("{base}/v1/sequences")).json(&body).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 202);
        ids.push(resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string());
    }

    // Every first step is `sent` (durably: Herald answers from the store) and waits for its report.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut step_one = Vec::with_capacity(SEQUENCES);
    for id in &ids {
        loop {
            let s: Value = http.get(format!("{base}/v1/sequences/{id}")).send().await.unwrap().json().await.unwrap();
            let notification = s["steps"][0]["notification_id"].as_str().unwrap().to_string();
            let n: Value =
                http.get(format!("{base}/v1/notifications/{notification}")).send().await.unwrap().json().await.unwrap();
            if n["deliveries"][0]["status"] == "sent" {
                step_one.push(n["deliveries"][0]["id"].as_str().unwrap().to_string());
                break;
            }
            assert!(Instant::now() < deadline, "step 1 never reached `sent`: {n}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    herald_proc.start_kill().unwrap();
    herald_proc.wait().await.unwrap();

    // Step 1's reports: the sandbox still posts its delayed ones (to the restarted Herald, or to nothing if it is
    // not up yet), and they are posted here as well, as a provider redelivers; duplicates count once.
    let quick_reports = json!({"report_delay_ms": 20});
    http.put(format!("{sandbox_url}/_sandbox/faults/bizppurio")).json(&quick_reports).send().await.unwrap();
    let mut herald_proc = start_herald(&setup);
    wait_healthy(&http, &format!("{base}/healthz")).await;
    for refkey in &step_one {
        let resp = http.post(&report_url).json(&alimtalk_report(refkey)).send().await.unwrap();
        assert!(resp.status().is_success(), "report for {refkey}: {}", resp.status());
    }

    let deadline = Instant::now() + Duration::from_secs(120);
    for id in &ids {
        loop {
            let s: Value = http.get(format!("{base}/v1/sequences/{id}")).send().await.unwrap().json().await.unwrap();
            if s["status"] != "running" {
                assert_eq!(s["status"], "completed", "{s:#}");
                break;
            }
            assert!(Instant::now() < deadline, "sequence never completed after the restart: {s:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let messages: Vec<Value> = http
        .get(format!("{sandbox_url}/_sandbox/messages?channel=alimtalk"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for m in &messages {
        *counts.entry(m["body"].as_str().unwrap().to_string()).or_default() += 1;
    }
    let duplicates = messages.len() - counts.len();
    println!(
        "sequence crash summary: {SEQUENCES} sequences killed while waiting on step 1's report | after restart {} completed, {} step messages, {duplicates} duplicates",
        ids.len(),
        counts.len()
    );
    assert_eq!(counts.len(), SEQUENCES * STEPS, "every step of every sequence was sent");
    assert_eq!(duplicates, 0, "no step was sent twice");
    herald_proc.start_kill().unwrap();
}
