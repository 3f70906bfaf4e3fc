//! A 429 storm (docs/engine-semantics.md, "Rate limits and back-pressure"): the sandbox's FCM answers every
//! request with 429 and `Retry-After: 2` for 10 s. Herald must send nothing to FCM within 2 s of a 429 answer
//! (apart from requests already in flight when it arrived), spend at most 4 attempts on any delivery, and
//! deliver everything once the storm is over. A notification whose `expires_at` passes while it waits for its
//! retry is failed at the retry's hand-off, not sent.

mod app;

use std::collections::HashMap;
use std::time::Duration;

use app::spawn_app_with;
use herald::domain::ProviderKind;
use herald::sandbox::FaultSettings;
use serde_json::{Value, json};

const USERS: usize = 40;
const PER_USER: usize = 3;
const RETRY_AFTER_MS: u64 = 2_000;
const STORM: Duration = Duration::from_secs(10);
/// Requests Herald had already sent when a 429 reached it may arrive at the sandbox just after that 429 was
/// answered; this is the loopback margin allowed for them (they are at most `max_in_flight`).
const IN_FLIGHT_MARGIN_MS: u64 = 250;
const MAX_IN_FLIGHT: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_pauses_the_provider_for_retry_after_and_everything_is_delivered_after() {
    let app = spawn_app_with(|s| {
        let fcm = s.providers.limits.get_mut(&ProviderKind::Fcm).unwrap();
        fcm.max_in_flight = MAX_IN_FLIGHT;
        s.engine.max_retries = 3;
    })
    .await;
    for u in 0..USERS {
        app.user(&format!("storm-{u}"), &[(&format!("storm-token-{u}"), "android")]).await;
    }
    let storm = FaultSettings { rate_limit_rate: 1.0, retry_after_s: RETRY_AFTER_MS / 1000, ..Default::default() };
    app.sandbox().set_faults(ProviderKind::Fcm, storm);

    let mut ids = Vec::new();
    for i in 0..USERS * PER_USER {
        let body = json!({"user_id": format!("storm-{}", i % USERS), "channels": ["push"],
                          "content": {"title": "storm", "body": format!("message {i}")}});
        ids.push(app.send(body).await);
    }
    // The storm lasts its ten seconds whatever Herald does; then the provider recovers.
    tokio::time::sleep(STORM).await;
    app.sandbox().set_faults(ProviderKind::Fcm, FaultSettings::default());

    let mut attempts_by_delivery = HashMap::new();
    for id in &ids {
        let n = app.wait_final(id).await;
        let delivery = &n["deliveries"][0];
        assert_eq!(delivery["status"], "delivered", "{n}");
        attempts_by_delivery
            .insert(delivery["id"].as_str().unwrap().to_string(), delivery["attempts"].as_u64().unwrap());
    }

    let requests = app.sandbox().requests(ProviderKind::Fcm);
    let limited: Vec<u64> = requests.iter().filter(|r| r.status == 429).map(|r| r.at_ms).collect();
    assert!(limited.len() >= 5, "the storm must have answered 429s: {}", limited.len());
    // No request arrives in (429 + margin, 429 + Retry-After): the provider-wide pause held.
    for r in &requests {
        let too_early = limited.iter().find(|&&t| r.at_ms > t + IN_FLIGHT_MARGIN_MS && r.at_ms < t + RETRY_AFTER_MS);
        assert!(too_early.is_none(), "request at {} ms came {} ms after a 429", r.at_ms, r.at_ms - too_early.unwrap());
    }
    // Attempts per delivery, counted where they land: at the provider.
    let mut at_provider: HashMap<&str, u64> = HashMap::new();
    for r in &requests {
        *at_provider.entry(r.reference.as_deref().expect("FCM requests carry the delivery id")).or_default() += 1;
    }
    assert_eq!(at_provider.len(), ids.len());
    for (delivery, count) in &at_provider {
        assert!(*count <= 4, "delivery {delivery} reached the provider {count} times");
        assert_eq!(Some(count), attempts_by_delivery.get(*delivery), "Herald's attempt count matches the provider's");
    }
    let delivered = app.sandbox().record().len();
    assert_eq!(delivered, ids.len(), "each delivered exactly once");
    let metrics = app.http.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("herald_provider_pauses_total{provider=\"fcm\"} 0"), "pauses are counted");
    app.running.stop().await;
}

/// Campaign traffic (`low`) may hold at most three quarters of a provider's in-flight slots, so transactional
/// sends find a free slot instead of waiting for a blast's sends to come back (docs/engine-semantics.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_low_lane_never_holds_the_last_quarter_of_the_in_flight_slots() {
    const LATENCY_MS: u64 = 300;
    const LOW: usize = 24;
    const HIGH: usize = 4;
    let app = spawn_app_with(|s| {
        s.providers.limits.get_mut(&ProviderKind::Fcm).unwrap().max_in_flight = MAX_IN_FLIGHT;
    })
    .await;
    for u in 0..LOW + HIGH {
        app.user(&format!("lane-{u}"), &[(&format!("lane-token-{u}"), "android")]).await;
    }
    let slow = FaultSettings { latency_min_ms: LATENCY_MS, latency_max_ms: LATENCY_MS, ..Default::default() };
    app.sandbox().set_faults(ProviderKind::Fcm, slow);

    let send = |u: usize, priority: &str| {
        json!({"user_id": format!("lane-{u}"), "channels": ["push"], "priority": priority,
               "content": {"title": "lanes", "body": format!("{priority} {u}")}})
    };
    let mut low = Vec::new();
    for u in 0..LOW {
        low.push(app.send(send(u, "low")).await);
    }
    let mut high = Vec::new();
    for u in LOW..LOW + HIGH {
        high.push(app.send(send(u, "high")).await);
    }
    let delivery_of = |n: Value| n["deliveries"][0]["id"].as_str().unwrap().to_string();
    let mut low_deliveries = Vec::new();
    for id in &low {
        low_deliveries.push(delivery_of(app.wait_final(id).await));
    }
    let mut high_deliveries = Vec::new();
    for id in &high {
        high_deliveries.push(delivery_of(app.wait_final(id).await));
    }

    let requests = app.sandbox().requests(ProviderKind::Fcm);
    let arrivals = |deliveries: &[String]| -> Vec<u64> {
        let mut at: Vec<u64> = requests
            .iter()
            .filter(|r| r.reference.as_ref().is_some_and(|d| deliveries.contains(d)))
            .map(|r| r.at_ms)
            .collect();
        at.sort_unstable();
        at
    };
    let (low_at, high_at) = (arrivals(&low_deliveries), arrivals(&high_deliveries));
    assert_eq!((low_at.len(), high_at.len()), (LOW, HIGH), "each reached the provider once");
    // A slot is held at least from a request's arrival until the sandbox answers it, LATENCY_MS later.
    let most_low_at_once =
        low_at.iter().map(|&t| low_at.iter().filter(|&&s| s <= t && t < s + LATENCY_MS).count()).max();
    assert_eq!(most_low_at_once, Some(MAX_IN_FLIGHT - MAX_IN_FLIGHT / 4), "low sends in flight at once: {low_at:?}");
    assert!(high_at.iter().all(|&t| t < *low_at.last().unwrap()), "high sends overtook the low backlog");
    app.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_that_expires_while_it_waits_for_its_retry_is_failed_not_sent() {
    let app = spawn_app_with(|_| {}).await;
    app.user("expiring", &[("expiring-token", "android")]).await;
    // Every FCM answer is a 429 asking for 3 s: the first attempt is refused and the retry waits past the expiry.
    let storm = FaultSettings { rate_limit_rate: 1.0, retry_after_s: 3, ..Default::default() };
    app.sandbox().set_faults(ProviderKind::Fcm, storm);
    let expires_at = jiff::Timestamp::now() + jiff::SignedDuration::from_millis(1_500);
    let id = app
        .send(json!({"user_id": "expiring", "channels": ["push"], "expires_at": expires_at.to_string(),
                     "content": {"title": "flash sale", "body": "ends soon"}}))
        .await;

    let n = app.wait_final(&id).await;
    assert_eq!(n["status"], "failed", "{n:#}");
    let delivery = &n["deliveries"][0];
    assert_eq!(delivery["status"], "failed", "{n:#}");
    assert_eq!(delivery["attempts"], 1, "the expired retry is not an attempt: {n:#}");
    let reason = delivery["events"].as_array().unwrap().last().unwrap()["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("expired"), "the failure says why: {n:#}");
    let requests = app.sandbox().requests(ProviderKind::Fcm);
    assert_eq!(requests.len(), 1, "only the first attempt reached FCM: {requests:?}");
    assert_eq!(requests[0].status, 429);
    app.running.stop().await;
}
