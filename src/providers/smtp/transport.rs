//! How Herald reaches the relay: the pooled lettre transport with the configured TLS mode (`providers.smtp.tls`),
//! the system roots plus the extra trusted roots (`providers.extra_root_ca_file`, the in-process sandbox's CA),
//! and AUTH, which is only ever sent over TLS. The certificate must carry `providers.smtp.host`.

use std::time::Duration;

use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, Tokio1Executor};

use super::{SmtpSettings, SmtpTls};
use crate::providers::BuildError;

/// The extra roots as PEM bundles: the configured file, then the in-process sandbox's CA. (The HTTP clients read
/// the same two sources into reqwest's type.)
pub fn extra_root_pems(file: &str, pem: Option<&str>) -> Result<Vec<Vec<u8>>, BuildError> {
    let mut pems = Vec::new();
    if !file.is_empty() {
        let bytes = std::fs::read(file)
            .map_err(|e| BuildError::invalid("tls", "extra_root_ca_file", format!("`{file}`: {e}")))?;
        pems.push(bytes);
    }
    if let Some(pem) = pem {
        pems.push(pem.as_bytes().to_vec());
    }
    Ok(pems)
}

/// The pooled transport for `settings`, trusting `extra_roots` (PEM bundles) besides the system's roots.
pub(super) fn build(
    settings: &SmtpSettings,
    timeout: Duration,
    extra_roots: &[Vec<u8>],
) -> Result<AsyncSmtpTransport<Tokio1Executor>, BuildError> {
    crate::sandbox::install_crypto_provider();
    let has_username = !settings.username.is_empty();
    let has_password = !settings.password.expose().is_empty();
    if has_username != has_password {
        return Err(BuildError::invalid("smtp", "username", "set both username and password, or neither"));
    }
    if has_username && !settings.tls.always_encrypted() {
        return Err(BuildError::invalid(
            "smtp",
            "username",
            "AUTH is only sent over TLS: set providers.smtp.tls to `starttls` or `wrapper`",
        ));
    }
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(settings.host.as_str())
        .port(settings.port)
        .timeout(Some(timeout))
        .pool_config(PoolConfig::new().max_size(settings.pool_size));
    if settings.tls != SmtpTls::None {
        let parameters = tls_parameters(&settings.host, extra_roots)?;
        builder = builder.tls(match settings.tls {
            SmtpTls::Starttls => Tls::Required(parameters),
            SmtpTls::Opportunistic => Tls::Opportunistic(parameters),
            SmtpTls::Wrapper | SmtpTls::None => Tls::Wrapper(parameters),
        });
    }
    if has_username {
        builder =
            builder.credentials(Credentials::new(settings.username.clone(), settings.password.expose().to_string()));
    }
    Ok(builder.build())
}

fn tls_parameters(host: &str, extra_roots: &[Vec<u8>]) -> Result<TlsParameters, BuildError> {
    let mut parameters = TlsParameters::builder(host.to_string());
    for pem in extra_roots {
        let root = Certificate::from_pem(pem)
            .map_err(|e| BuildError::invalid("tls", "extra_root_ca_file", format!("not a PEM certificate: {e}")))?;
        parameters = parameters.add_root_certificate(root);
    }
    parameters.build_rustls().map_err(|e| BuildError::invalid("smtp", "tls", e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Secret;
    use crate::domain::{Address, Priority, Rendered};
    use crate::providers::smtp::SmtpClient;
    use crate::providers::testing::request;
    use crate::providers::{Accepted, ErrorClass, Provider, SendRequest};
    use crate::sandbox::SandboxHandle;

    /// A sandbox on port 0. Built from JSON so that sandbox settings added later (with defaults) need no change here.
    async fn sandbox(require_tls: bool) -> SandboxHandle {
        let settings = serde_json::from_value(serde_json::json!({
            "enabled": true, "listen": "127.0.0.1:0", "smtp_listen": "127.0.0.1:0", "tls_listen": "127.0.0.1:0",
            "seed": 1, "smtp_require_tls": require_tls,
        }))
        .unwrap();
        crate::sandbox::start(&settings, String::new()).await.unwrap()
    }

    fn settings(host: &str, port: u16, tls: SmtpTls) -> SmtpSettings {
        SmtpSettings {
            host: host.into(),
            port,
            from: "herald@example.com".into(),
            pool_size: 2,
            tls,
            username: String::new(),
            password: Secret::default(),
        }
    }

    fn client(settings: &SmtpSettings, roots: &[&str]) -> SmtpClient {
        let roots: Vec<Vec<u8>> = roots.iter().map(|pem| pem.as_bytes().to_vec()).collect();
        SmtpClient::new(settings, Duration::from_secs(5), &roots).unwrap()
    }

    fn mail() -> SendRequest {
        let mut req =
            request(Address::Email { email: "kim@example.com".into() }, Some("Hi"), "Hello <you>", Priority::Normal);
        req.content = Arc::new(Rendered { html: None, ..(*req.content).clone() });
        req
    }

    #[tokio::test]
    async fn starttls_to_the_sandbox_delivers_both_parts() {
        let sandbox = sandbox(true).await;
        let port = sandbox.smtp_addr().port();
        for host in ["127.0.0.1", "localhost"] {
            let accepted = client(&settings(host, port, SmtpTls::Starttls), &[sandbox.ca_pem()]).send(&mail()).await;
            assert!(matches!(accepted, Ok(Accepted::Delivered { provider_message_id: Some(_) })), "{accepted:?}");
        }
        let record = sandbox.record();
        assert_eq!(record.len(), 2);
        assert_eq!(record[0].body, "Hello <you>");
        assert_eq!(
            record[0].html.as_deref().map(str::trim_end),
            Some("<!DOCTYPE html><html><body><p>Hello &lt;you&gt;</p></body></html>")
        );
        sandbox.shutdown();
    }

    #[tokio::test]
    async fn an_untrusted_certificate_is_a_permanent_alerting_error() {
        let sandbox = sandbox(false).await;
        let error = client(&settings("127.0.0.1", sandbox.smtp_addr().port(), SmtpTls::Starttls), &[])
            .send(&mail())
            .await
            .unwrap_err();
        assert_eq!((error.class, error.code.as_str(), error.alert), (ErrorClass::Permanent, "tls", true), "{error}");
        assert!(sandbox.record().is_empty());
        sandbox.shutdown();
    }

    #[tokio::test]
    async fn implicit_tls_against_a_starttls_port_is_a_tls_error() {
        let sandbox = sandbox(false).await;
        let error = client(&settings("127.0.0.1", sandbox.smtp_addr().port(), SmtpTls::Wrapper), &[sandbox.ca_pem()])
            .send(&mail())
            .await
            .unwrap_err();
        assert_eq!((error.class, error.code.as_str(), error.alert), (ErrorClass::Permanent, "tls", true), "{error}");
        sandbox.shutdown();
    }

    #[tokio::test]
    async fn plain_smtp_to_a_relay_requiring_tls_alerts() {
        let sandbox = sandbox(true).await;
        let error = client(&settings("127.0.0.1", sandbox.smtp_addr().port(), SmtpTls::None), &[])
            .send(&mail())
            .await
            .unwrap_err();
        assert_eq!((error.class, error.code.as_str(), error.alert), (ErrorClass::Permanent, "530", true), "{error}");
        // Opportunistic TLS takes the offer and gets through.
        let opportunistic = settings("127.0.0.1", sandbox.smtp_addr().port(), SmtpTls::Opportunistic);
        client(&opportunistic, &[sandbox.ca_pem()]).send(&mail()).await.unwrap();
        sandbox.shutdown();
    }

    #[test]
    fn credentials_need_tls_and_each_other() {
        let mut plain = settings("127.0.0.1", 25, SmtpTls::Opportunistic);
        plain.username = "herald".into();
        plain.password = Secret::new("hunter2");
        let error = build(&plain, Duration::from_secs(1), &[]).err().unwrap().to_string();
        assert!(error.starts_with("providers.smtp.username:") && error.contains("only sent over TLS"), "{error}");
        plain.password = Secret::default();
        plain.tls = SmtpTls::Starttls;
        assert!(build(&plain, Duration::from_secs(1), &[]).is_err());
    }

    #[test]
    fn a_bad_root_names_the_setting() {
        let bad = b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".to_vec();
        let settings = settings("127.0.0.1", 25, SmtpTls::Starttls);
        let error = build(&settings, Duration::from_secs(1), &[bad]).err().unwrap().to_string();
        assert!(error.starts_with("providers.tls.extra_root_ca_file:"), "{error}");
    }
}
