//! Test harness: a real Herald (API, engine, embedded store) with the in-process sandbox, on port 0, in a
//! temporary data directory, talking real HTTP and SMTP.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use herald::config::Settings;
use herald::sandbox::ReceivedMessage;
use herald::server::{Running, serve};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

pub struct TestApp {
    pub running: Running,
    pub http: reqwest::Client,
    pub base: String,
    pub dir: TempDir,
}

/// Default test settings: everything on port 0, a temp store, fast retries.
pub fn test_settings(dir: &TempDir) -> Settings {
    let config_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut s =
        Settings::load(&config_dir, "default", figment::providers::Env::prefixed("HERALD_TEST_UNSET__")).unwrap();
    s.server.listen = "127.0.0.1:0".parse().unwrap();
    s.sandbox.listen = "127.0.0.1:0".parse().unwrap();
    s.sandbox.smtp_listen = "127.0.0.1:0".parse().unwrap();
    s.sandbox.tls_listen = "127.0.0.1:0".parse().unwrap();
    s.store.data_dir = dir.path().join("data");
    s.engine.retry_base_ms = 10;
    s.engine.retry_max_ms = 100;
    s
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = TempDir::new().unwrap();
    let mut settings = test_settings(&dir);
    tweak(&mut settings);
    let running = serve(settings, CancellationToken::new()).await.expect("herald starts");
    let base = running.base_url();
    TestApp { running, http: reqwest::Client::new(), base, dir }
}

impl TestApp {
    /// Stops this Herald and starts a new one on the same data directory, with `tweak` applied to fresh test
    /// settings (a restart, as after a deploy).
    pub async fn restart_with(self, tweak: impl FnOnce(&mut Settings)) -> TestApp {
        self.restart_after(Duration::ZERO, tweak).await
    }

    /// [`TestApp::restart_with`], staying down for `downtime` first.
    pub async fn restart_after(self, downtime: Duration, tweak: impl FnOnce(&mut Settings)) -> TestApp {
        let TestApp { running, http, dir, .. } = self;
        running.stop().await;
        tokio::time::sleep(downtime).await;
        let mut settings = test_settings(&dir);
        tweak(&mut settings);
        // The stopped engine's actors let go of the store file a moment after `stop` returns.
        let deadline = Instant::now() + Duration::from_secs(10);
        let running = loop {
            match serve(settings.clone(), CancellationToken::new()).await {
                Ok(running) => break running,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("herald restarts: {e:?}"),
            }
        };
        let base = running.base_url();
        TestApp { running, http, base, dir }
    }

    pub fn sandbox(&self) -> &herald::sandbox::SandboxHandle {
        self.running.sandbox.as_ref().expect("sandbox enabled")
    }

    pub async fn request(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.request(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.request(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.request(reqwest::Method::GET, path, None).await
    }

    /// Creates a user with an e-mail, a phone and the given devices (`(token, platform)`).
    pub async fn user(&self, id: &str, devices: &[(&str, &str)]) {
        let (status, body) = self
            .put(&format!("/v1/users/{id}"), json!({"email": format!("{id}@example.com"), "phone": "010-1234-5678"}))
            .await;
        assert_eq!(status, 200, "{body}");
        for (token, platform) in devices {
            let (status, body) =
                self.post(&format!("/v1/users/{id}/devices"), json!({"token": token, "platform": platform})).await;
            assert_eq!(status, 201, "{body}");
        }
    }

    /// Sends and expects a 202; returns the notification id.
    pub async fn send(&self, body: Value) -> String {
        let (status, reply) = self.post("/v1/notifications", body).await;
        assert_eq!(status, 202, "{reply}");
        reply["id"].as_str().unwrap().to_string()
    }

    /// Polls the notification until `done` holds (bounded; the bound is a hang guard, not a speed assertion).
    pub async fn wait_notification(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, n) = self.get(&format!("/v1/notifications/{id}")).await;
            assert_eq!(status, 200, "{n}");
            if done(&n) {
                return n;
            }
            assert!(Instant::now() < deadline, "notification never reached the expected state: {n:#}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the notification's status is final.
    pub async fn wait_final(&self, id: &str) -> Value {
        self.wait_notification(id, |n| matches!(n["status"].as_str(), Some("completed" | "failed" | "cancelled"))).await
    }

    /// Polls the sandbox record until `done` holds.
    pub async fn wait_record(&self, done: impl Fn(&[ReceivedMessage]) -> bool) -> Vec<ReceivedMessage> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let record = self.sandbox().record();
            if done(&record) {
                return record;
            }
            assert!(
                Instant::now() < deadline,
                "sandbox record never reached the expected state ({} messages)",
                record.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The statuses of a notification's deliveries, as `(channel, status)` sorted.
pub fn statuses(n: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = n["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["channel"].as_str().unwrap().to_string(), d["status"].as_str().unwrap().to_string()))
        .collect();
    out.sort();
    out
}
