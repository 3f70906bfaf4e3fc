//! The sandbox's own admin API under `/_sandbox`: read and clear the record, the request log and the report log,
//! read and change faults, read the counters. Errors are `{"error": {"code", "message"}}` like Herald's API.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, put};
use serde::Deserialize;
use serde_json::json;

use super::journal;
use super::record::Filter;
use super::{FaultSettings, SIMULATED, SandboxState, parse_provider};
use crate::domain::Channel;

pub(crate) fn routes() -> Router<Arc<SandboxState>> {
    Router::new()
        .route("/_sandbox/messages", get(list_messages).delete(clear_messages))
        .route("/_sandbox/faults", get(get_faults))
        .route("/_sandbox/faults/{provider}", put(put_faults))
        .route("/_sandbox/stats", get(get_stats))
        .route("/_sandbox/requests", get(list_requests).delete(clear_requests))
        .route("/_sandbox/reports", get(list_reports).delete(clear_reports))
}

fn bad_request(code: &str, message: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": {"code": code, "message": message.into()}}))).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessagesQuery {
    channel: Option<String>,
    provider: Option<String>,
    to: Option<String>,
    /// Only messages with a larger `seq`.
    after: Option<u64>,
    /// At most this many messages: a page (the first ones after `after`).
    limit: Option<usize>,
}

async fn list_messages(
    State(state): State<Arc<SandboxState>>,
    query: Result<Query<MessagesQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return bad_request(
            "invalid_query",
            "known parameters: channel, provider, to, after (a number), limit (a number)",
        );
    };
    let non_empty = |value: Option<String>| value.filter(|v| !v.is_empty());
    let channel = match non_empty(query.channel) {
        None => None,
        Some(name) => match Channel::parse(&name) {
            Some(channel) => Some(channel),
            None => return bad_request("invalid_channel", format!("unknown channel {name:?}")),
        },
    };
    let provider = match non_empty(query.provider) {
        None => None,
        Some(name) => match parse_provider(&name) {
            Some(provider) => Some(provider),
            None => return bad_request("invalid_provider", format!("unknown provider {name:?}")),
        },
    };
    let filter = Filter { channel, provider, to: non_empty(query.to), after: query.after, limit: query.limit };
    Json(state.record.query(&filter)).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClearQuery {
    /// Forget only the messages with a `seq` up to this one (a reader is done with them).
    through: Option<u64>,
}

async fn clear_messages(
    State(state): State<Arc<SandboxState>>,
    query: Result<Query<ClearQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return bad_request("invalid_query", "known parameters: through (a number)");
    };
    let cleared = match query.through {
        Some(seq) => state.record.forget_through(seq),
        None => state.record.clear(),
    };
    Json(json!({"cleared": cleared})).into_response()
}

async fn get_faults(State(state): State<Arc<SandboxState>>) -> Response {
    let faults: BTreeMap<_, _> = SIMULATED.iter().map(|&kind| (kind, state.faults.get(kind))).collect();
    Json(faults).into_response()
}

async fn put_faults(State(state): State<Arc<SandboxState>>, Path(provider): Path<String>, body: Bytes) -> Response {
    let Some(kind) = parse_provider(&provider) else {
        let known = SIMULATED.map(|k| k.as_str()).join(", ");
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": {"code": "unknown_provider", "message": format!("known providers: {known}")}})),
        )
            .into_response();
    };
    let settings: FaultSettings = match serde_json::from_slice(&body) {
        Ok(settings) => settings,
        Err(error) => return bad_request("invalid_faults", error.to_string()),
    };
    match state.faults.set(kind, settings.clone()) {
        Ok(()) => {
            tracing::info!(provider = kind.as_str(), ?settings, "sandbox faults changed");
            Json(settings).into_response()
        }
        Err(message) => bad_request("invalid_faults", message),
    }
}

async fn get_stats(State(state): State<Arc<SandboxState>>) -> Response {
    Json(state.stats.snapshot()).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JournalQuery {
    provider: Option<String>,
    reference: Option<String>,
    /// Only entries with a larger `seq`.
    after: Option<u64>,
    /// At most this many entries.
    limit: Option<usize>,
}

/// The journal filter a query asks for, or the error code and message of the 400 answer.
fn journal_filter(
    query: Result<Query<JournalQuery>, QueryRejection>,
) -> Result<journal::Filter, (&'static str, String)> {
    let Ok(Query(query)) = query else {
        return Err((
            "invalid_query",
            "known parameters: provider, reference, after (a number), limit (a number)".to_string(),
        ));
    };
    let provider = match query.provider.filter(|p| !p.is_empty()) {
        None => None,
        Some(name) => match parse_provider(&name) {
            Some(provider) => Some(provider),
            None => return Err(("invalid_provider", format!("unknown provider {name:?}"))),
        },
    };
    Ok(journal::Filter {
        provider,
        reference: query.reference.filter(|r| !r.is_empty()),
        after: query.after,
        limit: query.limit,
    })
}

async fn list_requests(
    State(state): State<Arc<SandboxState>>,
    query: Result<Query<JournalQuery>, QueryRejection>,
) -> Response {
    match journal_filter(query) {
        Ok(filter) => Json(state.journal.requests(&filter)).into_response(),
        Err((code, message)) => bad_request(code, message),
    }
}

async fn clear_requests(State(state): State<Arc<SandboxState>>) -> Response {
    Json(json!({"cleared": state.journal.clear_requests()})).into_response()
}

async fn list_reports(
    State(state): State<Arc<SandboxState>>,
    query: Result<Query<JournalQuery>, QueryRejection>,
) -> Response {
    match journal_filter(query) {
        Ok(filter) => Json(state.journal.reports(&filter)).into_response(),
        Err((code, message)) => bad_request(code, message),
    }
}

async fn clear_reports(State(state): State<Arc<SandboxState>>) -> Response {
    Json(json!({"cleared": state.journal.clear_reports()})).into_response()
}
