//! The HTTP API (axum). Architecture invariant: only `api/` knows HTTP, status codes and JSON request/response
//! shapes; it validates input into engine requests and maps engine errors to SPEC §4's error answers.

mod campaigns;
mod error;
mod inbox;
mod json;
mod notifications;
mod ops;
mod sequences;
mod stream;
mod users;
mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};

use crate::config::Settings;
use crate::engine::{Engine, EngineError};

pub use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub settings: Arc<Settings>,
}

impl AppState {
    fn error(&self, e: EngineError) -> ApiError {
        ApiError::from_engine(e, self.settings.engine.retry_after_s)
    }
}

/// Ids in paths and bodies: 1–128 characters of letters, digits and `._:@-`.
fn valid_id(field: &str, id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '-'));
    if ok { Ok(()) } else { Err(ApiError::invalid(field, "ids are 1-128 characters of letters, digits and ._:@-")) }
}

/// All routes.
pub fn router(state: AppState) -> Router {
    let max_body = state.settings.server.max_body_bytes;
    // An explicit audience of a million ids does not fit the default limit; the route's own layer is the inner
    // one, so it wins for this route only.
    let campaign_body = DefaultBodyLimit::max(state.settings.server.max_campaign_body_bytes);
    Router::new()
        .route("/v1/users/{id}", put(users::put_user).get(users::get_user))
        .route("/v1/users/{id}/devices", post(users::add_device))
        .route("/v1/users/{id}/devices/{token}", delete(users::remove_device))
        .route("/v1/users/{id}/preferences", put(users::put_preferences).get(users::get_preferences))
        .route("/v1/users/{id}/inbox", get(inbox::list))
        .route("/v1/users/{id}/inbox/read", post(inbox::mark_read))
        .route("/v1/users/{id}/stream", get(stream::stream))
        .route("/v1/templates/{id}", put(users::put_template).get(users::get_template))
        .route("/v1/notifications", post(notifications::send))
        .route(
            "/v1/notifications/{id}",
            get(notifications::get).patch(notifications::patch).delete(notifications::cancel),
        )
        .route("/v1/sequences", post(sequences::start))
        .route("/v1/sequences/{id}", get(sequences::get).delete(sequences::cancel))
        .route("/v1/campaigns", post(campaigns::create).layer(campaign_body))
        .route("/v1/campaigns/{id}", get(campaigns::get))
        .route("/v1/campaigns/{id}/pause", post(campaigns::pause))
        .route("/v1/campaigns/{id}/resume", post(campaigns::resume))
        .route("/v1/campaigns/{id}/cancel", post(campaigns::cancel))
        .route("/v1/dlq", get(ops::dlq))
        .route("/v1/dlq/{id}/replay", post(ops::replay))
        .route("/webhooks/sms", post(webhooks::sms))
        .route("/webhooks/alimtalk", post(webhooks::alimtalk))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}
