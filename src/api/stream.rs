//! The in-app stream: `GET /v1/users/{id}/stream`, a WebSocket that pushes a user's inbox events.
//!
//! The handler answers 404 for an unknown user before upgrading, subscribes to the engine's inbox hub, and
//! then runs one task per connection: the starting `unread_count`, every hub event as a text message, a ping
//! every [`PING_EVERY`] (a connection that has not answered the previous one is dropped), and a close with
//! 1013 after a `resync`. Message shapes and close codes are documented in `docs/api.md`.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use tokio::time::{MissedTickBehavior, interval_at, timeout};

use super::AppState;
use super::error::ApiError;
use crate::engine::{InboxSubscription, StreamEvent};

/// How often the server pings; a client silent for a whole period after a ping is considered gone.
pub const PING_EVERY: Duration = Duration::from_secs(30);
/// A write that cannot go out for this long means the client stopped reading: close rather than wait.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn stream(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // The user is checked before the upgrade, so an unknown one is a plain 404 rather than an open-then-close.
    let (subscription, unread) = state.engine.subscribe_inbox(&user_id).await.map_err(|e| state.error(e))?;
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return Ok(rejection.into_response()),
    };
    Ok(upgrade.on_upgrade(move |socket| serve(socket, subscription, unread)))
}

/// Why a connection ended, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    ClientClosed,
    Resync,
    ServerStopping,
    PingUnanswered,
    /// The connection broke, or a write could not go out within [`SEND_TIMEOUT`].
    Gone,
}

async fn serve(mut socket: WebSocket, mut subscription: InboxSubscription, unread: u64) {
    tracing::debug!("inbox stream opened");
    let end = run(&mut socket, &mut subscription, unread).await;
    let frame = |code, reason| Some(CloseFrame { code, reason: Utf8Bytes::from_static(reason) });
    let close = match end {
        End::Resync => frame(close_code::AGAIN, "resync: refetch the feed"),
        End::ServerStopping => frame(close_code::AWAY, "server stopping"),
        End::ClientClosed => {
            // The WebSocket layer queued the echo of the client's close; it goes out on the next flush.
            let _ = timeout(SEND_TIMEOUT, socket.flush()).await;
            None
        }
        End::PingUnanswered | End::Gone => None,
    };
    if let Some(frame) = close {
        let _ = timeout(SEND_TIMEOUT, socket.send(Message::Close(Some(frame)))).await;
    }
    tracing::debug!(end = ?end, "inbox stream closed");
}

async fn run(socket: &mut WebSocket, subscription: &mut InboxSubscription, unread: u64) -> End {
    if !send(socket, &StreamEvent::unread_count(unread)).await {
        return End::Gone;
    }
    let mut ping = interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut awaiting_pong = false;
    loop {
        tokio::select! {
            event = subscription.recv() => {
                let Some(event) = event else { return End::ServerStopping };
                if !send(socket, &event).await {
                    return End::Gone;
                }
                if event.ends_stream() {
                    return End::Resync;
                }
            }
            incoming = socket.recv() => match incoming {
                // Pings are answered by the WebSocket layer; anything the client sends proves it is alive.
                Some(Ok(Message::Close(_))) => return End::ClientClosed,
                Some(Ok(_)) => awaiting_pong = false,
                Some(Err(_)) | None => return End::Gone,
            },
            _ = ping.tick() => {
                if awaiting_pong {
                    return End::PingUnanswered;
                }
                awaiting_pong = true;
                if !matches!(timeout(SEND_TIMEOUT, socket.send(Message::Ping(Default::default()))).await, Ok(Ok(()))) {
                    return End::Gone;
                }
            }
        }
    }
}

/// Sends one event; false when the client is gone or stopped reading.
async fn send(socket: &mut WebSocket, event: &StreamEvent) -> bool {
    // The hub's JSON is UTF-8 by construction; the check is a copy-free scan of a short message.
    let Ok(text) = Utf8Bytes::try_from(event.json().clone()) else { return false };
    matches!(timeout(SEND_TIMEOUT, socket.send(Message::Text(text))).await, Ok(Ok(())))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::Router;
    use axum::routing::get;
    use futures_util::StreamExt;
    use parking_lot::Mutex;
    use tokio_tungstenite::tungstenite::Message as Client;

    use super::*;
    use crate::engine::InboxHub;
    use crate::store::EmbeddedStore;
    use crate::telemetry::Telemetry;

    /// A connection whose subscription already lags its tiny buffer sends `resync` and closes with 1013.
    #[tokio::test]
    async fn a_lagging_connection_gets_resync_then_a_1013_close() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), 64).unwrap();
        let hub = InboxHub::new(store, Arc::new(Telemetry::default()), 2);
        let subscription = hub.subscribe("u1");
        for n in 0..5 {
            hub.broadcast_for_test("u1", StreamEvent::unread_count(n));
        }
        let slot = Arc::new(Mutex::new(Some(subscription)));
        let app = Router::new().route(
            "/",
            get(move |upgrade: WebSocketUpgrade| async move {
                let subscription = slot.lock().take().expect("one connection");
                upgrade.on_upgrade(move |socket| serve(socket, subscription, 7))
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/")).await.unwrap();
        let mut received = Vec::new();
        // The hang guard is a deadline, not a speed check.
        while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(30), client.next()).await {
            received.push(message);
        }
        let text = |m: &Client| m.to_text().unwrap().to_string();
        assert_eq!(text(&received[0]), r#"{"type":"unread_count","unread_count":7}"#);
        assert_eq!(text(&received[1]), r#"{"type":"resync"}"#);
        match &received[2] {
            Client::Close(Some(frame)) => assert_eq!(u16::from(frame.code), close_code::AGAIN),
            other => panic!("expected a close frame, got {other:?}"),
        }
        assert_eq!(received.len(), 3, "nothing after the close: {received:?}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while hub.listened_users() != 0 {
            assert!(tokio::time::Instant::now() < deadline, "the connection's subscription is never dropped");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
