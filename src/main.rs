//! The `herald` binary: `serve` (the default), `sandbox`. Errors are reported with `anyhow` at this edge only.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use herald::config::Settings;
use tokio_util::sync::CancellationToken;

/// mimalloc instead of glibc malloc: the engine allocates and frees small objects at a high rate on several
/// threads, where glibc's arenas spent a quarter of the CPU (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "herald", version, about = "Notification dispatch engine")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve(ServeArgs),
    /// Run the provider sandbox alone.
    Sandbox(SandboxArgs),
}

#[derive(Args, Clone, Default)]
struct Common {
    /// Directory holding default.toml and <profile>.toml.
    #[arg(long, global = true, default_value = "config")]
    config_dir: PathBuf,
    /// Configuration profile; default: $HERALD_PROFILE, else `default`.
    #[arg(long, global = true)]
    profile: Option<String>,
}

#[derive(Args, Clone, Default)]
struct ServeArgs {
    #[command(flatten)]
    common: Common,
    /// API address.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Where the embedded store keeps its file.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address of the in-process sandbox's HTTP side.
    #[arg(long)]
    sandbox_listen: Option<SocketAddr>,
    /// Address of the in-process sandbox's SMTP side.
    #[arg(long)]
    sandbox_smtp_listen: Option<SocketAddr>,
    /// Address of the in-process sandbox's HTTPS side (FCM and APNs over TLS).
    #[arg(long)]
    sandbox_tls_listen: Option<SocketAddr>,
    /// Do not start the sandbox; use the configured providers.
    #[arg(long)]
    no_sandbox: bool,
}

#[derive(Args, Clone)]
struct SandboxArgs {
    #[command(flatten)]
    common: Common,
    /// HTTP address.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// SMTP address.
    #[arg(long)]
    smtp_listen: Option<SocketAddr>,
    /// HTTPS address (HTTP/2 or HTTP/1.1).
    #[arg(long)]
    tls_listen: Option<SocketAddr>,
    /// Write the sandbox's generated CA certificate (PEM) here, for engines in other processes to trust.
    #[arg(long)]
    ca_out: Option<String>,
    /// Where to POST Bizppurio delivery reports (e.g. http://127.0.0.1:8080/webhooks/alimtalk).
    #[arg(long, default_value = "")]
    report_url: String,
}

fn load(common: &Common) -> anyhow::Result<Settings> {
    let profile = common.profile.clone().or_else(|| std::env::var("HERALD_PROFILE").ok());
    Ok(Settings::load(&common.config_dir, profile.as_deref().unwrap_or("default"), Settings::env())?)
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match cli.command {
            Some(Command::Sandbox(args)) => sandbox(args).await,
            Some(Command::Serve(args)) => serve(args).await,
            None => serve(cli.serve).await,
        }
    })
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut settings = load(&args.common)?;
    if let Some(listen) = args.listen {
        settings.server.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        settings.store.data_dir = dir;
    }
    if let Some(listen) = args.sandbox_listen {
        settings.sandbox.listen = listen;
    }
    if let Some(listen) = args.sandbox_smtp_listen {
        settings.sandbox.smtp_listen = listen;
    }
    if let Some(listen) = args.sandbox_tls_listen {
        settings.sandbox.tls_listen = listen;
    }
    if args.no_sandbox {
        settings.sandbox.enabled = false;
    }
    let shutdown = CancellationToken::new();
    let running = herald::server::serve(settings, shutdown.clone()).await?;
    let base = running.base_url();
    println!("herald listening on {base}");
    if let Some(sandbox) = &running.sandbox {
        println!(
            "sandbox listening on http://{} (https {}, smtp {})",
            sandbox.http_addr(),
            sandbox.tls_addr(),
            sandbox.smtp_addr()
        );
        println!("sandbox record: http://{}/_sandbox/messages", sandbox.http_addr());
    }
    println!("try:");
    println!(
        "  curl -X PUT {base}/v1/users/u-1 -H 'content-type: application/json' -d '{{\"email\":\"kim@example.com\",\"phone\":\"010-1234-5678\"}}'"
    );
    println!(
        "  curl -X POST {base}/v1/notifications -H 'content-type: application/json' -d '{{\"user_id\":\"u-1\",\"channels\":[\"email\",\"sms\"],\"content\":{{\"title\":\"Hello\",\"body\":\"Your order shipped\"}}}}'"
    );
    println!("  curl {base}/v1/notifications/<id>");
    wait_for_signal(&shutdown).await;
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}

async fn sandbox(args: SandboxArgs) -> anyhow::Result<()> {
    let mut settings = load(&args.common)?.sandbox;
    if let Some(listen) = args.listen {
        settings.listen = listen;
    }
    if let Some(listen) = args.smtp_listen {
        settings.smtp_listen = listen;
    }
    if let Some(listen) = args.tls_listen {
        settings.tls_listen = listen;
    }
    if let Some(path) = args.ca_out {
        settings.ca_out = path;
    }
    let handle = herald::sandbox::start(&settings, args.report_url).await.context("starting the sandbox")?;
    println!(
        "sandbox listening on http://{} (https {}, smtp {})",
        handle.http_addr(),
        handle.tls_addr(),
        handle.smtp_addr()
    );
    let shutdown = CancellationToken::new();
    wait_for_signal(&shutdown).await;
    handle.shutdown();
    Ok(())
}

/// Waits for Ctrl-C, SIGTERM, or an internal shutdown (a failed engine actor).
async fn wait_for_signal(shutdown: &CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    #[cfg(unix)]
    let terminate = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
        _ = shutdown.cancelled() => {}
    }
}
