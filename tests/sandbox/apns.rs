//! APNs: HTTP/2 only (on the TLS listener), provider JWTs verified for real, success shapes and records,
//! header and payload validation, per-token rules. Tokens are minted with Herald's own ES256 signer on an
//! injected clock, so expiry needs no waiting.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use herald::domain::{Channel, ProviderKind};
use herald::providers::apns::{Es256ProviderToken, ProviderTokenSource};
use herald::providers::dev_credentials::{APNS_KEY_ID, APNS_KEY_P8, APNS_TEAM_ID};
use herald::sandbox::ApnsKeySettings;
use reqwest::Version;
use serde_json::{Value, json};

use super::{Sandbox, settings, spawn, spawn_configured, tls_client, tls_url};

const APNS_TOKEN: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// A provider token (`bearer <jwt>`) signed with `key_pem` as `kid` for `team`, issued at `iat`.
fn signed(key_pem: &str, kid: &str, team: &str, iat: i64) -> String {
    let ttl = Duration::from_secs(2400);
    let source = Es256ProviderToken::new(key_pem, kid, team, ttl, Arc::new(move || iat)).unwrap();
    source.current().to_str().unwrap().to_string()
}

/// A valid development-key token issued now.
fn dev_token() -> String {
    signed(APNS_KEY_P8, APNS_KEY_ID, APNS_TEAM_ID, now())
}

/// A POST to `/3/device/{token}` on the TLS listener with the usual headers and `authorization`.
fn apns_as(sandbox: &Sandbox, client: &reqwest::Client, token: &str, authorization: String) -> reqwest::RequestBuilder {
    client
        .post(tls_url(&sandbox.handle, &format!("/3/device/{token}")))
        .header("authorization", authorization)
        .header("apns-topic", "com.example.herald")
        .header("apns-push-type", "alert")
}

/// [`apns_as`] with a valid development-key token (also used by `faults.rs`).
pub(crate) fn apns(sandbox: &Sandbox, client: &reqwest::Client, token: &str) -> reqwest::RequestBuilder {
    apns_as(sandbox, client, token, dev_token())
}

/// The status and the JSON error body (`null` for a success's empty body).
async fn reason(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.bytes().await.unwrap();
    (status, if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap() })
}

/// How many APNs requests the sandbox has rejected.
async fn rejected(sandbox: &Sandbox) -> u64 {
    sandbox.get_json("/_sandbox/stats").await.1["apns"]["rejected"].as_u64().unwrap()
}

#[tokio::test]
async fn apns_send_is_accepted_over_http2_and_echoes_apns_id() {
    let sandbox = spawn().await;
    let client = tls_client(&sandbox.handle);
    let id = "123E4567-E89B-12D3-A456-426614174000";
    let payload =
        json!({"aps": {"alert": {"title": "Login", "body": "New sign-in"}}, "herald_delivery_id": "d-apns-1"});
    let response = apns(&sandbox, &client, APNS_TOKEN).header("apns-id", id).json(&payload).send().await.unwrap();
    assert_eq!((response.status().as_u16(), response.version()), (200, Version::HTTP_2));
    assert_eq!(response.headers()["apns-id"], id);
    assert!(response.bytes().await.unwrap().is_empty());

    let plain = json!({"aps": {"alert": "just text"}});
    let response = apns(&sandbox, &client, APNS_TOKEN).json(&plain).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let generated = response.headers()["apns-id"].to_str().unwrap().to_string();
    assert_eq!(generated.len(), 36);

    let record = sandbox.handle.record();
    assert_eq!(record.len(), 2);
    assert_eq!((record[0].provider, record[0].channel), (ProviderKind::Apns, Channel::Push));
    assert_eq!(record[0].to, APNS_TOKEN);
    assert_eq!((record[0].title.as_deref(), record[0].body.as_str()), (Some("Login"), "New sign-in"));
    assert_eq!((record[0].reference.as_deref(), record[0].provider_message_id.as_str()), (Some("d-apns-1"), id));
    assert_eq!((record[1].title.as_deref(), record[1].body.as_str()), (None, "just text"));
    assert_eq!(record[1].provider_message_id, generated);
}

#[tokio::test]
async fn apns_refuses_http1() {
    let sandbox = spawn().await;
    let payload = json!({"aps": {"alert": "hi"}});
    let ca = reqwest::Certificate::from_pem(sandbox.handle.ca_pem().as_bytes()).unwrap();
    let http1 = reqwest::Client::builder().no_proxy().add_root_certificate(ca).http1_only().build().unwrap();
    let over_tls = apns(&sandbox, &http1, APNS_TOKEN).json(&payload).send().await.unwrap();
    assert_eq!(over_tls.version(), Version::HTTP_11);
    assert_eq!(reason(over_tls).await, (505, json!({"reason": "HTTP2Required"})));
    let plain_url = sandbox.url(&format!("/3/device/{APNS_TOKEN}"));
    let plain = sandbox
        .http
        .post(plain_url)
        .header("authorization", dev_token())
        .header("apns-topic", "com.example.herald")
        .json(&payload)
        .send()
        .await
        .unwrap();
    assert_eq!(reason(plain).await, (505, json!({"reason": "HTTP2Required"})));
    assert!(sandbox.handle.record().is_empty());
    assert_eq!(rejected(&sandbox).await, 2);
}

#[tokio::test]
async fn apns_verifies_provider_tokens() {
    let sandbox = spawn().await;
    let client = tls_client(&sandbox.handle);
    let url = tls_url(&sandbox.handle, &format!("/3/device/{APNS_TOKEN}"));
    let payload = json!({"aps": {"alert": "hi"}});
    let send = |authorization: Option<String>| {
        let mut request = client.post(&url).header("apns-topic", "com.example.herald").json(&payload);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        async { reason(request.send().await.unwrap()).await }
    };

    assert_eq!(send(None).await, (403, json!({"reason": "MissingProviderToken"})));
    let good = dev_token();
    let (signed_part, signature) = good.rsplit_once('.').unwrap();
    let flipped = if signature.starts_with('A') { "B" } else { "A" };
    let invalid = [
        "bearer not-a-jwt".to_string(),
        "basic c2FuZGJveA==".to_string(),
        signed(APNS_KEY_P8, "UNKNOWNKEY", APNS_TEAM_ID, now()),
        signed(APNS_KEY_P8, APNS_KEY_ID, "OTHERTEAM", now()),
        format!("{signed_part}.{flipped}{}", &signature[1..]),
        // Issued ten minutes in the future: more than the minute of clock skew allowed.
        signed(APNS_KEY_P8, APNS_KEY_ID, APNS_TEAM_ID, now() + 600),
    ];
    for authorization in invalid {
        assert_eq!(send(Some(authorization.clone())).await, (403, json!({"reason": "InvalidProviderToken"})));
    }
    let stale = signed(APNS_KEY_P8, APNS_KEY_ID, APNS_TEAM_ID, now() - 3700);
    assert_eq!(send(Some(stale)).await, (403, json!({"reason": "ExpiredProviderToken"})));
    assert!(sandbox.handle.record().is_empty());
    assert_eq!(rejected(&sandbox).await, 8);

    assert_eq!(send(Some(good)).await, (200, Value::Null));
}

#[tokio::test]
async fn configured_keys_and_max_age_are_honoured() {
    let key = rcgen::KeyPair::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("AuthKey_TEAMKEY123.p8");
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let mut settings = settings(42, BTreeMap::new());
    settings.apns_keys = vec![ApnsKeySettings {
        key_id: "TEAMKEY123".into(),
        team_id: "TEAM123456".into(),
        key_file: key_file.to_string_lossy().into_owned(),
    }];
    settings.apns_token_max_age_s = 30;
    let sandbox = spawn_configured(settings, "").await;
    let client = tls_client(&sandbox.handle);
    let payload = json!({"aps": {"alert": "hi"}});
    let send = |authorization: String| {
        let request = apns_as(&sandbox, &client, APNS_TOKEN, authorization).json(&payload);
        async { reason(request.send().await.unwrap()).await }
    };
    let pem = key.serialize_pem();
    assert_eq!(send(signed(&pem, "TEAMKEY123", "TEAM123456", now())).await, (200, Value::Null));
    let stale = signed(&pem, "TEAMKEY123", "TEAM123456", now() - 60);
    assert_eq!(send(stale).await, (403, json!({"reason": "ExpiredProviderToken"})));
    // The key id is bound to its own key: the development key cannot sign for it.
    let forged = signed(APNS_KEY_P8, "TEAMKEY123", "TEAM123456", now());
    assert_eq!(send(forged).await, (403, json!({"reason": "InvalidProviderToken"})));
    assert_eq!(send(dev_token()).await, (200, Value::Null));
}

#[tokio::test]
async fn apns_checks_headers_and_payload() {
    let sandbox = spawn().await;
    let client = tls_client(&sandbox.handle);
    let payload = json!({"aps": {"alert": "hi"}});
    let url = tls_url(&sandbox.handle, &format!("/3/device/{APNS_TOKEN}"));

    let no_topic = client.post(&url).header("authorization", dev_token()).json(&payload).send().await.unwrap();
    assert_eq!(reason(no_topic).await, (400, json!({"reason": "MissingTopic"})));
    let not_hex = apns(&sandbox, &client, "zz-not-hex").json(&payload).send().await.unwrap();
    assert_eq!(reason(not_hex).await, (400, json!({"reason": "BadDeviceToken"})));
    let no_aps = apns(&sandbox, &client, APNS_TOKEN).json(&json!({"custom": 1})).send().await.unwrap();
    assert_eq!(reason(no_aps).await, (400, json!({"reason": "PayloadEmpty"})));
    let empty = apns(&sandbox, &client, APNS_TOKEN).send().await.unwrap();
    assert_eq!(reason(empty).await, (400, json!({"reason": "PayloadEmpty"})));
    let big = json!({"aps": {"alert": "x".repeat(4100)}});
    let too_big = apns(&sandbox, &client, APNS_TOKEN).json(&big).send().await.unwrap();
    assert_eq!(reason(too_big).await, (413, json!({"reason": "PayloadTooLarge"})));
    assert!(sandbox.handle.record().is_empty());
}

#[tokio::test]
async fn apns_token_rules() {
    let sandbox = spawn().await;
    let client = tls_client(&sandbox.handle);
    let payload = json!({"aps": {"alert": "hi"}});
    let gone = apns(&sandbox, &client, "abcunregistered").json(&payload).send().await.unwrap();
    let (status, body) = reason(gone).await;
    assert_eq!((status, body["reason"].as_str()), (410, Some("Unregistered")));
    assert!(body["timestamp"].as_i64().unwrap() > 1_600_000_000_000, "timestamp in ms: {body}");
    let invalid = apns(&sandbox, &client, "abcinvalid").json(&payload).send().await.unwrap();
    assert_eq!(reason(invalid).await, (400, json!({"reason": "BadDeviceToken"})));
    assert!(sandbox.handle.record().is_empty());
}
