//! The `/_sandbox` admin API: reading the record with filters, clearing it, and the per-provider counters.

use herald::sandbox::ReceivedMessage;
use serde_json::json;

use super::{Sandbox, spawn};

async fn send_fcm(sandbox: &Sandbox, token: &str) {
    let body = json!({"message": {"token": token, "notification": {"body": "hi"}}});
    let response = sandbox
        .http
        .post(sandbox.url("/v1/projects/p/messages:send"))
        .bearer_auth(super::fcm::access_token(sandbox).await)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

async fn send_sms(sandbox: &Sandbox, to: &str) -> u16 {
    let response = sandbox
        .http
        .post(sandbox.url("/2010-04-01/Accounts/AC1/Messages.json"))
        .basic_auth("AC1", Some("secret"))
        .form(&[("To", to), ("From", "+15005550006"), ("Body", "hi")])
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

async fn messages(sandbox: &Sandbox, query: &str) -> Vec<ReceivedMessage> {
    let response = sandbox.http.get(sandbox.url(&format!("/_sandbox/messages{query}"))).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200, "{query}");
    response.json().await.unwrap()
}

fn seqs(messages: &[ReceivedMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

#[tokio::test]
async fn the_record_can_be_filtered_and_cleared() {
    let sandbox = spawn().await;
    send_fcm(&sandbox, "token-a").await;
    assert_eq!(send_sms(&sandbox, "+821011112222").await, 201);
    send_fcm(&sandbox, "token-b").await;
    assert_eq!(send_sms(&sandbox, "+821033334444").await, 201);

    let all = messages(&sandbox, "").await;
    assert_eq!(seqs(&all), [1, 2, 3, 4]);
    assert_eq!(all, sandbox.handle.record(), "the API and the handle agree");
    assert_eq!(seqs(&messages(&sandbox, "?channel=push").await), [1, 3]);
    assert_eq!(seqs(&messages(&sandbox, "?channel=sms").await), [2, 4]);
    assert_eq!(seqs(&messages(&sandbox, "?provider=twilio&to=%2B821033334444").await), [4]);
    assert_eq!(seqs(&messages(&sandbox, "?channel=push&provider=twilio").await), Vec::<u64>::new());
    assert_eq!(seqs(&messages(&sandbox, "?to=token-b").await), [3]);
    assert_eq!(seqs(&messages(&sandbox, "?after=2").await), [3, 4]);
    assert_eq!(seqs(&messages(&sandbox, "?channel=&to=").await), [1, 2, 3, 4], "empty filters match all");

    for bad in ["?channel=fax", "?provider=pigeon", "?after=soon", "?colour=red"] {
        let response = sandbox.http.get(sandbox.url(&format!("/_sandbox/messages{bad}"))).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 400, "{bad}");
    }

    let response = sandbox.http.delete(sandbox.url("/_sandbox/messages")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.json::<serde_json::Value>().await.unwrap()["cleared"], 4);
    assert!(messages(&sandbox, "").await.is_empty());
    assert!(sandbox.handle.record().is_empty());

    send_fcm(&sandbox, "token-c").await;
    assert_eq!(seqs(&messages(&sandbox, "").await), [5], "seqs keep counting after a clear");
}

/// The load generator's way of reading: pages of `limit` after the last seq it saw, then `DELETE ?through=` so the
/// sandbox forgets what was read (the record does not grow with the length of a run).
#[tokio::test]
async fn a_reader_pages_through_the_record_and_forgets_what_it_read() {
    let sandbox = spawn().await;
    for token in ["token-a", "token-b", "token-c"] {
        send_fcm(&sandbox, token).await;
    }
    assert_eq!(seqs(&messages(&sandbox, "?limit=2").await), [1, 2]);
    assert_eq!(seqs(&messages(&sandbox, "?after=2&limit=2").await), [3]);

    let forget = |query: &'static str| {
        let request = sandbox.http.delete(sandbox.url(&format!("/_sandbox/messages{query}")));
        async move { request.send().await.unwrap() }
    };
    let response = forget("?through=2").await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.json::<serde_json::Value>().await.unwrap()["cleared"], 2);
    assert_eq!(seqs(&messages(&sandbox, "").await), [3], "only what was not read is kept");
    assert_eq!(seqs(&sandbox.handle.record()), [3]);
    assert_eq!(forget("?through=soon").await.status().as_u16(), 400);
    let response = sandbox.http.get(sandbox.url("/_sandbox/messages?limit=many")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
}

#[tokio::test]
async fn stats_count_accepted_and_rejected_requests() {
    let sandbox = spawn().await;
    send_fcm(&sandbox, "token-a").await;
    send_fcm(&sandbox, "token-b").await;
    assert_eq!(send_sms(&sandbox, "+821011112222").await, 201);
    assert_eq!(send_sms(&sandbox, "+8210optout").await, 400);
    assert_eq!(send_sms(&sandbox, "not-a-number").await, 400);

    let (status, stats) = sandbox.get_json("/_sandbox/stats").await;
    assert_eq!(status, 200);
    assert_eq!((stats["fcm"]["accepted"].as_u64(), stats["fcm"]["rejected"].as_u64()), (Some(2), Some(0)));
    assert_eq!((stats["twilio"]["accepted"].as_u64(), stats["twilio"]["rejected"].as_u64()), (Some(1), Some(2)));
    assert_eq!(stats["smtp"]["accepted"].as_u64(), Some(0));
    assert_eq!(stats.as_object().unwrap().len(), 5, "one entry per simulated provider: {stats}");
}
