//! The delivery path of a shard: accepting a notification, planning its deliveries, recording provider
//! outcomes and delivery reports, report timeouts, cancellation and DLQ replay.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use ractor::ActorRef;

use crate::domain::{
    Channel, Delivery, DeliveryStatus, EventKind, Notification, NotificationStatus, ProviderKind, User,
};
use crate::key::Key;
use crate::providers::{Accepted, ErrorClass, Report, ReportOutcome};
use crate::store::{StoredNotification, Write};
use crate::telemetry::Outcome;

use super::super::EngineError;
use super::super::dispatcher::{CANCELLED, DeliveryJob, QUEUED, Release};
use super::super::outcome::classify;
use super::super::plan::{self, Settle};
use super::super::request::{AcceptReply, Claim, NewNotification};
use super::{
    Open, Reply, SendOutcome, ShardMsg, ShardState, arm_report_wait, count_campaign_final, job_for, plan_step,
};

impl ShardState {
    pub(super) fn accept(&mut self, me: &ActorRef<ShardMsg>, req: NewNotification, reply: Reply<AcceptReply>) {
        let now = Timestamp::now();
        let (mut notification, adhoc_user) = match self.build_notification(&req, now) {
            Ok(built) => built,
            Err(e) => return drop(reply.send(Err(e))),
        };
        notification.seq = self.ctx.next_seq();
        if notification.status == NotificationStatus::Scheduled {
            return self.accept_scheduled(me, notification, adhoc_user, req.claims, reply);
        }
        let id = notification.id.clone();
        let key = Key::new(&id);
        let mut writes = Vec::with_capacity(8);
        self.open.insert(key.clone(), Open::new(notification, Vec::new(), adhoc_user));
        let jobs = self.progress(me, &key, true, &mut writes);
        for channel in &req.channels {
            self.ctx.telemetry.accepted(*channel);
        }
        self.submit_accept(me, id, writes, req.claims, AfterAccept::Dispatch(jobs), reply);
    }

    /// Commits an accepted notification with its idempotency claims. Once it lands the claims complete, the
    /// follow-up runs and the 202 is answered; if it fails the shard forgets the notification, the claims wait
    /// for a reconcile (`reconcile.rs`), and the caller gets the 503.
    pub(super) fn submit_accept(
        &self,
        me: &ActorRef<ShardMsg>,
        id: String,
        mut writes: Vec<Write>,
        claims: Vec<Claim>,
        after: AfterAccept,
        reply: Reply<AcceptReply>,
    ) {
        let status = match after {
            AfterAccept::Dispatch(_) => NotificationStatus::Accepted,
            AfterAccept::Scheduled { .. } => NotificationStatus::Scheduled,
        };
        for claim in &claims {
            writes.push(Write::PutIdempotency { key: claim.key.clone(), entry: claim.entry(&id, status) });
        }
        let ctx = self.ctx.clone();
        let shard = me.clone();
        self.ctx.submit(
            writes,
            Box::new(move |result| match result {
                Ok(()) => {
                    for claim in &claims {
                        ctx.idempotency.complete(&claim.key, claim.entry(&id, status));
                    }
                    match after {
                        AfterAccept::Dispatch(jobs) => ctx.dispatch_all(jobs),
                        AfterAccept::Scheduled { .. } => drop(shard.cast(ShardMsg::SchedCommitted(id.clone()))),
                    }
                    let _ = reply.send(Ok(AcceptReply { id, status, duplicate: false }));
                }
                Err(e) => {
                    ctx.telemetry.store_error(&e);
                    // Forget before the reconcile can run, and hold the claims before the 503 is answered.
                    let _ = shard.cast(ShardMsg::Forget(id.clone()));
                    ctx.reconcile.accept_failed(&id, &claims);
                    if let AfterAccept::Scheduled { due_ms } = after {
                        // A batch that lands late is in the scheduled index: the loader reads it again.
                        ctx.rewind_schedule(due_ms);
                    }
                    let _ = reply.send(Err(e.into()));
                }
            }),
        );
    }

    /// Validates and renders a request into a notification record (no deliveries yet).
    fn build_notification(
        &self,
        req: &NewNotification,
        now: Timestamp,
    ) -> Result<(Notification, Option<User>), EngineError> {
        let adhoc_user = match &req.adhoc {
            Some(adhoc) => Some(adhoc.to_user(&req.owner, now)),
            None if self.users.contains_key(&req.owner) => None,
            None => return Err(EngineError::invalid("user_id", "unknown user; create it with PUT /v1/users/{id}")),
        };
        let user = adhoc_user.as_ref().unwrap_or_else(|| &self.users[&req.owner]);
        if req.campaign.is_some() && !req.channels.iter().any(|c| user.preferences.allows(req.category, *c)) {
            // A campaign skips such a user rather than recording a notification with nothing but filtered.
            return Err(EngineError::invalid("preferences", "the user turned off every channel of this category"));
        }
        let contents = req.render(user.locale.as_deref())?;
        let schedule = self.schedule_for(req, user)?;
        let notification = Notification {
            id: crate::domain::new_id(),
            seq: 0,
            owner: req.owner.clone(),
            user_id: if req.adhoc.is_some() { None } else { Some(req.owner.clone()) },
            category: req.category,
            channels: req.channels.clone(),
            strategy: req.strategy,
            priority: req.priority,
            template_id: req.template_id(),
            contents,
            status: if schedule.is_some() { NotificationStatus::Scheduled } else { NotificationStatus::Dispatching },
            current_channel: 0,
            idempotency_key: req.idempotency_key.clone(),
            metadata: req.metadata.clone().map(Box::new),
            expires_at: req.expires_at,
            send_at: schedule.as_ref().map(|(at, _)| *at),
            reason: schedule.and_then(|(_, reason)| reason),
            sequence: None,
            campaign: req.campaign.clone(),
            created_at: now,
            updated_at: now,
        };
        Ok((notification, adhoc_user))
    }

    /// Plans deliveries for the current step (all channels for `parallel`), settles the notification, and
    /// returns the jobs to dispatch after `writes` commit. `changed`: the notification record is new or changed.
    pub(super) fn progress(
        &mut self,
        me: &ActorRef<ShardMsg>,
        key: &Key,
        mut changed: bool,
        writes: &mut Vec<Write>,
    ) -> Vec<DeliveryJob> {
        let mut jobs = Vec::new();
        let Some(open) = self.open.by_key_mut(key) else { return jobs };
        let now = Timestamp::now();
        if open.notification.status == NotificationStatus::Scheduled {
            // Nothing is planned before it is due (`fire`); only the record changes.
            if changed {
                open.notification_mut().updated_at = now;
                writes.push(Write::PutNotification(open.notification.clone()));
            }
            return jobs;
        }
        if open.deliveries.is_empty() {
            let channels: Vec<Channel> = match open.notification.strategy {
                crate::domain::Strategy::Parallel => open.notification.channels.clone(),
                crate::domain::Strategy::Priority => vec![open.notification.channels[0]],
            };
            for channel in channels {
                plan_step(open, &self.users, channel, now, &self.ctx, &self.link, writes, &mut jobs);
            }
        }
        loop {
            match plan::settle(&open.notification, &open.deliveries, open.cancelled) {
                Settle::Pending => break,
                Settle::NextChannel(next) => {
                    open.notification_mut().current_channel = next;
                    changed = true;
                    let channel = open.notification.channels[next];
                    plan_step(open, &self.users, channel, now, &self.ctx, &self.link, writes, &mut jobs);
                }
                Settle::Done(status) => {
                    open.notification_mut().status = status;
                    count_campaign_final(&open.notification, 1, writes);
                    changed = true;
                    break;
                }
            }
        }
        if open.unsaved {
            // Fired without a commit (`fire`): this is its first write since, so it carries every delivery.
            open.unsaved = false;
            changed = true;
            writes.extend(open.deliveries.iter().map(|d| Write::PutDelivery(d.clone())));
            if let Some(landed) = self.left_scheduled.get(key) {
                self.landing.push(landed.clone());
            }
        }
        if changed {
            open.notification_mut().updated_at = now;
            writes.push(Write::PutNotification(open.notification.clone()));
        }
        if open.notification.status.is_final() {
            let open = self.open.remove_key(key).expect("present");
            if let Some(step) = &open.notification.sequence {
                jobs.extend(self.on_step_final(me, step, open.notification.status, writes));
            }
        }
        jobs
    }

    /// Records every provider answer queued in the shard's link, in arrival order, as one commit. Once it is
    /// durable the callback releases their dispatcher slots (one message per dispatcher) and dispatches the
    /// jobs they led to (a `priority` chain's next channel, a sequence's next step).
    pub(super) fn on_outcomes(&mut self, me: &ActorRef<ShardMsg>) {
        let mut outcomes = std::mem::take(&mut self.outcomes);
        std::mem::swap(&mut *self.link.outcomes.lock(), &mut outcomes);
        if outcomes.is_empty() {
            self.outcomes = outcomes;
            return;
        }
        let mut writes = Vec::with_capacity(2 * outcomes.len());
        let mut released = Released::default();
        let mut jobs = Vec::new();
        for outcome in outcomes.drain(..) {
            self.on_outcome(me, outcome, &mut writes, &mut released, &mut jobs);
        }
        self.outcomes = outcomes;
        let ctx = self.ctx.clone();
        let landing = std::mem::take(&mut self.landing);
        // Slots are released only once the outcomes are durable: that is what bounds duplicates after a crash.
        self.ctx.submit(
            writes,
            Box::new(move |result| {
                match &result {
                    Ok(()) => super::scheduled::landed(&ctx, &landing),
                    Err(e) => ctx.telemetry.store_error(e),
                }
                for (provider, releases) in released.by_provider {
                    ctx.dispatcher(provider).release_all(releases);
                }
                ctx.dispatch_all(jobs);
            }),
        );
    }

    /// Records one provider answer: its writes, the slot to release, the jobs it leads to.
    fn on_outcome(
        &mut self,
        me: &ActorRef<ShardMsg>,
        outcome: SendOutcome,
        writes: &mut Vec<Write>,
        released: &mut Released,
        jobs: &mut Vec<DeliveryJob>,
    ) {
        let SendOutcome { job, result } = outcome;
        let DeliveryJob { delivery: sent, content, attempt, accepted_at, handoff, shard, expires_at } = job;
        let provider = sent.provider;
        let notification_id = sent.notification_id.clone();
        let key = Key::new(&notification_id);
        let mut retry = None;
        let release = match self.open.by_key_mut(&key).and_then(|o| Some((o.delivery_index(&sent.id)?, o))) {
            None => sent,
            Some((index, open)) => {
                // The job lets go of the record first, so recording the outcome changes it in place.
                drop(sent);
                let now = Timestamp::now();
                let delivery = open.delivery_mut(index);
                delivery.attempts = attempt;
                let (status, kind, reason, retry_after) = classify(&result, attempt, self.ctx.settings.max_retries);
                if let Ok(Accepted::Delivered { provider_message_id } | Accepted::Sent { provider_message_id }) =
                    &result
                    && provider_message_id.is_some()
                {
                    delivery.provider_message_id = provider_message_id.as_deref().map(Box::from);
                }
                let mut retry_delay = None;
                if delivery.advance(status, kind, reason, now) {
                    if let Some(o) = Outcome::of(status) {
                        self.ctx.telemetry.outcome(provider, o);
                    }
                    if status == DeliveryStatus::Retrying {
                        handoff.store(QUEUED, Ordering::Release);
                        retry_delay = Some(self.ctx.backoff(attempt).max(retry_after.unwrap_or_default()));
                    }
                    if status == DeliveryStatus::Sent {
                        self.report_waits.start((notification_id.clone(), delivery.id.clone()), Instant::now());
                        arm_report_wait(&mut self.report_waits, me);
                    }
                    // An unsaved notification's deliveries are all written by `progress` below.
                    if !open.unsaved {
                        writes.push(Write::PutDelivery(open.deliveries[index].clone()));
                    }
                }
                let delivery = open.deliveries[index].clone();
                if let Err(e) = &result
                    && e.alert
                {
                    self.ctx.telemetry.provider_alert(provider, &e.code);
                }
                if let Err(e) = &result
                    && e.class == ErrorClass::Unregistered
                    && let crate::domain::Address::Device { token, .. } = &delivery.address
                    && let Some(user) = self.users.get_mut(&delivery.owner)
                    && user.remove_device(token)
                {
                    tracing::info!(token = %crate::domain::contact::mask(token), "removed a device the provider unregistered");
                    writes.push(Write::PutUser(Arc::new(user.clone())));
                }
                retry = retry_delay.map(|delay| {
                    let job = DeliveryJob {
                        delivery: delivery.clone(),
                        content,
                        attempt,
                        accepted_at,
                        handoff,
                        shard,
                        expires_at,
                    };
                    (delay, job)
                });
                delivery
            }
        };
        released.add(provider, release, retry);
        jobs.extend(self.progress(me, &key, false, writes));
    }

    pub(super) fn on_report(&mut self, me: &ActorRef<ShardMsg>, report: Report, notification_id: &str) {
        let Some((index, open)) =
            self.open.get_mut(notification_id).and_then(|open| Some((open.delivery_index(&report.delivery_id)?, open)))
        else {
            tracing::debug!(provider = report.provider.as_str(), "report for a delivery that is already final");
            return;
        };
        if report.outcome == ReportOutcome::Progress {
            // Changes nothing: the record is not touched (a shared one would be copied for nothing).
            return;
        }
        let now = Timestamp::now();
        let delivery = open.delivery_mut(index);
        let changed = match &report.outcome {
            ReportOutcome::Progress => false,
            ReportOutcome::Delivered => delivery.advance(DeliveryStatus::Delivered, EventKind::Delivered, None, now),
            ReportOutcome::Failed { code, reason } => {
                delivery.advance(DeliveryStatus::Failed, EventKind::Failed, Some(format!("{code}: {reason}")), now)
            }
        };
        if !changed {
            return;
        }
        if delivery.provider_message_id.is_none() {
            delivery.provider_message_id = report.provider_message_id.as_deref().map(Box::from);
        }
        if let Some(o) = Outcome::of(delivery.status) {
            self.ctx.telemetry.outcome(report.provider, o);
        }
        let mut writes = vec![Write::PutDelivery(open.deliveries[index].clone())];
        let jobs = self.progress(me, &Key::new(notification_id), false, &mut writes);
        let ctx = self.ctx.clone();
        self.ctx.submit(writes, Box::new(move |_| ctx.dispatch_all(jobs)));
    }

    /// Fails the deliveries whose report never came (`engine.report_timeout_ms`); the next channel of a priority
    /// chain, if any, then gets its turn as after any failure.
    pub(super) fn on_report_wait_over(&mut self, me: &ActorRef<ShardMsg>) {
        self.report_waits.fired();
        let now = Timestamp::now();
        let mut writes = Vec::new();
        let mut jobs = Vec::new();
        for (notification_id, delivery_id) in self.report_waits.expired(Instant::now()) {
            let Some(open) = self.open.get_mut(&notification_id) else { continue };
            let Some(index) = open.delivery_index(&delivery_id) else { continue };
            if open.deliveries[index].status != DeliveryStatus::Sent {
                continue;
            }
            let reason =
                format!("report_timeout: no delivery report within {} ms", self.ctx.settings.report_timeout_ms);
            let delivery = open.delivery_mut(index);
            if delivery.advance(DeliveryStatus::Failed, EventKind::Failed, Some(reason), now) {
                self.ctx.telemetry.report_timeout(delivery.provider);
                self.ctx.telemetry.outcome(delivery.provider, Outcome::Failed);
                writes.push(Write::PutDelivery(open.deliveries[index].clone()));
                jobs.extend(self.progress(me, &Key::new(&notification_id), false, &mut writes));
            }
        }
        arm_report_wait(&mut self.report_waits, me);
        if writes.is_empty() {
            return;
        }
        let ctx = self.ctx.clone();
        self.ctx.submit(writes, Box::new(move |_| ctx.dispatch_all(jobs)));
    }

    pub(super) fn cancel(
        &mut self,
        me: &ActorRef<ShardMsg>,
        stored: StoredNotification,
        reply: Reply<NotificationStatus>,
    ) {
        let id = stored.notification.id.as_str();
        if !self.open.contains_key(id) && self.left_scheduled.contains_key(&Key::new(id)) {
            // It left `scheduled` here and is final, but the store may not show it yet (a send fired unsaved).
            return drop(reply.send(Err(EngineError::Conflict("notification is already final".into()))));
        }
        let scheduled = self.open.get(id).map_or(stored.notification.status, |o| o.notification.status);
        if scheduled == NotificationStatus::Scheduled {
            return self.cancel_scheduled(stored.notification, reply);
        }
        let Some(open) = self.open.get_mut(id) else {
            return drop(reply.send(Err(EngineError::Conflict("notification is already final".into()))));
        };
        let mut writes = Vec::new();
        cancel_unhanded(open, Timestamp::now(), &mut writes);
        let jobs = self.progress(me, &Key::new(id), true, &mut writes);
        let status = self.open.get(id).map_or(NotificationStatus::Cancelled, |o| o.notification.status);
        let ctx = self.ctx.clone();
        self.ctx.submit(
            writes,
            Box::new(move |r| {
                ctx.dispatch_all(jobs);
                let _ = reply.send(r.map(|_| status).map_err(Into::into));
            }),
        );
    }

    pub(super) fn replay(
        &mut self,
        me: &ActorRef<ShardMsg>,
        stored: StoredNotification,
        delivery_id: &str,
        reply: Reply<()>,
    ) {
        let id = stored.notification.id.clone();
        if !self.open.contains_key(&id) {
            self.reopen(stored);
        }
        let open = self.open.get_mut(&id).expect("just opened");
        let Some(index) = open.deliveries.iter().position(|d| d.id == delivery_id && d.status == DeliveryStatus::Dead)
        else {
            return drop(reply.send(Err(EngineError::Conflict("delivery is not dead-lettered".into()))));
        };
        let now = Timestamp::now();
        let delivery = open.delivery_mut(index);
        delivery.status = DeliveryStatus::Queued;
        delivery.attempts = 0;
        delivery.events.push(crate::domain::Event { kind: EventKind::Replayed, at: now, reason: None });
        delivery.updated_at = now;
        let mut writes = vec![Write::PutDelivery(open.deliveries[index].clone())];
        // Reopened: its old final status no longer counts for its campaign (it counts again when it ends).
        count_campaign_final(&open.notification, -1, &mut writes);
        open.notification_mut().status = NotificationStatus::Dispatching;
        let mut jobs = vec![job_for(open, index, &self.link)];
        jobs.extend(self.progress(me, &Key::new(&id), true, &mut writes));
        let ctx = self.ctx.clone();
        self.ctx.submit(
            writes,
            Box::new(move |r| {
                if r.is_ok() {
                    ctx.dispatch_all(jobs);
                }
                let _ = reply.send(r.map_err(Into::into));
            }),
        );
    }
}

/// What follows the commit of an accepted notification.
pub(super) enum AfterAccept {
    /// Hand its jobs to the dispatchers.
    Dispatch(Vec<DeliveryJob>),
    /// Keep it in a timer if it is due inside the loaded window (`SchedCommitted`).
    Scheduled { due_ms: i64 },
}

/// The dispatcher slots a batch of outcomes releases, by provider (a batch usually has one).
#[derive(Default)]
struct Released {
    by_provider: Vec<(ProviderKind, Vec<Release>)>,
}

impl Released {
    fn add(&mut self, provider: ProviderKind, delivery: Arc<Delivery>, retry: Option<(Duration, DeliveryJob)>) {
        let at = match self.by_provider.iter().position(|(p, _)| *p == provider) {
            Some(at) => at,
            None => {
                self.by_provider.push((provider, Vec::new()));
                self.by_provider.len() - 1
            }
        };
        self.by_provider[at].1.push(Release { delivery, retry });
    }
}

/// Marks `open` cancelled and cancels its deliveries that no dispatcher has taken yet (those in flight finish,
/// and their outcome or report is still recorded).
pub(super) fn cancel_unhanded(open: &mut Open, now: Timestamp, writes: &mut Vec<Write>) {
    open.cancelled = true;
    for index in 0..open.deliveries.len() {
        if !matches!(open.deliveries[index].status, DeliveryStatus::Queued | DeliveryStatus::Retrying) {
            continue;
        }
        let not_handed =
            open.handoffs.iter().find(|(i, _)| *i as usize == index).is_none_or(|(_, h)| {
                h.compare_exchange(QUEUED, CANCELLED, Ordering::AcqRel, Ordering::Acquire).is_ok()
            });
        if not_handed && open.delivery_mut(index).advance(DeliveryStatus::Cancelled, EventKind::Cancelled, None, now) {
            writes.push(Write::PutDelivery(open.deliveries[index].clone()));
        }
    }
}
