//! One dispatcher actor per provider: priority lanes, per-recipient FIFO, a token bucket, an in-flight window
//! and a request cap.
//!
//! Semantics (`docs/engine-semantics.md`):
//! - Jobs are grouped by ordering key (the notification's owner). A key has at most one job in flight or
//!   waiting for a retry; the next job of that key is handed out only after the previous one is released,
//!   so one recipient's deliveries reach the provider in acceptance order, retries included.
//! - Ready keys wait in four lanes, served strictly `critical > high > normal > low`. A key sits in the lane of
//!   its most urgent queued job (priority inheritance), so a critical message is not stuck behind a low lane.
//!   The `low` lane (campaign traffic) may hold at most three quarters of the window and of the request cap
//!   (below): the last quarter of each is kept for the other lanes, so a transactional send does not wait for
//!   a blast's sends to come back.
//! - A job is "in flight" from hand-off until the shard has durably recorded its outcome and released it; the
//!   in-flight cap (`max_in_flight`) therefore bounds the provider-side duplicates a crash can cause. Of those,
//!   at most `max_requests` wait for the provider's answer at once: a job whose answer came back frees its
//!   request slot at once and keeps only its window slot while its outcome is committed, so the provider is
//!   not kept waiting for the store's fsync (`docs/engine-semantics.md`, "Crash").
//! - A rate-limit answer (`ErrorClass::RateLimited`, e.g. HTTP 429) pauses the whole provider until its
//!   `Retry-After` has passed, counted from when the answer arrived. After a pause one probe request goes out
//!   alone; the provider gets its full request cap back only once an answer other than a rate limit arrives.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use jiff::Timestamp;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::config::DispatchLimits;
use crate::domain::{Delivery, Priority, ProviderKind, Rendered};
use crate::hash::HashMap;
use crate::providers::{ErrorClass, Provider, ProviderError, SendRequest};
use crate::telemetry::Telemetry;

use super::shard::{SendOutcome, ShardLink};

/// Hand-off states of a job, shared between the shard (which may cancel) and the dispatcher (which hands off).
pub const QUEUED: u8 = 0;
pub const HANDED_OFF: u8 = 1;
pub const CANCELLED: u8 = 2;

/// A delivery on its way to a provider. It holds the shard's record of the delivery rather than a copy of its
/// fields: a queued job is kept per queued notification (issue #6's memory bound), and the provider's
/// [`SendRequest`] is built from it only when the job is handed off.
#[derive(Debug)]
pub struct DeliveryJob {
    /// The delivery as planned (shared with the shard until the shard changes it).
    pub delivery: Arc<Delivery>,
    pub content: Arc<Rendered>,
    /// The attempt the last hand-off made (1 for the first); the next hand-off adds one.
    pub attempt: u32,
    /// When the notification was accepted (this process's clock), for the latency histogram.
    pub accepted_at: Instant,
    /// [`QUEUED`], [`HANDED_OFF`] or [`CANCELLED`].
    pub handoff: Arc<AtomicU8>,
    /// The shard that owns the delivery and records its outcome.
    pub shard: Arc<ShardLink>,
    /// The notification's `expires_at`: a job still queued (or waiting for a retry) then is failed at its
    /// hand-off instead of sent.
    pub expires_at: Option<Timestamp>,
}

impl DeliveryJob {
    fn priority(&self) -> Priority {
        self.delivery.priority
    }

    pub fn provider(&self) -> ProviderKind {
        self.delivery.provider
    }

    /// The ordering key: the notification's owner.
    fn owner(&self) -> &str {
        &self.delivery.owner
    }

    /// What the provider client sends for this attempt.
    fn request(&self) -> SendRequest {
        SendRequest {
            delivery_id: self.delivery.id.clone(),
            address: self.delivery.address.clone(),
            content: self.content.clone(),
            priority: self.delivery.priority,
            attempt: self.attempt,
        }
    }
}

/// A slot to free: the job of this delivery's owner has its outcome recorded; `retry` puts it back after the
/// delay.
pub struct Release {
    /// Any version of the delivery's record: only the owner is read.
    pub delivery: Arc<Delivery>,
    pub retry: Option<(Duration, DeliveryJob)>,
}

/// Messages of a dispatcher.
pub enum DispatcherMsg {
    /// New jobs, in acceptance order.
    Dispatch(Vec<DeliveryJob>),
    /// Outcomes recorded by one shard commit, in order.
    Release(Vec<Release>),
    /// A retry's backoff is over.
    RetryDue(DeliveryJob),
    /// The token bucket has tokens again.
    Wake,
    /// The provider answered a rate limit: send nothing for this long (from now). The answer's request slot
    /// is freed with it (not through [`Answers`]), so no other send takes that slot before the pause holds.
    Pause(Duration),
    /// Providers answered: free the request slots counted in [`Answers`].
    Answered,
    /// A pause is over, or a probe after it got a real answer: pump again.
    Resume,
}

/// Pause used when a rate-limit answer names no `Retry-After`.
const DEFAULT_PAUSE: Duration = Duration::from_secs(1);
/// A provider's `Retry-After` is honoured up to this long; a longer one is taken as a typo, not a plan.
const MAX_PAUSE: Duration = Duration::from_secs(300);

/// Jobs queued per lane, counted from before a job enters the dispatcher's mailbox until it is handed off, so
/// admission sees a burst the actor has not taken in yet.
#[derive(Debug, Default)]
pub struct Queued([AtomicUsize; 4]);

impl Queued {
    fn add(&self, priority: Priority) {
        self.0[priority.lane()].fetch_add(1, Ordering::Relaxed);
    }

    fn sub(&self, priority: Priority) {
        self.0[priority.lane()].fetch_sub(1, Ordering::Relaxed);
    }

    /// Jobs a new job of `priority` would wait behind: those of its lane and of the more urgent ones.
    pub fn ahead_of(&self, priority: Priority) -> usize {
        self.0[..=priority.lane()].iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }
}

/// Answers that came back since the dispatcher last looked: each frees a request slot. Send tasks count here
/// and send one [`DispatcherMsg::Answered`] per batch instead of a message each.
#[derive(Debug, Default)]
struct Answers {
    count: AtomicUsize,
    /// A [`DispatcherMsg::Answered`] is on its way.
    signalled: AtomicBool,
}

impl Answers {
    /// Counts one answer; signals the dispatcher unless a signal is already pending.
    fn add(&self, dispatcher: &ActorRef<DispatcherMsg>) {
        self.count.fetch_add(1, Ordering::SeqCst);
        if !self.signalled.swap(true, Ordering::SeqCst) {
            let _ = dispatcher.cast(DispatcherMsg::Answered);
        }
    }

    /// Takes the count. The signal is cleared first: an answer counted after the take signals again.
    fn take(&self) -> usize {
        self.signalled.store(false, Ordering::SeqCst);
        self.count.swap(0, Ordering::SeqCst)
    }
}

/// A handle the rest of the engine uses to reach one dispatcher and read its load.
#[derive(Clone)]
pub struct DispatcherHandle {
    pub actor: ActorRef<DispatcherMsg>,
    /// Jobs queued per lane, for admission control.
    pub queued: Arc<Queued>,
    pub capacity: usize,
}

impl DispatcherHandle {
    /// Counts `job` as queued ahead of its dispatch (it waits for a commit first), so admission and the
    /// scheduled sends' room check see it; [`DispatcherHandle::dispatch_reserved`] or
    /// [`DispatcherHandle::unreserve`] must follow.
    pub fn reserve(&self, job: &DeliveryJob) {
        self.queued.add(job.priority());
    }

    pub fn unreserve(&self, job: &DeliveryJob) {
        self.queued.sub(job.priority());
    }

    /// Dispatches jobs already counted by [`DispatcherHandle::reserve`], in order, as one message.
    pub fn dispatch_reserved(&self, jobs: Vec<DeliveryJob>) {
        if jobs.is_empty() {
            return;
        }
        if let Err(e) = self.actor.cast(DispatcherMsg::Dispatch(jobs)) {
            tracing::error!(error = %e, "dispatcher is gone; delivery left for restart recovery");
        }
    }

    /// Frees the slots of jobs whose outcomes are recorded.
    pub fn release_all(&self, releases: Vec<Release>) {
        let _ = self.actor.cast(DispatcherMsg::Release(releases));
    }

    /// Jobs queued that a new job of `priority` would wait behind (admission compares it with `capacity`).
    pub fn queued_ahead_of(&self, priority: Priority) -> usize {
        self.queued.ahead_of(priority)
    }
}

/// The dispatcher actor (read-only configuration; the state lives in [`DispatcherState`]).
pub struct Dispatcher;

pub struct DispatcherArgs {
    pub kind: ProviderKind,
    pub provider: Arc<dyn Provider>,
    pub limits: DispatchLimits,
    pub queued: Arc<Queued>,
    pub telemetry: Arc<Telemetry>,
}

struct KeyQueue {
    /// The key, shared with the lanes that list it (jobs carry it only inside their delivery record).
    owner: Arc<str>,
    jobs: VecDeque<DeliveryJob>,
    /// A job of this key is in flight or waiting for its retry.
    busy: bool,
    /// Bit per lane this key is currently listed in.
    listed: u8,
}

pub struct DispatcherState {
    kind: ProviderKind,
    provider: Arc<dyn Provider>,
    limiter: DefaultDirectRateLimiter,
    /// Jobs handed off and not yet released (their outcome not durable yet).
    max_in_flight: usize,
    in_flight: usize,
    /// Of those, jobs whose provider request has not been answered yet.
    max_requests: usize,
    requests: usize,
    answers: Arc<Answers>,
    lanes: [VecDeque<Arc<str>>; 4],
    keys: HashMap<Arc<str>, KeyQueue>,
    wake_pending: bool,
    /// Nothing is handed out before this instant (a rate-limit pause).
    paused_until: Option<Instant>,
    /// The instant a [`DispatcherMsg::Resume`] is already scheduled for.
    resume_at: Option<Instant>,
    /// Set by a pause, cleared by the first answer that is not a rate limit; while set, one send at a time.
    probing: Arc<AtomicBool>,
    queued: Arc<Queued>,
    telemetry: Arc<Telemetry>,
}

impl Actor for Dispatcher {
    type Msg = DispatcherMsg;
    type State = DispatcherState;
    type Arguments = DispatcherArgs;

    async fn pre_start(
        &self,
        _: ActorRef<DispatcherMsg>,
        args: DispatcherArgs,
    ) -> Result<DispatcherState, ActorProcessingErr> {
        let rate = NonZeroU32::new(args.limits.rate_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(args.limits.burst).unwrap_or(NonZeroU32::MIN);
        Ok(DispatcherState {
            kind: args.kind,
            provider: args.provider,
            limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
            max_in_flight: args.limits.max_in_flight,
            in_flight: 0,
            max_requests: args.limits.requests_cap(),
            requests: 0,
            answers: Arc::default(),
            lanes: Default::default(),
            keys: HashMap::default(),
            wake_pending: false,
            paused_until: None,
            resume_at: None,
            probing: Arc::new(AtomicBool::new(false)),
            queued: args.queued,
            telemetry: args.telemetry,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<DispatcherMsg>,
        msg: DispatcherMsg,
        state: &mut DispatcherState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DispatcherMsg::Dispatch(jobs) => {
                for job in jobs {
                    state.enqueue(job, false);
                }
            }
            DispatcherMsg::Release(releases) => {
                for Release { delivery, retry } in releases {
                    state.release(&myself, &delivery.owner, retry);
                }
            }
            DispatcherMsg::RetryDue(job) => {
                state.queued.add(job.priority());
                state.enqueue(job, true);
            }
            DispatcherMsg::Wake => state.wake_pending = false,
            DispatcherMsg::Pause(wait) => {
                state.requests -= 1;
                state.pause(wait);
            }
            DispatcherMsg::Answered => state.requests -= state.answers.take(),
            DispatcherMsg::Resume => state.resume_at = None,
        }
        state.pump(&myself);
        Ok(())
    }
}

impl DispatcherState {
    fn enqueue(&mut self, job: DeliveryJob, retry: bool) {
        self.telemetry.queue_changed(self.kind, job.priority(), 1);
        if !self.keys.contains_key(job.owner()) {
            let owner: Arc<str> = Arc::from(job.owner());
            let key = KeyQueue { owner: owner.clone(), jobs: VecDeque::new(), busy: false, listed: 0 };
            self.keys.insert(owner, key);
        }
        let key = self.keys.get_mut(job.owner()).expect("just ensured");
        if retry {
            // The retried job is the oldest of its key: it goes first, and the key is free again.
            key.jobs.push_front(job);
            key.busy = false;
        } else {
            key.jobs.push_back(job);
        }
        if !key.busy {
            list(&mut self.lanes, key, lane_of(&key.jobs));
        }
    }

    fn release(&mut self, myself: &ActorRef<DispatcherMsg>, owner: &str, retry: Option<(Duration, DeliveryJob)>) {
        self.in_flight -= 1;
        self.telemetry.in_flight_changed(self.kind, -1);
        if let Some((delay, job)) = retry {
            // The key stays busy through the backoff, so later jobs of this recipient keep their place.
            let me = myself.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = me.cast(DispatcherMsg::RetryDue(job));
            });
            return;
        }
        let Some(key) = self.keys.get_mut(owner) else { return };
        key.busy = false;
        if key.jobs.is_empty() {
            if key.listed == 0 {
                self.keys.remove(owner);
            }
            return;
        }
        list(&mut self.lanes, key, lane_of(&key.jobs));
    }

    fn pause(&mut self, wait: Duration) {
        let until = Instant::now() + wait.min(MAX_PAUSE);
        if self.paused_until.is_none_or(|current| current < until) {
            self.paused_until = Some(until);
        }
        if !self.probing.swap(true, Ordering::AcqRel) {
            self.telemetry.provider_paused(self.kind);
            tracing::warn!(
                provider = self.kind.as_str(),
                pause_ms = wait.as_millis() as u64,
                "provider rate limit: pausing sends"
            );
        }
    }

    /// Whether a rate-limit pause still holds; if so, makes sure a [`DispatcherMsg::Resume`] comes at its end.
    fn paused(&mut self, myself: &ActorRef<DispatcherMsg>) -> bool {
        let Some(until) = self.paused_until else { return false };
        if Instant::now() >= until {
            self.paused_until = None;
            return false;
        }
        if self.resume_at != Some(until) {
            self.resume_at = Some(until);
            let me = myself.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(until.into()).await;
                let _ = me.cast(DispatcherMsg::Resume);
            });
        }
        true
    }

    /// Hands out jobs while there is in-flight room, a token, and a ready key.
    fn pump(&mut self, myself: &ActorRef<DispatcherMsg>) {
        if self.paused(myself) {
            return;
        }
        // After a pause, one probe at a time until the provider answers something other than a rate limit.
        let requests_cap = if self.probing.load(Ordering::Acquire) { 1 } else { self.max_requests };
        // The `low` lane (campaigns) may fill only part of the slots: the rest stay free for transactional
        // traffic, which then never waits for a blast's sends to come back.
        let (low_window, low_requests) = (low_lane_cap(self.max_in_flight), low_lane_cap(requests_cap));
        while self.in_flight < self.max_in_flight && self.requests < requests_cap {
            let low = self.in_flight < low_window && self.requests < low_requests;
            let lanes = if low { &self.lanes[..] } else { &self.lanes[..Priority::Low.lane()] };
            let Some(lane) = lanes.iter().position(|l| !l.is_empty()) else { return };
            let owner = self.lanes[lane].pop_front().expect("lane checked non-empty");
            let Some(key) = self.keys.get_mut(&owner) else { continue };
            key.listed &= !(1 << lane);
            if key.busy || key.jobs.is_empty() {
                // A stale listing: the key was already served from a more urgent lane.
                if !key.busy && key.listed == 0 {
                    self.keys.remove(&owner);
                }
                continue;
            }
            if let Err(not_until) = self.limiter.check() {
                // No token: put the key back where it was and come back when the bucket refills.
                key.listed |= 1 << lane;
                self.lanes[lane].push_front(owner);
                if !self.wake_pending {
                    self.wake_pending = true;
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    let me = myself.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(wait).await;
                        let _ = me.cast(DispatcherMsg::Wake);
                    });
                }
                return;
            }
            let job = key.jobs.pop_front().expect("checked non-empty");
            self.queued.sub(job.priority());
            self.telemetry.queue_changed(self.kind, job.priority(), -1);
            if job.handoff.compare_exchange(QUEUED, HANDED_OFF, Ordering::AcqRel, Ordering::Acquire).is_err() {
                // Cancelled while queued: the shard already recorded it; the key moves on.
                if !key.jobs.is_empty() {
                    list(&mut self.lanes, key, lane_of(&key.jobs));
                }
                continue;
            }
            key.busy = true;
            self.in_flight += 1;
            self.telemetry.in_flight_changed(self.kind, 1);
            self.spawn_send(myself, job);
        }
    }

    /// Sends `job` in a task of its own, which frees the request slot once the provider answered and hands the
    /// outcome to the shard (whose commit releases the window slot).
    fn spawn_send(&mut self, myself: &ActorRef<DispatcherMsg>, mut job: DeliveryJob) {
        let kind = self.kind;
        // An expired job is failed without an attempt: nothing reaches the provider.
        if job.expires_at.is_some_and(|expires| expires <= Timestamp::now()) {
            let expired =
                ProviderError::new(kind, ErrorClass::Permanent, "expired", "expires_at passed before the send");
            let shard = job.shard.clone();
            shard.outcome(SendOutcome { job, result: Err(expired) });
            return;
        }
        self.requests += 1;
        let provider = self.provider.clone();
        let telemetry = self.telemetry.clone();
        let probing = self.probing.clone();
        let answers = self.answers.clone();
        let me = myself.clone();
        job.attempt += 1;
        tokio::spawn(async move {
            let request = job.request();
            let result = AssertUnwindSafe(provider.send(&request)).catch_unwind().await.unwrap_or_else(|_| {
                Err(ProviderError::new(kind, ErrorClass::Retryable, "panic", "provider client panicked"))
            });
            telemetry.provider_latency(kind, job.priority(), job.accepted_at.elapsed().as_millis() as u64);
            // The pause reaches the dispatcher before the outcome reaches the shard, hence before this job's
            // slot is released and before its retry is scheduled; it frees the request slot itself.
            match &result {
                Err(e) if e.class == ErrorClass::RateLimited => {
                    let _ = me.cast(DispatcherMsg::Pause(e.retry_after.unwrap_or(DEFAULT_PAUSE)));
                }
                _ => {
                    if probing.load(Ordering::Relaxed) && probing.swap(false, Ordering::AcqRel) {
                        let _ = me.cast(DispatcherMsg::Resume);
                    }
                    answers.add(&me);
                }
            }
            let shard = job.shard.clone();
            shard.outcome(SendOutcome { job, result });
        });
    }
}

/// In-flight slots the `low` lane may hold: all but a quarter of `cap` (all of a cap below 4).
fn low_lane_cap(cap: usize) -> usize {
    cap - cap / 4
}

/// Lists `key` in `lane` unless it is already listed there.
fn list(lanes: &mut [VecDeque<Arc<str>>; 4], key: &mut KeyQueue, lane: usize) {
    if key.listed & (1 << lane) == 0 {
        key.listed |= 1 << lane;
        lanes[lane].push_back(key.owner.clone());
    }
}

/// The lane of a key: that of its most urgent queued job (priority inheritance).
fn lane_of(jobs: &VecDeque<DeliveryJob>) -> usize {
    jobs.iter().map(|j| j.priority().lane()).min().unwrap_or(Priority::Low.lane())
}

#[cfg(test)]
mod tests {
    use super::low_lane_cap;

    #[test]
    fn the_low_lane_leaves_a_quarter_of_the_slots() {
        assert_eq!(low_lane_cap(256), 192);
        assert_eq!(low_lane_cap(4), 3);
        // Too few slots to split (and the single probe after a rate-limit pause): low may use them.
        assert_eq!(low_lane_cap(3), 3);
        assert_eq!(low_lane_cap(1), 1);
    }
}
