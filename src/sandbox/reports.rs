//! Delivery reports and status callbacks: posted back to the engine after the provider's report delay, on a
//! spawned task so they never delay the provider's answer. The provider's faults decide per report (from their
//! own seeded stream) whether it is dropped, how much jitter it gets (so reports overtake each other) and whether
//! it is posted twice. Only plain-HTTP loopback URLs are called (the sandbox must not become a way to make
//! requests elsewhere); failures are logged, counted and dropped. Every report's fate goes to the journal.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;

use super::SandboxState;
use super::faults::ReportPlan;
use super::journal::ReportStatus;
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
#[derive(Clone)]
pub(crate) enum Body {
    Form(Vec<(&'static str, String)>),
    Json(serde_json::Value),
}

/// One report to post later.
#[derive(Clone)]
pub(crate) struct Report {
    pub provider: ProviderKind,
    /// Herald's delivery id, for the journal.
    pub reference: Option<String>,
    /// What the report says (Twilio `MessageStatus`, Bizppurio `RESULT`), for the journal.
    pub result: String,
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

/// Posts `report` as the provider's report faults decide: never, once, or twice, each after its own delay.
/// Posts still waiting when the sandbox shuts down are dropped (and not journaled).
pub(crate) fn schedule(state: &Arc<SandboxState>, report: Report) {
    let provider = report.provider;
    match state.faults.report_plan(provider) {
        ReportPlan::Drop => {
            state.stats.report_dropped(provider);
            tracing::debug!(provider = provider.as_str(), "sandbox report dropped by faults");
            let now = jiff::Timestamp::now();
            state.journal.report(provider, report.reference, report.result, ReportStatus::Dropped, false, now);
        }
        ReportPlan::Post { first, duplicate } => {
            if let Some(delay) = duplicate {
                state.stats.report_duplicated(provider);
                post_later(state, delay, report.clone(), true);
            }
            post_later(state, first, report, false);
        }
    }
}

fn post_later(state: &Arc<SandboxState>, delay: Duration, report: Report, duplicate: bool) {
    let state = state.clone();
    tokio::spawn(async move {
        let cancel = state.cancel.clone();
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = async {
                tokio::time::sleep(delay).await;
                post(&state, report, duplicate).await;
            } => {}
        }
    });
}

async fn post(state: &SandboxState, report: Report, duplicate: bool) {
    let provider = report.provider;
    let mut request = state.reports.client.post(report.url.clone());
    for (name, value) in report.headers {
        request = request.header(name, value);
    }
    request = match &report.body {
        Body::Form(params) => request.form(params),
        Body::Json(value) => request.json(value),
    };
    let sent_at = jiff::Timestamp::now();
    let outcome = match request.send().await {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(format!("answered {}", response.status())),
        Err(error) => Err(error.to_string()),
    };
    let status = match &outcome {
        Ok(()) => ReportStatus::Posted,
        Err(_) => ReportStatus::Failed,
    };
    let path = report.url.path().to_string();
    // Journal first: a test that sees the counter move may read the journal at once.
    state.journal.report(provider, report.reference, report.result, status, duplicate, sent_at);
    match outcome {
        Ok(()) => {
            state.stats.report(provider, true);
            tracing::debug!(provider = provider.as_str(), path, "sandbox report posted");
        }
        Err(error) => {
            state.stats.report(provider, false);
            tracing::warn!(provider = provider.as_str(), path, %error, "sandbox report lost");
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
