use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use jiff::tz::TimeZone;
use serde_json::json;

use super::*;
use crate::config::Secret;
use crate::domain::{Priority, ProviderKind, Rendered};
use crate::providers::ErrorClass;
use crate::providers::testing::{Canned, DELIVERY_ID, FakePeer, Recorded, dead_base_url, http_client, request};

fn settings(base_url: &str) -> BizppurioSettings {
    BizppurioSettings {
        base_url: base_url.into(),
        account: "herald".into(),
        password: Secret::new("pw"),
        sender_key: "sender-key-1".into(),
        from: "0212345678".into(),
        sms_fallback: true,
    }
}

fn client(base_url: &str) -> BizppurioClient {
    BizppurioClient::new(http_client(), &settings(base_url)).unwrap()
}

/// A clock that only moves when told to, for the client's token cache.
fn manual_clock() -> (super::super::token::Clock, Arc<parking_lot::Mutex<std::time::Instant>>) {
    let now = Arc::new(parking_lot::Mutex::new(std::time::Instant::now()));
    let read = Arc::clone(&now);
    (Arc::new(move || *read.lock()), now)
}

/// A sandbox on port 0; settings read as the config file would be, so fields added later take their defaults.
async fn sandbox(extra: serde_json::Value) -> crate::sandbox::SandboxHandle {
    let mut settings = json!({"enabled": true, "listen": "127.0.0.1:0", "smtp_listen": "127.0.0.1:0",
                              "tls_listen": "127.0.0.1:0", "seed": 3});
    settings.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    crate::sandbox::start(&serde_json::from_value(settings).unwrap(), String::new()).await.unwrap()
}

fn sandbox_client(sandbox: &crate::sandbox::SandboxHandle) -> BizppurioClient {
    client(&format!("http://{}", sandbox.http_addr()))
}

/// The sandbox's answers to `/v3/message` from its request log: (accepted, refused).
fn biz_counts(sandbox: &crate::sandbox::SandboxHandle) -> (usize, usize) {
    let log = sandbox.requests(ProviderKind::Bizppurio);
    (log.iter().filter(|e| e.status == 200).count(), log.iter().filter(|e| e.status != 200).count())
}

fn alimtalk(template_code: Option<&str>) -> SendRequest {
    let mut req =
        request(Address::Phone { phone: "+821012345678".into() }, Some("T"), "Your order shipped", Priority::Normal);
    req.content = Arc::new(Rendered { template_code: template_code.map(str::to_string), ..(*req.content).clone() });
    req
}

/// `expired` for a token living `seconds` from now, in Korea time.
fn expiry_in(seconds: i64) -> String {
    let at = Timestamp::now() + jiff::SignedDuration::from_secs(seconds);
    at.to_zoned(TimeZone::fixed(KST)).strftime("%Y%m%d%H%M%S").to_string()
}

fn token_answer(token: &str, seconds: i64) -> Canned {
    Canned::json(200, json!({"accesstoken": token, "type": "Bearer", "expired": expiry_in(seconds)}))
}

fn accepted(request: &Recorded) -> Canned {
    let refkey = request.json()["refkey"].clone();
    Canned::json(200, json!({"code": 1000, "description": "Success", "refkey": refkey, "messagekey": "mk-1"}))
}

/// A peer with a 24 h token and a success answer.
async fn healthy_peer() -> FakePeer {
    FakePeer::start(|r| if r.target == "/v1/token" { token_answer("tok-1", 86_400) } else { accepted(r) }).await
}

#[tokio::test]
async fn send_gets_a_token_then_posts_the_alimtalk() {
    let peer = healthy_peer().await;
    let result = client(&peer.base_url).send(&alimtalk(Some("TPL_SHIPPED"))).await.unwrap();
    assert_eq!(result, Accepted::Sent { provider_message_id: Some("mk-1".into()) });
    let requests = peer.requests();
    let token = &requests[0];
    assert_eq!((token.method.as_str(), token.target.as_str()), ("POST", "/v1/token"));
    let basic = format!("Basic {}", STANDARD.encode("herald:pw"));
    assert_eq!(token.header("authorization"), Some(basic.as_str()));
    let message = &requests[1];
    assert_eq!(message.target, "/v3/message");
    assert_eq!(message.header("authorization"), Some("Bearer tok-1"));
    assert_eq!(message.header("content-type"), Some("application/json; charset=utf-8"));
    assert_eq!(
        message.json(),
        json!({
            "account": "herald", "type": "at", "from": "0212345678", "to": "01012345678", "refkey": DELIVERY_ID,
            "content": {"at": {"senderkey": "sender-key-1", "templatecode": "TPL_SHIPPED",
                "message": "Your order shipped"}},
            "resend": {"first": "sms"}, "recontent": {"sms": {"message": "Your order shipped"}}
        })
    );
}

#[tokio::test]
async fn concurrent_sends_share_one_token_request() {
    let peer = healthy_peer().await;
    let client = Arc::new(client(&peer.base_url));
    let sends: Vec<_> = (0..24)
        .map(|_| {
            let client = Arc::clone(&client);
            tokio::spawn(async move { client.send(&alimtalk(Some("TPL"))).await })
        })
        .collect();
    for send in sends {
        assert!(send.await.unwrap().is_ok());
    }
    assert_eq!(peer.count("/v1/token"), 1);
    assert_eq!(peer.count("/v3/message"), 24);
    // Later sends keep using the cached token.
    client.send(&alimtalk(Some("TPL"))).await.unwrap();
    assert_eq!(peer.count("/v1/token"), 1);
}

#[tokio::test]
async fn without_sms_fallback_no_resend_is_asked() {
    let peer = healthy_peer().await;
    let client =
        BizppurioClient::new(http_client(), &BizppurioSettings { sms_fallback: false, ..settings(&peer.base_url) })
            .unwrap();
    client.send(&alimtalk(Some("TPL"))).await.unwrap();
    let body = peer.requests()[1].json();
    assert_eq!((body.get("resend"), body.get("recontent")), (None, None));
}

#[tokio::test]
async fn a_token_near_expiry_is_refreshed_ahead() {
    let peer =
        FakePeer::start(|r| if r.target == "/v1/token" { token_answer("tok-s", 300) } else { accepted(r) }).await;
    let (clock, now) = manual_clock();
    let mut client = client(&peer.base_url);
    client.tokens = TokenCache::with_clock(clock);
    client.send(&alimtalk(Some("TPL"))).await.unwrap();
    // A five-minute token is refreshed at half its life: not yet after two minutes, then after three.
    *now.lock() += Duration::from_secs(120);
    client.send(&alimtalk(Some("TPL"))).await.unwrap();
    assert_eq!(peer.count("/v1/token"), 1);
    *now.lock() += Duration::from_secs(60);
    client.send(&alimtalk(Some("TPL"))).await.unwrap();
    assert_eq!(peer.count("/v1/token"), 2);
}

#[tokio::test]
async fn a_refused_token_is_dropped_and_the_send_retried_once() {
    let tokens = Arc::new(AtomicUsize::new(0));
    let issued = Arc::clone(&tokens);
    let peer = FakePeer::start(move |r| {
        if r.target == "/v1/token" {
            let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
            return token_answer(&format!("tok-{n}"), 86_400);
        }
        match r.header("authorization") {
            Some("Bearer tok-1") => Canned::json(401, json!({"code": 3004, "description": "expired token"})),
            _ => accepted(r),
        }
    })
    .await;
    let result = client(&peer.base_url).send(&alimtalk(Some("TPL"))).await.unwrap();
    assert_eq!(result, Accepted::Sent { provider_message_id: Some("mk-1".into()) });
    let auth: Vec<_> = peer
        .requests()
        .iter()
        .filter(|r| r.target == "/v3/message")
        .map(|r| r.header("authorization").unwrap().to_string())
        .collect();
    assert_eq!(auth, ["Bearer tok-1", "Bearer tok-2"]);
}

#[tokio::test]
async fn a_persistent_auth_refusal_is_permanent_after_one_retry() {
    let peer = FakePeer::start(|r| {
        if r.target == "/v1/token" {
            token_answer("tok", 86_400)
        } else {
            Canned::json(401, json!({"code": 3001, "description": "account not allowed"}))
        }
    })
    .await;
    let error = client(&peer.base_url).send(&alimtalk(Some("TPL"))).await.unwrap_err();
    assert_eq!((error.class, error.code.as_str(), error.alert), (ErrorClass::Permanent, "3001", true));
    assert_eq!((peer.count("/v1/token"), peer.count("/v3/message")), (2, 2));
}

#[tokio::test]
async fn every_answer_code_is_classified_from_the_wire() {
    // The template code picks the canned answer.
    let cases = [
        ("c2000", 400, Some(2000), ErrorClass::Permanent, "2000", None),
        ("c5001", 404, Some(5001), ErrorClass::Permanent, "5001", None),
        ("c9000", 500, Some(9000), ErrorClass::Retryable, "9000", None),
        ("c5002", 429, Some(5002), ErrorClass::RateLimited, "5002", Some(7)),
        ("c5002ok", 200, Some(5002), ErrorClass::RateLimited, "5002", Some(7)),
        ("c429", 429, None, ErrorClass::RateLimited, "http_429", Some(7)),
        ("c503", 503, None, ErrorClass::Retryable, "http_503", None),
    ];
    let peer = FakePeer::start(move |r| {
        if r.target == "/v1/token" {
            return token_answer("tok", 86_400);
        }
        let template = r.json()["content"]["at"]["templatecode"].as_str().unwrap().to_string();
        let (_, status, code, _, _, reset) = cases.iter().find(|c| c.0 == template).unwrap();
        let body = match code {
            Some(code) => json!({"code": code, "description": format!("answer {code}")}),
            None => json!({"description": "no code"}),
        };
        let canned = Canned::json(*status, body);
        match reset {
            Some(seconds) => canned.with_header("ratelimit-reset", seconds.to_string()),
            None => canned,
        }
    })
    .await;
    let client = client(&peer.base_url);
    for (template, _, _, class, code, reset) in cases {
        let error = client.send(&alimtalk(Some(template))).await.unwrap_err();
        assert_eq!((error.class, error.code.as_str()), (class, code), "{template}");
        assert_eq!(error.retry_after, reset.map(Duration::from_secs), "{template}");
        assert!(!error.alert, "{template}");
    }
    assert_eq!(peer.count("/v1/token"), 1);
}

#[tokio::test]
async fn codes_written_as_strings_are_understood() {
    let peer = FakePeer::start(|r| {
        if r.target == "/v1/token" {
            token_answer("tok", 86_400)
        } else {
            Canned::json(200, json!({"code": "1000", "description": "Success", "messagekey": "mk-s"}))
        }
    })
    .await;
    let result = client(&peer.base_url).send(&alimtalk(Some("TPL"))).await.unwrap();
    assert_eq!(result, Accepted::Sent { provider_message_id: Some("mk-s".into()) });
}

#[tokio::test]
async fn token_endpoint_failures_are_classified() {
    let peer = FakePeer::start(|r| match r.header("authorization") {
        _ if r.target != "/v1/token" => accepted(r),
        _ => Canned::json(401, json!({"code": 3002, "description": "bad password"})),
    })
    .await;
    let error = client(&peer.base_url).send(&alimtalk(Some("TPL"))).await.unwrap_err();
    assert_eq!((error.class, error.code.as_str(), error.alert), (ErrorClass::Permanent, "3002", true));
    assert!(error.message.starts_with("token request refused"), "{}", error.message);
    assert_eq!(peer.count("/v3/message"), 0);

    let peer = FakePeer::start(|_| Canned::json(200, json!({"type": "Bearer"}))).await;
    let error = client(&peer.base_url).send(&alimtalk(Some("TPL"))).await.unwrap_err();
    assert_eq!((error.class, error.code.as_str()), (ErrorClass::Retryable, "bad_token_answer"));

    let error = client(&dead_base_url().await).send(&alimtalk(Some("TPL"))).await.unwrap_err();
    assert_eq!((error.class, error.code.as_str()), (ErrorClass::Retryable, "transport"));
}

#[tokio::test]
async fn content_without_a_template_code_is_refused_locally() {
    let peer = healthy_peer().await;
    for template in [None, Some("")] {
        let error = client(&peer.base_url).send(&alimtalk(template)).await.unwrap_err();
        assert_eq!((error.class, error.code.as_str()), (ErrorClass::Permanent, "missing_template_code"));
    }
    assert!(peer.requests().is_empty());
}

#[tokio::test]
async fn foreign_numbers_are_refused_locally() {
    let peer = healthy_peer().await;
    let mut req = alimtalk(Some("TPL"));
    req.address = Address::Phone { phone: "+14155550100".into() };
    let error = client(&peer.base_url).send(&req).await.unwrap_err();
    assert_eq!((error.class, error.code.as_str()), (ErrorClass::Permanent, "invalid_phone"));
    assert!(peer.requests().is_empty());
}

#[test]
fn phones_become_domestic_digits() {
    assert_eq!(domestic_phone("+821012345678").as_deref(), Some("01012345678"));
    assert_eq!(domestic_phone("+82212345678").as_deref(), Some("0212345678"));
    assert_eq!(domestic_phone("+8201012345678").as_deref(), Some("01012345678"));
    assert_eq!(domestic_phone("01012345678").as_deref(), Some("01012345678"));
    assert_eq!(domestic_phone("+14155550100"), None);
    assert_eq!(domestic_phone("+8210-1234"), None);
    assert_eq!(domestic_phone("+82"), None);
}

#[test]
fn token_expiry_is_read_in_korea_time() {
    let now: Timestamp = "2024-01-01T00:00:00Z".parse().unwrap();
    // 2024-01-02 09:00 KST is 2024-01-02 00:00 UTC: 24 h later.
    assert_eq!(token_lifetime(Some("20240102090000"), now), Duration::from_secs(86_400));
    assert_eq!(token_lifetime(Some("20240101090030"), now), Duration::from_secs(30));
    assert_eq!(token_lifetime(Some("20240101090000"), now), MIN_TOKEN_LIFETIME);
    assert_eq!(token_lifetime(Some("20231231000000"), now), MIN_TOKEN_LIFETIME);
    assert_eq!(token_lifetime(Some("tomorrow"), now), DEFAULT_TOKEN_LIFETIME);
    assert_eq!(token_lifetime(None, now), DEFAULT_TOKEN_LIFETIME);
}

#[test]
fn rate_limit_reset_is_read_as_seconds_or_a_unix_time() {
    let now: Timestamp = "2024-01-01T00:00:00Z".parse().unwrap();
    let headers = |pairs: &[(&'static str, &'static str)]| {
        let mut map = reqwest::header::HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    };
    let wait = |pairs| rate_limit_wait(&headers(pairs), now);
    assert_eq!(wait(&[("ratelimit-reset", "30")]), Some(Duration::from_secs(30)));
    // 1704067245 is 45 s after `now`.
    assert_eq!(wait(&[("ratelimit-reset", "1704067245")]), Some(Duration::from_secs(45)));
    assert_eq!(wait(&[("ratelimit-reset", "1704060000")]), Some(Duration::ZERO));
    assert_eq!(wait(&[("retry-after", "9")]), Some(Duration::from_secs(9)));
    assert_eq!(wait(&[("ratelimit-reset", "3"), ("retry-after", "9")]), Some(Duration::from_secs(3)));
    assert_eq!(wait(&[]), None);
}

#[tokio::test]
async fn the_sandbox_rate_limit_is_a_provider_pause_until_the_reset() {
    let sandbox = sandbox(json!({"faults": {"bizppurio": {"rate_limit_rate": 1.0, "retry_after_s": 2}}})).await;
    let error = sandbox_client(&sandbox).send(&alimtalk(Some("TPL"))).await.unwrap_err();
    assert_eq!((error.class, error.code.as_str()), (ErrorClass::RateLimited, "5002"));
    assert_eq!(error.retry_after, Some(Duration::from_secs(2)));
    sandbox.shutdown();
}

#[tokio::test]
async fn a_token_the_sandbox_expired_is_replaced_and_the_send_retried() {
    let sandbox = sandbox(json!({"bizppurio_token_lifetime_s": 1})).await;
    // The client's clock stands still: it believes its first token is fresh long after the sandbox expired it.
    let (clock, _) = manual_clock();
    let mut client = sandbox_client(&sandbox);
    client.tokens = TokenCache::with_clock(clock);
    client.send(&alimtalk(Some("TPL"))).await.unwrap();

    // A token issued after the client's expires after it: once the sandbox refuses this one, it refuses both.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = format!("http://{}", sandbox.http_addr());
    let later: serde_json::Value = http
        .post(format!("{base}/v1/token"))
        .basic_auth("herald", Some("pw"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let later = later["accesstoken"].as_str().unwrap().to_string();
    let probe = json!({"account": "herald", "type": "at", "from": "0212345678", "to": "01012345678",
                       "content": {"at": {"senderkey": "k", "templatecode": "T", "message": "probe"}}});
    let give_up = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status =
            http.post(format!("{base}/v3/message")).bearer_auth(&later).json(&probe).send().await.unwrap().status();
        if status == 401 {
            break;
        }
        assert!(std::time::Instant::now() < give_up, "the sandbox never expired its token");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let result = client.send(&alimtalk(Some("TPL"))).await.unwrap();
    assert!(matches!(result, Accepted::Sent { provider_message_id: Some(_) }));
    let ours: Vec<u16> = sandbox
        .requests(ProviderKind::Bizppurio)
        .into_iter()
        .filter(|e| e.reference.as_deref() == Some(DELIVERY_ID))
        .map(|e| e.status)
        .collect();
    assert_eq!(ours, [200, 401, 200], "the expired token was refused once, then a new one used");
    sandbox.shutdown();
}

#[tokio::test]
async fn a_token_due_for_refresh_is_replaced_before_the_sandbox_refuses_it() {
    let sandbox = sandbox(json!({"bizppurio_token_lifetime_s": 3600})).await;
    let (clock, now) = manual_clock();
    let mut client = sandbox_client(&sandbox);
    client.tokens = TokenCache::with_clock(clock);
    client.send(&alimtalk(Some("TPL"))).await.unwrap();
    // 55 minutes on: inside the ten-minute margin of a one-hour token, so the next send fetches a new one first.
    *now.lock() += Duration::from_secs(55 * 60);
    client.send(&alimtalk(Some("TPL"))).await.unwrap();
    assert_eq!(biz_counts(&sandbox), (2, 0), "both sends accepted, none refused");
    let (status, stats) = {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let response = http.get(format!("http://{}/_sandbox/stats", sandbox.http_addr())).send().await.unwrap();
        (response.status().as_u16(), response.json::<serde_json::Value>().await.unwrap())
    };
    assert_eq!(status, 200);
    // Two token requests and two messages.
    assert_eq!(stats["bizppurio"]["accepted"], 4);
    sandbox.shutdown();
}

#[tokio::test]
async fn refused_credentials_at_the_sandbox_alert_the_operator() {
    let sandbox = sandbox(json!({})).await;
    let settings =
        BizppurioSettings { password: Secret::new(""), ..settings(&format!("http://{}", sandbox.http_addr())) };
    let error = BizppurioClient::new(http_client(), &settings).unwrap().send(&alimtalk(Some("TPL"))).await.unwrap_err();
    assert_eq!((error.class, error.code.as_str(), error.alert), (ErrorClass::Permanent, "3001", true));
    sandbox.shutdown();
}
