//! Fault injection through settings, `set_faults` and the admin API: every provider answers its own retryable
//! and permanent errors, rejected requests stay out of the record, and the seeded draws repeat.

use std::collections::BTreeMap;

use herald::domain::ProviderKind;
use herald::sandbox::FaultSettings;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::{Value, json};

use super::{Sandbox, settings, spawn, spawn_configured};

/// One request to each provider; returns (HTTP status or SMTP code, provider error code or reason).
async fn send_everywhere(sandbox: &Sandbox, token: &str) -> Vec<(u16, String)> {
    let mut answers = Vec::new();

    let fcm = json!({"message": {"token": "device-1", "notification": {"body": "hi"}}});
    let response = sandbox
        .http
        .post(sandbox.url("/v1/projects/p/messages:send"))
        .bearer_auth(super::fcm::access_token(sandbox).await)
        .json(&fcm)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    let body: Value = response.json().await.unwrap();
    let code = body["error"]["details"][0]["errorCode"].as_str().unwrap_or("").to_string();
    answers.push((status, format!("{code}{}", retry_after.map(|r| format!(" retry-after={r}")).unwrap_or_default())));

    // APNs only speaks HTTP/2, so it is reached on the TLS listener, with a real provider token.
    let response = super::apns::apns(sandbox, &super::tls_client(&sandbox.handle), "abcdef0123456789")
        .json(&json!({"aps": {"alert": "hi"}}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    // APNs answers success with an empty body.
    let body: Value = response.json().await.unwrap_or(Value::Null);
    answers.push((status, body["reason"].as_str().unwrap_or("").to_string()));

    let response = sandbox
        .http
        .post(sandbox.url("/2010-04-01/Accounts/AC1/Messages.json"))
        .basic_auth("AC1", Some("secret"))
        .form(&[("To", "+821012345678"), ("From", "+15005550006"), ("Body", "hi")])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    answers.push((status, body["code"].to_string()));

    let alimtalk = json!({"account": "herald", "type": "at", "from": "0212345678", "to": "01012345678", "refkey": "r",
                          "content": {"at": {"senderkey": "k", "templatecode": "T", "message": "hi"}}});
    let response =
        sandbox.http.post(sandbox.url("/v3/message")).bearer_auth(token).json(&alimtalk).send().await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    answers.push((status, body["code"].to_string()));

    let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(sandbox.handle.smtp_addr().port())
        .build();
    let email = Message::builder()
        .from("herald@example.com".parse().unwrap())
        .to("kim@example.com".parse().unwrap())
        .subject("hi")
        .body(String::from("hi"))
        .unwrap();
    let code = match mailer.send(email).await {
        Ok(response) => response.code().to_string(),
        Err(error) => error.status().map(|code| code.to_string()).unwrap_or_else(|| error.to_string()),
    };
    answers.push((code.parse().unwrap_or(0), String::new()));
    answers
}

async fn bizppurio_token(sandbox: &Sandbox) -> String {
    let response = sandbox.http.post(sandbox.url("/v1/token")).basic_auth("herald", Some("pw")).send().await.unwrap();
    response.json::<Value>().await.unwrap()["accesstoken"].as_str().unwrap().to_string()
}

fn everywhere(faults: FaultSettings) -> BTreeMap<ProviderKind, FaultSettings> {
    [ProviderKind::Fcm, ProviderKind::Apns, ProviderKind::Smtp, ProviderKind::Twilio, ProviderKind::Bizppurio]
        .into_iter()
        .map(|kind| (kind, faults.clone()))
        .collect()
}

fn owned(answers: &[(u16, &str)]) -> Vec<(u16, String)> {
    answers.iter().map(|(s, c)| (*s, c.to_string())).collect()
}

#[tokio::test]
async fn retryable_rate_one_fails_every_provider_with_its_retryable_error() {
    let faults = FaultSettings { error_rate: 1.0, latency_min_ms: 1, latency_max_ms: 3, ..Default::default() };
    let sandbox = spawn_configured(settings(7, everywhere(faults)), "").await;
    let token = bizppurio_token(&sandbox).await;
    for _ in 0..3 {
        let answers = send_everywhere(&sandbox, &token).await;
        let expected =
            [(503, "UNAVAILABLE retry-after=1"), (503, "ServiceUnavailable"), (503, "20500"), (500, "9000"), (451, "")];
        assert_eq!(answers, owned(&expected));
    }
    assert!(sandbox.handle.record().is_empty(), "rejected requests are not recorded");
    let (_, stats) = sandbox.get_json("/_sandbox/stats").await;
    for provider in ["fcm", "apns", "smtp", "twilio"] {
        assert_eq!(
            (stats[provider]["accepted"].as_u64(), stats[provider]["rejected"].as_u64()),
            (Some(0), Some(3)),
            "{provider}"
        );
    }
    // The token request is not subject to faults and counts as accepted.
    assert_eq!((stats["bizppurio"]["accepted"].as_u64(), stats["bizppurio"]["rejected"].as_u64()), (Some(1), Some(3)));
}

#[tokio::test]
async fn permanent_rate_one_fails_every_provider_with_its_permanent_error() {
    let sandbox = spawn().await;
    for kind in
        [ProviderKind::Fcm, ProviderKind::Apns, ProviderKind::Smtp, ProviderKind::Twilio, ProviderKind::Bizppurio]
    {
        sandbox.handle.set_faults(kind, FaultSettings { permanent_error_rate: 1.0, ..Default::default() });
    }
    let token = bizppurio_token(&sandbox).await;
    let answers = send_everywhere(&sandbox, &token).await;
    let expected = [(400, "INVALID_ARGUMENT"), (400, "BadDeviceToken"), (400, "21211"), (400, "2000"), (550, "")];
    assert_eq!(answers, owned(&expected));
    assert!(sandbox.handle.record().is_empty());

    // Back to normal: everything is accepted and recorded.
    for kind in
        [ProviderKind::Fcm, ProviderKind::Apns, ProviderKind::Smtp, ProviderKind::Twilio, ProviderKind::Bizppurio]
    {
        sandbox.handle.set_faults(kind, FaultSettings::default());
    }
    let answers = send_everywhere(&sandbox, &token).await;
    assert_eq!(answers.iter().map(|a| a.0).collect::<Vec<_>>(), [200, 200, 201, 200, 250]);
    assert_eq!(sandbox.handle.record().len(), 5);
}

/// Statuses of `n` sequential FCM sends.
async fn fcm_statuses(sandbox: &Sandbox, n: usize) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(n);
    let body = json!({"message": {"token": "device-1", "notification": {"body": "hi"}}});
    let token = super::fcm::access_token(sandbox).await;
    for _ in 0..n {
        let response = sandbox
            .http
            .post(sandbox.url("/v1/projects/p/messages:send"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    statuses
}

#[tokio::test]
async fn the_seeded_rng_repeats() {
    let faults = BTreeMap::from([(
        ProviderKind::Fcm,
        FaultSettings { error_rate: 0.3, permanent_error_rate: 0.2, ..Default::default() },
    )]);
    let first = spawn_configured(settings(1234, faults.clone()), "").await;
    let second = spawn_configured(settings(1234, faults.clone()), "").await;
    let a = fcm_statuses(&first, 60).await;
    assert_eq!(a, fcm_statuses(&second, 60).await, "same seed, same outcomes");
    for status in [200, 400, 503] {
        assert!(a.contains(&status), "a 60-draw run at these rates has {status}: {a:?}");
    }
    assert_eq!(first.handle.record().len(), a.iter().filter(|s| **s == 200).count());

    // Setting the faults again restarts the stream: the same outcomes once more.
    first.handle.set_faults(ProviderKind::Fcm, faults[&ProviderKind::Fcm].clone());
    assert_eq!(a, fcm_statuses(&first, 60).await);
    let other = spawn_configured(settings(99, faults), "").await;
    assert_ne!(a, fcm_statuses(&other, 60).await, "another seed, other outcomes");
}

#[tokio::test]
async fn faults_can_be_read_and_changed_over_the_admin_api() {
    let sandbox = spawn().await;
    let (status, faults) = sandbox.get_json("/_sandbox/faults").await;
    assert_eq!(status, 200);
    assert_eq!(faults.as_object().unwrap().len(), 5);
    assert_eq!(faults["twilio"]["error_rate"], 0.0);

    let put = |provider: &str, body: Value| {
        sandbox.http.put(sandbox.url(&format!("/_sandbox/faults/{provider}"))).json(&body).send()
    };
    let response = put("fcm", json!({"error_rate": 1.0, "report_delay_ms": 5})).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(sandbox.get_json("/_sandbox/faults").await.1["fcm"]["error_rate"], 1.0);
    assert_eq!(fcm_statuses(&sandbox, 3).await, [503, 503, 503]);

    assert_eq!(put("fcm", json!({"error_rate": 3.0})).await.unwrap().status().as_u16(), 400);
    assert_eq!(put("fcm", json!({"error_rat": 1.0})).await.unwrap().status().as_u16(), 400);
    assert_eq!(put("pigeon", json!({})).await.unwrap().status().as_u16(), 404);
    assert_eq!(put("fcm", json!({})).await.unwrap().status().as_u16(), 200);
    assert_eq!(fcm_statuses(&sandbox, 2).await, [200, 200]);
}
