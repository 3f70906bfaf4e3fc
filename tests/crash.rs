//! Crash safety (docs/engine-semantics.md, "Crash"): `herald serve` is a child process; it acknowledges 2,000
//! notifications, is killed with SIGKILL while deliveries are in flight, and is restarted on the same data
//! directory. Every acknowledged notification must reach the sandbox (a separate process, so its record
//! survives), and provider-side duplicates must stay within the in-flight cap.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::{Child, Command};

const USERS: usize = 100;
const PER_USER: usize = 20;
const IN_FLIGHT: usize = 64;

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

fn start_sandbox(ports: SandboxPorts, ca_out: &Path) -> Child {
    let listen = |port: u16| format!("127.0.0.1:{port}");
    herald()
        .args(["sandbox", "--listen", &listen(ports.http), "--smtp-listen", &listen(ports.smtp)])
        .args(["--tls-listen", &listen(ports.tls)])
        .arg("--ca-out")
        .arg(ca_out)
        .spawn()
        .expect("sandbox starts")
}

fn start_herald(port: u16, data: &Path, sandbox: SandboxPorts, ca_file: &Path) -> Child {
    let base = format!("http://127.0.0.1:{}", sandbox.http);
    let tls_base = format!("https://127.0.0.1:{}", sandbox.tls);
    let smtp = sandbox.smtp;
    herald()
        .args(["serve", "--no-sandbox", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data)
        .env("HERALD__PROVIDERS__EXTRA_ROOT_CA_FILE", ca_file)
        .env("HERALD__PROVIDERS__FCM__BASE_URL", &tls_base)
        .env("HERALD__PROVIDERS__FCM__TOKEN_URI", format!("{tls_base}/token"))
        .env("HERALD__PROVIDERS__APNS__BASE_URL", &tls_base)
        .env("HERALD__PROVIDERS__TWILIO__BASE_URL", &base)
        .env("HERALD__PROVIDERS__BIZPPURIO__BASE_URL", &base)
        .env("HERALD__PROVIDERS__SMTP__PORT", smtp.to_string())
        // Slow the drain so the kill lands while deliveries are queued and in flight.
        .env("HERALD__PROVIDERS__LIMITS__FCM__RATE_PER_SECOND", "400")
        .env("HERALD__PROVIDERS__LIMITS__FCM__BURST", "50")
        .env("HERALD__PROVIDERS__LIMITS__FCM__MAX_IN_FLIGHT", IN_FLIGHT.to_string())
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

async fn record(http: &reqwest::Client, sandbox: &str) -> Vec<Value> {
    http.get(format!("{sandbox}/_sandbox/messages?channel=push")).send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_notification_survives_a_kill_9() {
    let data = tempfile::TempDir::new().unwrap();
    let sandbox = SandboxPorts { http: free_port(), smtp: free_port(), tls: free_port() };
    let port = free_port();
    let ca_file = data.path().join("sandbox-ca.pem");
    let sandbox_url = format!("http://127.0.0.1:{}", sandbox.http);
    let base = format!("http://127.0.0.1:{port}");
    herald::sandbox::install_crypto_provider();
    let http = reqwest::Client::new();

    let _sandbox = start_sandbox(sandbox, &ca_file);
    wait_healthy(&http, &format!("{sandbox_url}/_sandbox/messages")).await;
    let faults = json!({"latency_min_ms": 1, "latency_max_ms": 20});
    http.put(format!("{sandbox_url}/_sandbox/faults/fcm")).json(&faults).send().await.unwrap();

    let mut herald_proc = start_herald(port, data.path(), sandbox, &ca_file);
    wait_healthy(&http, &format!("{base}/healthz")).await;
    for u in 0..USERS {
        let user = format!("{base}/v1/users/crash-{u}");
        assert!(http.put(&user).json(&json!({})).send().await.unwrap().status().is_success());
        let device = json!({"token": format!("crash-token-{u}"), "platform": "android"});
        assert_eq!(http.post(format!("{user}/devices")).json(&device).send().await.unwrap().status().as_u16(), 201);
    }

    // 2,000 acknowledged notifications, sent by 8 concurrent clients.
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let http = http.clone();
        let url = format!("{base}/v1/notifications");
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in (worker..USERS * PER_USER).step_by(8) {
                let body = json!({"user_id": format!("crash-{}", i % USERS), "channels": ["push"],
                                  "content": {"body": format!("crash message {i}")}});
                let resp = http.post(&url).json(&body).send().await.unwrap();
                assert_eq!(resp.status().as_u16(), 202);
                let reply: Value = resp.json().await.unwrap();
                acked.push(reply["id"].as_str().unwrap().to_string());
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert_eq!(acked.len(), USERS * PER_USER);

    let before_kill = record(&http, &sandbox_url).await.len();
    herald_proc.start_kill().unwrap();
    herald_proc.wait().await.unwrap();
    let at_kill = record(&http, &sandbox_url).await.len();
    assert!(at_kill < acked.len(), "the kill must land mid-flight (delivered {at_kill} of {})", acked.len());

    let mut herald_proc = start_herald(port, data.path(), sandbox, &ca_file);
    wait_healthy(&http, &format!("{base}/healthz")).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let (messages, counts) = loop {
        let messages = record(&http, &sandbox_url).await;
        let mut counts: HashMap<String, usize> = HashMap::new();
        for m in &messages {
            *counts.entry(m["body"].as_str().unwrap().to_string()).or_default() += 1;
        }
        if counts.len() >= acked.len() {
            break (messages, counts);
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {} notifications delivered after restart",
            counts.len(),
            acked.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for id in &acked {
        let n: Value = http.get(format!("{base}/v1/notifications/{id}")).send().await.unwrap().json().await.unwrap();
        assert_eq!(n["status"], "completed", "{n}");
    }
    let duplicates = messages.len() - counts.len();
    println!(
        "crash summary: acknowledged {} | at the sandbox before kill {before_kill}, at kill {at_kill} | after restart {} distinct, {duplicates} duplicates (cap {IN_FLIGHT})",
        acked.len(),
        counts.len()
    );
    assert!(duplicates <= IN_FLIGHT, "{duplicates} duplicates exceed the in-flight cap {IN_FLIGHT}");
    herald_proc.start_kill().unwrap();
}
