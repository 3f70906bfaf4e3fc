//! Telemetry in one place: every counter Herald exports, and the Prometheus text rendering of `/metrics`.
//!
//! Counters are fixed arrays of atomics indexed by provider, lane and outcome, so recording on the hot path
//! is a relaxed atomic add with no lookup and no allocation.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::domain::{Channel, DeliveryStatus, Priority, ProviderKind};

const PROVIDERS: usize = ProviderKind::ALL.len();
const LANES: usize = Priority::ALL.len();
const CHANNELS: usize = Channel::ALL.len();

/// Final and intermediate outcomes counted per provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    Delivered,
    Failed,
    Filtered,
    Retry,
    Dead,
}

impl Outcome {
    const ALL: [Outcome; 6] =
        [Outcome::Sent, Outcome::Delivered, Outcome::Failed, Outcome::Filtered, Outcome::Retry, Outcome::Dead];

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Delivered => "delivered",
            Outcome::Failed => "failed",
            Outcome::Filtered => "filtered",
            Outcome::Retry => "retry",
            Outcome::Dead => "dead",
        }
    }

    /// The counter a delivery status change bumps, if any.
    pub fn of(status: DeliveryStatus) -> Option<Outcome> {
        Some(match status {
            DeliveryStatus::Sent => Outcome::Sent,
            DeliveryStatus::Delivered => Outcome::Delivered,
            DeliveryStatus::Failed => Outcome::Failed,
            DeliveryStatus::Filtered => Outcome::Filtered,
            DeliveryStatus::Retrying => Outcome::Retry,
            DeliveryStatus::Dead => Outcome::Dead,
            DeliveryStatus::Queued | DeliveryStatus::Cancelled => return None,
        })
    }
}

/// Upper bounds (ms) of the accept → provider-answer latency histogram buckets.
const LATENCY_BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000];

/// All of Herald's counters and gauges.
#[derive(Default)]
pub struct Telemetry {
    accepted: [AtomicU64; CHANNELS],
    outcomes: [[AtomicU64; Outcome::ALL.len()]; PROVIDERS],
    queue_depth: [[AtomicI64; LANES]; PROVIDERS],
    in_flight: [AtomicI64; PROVIDERS],
    /// Due scheduled sends the shards hold while a provider they need is backed up.
    scheduled_held: AtomicI64,
    /// Scheduled sends in the shards' timers (shared with them: `engine/timers.rs`).
    scheduled_timers: Arc<AtomicI64>,
    /// Per provider and lane: the campaign (`low`) lane and the transactional lanes are told apart.
    latency_buckets: [[[AtomicU64; LATENCY_BUCKETS_MS.len() + 1]; LANES]; PROVIDERS],
    latency_sum_ms: [[AtomicU64; LANES]; PROVIDERS],
    rejected_overload: AtomicU64,
    store_errors: AtomicU64,
    provider_pauses: [AtomicU64; PROVIDERS],
    provider_alerts: [AtomicU64; PROVIDERS],
    report_timeouts: [AtomicU64; PROVIDERS],
    inbox_streams: AtomicI64,
    /// Campaign audience members: `[accepted, skipped]`.
    campaign_users: [AtomicU64; 2],
}

impl Telemetry {
    pub fn accepted(&self, channel: Channel) {
        self.accepted[channel as usize].fetch_add(1, Relaxed);
    }

    /// A provider rate-limited us and its dispatcher paused.
    pub fn provider_paused(&self, provider: ProviderKind) {
        self.provider_pauses[provider.index()].fetch_add(1, Relaxed);
    }

    /// A provider refused us for a reason an operator must fix (credentials, revoked key); logged once per event.
    pub fn provider_alert(&self, provider: ProviderKind, code: &str) {
        self.provider_alerts[provider.index()].fetch_add(1, Relaxed);
        tracing::error!(provider = provider.as_str(), code, "provider refused our credentials or configuration");
    }

    /// A delivery waited for its delivery report longer than `engine.report_timeout_ms` and was failed.
    pub fn report_timeout(&self, provider: ProviderKind) {
        self.report_timeouts[provider.index()].fetch_add(1, Relaxed);
    }

    pub fn outcome(&self, provider: ProviderKind, outcome: Outcome) {
        self.outcomes[provider.index()][outcome as usize].fetch_add(1, Relaxed);
    }

    pub fn queue_changed(&self, provider: ProviderKind, priority: Priority, delta: i64) {
        self.queue_depth[provider.index()][priority.lane()].fetch_add(delta, Relaxed);
    }

    pub fn held_changed(&self, delta: i64) {
        self.scheduled_held.fetch_add(delta, Relaxed);
    }

    /// The counter the shards' timers keep of their scheduled sends.
    pub fn scheduled_timers(&self) -> Arc<AtomicI64> {
        self.scheduled_timers.clone()
    }

    /// Scheduled notifications in the shards' memory: in timers, or due and held.
    pub fn scheduled_in_memory(&self) -> usize {
        let n = self.scheduled_timers.load(Relaxed) + self.scheduled_held.load(Relaxed);
        usize::try_from(n).unwrap_or(0)
    }

    pub fn in_flight_changed(&self, provider: ProviderKind, delta: i64) {
        self.in_flight[provider.index()].fetch_add(delta, Relaxed);
    }

    /// Latency from acceptance (or a scheduled send's due time) to the provider's answer, per priority lane.
    pub fn provider_latency(&self, provider: ProviderKind, priority: Priority, ms: u64) {
        let bucket = LATENCY_BUCKETS_MS.iter().position(|&b| ms <= b).unwrap_or(LATENCY_BUCKETS_MS.len());
        self.latency_buckets[provider.index()][priority.lane()][bucket].fetch_add(1, Relaxed);
        self.latency_sum_ms[provider.index()][priority.lane()].fetch_add(ms, Relaxed);
    }

    /// A request refused with 429 because the engine was saturated.
    pub fn overloaded(&self) {
        self.rejected_overload.fetch_add(1, Relaxed);
        tracing::debug!("request refused: engine saturated");
    }

    /// A commit that failed; requests waiting on it got 503.
    pub fn store_error(&self, error: &crate::store::StoreError) {
        self.store_errors.fetch_add(1, Relaxed);
        tracing::warn!(%error, "store commit failed");
    }

    /// A campaign fan-out handled one user: a notification was accepted for it, or it was skipped (unknown,
    /// preferences, rendering).
    pub fn campaign_user(&self, accepted: bool) {
        self.campaign_users[usize::from(!accepted)].fetch_add(1, Relaxed);
    }

    /// In-app stream connections opened (+1) or closed (-1).
    pub fn inbox_streams_changed(&self, delta: i64) {
        self.inbox_streams.fetch_add(delta, Relaxed);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        out.push_str("# TYPE herald_accepted_total counter\n");
        for ch in Channel::ALL {
            let v = self.accepted[ch as usize].load(Relaxed);
            let _ = writeln!(out, "herald_accepted_total{{channel=\"{}\"}} {v}", ch.as_str());
        }
        out.push_str("# TYPE herald_deliveries_total counter\n");
        for p in ProviderKind::ALL {
            for o in Outcome::ALL {
                let v = self.outcomes[p.index()][o as usize].load(Relaxed);
                let (ch, pr, oc) = (p.channel().as_str(), p.as_str(), o.as_str());
                let _ =
                    writeln!(out, "herald_deliveries_total{{channel=\"{ch}\",provider=\"{pr}\",outcome=\"{oc}\"}} {v}");
            }
        }
        out.push_str("# TYPE herald_queue_depth gauge\n");
        for p in ProviderKind::ALL {
            for lane in Priority::ALL {
                let v = self.queue_depth[p.index()][lane.lane()].load(Relaxed);
                let _ =
                    writeln!(out, "herald_queue_depth{{provider=\"{}\",lane=\"{}\"}} {v}", p.as_str(), lane.as_str());
            }
        }
        out.push_str("# TYPE herald_scheduled_timers gauge\n");
        let _ = writeln!(out, "herald_scheduled_timers {}", self.scheduled_timers.load(Relaxed));
        out.push_str("# TYPE herald_scheduled_held gauge\n");
        let _ = writeln!(out, "herald_scheduled_held {}", self.scheduled_held.load(Relaxed));
        out.push_str("# TYPE herald_in_flight gauge\n");
        for p in ProviderKind::ALL {
            let _ = writeln!(
                out,
                "herald_in_flight{{provider=\"{}\"}} {}",
                p.as_str(),
                self.in_flight[p.index()].load(Relaxed)
            );
        }
        out.push_str("# TYPE herald_provider_latency_ms histogram\n");
        for p in ProviderKind::ALL {
            for lane in Priority::ALL {
                let (buckets, labels) = (&self.latency_buckets[p.index()][lane.lane()], (p.as_str(), lane.as_str()));
                let mut cumulative = 0;
                for (i, bound) in LATENCY_BUCKETS_MS.iter().enumerate() {
                    cumulative += buckets[i].load(Relaxed);
                    let _ = writeln!(
                        out,
                        "herald_provider_latency_ms_bucket{{provider=\"{}\",lane=\"{}\",le=\"{bound}\"}} {cumulative}",
                        labels.0, labels.1
                    );
                }
                cumulative += buckets[LATENCY_BUCKETS_MS.len()].load(Relaxed);
                let sum = self.latency_sum_ms[p.index()][lane.lane()].load(Relaxed);
                let _ = writeln!(
                    out,
                    "herald_provider_latency_ms_bucket{{provider=\"{}\",lane=\"{}\",le=\"+Inf\"}} {cumulative}",
                    labels.0, labels.1
                );
                let _ = writeln!(
                    out,
                    "herald_provider_latency_ms_sum{{provider=\"{}\",lane=\"{}\"}} {sum}",
                    labels.0, labels.1
                );
                let _ = writeln!(
                    out,
                    "herald_provider_latency_ms_count{{provider=\"{}\",lane=\"{}\"}} {cumulative}",
                    labels.0, labels.1
                );
            }
        }
        for (name, counters) in [
            ("herald_provider_pauses_total", &self.provider_pauses),
            ("herald_provider_alerts_total", &self.provider_alerts),
            ("herald_report_timeouts_total", &self.report_timeouts),
        ] {
            let _ = writeln!(out, "# TYPE {name} counter");
            for p in ProviderKind::ALL {
                let _ = writeln!(out, "{name}{{provider=\"{}\"}} {}", p.as_str(), counters[p.index()].load(Relaxed));
            }
        }
        out.push_str("# TYPE herald_rejected_overload_total counter\n");
        let _ = writeln!(out, "herald_rejected_overload_total {}", self.rejected_overload.load(Relaxed));
        out.push_str("# TYPE herald_store_errors_total counter\n");
        let _ = writeln!(out, "herald_store_errors_total {}", self.store_errors.load(Relaxed));
        out.push_str("# TYPE herald_campaign_users_total counter\n");
        for (i, outcome) in ["accepted", "skipped"].into_iter().enumerate() {
            let v = self.campaign_users[i].load(Relaxed);
            let _ = writeln!(out, "herald_campaign_users_total{{outcome=\"{outcome}\"}} {v}");
        }
        out.push_str("# TYPE herald_inbox_streams gauge\n");
        let _ = writeln!(out, "herald_inbox_streams {}", self.inbox_streams.load(Relaxed));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_up_in_the_exposition() {
        let t = Telemetry::default();
        t.accepted(Channel::Sms);
        t.outcome(ProviderKind::Twilio, Outcome::Delivered);
        t.queue_changed(ProviderKind::Fcm, Priority::Low, 3);
        t.provider_latency(ProviderKind::Fcm, Priority::High, 7);
        t.campaign_user(true);
        t.campaign_user(false);
        t.campaign_user(false);
        let text = t.render();
        assert!(text.contains("herald_accepted_total{channel=\"sms\"} 1"));
        assert!(text.contains("herald_deliveries_total{channel=\"sms\",provider=\"twilio\",outcome=\"delivered\"} 1"));
        assert!(text.contains("herald_queue_depth{provider=\"fcm\",lane=\"low\"} 3"));
        assert!(text.contains("herald_provider_latency_ms_bucket{provider=\"fcm\",lane=\"high\",le=\"5\"} 0"));
        assert!(text.contains("herald_provider_latency_ms_bucket{provider=\"fcm\",lane=\"high\",le=\"10\"} 1"));
        assert!(text.contains("herald_provider_latency_ms_count{provider=\"fcm\",lane=\"low\"} 0"));
        assert!(text.contains("herald_campaign_users_total{outcome=\"accepted\"} 1"));
        assert!(text.contains("herald_campaign_users_total{outcome=\"skipped\"} 2"));
    }
}
