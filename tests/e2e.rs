//! End-to-end: real HTTP into Herald, real provider protocols out to the in-process sandbox.
//! Guarantees under test are stated in docs/engine-semantics.md.

mod app;

use std::collections::HashSet;

use app::{spawn_app, spawn_app_with, statuses};
use herald::domain::{Channel, ProviderKind};
use herald::sandbox::FaultSettings;
use serde_json::json;

fn s(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_parallel_send_delivers_push_to_both_devices_email_and_sms_exactly_once() {
    let app = spawn_app().await;
    app.user("u-1", &[("a1b2c3d4e5f6", "ios"), ("android-token-1", "android")]).await;
    let id = app
        .send(json!({
            "user_id": "u-1", "channels": ["push", "email", "sms"], "strategy": "parallel",
            "content": {"title": "Order shipped", "body": "Your order is on its way"}
        }))
        .await;
    let n = app.wait_final(&id).await;
    assert_eq!(n["status"], "completed", "{n:#}");
    assert_eq!(
        statuses(&n),
        s(&[("email", "delivered"), ("push", "delivered"), ("push", "delivered"), ("sms", "delivered")])
    );
    let record = app.sandbox().record();
    assert_eq!(record.len(), 4, "{record:#?}");
    let refs: HashSet<_> = record.iter().map(|m| m.reference.clone().expect("reference")).collect();
    let delivery_ids: HashSet<_> =
        n["deliveries"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(refs, delivery_ids, "each delivery reached the sandbox exactly once");
    let mut tos: Vec<_> = record.iter().map(|m| (m.channel, m.to.clone())).collect();
    tos.sort();
    assert_eq!(
        tos,
        vec![
            (Channel::Push, "a1b2c3d4e5f6".to_string()),
            (Channel::Push, "android-token-1".to_string()),
            (Channel::Email, "u-1@example.com".to_string()),
            (Channel::Sms, "+821012345678".to_string()),
        ]
    );
    for m in &record {
        // SMS has no title field: the title leads the text.
        let expected = if m.channel == Channel::Sms {
            "Order shipped\nYour order is on its way"
        } else {
            "Your order is on its way"
        };
        assert_eq!(m.body, expected, "{m:?}");
    }
    let email = record.iter().find(|m| m.channel == Channel::Email).unwrap();
    assert_eq!(email.title.as_deref(), Some("Order shipped"));
    app.running.stop().await;
}

#[tokio::test]
async fn a_priority_send_falls_back_to_sms_when_push_fails_permanently() {
    let app = spawn_app().await;
    app.sandbox().set_faults(ProviderKind::Fcm, FaultSettings { permanent_error_rate: 1.0, ..Default::default() });
    app.user("u-2", &[("android-token-2", "android")]).await;
    let id = app
        .send(json!({
            "user_id": "u-2", "channels": ["push", "sms"], "strategy": "priority",
            "content": {"title": "Login", "body": "New login from Seoul"}
        }))
        .await;
    let n = app.wait_final(&id).await;
    assert_eq!(n["status"], "completed");
    assert_eq!(statuses(&n), s(&[("push", "failed"), ("sms", "delivered")]));
    let record = app.sandbox().record();
    assert_eq!(record.len(), 1);
    assert_eq!(record[0].channel, Channel::Sms);
    app.running.stop().await;
}

#[tokio::test]
async fn a_priority_send_stops_at_the_first_delivered_channel() {
    let app = spawn_app().await;
    app.user("u-3", &[("android-token-3", "android")]).await;
    let id = app
        .send(json!({"user_id": "u-3", "channels": ["push", "sms"], "strategy": "priority", "content": {"body": "hi"}}))
        .await;
    let n = app.wait_final(&id).await;
    assert_eq!(statuses(&n), s(&[("push", "delivered")]), "sms is never tried");
    app.running.stop().await;
}

#[tokio::test]
async fn two_hundred_notifications_to_one_user_reach_the_provider_in_acceptance_order_despite_jitter_and_retries() {
    // SMS: the sandbox's retryable Twilio error carries no Retry-After, so retries follow Herald's own (test-fast)
    // backoff. FCM's carries `Retry-After: 1`, which Herald honours, making ~40 serial retries take ~40 s.
    let app = spawn_app_with(|s| s.engine.max_retries = 20).await;
    let faults = FaultSettings { latency_min_ms: 0, latency_max_ms: 5, error_rate: 0.2, ..Default::default() };
    app.sandbox().set_faults(ProviderKind::Twilio, faults);
    app.user("u-order", &[]).await;
    let mut ids = Vec::new();
    for i in 0..200 {
        ids.push(
            app.send(json!({"user_id": "u-order", "channels": ["sms"], "content": {"body": format!("message {i}")}}))
                .await,
        );
    }
    let record = app.wait_record(|r| r.len() >= 200).await;
    let order: Vec<usize> = record.iter().map(|m| m.body.trim_start_matches("message ").parse().unwrap()).collect();
    assert_eq!(order, (0..200).collect::<Vec<_>>(), "arrival order at the provider");
    let retried = {
        let last = app.wait_final(ids.last().unwrap()).await;
        assert_eq!(last["status"], "completed");
        let mut retried = 0;
        for id in &ids {
            let n = app.wait_final(id).await;
            retried += usize::from(n["deliveries"][0]["attempts"].as_u64().unwrap() > 1);
        }
        retried
    };
    assert!(retried > 0, "the fault injection caused retries");
    app.running.stop().await;
}

#[tokio::test]
async fn bad_input_gets_the_right_status_and_field() {
    let app = spawn_app().await;
    app.user("u-bad", &[]).await;
    let raw = |body: &'static str| {
        let http = app.http.clone();
        let url = format!("{}/v1/notifications", app.base);
        async move {
            let resp = http.post(url).header("content-type", "application/json").body(body).send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (status, body) = raw("{\"user_id\": ").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "malformed_json");

    let big =
        format!("{{\"user_id\":\"u-bad\",\"channels\":[\"sms\"],\"content\":{{\"body\":\"{}\"}}}}", "x".repeat(70_000));
    let resp = app.http.post(format!("{}/v1/notifications", app.base)).body(big).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 413);

    let cases = [
        (json!({"user_id": "u-bad", "channels": ["fax"], "content": {"body": "x"}}), "channels[0]"),
        (json!({"user_id": "u-bad", "channels": [], "content": {"body": "x"}}), "channels"),
        (json!({"user_id": "nobody", "channels": ["sms"], "content": {"body": "x"}}), "user_id"),
        (json!({"to": {"phone": "12-34"}, "channels": ["sms"], "content": {"body": "x"}}), "to.phone"),
        (json!({"to": {"email": "not-an-email"}, "channels": ["email"], "content": {"body": "x"}}), "to.email"),
        (json!({"user_id": "u-bad", "channels": ["sms"], "template": {"id": "missing"}}), "template.id"),
        (json!({"user_id": "u-bad", "channels": ["sms"], "priority": "urgent", "content": {"body": "x"}}), "priority"),
    ];
    for (body, field) in cases {
        let (status, reply) = app.post("/v1/notifications", body).await;
        assert_eq!(status, 422, "{reply}");
        assert_eq!(reply["error"]["field"], field, "{reply}");
    }

    let (status, reply) = app.put("/v1/users/u-bad", json!({"phone": "010-12"})).await;
    assert_eq!((status, reply["error"]["field"].as_str()), (422, Some("phone")), "{reply}");
    let (status, reply) = app.put("/v1/users/u-bad", json!({"email": "kim@"})).await;
    assert_eq!((status, reply["error"]["field"].as_str()), (422, Some("email")), "{reply}");
    let (status, reply) = app.put("/v1/users/u-bad", json!({"timezone": "Mars/Olympus"})).await;
    assert_eq!((status, reply["error"]["field"].as_str()), (422, Some("timezone")), "{reply}");

    let (status, _) = app
        .put("/v1/templates/shipped", json!({"channels": {"sms": {"ko": {"body": "{{item}} 배송 시작 ({{eta}})"}}}}))
        .await;
    assert_eq!(status, 200);
    let (status, reply) = app
        .post(
            "/v1/notifications",
            json!({"user_id": "u-bad", "channels": ["sms"], "template": {"id": "shipped", "params": {"item": "책"}}}),
        )
        .await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["error"]["field"], "template.params.eta");

    let (status, _) = app.get("/v1/notifications/0000").await;
    assert_eq!(status, 404);
    let (status, _) = app.get("/v1/users/nobody").await;
    assert_eq!(status, 404);
    assert_eq!(app.sandbox().record().len(), 0, "nothing was sent");
    let (status, _) = app.get("/healthz").await;
    assert_eq!(status, 200, "still serving");
    app.running.stop().await;
}

#[tokio::test]
async fn templates_render_per_locale_with_parameters() {
    let app = spawn_app().await;
    app.user("u-t", &[]).await;
    app.put("/v1/users/u-t", json!({"locale": "ko-KR"})).await;
    let (status, body) = app
        .put(
            "/v1/templates/shipped",
            json!({"channels": {"sms": {"ko": {"body": "{{item}} 배송 시작"}, "en": {"body": "{{item}} shipped"}}}, "default_locale": "en"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let id = app
        .send(json!({"user_id": "u-t", "channels": ["sms"], "template": {"id": "shipped", "params": {"item": "책"}}}))
        .await;
    app.wait_final(&id).await;
    assert_eq!(app.sandbox().record()[0].body, "책 배송 시작");
    app.running.stop().await;
}

#[tokio::test]
async fn idempotency_keys_replay_the_first_answer_and_conflict_on_a_different_body() {
    let app = spawn_app().await;
    app.user("u-i", &[]).await;
    let body = json!({"user_id": "u-i", "channels": ["email"], "content": {"body": "once"}, "idempotency_key": "k-1"});
    let (s1, first) = app.post("/v1/notifications", body.clone()).await;
    let (s2, second) = app.post("/v1/notifications", body).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(first["duplicate"], false);
    assert_eq!(second["duplicate"], true);
    assert_eq!(first["id"], second["id"]);
    let (status, reply) = app
        .post(
            "/v1/notifications",
            json!({"user_id": "u-i", "channels": ["email"], "content": {"body": "other"}, "idempotency_key": "k-1"}),
        )
        .await;
    assert_eq!(status, 409, "{reply}");

    let same = json!({"user_id": "u-i", "channels": ["email"], "content": {"body": "same content"}});
    let (_, a) = app.post("/v1/notifications", same.clone()).await;
    let (_, b) = app.post("/v1/notifications", same).await;
    assert_eq!(a["id"], b["id"], "identical request within 60 s is a duplicate");
    assert_eq!(b["duplicate"], true);
    app.wait_final(a["id"].as_str().unwrap()).await;
    app.wait_final(first["id"].as_str().unwrap()).await;
    assert_eq!(app.sandbox().record().len(), 2);
    app.running.stop().await;
}

#[tokio::test]
async fn exhausted_retries_dead_letter_and_a_replay_delivers() {
    let app = spawn_app().await;
    app.sandbox().set_faults(ProviderKind::Twilio, FaultSettings { error_rate: 1.0, ..Default::default() });
    app.user("u-dlq", &[]).await;
    let id = app.send(json!({"user_id": "u-dlq", "channels": ["sms"], "content": {"body": "retry me"}})).await;
    let n = app.wait_final(&id).await;
    assert_eq!(n["status"], "failed");
    let delivery = &n["deliveries"][0];
    assert_eq!(delivery["status"], "dead");
    assert_eq!(delivery["attempts"], 4, "first attempt + 3 retries");
    let kinds: Vec<&str> = delivery["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["requested", "retry", "retry", "retry", "dead_lettered"]);

    let (status, dlq) = app.get("/v1/dlq?channel=sms").await;
    assert_eq!(status, 200);
    let delivery_id = delivery["id"].as_str().unwrap();
    assert_eq!(dlq["items"][0]["id"], delivery_id);
    let (_, other) = app.get("/v1/dlq?channel=push").await;
    assert_eq!(other["items"].as_array().unwrap().len(), 0);

    app.sandbox().set_faults(ProviderKind::Twilio, FaultSettings::default());
    let (status, _) = app.post(&format!("/v1/dlq/{delivery_id}/replay"), json!({})).await;
    assert_eq!(status, 202);
    let n = app.wait_notification(&id, |n| n["status"] == "completed").await;
    assert_eq!(n["deliveries"][0]["status"], "delivered");
    let (_, dlq) = app.get("/v1/dlq").await;
    assert_eq!(dlq["items"].as_array().unwrap().len(), 0, "replayed deliveries leave the DLQ");
    let (status, _) = app.post(&format!("/v1/dlq/{delivery_id}/replay"), json!({})).await;
    assert_eq!(status, 409, "only dead deliveries replay");
    app.running.stop().await;
}

#[tokio::test]
async fn in_app_notifications_land_in_the_inbox_and_read_marking_is_idempotent() {
    let app = spawn_app().await;
    app.user("u-in", &[]).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            app.send(
                json!({"user_id": "u-in", "channels": ["in_app"], "content": {"title": "t", "body": format!("n{i}")}}),
            )
            .await,
        );
    }
    for id in &ids {
        assert_eq!(app.wait_final(id).await["status"], "completed");
    }
    let (_, inbox) = app.get("/v1/users/u-in/inbox?limit=2").await;
    assert_eq!(inbox["unread_count"], 3);
    let items = inbox["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["body"], "n2", "newest first");
    let cursor = inbox["next_cursor"].as_str().unwrap();
    let (_, rest) = app.get(&format!("/v1/users/u-in/inbox?limit=2&cursor={cursor}")).await;
    assert_eq!(rest["items"][0]["body"], "n0");
    assert!(rest["next_cursor"].is_null());
    let first = items[0]["id"].as_str().unwrap();
    for _ in 0..2 {
        let (status, reply) = app.post("/v1/users/u-in/inbox/read", json!({"ids": [first]})).await;
        assert_eq!(status, 200);
        assert_eq!(reply["unread_count"], 2);
    }
    let (_, reply) = app.post("/v1/users/u-in/inbox/read", json!({"all": true})).await;
    assert_eq!(reply["unread_count"], 0);
    app.running.stop().await;
}

#[tokio::test]
async fn an_unregistered_token_fails_the_delivery_and_removes_the_device() {
    let app = spawn_app().await;
    app.user("u-unreg", &[("unregistered-token", "android"), ("good-token", "android")]).await;
    let id = app.send(json!({"user_id": "u-unreg", "channels": ["push"], "content": {"body": "hi"}})).await;
    let n = app.wait_final(&id).await;
    assert_eq!(statuses(&n), s(&[("push", "delivered"), ("push", "failed")]));
    let (_, user) = app.get("/v1/users/u-unreg").await;
    let tokens: Vec<&str> = user["devices"].as_array().unwrap().iter().map(|d| d["token"].as_str().unwrap()).collect();
    assert_eq!(tokens, ["good-token"]);
    app.running.stop().await;
}

#[tokio::test]
async fn a_missing_contact_or_disabled_channel_is_filtered_not_failed() {
    let app = spawn_app().await;
    app.put("/v1/users/u-f", json!({"email": "f@example.com"})).await;
    let (status, _) =
        app.put("/v1/users/u-f/preferences", json!({"categories": {"promotion": {"email": false}}})).await;
    assert_eq!(status, 200);
    let id = app.send(json!({"user_id": "u-f", "channels": ["sms", "push"], "content": {"body": "x"}})).await;
    let n = app.wait_final(&id).await;
    assert_eq!(statuses(&n), s(&[("push", "filtered"), ("sms", "filtered")]));
    let reasons: Vec<&str> = n["events"].as_array().unwrap().iter().filter_map(|e| e["reason"].as_str()).collect();
    assert!(reasons.contains(&"missing contact: no phone"), "{reasons:?}");
    let id = app
        .send(json!({"user_id": "u-f", "category": "promotion", "channels": ["email"], "content": {"body": "sale"}}))
        .await;
    let n = app.wait_final(&id).await;
    assert_eq!(statuses(&n), s(&[("email", "filtered")]));
    assert_eq!(app.sandbox().record().len(), 0);
    app.running.stop().await;
}

/// Posts sms notifications of `priority` to `user` until one is refused; returns that answer and how many were
/// accepted before it.
async fn send_until_429(app: &app::TestApp, user: &str, priority: &str) -> (reqwest::Response, usize) {
    for i in 0..20 {
        let resp = app
            .http
            .post(format!("{}/v1/notifications", app.base))
            .json(&json!({"user_id": user, "channels": ["sms"], "priority": priority, "content": {"body": format!("{priority} {i}")}}))
            .send()
            .await
            .unwrap();
        if resp.status().as_u16() == 429 {
            return (resp, i);
        }
        assert_eq!(resp.status().as_u16(), 202);
    }
    panic!("20 {priority} sends and the engine never pushed back");
}

#[tokio::test]
async fn full_queues_answer_429_with_retry_after() {
    let app = spawn_app_with(|s| {
        s.engine.queue_capacity = 2;
        s.providers.limits.get_mut(&ProviderKind::Twilio).unwrap().max_in_flight = 1;
    })
    .await;
    app.sandbox().set_faults(
        ProviderKind::Twilio,
        FaultSettings { latency_min_ms: 2000, latency_max_ms: 2000, ..Default::default() },
    );
    app.user("u-429", &[]).await;
    let (resp, _) = send_until_429(&app, "u-429", "normal").await;
    assert!(resp.headers().get("retry-after").is_some());
    let (_, metrics) = app.get("/metrics").await;
    assert!(metrics.as_str().unwrap().contains("herald_rejected_overload_total 1"));
    // The normal lane is full; high sends wait behind only the high lane, which has room for two.
    let (resp, accepted) = send_until_429(&app, "u-429", "high").await;
    assert_eq!(accepted, 2, "high was refused behind the normal backlog");
    assert!(resp.headers().get("retry-after").is_some());
    // Low counts every lane, at half the capacity.
    let (_, accepted) = send_until_429(&app, "u-429", "low").await;
    assert_eq!(accepted, 0);
    app.running.stop().await;
}

#[tokio::test]
async fn cancelling_stops_what_was_not_handed_to_a_provider() {
    let app = spawn_app_with(|s| s.providers.limits.get_mut(&ProviderKind::Smtp).unwrap().max_in_flight = 1).await;
    app.sandbox().set_faults(
        ProviderKind::Smtp,
        FaultSettings { latency_min_ms: 200, latency_max_ms: 200, ..Default::default() },
    );
    app.user("u-c", &[]).await;
    let first = app.send(json!({"user_id": "u-c", "channels": ["email"], "content": {"body": "first"}})).await;
    let second = app.send(json!({"user_id": "u-c", "channels": ["email"], "content": {"body": "second"}})).await;
    let (status, reply) = app.request(reqwest::Method::DELETE, &format!("/v1/notifications/{second}"), None).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["status"], "cancelled");
    assert_eq!(app.wait_final(&first).await["status"], "completed");
    let n = app.wait_final(&second).await;
    assert_eq!(n["status"], "cancelled");
    assert_eq!(statuses(&n), s(&[("email", "cancelled")]));
    let (status, _) = app.request(reqwest::Method::DELETE, &format!("/v1/notifications/{second}"), None).await;
    assert_eq!(status, 409);
    let bodies: Vec<String> = app.sandbox().record().into_iter().map(|m| m.body).collect();
    assert_eq!(bodies, ["first"]);
    app.running.stop().await;
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz").await.0, 200);
    assert_eq!(app.get("/readyz").await.0, 200);
    app.user("u-m", &[]).await;
    let id = app.send(json!({"user_id": "u-m", "channels": ["sms"], "content": {"body": "x"}})).await;
    app.wait_final(&id).await;
    let (_, metrics) = app.get("/metrics").await;
    let text = metrics.as_str().unwrap();
    assert!(text.contains("herald_accepted_total{channel=\"sms\"} 1"), "{text}");
    assert!(
        text.contains("herald_deliveries_total{channel=\"sms\",provider=\"twilio\",outcome=\"delivered\"} 1"),
        "{text}"
    );
    assert!(text.contains("herald_queue_depth{provider=\"twilio\",lane=\"normal\"} 0"));
    app.running.stop().await;
}

#[tokio::test]
async fn lanes_serve_critical_first_and_a_recipient_inherits_its_most_urgent_lane_but_keeps_fifo() {
    // One slot at the provider, so the order in which queued jobs are handed out is the order the sandbox sees.
    let app = spawn_app_with(|s| s.providers.limits.get_mut(&ProviderKind::Twilio).unwrap().max_in_flight = 1).await;
    app.sandbox().set_faults(
        ProviderKind::Twilio,
        FaultSettings { latency_min_ms: 150, latency_max_ms: 150, ..Default::default() },
    );
    for user in ["u-a", "u-b", "u-x", "u-c"] {
        app.user(user, &[]).await;
    }
    let send = |user: &str, priority: &str, body: &str| json!({"user_id": user, "channels": ["sms"], "priority": priority, "content": {"body": body}});
    let mut ids = vec![app.send(send("u-a", "low", "a-low")).await]; // occupies the only slot
    for (user, priority, body) in [
        ("u-b", "low", "b-low"),
        ("u-x", "low", "x-low"),
        ("u-x", "critical", "x-critical"),
        ("u-c", "critical", "c-critical"),
    ] {
        ids.push(app.send(send(user, priority, body)).await);
    }
    for id in &ids {
        app.wait_final(id).await;
    }
    let bodies: Vec<String> = app.sandbox().record().into_iter().map(|m| m.body).collect();
    // x-low rides the critical lane because x-critical waits behind it (inheritance), yet goes first (FIFO).
    assert_eq!(bodies, ["a-low", "x-low", "c-critical", "x-critical", "b-low"]);
    app.running.stop().await;
}

#[tokio::test]
async fn alimtalk_is_sent_then_delivered_only_by_the_report_webhook() {
    let app = spawn_app().await;
    app.sandbox().set_faults(ProviderKind::Bizppurio, FaultSettings { report_delay_ms: 300, ..Default::default() });
    app.user("u-kakao", &[]).await;
    let template = json!({"channels": {"alimtalk": {"ko": {"body": "{{name}}님, 상담이 시작되었습니다", "templatecode": "T-001"}}}});
    assert_eq!(app.put("/v1/templates/counsel", template).await.0, 200);
    let id = app
        .send(json!({"user_id": "u-kakao", "channels": ["alimtalk"], "template": {"id": "counsel", "params": {"name": "김"}}}))
        .await;
    // Bizppurio's 1000 answer means accepted: the delivery waits in `sent` for the report.
    let sent = app.wait_notification(&id, |n| n["deliveries"][0]["status"] == "sent").await;
    assert_eq!(sent["status"], "dispatching");
    let n = app.wait_final(&id).await;
    assert_eq!(n["status"], "completed");
    let kinds: Vec<&str> =
        n["deliveries"][0]["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["requested", "sent", "delivered"]);
    let record = app.sandbox().record();
    assert_eq!((record.len(), record[0].body.as_str()), (1, "김님, 상담이 시작되었습니다"));
    assert_eq!(record[0].reference.as_deref(), n["deliveries"][0]["id"].as_str());
    app.running.stop().await;
}
