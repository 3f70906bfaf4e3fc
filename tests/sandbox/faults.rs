//! Fault injection through settings, `set_faults` and the admin API: every provider answers its own retryable,
//! permanent, rate-limit and unregistered errors, rejected requests stay out of the record, the request log shows
//! what was drawn, and the seeded draws repeat.

use std::collections::BTreeMap;

use herald::domain::ProviderKind;
use herald::sandbox::{FaultSettings, InjectedFault, RequestEntry};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::{Value, json};

use super::{Sandbox, settings, spawn, spawn_configured};

/// ` retry-after=N` (and for Bizppurio ` limit=L remaining=R reset=S`) when the answer carries those headers.
fn waits(headers: &reqwest::header::HeaderMap) -> String {
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_string());
    let mut text = String::new();
    if let Some(value) = header("retry-after") {
        text.push_str(&format!(" retry-after={value}"));
    }
    if let Some(reset) = header("ratelimit-reset") {
        let (limit, remaining) = (header("ratelimit-limit").unwrap(), header("ratelimit-remaining").unwrap());
        text.push_str(&format!(" limit={limit} remaining={remaining} reset={reset}"));
    }
    text
}

/// One request to each provider; returns (HTTP status or SMTP code, provider error code or reason, then the
/// wait headers, see [`waits`]).
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
    let waits_text = waits(response.headers());
    let body: Value = response.json().await.unwrap();
    let code = body["error"]["details"][0]["errorCode"].as_str().unwrap_or("").to_string();
    answers.push((status, format!("{code}{waits_text}")));

    // APNs only speaks HTTP/2, so it is reached on the TLS listener, with a real provider token.
    let response = super::apns::apns(sandbox, &super::tls_client(&sandbox.handle), "abcdef0123456789")
        .json(&json!({"aps": {"alert": "hi"}}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let waits_text = waits(response.headers());
    // APNs answers success with an empty body.
    let body: Value = response.json().await.unwrap_or(Value::Null);
    answers.push((status, format!("{}{waits_text}", body["reason"].as_str().unwrap_or(""))));

    let response = sandbox
        .http
        .post(sandbox.url("/2010-04-01/Accounts/AC1/Messages.json"))
        .basic_auth("AC1", Some("secret"))
        .form(&[("To", "+821012345678"), ("From", "+15005550006"), ("Body", "hi")])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let waits_text = waits(response.headers());
    let body: Value = response.json().await.unwrap();
    answers.push((status, format!("{}{waits_text}", body["code"])));

    let alimtalk = json!({"account": "herald", "type": "at", "from": "0212345678", "to": "01012345678", "refkey": "r",
                          "content": {"at": {"senderkey": "k", "templatecode": "T", "message": "hi"}}});
    let response =
        sandbox.http.post(sandbox.url("/v3/message")).bearer_auth(token).json(&alimtalk).send().await.unwrap();
    let status = response.status().as_u16();
    let waits_text = waits(response.headers());
    let body: Value = response.json().await.unwrap();
    answers.push((status, format!("{}{waits_text}", body["code"])));

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

/// Statuses of `n` sequential FCM sends, the `i`th with the body `body(i)`.
async fn fcm_sends(sandbox: &Sandbox, n: usize, body: impl Fn(usize) -> Value) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(n);
    let token = super::fcm::access_token(sandbox).await;
    for i in 0..n {
        let response = sandbox
            .http
            .post(sandbox.url("/v1/projects/p/messages:send"))
            .bearer_auth(&token)
            .json(&body(i))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    statuses
}

/// Statuses of `n` sequential FCM sends.
async fn fcm_statuses(sandbox: &Sandbox, n: usize) -> Vec<u16> {
    fcm_sends(sandbox, n, |_| json!({"message": {"token": "device-1", "notification": {"body": "hi"}}})).await
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

const ALL: [ProviderKind; 5] =
    [ProviderKind::Fcm, ProviderKind::Apns, ProviderKind::Smtp, ProviderKind::Twilio, ProviderKind::Bizppurio];

#[tokio::test]
async fn rate_limit_rate_one_answers_every_provider_429_with_its_wait() {
    let faults = FaultSettings { rate_limit_rate: 1.0, retry_after_s: 2, ..Default::default() };
    let sandbox = spawn_configured(settings(7, everywhere(faults)), "").await;
    let token = bizppurio_token(&sandbox).await;
    let answers = send_everywhere(&sandbox, &token).await;
    let expected = [
        (429, "QUOTA_EXCEEDED retry-after=2"),
        (429, "TooManyRequests retry-after=2"),
        (429, "20429 retry-after=2"),
        (429, "5002 limit=1000 remaining=0 reset=2"),
        (451, ""),
    ];
    assert_eq!(answers, owned(&expected));
    assert!(sandbox.handle.record().is_empty());

    // The storm ends when the faults are reset.
    for kind in ALL {
        sandbox.handle.set_faults(kind, FaultSettings::default());
    }
    let answers = send_everywhere(&sandbox, &token).await;
    assert_eq!(answers.iter().map(|a| a.0).collect::<Vec<_>>(), [200, 200, 201, 200, 250]);
}

#[tokio::test]
async fn retryable_fcm_answers_carry_the_configured_retry_after() {
    let sandbox = spawn().await;
    sandbox
        .handle
        .set_faults(ProviderKind::Fcm, FaultSettings { error_rate: 1.0, retry_after_s: 5, ..Default::default() });
    let token = bizppurio_token(&sandbox).await;
    assert_eq!(send_everywhere(&sandbox, &token).await[0], (503, "UNAVAILABLE retry-after=5".to_string()));
}

#[tokio::test]
async fn unregistered_rate_one_answers_every_provider_dead_recipient_error() {
    let (hook, mut received) = super::webhook_receiver().await;
    let faults = FaultSettings { unregistered_rate: 1.0, ..Default::default() };
    let sandbox = spawn_configured(settings(7, everywhere(faults)), &format!("http://{hook}/webhooks/alimtalk")).await;
    let token = bizppurio_token(&sandbox).await;
    let answers = send_everywhere(&sandbox, &token).await;
    // Alimtalk only learns of an unreachable recipient after accepting: its report fails instead.
    let expected = [(404, "UNREGISTERED"), (410, "Unregistered"), (400, "21614"), (200, "1000"), (550, "")];
    assert_eq!(answers, owned(&expected));
    let record = sandbox.handle.record();
    assert_eq!(record.iter().map(|m| m.provider).collect::<Vec<_>>(), [ProviderKind::Bizppurio]);
    let report: Value = serde_json::from_slice(&super::next_received(&mut received).await.body).unwrap();
    assert_eq!((report["REFKEY"].as_str(), report["RESULT"].as_str()), (Some("r"), Some("7308")));
}

/// Statuses of `n` sequential FCM sends, each carrying `herald_delivery_id` = `d{i}`.
async fn fcm_referenced(sandbox: &Sandbox, n: usize) -> Vec<u16> {
    fcm_sends(
        sandbox,
        n,
        |i| json!({"message": {"token": "device-1", "data": {"herald_delivery_id": format!("d{i}")}}}),
    )
    .await
}

#[tokio::test]
async fn every_share_repeats_with_the_seed() {
    let faults = BTreeMap::from([(
        ProviderKind::Fcm,
        FaultSettings {
            error_rate: 0.2,
            permanent_error_rate: 0.2,
            rate_limit_rate: 0.2,
            unregistered_rate: 0.2,
            ..Default::default()
        },
    )]);
    let first = spawn_configured(settings(77, faults.clone()), "").await;
    let second = spawn_configured(settings(77, faults), "").await;
    let a = fcm_referenced(&first, 80).await;
    assert_eq!(a, fcm_referenced(&second, 80).await);
    for status in [200, 400, 404, 429, 503] {
        assert!(a.contains(&status), "an 80-draw run at these rates has {status}: {a:?}");
    }
    // The request log saw the same, with the fault drawn and the delivery each answer was for.
    let log = first.handle.requests(ProviderKind::Fcm);
    assert_eq!(log.iter().map(|e| e.status).collect::<Vec<_>>(), a);
    let reference = |i: usize| Some(format!("d{i}"));
    assert!(log.iter().enumerate().all(|(i, e)| e.reference == reference(i)));
    let fault_of = |status: u16| match status {
        503 => Some(InjectedFault::Retryable),
        400 => Some(InjectedFault::Permanent),
        429 => Some(InjectedFault::RateLimited),
        404 => Some(InjectedFault::Unregistered),
        _ => None,
    };
    assert!(log.iter().all(|e| e.fault == fault_of(e.status)), "{log:?}");
    assert!(log.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
}

#[tokio::test]
async fn the_request_log_is_served_filtered_and_cleared() {
    let sandbox = spawn().await;
    sandbox.handle.set_faults(ProviderKind::Fcm, FaultSettings { rate_limit_rate: 1.0, ..Default::default() });
    assert_eq!(fcm_referenced(&sandbox, 2).await, [429, 429]);
    sandbox.handle.set_faults(ProviderKind::Fcm, FaultSettings::default());
    assert_eq!(fcm_referenced(&sandbox, 1).await, [200]);
    let token = bizppurio_token(&sandbox).await;
    send_everywhere(&sandbox, &token).await;

    let (status, fcm) = sandbox.get_json("/_sandbox/requests?provider=fcm").await;
    assert_eq!(status, 200);
    let fcm: Vec<RequestEntry> = serde_json::from_value(fcm).unwrap();
    assert_eq!(fcm, sandbox.handle.requests(ProviderKind::Fcm));
    let shown: Vec<_> = fcm.iter().map(|e| (e.status, e.fault, e.reference.as_deref())).collect();
    assert_eq!(
        shown,
        [
            (429, Some(InjectedFault::RateLimited), Some("d0")),
            (429, Some(InjectedFault::RateLimited), Some("d1")),
            (200, None, Some("d0")),
            (200, None, None),
        ]
    );
    let (_, d1) = sandbox.get_json("/_sandbox/requests?reference=d1").await;
    assert_eq!(d1.as_array().unwrap().len(), 1);
    // Four FCM requests and one each to APNs, Twilio and Bizppurio: SMTP and the token request are not logged.
    let (_, all) = sandbox.get_json("/_sandbox/requests").await;
    assert_eq!(all.as_array().unwrap().len(), 4 + 3);
    assert_eq!(sandbox.get_json("/_sandbox/requests?provider=pigeon").await.0, 400);
    assert_eq!(sandbox.get_json("/_sandbox/requests?after=soon").await.0, 400);
    let (_, page) = sandbox.get_json("/_sandbox/requests?after=1&limit=2").await;
    assert_eq!(page.as_array().unwrap().len(), 2, "a page of the six logged after the first");

    let cleared: Value =
        sandbox.http.delete(sandbox.url("/_sandbox/requests")).send().await.unwrap().json().await.unwrap();
    assert_eq!(cleared["cleared"], 7);
    assert!(sandbox.handle.requests(ProviderKind::Fcm).is_empty());
}

#[tokio::test]
async fn the_new_fault_fields_are_validated_over_the_admin_api() {
    let sandbox = spawn().await;
    let put = |body: Value| sandbox.http.put(sandbox.url("/_sandbox/faults/twilio")).json(&body).send();
    for bad in [
        json!({"rate_limit_rate": 1.5}),
        json!({"unregistered_rate": -0.1}),
        json!({"report_duplicate_rate": 2}),
        json!({"report_drop_rate": 1.01}),
        json!({"report_delay_ms": 600_000, "report_jitter_ms": 1}),
        json!({"retry_after_s": 3601}),
        json!({"retry_after_s": -1}),
    ] {
        assert_eq!(put(bad.clone()).await.unwrap().status().as_u16(), 400, "{bad}");
    }
    let good = json!({"rate_limit_rate": 0.5, "retry_after_s": 2, "unregistered_rate": 0.1, "report_jitter_ms": 50,
                      "report_duplicate_rate": 0.5, "report_drop_rate": 0.1});
    assert_eq!(put(good).await.unwrap().status().as_u16(), 200);
    let (_, faults) = sandbox.get_json("/_sandbox/faults").await;
    assert_eq!(
        (faults["twilio"]["retry_after_s"].as_u64(), faults["twilio"]["report_jitter_ms"].as_u64()),
        (Some(2), Some(50))
    );
    // Omitted fields take their defaults: a wait of one second.
    assert_eq!(faults["fcm"]["retry_after_s"], 1);
}
