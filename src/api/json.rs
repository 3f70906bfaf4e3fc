//! Request bodies: size-limited, parsed with the failing field's path. Malformed JSON is 400, a body over the
//! limit 413, a well-formed body with a wrong value 422 naming the field (e.g. `channels[0]`).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON body of type `T`, with the raw bytes kept for hashing (idempotency).
pub struct JsonBody<T> {
    pub value: T,
    pub raw: Bytes,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let raw = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "request body is too large")
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "unreadable_body", rejection.body_text())
            }
        })?;
        let value = parse(&raw)?;
        Ok(JsonBody { value, raw })
    }
}

/// Parses JSON, telling syntax errors (400) from value errors (422 with the field path).
pub fn parse<T: DeserializeOwned>(raw: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(raw);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let field = if path == "." { "body".to_string() } else { path };
                ApiError::invalid(field, strip_position(&inner.to_string()))
            }
            _ => ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", inner.to_string()),
        }
    })?;
    de.end().map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string()))?;
    Ok(value)
}

fn strip_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Channel;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        channels: Vec<Channel>,
    }

    #[test]
    fn syntax_errors_are_400_and_value_errors_422_with_the_field() {
        let err = parse::<Body>(b"{\"channels\": [").unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        let err = parse::<Body>(br#"{"channels": ["push", "fax"]}"#).unwrap_err();
        assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(err.field.as_deref(), Some("channels[1]"));
        assert!(err.message.contains("fax"), "{}", err.message);
        let err = parse::<Body>(br#"{"chanels": []}"#).unwrap_err();
        assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY);
        let err = parse::<Body>(br#"{"channels": []} x"#).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
    }
}
