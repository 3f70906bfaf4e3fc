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

#[tokio::test]
async fn waits_for_reports_resume_after_a_restart() {
    let dead_reports = |s: &mut herald::config::Settings| {
        s.sandbox.report_url = "http://127.0.0.1:9/webhooks/alimtalk".into();
        s.engine.report_timeout_ms = 60_000;
    };
    let app = alimtalk_without_reports(60_000).await;
    app.user("u-kakao-2", &[]).await;
    let lost = app.send(send_alimtalk()).await;
    let late = app.send(json!({"user_id": "u-kakao-2", "channels": ["alimtalk"], "template": {"id": "counsel"}})).await;
    let mut delivery_of = std::collections::HashMap::new();
    for id in [&lost, &late] {
        let n = app.wait_notification(id, |n| n["deliveries"][0]["status"] == "sent").await;
        delivery_of.insert(id.clone(), n["deliveries"][0]["id"].as_str().unwrap().to_string());
    }

    // Restarted with a short timeout: the wait resumes from when the delivery became `sent`, so the one whose
    // report never comes fails soon after the start, and the other one's report still completes it.
    let app = app
        .restart_with(|s| {
            dead_reports(s);
            s.engine.report_timeout_ms = 1_500;
        })
        .await;
    assert_eq!(app.post("/webhooks/alimtalk", report(&delivery_of[&late], "7000")).await.0, 200);
    assert_eq!(app.wait_final(&late).await["deliveries"][0]["status"], "delivered");
    let n = app.wait_final(&lost).await;
    assert_eq!(n["deliveries"][0]["status"], "failed", "{n}");
    assert!(n["deliveries"][0]["events"][2]["reason"].as_str().unwrap().starts_with("report_timeout"));
    // Neither was sent to the provider again: Bizppurio has them.
    assert_eq!(app.sandbox().record().len(), 0, "the restarted sandbox received nothing");
    app.running.stop().await;
}

/// Report chaos: 1,000 alimtalk sends whose reports are delayed by a random jitter (so they overtake each
/// other), 30% posted twice and 5% never posted. No delivery is counted twice, none moves backwards, every one
/// with a posted report is delivered and every one whose report was dropped ends `failed` by the report timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_chaos_counts_each_delivery_once_and_fails_the_dropped_by_timeout() {
    const USERS: usize = 200;
    const SENDS: usize = 1_000;
    let app = spawn_app_with(|s| s.engine.report_timeout_ms = 3_000).await;
    let template = json!({"channels": {"alimtalk": {"ko": {"body": "{{n}}번째 알림", "templatecode": "T-CHAOS"}}}});
    assert_eq!(app.put("/v1/templates/chaos", template).await.0, 200);
    for u in 0..USERS {
        assert_eq!(
            app.put(
                &format!("/v1/users/chaos-{u}"),
                json!({"phone": format!("010-{:04}-{:04}", u / 10000, u % 10000 + 1000)})
            )
            .await
            .0,
            200
        );
    }
    let chaos = herald::sandbox::FaultSettings {
        report_jitter_ms: 400,
        report_duplicate_rate: 0.3,
        report_drop_rate: 0.05,
        ..Default::default()
    };
    app.sandbox().set_faults(herald::domain::ProviderKind::Bizppurio, chaos);

    let mut ids = Vec::with_capacity(SENDS);
    for i in 0..SENDS {
        let body = json!({"user_id": format!("chaos-{}", i % USERS), "channels": ["alimtalk"],
                          "template": {"id": "chaos", "params": {"n": i.to_string()}}});
        ids.push(app.send(body).await);
    }
    let mut finals = Vec::with_capacity(SENDS);
    for id in &ids {
        finals.push(app.wait_final(id).await);
    }

    // What the sandbox did with each delivery's report(s).
    let mut posted: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut dropped = std::collections::HashSet::new();
    let mut duplicated = 0;
    for entry in app.sandbox().reports() {
        let reference = entry.reference.clone().expect("reports name the delivery");
        match entry.status {
            herald::sandbox::ReportStatus::Posted => *posted.entry(reference).or_default() += 1,
            herald::sandbox::ReportStatus::Dropped => {
                dropped.insert(reference);
            }
            herald::sandbox::ReportStatus::Failed => panic!("Herald refused a report: {entry:?}"),
        }
        duplicated += usize::from(entry.duplicate);
    }
    assert!(
        !dropped.is_empty() && duplicated > 0,
        "the chaos happened: {} dropped, {duplicated} duplicated",
        dropped.len()
    );

    let (mut delivered, mut timed_out) = (0, 0);
    for n in &finals {
        let delivery = &n["deliveries"][0];
        let id = delivery["id"].as_str().unwrap();
        let kinds: Vec<&str> =
            delivery["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
        if posted.contains_key(id) {
            assert_eq!(delivery["status"], "delivered", "{n}");
            assert_eq!(kinds, ["requested", "sent", "delivered"], "one delivered event however many reports: {n}");
            delivered += 1;
        } else {
            assert!(dropped.contains(id), "no report was posted nor dropped for {id}");
            assert_eq!(delivery["status"], "failed", "{n}");
            assert_eq!(kinds, ["requested", "sent", "failed"]);
            assert!(delivery["events"][2]["reason"].as_str().unwrap().starts_with("report_timeout"));
            timed_out += 1;
        }
    }
    assert_eq!(delivered + timed_out, SENDS);
    let delivered_metric =
        metric(&app, "herald_deliveries_total{channel=\"alimtalk\",provider=\"bizppurio\",outcome=\"delivered\"}")
            .await;
    let failed_metric =
        metric(&app, "herald_deliveries_total{channel=\"alimtalk\",provider=\"bizppurio\",outcome=\"failed\"}").await;
    assert_eq!((delivered_metric, failed_metric), (delivered as u64, timed_out as u64), "each delivery counted once");
    assert_eq!(metric(&app, "herald_report_timeouts_total{provider=\"bizppurio\"}").await, timed_out as u64);
    println!(
        "report chaos: {SENDS} sent | {delivered} delivered | {timed_out} failed by report timeout | {duplicated} duplicate reports"
    );
    app.running.stop().await;
}
