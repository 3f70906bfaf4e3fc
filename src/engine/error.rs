//! Errors the engine returns to its callers; the API maps each kind to one HTTP status.

use thiserror::Error;

use crate::store::StoreError;

#[derive(Debug, Clone, Error)]
pub enum EngineError {
    /// An id in the path does not exist (404).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A value in the request is not acceptable (422), naming the field.
    #[error("{message}")]
    Invalid { field: String, message: String },
    /// The request conflicts with an earlier one (409).
    #[error("{0}")]
    Conflict(String),
    /// Queues are full (429 with Retry-After).
    #[error("engine saturated, retry later")]
    Overloaded,
    /// The store cannot commit (503).
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl EngineError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> EngineError {
        EngineError::Invalid { field: field.into(), message: message.into() }
    }
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        EngineError::Unavailable(e.to_string())
    }
}
