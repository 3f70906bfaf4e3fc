//! The APNs client against the real sandbox, over TLS and HTTP/2 with ES256 provider tokens: what each sandbox
//! answer becomes for the engine, and the re-sign-and-retry of an expired provider token.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use super::{ApnsClient, ApnsSettings, Es256ProviderToken};
use crate::domain::{Address, Platform, Priority, ProviderKind};
use crate::providers::http::HttpClients;
use crate::providers::http2;
use crate::providers::testing::{DELIVERY_ID, request};
use crate::providers::{Accepted, ErrorClass, Provider, SendRequest, dev_credentials};
use crate::sandbox::{FaultSettings, SandboxHandle, SandboxSettings};

const DEVICE: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90";
const TTL: Duration = Duration::from_secs(2400);

/// A sandbox on port 0 refusing provider tokens older than `max_age_s`. Built from JSON so settings other
/// modules add (all defaulted) need no change here.
async fn sandbox(max_age_s: u64) -> SandboxHandle {
    let settings: SandboxSettings = serde_json::from_value(json!({
        "enabled": true,
        "listen": "127.0.0.1:0",
        "smtp_listen": "127.0.0.1:0",
        "tls_listen": "127.0.0.1:0",
        "seed": 7,
        "apns_token_max_age_s": max_age_s,
    }))
    .unwrap();
    crate::sandbox::start(&settings, String::new()).await.unwrap()
}

/// The providers' HTTP clients, trusting the sandbox's CA.
fn https_clients(sandbox: &SandboxHandle) -> HttpClients {
    let ca = http2::pem_certificates(sandbox.ca_pem().as_bytes()).unwrap();
    HttpClients::new(Duration::from_secs(5), ca).unwrap()
}

fn settings(sandbox: &SandboxHandle) -> ApnsSettings {
    ApnsSettings {
        base_url: format!("https://{}", sandbox.tls_addr()),
        topic: "com.example.herald".into(),
        team_id: dev_credentials::APNS_TEAM_ID.into(),
        key_id: dev_credentials::APNS_KEY_ID.into(),
        key_file: String::new(),
        token_ttl_s: 2400,
    }
}

/// A client signing as `key_id` with the development key, on a clock `offset` seconds off the wall clock.
fn client_on_clock(sandbox: &SandboxHandle, key_id: &str, offset: Arc<AtomicI64>) -> ApnsClient {
    let clock = Arc::new(move || jiff::Timestamp::now().as_second() + offset.load(Ordering::SeqCst));
    let team = dev_credentials::APNS_TEAM_ID;
    let tokens = Es256ProviderToken::new(dev_credentials::APNS_KEY_P8, key_id, team, TTL, clock).unwrap();
    ApnsClient::new(&https_clients(sandbox), &settings(sandbox), Arc::new(tokens)).unwrap()
}

fn client(sandbox: &SandboxHandle) -> ApnsClient {
    client_on_clock(sandbox, dev_credentials::APNS_KEY_ID, Arc::default())
}

fn push(token: &str) -> SendRequest {
    let address = Address::Device { token: token.into(), platform: Platform::Ios };
    request(address, Some("Login"), "New sign-in", Priority::High)
}

async fn apns_stats(sandbox: &SandboxHandle) -> Value {
    let url = format!("http://{}/_sandbox/stats", sandbox.http_addr());
    let stats: Value = reqwest::Client::new().get(url).send().await.unwrap().json().await.unwrap();
    stats["apns"].clone()
}

#[tokio::test]
async fn a_push_is_delivered_over_http2_with_the_apns_id() {
    let sandbox = sandbox(3600).await;
    let accepted = client(&sandbox).send(&push(DEVICE)).await.unwrap();
    assert_eq!(
        accepted,
        Accepted::Delivered { provider_message_id: Some("0190f5e2-a3b4-7c8d-9e0f-1a2b3c4d5e6f".into()) }
    );
    let record = sandbox.record();
    assert_eq!(record.len(), 1);
    assert_eq!((record[0].provider, record[0].to.as_str()), (ProviderKind::Apns, DEVICE));
    assert_eq!((record[0].title.as_deref(), record[0].body.as_str()), (Some("Login"), "New sign-in"));
    assert_eq!(record[0].reference.as_deref(), Some(DELIVERY_ID));
}

#[tokio::test]
async fn each_sandbox_answer_has_its_class() {
    let sandbox = sandbox(3600).await;
    let client = client(&sandbox);

    let error = client.send(&push("a1unregistered")).await.unwrap_err();
    assert_eq!((error.class, error.code.as_str()), (ErrorClass::Unregistered, "Unregistered"));
    let error = client.send(&push("a1invalid")).await.unwrap_err();
    assert_eq!((error.class, error.code.as_str(), error.alert), (ErrorClass::Permanent, "BadDeviceToken", false));

    let untrusted = client_on_clock(&sandbox, "UNKNOWNKEY", Arc::default());
    let error = untrusted.send(&push(DEVICE)).await.unwrap_err();
    assert_eq!((error.class, error.code.as_str()), (ErrorClass::Permanent, "InvalidProviderToken"));
    assert!(error.alert, "refused credentials need an operator");

    sandbox.set_faults(ProviderKind::Apns, FaultSettings { error_rate: 1.0, ..Default::default() });
    let error = client.send(&push(DEVICE)).await.unwrap_err();
    assert_eq!((error.class, error.code.as_str()), (ErrorClass::Retryable, "ServiceUnavailable"));
    assert!(sandbox.record().is_empty());
}

#[tokio::test]
async fn a_token_the_sandbox_finds_expired_is_re_signed_within_the_send() {
    let sandbox = sandbox(5).await;
    // The client's first token is signed a minute ago; by its own ttl it is still good, so it is sent.
    let offset = Arc::new(AtomicI64::new(-60));
    let client = client_on_clock(&sandbox, dev_credentials::APNS_KEY_ID, Arc::clone(&offset));
    offset.store(0, Ordering::SeqCst);

    let accepted = client.send(&push(DEVICE)).await.unwrap();
    assert!(matches!(accepted, Accepted::Delivered { .. }), "{accepted:?}");
    let stats = apns_stats(&sandbox).await;
    assert_eq!((stats["rejected"].as_u64(), stats["accepted"].as_u64()), (Some(1), Some(1)), "{stats}");

    // The fresh token is kept: the next send goes through at once.
    client.send(&push(DEVICE)).await.unwrap();
    let stats = apns_stats(&sandbox).await;
    assert_eq!((stats["rejected"].as_u64(), stats["accepted"].as_u64()), (Some(1), Some(2)), "{stats}");
}
