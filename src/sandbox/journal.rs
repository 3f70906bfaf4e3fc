//! Bounded logs of what the sandbox did, for tests that check timing and report handling: every provider request
//! (arrival time, answer status, the fault drawn, Herald's delivery reference) and every delivery report (posted,
//! failed or dropped). Both keep only the most recent entries, so a long load run cannot grow them without bound.
//!
//! The request log is filled by [`journaled`], through [`layer`], an axum middleware around the provider routes
//! (and directly by FCM's send route, which bypasses the router): it notes the arrival
//! time, opens the [`DRAWN`] slot the fault draw writes to, and after the handler answers sets `Retry-After` for
//! injected waits and logs the entry with the delivery reference (the one the handler read, see [`Reference`], or
//! else read from the body here). Token requests (`/v1/token`) and
//! the admin API are not logged; SMTP is not logged either (it has no HTTP request to wrap).

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::SandboxState;
use super::faults::{self, DRAWN, Verdict};
use crate::domain::ProviderKind;

/// Requests kept per provider.
pub const MAX_REQUESTS_PER_PROVIDER: usize = 100_000;
/// Reports kept in all.
pub const MAX_REPORTS: usize = 100_000;
/// Largest request body the layer buffers; larger ones are refused as axum's default limit would refuse them.
const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// The fault injected into a request, as the request log shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InjectedFault {
    Retryable,
    Permanent,
    RateLimited,
    Unregistered,
}

/// One provider request as the sandbox answered it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestEntry {
    /// Order in which answers were logged, from 1, across providers.
    pub seq: u64,
    pub provider: ProviderKind,
    /// Arrival time in milliseconds since the sandbox started (before any injected latency).
    pub at_ms: u64,
    /// The HTTP status answered.
    pub status: u16,
    /// The fault drawn for it; None when it passed or was refused before the draw (auth, shape).
    pub fault: Option<InjectedFault>,
    /// Herald's delivery id, read as the record reads it (FCM data, APNs payload, Twilio callback URL, refkey).
    pub reference: Option<String>,
}

/// What became of one delivery report or status callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportStatus {
    /// Posted and answered 2xx.
    Posted,
    /// Posted, but the receiver failed or answered otherwise.
    Failed,
    /// Never posted (`report_drop_rate`).
    Dropped,
}

/// One report the sandbox posted or decided not to post, in the order that happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportEntry {
    /// From 1, in log order.
    pub seq: u64,
    pub provider: ProviderKind,
    /// Herald's delivery id (the callback's `delivery_id`, the Bizppurio `REFKEY`).
    pub reference: Option<String>,
    /// What the report says: Twilio's `MessageStatus`, Bizppurio's `RESULT`.
    pub result: String,
    pub status: ReportStatus,
    /// The second copy of a duplicated report.
    pub duplicate: bool,
    /// When it was posted (the answer came back) or dropped.
    pub at: jiff::Timestamp,
    /// When the sandbox started posting it (for a dropped report, when it was dropped).
    pub sent_at: jiff::Timestamp,
}

/// Which entries a query wants; every `None` matches all.
#[derive(Clone, Debug, Default)]
pub(crate) struct Filter {
    pub provider: Option<ProviderKind>,
    pub reference: Option<String>,
    /// Only entries with a larger `seq` (so a reader can page through a long log).
    pub after: Option<u64>,
    /// At most this many entries (the first ones in the answer's order).
    pub limit: Option<usize>,
}

impl Filter {
    fn matches(&self, seq: u64, provider: ProviderKind, reference: Option<&str>) -> bool {
        self.after.is_none_or(|after| seq > after)
            && self.provider.is_none_or(|p| p == provider)
            && self.reference.as_deref().is_none_or(|r| Some(r) == reference)
    }
}

/// The request and report logs.
pub(crate) struct Journal {
    started: Instant,
    requests: Mutex<Requests>,
    reports: Mutex<Reports>,
}

struct Requests {
    next_seq: u64,
    per_provider: [VecDeque<RequestEntry>; ProviderKind::ALL.len()],
}

#[derive(Default)]
struct Reports {
    next_seq: u64,
    entries: VecDeque<ReportEntry>,
}

/// Appends to a ring of at most `max` entries.
fn push_bounded<T>(ring: &mut VecDeque<T>, max: usize, entry: T) {
    if ring.len() >= max {
        ring.pop_front();
    }
    ring.push_back(entry);
}

impl Journal {
    pub fn new() -> Journal {
        Journal {
            started: Instant::now(),
            requests: Mutex::new(Requests { next_seq: 0, per_provider: Default::default() }),
            reports: Mutex::new(Reports::default()),
        }
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn request(
        &self,
        provider: ProviderKind,
        at_ms: u64,
        status: u16,
        fault: Option<InjectedFault>,
        reference: Option<String>,
    ) {
        let mut requests = self.requests.lock();
        requests.next_seq += 1;
        let entry = RequestEntry { seq: requests.next_seq, provider, at_ms, status, fault, reference };
        push_bounded(&mut requests.per_provider[provider.index()], MAX_REQUESTS_PER_PROVIDER, entry);
    }

    /// Logs what became of one report.
    pub fn report(
        &self,
        provider: ProviderKind,
        reference: Option<String>,
        result: String,
        status: ReportStatus,
        duplicate: bool,
        sent_at: jiff::Timestamp,
    ) {
        let at = jiff::Timestamp::now();
        let mut reports = self.reports.lock();
        reports.next_seq += 1;
        let seq = reports.next_seq;
        let entry = ReportEntry { seq, provider, reference, result, status, duplicate, at, sent_at };
        push_bounded(&mut reports.entries, MAX_REPORTS, entry);
    }

    /// The matching requests, by arrival time (then answer order).
    pub fn requests(&self, filter: &Filter) -> Vec<RequestEntry> {
        let requests = self.requests.lock();
        let mut found: Vec<RequestEntry> = requests
            .per_provider
            .iter()
            .flatten()
            .filter(|e| filter.matches(e.seq, e.provider, e.reference.as_deref()))
            .cloned()
            .collect();
        drop(requests);
        found.sort_by_key(|e| (e.at_ms, e.seq));
        found.truncate(filter.limit.unwrap_or(usize::MAX));
        found
    }

    /// The matching reports, in log order.
    pub fn reports(&self, filter: &Filter) -> Vec<ReportEntry> {
        let reports = self.reports.lock();
        // Entries are in seq order, so `after` is a binary search rather than a scan.
        let start = filter.after.map_or(0, |after| reports.entries.partition_point(|e| e.seq <= after));
        reports
            .entries
            .range(start..)
            .filter(|e| filter.matches(e.seq, e.provider, e.reference.as_deref()))
            .take(filter.limit.unwrap_or(usize::MAX))
            .cloned()
            .collect()
    }

    /// Forgets every request; returns how many there were. Seqs keep counting up.
    pub fn clear_requests(&self) -> usize {
        let mut requests = self.requests.lock();
        requests.per_provider.iter_mut().map(|ring| std::mem::take(ring).len()).sum()
    }

    /// Forgets every report; returns how many there were. Seqs keep counting up.
    pub fn clear_reports(&self) -> usize {
        std::mem::take(&mut self.reports.lock().entries).len()
    }
}

/// The provider a request path belongs to, for the paths that carry a message.
fn provider_of(path: &str) -> Option<ProviderKind> {
    if path.starts_with("/v1/projects/") {
        Some(ProviderKind::Fcm)
    } else if path.starts_with("/3/device/") {
        Some(ProviderKind::Apns)
    } else if path.starts_with("/2010-04-01/") {
        Some(ProviderKind::Twilio)
    } else if path == "/v3/message" {
        Some(ProviderKind::Bizppurio)
    } else {
        None
    }
}

/// Herald's delivery id in a request body, where each provider's simulation finds it; None if absent or unreadable.
fn reference_of(provider: ProviderKind, body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Fcm {
        message: FcmMessage,
    }
    #[derive(Deserialize)]
    struct FcmMessage {
        data: Option<DeliveryId>,
    }
    #[derive(Deserialize)]
    struct DeliveryId {
        herald_delivery_id: Option<String>,
    }
    #[derive(Deserialize)]
    struct Bizppurio {
        refkey: Option<String>,
    }
    match provider {
        ProviderKind::Fcm => serde_json::from_slice::<Fcm>(body).ok()?.message.data?.herald_delivery_id,
        ProviderKind::Apns => serde_json::from_slice::<DeliveryId>(body).ok()?.herald_delivery_id,
        ProviderKind::Bizppurio => serde_json::from_slice::<Bizppurio>(body).ok()?.refkey,
        ProviderKind::Twilio => {
            let params: Vec<(String, String)> = serde_urlencoded::from_bytes(body).ok()?;
            let callback = params.into_iter().find(|(k, _)| k == "StatusCallback")?.1;
            let url = reqwest::Url::parse(&callback).ok()?;
            url.query_pairs().find(|(k, _)| k == "delivery_id").map(|(_, v)| v.into_owned())
        }
        _ => None,
    }
}

fn injected(verdict: Verdict) -> Option<InjectedFault> {
    match verdict {
        Verdict::Pass => None,
        Verdict::Retryable => Some(InjectedFault::Retryable),
        Verdict::Permanent => Some(InjectedFault::Permanent),
        Verdict::RateLimited { .. } => Some(InjectedFault::RateLimited),
        Verdict::Unregistered => Some(InjectedFault::Unregistered),
    }
}

/// The middleware around every sandbox route (see the module header).
pub(crate) async fn layer(State(state): State<Arc<SandboxState>>, request: Request, next: Next) -> Response {
    let Some(provider) = provider_of(request.uri().path()) else {
        return next.run(request).await;
    };
    let (parts, body) = request.into_parts();
    journaled(&state, provider, parts, body, |parts, bytes| next.run(Request::from_parts(parts, Body::from(bytes))))
        .await
}

/// Reads a provider request's body, answers it with `handler`, and logs it (see the module header): the
/// middleware's work, also done by the FCM route that bypasses the router (`http.rs`).
pub(crate) async fn journaled<F: Future<Output = Response>>(
    state: &SandboxState,
    provider: ProviderKind,
    parts: Parts,
    body: Body,
    handler: impl FnOnce(Parts, Bytes) -> F,
) -> Response {
    let at_ms = state.journal.elapsed_ms();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        state.journal.request(provider, at_ms, StatusCode::PAYLOAD_TOO_LARGE.as_u16(), None, None);
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let (mut response, drawn) = DRAWN
        .scope(Cell::new(None), async {
            let response = handler(parts, bytes.clone()).await;
            (response, DRAWN.with(Cell::get))
        })
        .await;
    let fault = drawn.and_then(|(verdict, retry_after_s)| {
        faults::set_retry_after(&mut response, verdict, retry_after_s);
        injected(verdict)
    });
    let reference = match response.extensions_mut().remove::<Reference>() {
        Some(Reference(reference)) => reference,
        None => reference_of(provider, &bytes),
    };
    state.journal.request(provider, at_ms, response.status().as_u16(), fault, reference);
    response
}

/// Herald's delivery id as a handler read it from the request it answered: the layer logs it instead of parsing
/// the body again (it parses the body only when the answer carries none of these).
#[derive(Clone)]
pub(crate) struct Reference(pub Option<String>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_read_where_the_record_reads_them() {
        let fcm = br#"{"message": {"token": "t", "data": {"herald_delivery_id": "d1", "x": "y"}}}"#;
        assert_eq!(reference_of(ProviderKind::Fcm, fcm).as_deref(), Some("d1"));
        assert_eq!(reference_of(ProviderKind::Fcm, br#"{"message": {"token": "t"}}"#), None);
        let apns = br#"{"aps": {"alert": "hi"}, "herald_delivery_id": "d2"}"#;
        assert_eq!(reference_of(ProviderKind::Apns, apns).as_deref(), Some("d2"));
        assert_eq!(reference_of(ProviderKind::Bizppurio, br#"{"refkey": "d3"}"#).as_deref(), Some("d3"));
        let form = b"To=%2B1&StatusCallback=http%3A%2F%2Fh%2Fwebhooks%2Fsms%3Fdelivery_id%3Dd4";
        assert_eq!(reference_of(ProviderKind::Twilio, form).as_deref(), Some("d4"));
        assert_eq!(reference_of(ProviderKind::Twilio, b"To=%2B1"), None);
        assert_eq!(reference_of(ProviderKind::Apns, b"not json"), None);
    }

    #[test]
    fn logs_are_bounded_filtered_and_clearable() {
        let journal = Journal::new();
        for i in 0..MAX_REQUESTS_PER_PROVIDER as u64 + 5 {
            journal.request(ProviderKind::Fcm, i, 200, None, Some(format!("d{i}")));
        }
        journal.request(ProviderKind::Apns, 1, 429, Some(InjectedFault::RateLimited), Some("d1".into()));
        let fcm = journal.requests(&Filter { provider: Some(ProviderKind::Fcm), ..Default::default() });
        assert_eq!(fcm.len(), MAX_REQUESTS_PER_PROVIDER);
        assert_eq!(fcm[0].reference.as_deref(), Some("d5"), "the oldest entries went first");
        let d1 = journal.requests(&Filter { reference: Some("d1".into()), ..Default::default() });
        assert_eq!(d1.iter().map(|e| (e.provider, e.status)).collect::<Vec<_>>(), [(ProviderKind::Apns, 429)]);
        assert_eq!(journal.clear_requests(), MAX_REQUESTS_PER_PROVIDER + 1);
        assert!(journal.requests(&Filter::default()).is_empty());

        journal.report(
            ProviderKind::Twilio,
            Some("d1".into()),
            "delivered".into(),
            ReportStatus::Posted,
            false,
            jiff::Timestamp::now(),
        );
        journal.report(
            ProviderKind::Twilio,
            Some("d2".into()),
            "delivered".into(),
            ReportStatus::Dropped,
            false,
            jiff::Timestamp::now(),
        );
        let d2 = journal.reports(&Filter { reference: Some("d2".into()), ..Default::default() });
        assert_eq!((d2.len(), d2[0].seq, d2[0].status), (1, 2, ReportStatus::Dropped));
        let page = journal.reports(&Filter { after: Some(1), limit: Some(5), ..Default::default() });
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
        let first = journal.reports(&Filter { limit: Some(1), ..Default::default() });
        assert_eq!(first.iter().map(|e| e.seq).collect::<Vec<_>>(), [1]);
        assert_eq!(journal.clear_reports(), 2);
        assert!(journal.reports(&Filter::default()).is_empty());
    }
}
