//! The in-app inbox: a cursor-paged feed with an unread count, and idempotent read marking.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;
use super::json::JsonBody;

#[derive(Deserialize)]
pub struct InboxQuery {
    cursor: Option<String>,
    limit: Option<usize>,
    #[serde(default)]
    unread_only: bool,
}

pub async fn list(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    Query(q): Query<InboxQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 100"));
    }
    let (page, unread) =
        state.engine.inbox(&user_id, q.cursor.as_deref(), limit, q.unread_only).await.map_err(|e| state.error(e))?;
    Ok(Json(serde_json::json!({ "items": page.items, "next_cursor": page.next_cursor, "unread_count": unread })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadBody {
    ids: Option<Vec<String>>,
    #[serde(default)]
    all: bool,
}

pub async fn mark_read(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    body: JsonBody<ReadBody>,
) -> Result<impl IntoResponse, ApiError> {
    let ids = match (body.value.ids, body.value.all) {
        (Some(ids), false) if !ids.is_empty() && ids.len() <= 1000 => Some(ids),
        (None, true) => None,
        _ => return Err(ApiError::invalid("ids", "give 1 to 1000 ids, or all: true")),
    };
    state.engine.mark_read(&user_id, ids).await.map_err(|e| state.error(e))?;
    let (_, unread) = state.engine.inbox(&user_id, None, 1, true).await.map_err(|e| state.error(e))?;
    Ok(Json(serde_json::json!({ "unread_count": unread })))
}
