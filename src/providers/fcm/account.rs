//! A Google service account: read from its JSON key, it signs the RS256 JWT assertions that Google's OAuth2
//! token endpoint exchanges for FCM access tokens.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The OAuth2 scope FCM HTTP v1 asks for.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// Google refuses assertions that live longer than an hour.
pub const ASSERTION_LIFETIME_S: u64 = 3600;

/// Why a service-account JSON key cannot be used.
#[derive(Debug, Error)]
pub enum AccountError {
    #[error("not a service-account JSON key: {0}")]
    Json(String),
    #[error("`private_key` is not a PEM PKCS#8 private key")]
    Pem,
    #[error("`private_key` is not an RSA key usable for RS256: {0}")]
    Key(String),
}

/// The fields of a service-account JSON Herald uses (it also holds `type`, `client_id`, `auth_uri`…).
#[derive(Deserialize)]
struct KeyFile {
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: String,
    #[serde(default)]
    project_id: String,
    #[serde(default)]
    token_uri: String,
}

/// A loaded service account, ready to sign assertions.
pub struct ServiceAccount {
    pub client_email: String,
    /// `private_key_id`, sent as the assertion's `kid` (empty when the file has none).
    pub key_id: String,
    pub project_id: String,
    pub token_uri: String,
    /// `base64url({"alg":"RS256","typ":"JWT","kid":…})`: the same for every assertion, so encoded once.
    header: String,
    key: RsaKeyPair,
    rng: SystemRandom,
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'static str,
    typ: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    kid: &'a str,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'static str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

impl ServiceAccount {
    /// Reads a service-account JSON key and its RSA private key.
    pub fn from_json(json: &str) -> Result<ServiceAccount, AccountError> {
        let file: KeyFile = serde_json::from_str(json).map_err(|e| AccountError::Json(e.to_string()))?;
        let der = PrivatePkcs8KeyDer::from_pem_slice(file.private_key.as_bytes()).map_err(|_| AccountError::Pem)?;
        let key = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).map_err(|e| AccountError::Key(e.to_string()))?;
        let header = Header { alg: "RS256", typ: "JWT", kid: &file.private_key_id };
        Ok(ServiceAccount {
            header: encode_json(&header),
            client_email: file.client_email,
            key_id: file.private_key_id,
            project_id: file.project_id,
            token_uri: file.token_uri,
            key,
            rng: SystemRandom::new(),
        })
    }

    /// The signed JWT assertion for `audience` (the token endpoint), issued at `iat` (Unix seconds) and valid
    /// for an hour.
    pub fn assertion(&self, audience: &str, iat: u64) -> String {
        let claims =
            Claims { iss: &self.client_email, scope: SCOPE, aud: audience, iat, exp: iat + ASSERTION_LIFETIME_S };
        let mut jwt = format!("{}.{}", self.header, encode_json(&claims));
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &self.rng, jwt.as_bytes(), &mut signature)
            .expect("the signature buffer is exactly the modulus length");
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut jwt);
        jwt
    }

    /// The DER `RSAPublicKey` that verifies this account's signatures.
    pub fn public_key_der(&self) -> &[u8] {
        self.key.public().as_ref()
    }
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount").field("client_email", &self.client_email).finish_non_exhaustive()
    }
}

fn encode_json(value: &impl Serialize) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).expect("JWT parts serialize"))
}

#[cfg(test)]
mod tests {
    use ring::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
    use serde_json::{Value, json};

    use super::*;
    use crate::providers::dev_credentials::FCM_SERVICE_ACCOUNT_JSON;

    fn decode(part: &str) -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn the_dev_account_loads() {
        let account = ServiceAccount::from_json(FCM_SERVICE_ACCOUNT_JSON).unwrap();
        assert_eq!(account.client_email, "herald-dev@herald-dev.iam.gserviceaccount.com");
        assert_eq!(account.project_id, "herald-dev");
        assert_eq!(account.token_uri, "https://oauth2.googleapis.com/token");
        assert!(!format!("{account:?}").contains("PRIVATE"));
    }

    #[test]
    fn the_assertion_has_googles_header_and_claims_and_verifies() {
        let account = ServiceAccount::from_json(FCM_SERVICE_ACCOUNT_JSON).unwrap();
        let jwt = account.assertion("https://sandbox.test/token", 1_700_000_000);
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(decode(parts[0]), json!({"alg": "RS256", "typ": "JWT", "kid": "herald-sandbox-key-1"}));
        assert_eq!(
            decode(parts[1]),
            json!({
                "iss": "herald-dev@herald-dev.iam.gserviceaccount.com",
                "scope": "https://www.googleapis.com/auth/firebase.messaging",
                "aud": "https://sandbox.test/token",
                "iat": 1_700_000_000u64,
                "exp": 1_700_003_600u64,
            })
        );
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        let public_key = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, account.public_key_der());
        let signed = format!("{}.{}", parts[0], parts[1]);
        public_key.verify(signed.as_bytes(), &signature).expect("the signature verifies");
        let other_claims = account.assertion("https://sandbox.test/token", 1_700_000_001);
        let tampered = format!("{}.{}", parts[0], other_claims.split('.').nth(1).unwrap());
        assert!(public_key.verify(tampered.as_bytes(), &signature).is_err());
    }

    #[test]
    fn bad_keys_are_named() {
        assert!(matches!(ServiceAccount::from_json("{"), Err(AccountError::Json(_))));
        assert!(matches!(ServiceAccount::from_json(r#"{"private_key": "x"}"#), Err(AccountError::Json(_))));
        let not_pem = json!({"client_email": "a@b", "private_key": "not a key"}).to_string();
        assert!(matches!(ServiceAccount::from_json(&not_pem), Err(AccountError::Pem)));
        // A P-256 key in PKCS#8 PEM: well-formed, but not RSA.
        let ec = json!({"client_email": "a@b", "private_key": crate::providers::dev_credentials::APNS_KEY_P8});
        assert!(matches!(ServiceAccount::from_json(&ec.to_string()), Err(AccountError::Key(_))));
    }
}
