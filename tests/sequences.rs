//! Sequences end to end (docs/scheduling.md, "Sequences"): step k+1 reaches the provider only after step k's
//! delivery report was sent, under delayed, reordered, duplicated and dropped reports; `on_failure` decides
//! what a lost report does; DELETE cancels the rest.

mod app;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use herald::domain::ProviderKind;
use herald::sandbox::{FaultSettings, ReportStatus};
use jiff::Timestamp;
use serde_json::{Value, json};

use app::{TestApp, spawn_app_with};

const STEPS: usize = 3;

async fn alimtalk_template(app: &TestApp) {
    let template =
        json!({"channels": {"alimtalk": {"ko": {"body": "{{user}} step {{step}}", "templatecode": "T-SEQ"}}}});
    assert_eq!(app.put("/v1/templates/seq", template).await.0, 200);
}

async fn kakao_user(app: &TestApp, u: usize) -> String {
    let id = format!("seq-{u}");
    let phone = format!("010-{:04}-{:04}", 2000 + u / 10000, u % 10000);
    assert_eq!(app.put(&format!("/v1/users/{id}"), json!({"phone": phone})).await.0, 200);
    id
}

fn sequence(user: &str, on_failure: &str, step_timeout: &str) -> Value {
    let steps: Vec<Value> = (1..=STEPS)
        .map(|k| json!({"channels": ["alimtalk"], "template": {"id": "seq", "params": {"user": user, "step": k}}}))
        .collect();
    json!({"user_id": user, "steps": steps, "on_failure": on_failure, "step_timeout": step_timeout})
}

async fn start(app: &TestApp, body: Value) -> String {
    let (status, reply) = app.post("/v1/sequences", body).await;
    assert_eq!(status, 202, "{reply}");
    reply["id"].as_str().unwrap().to_string()
}

async fn wait_sequence_final(app: &TestApp, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, s) = app.get(&format!("/v1/sequences/{id}")).await;
        assert_eq!(status, 200, "{s}");
        if s["status"] != "running" {
            return s;
        }
        assert!(Instant::now() < deadline, "sequence never ended: {s:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn step_statuses(s: &Value) -> Vec<String> {
    s["steps"].as_array().unwrap().iter().map(|step| step["status"].as_str().unwrap().to_string()).collect()
}

/// 500 three-step alimtalk sequences under report chaos. At the sandbox: no step is sent twice, and each
/// user's step k+1 arrives after step k's first report was sent, or (for `continue`) after its timeout when
/// every report of step k was dropped. A sequence whose step report was dropped stops there (`stop`) or goes on
/// (`continue`), and its step statuses say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_sequences_wait_for_each_report_under_report_chaos() {
    const USERS: usize = 500;
    let app = spawn_app_with(|s| s.engine.report_timeout_ms = 600_000).await;
    alimtalk_template(&app).await;
    let chaos = FaultSettings {
        report_delay_ms: 50,
        report_jitter_ms: 400,
        report_duplicate_rate: 0.3,
        report_drop_rate: 0.05,
        ..Default::default()
    };
    app.sandbox().set_faults(ProviderKind::Bizppurio, chaos);
    let mut sequences = Vec::with_capacity(USERS);
    for u in 0..USERS {
        let user = kakao_user(&app, u).await;
        let on_failure = if u % 2 == 0 { "stop" } else { "continue" };
        sequences.push((user.clone(), on_failure, start(&app, sequence(&user, on_failure, "2s")).await));
    }
    let mut finals = Vec::with_capacity(USERS);
    for (user, on_failure, id) in &sequences {
        finals.push((user, *on_failure, wait_sequence_final(&app, id).await));
    }

    // The provider's view: when each (user, step) arrived, and what happened to its reports.
    let mut arrivals: HashMap<(String, usize), Vec<(Timestamp, String)>> = HashMap::new();
    for m in app.sandbox().record() {
        let mut words = m.body.split(' ');
        let (user, step) = (words.next().unwrap().to_string(), words.nth(1).unwrap().parse::<usize>().unwrap());
        arrivals.entry((user, step)).or_default().push((m.received_at, m.reference.clone().unwrap()));
    }
    let mut first_report: HashMap<String, Timestamp> = HashMap::new();
    let mut dropped: HashMap<String, usize> = HashMap::new();
    for r in app.sandbox().reports() {
        let reference = r.reference.clone().unwrap();
        match r.status {
            ReportStatus::Posted => {
                let at = first_report.entry(reference).or_insert(r.sent_at);
                *at = (*at).min(r.sent_at);
            }
            ReportStatus::Dropped => *dropped.entry(reference).or_default() += 1,
            ReportStatus::Failed => panic!("Herald refused a report: {r:?}"),
        }
    }

    let (mut completed, mut stopped, mut timeouts) = (0, 0, 0);
    for (user, on_failure, s) in &finals {
        let statuses = step_statuses(s);
        let mut previous: Option<(Timestamp, String)> = None;
        for step in 1..=STEPS {
            let sent = arrivals.get(&((*user).clone(), step)).cloned().unwrap_or_default();
            assert!(sent.len() <= 1, "{user} step {step} was sent {} times", sent.len());
            let status = statuses[step - 1].as_str();
            match sent.first() {
                None => {
                    assert_eq!(status, "skipped", "{user} step {step} never sent: {s:#}");
                    continue;
                }
                Some((arrived, reference)) => {
                    if let Some((_, prev_ref)) = &previous {
                        match first_report.get(prev_ref) {
                            Some(report_sent) => assert!(
                                report_sent <= arrived,
                                "{user} step {step} arrived at {arrived} before step {}'s report ({report_sent})",
                                step - 1
                            ),
                            None => assert_eq!(*on_failure, "continue", "{user}: went on after a lost report"),
                        }
                    }
                    if first_report.contains_key(reference) {
                        assert_eq!(status, "delivered", "{user} step {step}: {s:#}");
                    } else {
                        assert!(dropped.contains_key(reference), "{user} step {step}: no report posted or dropped");
                        assert_eq!(status, "timed_out", "{user} step {step}: {s:#}");
                        timeouts += 1;
                    }
                    previous = Some((*arrived, reference.clone()));
                }
            }
        }
        let expected = if statuses.iter().all(|st| st == "delivered") || *on_failure == "continue" {
            completed += 1;
            "completed"
        } else {
            stopped += 1;
            "failed"
        };
        assert_eq!(s["status"], expected, "{user}: {s:#}");
    }
    assert!(timeouts > 0, "some reports were dropped, so some steps timed out");
    assert!(stopped > 0, "some `stop` sequences stopped");
    println!(
        "sequence chaos: {USERS} sequences x {STEPS} steps | {completed} completed, {stopped} stopped | {timeouts} steps timed out on a dropped report"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_cancels_the_rest_of_a_sequence() {
    // Reports go nowhere, so step 1 waits in `sent` until the DELETE.
    let app = spawn_app_with(|s| s.sandbox.report_url = "http://127.0.0.1:9/webhooks/alimtalk".into()).await;
    alimtalk_template(&app).await;
    let user = kakao_user(&app, 1).await;
    let id = start(&app, sequence(&user, "stop", "10m")).await;
    app.wait_record(|r| r.len() == 1).await;
    let (status, s) = app.request(reqwest::Method::DELETE, &format!("/v1/sequences/{id}"), None).await;
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["status"], "cancelled");
    assert_eq!(step_statuses(&s), ["cancelled", "cancelled", "cancelled"]);
    let (_, s) = app.get(&format!("/v1/sequences/{id}")).await;
    assert_eq!(s["status"], "cancelled", "the cancel is durable: {s:#}");
    let (status, _) = app.request(reqwest::Method::DELETE, &format!("/v1/sequences/{id}"), None).await;
    assert_eq!(status, 409);
    assert_eq!(app.sandbox().record().len(), 1, "nothing after step 1 was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_sequences_are_422_naming_the_step_field() {
    let app = spawn_app_with(|_| {}).await;
    alimtalk_template(&app).await;
    let user = kakao_user(&app, 1).await;
    let mut missing_param = sequence(&user, "stop", "10m");
    missing_param["steps"][1]["template"]["params"] = json!({"user": "x"});
    let mut unknown_template = sequence(&user, "stop", "10m");
    unknown_template["steps"][2]["template"]["id"] = json!("nope");
    let mut no_channels = sequence(&user, "stop", "10m");
    no_channels["steps"][0]["channels"] = json!([]);
    let cases = [
        (missing_param, "steps[1].template.params.step"),
        (unknown_template, "steps[2].template.id"),
        (no_channels, "steps[0].channels"),
        (sequence(&user, "stop", "forever"), "step_timeout"),
        (sequence("nobody", "stop", "10m"), "user_id"),
        (json!({"user_id": user, "steps": []}), "steps"),
    ];
    for (body, field) in cases {
        let (status, reply) = app.post("/v1/sequences", body.clone()).await;
        assert_eq!(status, 422, "{body} → {reply}");
        assert_eq!(reply["error"]["field"], field, "{reply}");
    }
    assert_eq!(app.get("/v1/sequences/unknown").await.0, 404);
    assert!(app.sandbox().record().is_empty());
}

/// A report that arrives after its step timed out is recorded on the step's notification, and changes nothing
/// in the sequence: no step is resent, the next one is not sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_after_the_step_timed_out_is_recorded_but_resends_nothing() {
    let app = spawn_app_with(|s| s.sandbox.report_url = "http://127.0.0.1:9/webhooks/alimtalk".into()).await;
    alimtalk_template(&app).await;
    let user = kakao_user(&app, 7).await;
    let id = start(&app, sequence(&user, "continue", "1s")).await;
    let s = wait_sequence_final(&app, &id).await;
    assert_eq!(step_statuses(&s), ["timed_out", "timed_out", "timed_out"], "no report ever came: {s:#}");
    assert_eq!(app.sandbox().record().len(), STEPS);

    let first = s["steps"][0]["notification_id"].as_str().unwrap().to_string();
    let (_, n) = app.get(&format!("/v1/notifications/{first}")).await;
    let delivery = n["deliveries"][0]["id"].as_str().unwrap().to_string();
    let report = json!({"DEVICE": "KAT", "CMSGID": "c", "MSGID": "m", "PHONE": "821012345678", "MEDIA": "KAT",
                        "UNIXTIME": "1700000000", "RESULT": "7000", "REFKEY": delivery, "RESEND_FLAG": "N"});
    assert_eq!(app.post("/webhooks/alimtalk", report).await.0, 200);
    let n = app.wait_notification(&first, |n| n["deliveries"][0]["status"] == "delivered").await;
    assert_eq!(n["status"], "completed", "the late report is recorded on the notification: {n:#}");
    let (_, after) = app.get(&format!("/v1/sequences/{id}")).await;
    assert_eq!(step_statuses(&after), step_statuses(&s), "the sequence does not change");
    let barrier = app
        .send(json!({"user_id": user, "channels": ["alimtalk"],
                                  "template": {"id": "seq", "params": {"user": "barrier", "step": 0}}}))
        .await;
    app.wait_notification(&barrier, |n| n["deliveries"][0]["status"] == "sent").await;
    assert_eq!(app.sandbox().record().len(), STEPS + 1, "nothing was resent, only the barrier arrived");
}
