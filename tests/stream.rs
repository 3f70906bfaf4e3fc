//! End-to-end: the in-app WebSocket stream (`GET /v1/users/{id}/stream`) over real HTTP and WebSocket.
//! Guarantees under test: docs/api.md "In-app stream" and docs/engine-semantics.md "In-app".

mod app;

use std::time::{Duration, Instant};

use app::{TestApp, spawn_app};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(app: &TestApp, user_id: &str) -> Socket {
    let url = format!("{}/v1/users/{user_id}/stream", app.base.replacen("http://", "ws://", 1));
    let (socket, response) = connect_async(url).await.expect("the stream upgrades");
    assert_eq!(response.status().as_u16(), 101);
    socket
}

/// The next text message as JSON, skipping control frames. The timeout is a hang guard, not a speed check.
async fn next(socket: &mut Socket) -> Value {
    let deadline = Duration::from_secs(30);
    loop {
        let message = tokio::time::timeout(deadline, socket.next())
            .await
            .expect("a message before the hang guard")
            .expect("the stream is open")
            .expect("a valid frame");
        match message {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

async fn send_in_app(app: &TestApp, user_id: &str, body: &str) -> String {
    let id =
        app.send(json!({"user_id": user_id, "channels": ["in_app"], "content": {"title": "t", "body": body}})).await;
    assert_eq!(app.wait_final(&id).await["status"], "completed");
    id
}

/// Polls until `done` holds (bounded; the bound is a hang guard).
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn every_connection_of_a_user_gets_the_count_new_items_and_read_marks_and_no_one_elses() {
    let app = spawn_app().await;
    app.user("u-ws", &[]).await;
    app.user("u-other", &[]).await;
    let mut a = connect(&app, "u-ws").await;
    let mut b = connect(&app, "u-ws").await;
    let mut other = connect(&app, "u-other").await;
    for socket in [&mut a, &mut b, &mut other] {
        assert_eq!(next(socket).await, json!({"type": "unread_count", "unread_count": 0}));
    }

    let notification_id = send_in_app(&app, "u-ws", "hello").await;
    let (status, inbox) = app.get("/v1/users/u-ws/inbox").await;
    assert_eq!(status, 200);
    let listed = &inbox["items"][0];
    for socket in [&mut a, &mut b] {
        let event = next(socket).await;
        assert_eq!(event["type"], "notification");
        assert_eq!(&event["item"], listed, "the item has the inbox API's shape and values");
        assert_eq!(event["item"]["notification_id"], notification_id.as_str());
        assert_eq!(next(socket).await, json!({"type": "unread_count", "unread_count": 1}));
    }

    let (status, _) = app.post("/v1/users/u-ws/inbox/read", json!({"ids": [listed["id"]]})).await;
    assert_eq!(status, 200);
    for socket in [&mut a, &mut b] {
        assert_eq!(next(socket).await, json!({"type": "unread_count", "unread_count": 0}));
    }

    // u-ws's events have reached its connections; had any been routed to u-other it would be queued ahead of
    // u-other's own item, so the first thing u-other sees must be its own.
    send_in_app(&app, "u-other", "yours").await;
    let event = next(&mut other).await;
    assert_eq!(event["type"], "notification");
    assert_eq!(event["item"]["user_id"], "u-other");
    assert_eq!(event["item"]["body"], "yours");
    assert_eq!(next(&mut other).await, json!({"type": "unread_count", "unread_count": 1}));

    // "Mark all read" reaches the stream too.
    send_in_app(&app, "u-ws", "second").await;
    for socket in [&mut a, &mut b] {
        assert_eq!(next(socket).await["item"]["body"], "second");
        assert_eq!(next(socket).await["unread_count"], 1);
    }
    let (status, _) = app.post("/v1/users/u-ws/inbox/read", json!({"all": true})).await;
    assert_eq!(status, 200);
    for socket in [&mut a, &mut b] {
        assert_eq!(next(socket).await, json!({"type": "unread_count", "unread_count": 0}));
    }

    let (_, metrics) = app.get("/metrics").await;
    assert!(metrics.as_str().unwrap().contains("herald_inbox_streams 3"), "the gauge counts open connections");
    for mut socket in [a, b, other] {
        socket.close(None).await.unwrap();
        // The server echoes the close; then the stream ends.
        let mut echoed = false;
        while let Some(message) = socket.next().await {
            let Ok(message) = message else { break };
            echoed |= matches!(message, Message::Close(_));
        }
        assert!(echoed, "the server answers a client's close");
    }
    let hub = app.running.engine.inbox_hub();
    eventually("the hub forgets users without connections", || hub.listened_users() == 0).await;
    let (_, metrics) = app.get("/metrics").await;
    assert!(metrics.as_str().unwrap().contains("herald_inbox_streams 0"));
    app.running.stop().await;
}

#[tokio::test]
async fn an_unknown_user_is_a_404_before_any_upgrade() {
    let app = spawn_app().await;
    let url = format!("{}/v1/users/nobody/stream", app.base.replacen("http://", "ws://", 1));
    match connect_async(url).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), 404),
        Err(other) => panic!("expected an HTTP 404 answer, got {other}"),
        Ok(_) => panic!("an unknown user's stream must not upgrade"),
    }
    let (status, body) = app.get("/v1/users/nobody/stream").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    assert_eq!(app.running.engine.inbox_hub().listened_users(), 0, "nothing subscribed for a 404");
    app.running.stop().await;
}

#[tokio::test]
async fn a_known_user_without_an_upgrade_request_is_refused_and_leaves_no_subscription() {
    let app = spawn_app().await;
    app.user("u-plain", &[]).await;
    let (status, _) = app.get("/v1/users/u-plain/stream").await;
    assert!((400..500).contains(&status), "a plain GET is not a stream: {status}");
    let hub = app.running.engine.inbox_hub();
    eventually("the refused request's subscription is dropped", || hub.listened_users() == 0).await;
    app.running.stop().await;
}

#[tokio::test]
async fn open_streams_are_closed_with_1001_when_the_server_stops() {
    let app = spawn_app().await;
    app.user("u-stop", &[]).await;
    let mut socket = connect(&app, "u-stop").await;
    assert_eq!(next(&mut socket).await["type"], "unread_count");
    app.running.stop().await;
    let message = tokio::time::timeout(Duration::from_secs(30), socket.next()).await.expect("a close before the guard");
    match message {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected a 1001 close, got {other:?}"),
    }
}

#[tokio::test]
async fn an_in_app_fallback_planned_after_a_provider_failure_reaches_the_stream() {
    let app = spawn_app().await;
    app.user("u-fallback", &[("unregistered-token", "android")]).await;
    let mut socket = connect(&app, "u-fallback").await;
    assert_eq!(next(&mut socket).await["unread_count"], 0);
    // The in-app delivery is planned when the push outcome is recorded, not at acceptance.
    let id = app
        .send(json!({"user_id": "u-fallback", "channels": ["push", "in_app"], "strategy": "priority",
                     "content": {"body": "fallback"}}))
        .await;
    let event = next(&mut socket).await;
    assert_eq!(event["type"], "notification");
    assert_eq!(event["item"]["notification_id"], id.as_str());
    assert_eq!(next(&mut socket).await, json!({"type": "unread_count", "unread_count": 1}));
    app.running.stop().await;
}
