//! The sandbox's HTTP side: one axum router for every HTTP provider and the admin API, plus the small header
//! parsers (bearer, basic auth) the providers share.

use std::sync::Arc;

use axum::Router;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::SandboxState;

/// All HTTP routes of the sandbox.
pub(crate) fn router(state: Arc<SandboxState>) -> Router {
    Router::new()
        .merge(super::fcm::routes())
        .merge(super::oauth::routes())
        .merge(super::apns::routes())
        .merge(super::twilio::routes())
        .merge(super::bizppurio::routes())
        .merge(super::admin::routes())
        .with_state(state)
}

/// The `Authorization` header's value after a case-insensitive `scheme ` prefix, if non-empty.
fn credentials<'h>(headers: &'h HeaderMap, scheme: &str) -> Option<&'h str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (given, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    (given.eq_ignore_ascii_case(scheme) && !rest.is_empty()).then_some(rest)
}

/// The bearer token of `Authorization: Bearer <token>`, if present and non-empty.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    credentials(headers, "bearer")
}

/// The user and password of `Authorization: Basic base64(user:password)`, if well-formed.
pub(crate) fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let decoded = STANDARD.decode(credentials(headers, "basic")?).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// A fresh provider message id: 32 lowercase hex digits, time-ordered.
pub(crate) fn new_message_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn with_auth(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively() {
        assert_eq!(bearer(&with_auth("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&with_auth("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&with_auth("Bearer ")), None);
        assert_eq!(bearer(&with_auth("Basic abc")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn basic_auth_is_decoded() {
        let encoded = STANDARD.encode("AC1:secret:with:colons");
        assert_eq!(
            basic_auth(&with_auth(&format!("Basic {encoded}"))),
            Some(("AC1".to_string(), "secret:with:colons".to_string()))
        );
        assert_eq!(basic_auth(&with_auth("Basic !!!")), None);
        assert_eq!(basic_auth(&with_auth(&format!("Basic {}", STANDARD.encode("nocolon")))), None);
    }
}
