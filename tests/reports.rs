//! Delivery reports end to end: a lost report ends in `failed` after `engine.report_timeout_ms`, and late,
//! duplicated or contradicting reports never move a delivery backwards or count twice
//! (docs/engine-semantics.md, "Delivery reports").

mod app;

use app::spawn_app_with;
use serde_json::{Value, json};

/// Alimtalk to a user whose reports go nowhere: the sandbox posts them to a closed loopback port.
async fn alimtalk_without_reports(report_timeout_ms: u64) -> app::TestApp {
    let app = spawn_app_with(|s| {
        s.sandbox.report_url = "http://127.0.0.1:9/webhooks/alimtalk".into();
        s.engine.report_timeout_ms = report_timeout_ms;
    })
    .await;
    app.user("u-kakao", &[]).await;
    let template =
        json!({"channels": {"alimtalk": {"ko": {"body": "상담이 시작되었습니다", "templatecode": "T-001"}}}});
    assert_eq!(app.put("/v1/templates/counsel", template).await.0, 200);
    app
}

fn report(refkey: &str, result: &str) -> Value {
    json!({"DEVICE": "KAT", "CMSGID": "cmsg-1", "MSGID": "m-1", "PHONE": "821012345678", "MEDIA": "KAT",
           "UNIXTIME": "1700000000", "RESULT": result, "REFKEY": refkey, "RESEND_FLAG": "N"})
}

fn send_alimtalk() -> Value {
    json!({"user_id": "u-kakao", "channels": ["alimtalk"], "template": {"id": "counsel"}})
}

async fn metric(app: &app::TestApp, line_prefix: &str) -> u64 {
    let text = app.http.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {line_prefix}"))
}

#[tokio::test]
async fn a_lost_report_fails_the_delivery_after_the_timeout_and_a_late_one_changes_nothing() {
    let app = alimtalk_without_reports(300).await;
    let id = app.send(send_alimtalk()).await;
    let n = app.wait_final(&id).await;
    let delivery = &n["deliveries"][0];
    assert_eq!(delivery["status"], "failed", "{n}");
    let events = delivery["events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["requested", "sent", "failed"]);
    assert!(events[2]["reason"].as_str().unwrap().starts_with("report_timeout"), "{n}");
    assert_eq!(metric(&app, "herald_report_timeouts_total{provider=\"bizppurio\"}").await, 1);

    // The report arrives after all: answered (the provider must not retry it) but ignored.
    let delivery_id = delivery["id"].as_str().unwrap();
    assert_eq!(app.post("/webhooks/alimtalk", report(delivery_id, "7000")).await.0, 200);
    let (_, after) = app.get(&format!("/v1/notifications/{id}")).await;
    assert_eq!(after["deliveries"][0]["status"], "failed");
    assert_eq!(after["deliveries"][0]["events"].as_array().unwrap().len(), 3);
    app.running.stop().await;
}

#[tokio::test]
async fn duplicated_and_contradicting_reports_count_once_and_never_move_backwards() {
    let app = alimtalk_without_reports(60_000).await;
    let id = app.send(send_alimtalk()).await;
    let n = app.wait_notification(&id, |n| n["deliveries"][0]["status"] == "sent").await;
    let delivery_id = n["deliveries"][0]["id"].as_str().unwrap().to_string();
    let delivered_before =
        metric(&app, "herald_deliveries_total{channel=\"alimtalk\",provider=\"bizppurio\",outcome=\"delivered\"}")
            .await;

    for _ in 0..3 {
        assert_eq!(app.post("/webhooks/alimtalk", report(&delivery_id, "7000")).await.0, 200);
    }
    // A failure report arriving after the success (reordered) must not undo it.
    assert_eq!(app.post("/webhooks/alimtalk", report(&delivery_id, "7308")).await.0, 200);
    let n = app.wait_final(&id).await;
    let delivery = &n["deliveries"][0];
    assert_eq!(delivery["status"], "delivered", "{n}");
    let kinds: Vec<&str> = delivery["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["requested", "sent", "delivered"]);
    let delivered_after =
        metric(&app, "herald_deliveries_total{channel=\"alimtalk\",provider=\"bizppurio\",outcome=\"delivered\"}")
            .await;
    assert_eq!(delivered_after - delivered_before, 1);
    app.running.stop().await;
}
