//! Provider webhooks: delivery reports that move deliveries from `sent` to `delivered` or `failed`.
//! Parsing and signature checks belong to the provider modules; this file only speaks HTTP.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};

use super::AppState;
use super::error::ApiError;
use crate::providers::{WebhookError, bizppurio, twilio};

fn bad_webhook(e: WebhookError) -> ApiError {
    match e {
        WebhookError::Signature => ApiError::new(StatusCode::FORBIDDEN, "bad_signature", e.to_string()),
        other => ApiError::new(StatusCode::BAD_REQUEST, "bad_webhook", other.to_string()),
    }
}

/// Twilio status callback: form-encoded, signed with `X-Twilio-Signature` over our public URL and the params.
pub async fn sms(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let params: Vec<(String, String)> =
        serde_urlencoded::from_bytes(&body).map_err(|e| bad_webhook(WebhookError::Body(e.to_string())))?;
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let url = format!("{}{path}", state.settings.public_url());
    let signature = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok()).unwrap_or("");
    let token = state.settings.providers.twilio.auth_token.expose();
    if !twilio::verify_signature(token, &url, &params, signature) {
        return Err(bad_webhook(WebhookError::Signature));
    }
    let query: Vec<(String, String)> = serde_urlencoded::from_str(uri.query().unwrap_or("")).unwrap_or_default();
    let delivery_id = query.iter().find(|(k, _)| k == "delivery_id").map(|(_, v)| v.as_str());
    let report = twilio::parse_status_callback(delivery_id, &params).map_err(bad_webhook)?;
    state.engine.report(report).await.map_err(|e| state.error(e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Bizppurio delivery report: one JSON object per POST.
pub async fn alimtalk(State(state): State<AppState>, body: Bytes) -> Result<StatusCode, ApiError> {
    let report = bizppurio::parse_report(&body).map_err(bad_webhook)?;
    state.engine.report(report).await.map_err(|e| state.error(e))?;
    Ok(StatusCode::OK)
}
