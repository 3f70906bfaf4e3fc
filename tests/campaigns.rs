//! Campaigns end to end (docs/campaigns.md): explicit, all-users and tag audiences reach exactly their users,
//! once each; `rate_per_second` paces the fan-out; pause, resume and cancel; a restart mid-campaign resumes
//! without a second message; a low-priority blast does not hold back transactional sends; validation.

mod app;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use herald::sandbox::{ReceivedMessage, SandboxHandle};
use herald::server::{Running, serve};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use app::{TestApp, spawn_app, test_settings};

/// How long a wait may take before the test calls it a hang (a guard, not a speed assertion).
const HANG: Duration = Duration::from_secs(240);

/// The user's device token: its id in hex, which both FCM and APNs (hex only) accept.
fn token(user: &str) -> String {
    user.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Creates `n` users `{prefix}-00000…` with `tags` and one push device each (Android and iOS alternately).
async fn users(app: &TestApp, prefix: &str, n: usize, tags: &[&str]) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:05}")).collect();
    futures_util::stream::iter(ids.iter().enumerate())
        .for_each_concurrent(32, |(i, id)| async move {
            let (status, body) = app.put(&format!("/v1/users/{id}"), json!({"tags": tags})).await;
            assert_eq!(status, 200, "{body}");
            let platform = if i % 2 == 0 { "android" } else { "ios" };
            let device = json!({"token": token(id), "platform": platform});
            let (status, body) = app.post(&format!("/v1/users/{id}/devices"), device).await;
            assert_eq!(status, 201, "{body}");
        })
        .await;
    ids
}

async fn promo_template(app: &TestApp) {
    let template = json!({"channels": {"push": {"en": {"title": "Sale", "body": "{{label}}"}}}});
    let (status, body) = app.put("/v1/templates/promo", template).await;
    assert_eq!(status, 200, "{body}");
}

/// A campaign body for the `promo` template whose messages carry `label`.
fn campaign(label: &str, audience: Value) -> Value {
    json!({
        "name": label,
        "template": {"id": "promo", "params": {"label": label}},
        "channels": ["push"],
        "category": "promotion",
        "audience": audience,
    })
}

async fn create(app: &TestApp, body: Value) -> String {
    let (status, reply) = app.post("/v1/campaigns", body).await;
    assert_eq!(status, 202, "{reply}");
    reply["id"].as_str().unwrap().to_string()
}

async fn get(app: &TestApp, id: &str) -> Value {
    let (status, c) = app.get(&format!("/v1/campaigns/{id}")).await;
    assert_eq!(status, 200, "{c}");
    c
}

async fn wait_campaign(app: &TestApp, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + HANG;
    loop {
        let c = get(app, id).await;
        if done(&c) {
            return c;
        }
        assert!(Instant::now() < deadline, "campaign never got to {what}: {c:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the fan-out is over and every accepted notification is final.
async fn wait_settled(app: &TestApp, id: &str) -> Value {
    wait_campaign(app, id, "settled", |c| {
        let n = &c["counts"];
        let finals =
            n["completed"].as_u64().unwrap() + n["failed"].as_u64().unwrap() + n["cancelled"].as_u64().unwrap();
        !matches!(c["status"].as_str(), Some("running" | "scheduled")) && finals == n["accepted"].as_u64().unwrap()
    })
    .await
}

fn count(c: &Value, name: &str) -> u64 {
    c["counts"][name].as_u64().unwrap()
}

fn processed(c: &Value) -> u64 {
    c["progress"]["processed"].as_u64().unwrap()
}

/// The sandbox's messages with body `label`, by device token.
fn received(sandbox: &SandboxHandle, label: &str) -> HashMap<String, Vec<ReceivedMessage>> {
    let mut by_token: HashMap<String, Vec<ReceivedMessage>> = HashMap::new();
    for m in sandbox.record().into_iter().filter(|m| m.body == label) {
        by_token.entry(m.to.clone()).or_default().push(m);
    }
    by_token
}

/// Every one of `users` got exactly one message with body `label`, and nobody else got one.
fn assert_exactly_once(app: &TestApp, label: &str, users: &[String]) {
    let got = received(app.sandbox(), label);
    let expected: HashSet<String> = users.iter().map(|u| token(u)).collect();
    let twice: Vec<_> = got.iter().filter(|(_, ms)| ms.len() > 1).map(|(t, _)| t).take(5).collect();
    assert!(twice.is_empty(), "{label}: users messaged more than once, e.g. {twice:?}");
    let missing: Vec<_> = expected.iter().filter(|t| !got.contains_key(*t)).take(5).collect();
    assert!(missing.is_empty(), "{label}: users never messaged, e.g. {missing:?}");
    let extra: Vec<_> = got.keys().filter(|t| !expected.contains(*t)).take(5).collect();
    assert!(extra.is_empty(), "{label}: messages to users outside the audience, e.g. {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn explicit_ids_reach_every_user_exactly_once_and_the_counts_add_up() {
    const USERS: usize = 5_000;
    let app = spawn_app().await;
    promo_template(&app).await;
    let ids = users(&app, "c", USERS, &[]).await;
    // Two unknown users and one listed twice: skipped, never a second message.
    let mut listed = ids.clone();
    listed.extend(["ghost-1".to_string(), "ghost-2".to_string(), ids[7].clone()]);
    let (status, reply) = app.post("/v1/campaigns", campaign("blast", json!({"user_ids": listed}))).await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["status"], "running");
    let id = reply["id"].as_str().unwrap();

    // The fan-out saves its `completed` status after its last page, which a fast delivery can outrun: wait for
    // both.
    let c = wait_campaign(&app, id, "completed, with completed = 5000", |c| {
        c["status"] == "completed" && count(c, "completed") == USERS as u64
    })
    .await;
    assert_eq!(c["status"], "completed", "{c:#}");
    assert_eq!(c["progress"], json!({"processed": USERS + 3, "total": USERS + 3}), "{c:#}");
    assert_eq!(c["audience"], json!({"kind": "user_ids", "size": USERS + 3}));
    let counts = json!({"accepted": USERS, "skipped": 3, "completed": USERS, "failed": 0, "cancelled": 0});
    assert_eq!(c["counts"], counts, "{c:#}");
    assert!(c["started_at"].is_string() && c["finished_at"].is_string(), "{c:#}");
    assert_exactly_once(&app, "blast", &ids);

    let (_, metrics) = app.get("/metrics").await;
    let metrics = metrics.as_str().unwrap();
    assert!(metrics.contains(&format!("herald_campaign_users_total{{outcome=\"accepted\"}} {USERS}")), "{metrics}");
    assert!(metrics.contains("herald_campaign_users_total{outcome=\"skipped\"} 2"), "the duplicate never reached it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tag_and_all_users_audiences_reach_exactly_their_users() {
    let app = spawn_app().await;
    promo_template(&app).await;
    let vip = users(&app, "vip", 40, &["vip", "tier:gold"]).await;
    let plain = users(&app, "plain", 30, &["tier:gold"]).await;
    // Tagged once, untagged since: not in the audience any more.
    let former = users(&app, "former", 10, &["vip"]).await;
    for id in &former {
        assert_eq!(app.put(&format!("/v1/users/{id}"), json!({"tags": []})).await.0, 200);
    }
    // A VIP who turned promotional push off is skipped: no notification at all, rather than a filtered one.
    let prefs = json!({"categories": {"promotion": {"push": false}}});
    assert_eq!(app.put(&format!("/v1/users/{}/preferences", vip[0]), prefs).await.0, 200);
    let (_, user) = app.get(&format!("/v1/users/{}", vip[1])).await;
    assert_eq!(user["tags"], json!(["vip", "tier:gold"]), "GET user shows the tags");
    let (_, user) = app.get(&format!("/v1/users/{}", former[0])).await;
    assert!(user.get("tags").is_none(), "no tags, no field: {user}");

    let tagged = create(&app, campaign("for vips", json!({"tag": "vip"}))).await;
    let c = wait_settled(&app, &tagged).await;
    assert_eq!(c["status"], "completed");
    assert_eq!(c["audience"], json!({"kind": "tag", "tag": "vip", "size": 40}), "known once done");
    assert_eq!((count(&c, "accepted"), count(&c, "skipped"), count(&c, "completed")), (39, 1, 39), "{c:#}");
    assert_exactly_once(&app, "for vips", &vip[1..]);

    let everyone = create(&app, campaign("for all", json!({"all_users": true}))).await;
    let c = wait_settled(&app, &everyone).await;
    assert_eq!(c["progress"], json!({"processed": 80, "total": 80}), "{c:#}");
    assert_eq!((count(&c, "accepted"), count(&c, "skipped")), (79, 1), "the opted-out VIP again: {c:#}");
    let all: Vec<String> = [vip, plain, former].concat();
    let reached: Vec<String> = all.iter().filter(|u| **u != all[0]).cloned().collect();
    assert_exactly_once(&app, "for all", &reached);

    let mut body = campaign("announcement", json!({"all_users": true}));
    body["category"] = json!("announcement");
    let announcement = create(&app, body).await;
    let c = wait_settled(&app, &announcement).await;
    assert_eq!((count(&c, "accepted"), count(&c, "skipped")), (80, 0), "promotion preferences do not apply: {c:#}");
    assert_exactly_once(&app, "announcement", &all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_per_second_paces_the_fan_out() {
    const USERS: usize = 1_500;
    let app = spawn_app().await;
    promo_template(&app).await;
    let ids = users(&app, "r", USERS, &["paced"]).await;
    let mut body = campaign("paced", json!({"tag": "paced"}));
    body["rate_per_second"] = json!(500);
    let started = Instant::now();
    let id = create(&app, body).await;
    let c = wait_campaign(&app, &id, "completed", |c| c["status"] == "completed").await;
    let took = started.elapsed();
    let span = |c: &Value| {
        let at = |f: &str| c[f].as_str().unwrap().parse::<Timestamp>().unwrap();
        at("finished_at").duration_since(at("started_at"))
    };
    println!("1,500 users at 500/s: fan-out {:?} by the record, {took:?} by the test", span(&c));
    // 1,500 at 500/s is 3 s; the pacer may catch up 50 ms of lateness at once. A lower bound: pacing holds.
    assert!(span(&c) >= SignedDuration::from_millis(2_500), "{c:#}");
    assert!(took >= Duration::from_millis(2_500));
    assert_eq!(c["rate_per_second"], 500);
    wait_settled(&app, &id).await;
    assert_exactly_once(&app, "paced", &ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_holds_new_accepts_until_resume_and_commands_on_a_completed_campaign_conflict() {
    const USERS: usize = 1_000;
    let app = spawn_app().await;
    promo_template(&app).await;
    let ids = users(&app, "p", USERS, &[]).await;
    let mut body = campaign("paused", json!({"user_ids": ids}));
    body["rate_per_second"] = json!(100);
    let id = create(&app, body).await;
    wait_campaign(&app, &id, "100 processed", |c| processed(c) >= 100).await;

    let (status, paused) = app.post(&format!("/v1/campaigns/{id}/pause"), json!({})).await;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["status"], "paused");
    let at_pause = processed(&paused);
    assert!(at_pause < USERS as u64, "{paused:#}");
    let c = wait_settled(&app, &id).await;
    let delivered = received(app.sandbox(), "paused").len();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let later = get(&app, &id).await;
    assert_eq!((later["status"].as_str(), processed(&later)), (Some("paused"), at_pause), "nothing new while paused");
    assert_eq!(count(&c, "accepted"), at_pause);
    assert_eq!(received(app.sandbox(), "paused").len(), delivered, "no new message while paused");
    assert_eq!(delivered as u64, at_pause);
    let (status, again) = app.post(&format!("/v1/campaigns/{id}/pause"), json!({})).await;
    assert_eq!((status, again["status"].as_str()), (200, Some("paused")), "pausing again changes nothing");

    let (status, resumed) = app.post(&format!("/v1/campaigns/{id}/resume"), json!({})).await;
    assert_eq!((status, resumed["status"].as_str()), (200, Some("running")), "{resumed}");
    let c = wait_settled(&app, &id).await;
    assert_eq!(c["status"], "completed");
    assert_eq!((count(&c, "accepted"), count(&c, "completed")), (USERS as u64, USERS as u64));
    assert_exactly_once(&app, "paused", &ids);

    for command in ["resume", "pause", "cancel"] {
        let (status, reply) = app.post(&format!("/v1/campaigns/{id}/{command}"), json!({})).await;
        assert_eq!(status, 409, "{command}: {reply}");
        assert_eq!(reply["error"]["code"], "conflict");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_stops_the_fan_out_and_what_was_accepted_goes_on() {
    const USERS: usize = 1_000;
    let app = spawn_app().await;
    promo_template(&app).await;
    let ids = users(&app, "x", USERS, &[]).await;
    let mut body = campaign("cancelled", json!({"user_ids": ids}));
    body["rate_per_second"] = json!(100);
    let id = create(&app, body).await;
    wait_campaign(&app, &id, "50 processed", |c| processed(c) >= 50).await;

    let (status, cancelled) = app.post(&format!("/v1/campaigns/{id}/cancel"), json!({})).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    assert!(cancelled["finished_at"].is_string());
    let at_cancel = processed(&cancelled);
    assert!(at_cancel < USERS as u64);
    let c = wait_settled(&app, &id).await;
    assert_eq!(count(&c, "completed"), at_cancel, "accepted notifications were still delivered: {c:#}");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let later = get(&app, &id).await;
    assert_eq!((later["status"].as_str(), processed(&later)), (Some("cancelled"), at_cancel), "the fan-out stopped");
    assert_eq!(received(app.sandbox(), "cancelled").len() as u64, at_cancel);
    let (status, reply) = app.post(&format!("/v1/campaigns/{id}/resume"), json!({})).await;
    assert_eq!((status, reply["error"]["code"].as_str()), (409, Some("conflict")), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduled_campaign_waits_for_send_at_on_the_engine_clock() {
    let app = spawn_app().await;
    promo_template(&app).await;
    let ids = users(&app, "s", 20, &[]).await;
    let mut body = campaign("later", json!({"all_users": true}));
    body["send_at"] = json!(Timestamp::now().checked_add(SignedDuration::from_hours(2)).unwrap().to_string());
    let id = create(&app, body).await;
    let c = get(&app, &id).await;
    assert_eq!((c["status"].as_str(), processed(&c)), (Some("scheduled"), 0), "{c:#}");
    assert!(c["started_at"].is_null());

    // Paused while scheduled, resumed: scheduled again, since send_at is still ahead.
    let (_, paused) = app.post(&format!("/v1/campaigns/{id}/pause"), json!({})).await;
    assert_eq!(paused["status"], "paused");
    let (_, resumed) = app.post(&format!("/v1/campaigns/{id}/resume"), json!({})).await;
    assert_eq!(resumed["status"], "scheduled");
    app.running.engine.clock().advance(Duration::from_secs(3_600));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(get(&app, &id).await["status"], "scheduled", "an hour early");
    assert!(received(app.sandbox(), "later").is_empty());

    app.running.engine.clock().advance(Duration::from_secs(3_600));
    let c = wait_settled(&app, &id).await;
    assert_eq!(c["status"], "completed");
    assert_exactly_once(&app, "later", &ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_requests_are_422_naming_the_field_and_unknown_campaigns_404() {
    let app = spawn_app().await;
    promo_template(&app).await;
    let cases = [
        ("audience", json!({"user_ids": ["a"], "tag": "vip"})),
        ("audience", json!({})),
        ("audience.user_ids", json!({"user_ids": []})),
        ("audience.user_ids[1]", json!({"user_ids": ["ok", "not ok"]})),
        ("audience.tag", json!({"tag": "no spaces"})),
        ("audience.all_users", json!({"all_users": false})),
    ];
    for (field, audience) in cases {
        let (status, reply) = app.post("/v1/campaigns", campaign("bad", audience.clone())).await;
        assert_eq!((status, reply["error"]["field"].as_str()), (422, Some(field)), "{audience}: {reply}");
    }
    let valid = || campaign("bad", json!({"all_users": true}));
    let mut cases: Vec<(&str, Value)> = Vec::new();
    for (field, value) in [("rate_per_second", json!(0)), ("rate_per_second", json!(1_000_001))] {
        let mut body = valid();
        body[field] = value;
        cases.push((field, body));
    }
    let mut body = valid();
    body["template"]["id"] = json!("nope");
    cases.push(("template.id", body));
    let mut body = valid();
    body["template"]["params"] = json!({});
    cases.push(("template.params.label", body));
    let mut body = valid();
    body["channels"] = json!([]);
    cases.push(("channels", body));
    let mut body = valid();
    body["channels"] = json!(["push", "fax"]);
    cases.push(("channels[1]", body));
    let mut body = valid();
    body["send_at"] = json!("tomorrow");
    cases.push(("send_at", body));
    let mut body = valid();
    body["send_at"] = json!(Timestamp::now().checked_add(SignedDuration::from_hours(24 * 400)).unwrap().to_string());
    cases.push(("send_at", body));
    let mut body = valid();
    body.as_object_mut().unwrap().remove("category");
    cases.push(("body", body));
    for (field, body) in cases {
        let (status, reply) = app.post("/v1/campaigns", body.clone()).await;
        assert_eq!((status, reply["error"]["field"].as_str()), (422, Some(field)), "{body}: {reply}");
    }
    let too_many: Vec<String> = (0..1_000_001).map(|i| format!("u{i}")).collect();
    let (status, reply) = app.post("/v1/campaigns", campaign("big", json!({"user_ids": too_many}))).await;
    assert_eq!((status, reply["error"]["field"].as_str()), (422, Some("audience.user_ids")), "{reply}");

    let tags: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
    let (status, reply) = app.put("/v1/users/u1", json!({"tags": tags})).await;
    assert_eq!((status, reply["error"]["field"].as_str()), (422, Some("tags")), "{reply}");
    let (status, reply) = app.put("/v1/users/u1", json!({"tags": ["ok", "not/ok"]})).await;
    assert_eq!((status, reply["error"]["field"].as_str()), (422, Some("tags[1]")), "{reply}");

    assert_eq!(app.get("/v1/campaigns/nope").await.0, 404);
    for command in ["pause", "resume", "cancel"] {
        let (status, reply) = app.post(&format!("/v1/campaigns/nope/{command}"), json!({})).await;
        assert_eq!((status, reply["error"]["code"].as_str()), (404, Some("not_found")), "{reply}");
    }
    // The larger body limit is this route's alone.
    let big = "x".repeat(100_000);
    let (status, _) =
        app.post("/v1/notifications", json!({"user_id": "u1", "channels": ["push"], "content": {"body": big}})).await;
    assert_eq!(status, 413);
}

/// A million listed ids fit the route's body limit and are stored in pages; the campaign is scheduled, so
/// nothing is sent, and is cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_million_listed_ids_are_accepted_and_stored_in_pages() {
    let app = spawn_app().await;
    promo_template(&app).await;
    let ids: Vec<String> = (0..1_000_000).map(|i| format!("user-{i:07}")).collect();
    let mut body = campaign("million", json!({"user_ids": ids}));
    body["send_at"] = json!(Timestamp::now().checked_add(SignedDuration::from_hours(1)).unwrap().to_string());
    let started = Instant::now();
    let id = create(&app, body).await;
    println!("a 1,000,000-id campaign created in {:?}", started.elapsed());
    let c = get(&app, &id).await;
    assert_eq!(c["progress"], json!({"processed": 0, "total": 1_000_000}), "{c:#}");
    assert_eq!(c["status"], "scheduled");
    let (status, c) = app.post(&format!("/v1/campaigns/{id}/cancel"), json!({})).await;
    assert_eq!((status, c["status"].as_str()), (200, Some("cancelled")), "{c}");
}

/// Stops the Herald (not its sandbox) and starts another on the same data directory, talking to the same
/// sandbox, so the record spans the restart.
async fn restart_keeping_sandbox(app: TestApp) -> TestApp {
    let TestApp { running, http, dir, .. } = app;
    let Running { sandbox, engine, shutdown, task, .. } = running;
    shutdown.cancel();
    let _ = task.await;
    engine.stop();
    drop(engine);
    let sandbox = sandbox.expect("sandbox enabled");
    let mut settings = test_settings(&dir);
    settings.sandbox.enabled = false;
    let (base, tls_base) = (format!("http://{}", sandbox.http_addr()), format!("https://{}", sandbox.tls_addr()));
    let providers = &mut settings.providers;
    providers.extra_root_ca_pem = Some(sandbox.ca_pem().to_string());
    providers.fcm.base_url = tls_base.clone();
    providers.fcm.token_uri = format!("{tls_base}/token");
    providers.apns.base_url = tls_base;
    providers.twilio.base_url = base.clone();
    providers.bizppurio.base_url = base;
    providers.smtp.host = sandbox.smtp_addr().ip().to_string();
    providers.smtp.port = sandbox.smtp_addr().port();
    // The stopped engine lets go of the store file a moment after `stop`.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut running = loop {
        match serve(settings.clone(), CancellationToken::new()).await {
            Ok(running) => break running,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("herald restarts: {e:?}"),
        }
    };
    running.sandbox = Some(sandbox);
    let base = running.base_url();
    TestApp { running, http, base, dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_mid_campaign_resumes_from_the_checkpoint_and_no_user_gets_a_second_notification() {
    const USERS: usize = 2_000;
    let app = spawn_app().await;
    promo_template(&app).await;
    let ids = users(&app, "k", USERS, &[]).await;
    let mut body = campaign("restarted", json!({"user_ids": ids}));
    body["rate_per_second"] = json!(400);
    let id = create(&app, body).await;
    let before = wait_campaign(&app, &id, "600 processed", |c| processed(c) >= 600).await;
    println!("stopping Herald at {} of {USERS} processed", processed(&before));

    let app = restart_keeping_sandbox(app).await;
    let resumed = get(&app, &id).await;
    assert_eq!(resumed["status"], "running", "{resumed:#}");
    assert!(processed(&resumed) < USERS as u64, "resumed mid-way: {resumed:#}");
    let c = wait_settled(&app, &id).await;
    assert_eq!(c["status"], "completed");
    let counts = json!({"accepted": USERS, "skipped": 0, "completed": USERS, "failed": 0, "cancelled": 0});
    assert_eq!(c["counts"], counts, "the page re-submitted after the restart counted once: {c:#}");

    // One notification (one delivery id) per user; a provider-side resend of a delivery in flight at the stop
    // is the engine's at-least-once window (docs/engine-semantics.md, "Crash"), not a second notification.
    let got = received(app.sandbox(), "restarted");
    assert_eq!(got.len(), USERS, "every user reached");
    let mut resent = 0;
    for (to, messages) in &got {
        let deliveries: HashSet<_> = messages.iter().map(|m| m.reference.clone()).collect();
        assert_eq!(deliveries.len(), 1, "{to} got {} different notifications", deliveries.len());
        resent += messages.len() - 1;
    }
    println!("restart: {USERS} users, one notification each; {resent} provider-side resends of in-flight sends");
}

/// p-th percentile of sorted `values`.
fn percentile(values: &[Duration], p: f64) -> Duration {
    values[((values.len() as f64 * p).ceil() as usize).clamp(1, values.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn high_priority_sends_reach_the_provider_while_a_low_priority_blast_runs() {
    const BLAST: usize = 20_000;
    const HIGH: usize = 200;
    let app = spawn_app().await;
    promo_template(&app).await;
    let setup = Instant::now();
    users(&app, "b", BLAST, &["blast"]).await;
    let tx = users(&app, "tx", HIGH, &[]).await;
    println!("created {} users in {:?}", BLAST + HIGH, setup.elapsed());
    // The same sends with nothing else running, for comparison.
    let quiet = send_high(&app, &tx, "quiet").await;
    let id = create(&app, campaign("blast", json!({"tag": "blast"}))).await;
    wait_campaign(&app, &id, "2,000 processed", |c| processed(c) >= 2_000).await;
    let sent = send_high(&app, &tx, "tx").await;
    let during = get(&app, &id).await;
    println!("200 high sends accepted with the blast at {} of {BLAST} processed", processed(&during));
    assert_eq!(during["status"], "running", "the blast was still running: {during:#}");

    let c = wait_settled(&app, &id).await;
    assert_eq!(count(&c, "completed"), BLAST as u64, "{c:#}");
    let at = |f: &str| c[f].as_str().unwrap().parse::<Timestamp>().unwrap();
    println!("blast: {BLAST} accepted in {:?}", at("finished_at").duration_since(at("started_at")));
    let record = app.sandbox().record();
    let blast_end = record.iter().filter(|m| m.body == "blast").map(|m| m.received_at).max().unwrap();
    let arrived: HashMap<&str, Timestamp> = record.iter().map(|m| (m.body.as_str(), m.received_at)).collect();
    for (body, _) in &sent {
        let received = *arrived.get(body.as_str()).unwrap_or_else(|| panic!("{body} never reached the sandbox"));
        assert!(received < blast_end, "{body} arrived after the blast finished");
    }
    for (what, sends) in [("alone", &quiet), (&format!("while {BLAST} low ran") as &str, &sent)] {
        let mut latencies: Vec<Duration> = sends
            .iter()
            .map(|(body, at)| Duration::try_from(arrived[body.as_str()].duration_since(*at)).unwrap_or_default())
            .collect();
        latencies.sort();
        println!(
            "high-priority accept -> provider, {what}: p50 {:?}, p99 {:?}, max {:?}",
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            latencies[latencies.len() - 1]
        );
    }
}

/// One `high` push to each of `users`, 20 at a time, bodies `{prefix}-{i}`; returns each body with the time
/// its request was sent.
async fn send_high(app: &TestApp, users: &[String], prefix: &str) -> Vec<(String, Timestamp)> {
    let sent: Vec<(String, Timestamp)> = futures_util::stream::iter(users.iter().enumerate())
        .map(|(i, user)| async move {
            let body = format!("{prefix}-{i}");
            let request = json!({"user_id": user, "channels": ["push"], "priority": "high",
                                 "category": "transaction", "content": {"title": "Order", "body": body}});
            let at = Timestamp::now();
            app.send(request).await;
            (body, at)
        })
        .buffer_unordered(20)
        .collect()
        .await;
    let bodies: HashSet<String> = sent.iter().map(|(b, _)| b.clone()).collect();
    app.wait_record(|r| r.iter().filter(|m| bodies.contains(&m.body)).count() == users.len()).await;
    sent
}
