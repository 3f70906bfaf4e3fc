//! The sandbox's TLS: a certificate authority generated at start (rcgen), a server certificate it signs for
//! `localhost`, `127.0.0.1` and `::1`, and the HTTPS listener that serves the provider router over HTTP/2 or
//! HTTP/1.1 (ALPN), as FCM and APNs are reached in production. Engines trust the CA through
//! `providers.extra_root_ca_file` or, in-process, [`super::SandboxHandle::ca_pem`]. SMTP STARTTLS uses the same
//! certificate without ALPN.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::http::SandboxService;
use crate::providers::cork::Corked;

/// A client that connects and never finishes its handshake is dropped after this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The sandbox's generated authority and server certificate.
pub(crate) struct SandboxTls {
    ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
}

/// Makes sure rustls has its process-wide crypto provider (ring). Safe to call any number of times.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl SandboxTls {
    /// A fresh CA and a server certificate for the loopback names, both ECDSA P-256.
    pub fn generate() -> Result<SandboxTls, String> {
        install_crypto_provider();
        let error = |e: rcgen::Error| format!("sandbox certificate: {e}");
        let ca_key = KeyPair::generate().map_err(error)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(error)?;
        ca_params.distinguished_name.push(DnType::CommonName, "Herald sandbox CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).map_err(error)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().map_err(error)?;
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
        let mut server_params = CertificateParams::new(names).map_err(error)?;
        server_params.distinguished_name.push(DnType::CommonName, "Herald sandbox");
        let server_cert = server_params.signed_by(&server_key, &issuer).map_err(error)?;

        Ok(SandboxTls {
            ca_pem: ca_cert.pem(),
            chain: vec![server_cert.der().clone(), ca_cert.der().clone()],
            key_der: server_key.serialize_der(),
        })
    }

    /// The CA certificate (PEM) a client must trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A rustls server configuration offering `alpn` protocols (e.g. `h2`, `http/1.1`; none for SMTP).
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, String> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), key)
            .map_err(|e| format!("sandbox TLS configuration: {e}"))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

/// Serves `service` over TLS on `listener` until `cancel` fires: HTTP/2 when the client offers `h2`, else
/// HTTP/1.1. Each connection does its handshake on its own task, so a slow client holds up no one else.
pub(crate) async fn serve(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    service: SandboxService,
    cancel: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(config);
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, _) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "sandbox tls accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = service.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "sandbox tls handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(Corked::new(tls)), TowerToHyperService::new(service));
            tokio::pin!(connection);
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(error) = served {
                        tracing::debug!(%error, "sandbox tls connection ended with an error");
                    }
                }
                _ = cancel.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}
