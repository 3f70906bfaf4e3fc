//! The API's error answer: `{"error":{"code","message","field"?}}` with the status SPEC §4 assigns.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::engine::EngineError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), field: None, retry_after_s: None }
    }

    /// 422 on one field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            field: Some(field.into()),
            ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value", message)
        }
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }

    /// Maps engine errors; `retry_after_s` is used for 429.
    pub fn from_engine(error: EngineError, retry_after_s: u64) -> ApiError {
        match error {
            EngineError::NotFound(what) => ApiError::not_found(what),
            EngineError::Invalid { field, message } => ApiError::invalid(field, message),
            EngineError::Conflict(message) => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            EngineError::Overloaded => ApiError {
                retry_after_s: Some(retry_after_s),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", "engine saturated, retry later")
            },
            EngineError::Unavailable(message) => {
                tracing::warn!(%message, "answering 503");
                ApiError {
                    retry_after_s: Some(retry_after_s),
                    ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "the store is unavailable")
                }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(field) = self.field {
            error["field"] = json!(field);
        }
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        if let Some(secs) = self.retry_after_s {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
