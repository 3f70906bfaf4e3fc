//! Wiring: binds the listener, starts the in-process sandbox when enabled (and points the providers at it),
//! opens the store, starts the engine and serves the API until the shutdown token fires.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{AppState, router};
use crate::config::Settings;
use crate::engine::Engine;
use crate::sandbox::{self, SandboxHandle};
use crate::store::{EmbeddedStore, RedisStore, Store};
use crate::telemetry::Telemetry;

/// A running Herald.
pub struct Running {
    pub addr: SocketAddr,
    pub sandbox: Option<SandboxHandle>,
    pub engine: Arc<Engine>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving, stops the engine and the sandbox, and waits for the server task.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
        self.engine.stop();
        if let Some(sandbox) = &self.sandbox {
            sandbox.shutdown();
        }
    }
}

/// Starts Herald with `settings`. Port 0 addresses are allowed (tests).
pub async fn serve(mut settings: Settings, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let listener = TcpListener::bind(settings.server.listen)
        .await
        .with_context(|| format!("binding {}", settings.server.listen))?;
    let addr = listener.local_addr()?;
    settings.server.listen = addr;
    let public_url = settings.public_url();

    let sandbox = if settings.sandbox.enabled {
        let report_url = format!("{public_url}/webhooks/alimtalk");
        let handle = sandbox::start(&settings.sandbox, report_url).await.context("starting the sandbox")?;
        let base = format!("http://{}", handle.http_addr());
        let tls_base = format!("https://{}", handle.tls_addr());
        let providers = &mut settings.providers;
        providers.extra_root_ca_pem = Some(handle.ca_pem().to_string());
        // FCM over HTTP/2 like the real one; the OAuth2 token endpoint is on the same TLS listener.
        providers.fcm.base_url = tls_base.clone();
        providers.fcm.token_uri = format!("{tls_base}/token");
        providers.apns.base_url = tls_base;
        providers.twilio.base_url = base.clone();
        providers.bizppurio.base_url = base;
        providers.smtp.host = handle.smtp_addr().ip().to_string();
        providers.smtp.port = handle.smtp_addr().port();
        Some(handle)
    } else {
        None
    };

    let store = open_store(&settings).await?;
    let providers = crate::providers::build(&settings.providers, &public_url).context("building provider clients")?;
    let telemetry = Arc::new(Telemetry::default());
    let engine =
        Engine::start(&settings, store, providers, telemetry, shutdown.clone()).await.context("starting the engine")?;

    let state = AppState { engine: engine.clone(), settings: Arc::new(settings) };
    let app = router(state);
    let stop = shutdown.clone();
    let task =
        tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await });
    Ok(Running { addr, sandbox, engine, shutdown, task })
}

/// Opens the configured backend. A Redis that cannot be reached at start fails the start with the reason (no
/// retry loop: a supervisor restarting Herald retries, and a wrong URL should not look like a slow start).
async fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    let store = &settings.store;
    Ok(match store.backend.as_str() {
        "redis" => RedisStore::open(&store.redis, store.commit_batch_max).await.context("opening the redis store")?,
        _ => EmbeddedStore::open(&store.data_dir, store.commit_batch_max)
            .with_context(|| format!("opening the store in {}", store.data_dir.display()))?,
    })
}
