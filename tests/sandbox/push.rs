//! FCM and APNs: success shapes and records, auth, validation and per-token rules.

use herald::domain::{Channel, ProviderKind};
use serde_json::{Value, json};

use super::fcm::access_token;
use super::{Sandbox, spawn};

const FCM_PATH: &str = "/v1/projects/herald-dev/messages:send";
const APNS_TOKEN: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

async fn fcm(sandbox: &Sandbox, bearer: Option<&str>, body: &Value) -> (u16, Value) {
    let mut request = sandbox.http.post(sandbox.url(FCM_PATH)).json(body);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn fcm_error_code(body: &Value) -> &str {
    body["error"]["details"][0]["errorCode"].as_str().unwrap_or_default()
}

fn fcm_message(token: &str) -> Value {
    json!({"message": {
        "token": token,
        "notification": {"title": "Order shipped", "body": "Your order is on its way"},
        "data": {"herald_delivery_id": "d-fcm-1", "kind": "order"},
        "android": {"priority": "HIGH", "ttl": "3600s"},
    }})
}

#[tokio::test]
async fn fcm_send_is_accepted_and_recorded() {
    let sandbox = spawn().await;
    let token = access_token(&sandbox).await;
    let (status, body) = fcm(&sandbox, Some(&token), &fcm_message("device-token-1")).await;
    assert_eq!(status, 200, "{body}");
    let name = body["name"].as_str().unwrap();
    assert!(name.starts_with("projects/herald-dev/messages/"), "{name}");

    let record = sandbox.handle.record();
    assert_eq!(record.len(), 1);
    let message = &record[0];
    assert_eq!((message.seq, message.channel, message.provider), (1, Channel::Push, ProviderKind::Fcm));
    assert_eq!(message.to, "device-token-1");
    assert_eq!(message.title.as_deref(), Some("Order shipped"));
    assert_eq!(message.body, "Your order is on its way");
    assert_eq!(message.reference.as_deref(), Some("d-fcm-1"));
    assert_eq!(message.provider_message_id, name);
    assert_eq!(message.html, None);
}

#[tokio::test]
async fn fcm_topics_and_validate_only() {
    let sandbox = spawn().await;
    let token = access_token(&sandbox).await;
    let topic = json!({"message": {"topic": "news", "notification": {"body": "hi"}}});
    assert_eq!(fcm(&sandbox, Some(&token), &topic).await.0, 200);
    let dry_run = json!({"validate_only": true, "message": {"token": "abc", "notification": {"body": "hi"}}});
    let (status, body) = fcm(&sandbox, Some(&token), &dry_run).await;
    assert_eq!((status, body["name"].as_str()), (200, Some("projects/herald-dev/messages/fake_message_id")));
    let record = sandbox.handle.record();
    assert_eq!(record.len(), 1, "validate_only is not a send");
    assert_eq!(record[0].to, "/topics/news");
}

#[tokio::test]
async fn fcm_requires_a_bearer_token() {
    let sandbox = spawn().await;
    for bearer in [None, Some("")] {
        let (status, body) = fcm(&sandbox, bearer, &fcm_message("device-token-1")).await;
        assert_eq!(status, 401);
        assert_eq!(
            (body["error"]["code"].as_u64(), body["error"]["status"].as_str()),
            (Some(401), Some("UNAUTHENTICATED"))
        );
    }
    assert!(sandbox.handle.record().is_empty());
}

#[tokio::test]
async fn fcm_refuses_invalid_messages() {
    let sandbox = spawn().await;
    let token = access_token(&sandbox).await;
    let cases = [
        json!({"message": {"notification": {"body": "no target"}}}),
        json!({"message": {"token": "a", "topic": "b"}}),
        json!({"message": {"token": "a", "data": {"count": 3}}}),
        json!({"message": {"token": "a", "data": {"big": "x".repeat(4100)}}}),
        json!({"message": {"token": "a", "android": {"ttl": "one hour"}}}),
        json!({"message": {"token": "a", "surprise": true}}),
        json!({"msg": {}}),
    ];
    for case in &cases {
        let (status, body) = fcm(&sandbox, Some(&token), case).await;
        assert_eq!(status, 400, "{case}");
        assert_eq!(body["error"]["status"], "INVALID_ARGUMENT");
        assert_eq!(fcm_error_code(&body), "INVALID_ARGUMENT");
        assert_eq!(body["error"]["details"][0]["@type"], "type.googleapis.com/google.firebase.fcm.v1.FcmError");
    }
    let response = sandbox.http.post(sandbox.url(FCM_PATH)).bearer_auth(&token).body("{not json").send().await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert!(sandbox.handle.record().is_empty());
}

#[tokio::test]
async fn fcm_token_rules() {
    let sandbox = spawn().await;
    let token = access_token(&sandbox).await;
    let (status, body) = fcm(&sandbox, Some(&token), &fcm_message("token-unregistered-7")).await;
    assert_eq!((status, fcm_error_code(&body)), (404, "UNREGISTERED"));
    let (status, body) = fcm(&sandbox, Some(&token), &fcm_message("token-invalid-7")).await;
    assert_eq!((status, fcm_error_code(&body)), (400, "INVALID_ARGUMENT"));
    assert!(sandbox.handle.record().is_empty());
}

fn apns(sandbox: &Sandbox, token: &str) -> reqwest::RequestBuilder {
    sandbox
        .http
        .post(sandbox.url(&format!("/3/device/{token}")))
        .header("authorization", "bearer eyJhbGciOiJFUzI1NiJ9.e30.sig")
        .header("apns-topic", "com.example.herald")
        .header("apns-push-type", "alert")
}

async fn reason(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn apns_send_is_accepted_and_echoes_apns_id() {
    let sandbox = spawn().await;
    let id = "123E4567-E89B-12D3-A456-426614174000";
    let payload =
        json!({"aps": {"alert": {"title": "Login", "body": "New sign-in"}}, "herald_delivery_id": "d-apns-1"});
    let response = apns(&sandbox, APNS_TOKEN).header("apns-id", id).json(&payload).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["apns-id"], id);
    assert!(response.bytes().await.unwrap().is_empty());

    let plain = json!({"aps": {"alert": "just text"}});
    let response = apns(&sandbox, APNS_TOKEN).json(&plain).send().await.unwrap();
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
async fn apns_checks_auth_headers_and_payload() {
    let sandbox = spawn().await;
    let payload = json!({"aps": {"alert": "hi"}});
    let url = sandbox.url(&format!("/3/device/{APNS_TOKEN}"));

    let no_auth = sandbox.http.post(&url).header("apns-topic", "com.x").json(&payload).send().await.unwrap();
    assert_eq!(reason(no_auth).await, (403, json!({"reason": "MissingProviderToken"})));
    let no_topic = sandbox.http.post(&url).header("authorization", "bearer x").json(&payload).send().await.unwrap();
    assert_eq!(reason(no_topic).await, (400, json!({"reason": "MissingTopic"})));

    let not_hex = apns(&sandbox, "zz-not-hex").json(&payload).send().await.unwrap();
    assert_eq!(reason(not_hex).await, (400, json!({"reason": "BadDeviceToken"})));
    let no_aps = apns(&sandbox, APNS_TOKEN).json(&json!({"custom": 1})).send().await.unwrap();
    assert_eq!(reason(no_aps).await, (400, json!({"reason": "PayloadEmpty"})));
    let empty = apns(&sandbox, APNS_TOKEN).send().await.unwrap();
    assert_eq!(reason(empty).await, (400, json!({"reason": "PayloadEmpty"})));
    let big = json!({"aps": {"alert": "x".repeat(4100)}});
    let too_big = apns(&sandbox, APNS_TOKEN).json(&big).send().await.unwrap();
    assert_eq!(reason(too_big).await, (413, json!({"reason": "PayloadTooLarge"})));
    assert!(sandbox.handle.record().is_empty());
}

#[tokio::test]
async fn apns_token_rules() {
    let sandbox = spawn().await;
    let payload = json!({"aps": {"alert": "hi"}});
    let (status, body) = reason(apns(&sandbox, "abcunregistered").json(&payload).send().await.unwrap()).await;
    assert_eq!((status, body["reason"].as_str()), (410, Some("Unregistered")));
    assert!(body["timestamp"].as_i64().unwrap() > 1_600_000_000_000, "timestamp in ms: {body}");
    let invalid = apns(&sandbox, "abcinvalid").json(&payload).send().await.unwrap();
    assert_eq!(reason(invalid).await, (400, json!({"reason": "BadDeviceToken"})));
    assert!(sandbox.handle.record().is_empty());
}
