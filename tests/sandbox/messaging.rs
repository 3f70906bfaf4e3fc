//! Twilio SMS and Bizppurio alimtalk: success shapes, records, auth, validation, per-number rules, the signed
//! status callback and delivery report arriving at a test webhook server, token expiry, and report chaos
//! (duplicates, drops, reordering) with its counters and report log.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use std::collections::BTreeMap;

use herald::domain::{Channel, ProviderKind};
use herald::sandbox::{FaultSettings, ReportStatus};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha1::Sha1;

use super::{Received, Sandbox, eventually, next_received, spawn, spawn_with_reports, webhook_receiver};

const SID: &str = "AC00000000000000000000000000000000";
const AUTH_TOKEN: &str = "sandbox-auth-token";

fn twilio_url(sandbox: &Sandbox) -> String {
    sandbox.url(&format!("/2010-04-01/Accounts/{SID}/Messages.json"))
}

async fn twilio(sandbox: &Sandbox, user: &str, params: &[(&str, &str)]) -> (u16, Value) {
    let response =
        sandbox.http.post(twilio_url(sandbox)).basic_auth(user, Some(AUTH_TOKEN)).form(params).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Twilio's documented algorithm, written independently of the sandbox's.
fn expected_signature(url: &str, body: &[u8]) -> String {
    let mut params: Vec<(String, String)> = serde_urlencoded::from_bytes(body).unwrap();
    params.sort();
    let mut mac = Hmac::<Sha1>::new_from_slice(AUTH_TOKEN.as_bytes()).unwrap();
    mac.update(url.as_bytes());
    for (key, value) in &params {
        mac.update(key.as_bytes());
        mac.update(value.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn twilio_send_is_accepted_and_the_callback_is_signed() {
    let (hook, mut received) = webhook_receiver().await;
    let sandbox = spawn().await;
    let callback = format!("http://{hook}/webhooks/sms?delivery_id=d-sms-1");
    let params = [
        ("To", "+821012345678"),
        ("From", "+15005550006"),
        ("Body", "Your code is 1234"),
        ("StatusCallback", &callback),
    ];
    let (status, body) = twilio(&sandbox, SID, &params).await;
    assert_eq!(status, 201, "{body}");
    let sid = body["sid"].as_str().unwrap().to_string();
    assert!(sid.starts_with("SM") && sid.len() == 34 && sid[2..].bytes().all(|b| b.is_ascii_hexdigit()), "{sid}");
    assert_eq!(
        (body["status"].as_str(), body["to"].as_str(), body["account_sid"].as_str()),
        (Some("queued"), Some("+821012345678"), Some(SID))
    );

    let record = sandbox.handle.record();
    assert_eq!(record.len(), 1);
    assert_eq!((record[0].channel, record[0].provider), (Channel::Sms, ProviderKind::Twilio));
    assert_eq!(
        (record[0].to.as_str(), record[0].body.as_str(), record[0].title.as_deref()),
        ("+821012345678", "Your code is 1234", None)
    );
    assert_eq!(
        (record[0].reference.as_deref(), record[0].provider_message_id.as_str()),
        (Some("d-sms-1"), sid.as_str())
    );

    let hit = next_received(&mut received).await;
    assert_eq!(hit.uri, "/webhooks/sms?delivery_id=d-sms-1");
    let signature = hit.headers["x-twilio-signature"].to_str().unwrap();
    assert_eq!(signature, expected_signature(&callback, &hit.body));
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&hit.body).unwrap();
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    assert_eq!(field("MessageSid"), Some(sid.as_str()));
    assert_eq!((field("MessageStatus"), field("SmsStatus")), (Some("delivered"), Some("delivered")));
    assert_eq!(
        (field("To"), field("From"), field("AccountSid")),
        (Some("+821012345678"), Some("+15005550006"), Some(SID))
    );
}

#[tokio::test]
async fn twilio_undeliverable_numbers_get_an_undelivered_callback() {
    let (hook, mut received) = webhook_receiver().await;
    let sandbox = spawn().await;
    let callback = format!("http://{hook}/webhooks/sms");
    let params = [("To", "+8210undeliverable"), ("From", "+15005550006"), ("Body", "x"), ("StatusCallback", &callback)];
    assert_eq!(twilio(&sandbox, SID, &params).await.0, 201);
    let hit = next_received(&mut received).await;
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&hit.body).unwrap();
    assert!(form.contains(&("MessageStatus".into(), "undelivered".into())), "{form:?}");
    assert!(form.contains(&("ErrorCode".into(), "30003".into())), "{form:?}");
    assert_eq!(hit.headers["x-twilio-signature"].to_str().unwrap(), expected_signature(&callback, &hit.body));
}

#[tokio::test]
async fn twilio_requires_basic_auth_for_the_account() {
    let sandbox = spawn().await;
    let params = [("To", "+821012345678"), ("From", "+15005550006"), ("Body", "x")];
    let (status, body) = twilio(&sandbox, "ACsomeoneelse", &params).await;
    assert_eq!((status, body["code"].as_u64()), (401, Some(20003)));
    let response = sandbox.http.post(twilio_url(&sandbox)).form(&params).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert!(response.headers().contains_key("www-authenticate"));
    assert!(sandbox.handle.record().is_empty());
}

#[tokio::test]
async fn twilio_validation_and_number_rules() {
    let sandbox = spawn().await;
    let send = |to: &'static str| [("To", to), ("From", "+15005550006"), ("Body", "x")];
    for (to, status, code) in [("01012345678", 400, 21211), ("+8210invalid", 400, 21211), ("+821012optout", 400, 21610)]
    {
        let (got, body) = twilio(&sandbox, SID, &send(to)).await;
        assert_eq!((got, body["code"].as_u64()), (status, Some(code)), "{to}: {body}");
        assert_eq!(body["status"].as_u64(), Some(status as u64));
    }
    let (status, body) = twilio(&sandbox, SID, &[("To", "+821012345678"), ("From", "+15005550006")]).await;
    assert_eq!((status, body["code"].as_u64()), (400, Some(21602)));
    let (status, body) = twilio(&sandbox, SID, &[("From", "+15005550006"), ("Body", "x")]).await;
    assert_eq!((status, body["code"].as_u64()), (400, Some(21604)));
    assert!(sandbox.handle.record().is_empty());
}

async fn biz_token(sandbox: &Sandbox) -> String {
    let response = sandbox
        .http
        .post(sandbox.url("/v1/token"))
        .basic_auth("herald", Some("sandbox-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "Bearer");
    let expired = body["expired"].as_str().unwrap();
    assert!(expired.len() == 14 && expired.bytes().all(|b| b.is_ascii_digit()), "{expired}");
    body["accesstoken"].as_str().unwrap().to_string()
}

fn alimtalk(to: &str, refkey: &str) -> Value {
    json!({
        "account": "herald", "type": "at", "from": "0212345678", "to": to, "refkey": refkey,
        "content": {"at": {"senderkey": "sandbox-sender-key", "templatecode": "ORDER_SHIPPED",
                           "message": "주문하신 상품이 발송되었습니다.",
                           "button": [{"name": "배송 조회", "type": "WL", "url_mobile": "https://example.com/t"}]}},
    })
}

async fn biz_send(sandbox: &Sandbox, token: &str, body: &Value) -> (u16, Value) {
    let response = sandbox.http.post(sandbox.url("/v3/message")).bearer_auth(token).json(body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn bizppurio_send_is_accepted_and_the_report_arrives() {
    let (hook, mut received) = webhook_receiver().await;
    let sandbox = spawn_with_reports(&format!("http://{hook}/webhooks/alimtalk")).await;
    let token = biz_token(&sandbox).await;
    let (status, body) = biz_send(&sandbox, &token, &alimtalk("01012345678", "d-at-1")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["code"].as_u64(), body["description"].as_str(), body["refkey"].as_str()),
        (Some(1000), Some("Success"), Some("d-at-1"))
    );
    let messagekey = body["messagekey"].as_str().unwrap().to_string();

    let record = sandbox.handle.record();
    assert_eq!(record.len(), 1);
    assert_eq!((record[0].channel, record[0].provider), (Channel::Alimtalk, ProviderKind::Bizppurio));
    assert_eq!((record[0].to.as_str(), record[0].body.as_str()), ("01012345678", "주문하신 상품이 발송되었습니다."));
    assert_eq!(
        (record[0].reference.as_deref(), record[0].provider_message_id.as_str()),
        (Some("d-at-1"), messagekey.as_str())
    );

    let hit = next_received(&mut received).await;
    assert_eq!(hit.uri, "/webhooks/alimtalk");
    let report: Value = serde_json::from_slice(&hit.body).unwrap();
    assert_eq!((report["REFKEY"].as_str(), report["RESULT"].as_str()), (Some("d-at-1"), Some("7000")));
    assert_eq!(
        (report["CMSGID"].as_str(), report["MSGID"].as_str()),
        (Some(messagekey.as_str()), Some(messagekey.as_str()))
    );
    assert_eq!(
        (report["PHONE"].as_str(), report["MEDIA"].as_str(), report["KAORES"].as_str()),
        (Some("01012345678"), Some("KAT"), Some("1000"))
    );
    assert!(report["UNIXTIME"].as_str().unwrap().parse::<i64>().unwrap() > 1_600_000_000);
}

#[tokio::test]
async fn bizppurio_undeliverable_falls_back_to_sms_when_asked() {
    let (hook, mut received) = webhook_receiver().await;
    let sandbox = spawn_with_reports(&format!("http://{hook}/webhooks/alimtalk")).await;
    let token = biz_token(&sandbox).await;
    let mut body = alimtalk("010undeliverable", "d-at-2");
    body["resend"] = json!({"first": "sms"});
    body["recontent"] = json!({"sms": {"message": "fallback"}});
    assert_eq!(biz_send(&sandbox, &token, &body).await.0, 200);
    let report: Value = serde_json::from_slice(&next_received(&mut received).await.body).unwrap();
    assert_eq!(
        (report["RESULT"].as_str(), report["MEDIA"].as_str(), report["RESEND_FLAG"].as_str()),
        (Some("4100"), Some("SMS"), Some("Y"))
    );
}

#[tokio::test]
async fn bizppurio_checks_tokens_and_messages() {
    let sandbox = spawn().await;
    let response = sandbox.http.post(sandbox.url("/v1/token")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);

    let (status, body) = biz_send(&sandbox, "never-issued", &alimtalk("01012345678", "r")).await;
    assert_eq!((status, body["code"].as_u64()), (401, Some(3006)));

    let token = biz_token(&sandbox).await;
    let mut wrong_type = alimtalk("01012345678", "r");
    wrong_type["type"] = json!("ft");
    let long_refkey = alimtalk("01012345678", &"k".repeat(33));
    let mut long_message = alimtalk("01012345678", "r");
    long_message["content"]["at"]["message"] = json!("x".repeat(1001));
    for body in [
        wrong_type,
        long_refkey,
        long_message,
        alimtalk("010-invalid", "r"),
        alimtalk("not a phone", "r"),
        json!({"to": 1}),
    ] {
        let (status, answer) = biz_send(&sandbox, &token, &body).await;
        assert_eq!((status, answer["code"].as_u64()), (400, Some(2000)), "{body}");
    }
    assert!(sandbox.handle.record().is_empty());
}

#[tokio::test]
async fn the_configured_report_url_wins_over_the_engine_url() {
    let (hook, mut received) = webhook_receiver().await;
    let mut settings = super::settings(5, Default::default());
    settings.report_url = format!("http://{hook}/configured");
    // The engine URL points at a port nobody listens on; the configured one must be used instead.
    let sandbox = super::spawn_configured(settings, "http://127.0.0.1:9/webhooks/alimtalk").await;
    let token = biz_token(&sandbox).await;
    assert_eq!(biz_send(&sandbox, &token, &alimtalk("01012345678", "d-at-3")).await.0, 200);
    let hit = next_received(&mut received).await;
    assert_eq!(hit.uri, "/configured");
    let (_, stats) = sandbox.get_json("/_sandbox/stats").await;
    assert_eq!(stats["bizppurio"]["reports_failed"], 0);
}

#[tokio::test]
async fn bizppurio_tokens_expire_after_the_configured_lifetime() {
    let mut settings = super::settings(5, Default::default());
    settings.bizppurio_token_lifetime_s = 1;
    let sandbox = super::spawn_configured(settings, "").await;
    let token = biz_token(&sandbox).await;
    assert_eq!(biz_send(&sandbox, &token, &alimtalk("01012345678", "d-1")).await.0, 200);
    // Polls until the token has expired: then it is refused as an unknown one is.
    let (status, body) = eventually(|| async {
        let answer = biz_send(&sandbox, &token, &alimtalk("01012345678", "d-2")).await;
        (answer.0 != 200).then_some(answer)
    })
    .await;
    assert_eq!((status, body["code"].as_u64()), (401, Some(3006)));
    let fresh = biz_token(&sandbox).await;
    assert_eq!(biz_send(&sandbox, &fresh, &alimtalk("01012345678", "d-3")).await.0, 200);
}

/// `n` Twilio sends whose callbacks go to `hook` with `delivery_id` = `d{i}`.
async fn twilio_with_callbacks(sandbox: &Sandbox, hook: std::net::SocketAddr, n: usize) {
    for i in 0..n {
        let callback = format!("http://{hook}/webhooks/sms?delivery_id=d{i}");
        let params = [("To", "+821012345678"), ("From", "+15005550006"), ("Body", "x"), ("StatusCallback", &callback)];
        assert_eq!(twilio(sandbox, SID, &params).await.0, 201);
    }
}

/// The `delivery_id` a received callback is for.
fn delivery_of(hit: &Received) -> String {
    hit.uri.rsplit_once("delivery_id=").unwrap().1.to_string()
}

fn with_faults(kind: ProviderKind, faults: FaultSettings) -> herald::sandbox::SandboxSettings {
    super::settings(17, BTreeMap::from([(kind, faults)]))
}

#[tokio::test]
async fn with_duplicate_rate_one_every_callback_arrives_twice() {
    let (hook, mut received) = webhook_receiver().await;
    let faults = FaultSettings { report_duplicate_rate: 1.0, report_jitter_ms: 20, ..Default::default() };
    let sandbox = super::spawn_configured(with_faults(ProviderKind::Twilio, faults), "").await;
    twilio_with_callbacks(&sandbox, hook, 5).await;
    let mut counts = BTreeMap::new();
    for _ in 0..10 {
        let hit = next_received(&mut received).await;
        assert_eq!(
            hit.headers["x-twilio-signature"].to_str().unwrap(),
            expected_signature(&format!("http://{hook}{}", hit.uri), &hit.body)
        );
        *counts.entry(delivery_of(&hit)).or_insert(0) += 1;
    }
    assert_eq!(counts, (0..5).map(|i| (format!("d{i}"), 2)).collect::<BTreeMap<_, _>>());

    let stats = eventually(|| async {
        let (_, stats) = sandbox.get_json("/_sandbox/stats").await;
        (stats["twilio"]["reports_sent"] == 10).then_some(stats)
    })
    .await;
    assert_eq!(
        (stats["twilio"]["reports_duplicated"].as_u64(), stats["twilio"]["reports_dropped"].as_u64()),
        (Some(5), Some(0))
    );
    let log = sandbox.handle.reports();
    assert_eq!(log.len(), 10);
    assert!(log.iter().all(|r| r.status == ReportStatus::Posted && r.result == "delivered"));
    assert_eq!(log.iter().filter(|r| r.duplicate).count(), 5);
    for i in 0..5 {
        let reference = format!("d{i}");
        assert_eq!(log.iter().filter(|r| r.reference.as_deref() == Some(&reference)).count(), 2, "{reference}");
    }
}

#[tokio::test]
async fn with_drop_rate_one_no_report_arrives() {
    let (hook, mut received) = webhook_receiver().await;
    let faults = FaultSettings { report_drop_rate: 1.0, ..Default::default() };
    let mut settings = with_faults(ProviderKind::Bizppurio, faults);
    settings.report_url = format!("http://{hook}/webhooks/alimtalk");
    let sandbox = super::spawn_configured(settings, "").await;
    let token = biz_token(&sandbox).await;
    for i in 0..5 {
        assert_eq!(biz_send(&sandbox, &token, &alimtalk("01012345678", &format!("d{i}"))).await.0, 200);
    }
    // Drops are decided before the answer, so once every send is answered no report is pending.
    let (_, stats) = sandbox.get_json("/_sandbox/stats").await;
    assert_eq!(
        (stats["bizppurio"]["reports_dropped"].as_u64(), stats["bizppurio"]["reports_sent"].as_u64()),
        (Some(5), Some(0))
    );
    let (status, log) = sandbox.get_json("/_sandbox/reports?provider=bizppurio").await;
    assert_eq!(status, 200);
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 5);
    assert!(log.iter().all(|r| r["status"] == "dropped" && r["result"] == "7000"), "{log:?}");
    assert_eq!(log[3]["reference"], "d3");
    assert!(received.try_recv().is_err(), "a dropped report was posted");

    let cleared: Value =
        sandbox.http.delete(sandbox.url("/_sandbox/reports")).send().await.unwrap().json().await.unwrap();
    assert_eq!(cleared["cleared"], 5);
    assert!(sandbox.handle.reports().is_empty());
}

#[tokio::test]
async fn with_jitter_reports_overtake_each_other() {
    const N: usize = 40;
    let (hook, mut received) = webhook_receiver().await;
    // Jitter far larger than the time between sends: the seeded delays reorder the callbacks.
    let faults = FaultSettings { report_jitter_ms: 1000, ..Default::default() };
    let sandbox = super::spawn_configured(with_faults(ProviderKind::Twilio, faults), "").await;
    twilio_with_callbacks(&sandbox, hook, N).await;
    let mut order = Vec::with_capacity(N);
    for _ in 0..N {
        let id = delivery_of(&next_received(&mut received).await);
        order.push(id.trim_start_matches('d').parse::<usize>().unwrap());
    }
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..N).collect::<Vec<_>>(), "every callback arrives exactly once");
    let inversions = order.windows(2).filter(|w| w[0] > w[1]).count();
    assert!(inversions > 0, "callbacks arrived in send order: {order:?}");
    let (_, stats) = sandbox.get_json("/_sandbox/stats").await;
    assert_eq!(
        (stats["twilio"]["reports_duplicated"].as_u64(), stats["twilio"]["reports_dropped"].as_u64()),
        (Some(0), Some(0))
    );
}
