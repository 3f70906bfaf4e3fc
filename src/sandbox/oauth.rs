//! Simulated Google OAuth2 token endpoint for service accounts (`POST /token`, the RFC 7523 JWT-bearer grant):
//! verifies the RS256 assertion against the trusted accounts' keys and issues access tokens, which the FCM
//! simulation then requires. Trusted: the development account, plus `sandbox.fcm_service_accounts`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use parking_lot::RwLock;
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use serde::Deserialize;
use serde_json::json;

use super::SandboxState;
use crate::domain::ProviderKind;
use crate::providers::dev_credentials::FCM_SERVICE_ACCOUNT_JSON;
use crate::providers::fcm::ServiceAccount;

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// Google's limit on an assertion's life, and its tolerance for an `iat` ahead of its clock.
const MAX_ASSERTION_LIFETIME_S: u64 = 3600;
const CLOCK_SKEW_S: u64 = 60;
/// The issued-token table never grows past this: expired tokens are pruned when it fills, then the oldest go.
const MAX_ISSUED: usize = 4096;

pub(crate) fn routes() -> Router<Arc<SandboxState>> {
    Router::new().route("/token", post(token))
}

/// A service account whose assertions are trusted.
struct Trusted {
    key_id: String,
    /// DER `RSAPublicKey`.
    public_key: Vec<u8>,
}

/// The trusted accounts and the access tokens handed out.
pub(crate) struct GoogleOAuth {
    /// By `client_email`.
    accounts: HashMap<String, Trusted>,
    lifetime: Duration,
    /// Access token → when it stops being honoured.
    issued: RwLock<HashMap<String, Instant>>,
}

impl GoogleOAuth {
    /// Trusts the development account and the service-account JSON files `extra` lists. Tokens live
    /// `lifetime_s` seconds.
    pub fn new(extra: &[String], lifetime_s: u64) -> Result<GoogleOAuth, String> {
        let mut accounts = HashMap::new();
        let (email, dev) = trusted(FCM_SERVICE_ACCOUNT_JSON).map_err(|e| format!("development account: {e}"))?;
        accounts.insert(email, dev);
        for file in extra {
            let named = |e: String| format!("sandbox.fcm_service_accounts: `{file}`: {e}");
            let json = std::fs::read_to_string(file).map_err(|e| named(e.to_string()))?;
            let (email, account) = trusted(&json).map_err(named)?;
            accounts.insert(email, account);
        }
        Ok(GoogleOAuth { accounts, lifetime: Duration::from_secs(lifetime_s), issued: RwLock::new(HashMap::new()) })
    }

    /// Whether `token` was issued here and has not expired.
    pub fn honours(&self, token: &str) -> bool {
        self.issued.read().get(token).is_some_and(|expires| Instant::now() < *expires)
    }

    fn issue(&self) -> String {
        let token = format!("ya29.sandbox-{:032x}", rand::random::<u128>());
        let now = Instant::now();
        let mut issued = self.issued.write();
        if issued.len() >= MAX_ISSUED {
            issued.retain(|_, expires| now < *expires);
        }
        while issued.len() >= MAX_ISSUED {
            let oldest = issued.iter().min_by_key(|(_, expires)| **expires).map(|(token, _)| token.clone());
            if let Some(oldest) = oldest {
                issued.remove(&oldest);
            }
        }
        issued.insert(token.clone(), now + self.lifetime);
        token
    }

    /// Checks an assertion the way Google does: RS256 signature by a trusted account, then its claims.
    fn verify(&self, assertion: &str, now: u64) -> Result<(), OAuthError> {
        let signature_error = || OAuthError::grant("Invalid JWT Signature.");
        let mut parts = assertion.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(OAuthError::grant("Invalid JWT: not a signed JWT."));
        };
        let header: JwtHeader = decode_part(header).ok_or_else(|| OAuthError::grant("Invalid JWT header."))?;
        if header.alg != "RS256" {
            return Err(OAuthError::grant(format!("Invalid JWT: unsupported algorithm {}.", header.alg)));
        }
        let claims: Claims = decode_part(claims).ok_or_else(|| OAuthError::grant("Invalid JWT: missing claims."))?;
        let account =
            self.accounts.get(&claims.iss).ok_or_else(|| OAuthError::grant("Invalid grant: account not found"))?;
        if header.kid.as_ref().is_some_and(|kid| *kid != account.key_id) {
            return Err(signature_error());
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| signature_error())?;
        let signed = &assertion[..assertion.rfind('.').unwrap_or_default()];
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &account.public_key)
            .verify(signed.as_bytes(), &signature)
            .map_err(|_| signature_error())?;

        if !claims.scope.split_whitespace().any(|scope| scope == FCM_SCOPE) {
            return Err(OAuthError::new("invalid_scope", "Invalid OAuth scope or ID token audience provided."));
        }
        if !claims.aud.ends_with("/token") {
            return Err(OAuthError::grant("Invalid JWT: Failed audience check."));
        }
        let timely = claims.exp > now
            && claims.exp > claims.iat
            && claims.exp - claims.iat <= MAX_ASSERTION_LIFETIME_S
            && claims.iat <= now + CLOCK_SKEW_S;
        if !timely {
            return Err(OAuthError::grant(
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check \
                 your iat and exp values in the JWT claim.",
            ));
        }
        Ok(())
    }
}

/// A service-account JSON's email and public key (derived from its private key, read as the FCM client reads it).
fn trusted(json: &str) -> Result<(String, Trusted), String> {
    let account = ServiceAccount::from_json(json).map_err(|e| format!("not a usable service-account JSON key: {e}"))?;
    let public_key = account.public_key_der().to_vec();
    Ok((account.client_email, Trusted { key_id: account.key_id, public_key }))
}

fn decode_part<T: serde::de::DeserializeOwned>(part: &str) -> Option<T> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
}

#[derive(Deserialize)]
struct JwtHeader {
    alg: String,
    kid: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    scope: String,
    aud: String,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: Option<String>,
    assertion: Option<String>,
}

/// Google's OAuth2 error answer: 400 `{"error", "error_description"}`.
#[derive(Debug)]
struct OAuthError {
    error: &'static str,
    description: String,
}

impl OAuthError {
    fn new(error: &'static str, description: impl Into<String>) -> OAuthError {
        OAuthError { error, description: description.into() }
    }

    fn grant(description: impl Into<String>) -> OAuthError {
        OAuthError::new("invalid_grant", description)
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.error, "error_description": self.description});
        (StatusCode::BAD_REQUEST, Json(body)).into_response()
    }
}

async fn token(State(state): State<Arc<SandboxState>>, body: Bytes) -> Response {
    match exchange(&state, &body) {
        Ok(response) => {
            state.stats.token_exchange(ProviderKind::Fcm);
            response
        }
        Err(error) => {
            tracing::debug!(error = error.error, description = %error.description, "sandbox oauth refused assertion");
            error.into_response()
        }
    }
}

fn exchange(state: &SandboxState, body: &[u8]) -> Result<Response, OAuthError> {
    let form: TokenForm =
        serde_urlencoded::from_bytes(body).map_err(|_| OAuthError::new("invalid_request", "Malformed form body."))?;
    let grant_type = form.grant_type.unwrap_or_default();
    if grant_type != GRANT_TYPE {
        return Err(OAuthError::new("unsupported_grant_type", format!("Invalid grant_type: {grant_type}")));
    }
    let assertion = form
        .assertion
        .filter(|a| !a.is_empty())
        .ok_or_else(|| OAuthError::new("invalid_request", "Missing required parameter: assertion"))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let oauth = &state.fcm_oauth;
    oauth.verify(&assertion, now)?;
    let body = json!({
        "access_token": oauth.issue(),
        "expires_in": oauth.lifetime.as_secs(),
        "token_type": "Bearer",
    });
    Ok(Json(body).into_response())
}

#[cfg(test)]
mod tests {
    use ring::signature::RsaKeyPair;
    use rustls_pki_types::PrivatePkcs8KeyDer;
    use rustls_pki_types::pem::PemObject;
    use serde_json::Value;

    use super::*;

    fn encode(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(value.to_string())
    }

    /// An assertion signed with the development key: the client's signer is not used, so a bug there cannot
    /// hide one here.
    fn signed(header: &Value, claims: &Value) -> String {
        let file: Value = serde_json::from_str(FCM_SERVICE_ACCOUNT_JSON).unwrap();
        let pem = file["private_key"].as_str().unwrap();
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).unwrap();
        let key = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap();
        let input = format!("{}.{}", encode(header), encode(claims));
        let mut signature = vec![0; key.public().modulus_len()];
        let rng = ring::rand::SystemRandom::new();
        key.sign(&ring::signature::RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut signature).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    const NOW: u64 = 1_700_000_000;

    fn header() -> Value {
        json!({"alg": "RS256", "typ": "JWT", "kid": "herald-sandbox-key-1"})
    }

    fn claims() -> Value {
        json!({"iss": "herald-dev@herald-dev.iam.gserviceaccount.com", "scope": FCM_SCOPE,
            "aud": "https://127.0.0.1:8443/token", "iat": NOW, "exp": NOW + 3600})
    }

    fn with(mut value: Value, key: &str, new: Value) -> Value {
        value[key] = new;
        value
    }

    #[test]
    fn a_good_assertion_is_accepted() {
        let oauth = GoogleOAuth::new(&[], 3600).unwrap();
        oauth.verify(&signed(&header(), &claims()), NOW).unwrap();
        let no_kid = json!({"alg": "RS256", "typ": "JWT"});
        oauth.verify(&signed(&no_kid, &claims()), NOW).unwrap();
        let two_scopes = with(claims(), "scope", json!(format!("openid {FCM_SCOPE}")));
        oauth.verify(&signed(&header(), &two_scopes), NOW).unwrap();
    }

    #[test]
    fn bad_assertions_are_refused_like_google() {
        let oauth = GoogleOAuth::new(&[], 3600).unwrap();
        let good = signed(&header(), &claims());
        let (head, rest) = good.split_once('.').unwrap();
        let (_, signature) = rest.split_once('.').unwrap();
        let forged_claims = format!("{head}.{}.{signature}", encode(&with(claims(), "exp", json!(NOW + 60))));
        let cases = [
            (forged_claims, "invalid_grant"),
            (format!("{}x", &good[..good.len() - 1]), "invalid_grant"),
            (signed(&with(header(), "kid", json!("other")), &claims()), "invalid_grant"),
            (signed(&with(header(), "alg", json!("HS256")), &claims()), "invalid_grant"),
            (signed(&header(), &with(claims(), "iss", json!("someone@else.iam.gserviceaccount.com"))), "invalid_grant"),
            (
                signed(&header(), &with(claims(), "scope", json!("https://www.googleapis.com/auth/drive"))),
                "invalid_scope",
            ),
            (signed(&header(), &with(claims(), "aud", json!("https://127.0.0.1:8443/"))), "invalid_grant"),
            (signed(&header(), &with(claims(), "exp", json!(NOW))), "invalid_grant"),
            (signed(&header(), &with(claims(), "exp", json!(NOW + 3601))), "invalid_grant"),
            (
                signed(&header(), &with(with(claims(), "iat", json!(NOW + 61)), "exp", json!(NOW + 120))),
                "invalid_grant",
            ),
            ("not.a.jwt.at-all".to_string(), "invalid_grant"),
            (String::from("abc"), "invalid_grant"),
        ];
        for (i, (assertion, error)) in cases.iter().enumerate() {
            let refused = oauth.verify(assertion, NOW).expect_err(&format!("case {i}"));
            assert_eq!(refused.error, *error, "case {i}: {}", refused.description);
        }
    }

    #[test]
    fn issued_tokens_are_honoured_until_they_expire() {
        let oauth = GoogleOAuth::new(&[], 3600).unwrap();
        let token = oauth.issue();
        assert!(token.starts_with("ya29.sandbox-"));
        assert!(oauth.honours(&token));
        assert!(!oauth.honours("ya29.made-up"));
        let expired = GoogleOAuth::new(&[], 0).unwrap();
        assert!(!expired.honours(&expired.issue()));
    }

    #[test]
    fn the_table_stays_bounded() {
        let oauth = GoogleOAuth::new(&[], 0).unwrap();
        for _ in 0..MAX_ISSUED + 10 {
            oauth.issue();
        }
        assert!(oauth.issued.read().len() <= MAX_ISSUED);
        let live = GoogleOAuth::new(&[], 3600).unwrap();
        for _ in 0..MAX_ISSUED + 10 {
            live.issue();
        }
        assert_eq!(live.issued.read().len(), MAX_ISSUED);
    }

    #[test]
    fn extra_accounts_are_named_when_unreadable() {
        let error = GoogleOAuth::new(&["/nonexistent/sa.json".to_string()], 3600).err().unwrap();
        assert!(error.starts_with("sandbox.fcm_service_accounts: `/nonexistent/sa.json`"), "{error}");
    }
}
