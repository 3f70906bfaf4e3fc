//! Scheduled sends end to end (docs/scheduling.md): `send_at` as an instant or a local time, the allowed window,
//! PATCH and DELETE windows, quiet hours, and catch-up after downtime. Far-future cases run on the engine's
//! virtual clock (`Engine::clock().advance`), so "a year ahead" takes no real year.

mod app;

use std::time::Duration;

use herald::config::Settings;
use herald::domain::ProviderKind;
use herald::sandbox::FaultSettings;
use jiff::{SignedDuration, Timestamp, ToSpan};
use serde_json::{Value, json};

use app::{TestApp, spawn_app, spawn_app_with};

const DAY: u64 = 86_400;

/// `t` to the millisecond, as `rfc3339` sends it.
fn ms(t: Timestamp) -> Timestamp {
    Timestamp::from_millisecond(t.as_millisecond()).unwrap()
}

fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn push(user: &str, body: &str) -> Value {
    json!({"user_id": user, "channels": ["push"], "content": {"title": "T", "body": body}})
}

fn scheduled(user: &str, body: &str, at: Timestamp) -> Value {
    let mut request = push(user, body);
    request["send_at"] = json!(rfc3339(at));
    request
}

/// Sends one immediate notification and waits for it at the sandbox: everything the engine was going to send
/// before it (on the same user, in order) is there by then.
async fn barrier(app: &TestApp, user: &str) -> usize {
    let id = app.send(push(user, "barrier")).await;
    app.wait_final(&id).await;
    app.wait_record(|r| r.iter().any(|m| m.body == "barrier")).await;
    app.sandbox().record().iter().filter(|m| m.body != "barrier").count()
}

fn bodies(app: &TestApp) -> Vec<String> {
    app.sandbox().record().into_iter().map(|m| m.body).filter(|b| b != "barrier").collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_a_year_ahead_fires_once_when_its_time_comes() {
    let app = spawn_app().await;
    app.user("u1", &[("tok-1", "android")]).await;
    let due = ms(Timestamp::now().checked_add(SignedDuration::from_secs((365 * DAY) as i64)).unwrap());
    let (status, reply) = app.post("/v1/notifications", scheduled("u1", "a year later", due)).await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["status"], "scheduled");
    let id = reply["id"].as_str().unwrap();
    let (_, n) = app.get(&format!("/v1/notifications/{id}")).await;
    assert_eq!(n["status"], "scheduled");
    assert_eq!(n["deliveries"].as_array().unwrap().len(), 0, "{n:#}");
    assert_eq!(n["send_at"].as_str().unwrap().parse::<Timestamp>().unwrap(), due);

    app.running.engine.clock().advance(Duration::from_secs(364 * DAY));
    assert_eq!(barrier(&app, "u1").await, 0, "nothing is sent a day early");

    app.running.engine.clock().advance(Duration::from_secs(DAY));
    let n = app.wait_final(id).await;
    assert_eq!(n["status"], "completed", "{n:#}");
    app.running.engine.clock().advance(Duration::from_secs(30 * DAY));
    assert_eq!(barrier(&app, "u1").await, 1);
    assert_eq!(bodies(&app), ["a year later"], "fired exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_send_at_is_read_in_the_users_time_zone_unless_the_request_names_one() {
    let app = spawn_app().await;
    assert_eq!(app.put("/v1/users/seoul", json!({"timezone": "Asia/Seoul"})).await.0, 200);
    // 09:00 local on a day a month from now, whatever today is.
    let day = Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).date().checked_add(30.days()).unwrap();
    let local = day.at(9, 0, 0, 0);
    let seoul = local.to_zoned(jiff::tz::TimeZone::get("Asia/Seoul").unwrap()).unwrap().timestamp();
    let london = local.to_zoned(jiff::tz::TimeZone::get("Europe/London").unwrap()).unwrap().timestamp();
    let local = local.strftime("%Y-%m-%dT%H:%M:%S").to_string();
    let mut body = push("seoul", "x");
    body["send_at"] = json!(local);
    let id = app.send(body.clone()).await;
    let (_, n) = app.get(&format!("/v1/notifications/{id}")).await;
    assert_eq!(n["send_at"].as_str().unwrap().parse::<Timestamp>().unwrap(), seoul, "09:00 in Seoul");

    body["timezone"] = json!("Europe/London");
    body["content"]["body"] = json!("y");
    let id = app.send(body).await;
    let (_, n) = app.get(&format!("/v1/notifications/{id}")).await;
    assert_eq!(n["send_at"].as_str().unwrap().parse::<Timestamp>().unwrap(), london);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_at_outside_the_window_or_malformed_is_a_422_naming_the_field() {
    let app = spawn_app().await;
    app.user("u1", &[("tok-1", "android")]).await;
    let now = Timestamp::now();
    let cases = [
        (scheduled("u1", "soon", now.checked_add(5.seconds()).unwrap()), "send_at"),
        (scheduled("u1", "late", now.checked_add(SignedDuration::from_hours(24 * 400)).unwrap()), "send_at"),
        (json!({"user_id": "u1", "channels": ["push"], "content": {"body": "b"}, "send_at": "tomorrow"}), "send_at"),
        (
            json!({"user_id": "u1", "channels": ["push"], "content": {"body": "b"},
                   "send_at": "2027-01-01T00:00:00", "timezone": "Mars/Olympus"}),
            "timezone",
        ),
        (
            json!({"user_id": "u1", "channels": ["push"], "content": {"body": "b"}, "timezone": "Asia/Seoul"}),
            "timezone",
        ),
    ];
    for (body, field) in cases {
        let (status, reply) = app.post("/v1/notifications", body.clone()).await;
        assert_eq!(status, 422, "{body} → {reply}");
        assert_eq!(reply["error"]["field"], field, "{reply}");
    }
    let mut expiring = scheduled("u1", "e", now.checked_add(SignedDuration::from_hours(2)).unwrap());
    expiring["expires_at"] = json!(rfc3339(now.checked_add(SignedDuration::from_hours(1)).unwrap()));
    let (status, reply) = app.post("/v1/notifications", expiring).await;
    assert_eq!((status, reply["error"]["field"].clone()), (422, json!("expires_at")), "{reply}");
    assert_eq!(barrier(&app, "u1").await, 0, "nothing refused was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_works_until_an_hour_before_and_the_patched_version_is_sent() {
    let app = spawn_app().await;
    app.user("u1", &[("tok-1", "android")]).await;
    let now = Timestamp::now();
    let id = app.send(scheduled("u1", "original", now.checked_add(SignedDuration::from_hours(2)).unwrap())).await;
    let later = ms(now.checked_add(SignedDuration::from_hours(3)).unwrap());
    let patch = json!({"send_at": rfc3339(later), "content": {"title": "T", "body": "patched"}});
    let (status, n) = app.request(reqwest::Method::PATCH, &format!("/v1/notifications/{id}"), Some(patch)).await;
    assert_eq!(status, 200, "{n}");
    assert_eq!(n["send_at"].as_str().unwrap().parse::<Timestamp>().unwrap(), later);

    app.running.engine.clock().advance(Duration::from_secs(2 * 3600 + 60));
    assert_eq!(barrier(&app, "u1").await, 0, "the old send_at no longer fires");
    let too_late = json!({"content": {"body": "too late"}});
    let (status, reply) = app.request(reqwest::Method::PATCH, &format!("/v1/notifications/{id}"), Some(too_late)).await;
    assert_eq!(status, 409, "within an hour of the send: {reply}");

    app.running.engine.clock().advance(Duration::from_secs(3600));
    app.wait_final(&id).await;
    assert_eq!(barrier(&app, "u1").await, 1);
    assert_eq!(bodies(&app), ["patched"]);
    let (status, _) = app
        .request(reqwest::Method::PATCH, &format!("/v1/notifications/{id}"), Some(json!({"content": {"body": "x"}})))
        .await;
    assert_eq!(status, 409, "a sent notification cannot be patched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_cancels_a_scheduled_send_far_ahead_or_already_in_the_timers() {
    let app = spawn_app().await;
    app.user("u1", &[("tok-1", "android")]).await;
    let now = Timestamp::now();
    let far = app.send(scheduled("u1", "far", now.checked_add(SignedDuration::from_hours(5)).unwrap())).await;
    // Due inside the loader's window (60 s): it sits in the shard's timers after its commit.
    let near = app.send(scheduled("u1", "near", now.checked_add(30.seconds()).unwrap())).await;
    for id in [&far, &near] {
        let (status, reply) = app.request(reqwest::Method::DELETE, &format!("/v1/notifications/{id}"), None).await;
        assert_eq!(status, 200, "{reply}");
        assert_eq!(reply["status"], "cancelled");
    }
    app.running.engine.clock().advance(Duration::from_secs(6 * 3600));
    assert_eq!(barrier(&app, "u1").await, 0, "neither was sent");
    for id in [&far, &near] {
        let (_, n) = app.get(&format!("/v1/notifications/{id}")).await;
        assert_eq!(n["status"], "cancelled", "{n:#}");
    }
    let (status, _) = app.request(reqwest::Method::DELETE, &format!("/v1/notifications/{far}"), None).await;
    assert_eq!(status, 409, "already cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_downtime_what_came_due_fires_once_oldest_first_and_expired_ones_fail() {
    let app = spawn_app_with(|s| s.scheduling.min_lead_s = 1).await;
    app.user("u1", &[("tok-1", "android")]).await;
    let now = Timestamp::now();
    let at = |ms: i64| now.checked_add(SignedDuration::from_millis(ms)).unwrap();
    let second = app.send(scheduled("u1", "second", at(2_500))).await;
    let first = app.send(scheduled("u1", "first", at(2_000))).await;
    let mut expiring = scheduled("u1", "expired", at(2_200));
    expiring["expires_at"] = json!(rfc3339(at(2_400)));
    let expired = app.send(expiring).await;

    let app = app.restart_after(Duration::from_secs(4), |s| s.scheduling.min_lead_s = 1).await;
    for id in [&first, &second] {
        assert_eq!(app.wait_final(id).await["status"], "completed");
    }
    let n = app.wait_final(&expired).await;
    assert_eq!(n["status"], "failed", "{n:#}");
    assert!(n["reason"].as_str().unwrap().starts_with("expired"), "{n:#}");
    assert_eq!(barrier(&app, "u1").await, 2);
    assert_eq!(bodies(&app), ["first", "second"], "oldest first, each once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_hours_defer_non_critical_sends_to_the_end_of_the_window() {
    let app = spawn_app().await;
    app.user("night-owl", &[("tok-q", "android")]).await;
    let now = Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
    let hhmm = |z: jiff::Zoned| z.strftime("%H:%M").to_string();
    let start = hhmm(now.checked_sub(1.hour()).unwrap());
    let end_at = now.checked_add(1.hour()).unwrap();
    let quiet = json!({"quiet_hours": {"start": start, "end": hhmm(end_at.clone())}});
    assert_eq!(app.put("/v1/users/night-owl/preferences", quiet).await.0, 200);
    assert_eq!(app.put("/v1/users/night-owl", json!({"timezone": "UTC"})).await.0, 200);

    let (status, reply) = app.post("/v1/notifications", push("night-owl", "can wait")).await;
    assert_eq!((status, reply["status"].clone()), (202, json!("scheduled")), "{reply}");
    let deferred = reply["id"].as_str().unwrap().to_string();
    let (_, n) = app.get(&format!("/v1/notifications/{deferred}")).await;
    assert_eq!(n["reason"], "quiet_hours", "{n:#}");
    let expected_end = end_at.with().second(0).subsec_nanosecond(0).build().unwrap().timestamp();
    assert_eq!(n["send_at"].as_str().unwrap().parse::<Timestamp>().unwrap(), expected_end);

    let mut urgent = push("night-owl", "urgent");
    urgent["priority"] = json!("critical");
    let urgent = app.send(urgent).await;
    assert_eq!(app.wait_final(&urgent).await["status"], "completed", "critical sends are not deferred");
    assert_eq!(bodies(&app), ["urgent"]);

    app.running.engine.clock().advance(Duration::from_secs(2 * 3600));
    assert_eq!(app.wait_final(&deferred).await["status"], "completed");
    assert_eq!(bodies(&app), ["urgent", "can wait"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_scheduled_request_answers_scheduled_as_a_duplicate() {
    let app = spawn_app().await;
    app.user("u1", &[("tok-1", "android")]).await;
    let mut body = scheduled("u1", "once", Timestamp::now().checked_add(SignedDuration::from_hours(1)).unwrap());
    body["idempotency_key"] = json!("sched-key-1");
    let (_, first) = app.post("/v1/notifications", body.clone()).await;
    let (status, again) = app.post("/v1/notifications", body).await;
    assert_eq!(status, 202);
    assert_eq!(again["id"], first["id"]);
    assert_eq!((again["status"].clone(), again["duplicate"].clone()), (json!("scheduled"), json!(true)));
}

/// The sum of the metric lines that start with `prefix` (a name and its first labels).
fn metric_sum(text: &str, prefix: &str) -> i64 {
    text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok()).sum()
}

/// Reads `/metrics` every millisecond until `done` holds for the latest sums of `prefixes` (at most 30 s);
/// returns the highest sum of each seen meanwhile.
///
/// Not back to back: two tests doing that kept both cores busy, and one `fdatasync` of the store's log in
/// ten runs then waited for the kernel's writeback until a test gave up (measured 28.9 s, `folio_wait_writeback`),
/// so the sends behind it never went out. A millisecond apart, a send (20 ms here) is still seen many times.
async fn peaks_until<const N: usize>(app: &TestApp, prefixes: [&str; N], done: impl Fn(&[i64; N]) -> bool) -> [i64; N] {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut peaks = [0; N];
    loop {
        let (_, metrics) = app.get("/metrics").await;
        let latest = prefixes.map(|prefix| metric_sum(metrics.as_str().unwrap(), prefix));
        for (peak, value) in peaks.iter_mut().zip(latest) {
            *peak = (*peak).max(value);
        }
        if done(&latest) {
            return peaks;
        }
        assert!(std::time::Instant::now() < deadline, "still waiting after 30 s; last {prefixes:?} = {latest:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Schedules 30 pushes to `u1`, due two hours from now a millisecond apart; returns their ids and bodies in due
/// order.
async fn schedule_thirty(app: &TestApp) -> (Vec<String>, Vec<String>) {
    let now = Timestamp::now();
    let bodies: Vec<String> = (0..30).map(|i| format!("s{i:02}")).collect();
    let mut ids = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let due = now.checked_add(SignedDuration::from_hours(2) + SignedDuration::from_millis(i as i64)).unwrap();
        ids.push(app.send(scheduled("u1", body, due)).await);
    }
    (ids, bodies)
}

/// Sends that come due while their provider is backed up wait in the shard (`herald_scheduled_held`) instead of
/// filling its dispatcher past half of `engine.queue_capacity`; each still goes out once, in due order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_sends_wait_in_the_shard_while_their_provider_is_backed_up() {
    let app = one_at_a_time_fcm(|s| s.engine.queue_capacity = 4).await;
    due_sends_fill_the_fcm_queue_to_at_most(&app, 2, "half the capacity").await;
}

/// However large the queue capacity, due sends fire only `scheduling.fire_ahead` jobs ahead of the provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_sends_fire_at_most_fire_ahead_jobs_ahead() {
    let app = one_at_a_time_fcm(|s| {
        s.engine.queue_capacity = 1000;
        s.scheduling.fire_ahead = 2;
    })
    .await;
    due_sends_fill_the_fcm_queue_to_at_most(&app, 2, "fire_ahead").await;
}

/// An app whose FCM takes one send at a time, 20 ms each, and a user `u1` with an Android device; `tweak` sets
/// the queue bounds under test.
async fn one_at_a_time_fcm(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let app = spawn_app_with(|s| {
        s.providers.limits.get_mut(&ProviderKind::Fcm).unwrap().max_in_flight = 1;
        tweak(s);
    })
    .await;
    app.sandbox()
        .set_faults(ProviderKind::Fcm, FaultSettings { latency_min_ms: 20, latency_max_ms: 20, ..Default::default() });
    app.user("u1", &[("tok-1", "android")]).await;
    app
}

/// Thirty sends to a slow FCM all come due: the FCM queue never holds more than `limit`, some wait in the
/// shard, and each still goes out once, in due order.
async fn due_sends_fill_the_fcm_queue_to_at_most(app: &TestApp, limit: i64, bound: &str) {
    let (_, expected) = schedule_thirty(app).await;

    app.running.engine.clock().advance(Duration::from_secs(3 * 3600));
    let [peak_queued, peak_held] =
        peaks_until(app, ["herald_queue_depth{provider=\"fcm\"", "herald_scheduled_held "], |_| {
            app.sandbox().record().len() >= expected.len()
        })
        .await;
    assert!(peak_queued <= limit, "the FCM queue reached {peak_queued} jobs; {bound} is {limit}");
    assert!(peak_held > 0, "nothing was held");
    assert_eq!(barrier(app, "u1").await, expected.len());
    assert_eq!(bodies(app), expected, "each once, in due order");
    let (_, metrics) = app.get("/metrics").await;
    assert_eq!(metric_sum(metrics.as_str().unwrap(), "herald_scheduled_held "), 0);
}

/// Held sends cancelled while they wait never go out; they leave the held queue all the same, and the sends
/// behind them still go out once, in due order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_sends_cancelled_while_they_wait_never_go_out() {
    let app = one_at_a_time_fcm(|s| s.engine.queue_capacity = 4).await;
    let (ids, due_bodies) = schedule_thirty(&app).await;

    app.running.engine.clock().advance(Duration::from_secs(3 * 3600));
    peaks_until(&app, ["herald_scheduled_held "], |[held]| *held >= 10).await;
    // The last ten of thirty, due last, wait behind the others: cancel every other one of them.
    let cancelled: Vec<usize> = (20..30).step_by(2).collect();
    for &i in &cancelled {
        let (status, reply) =
            app.request(reqwest::Method::DELETE, &format!("/v1/notifications/{}", ids[i]), None).await;
        assert_eq!(status, 200, "{reply}");
        assert_eq!(reply["status"], "cancelled");
    }
    let expected: Vec<String> =
        due_bodies.iter().enumerate().filter(|(i, _)| !cancelled.contains(i)).map(|(_, b)| b.clone()).collect();
    peaks_until(&app, ["herald_scheduled_held "], |[held]| *held == 0).await;
    assert_eq!(barrier(&app, "u1").await, expected.len());
    assert_eq!(bodies(&app), expected, "the others each once, in due order; none of the cancelled");
    for &i in &cancelled {
        let (_, n) = app.get(&format!("/v1/notifications/{}", ids[i])).await;
        assert_eq!(n["status"], "cancelled", "{n:#}");
    }
}

/// The loader keeps at most `scheduling.max_loaded` scheduled notifications in the shards' timers and reads the
/// rest of its window as those fire: every one still goes out once, in due order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loader_holds_at_most_max_loaded_in_memory_and_reads_the_rest_as_they_fire() {
    let app = spawn_app_with(|s| {
        s.scheduling.max_loaded = 5;
        s.scheduling.load_batch = 2;
        s.scheduling.load_interval_ms = 20;
    })
    .await;
    app.user("u1", &[("tok-1", "android")]).await;
    let (_, expected) = schedule_thirty(&app).await;

    // All 30 are inside the loader's 60 s horizon, 30 s before they are due.
    app.running.engine.clock().advance(Duration::from_secs(2 * 3600 - 30));
    let [loaded] = peaks_until(&app, ["herald_scheduled_timers "], |[timers]| *timers >= 5).await;
    // Then due: the loader reads the rest as those fire.
    app.running.engine.clock().advance(Duration::from_secs(60));
    let [draining] =
        peaks_until(&app, ["herald_scheduled_timers "], |_| app.sandbox().record().len() >= expected.len()).await;
    let peak = loaded.max(draining);
    assert_eq!(peak, 5, "the shards held {peak} scheduled notifications; max_loaded is 5");
    assert_eq!(barrier(&app, "u1").await, expected.len());
    assert_eq!(bodies(&app), expected, "each once, in due order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fired_send_is_written_with_all_its_deliveries_by_its_first_write_after_firing() {
    let app = spawn_app().await;
    app.user("u1", &[("tok-1", "android"), ("tok-2", "android")]).await;
    app.sandbox().set_faults(
        ProviderKind::Fcm,
        FaultSettings { latency_min_ms: 1500, latency_max_ms: 1500, ..Default::default() },
    );
    let due = Timestamp::now().checked_add(SignedDuration::from_hours(2)).unwrap();
    let id = app.send(scheduled("u1", "in flight", due)).await;
    app.running.engine.clock().advance(Duration::from_secs(3 * 3600));
    peaks_until(&app, ["herald_in_flight{provider=\"fcm\""], |[in_flight]| *in_flight >= 1).await;

    // Fired, the first push at the provider: nothing of it is written yet (docs/scheduling.md).
    let (_, n) = app.get(&format!("/v1/notifications/{id}")).await;
    assert_eq!(n["status"], "scheduled", "{n:#}");
    assert_eq!(n["deliveries"].as_array().unwrap().len(), 0, "{n:#}");
    // A DELETE cancels the second push, queued behind the first (per-recipient order); its write is the first
    // since the fire and carries both deliveries.
    let (status, reply) = app.request(reqwest::Method::DELETE, &format!("/v1/notifications/{id}"), None).await;
    assert_eq!((status, reply["status"].as_str()), (200, Some("dispatching")), "{reply}");
    let (_, n) = app.get(&format!("/v1/notifications/{id}")).await;
    assert_eq!(n["status"], "dispatching", "{n:#}");
    let statuses = |n: &Value| {
        let mut s: Vec<String> =
            n["deliveries"].as_array().unwrap().iter().map(|d| d["status"].as_str().unwrap().to_string()).collect();
        s.sort();
        s
    };
    assert_eq!(statuses(&n), ["cancelled", "queued"], "{n:#}");

    let n = app.wait_final(&id).await;
    assert_eq!(n["status"], "completed", "{n:#}");
    assert_eq!(statuses(&n), ["cancelled", "delivered"], "{n:#}");
    assert_eq!(barrier(&app, "u1").await, 1, "the push handed over, once");
}
