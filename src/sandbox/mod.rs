//! The provider sandbox: a simulator that speaks the providers' protocols on loopback, records every message it
//! accepts, and can be told to be slow or to fail. Runs as `herald sandbox` or in-process beside `herald serve`.
//!
//! Code map:
//! - [`start`] binds one HTTP listener (FCM, APNs, Twilio, Bizppurio and the `/_sandbox` admin API, see
//!   `http.rs`, which answers FCM's sends without the router, and one file per provider) and one SMTP
//!   listener (`smtp/`, STARTTLS with the certificate of `tls.rs`), and returns a [`SandboxHandle`].
//! - `record.rs` keeps what was accepted ([`ReceivedMessage`]); `stats.rs` counts accepted and rejected requests.
//! - `faults.rs` draws latency, errors and report behaviour from seeded RNGs per provider, so runs repeat.
//! - `reports.rs` posts Twilio status callbacks and Bizppurio delivery reports back to loopback URLs.
//! - `oauth.rs` is Google's OAuth2 token endpoint (`POST /token`): it checks service-account assertions and
//!   issues the access tokens `fcm.rs` requires.
//! - `journal.rs` keeps bounded logs of provider requests (arrival time, status, fault) and of reports.
//!
//! Per request every provider checks, in this order: auth, request shape (payload size, required fields), then
//! the injected latency and fault draw, then the per-address rules (an address containing `unregistered`,
//! `invalid`, `optout` or `undeliverable`), then the address format; only then is the message recorded. (SMTP
//! refuses recipients at RCPT time, so its address rules come before the message and its fault draw.)
//!
//! The record keeps every accepted message until `DELETE /_sandbox/messages` (all of it, or `?through=<seq>`);
//! long load runs read it in pages and forget each page they read.

mod admin;
mod apns;
mod bizppurio;
mod faults;
mod fcm;
mod http;
mod journal;
mod oauth;
mod record;
mod reports;
mod settings;
mod smtp;
mod stats;
mod tls;
mod twilio;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::ServiceExt;
use axum::extract::Request;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use journal::{InjectedFault, ReportEntry, ReportStatus, RequestEntry};
pub use record::ReceivedMessage;
pub use settings::{ApnsKeySettings, FaultSettings, SandboxSettings};
pub use tls::install_crypto_provider;

use crate::domain::ProviderKind;

/// The providers the sandbox simulates (the in-app inbox is Herald's own).
const SIMULATED: [ProviderKind; 5] =
    [ProviderKind::Fcm, ProviderKind::Apns, ProviderKind::Smtp, ProviderKind::Twilio, ProviderKind::Bizppurio];

/// Everything the listeners share.
pub(crate) struct SandboxState {
    pub record: record::Record,
    pub faults: faults::Faults,
    pub stats: stats::Stats,
    pub reports: reports::Reporter,
    pub journal: journal::Journal,
    pub bizppurio_tokens: bizppurio::Tokens,
    pub fcm_oauth: oauth::GoogleOAuth,
    pub apns_keys: apns::TrustedKeys,
    pub cancel: CancellationToken,
}

/// A running sandbox. Dropping the handle leaves it running; call [`SandboxHandle::shutdown`] to stop it.
pub struct SandboxHandle {
    state: Arc<SandboxState>,
    http_addr: SocketAddr,
    smtp_addr: SocketAddr,
    tls_addr: SocketAddr,
    ca_pem: String,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Starts the sandbox: binds `settings.listen` (HTTP) and `settings.smtp_listen` (SMTP); port 0 picks a free
/// port (see [`SandboxHandle::http_addr`]). Bizppurio delivery reports go to `settings.report_url` if set, else
/// to `report_url` (the engine's `/webhooks/alimtalk`); with both empty, or a URL off this host, no reports are
/// sent. Fails on invalid fault settings or APNs keys (`InvalidInput`) or when a listener cannot bind.
pub async fn start(settings: &SandboxSettings, report_url: String) -> io::Result<SandboxHandle> {
    tls::install_crypto_provider();
    let invalid = |message: String| io::Error::new(io::ErrorKind::InvalidInput, message);
    let faults = faults::Faults::new(settings.seed, &settings.faults).map_err(invalid)?;
    let report_url = if settings.report_url.is_empty() { report_url } else { settings.report_url.clone() };
    let cancel = CancellationToken::new();
    let reports = reports::Reporter::new(&report_url).map_err(invalid)?;
    let fcm_oauth =
        oauth::GoogleOAuth::new(&settings.fcm_service_accounts, settings.fcm_token_lifetime_s).map_err(invalid)?;
    let apns_keys = apns::TrustedKeys::new(&settings.apns_keys, settings.apns_token_max_age_s).map_err(invalid)?;

    let tls = tls::SandboxTls::generate().map_err(io::Error::other)?;
    let https_config = tls.server_config(&[b"h2", b"http/1.1"]).map_err(io::Error::other)?;
    let starttls = smtp::StartTls::new(tls.server_config(&[]).map_err(io::Error::other)?, settings.smtp_require_tls);
    if !settings.ca_out.is_empty() {
        std::fs::write(&settings.ca_out, tls.ca_pem())?;
    }

    let http_listener = TcpListener::bind(settings.listen).await?;
    let smtp_listener = TcpListener::bind(settings.smtp_listen).await?;
    let tls_listener = TcpListener::bind(settings.tls_listen).await?;
    let http_addr = http_listener.local_addr()?;
    let smtp_addr = smtp_listener.local_addr()?;
    let tls_addr = tls_listener.local_addr()?;

    let state = Arc::new(SandboxState {
        record: record::Record::default(),
        faults,
        stats: stats::Stats::default(),
        reports,
        journal: journal::Journal::new(),
        bizppurio_tokens: bizppurio::Tokens::new(settings.bizppurio_token_lifetime_s),
        fcm_oauth,
        apns_keys,
        cancel: cancel.clone(),
    });

    let service = http::SandboxService::new(state.clone());
    let tls_task = tokio::spawn(tls::serve(tls_listener, https_config, service.clone(), cancel.clone()));
    let http_cancel = cancel.clone();
    let http_task = tokio::spawn(async move {
        let served = axum::serve(http_listener, ServiceExt::<Request>::into_make_service(service))
            .with_graceful_shutdown(http_cancel.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "sandbox http listener failed");
        }
    });
    let smtp_task = tokio::spawn(smtp::serve(smtp_listener, state.clone(), starttls));
    tracing::info!(%http_addr, %tls_addr, %smtp_addr, "sandbox listening");

    let tasks = Mutex::new(vec![http_task, tls_task, smtp_task]);
    Ok(SandboxHandle { state, http_addr, smtp_addr, tls_addr, ca_pem: tls.ca_pem().to_string(), tasks })
}

impl SandboxHandle {
    /// Where the HTTP providers and `/_sandbox/*` answer.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where the same providers answer over TLS (HTTP/2 or HTTP/1.1): FCM and APNs are reached here.
    pub fn tls_addr(&self) -> SocketAddr {
        self.tls_addr
    }

    /// The PEM certificate of the authority that signed the sandbox's TLS certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Where the SMTP server answers.
    pub fn smtp_addr(&self) -> SocketAddr {
        self.smtp_addr
    }

    /// A snapshot of every accepted message, in arrival order.
    pub fn record(&self) -> Vec<ReceivedMessage> {
        self.state.record.snapshot()
    }

    /// The provider requests the sandbox answered (FCM, APNs, Twilio, Bizppurio `/v3/message`), by arrival
    /// time; the most recent 100k per provider.
    pub fn requests(&self, provider: ProviderKind) -> Vec<RequestEntry> {
        self.state.journal.requests(&journal::Filter { provider: Some(provider), ..Default::default() })
    }

    /// Every delivery report and status callback posted, failed or dropped, in that order; the most recent 100k.
    pub fn reports(&self) -> Vec<ReportEntry> {
        self.state.journal.reports(&journal::Filter::default())
    }

    /// Replaces a provider's faults and restarts its random stream from the seed. Invalid settings (rates
    /// outside [0, 1], min latency above max) are refused with a warning and change nothing.
    pub fn set_faults(&self, provider: ProviderKind, faults: FaultSettings) {
        if let Err(error) = self.state.faults.set(provider, faults) {
            tracing::warn!(provider = provider.as_str(), %error, "sandbox fault settings refused");
        }
    }

    /// Stops accepting connections, closes idle ones and drops pending delivery reports. Returns at once;
    /// await [`SandboxHandle::stopped`] to wait for the listeners to finish.
    pub fn shutdown(&self) {
        self.state.cancel.cancel();
    }

    /// Waits until both listeners have stopped (after [`SandboxHandle::shutdown`]).
    pub async fn stopped(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for task in tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, "sandbox listener task failed");
            }
        }
    }
}

/// Parses a provider name as the admin API spells it (`fcm`, `apns`, `smtp`, `twilio`, `bizppurio`).
fn parse_provider(name: &str) -> Option<ProviderKind> {
    SIMULATED.into_iter().find(|kind| kind.as_str() == name)
}
