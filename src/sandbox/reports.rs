//! Delivery reports and status callbacks: posted back to the engine after the provider's `report_delay_ms`, on
//! a spawned task so they never delay the provider's answer. Only plain-HTTP loopback URLs are called (the
//! sandbox must not become a way to make requests elsewhere); failures are logged, counted and dropped.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;

use super::SandboxState;
use crate::domain::ProviderKind;

/// How long one report POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP client for reports and the engine's Bizppurio webhook URL.
pub(crate) struct Reporter {
    client: reqwest::Client,
    /// Where Bizppurio reports go; `None`: nowhere.
    bizppurio_url: Option<Url>,
}

/// What to post.
pub(crate) enum Body {
    Form(Vec<(&'static str, String)>),
    Json(serde_json::Value),
}

/// One report to post later.
pub(crate) struct Report {
    pub provider: ProviderKind,
    pub url: Url,
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
}

/// Parses a callback URL and checks it is `http://` on a loopback host. An unspecified address (`0.0.0.0`,
/// `[::]`, what an engine listening on all interfaces derives its public URL from) means this host, so it is
/// rewritten to loopback.
pub(crate) fn loopback_url(raw: &str) -> Result<Url, String> {
    let mut url = Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    if url.scheme() != "http" {
        return Err("only http:// callback URLs are called".to_string());
    }
    // `host_str` keeps IPv6 brackets; `url::Host` itself is not reachable without a direct `url` dependency.
    let host = url.host_str().unwrap_or_default().to_string();
    match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => Ok(url),
        Ok(IpAddr::V4(ip)) if ip.is_unspecified() => {
            url.set_host(Some("127.0.0.1")).map_err(|e| e.to_string())?;
            Ok(url)
        }
        Ok(IpAddr::V6(ip)) if ip.is_unspecified() => {
            url.set_host(Some("[::1]")).map_err(|e| e.to_string())?;
            Ok(url)
        }
        Err(_) if host.eq_ignore_ascii_case("localhost") => Ok(url),
        _ => Err("only loopback callback URLs are called".to_string()),
    }
}

impl Reporter {
    /// `report_url` empty: Bizppurio reports are not sent. A URL the sandbox will not call (not loopback
    /// `http://`, e.g. an engine's public HTTPS URL) disables them too, with a warning: the sandbox still serves.
    pub fn new(report_url: &str) -> Result<Reporter, String> {
        let bizppurio_url = match loopback_url(report_url) {
            _ if report_url.is_empty() => None,
            Ok(url) => Some(url),
            Err(error) => {
                tracing::warn!(report_url, %error, "sandbox delivery reports disabled");
                None
            }
        };
        // No proxy: reports go to loopback, and an HTTP_PROXY in the environment must not reroute them.
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(POST_TIMEOUT)
            .build()
            .map_err(|e| format!("sandbox report client: {e}"))?;
        Ok(Reporter { client, bizppurio_url })
    }

    /// Where Bizppurio delivery reports go, if anywhere.
    pub fn bizppurio_url(&self) -> Option<&Url> {
        self.bizppurio_url.as_ref()
    }
}

/// Posts `report` after `delay` on its own task; dropped if the sandbox shuts down first.
pub(crate) fn post_later(state: &Arc<SandboxState>, delay: Duration, report: Report) {
    let state = state.clone();
    tokio::spawn(async move {
        let cancel = state.cancel.clone();
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = async {
                tokio::time::sleep(delay).await;
                post(&state, report).await;
            } => {}
        }
    });
}

async fn post(state: &SandboxState, report: Report) {
    let provider = report.provider;
    let mut request = state.reports.client.post(report.url.clone());
    for (name, value) in report.headers {
        request = request.header(name, value);
    }
    request = match &report.body {
        Body::Form(params) => request.form(params),
        Body::Json(value) => request.json(value),
    };
    let outcome = match request.send().await {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(format!("answered {}", response.status())),
        Err(error) => Err(error.to_string()),
    };
    match outcome {
        Ok(()) => {
            state.stats.report(provider, true);
            tracing::debug!(provider = provider.as_str(), path = report.url.path(), "sandbox report posted");
        }
        Err(error) => {
            state.stats.report(provider, false);
            tracing::warn!(provider = provider.as_str(), path = report.url.path(), %error, "sandbox report lost");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_http_urls_are_called() {
        for ok in ["http://127.0.0.1:8080/webhooks/sms?delivery_id=1", "http://localhost/x", "http://[::1]:9/"] {
            assert_eq!(loopback_url(ok).unwrap().as_str().trim_end_matches('/'), ok.trim_end_matches('/'));
        }
        assert_eq!(
            loopback_url("http://0.0.0.0:8080/webhooks/alimtalk").unwrap().as_str(),
            "http://127.0.0.1:8080/webhooks/alimtalk"
        );
        assert_eq!(loopback_url("http://[::]:8080/x").unwrap().as_str(), "http://[::1]:8080/x");
        for bad in ["https://127.0.0.1/x", "http://example.com/x", "http://10.0.0.1/", "not a url", ""] {
            assert!(loopback_url(bad).is_err(), "{bad}");
        }
    }
}
