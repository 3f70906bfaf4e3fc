//! Per-provider counters of the sandbox: requests accepted and rejected (auth, validation, injected faults,
//! address rules, counted by the answer's status), delivery reports posted, lost, dropped by faults or
//! duplicated by faults, and access tokens issued (FCM's OAuth2 exchanges). Lock-free, so every handler can
//! bump them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::response::Response;
use serde::Serialize;

use crate::domain::ProviderKind;

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    rejected: AtomicU64,
    reports_sent: AtomicU64,
    reports_failed: AtomicU64,
    token_exchanges: AtomicU64,
    reports_dropped: AtomicU64,
    reports_duplicated: AtomicU64,
}

/// One provider's counts, as `GET /_sandbox/stats` shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct ProviderStats {
    pub accepted: u64,
    pub rejected: u64,
    pub reports_sent: u64,
    pub reports_failed: u64,
    /// Access tokens issued (only FCM has a token endpoint counted here).
    pub token_exchanges: u64,
    /// Reports never posted (`report_drop_rate`).
    pub reports_dropped: u64,
    /// Reports posted a second time (`report_duplicate_rate`); each copy also counts in sent or failed.
    pub reports_duplicated: u64,
}

#[derive(Default)]
pub(crate) struct Stats {
    counters: [Counters; ProviderKind::ALL.len()],
}

impl Stats {
    pub fn accepted(&self, kind: ProviderKind) {
        self.counters[kind.index()].accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self, kind: ProviderKind) {
        self.counters[kind.index()].rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub fn report(&self, kind: ProviderKind, sent: bool) {
        let counters = &self.counters[kind.index()];
        let counter = if sent { &counters.reports_sent } else { &counters.reports_failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn token_exchange(&self, kind: ProviderKind) {
        self.counters[kind.index()].token_exchanges.fetch_add(1, Ordering::Relaxed);
    }

    pub fn report_dropped(&self, kind: ProviderKind) {
        self.counters[kind.index()].reports_dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub fn report_duplicated(&self, kind: ProviderKind) {
        self.counters[kind.index()].reports_duplicated.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a handler's answer by its status: 2xx accepted, anything else rejected (a handler may answer an
    /// injected fault with a ready-made response, see `faults.rs`). Returns it unchanged.
    pub fn tally(&self, kind: ProviderKind, answer: Result<Response, Response>) -> Response {
        let (Ok(response) | Err(response)) = answer;
        if response.status().is_success() {
            self.accepted(kind);
        } else {
            self.rejected(kind);
        }
        response
    }

    pub fn snapshot(&self) -> BTreeMap<ProviderKind, ProviderStats> {
        super::SIMULATED
            .iter()
            .map(|&kind| {
                let c = &self.counters[kind.index()];
                let stats = ProviderStats {
                    accepted: c.accepted.load(Ordering::Relaxed),
                    rejected: c.rejected.load(Ordering::Relaxed),
                    reports_sent: c.reports_sent.load(Ordering::Relaxed),
                    reports_failed: c.reports_failed.load(Ordering::Relaxed),
                    token_exchanges: c.token_exchanges.load(Ordering::Relaxed),
                    reports_dropped: c.reports_dropped.load(Ordering::Relaxed),
                    reports_duplicated: c.reports_duplicated.load(Ordering::Relaxed),
                };
                (kind, stats)
            })
            .collect()
    }
}
