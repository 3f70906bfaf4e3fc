//! The sandbox's HTTP side: the service both listeners serve (FCM's sends answered directly, the rest by one
//! axum router for every HTTP provider and the admin API), plus the small header parsers (bearer, basic auth)
//! the providers share.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, Method, Request};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures_util::future::BoxFuture;
use tower_service::Service;

use super::{SandboxState, fcm, journal};
use crate::domain::ProviderKind;

/// What both listeners serve: FCM's send route answered directly, everything else by the router behind the
/// journal middleware. At a 35,000/s spike the router, the middleware's plumbing and the handler's extractors
/// were ~15% of the sandbox's CPU, all for the one route that carries nearly all of a load run
/// (`docs/performance.md`, session 14); the direct route does the same checks and logs the same entry.
#[derive(Clone)]
pub(crate) struct SandboxService {
    state: Arc<SandboxState>,
    router: Router,
}

impl SandboxService {
    pub(crate) fn new(state: Arc<SandboxState>) -> SandboxService {
        let router = router(state.clone()).layer(axum::middleware::from_fn_with_state(state.clone(), journal::layer));
        SandboxService { state, router }
    }
}

impl<B> Service<Request<B>> for SandboxService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let request = request.map(Body::new);
        if request.method() != Method::POST || fcm::send_path_project(request.uri().path()).is_none() {
            return Box::pin(self.router.call(request));
        }
        let state = self.state.clone();
        Box::pin(async move {
            let state = &*state;
            let (parts, body) = request.into_parts();
            let answer = journal::journaled(state, ProviderKind::Fcm, parts, body, |parts, body| async move {
                let project = fcm::send_path_project(parts.uri.path()).unwrap_or_default();
                fcm::answer(state, project, &parts.headers, &body).await
            });
            Ok(answer.await)
        })
    }
}

/// All HTTP routes of the sandbox.
fn router(state: Arc<SandboxState>) -> Router {
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
