//! Operations: health, readiness, metrics and the dead-letter queue.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;
use super::notifications::dlq_view;
use crate::domain::Channel;

pub async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.engine.ready().await {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({ "status": "ready" }))),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "not_ready", "reason": e.to_string() })),
        ),
    }
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.engine.telemetry().render())
}

#[derive(Deserialize)]
pub struct DlqQuery {
    channel: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

pub async fn dlq(State(state): State<AppState>, Query(q): Query<DlqQuery>) -> Result<impl IntoResponse, ApiError> {
    let channel = q
        .channel
        .map(|c| Channel::parse(&c).ok_or_else(|| ApiError::invalid("channel", format!("unknown channel `{c}`"))))
        .transpose()?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 500"));
    }
    let page = state.engine.dlq(channel, q.cursor.as_deref(), limit).await.map_err(|e| state.error(e))?;
    let items: Vec<_> = page.items.iter().map(dlq_view).collect();
    Ok(Json(serde_json::json!({ "items": items, "next_cursor": page.next_cursor })))
}

pub async fn replay(State(state): State<AppState>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    state.engine.replay(&id).await.map_err(|e| state.error(e))?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "id": id, "status": "queued" }))))
}
