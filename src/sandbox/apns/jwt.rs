//! The sandbox's check of APNs provider tokens (`authorization: bearer <jwt>`): an ES256 JWT whose `kid` names a
//! trusted key (the development key, plus `sandbox.apns_keys`), whose `iss` is that key's team, and whose `iat`
//! is neither in the future (beyond a minute of skew) nor older than `sandbox.apns_token_max_age_s`.
//!
//! Clients reuse one token for many requests, so a token whose signature verified is remembered (bounded): at
//! load-test rates an ECDSA verification per request would make the sandbox the bottleneck.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use parking_lot::RwLock;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use serde::Deserialize;

use crate::providers::dev_credentials;
use crate::sandbox::settings::ApnsKeySettings;

/// How far in the future an `iat` may be before the token is refused (clock skew between hosts).
const MAX_SKEW_S: i64 = 60;
/// Verified tokens remembered; the memory is simply dropped when full.
const VERIFIED_MAX: usize = 4096;
/// DER prefix of a P-256 SubjectPublicKeyInfo (id-ecPublicKey, prime256v1, then the 65-byte point).
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
    0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Why a provider token was refused: APNs's `reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Malformed, unknown `kid`, wrong team, bad signature, or issued in the future.
    Invalid,
    /// Issued longer ago than the sandbox's maximum age.
    Expired,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Invalid => "InvalidProviderToken",
            Refusal::Expired => "ExpiredProviderToken",
        }
    }
}

/// One key provider tokens may be signed with.
struct TrustedKey {
    team_id: String,
    /// The uncompressed P-256 point.
    public: Vec<u8>,
}

/// The keys the sandbox accepts provider tokens from, and the tokens already verified.
pub(crate) struct TrustedKeys {
    by_kid: HashMap<String, TrustedKey>,
    max_age_s: i64,
    /// Token → its `iat`, for tokens whose signature, key and team were checked.
    verified: RwLock<HashMap<String, i64>>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: String,
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    iat: i64,
}

impl TrustedKeys {
    /// The development key plus `configured`; fails naming the key whose file cannot be used.
    pub fn new(configured: &[ApnsKeySettings], max_age_s: u64) -> Result<TrustedKeys, String> {
        if max_age_s == 0 {
            return Err("sandbox.apns_token_max_age_s: must be at least 1".to_string());
        }
        let mut by_kid = HashMap::new();
        let dev = public_key(dev_credentials::APNS_KEY_P8.as_bytes()).expect("the development key is valid");
        by_kid.insert(
            dev_credentials::APNS_KEY_ID.to_string(),
            TrustedKey { team_id: dev_credentials::APNS_TEAM_ID.to_string(), public: dev },
        );
        for key in configured {
            let error = |message: String| format!("sandbox.apns_keys `{}`: {message}", key.key_id);
            let pem = std::fs::read(&key.key_file).map_err(|e| error(format!("`{}`: {e}", key.key_file)))?;
            let public = public_key(&pem).map_err(error)?;
            by_kid.insert(key.key_id.clone(), TrustedKey { team_id: key.team_id.clone(), public });
        }
        let max_age_s = i64::try_from(max_age_s).unwrap_or(i64::MAX);
        Ok(TrustedKeys { by_kid, max_age_s, verified: RwLock::new(HashMap::new()) })
    }

    /// Checks the bearer token `jwt` at unix second `now`.
    pub fn check(&self, jwt: &str, now: i64) -> Result<(), Refusal> {
        let remembered = self.verified.read().get(jwt).copied();
        let iat = match remembered {
            Some(iat) => iat,
            None => {
                let iat = self.verify(jwt)?;
                let mut verified = self.verified.write();
                if verified.len() >= VERIFIED_MAX {
                    verified.clear();
                }
                verified.insert(jwt.to_string(), iat);
                iat
            }
        };
        if iat > now.saturating_add(MAX_SKEW_S) {
            return Err(Refusal::Invalid);
        }
        if now.saturating_sub(iat) > self.max_age_s {
            return Err(Refusal::Expired);
        }
        Ok(())
    }

    /// Decodes `jwt`, checks its key, team and signature, and returns its `iat`.
    fn verify(&self, jwt: &str) -> Result<i64, Refusal> {
        let mut parts = jwt.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Refusal::Invalid);
        };
        let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| Refusal::Invalid);
        let header: Header = serde_json::from_slice(&decode(header)?).map_err(|_| Refusal::Invalid)?;
        let parsed: Claims = serde_json::from_slice(&decode(claims)?).map_err(|_| Refusal::Invalid)?;
        let key = self.by_kid.get(&header.kid).ok_or(Refusal::Invalid)?;
        if header.alg != "ES256" || parsed.iss != key.team_id {
            return Err(Refusal::Invalid);
        }
        let signing_input = &jwt[..jwt.len() - signature.len() - 1];
        ring::signature::UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &key.public)
            .verify(signing_input.as_bytes(), &decode(signature)?)
            .map_err(|_| Refusal::Invalid)?;
        Ok(parsed.iat)
    }
}

/// The P-256 public point of a `.p8` private key or of a PEM public key.
fn public_key(pem: &[u8]) -> Result<Vec<u8>, String> {
    if let Ok(der) = PrivatePkcs8KeyDer::from_pem_slice(pem) {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.secret_pkcs8_der(), &rng)
            .map_err(|e| format!("not a P-256 private key: {e}"))?;
        return Ok(pair.public_key().as_ref().to_vec());
    }
    let spki = SubjectPublicKeyInfoDer::from_pem_slice(pem)
        .map_err(|_| "neither a PKCS#8 private key nor a public key in PEM".to_string())?;
    match spki.strip_prefix(P256_SPKI_PREFIX.as_slice()) {
        Some(point) if point.len() == 65 => Ok(point.to_vec()),
        _ => Err("not a P-256 public key".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::providers::apns::{Es256ProviderToken, ProviderTokenSource};

    const NOW: i64 = 1_700_000_000;

    /// A token from Herald's own client code, signed at `iat`.
    fn token(key_pem: &str, kid: &str, team: &str, iat: i64) -> String {
        let clock = Arc::new(move || iat);
        let source = Es256ProviderToken::new(key_pem, kid, team, Duration::from_secs(2400), clock).unwrap();
        source.current().to_str().unwrap().strip_prefix("bearer ").unwrap().to_string()
    }

    fn dev_token(iat: i64) -> String {
        token(dev_credentials::APNS_KEY_P8, "SANDBOXKEY", "SANDBOXTEAM", iat)
    }

    #[test]
    fn the_development_key_is_trusted_by_default() {
        let keys = TrustedKeys::new(&[], 3600).unwrap();
        assert_eq!(keys.check(&dev_token(NOW), NOW), Ok(()));
        // Remembered tokens are still aged on every request.
        assert_eq!(keys.check(&dev_token(NOW - 3601), NOW), Err(Refusal::Expired));
        let token = dev_token(NOW);
        assert_eq!(keys.check(&token, NOW + 3600), Ok(()));
        assert_eq!(keys.check(&token, NOW + 3601), Err(Refusal::Expired));
        assert_eq!(keys.check(&dev_token(NOW + 61), NOW), Err(Refusal::Invalid));
        assert_eq!(keys.check(&dev_token(NOW + 60), NOW), Ok(()));
    }

    #[test]
    fn unknown_keys_wrong_teams_and_bad_signatures_are_invalid() {
        let keys = TrustedKeys::new(&[], 3600).unwrap();
        let unknown_kid = token(dev_credentials::APNS_KEY_P8, "OTHERKEY", "SANDBOXTEAM", NOW);
        let wrong_team = token(dev_credentials::APNS_KEY_P8, "SANDBOXKEY", "OTHERTEAM", NOW);
        let good = dev_token(NOW);
        let (signed, signature) = good.rsplit_once('.').unwrap();
        let other_signature = dev_token(NOW).rsplit_once('.').unwrap().1.to_string();
        let claims_of_other_team = wrong_team.split('.').nth(1).unwrap();
        let header = good.split('.').next().unwrap();
        let cases = [
            unknown_kid,
            wrong_team.clone(),
            format!("{signed}.{}", &signature[..signature.len() - 2]),
            // A valid signature over other claims.
            format!("{header}.{claims_of_other_team}.{other_signature}"),
            "not-a-jwt".to_string(),
            "a.b.c".to_string(),
            format!("{good}.extra"),
        ];
        for case in cases {
            assert_eq!(keys.check(&case, NOW), Err(Refusal::Invalid), "{case}");
        }
    }

    #[test]
    fn configured_keys_are_trusted_from_private_or_public_pem() {
        let key = rcgen::KeyPair::generate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("AuthKey_EXTRAKEY.p8");
        let public = dir.path().join("extra.pub.pem");
        std::fs::write(&private, key.serialize_pem()).unwrap();
        std::fs::write(&public, key.public_key_pem()).unwrap();
        for (kid, file) in [("EXTRAKEY", &private), ("EXTRAPUB", &public)] {
            let configured = ApnsKeySettings {
                key_id: kid.into(),
                team_id: "EXTRATEAM".into(),
                key_file: file.to_string_lossy().into_owned(),
            };
            let keys = TrustedKeys::new(&[configured], 3600).unwrap();
            assert_eq!(keys.check(&token(&key.serialize_pem(), kid, "EXTRATEAM", NOW), NOW), Ok(()), "{kid}");
            assert_eq!(keys.check(&dev_token(NOW), NOW), Ok(()), "the dev key stays trusted");
        }
        let missing = ApnsKeySettings { key_id: "K".into(), team_id: "T".into(), key_file: "/nonexistent.p8".into() };
        let error = TrustedKeys::new(&[missing], 3600).err().unwrap();
        assert!(error.starts_with("sandbox.apns_keys `K`: `/nonexistent.p8`"), "{error}");
        assert!(TrustedKeys::new(&[], 0).is_err());
    }
}
