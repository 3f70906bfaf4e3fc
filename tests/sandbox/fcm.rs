//! FCM over its real protocol: the service-account OAuth2 exchange at the sandbox's `/token`, access tokens the
//! FCM simulation requires, and Herald's `FcmClient` against the sandbox's TLS listener over HTTP/2.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use herald::domain::{Address, Platform, Priority, ProviderKind, Rendered};
use herald::providers::dev_credentials::FCM_SERVICE_ACCOUNT_JSON;
use herald::providers::fcm::{Clock, FcmClient, FcmSettings};
use herald::providers::http2;
use herald::providers::{Accepted, ErrorClass, HttpClients, Provider, SendRequest};
use herald::sandbox::FaultSettings;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};

use super::{Sandbox, eventually, settings, spawn, spawn_configured};

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
const SEND_PATH: &str = "/v1/projects/herald-dev/messages:send";

/// An RS256 assertion signed with the development key, written here rather than with Herald's signer so the
/// sandbox is checked against an independent implementation.
fn assertion(claims: &Value) -> String {
    let file: Value = serde_json::from_str(FCM_SERVICE_ACCOUNT_JSON).unwrap();
    let der = PrivatePkcs8KeyDer::from_pem_slice(file["private_key"].as_str().unwrap().as_bytes()).unwrap();
    let key = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap();
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": file["private_key_id"]});
    let input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(&RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), input.as_bytes(), &mut signature).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn dev_claims(audience: &str) -> Value {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    json!({"iss": "herald-dev@herald-dev.iam.gserviceaccount.com", "scope": SCOPE, "aud": audience,
        "iat": now, "exp": now + 3600})
}

async fn post_token(http: &reqwest::Client, url: &str, assertion: &str) -> reqwest::Response {
    http.post(url).form(&[("grant_type", JWT_BEARER), ("assertion", assertion)]).send().await.unwrap()
}

/// An access token from the sandbox, for tests that talk to its FCM endpoint directly.
pub async fn access_token(sandbox: &Sandbox) -> String {
    let url = sandbox.url("/token");
    let response = post_token(&sandbox.http, &url, &assertion(&dev_claims(&url))).await;
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_string()
}

/// The provider clients' HTTP clients, trusting the sandbox's CA.
fn provider_http(sandbox: &Sandbox) -> HttpClients {
    let ca = http2::pem_certificates(sandbox.handle.ca_pem().as_bytes()).unwrap();
    HttpClients::new(Duration::from_secs(5), ca).unwrap()
}

/// A client for the sandbox's TLS listener, trusting its CA.
fn tls_http(sandbox: &Sandbox) -> reqwest::Client {
    herald::sandbox::install_crypto_provider();
    let ca = reqwest::Certificate::from_pem(sandbox.handle.ca_pem().as_bytes()).unwrap();
    reqwest::Client::builder().no_proxy().add_root_certificate(ca).build().unwrap()
}

fn tls_url(sandbox: &Sandbox, path: &str) -> String {
    format!("https://{}{path}", sandbox.handle.tls_addr())
}

async fn token_exchanges(sandbox: &Sandbox) -> u64 {
    sandbox.get_json("/_sandbox/stats").await.1["fcm"]["token_exchanges"].as_u64().unwrap()
}

fn fcm_settings(sandbox: &Sandbox) -> FcmSettings {
    FcmSettings {
        base_url: tls_url(sandbox, ""),
        project_id: String::new(),
        service_account_file: String::new(),
        token_uri: tls_url(sandbox, "/token"),
        token_refresh_margin_s: 300,
    }
}

fn client(sandbox: &Sandbox) -> FcmClient {
    FcmClient::new(&provider_http(sandbox), &fcm_settings(sandbox)).unwrap()
}

fn push(token: &str) -> SendRequest {
    SendRequest {
        delivery_id: format!("d-{token}"),
        address: Address::Device { token: token.into(), platform: Platform::Android },
        content: Arc::new(Rendered { title: Some("Hi".into()), body: "Body".into(), html: None, template_code: None }),
        priority: Priority::High,
        attempt: 1,
    }
}

/// A clock that never moves: the client believes its token is fresh for ever.
struct FrozenClock(SystemTime);

impl Clock for FrozenClock {
    fn now(&self) -> SystemTime {
        self.0
    }
}

#[tokio::test]
async fn the_token_exchange_and_send_run_over_http2() {
    let sandbox = spawn().await;
    let http = tls_http(&sandbox);
    let token_url = tls_url(&sandbox, "/token");
    let response = post_token(&http, &token_url, &assertion(&dev_claims(&token_url))).await;
    assert_eq!((response.status().as_u16(), response.version()), (200, reqwest::Version::HTTP_2));
    let body: Value = response.json().await.unwrap();
    let token = body["access_token"].as_str().unwrap();
    assert!(token.starts_with("ya29.sandbox-"), "{token}");
    assert_eq!((body["expires_in"].as_u64(), body["token_type"].as_str()), (Some(3600), Some("Bearer")));

    let message = json!({"message": {"token": "device-1", "notification": {"body": "hi"}}});
    let response = http.post(tls_url(&sandbox, SEND_PATH)).bearer_auth(token).json(&message).send().await.unwrap();
    assert_eq!((response.status().as_u16(), response.version()), (200, reqwest::Version::HTTP_2));
    assert_eq!(token_exchanges(&sandbox).await, 1);
}

#[tokio::test]
async fn forged_or_malformed_assertions_are_refused_like_google() {
    let sandbox = spawn().await;
    let url = sandbox.url("/token");
    let good = assertion(&dev_claims(&url));
    // Claims swapped under the original signature: a forgery.
    let (header, rest) = good.split_once('.').unwrap();
    let signature = rest.split_once('.').unwrap().1;
    let mut claims = dev_claims(&url);
    claims["iss"] = json!("attacker@evil.iam.gserviceaccount.com");
    let forged = format!("{header}.{}.{signature}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    for bad in [forged, assertion(&json!({"iss": "herald-dev@herald-dev.iam.gserviceaccount.com"}))] {
        let response = post_token(&sandbox.http, &url, &bad).await;
        assert_eq!(response.status().as_u16(), 400);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_grant", "{body}");
        assert!(body["error_description"].as_str().is_some_and(|d| !d.is_empty()));
    }
    let response = sandbox.http.post(&url).form(&[("grant_type", "client_credentials")]).send().await.unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "unsupported_grant_type");
    assert_eq!(token_exchanges(&sandbox).await, 0);
}

#[tokio::test]
async fn sends_need_a_token_the_sandbox_issued() {
    let sandbox = spawn().await;
    let message = json!({"message": {"token": "device-1", "notification": {"body": "hi"}}});
    let response =
        sandbox.http.post(sandbox.url(SEND_PATH)).bearer_auth("ya29.made-up").json(&message).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (&body["error"]["code"], &body["error"]["message"], &body["error"]["status"]),
        (&json!(401), &json!("Request had invalid authentication credentials."), &json!("UNAUTHENTICATED"))
    );
    let token = access_token(&sandbox).await;
    let response = sandbox.http.post(sandbox.url(SEND_PATH)).bearer_auth(token).json(&message).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

/// Plain project paths are answered without the router, a percent-encoded one through it: both answer and log
/// alike, and the send path still refuses other methods.
#[tokio::test]
async fn sends_are_answered_and_logged_alike_with_or_without_the_router() {
    let sandbox = spawn().await;
    let token = access_token(&sandbox).await;
    for (path, project) in [(SEND_PATH, "herald-dev"), ("/v1/projects/my%20app/messages:send", "my app")] {
        let message = json!({"message": {"token": "device-1", "data": {"herald_delivery_id": project}}});
        let response = sandbox.http.post(sandbox.url(path)).bearer_auth(&token).json(&message).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let body: Value = response.json().await.unwrap();
        let name = body["name"].as_str().unwrap();
        assert!(name.starts_with(&format!("projects/{project}/messages/")), "{path}: {name}");
        let bad = sandbox.http.post(sandbox.url(path)).bearer_auth(&token).body("{").send().await.unwrap();
        assert_eq!(bad.status().as_u16(), 400, "{path}");
    }
    let (_, log) = sandbox.get_json("/_sandbox/requests?provider=fcm").await;
    let logged: Vec<(u64, Option<&str>)> =
        log.as_array().unwrap().iter().map(|e| (e["status"].as_u64().unwrap(), e["reference"].as_str())).collect();
    assert_eq!(logged, [(200, Some("herald-dev")), (400, None), (200, Some("my app")), (400, None)]);
    let (_, stats) = sandbox.get_json("/_sandbox/stats").await;
    assert_eq!((stats["fcm"]["accepted"].as_u64(), stats["fcm"]["rejected"].as_u64()), (Some(2), Some(2)));
    let get = sandbox.http.get(sandbox.url(SEND_PATH)).send().await.unwrap();
    assert_eq!(get.status().as_u16(), 405);
}

#[tokio::test]
async fn the_client_delivers_and_classifies_over_tls() {
    let sandbox = spawn().await;
    let client = client(&sandbox);
    let accepted = client.send(&push("device-1")).await.unwrap();
    let Accepted::Delivered { provider_message_id: Some(name) } = accepted else { panic!("{accepted:?}") };
    assert!(name.starts_with("projects/herald-dev/messages/"), "{name}");
    let record = sandbox.handle.record();
    assert_eq!((record[0].to.as_str(), record[0].reference.as_deref()), ("device-1", Some("d-device-1")));

    let error = client.send(&push("token-unregistered-1")).await.unwrap_err();
    assert_eq!((error.class, error.code.as_str()), (ErrorClass::Unregistered, "UNREGISTERED"));
    let error = client.send(&push("token-invalid-1")).await.unwrap_err();
    assert_eq!((error.class, error.code.as_str()), (ErrorClass::Permanent, "INVALID_ARGUMENT"));
    assert_eq!(token_exchanges(&sandbox).await, 1, "the token is cached across sends");
}

#[tokio::test]
async fn an_unavailable_fcm_is_retryable_after_its_wait() {
    let sandbox = spawn().await;
    sandbox.handle.set_faults(ProviderKind::Fcm, FaultSettings { error_rate: 1.0, ..Default::default() });
    let error = client(&sandbox).send(&push("device-1")).await.unwrap_err();
    assert_eq!((error.class, error.code.as_str()), (ErrorClass::Retryable, "UNAVAILABLE"));
    assert_eq!(error.retry_after, Some(Duration::from_secs(1)));
}

#[tokio::test]
async fn concurrent_sends_share_one_token_exchange() {
    let sandbox = spawn().await;
    let client = Arc::new(client(&sandbox));
    let sends: Vec<_> = (0..200)
        .map(|i| {
            let client = Arc::clone(&client);
            tokio::spawn(async move { client.send(&push(&format!("device-{i}"))).await })
        })
        .collect();
    for send in sends {
        assert!(matches!(send.await.unwrap(), Ok(Accepted::Delivered { .. })));
    }
    assert_eq!(token_exchanges(&sandbox).await, 1);
    assert_eq!(sandbox.handle.record().len(), 200);
}

#[tokio::test]
async fn an_expired_token_is_refreshed_and_the_send_goes_through() {
    let mut short_lived = settings(42, BTreeMap::new());
    short_lived.fcm_token_lifetime_s = 2;
    let sandbox = spawn_configured(short_lived, "").await;
    // The client's clock stands still, so only the sandbox's 401 can tell it the token is gone.
    let clock = Arc::new(FrozenClock(SystemTime::now()));
    let client = FcmClient::with_clock(&provider_http(&sandbox), &fcm_settings(&sandbox), clock).unwrap();
    client.send(&push("device-1")).await.unwrap();

    // A token issued after the client's expires after it: once the sandbox refuses this one, it refuses both.
    let later = access_token(&sandbox).await;
    let message = json!({"validate_only": true, "message": {"token": "probe"}});
    eventually(|| async {
        let response = sandbox.http.post(sandbox.url(SEND_PATH)).bearer_auth(&later).json(&message).send().await;
        (response.unwrap().status().as_u16() == 401).then_some(())
    })
    .await;

    let accepted = client.send(&push("device-2")).await.unwrap();
    assert!(matches!(accepted, Accepted::Delivered { .. }));
    assert_eq!(token_exchanges(&sandbox).await, 3, "the client's first token, the probe's, the refresh");
    assert_eq!(sandbox.handle.record().len(), 2);
}

#[tokio::test]
async fn configured_service_accounts_are_trusted_and_others_refused() {
    let dir = tempfile::tempdir().unwrap();
    let with_email = |email: &str| {
        let mut account: Value = serde_json::from_str(FCM_SERVICE_ACCOUNT_JSON).unwrap();
        account["client_email"] = json!(email);
        account["project_id"] = json!("herald-prod");
        let path = dir.path().join(format!("{email}.json"));
        std::fs::write(&path, account.to_string()).unwrap();
        path.to_str().unwrap().to_string()
    };
    let trusted = with_email("sender@herald-prod.iam.gserviceaccount.com");
    let stranger = with_email("stranger@herald-prod.iam.gserviceaccount.com");
    let mut sandbox_settings = settings(42, BTreeMap::new());
    sandbox_settings.fcm_service_accounts = vec![trusted.clone()];
    let sandbox = spawn_configured(sandbox_settings, "").await;

    let as_account = |file: String| FcmSettings { service_account_file: file, ..fcm_settings(&sandbox) };
    let client = FcmClient::new(&provider_http(&sandbox), &as_account(trusted)).unwrap();
    client.send(&push("device-1")).await.unwrap();
    assert!(sandbox.handle.record()[0].provider_message_id.starts_with("projects/herald-prod/messages/"));

    let client = FcmClient::new(&provider_http(&sandbox), &as_account(stranger)).unwrap();
    let error = client.send(&push("device-2")).await.unwrap_err();
    assert_eq!((error.class, error.code.as_str(), error.alert), (ErrorClass::Permanent, "invalid_grant", true));
    assert_eq!(sandbox.handle.record().len(), 1);
}
