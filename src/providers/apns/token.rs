//! Where the APNs `authorization` header comes from: an ES256 provider JWT (`{"alg":"ES256","kid"}` /
//! `{"iss": team id, "iat"}`) signed with the team's `.p8` key. APNs wants one token reused for 20–60 minutes
//! (refreshing more often is `TooManyProviderTokenUpdates`, older is `ExpiredProviderToken`), so the token is
//! minted once per `token_ttl_s` and every request only clones the current header under a read lock.

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use parking_lot::RwLock;
use reqwest::header::HeaderValue;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde::Serialize;

use super::ApnsSettings;
use crate::providers::{BuildError, dev_credentials};

/// Supplies the provider token for APNs requests.
pub trait ProviderTokenSource: Send + Sync + 'static {
    /// The `authorization` header value to send now (`bearer <token>`).
    fn current(&self) -> HeaderValue;

    /// APNs answered `ExpiredProviderToken` to a request sent with `rejected`: make a new token before the next
    /// request (unless that already happened since).
    fn expired(&self, rejected: &HeaderValue);
}

/// Unix seconds now. Injected so tests can age tokens without waiting.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The wall clock.
pub fn system_clock() -> Clock {
    Arc::new(|| jiff::Timestamp::now().as_second())
}

/// Token lifetimes APNs tolerates: refreshing within 20 minutes is refused, a token past 60 minutes is expired.
pub const TOKEN_TTL_RANGE_S: RangeInclusive<u64> = 1200..=3600;

/// The ES256 provider JWT, minted lazily once per ttl.
pub struct Es256ProviderToken {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    /// The encoded JWT header (`{"alg":"ES256","kid":…}`), which never changes.
    encoded_header: String,
    team_id: String,
    ttl_s: i64,
    clock: Clock,
    current: RwLock<Minted>,
}

/// The token in use and when it was signed.
struct Minted {
    header: HeaderValue,
    issued_at: i64,
}

#[derive(Serialize)]
struct JwtHeader<'a> {
    alg: &'static str,
    kid: &'a str,
}

#[derive(Serialize)]
struct JwtClaims<'a> {
    iss: &'a str,
    iat: i64,
}

impl Es256ProviderToken {
    /// The token source `providers.apns` describes: its `key_file` (empty: the development key), `key_id`,
    /// `team_id` and `token_ttl_s`, on the wall clock.
    pub fn from_settings(settings: &ApnsSettings) -> Result<Es256ProviderToken, BuildError> {
        let key_pem = if settings.key_file.is_empty() {
            if !is_loopback(&settings.base_url) {
                // Logged once: the client is built once per process.
                tracing::warn!(
                    provider = "apns",
                    "providers.apns.key_file is empty: signing with the development key, which only the sandbox \
                     trusts; set providers.apns.key_file to the team's .p8 key"
                );
            }
            dev_credentials::APNS_KEY_P8.to_string()
        } else {
            std::fs::read_to_string(&settings.key_file)
                .map_err(|e| BuildError::invalid("apns", "key_file", format!("`{}`: {e}", settings.key_file)))?
        };
        let ttl = Duration::from_secs(settings.token_ttl_s);
        Es256ProviderToken::new(&key_pem, &settings.key_id, &settings.team_id, ttl, system_clock())
    }

    /// A token source signing with `key_pem` (a PKCS#8 P-256 `.p8`), minting its first token now.
    pub fn new(
        key_pem: &str,
        key_id: &str,
        team_id: &str,
        ttl: Duration,
        clock: Clock,
    ) -> Result<Es256ProviderToken, BuildError> {
        if !TOKEN_TTL_RANGE_S.contains(&ttl.as_secs()) {
            let message = format!(
                "{} s is outside {}..={} s (APNs refuses refreshes within 20 minutes and tokens older than 60)",
                ttl.as_secs(),
                TOKEN_TTL_RANGE_S.start(),
                TOKEN_TTL_RANGE_S.end()
            );
            return Err(BuildError::invalid("apns", "token_ttl_s", message));
        }
        if key_id.is_empty() {
            return Err(BuildError::invalid("apns", "key_id", "must be the signing key's id"));
        }
        if team_id.is_empty() {
            return Err(BuildError::invalid("apns", "team_id", "must be the developer team id"));
        }
        let invalid_key = |message: String| BuildError::invalid("apns", "key_file", message);
        let der = PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| invalid_key(format!("not a PKCS#8 PEM private key: {e}")))?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.secret_pkcs8_der(), &rng)
            .map_err(|e| invalid_key(format!("not a P-256 signing key: {e}")))?;
        let header = serde_json::to_vec(&JwtHeader { alg: "ES256", kid: key_id }).expect("serializable");
        let mut source = Es256ProviderToken {
            key,
            rng,
            encoded_header: URL_SAFE_NO_PAD.encode(header),
            team_id: team_id.to_string(),
            ttl_s: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
            clock,
            current: RwLock::new(Minted { header: HeaderValue::from_static(""), issued_at: i64::MIN }),
        };
        let first = source.mint((source.clock)()).map_err(|e| invalid_key(format!("cannot sign: {e}")))?;
        source.current = RwLock::new(first);
        Ok(source)
    }

    /// Signs a token issued at `now`.
    fn mint(&self, now: i64) -> Result<Minted, ring::error::Unspecified> {
        let claims = serde_json::to_vec(&JwtClaims { iss: &self.team_id, iat: now }).expect("serializable");
        let mut jwt = String::with_capacity(self.encoded_header.len() + 200);
        jwt.push_str("bearer ");
        jwt.push_str(&self.encoded_header);
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(claims, &mut jwt);
        let signature = self.key.sign(&self.rng, &jwt.as_bytes()["bearer ".len()..])?;
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut jwt);
        let mut header = HeaderValue::try_from(jwt).expect("base64url and dots are valid header characters");
        header.set_sensitive(true);
        Ok(Minted { header, issued_at: now })
    }

    /// Replaces the token with one issued at `now`; on a signing failure keeps the old one (APNs will say).
    fn replace(&self, minted: &mut Minted, now: i64) {
        match self.mint(now) {
            Ok(fresh) => *minted = fresh,
            Err(_) => tracing::error!(provider = "apns", "cannot sign a provider token; keeping the old one"),
        }
    }
}

impl ProviderTokenSource for Es256ProviderToken {
    fn current(&self) -> HeaderValue {
        let now = (self.clock)();
        let stale = |minted: &Minted| now.saturating_sub(minted.issued_at) >= self.ttl_s;
        {
            let minted = self.current.read();
            if !stale(&minted) {
                return minted.header.clone();
            }
        }
        let mut minted = self.current.write();
        // Another request may have refreshed it while this one waited for the lock.
        if stale(&minted) {
            self.replace(&mut minted, now);
        }
        minted.header.clone()
    }

    fn expired(&self, rejected: &HeaderValue) {
        let mut minted = self.current.write();
        if minted.header == rejected {
            tracing::info!(provider = "apns", "provider token expired early; signing a new one");
            self.replace(&mut minted, (self.clock)());
        }
    }
}

/// Whether a base URL points at this machine (where the sandbox, and so the development key, belongs).
fn is_loopback(base_url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(base_url) else { return false };
    let host = url.host_str().unwrap_or_default();
    let ip = host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>();
    host == "localhost" || ip.is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use ring::signature::{ECDSA_P256_SHA256_FIXED, KeyPair as _, UnparsedPublicKey};
    use serde_json::{Value, json};

    use super::*;

    const TTL: Duration = Duration::from_secs(2400);

    /// A clock the test moves by hand.
    fn clock(start: i64) -> (Arc<AtomicI64>, Clock) {
        let now = Arc::new(AtomicI64::new(start));
        let reader = Arc::clone(&now);
        (now, Arc::new(move || reader.load(Ordering::SeqCst)))
    }

    fn dev_source(clock: Clock) -> Es256ProviderToken {
        Es256ProviderToken::new(dev_credentials::APNS_KEY_P8, "KEYID12345", "TEAMID1234", TTL, clock).unwrap()
    }

    /// The JWT of a `bearer <jwt>` header, split into its three parts.
    fn parts(header: &HeaderValue) -> (Value, Value, String, Vec<u8>) {
        let jwt = header.to_str().unwrap().strip_prefix("bearer ").expect("bearer scheme");
        let pieces: Vec<&str> = jwt.split('.').collect();
        assert_eq!(pieces.len(), 3, "{jwt}");
        let decode = |piece: &str| URL_SAFE_NO_PAD.decode(piece).expect("base64url without padding");
        let json = |piece: &str| serde_json::from_slice::<Value>(&decode(piece)).unwrap();
        let signing_input = format!("{}.{}", pieces[0], pieces[1]);
        (json(pieces[0]), json(pieces[1]), signing_input, decode(pieces[2]))
    }

    fn dev_public_key() -> Vec<u8> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(dev_credentials::APNS_KEY_P8.as_bytes()).unwrap();
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.secret_pkcs8_der(), &rng).unwrap();
        pair.public_key().as_ref().to_vec()
    }

    fn issued_at(header: &HeaderValue) -> i64 {
        parts(header).1["iat"].as_i64().unwrap()
    }

    #[test]
    fn the_jwt_names_the_key_and_team_and_is_signed_es256() {
        let (_, clock) = clock(1_700_000_000);
        let header = dev_source(clock).current();
        assert!(header.is_sensitive());
        let (jwt_header, claims, signing_input, signature) = parts(&header);
        assert_eq!(jwt_header, json!({"alg": "ES256", "kid": "KEYID12345"}));
        assert_eq!(claims, json!({"iss": "TEAMID1234", "iat": 1_700_000_000}));
        // JOSE wants the raw r||s, not DER.
        assert_eq!(signature.len(), 64);
        let public = dev_public_key();
        let verifier = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &public);
        verifier.verify(signing_input.as_bytes(), &signature).expect("signature verifies");
        let mut tampered = signing_input.into_bytes();
        tampered[0] ^= 1;
        assert!(verifier.verify(&tampered, &signature).is_err());
    }

    #[test]
    fn one_token_serves_the_whole_ttl_then_is_replaced() {
        let (now, clock) = clock(1_000);
        let source = dev_source(clock);
        let first = source.current();
        now.store(1_000 + 2_399, Ordering::SeqCst);
        assert_eq!(source.current(), first, "reused within the ttl");
        now.store(1_000 + 2_400, Ordering::SeqCst);
        let second = source.current();
        assert_ne!(second, first);
        assert_eq!(issued_at(&second), 3_400);
        assert_eq!(source.current(), second);
    }

    #[test]
    fn an_expired_token_is_replaced_once() {
        let (now, clock) = clock(1_000);
        let source = dev_source(clock);
        let rejected = source.current();
        now.store(1_005, Ordering::SeqCst);
        source.expired(&rejected);
        let fresh = source.current();
        assert_ne!(fresh, rejected);
        assert_eq!(issued_at(&fresh), 1_005);
        // A second request refused with the same old token does not replace the new one again.
        source.expired(&rejected);
        assert_eq!(source.current(), fresh);
        // The new token keeps its own full ttl.
        now.store(1_005 + 2_399, Ordering::SeqCst);
        assert_eq!(source.current(), fresh);
    }

    #[test]
    fn the_ttl_must_be_between_20_and_60_minutes() {
        let make = |seconds| {
            let (_, clock) = clock(0);
            let ttl = Duration::from_secs(seconds);
            Es256ProviderToken::new(dev_credentials::APNS_KEY_P8, "K", "T", ttl, clock)
        };
        for bad in [0, 1199, 3601] {
            let error = make(bad).err().expect("refused").to_string();
            assert!(error.starts_with("providers.apns.token_ttl_s:"), "{error}");
        }
        for good in [1200, 2400, 3600] {
            assert!(make(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn bad_keys_and_ids_name_their_setting() {
        let make = |key: &str, key_id: &str, team_id: &str| {
            let (_, clock) = clock(0);
            Es256ProviderToken::new(key, key_id, team_id, TTL, clock).err().expect("refused").to_string()
        };
        assert!(make("not a key", "K", "T").starts_with("providers.apns.key_file:"));
        // An RSA key (the FCM dev account's) is not a P-256 key.
        let rsa: Value = serde_json::from_str(dev_credentials::FCM_SERVICE_ACCOUNT_JSON).unwrap();
        let rsa = rsa["private_key"].as_str().unwrap();
        assert!(make(rsa, "K", "T").starts_with("providers.apns.key_file:"));
        assert!(make(dev_credentials::APNS_KEY_P8, "", "T").starts_with("providers.apns.key_id:"));
        assert!(make(dev_credentials::APNS_KEY_P8, "K", "").starts_with("providers.apns.team_id:"));
    }

    #[test]
    fn from_settings_reads_the_key_file_or_falls_back_to_the_dev_key() {
        let mut settings = ApnsSettings {
            base_url: "https://127.0.0.1:8443".into(),
            topic: "com.example.herald".into(),
            team_id: "SANDBOXTEAM".into(),
            key_id: "SANDBOXKEY".into(),
            key_file: String::new(),
            token_ttl_s: 2400,
        };
        let (_, claims, ..) = parts(&Es256ProviderToken::from_settings(&settings).unwrap().current());
        assert_eq!(claims["iss"], "SANDBOXTEAM");

        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), dev_credentials::APNS_KEY_P8).unwrap();
        settings.key_file = file.path().to_string_lossy().into_owned();
        assert!(Es256ProviderToken::from_settings(&settings).is_ok());

        settings.key_file = "/nonexistent/AuthKey.p8".into();
        let error = Es256ProviderToken::from_settings(&settings).err().unwrap().to_string();
        assert!(error.starts_with("providers.apns.key_file: `/nonexistent/AuthKey.p8`"), "{error}");
    }

    #[test]
    fn loopback_base_urls_are_recognized() {
        for url in ["https://127.0.0.1:8443", "http://localhost:1", "https://[::1]:8443"] {
            assert!(is_loopback(url), "{url}");
        }
        for url in ["https://api.push.apple.com", "https://10.0.0.1", "nonsense"] {
            assert!(!is_loopback(url), "{url}");
        }
    }
}
