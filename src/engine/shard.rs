//! A shard actor owns the users hashed to it and every open notification of those users.
//!
//! It is the single writer of their state: it accepts notifications (filter, render, plan deliveries), records
//! every provider outcome and delivery report (statuses only move forward), runs the `priority` chain, and
//! decides retries. State changes are submitted to the store for group commit; effects that must follow the
//! commit (the 202, handing jobs to dispatchers, releasing a dispatcher slot) run in the commit callback, which
//! the store runs in submission order, so a user's deliveries reach dispatchers in acceptance order.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::domain::{
    Channel, Delivery, DeliveryId, DeliveryStatus, Device, EventKind, Notification, NotificationId, NotificationStatus,
    Preferences, User,
};
use crate::providers::{Accepted, ErrorClass, ProviderError, Report, ReportOutcome, SendRequest};
use crate::store::{StoredNotification, Write};
use crate::telemetry::Outcome;

use super::dispatcher::{CANCELLED, DeliveryJob, QUEUED};
use super::outcome::classify;
use super::plan::{self, Settle};
use super::report_wait::ReportWaits;
use super::request::{AcceptReply, NewNotification, UserUpdate};
use super::{EngineCtx, EngineError};

/// A provider's answer for one job, sent back by the dispatcher's send task.
pub struct SendOutcome {
    pub job: DeliveryJob,
    pub result: Result<Accepted, ProviderError>,
}

type Reply<T> = RpcReplyPort<Result<T, EngineError>>;

/// Messages of a shard.
pub enum ShardMsg {
    PutUser(String, UserUpdate, Reply<User>),
    GetUser(String, RpcReplyPort<Option<User>>),
    PutDevice(String, Device, Reply<User>),
    RemoveDevice(String, String, Reply<bool>),
    PutPreferences(String, Preferences, Reply<User>),
    Accept(Box<NewNotification>, Reply<AcceptReply>),
    Outcome(Box<SendOutcome>),
    Report(Report),
    Cancel(NotificationId, Reply<NotificationStatus>),
    /// Re-queue a dead delivery. Carries the stored notification in case it is no longer open here.
    Replay(Box<StoredNotification>, DeliveryId, Reply<()>),
    /// Open notifications read from the store at start, in acceptance order.
    Restore(Vec<StoredNotification>),
    /// The commit of an accepted notification failed: forget it.
    Forget(NotificationId),
    /// The earliest wait for a delivery report may have run out.
    ReportWaitOver,
}

/// The shard actor. Its state is [`ShardState`].
pub struct Shard;

pub struct ShardArgs {
    pub ctx: Arc<EngineCtx>,
    pub index: usize,
    pub users: Vec<User>,
}

struct Open {
    notification: Notification,
    deliveries: Vec<Delivery>,
    handoffs: HashMap<DeliveryId, Arc<AtomicU8>>,
    /// Ad-hoc recipients have no stored user; their synthesized one is kept here.
    adhoc_user: Option<User>,
    cancelled: bool,
    accepted_at: Instant,
}

pub struct ShardState {
    ctx: Arc<EngineCtx>,
    index: usize,
    users: HashMap<String, User>,
    open: HashMap<NotificationId, Open>,
    by_delivery: HashMap<DeliveryId, NotificationId>,
    /// Deliveries in `sent`, waiting for their report.
    report_waits: ReportWaits,
}

impl Actor for Shard {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = ShardArgs;

    async fn pre_start(&self, _: ActorRef<ShardMsg>, args: ShardArgs) -> Result<ShardState, ActorProcessingErr> {
        Ok(ShardState {
            index: args.index,
            users: args.users.into_iter().map(|u| (u.id.clone(), u)).collect(),
            open: HashMap::new(),
            by_delivery: HashMap::new(),
            report_waits: ReportWaits::new(Duration::from_millis(args.ctx.settings.report_timeout_ms)),
            ctx: args.ctx,
        })
    }

    async fn handle(
        &self,
        me: ActorRef<ShardMsg>,
        msg: ShardMsg,
        st: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ShardMsg::PutUser(id, update, reply) => st.put_user(id, update, reply),
            ShardMsg::GetUser(id, reply) => drop(reply.send(st.users.get(&id).cloned())),
            ShardMsg::PutDevice(id, device, reply) => {
                st.update_user(&id, reply, |u| {
                    u.upsert_device(device);
                });
            }
            ShardMsg::RemoveDevice(id, token, reply) => st.remove_device(&id, &token, reply),
            ShardMsg::PutPreferences(id, prefs, reply) => st.update_user(&id, reply, |u| u.preferences = prefs),
            ShardMsg::Accept(req, reply) => {
                st.ctx.shard_pending[st.index].fetch_sub(1, Ordering::Relaxed);
                st.accept(&me, *req, reply);
            }
            ShardMsg::Outcome(outcome) => st.on_outcome(&me, *outcome),
            ShardMsg::Report(report) => st.on_report(&me, report),
            ShardMsg::Cancel(id, reply) => st.cancel(&me, &id, reply),
            ShardMsg::Replay(stored, delivery_id, reply) => st.replay(&me, *stored, &delivery_id, reply),
            ShardMsg::Restore(stored) => st.restore(&me, stored),
            ShardMsg::Forget(id) => st.forget(&id),
            ShardMsg::ReportWaitOver => st.on_report_wait_over(&me),
        }
        Ok(())
    }
}

impl ShardState {
    fn put_user(&mut self, id: String, update: UserUpdate, reply: Reply<User>) {
        let now = Timestamp::now();
        let user = self.users.entry(id.clone()).or_insert_with(|| User::new(id, now));
        update.apply(user);
        user.updated_at = now;
        let snapshot = user.clone();
        let record = Arc::new(snapshot.clone());
        self.ctx.submit(
            vec![Write::PutUser(record)],
            Box::new(move |r| drop(reply.send(r.map(|_| snapshot).map_err(Into::into)))),
        );
    }

    fn update_user(&mut self, id: &str, reply: Reply<User>, change: impl FnOnce(&mut User)) {
        let Some(user) = self.users.get_mut(id) else { return drop(reply.send(Err(EngineError::NotFound("user")))) };
        change(user);
        user.updated_at = Timestamp::now();
        let snapshot = user.clone();
        let record = Arc::new(snapshot.clone());
        self.ctx.submit(
            vec![Write::PutUser(record)],
            Box::new(move |r| drop(reply.send(r.map(|_| snapshot).map_err(Into::into)))),
        );
    }

    fn remove_device(&mut self, id: &str, token: &str, reply: Reply<bool>) {
        let Some(user) = self.users.get_mut(id) else { return drop(reply.send(Err(EngineError::NotFound("user")))) };
        if !user.remove_device(token) {
            return drop(reply.send(Ok(false)));
        }
        user.updated_at = Timestamp::now();
        let record = Arc::new(user.clone());
        self.ctx.submit(
            vec![Write::PutUser(record)],
            Box::new(move |r| drop(reply.send(r.map(|_| true).map_err(Into::into)))),
        );
    }

    fn accept(&mut self, me: &ActorRef<ShardMsg>, req: NewNotification, reply: Reply<AcceptReply>) {
        let now = Timestamp::now();
        let (mut notification, adhoc_user) = match self.build_notification(&req, now) {
            Ok(built) => built,
            Err(e) => return drop(reply.send(Err(e))),
        };
        notification.seq = self.ctx.next_seq();
        let id = notification.id.clone();
        let mut writes = Vec::with_capacity(8);
        for claim in &req.claims {
            writes.push(Write::PutIdempotency { key: claim.key.clone(), entry: claim.entry(&id) });
        }
        let open = Open {
            notification,
            deliveries: Vec::new(),
            handoffs: HashMap::new(),
            adhoc_user,
            cancelled: false,
            accepted_at: Instant::now(),
        };
        self.open.insert(id.clone(), open);
        let jobs = self.progress(me, &id, true, &mut writes);
        for channel in &req.channels {
            self.ctx.telemetry.accepted(*channel);
        }
        let ctx = self.ctx.clone();
        let shard = me.clone();
        let claims = req.claims;
        self.ctx.submit(
            writes,
            Box::new(move |result| match result {
                Ok(()) => {
                    for claim in &claims {
                        ctx.idempotency.complete(&claim.key, claim.entry(&id));
                    }
                    let _ = reply.send(Ok(AcceptReply { id, status: NotificationStatus::Accepted, duplicate: false }));
                    ctx.dispatch_all(jobs);
                }
                Err(e) => {
                    ctx.telemetry.store_error(&e);
                    let _ = shard.cast(ShardMsg::Forget(id));
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
        let contents = req.render(user.locale.as_deref())?;
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
            status: NotificationStatus::Dispatching,
            current_channel: 0,
            idempotency_key: req.idempotency_key.clone(),
            metadata: req.metadata.clone(),
            expires_at: req.expires_at,
            created_at: now,
            updated_at: now,
        };
        Ok((notification, adhoc_user))
    }

    /// Plans deliveries for the current step (all channels for `parallel`), settles the notification, and
    /// returns the jobs to dispatch after `writes` commit. `changed`: the notification record is new or changed.
    fn progress(
        &mut self,
        me: &ActorRef<ShardMsg>,
        id: &str,
        mut changed: bool,
        writes: &mut Vec<Write>,
    ) -> Vec<DeliveryJob> {
        let mut jobs = Vec::new();
        let Some(open) = self.open.get_mut(id) else { return jobs };
        let now = Timestamp::now();
        if open.deliveries.is_empty() {
            let channels: Vec<Channel> = match open.notification.strategy {
                crate::domain::Strategy::Parallel => open.notification.channels.clone(),
                crate::domain::Strategy::Priority => vec![open.notification.channels[0]],
            };
            for channel in channels {
                plan_step(open, &self.users, channel, now, &self.ctx, me, writes, &mut jobs, &mut self.by_delivery);
            }
        }
        loop {
            match plan::settle(&open.notification, &open.deliveries, open.cancelled) {
                Settle::Pending => break,
                Settle::NextChannel(next) => {
                    open.notification.current_channel = next;
                    changed = true;
                    let channel = open.notification.channels[next];
                    plan_step(open, &self.users, channel, now, &self.ctx, me, writes, &mut jobs, &mut self.by_delivery);
                }
                Settle::Done(status) => {
                    open.notification.status = status;
                    changed = true;
                    break;
                }
            }
        }
        if changed {
            open.notification.updated_at = now;
            writes.push(Write::PutNotification(Arc::new(open.notification.clone())));
        }
        if open.notification.status.is_final() {
            let open = self.open.remove(id).expect("present");
            for d in &open.deliveries {
                self.by_delivery.remove(&d.id);
            }
        }
        jobs
    }

    fn on_outcome(&mut self, me: &ActorRef<ShardMsg>, outcome: SendOutcome) {
        let SendOutcome { job, result } = outcome;
        let dispatcher = self.ctx.dispatcher(job.provider).clone();
        let owner = job.owner.clone();
        let notification_id = job.notification_id.clone();
        let mut writes = Vec::with_capacity(2);
        let mut retry = None;
        if let Some(open) = self.open.get_mut(&notification_id)
            && let Some(delivery) = open.deliveries.iter_mut().find(|d| d.id == job.request.delivery_id)
        {
            let now = Timestamp::now();
            delivery.attempts = job.request.attempt;
            let (status, kind, reason, retry_after) =
                classify(&result, job.request.attempt, self.ctx.settings.max_retries);
            if let Ok(Accepted::Delivered { provider_message_id } | Accepted::Sent { provider_message_id }) = &result
                && provider_message_id.is_some()
            {
                delivery.provider_message_id = provider_message_id.clone();
            }
            if delivery.advance(status, kind, reason, now) {
                if let Some(o) = Outcome::of(status) {
                    self.ctx.telemetry.outcome(job.provider, o);
                }
                writes.push(Write::PutDelivery(Arc::new(delivery.clone())));
                if status == DeliveryStatus::Retrying {
                    let delay = self.ctx.backoff(job.request.attempt).max(retry_after.unwrap_or_default());
                    job.handoff.store(QUEUED, Ordering::Release);
                    retry = Some(delay);
                }
                if status == DeliveryStatus::Sent {
                    self.report_waits.start(delivery.id.clone(), Instant::now());
                    arm_report_wait(&mut self.report_waits, me);
                }
            }
            if let Err(e) = &result
                && e.alert
            {
                self.ctx.telemetry.provider_alert(job.provider, &e.code);
            }
            if let Err(e) = &result
                && e.class == ErrorClass::Unregistered
                && let crate::domain::Address::Device { token, .. } = &delivery.address
                && let Some(user) = self.users.get_mut(&*owner)
                && user.remove_device(token)
            {
                tracing::info!(token = %crate::domain::contact::mask(token), "removed a device the provider unregistered");
                writes.push(Write::PutUser(Arc::new(user.clone())));
            }
        }
        let jobs = self.progress(me, &notification_id, false, &mut writes);
        let retry = retry.map(|delay| (delay, job));
        let ctx = self.ctx.clone();
        // The slot is released only once the outcome is durable: that is what bounds duplicates after a crash.
        self.ctx.submit(
            writes,
            Box::new(move |result| {
                if let Err(e) = &result {
                    ctx.telemetry.store_error(e);
                }
                dispatcher.release(owner, retry);
                ctx.dispatch_all(jobs);
            }),
        );
    }

    fn on_report(&mut self, me: &ActorRef<ShardMsg>, report: Report) {
        let Some(notification_id) = self.by_delivery.get(&report.delivery_id).cloned() else {
            tracing::debug!(provider = report.provider.as_str(), "report for a delivery that is already final");
            return;
        };
        let Some(open) = self.open.get_mut(&notification_id) else { return };
        let Some(delivery) = open.deliveries.iter_mut().find(|d| d.id == report.delivery_id) else { return };
        let now = Timestamp::now();
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
            delivery.provider_message_id = report.provider_message_id.clone();
        }
        if let Some(o) = Outcome::of(delivery.status) {
            self.ctx.telemetry.outcome(report.provider, o);
        }
        let mut writes = vec![Write::PutDelivery(Arc::new(delivery.clone()))];
        let jobs = self.progress(me, &notification_id, false, &mut writes);
        let ctx = self.ctx.clone();
        self.ctx.submit(writes, Box::new(move |_| ctx.dispatch_all(jobs)));
    }

    /// Fails the deliveries whose report never came (`engine.report_timeout_ms`); the next channel of a priority
    /// chain, if any, then gets its turn as after any failure.
    fn on_report_wait_over(&mut self, me: &ActorRef<ShardMsg>) {
        self.report_waits.fired();
        let now = Timestamp::now();
        let mut writes = Vec::new();
        let mut jobs = Vec::new();
        for delivery_id in self.report_waits.expired(Instant::now()) {
            let Some(notification_id) = self.by_delivery.get(&delivery_id).cloned() else { continue };
            let Some(open) = self.open.get_mut(&notification_id) else { continue };
            let Some(delivery) = open.deliveries.iter_mut().find(|d| d.id == delivery_id) else { continue };
            if delivery.status != DeliveryStatus::Sent {
                continue;
            }
            let reason =
                format!("report_timeout: no delivery report within {} ms", self.ctx.settings.report_timeout_ms);
            if delivery.advance(DeliveryStatus::Failed, EventKind::Failed, Some(reason), now) {
                self.ctx.telemetry.report_timeout(delivery.provider);
                self.ctx.telemetry.outcome(delivery.provider, Outcome::Failed);
                writes.push(Write::PutDelivery(Arc::new(delivery.clone())));
                jobs.extend(self.progress(me, &notification_id, false, &mut writes));
            }
        }
        arm_report_wait(&mut self.report_waits, me);
        if writes.is_empty() {
            return;
        }
        let ctx = self.ctx.clone();
        self.ctx.submit(writes, Box::new(move |_| ctx.dispatch_all(jobs)));
    }

    fn cancel(&mut self, me: &ActorRef<ShardMsg>, id: &str, reply: Reply<NotificationStatus>) {
        let Some(open) = self.open.get_mut(id) else {
            return drop(reply.send(Err(EngineError::Conflict("notification is already final".into()))));
        };
        let now = Timestamp::now();
        open.cancelled = true;
        let mut writes = Vec::new();
        for delivery in
            open.deliveries.iter_mut().filter(|d| matches!(d.status, DeliveryStatus::Queued | DeliveryStatus::Retrying))
        {
            let not_handed = open
                .handoffs
                .get(&delivery.id)
                .is_none_or(|h| h.compare_exchange(QUEUED, CANCELLED, Ordering::AcqRel, Ordering::Acquire).is_ok());
            if not_handed && delivery.advance(DeliveryStatus::Cancelled, EventKind::Cancelled, None, now) {
                writes.push(Write::PutDelivery(Arc::new(delivery.clone())));
            }
        }
        let jobs = self.progress(me, id, true, &mut writes);
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

    fn replay(&mut self, me: &ActorRef<ShardMsg>, stored: StoredNotification, delivery_id: &str, reply: Reply<()>) {
        let id = stored.notification.id.clone();
        if !self.open.contains_key(&id) {
            self.reopen(stored);
        }
        let open = self.open.get_mut(&id).expect("just opened");
        let Some(delivery) =
            open.deliveries.iter_mut().find(|d| d.id == delivery_id && d.status == DeliveryStatus::Dead)
        else {
            return drop(reply.send(Err(EngineError::Conflict("delivery is not dead-lettered".into()))));
        };
        let now = Timestamp::now();
        delivery.status = DeliveryStatus::Queued;
        delivery.attempts = 0;
        delivery.events.push(crate::domain::Event { kind: EventKind::Replayed, at: now, reason: None });
        delivery.updated_at = now;
        open.notification.status = NotificationStatus::Dispatching;
        let delivery = delivery.clone();
        let mut writes = vec![Write::PutDelivery(Arc::new(delivery.clone()))];
        let mut jobs = vec![job_for(open, &delivery, me)];
        jobs.extend(self.progress(me, &id, true, &mut writes));
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

    fn restore(&mut self, me: &ActorRef<ShardMsg>, stored: Vec<StoredNotification>) {
        let mut writes = Vec::new();
        let mut jobs = Vec::new();
        let mut sent = Vec::new();
        for s in stored {
            let id = s.notification.id.clone();
            self.reopen(s);
            let open = self.open.get_mut(&id).expect("just opened");
            sent.extend(
                open.deliveries
                    .iter()
                    .filter(|d| d.status == DeliveryStatus::Sent)
                    .map(|d| (d.updated_at, d.id.clone())),
            );
            let waiting: Vec<Delivery> = open
                .deliveries
                .iter()
                .filter(|d| matches!(d.status, DeliveryStatus::Queued | DeliveryStatus::Retrying))
                .cloned()
                .collect();
            for d in &waiting {
                jobs.push(job_for(open, d, me));
            }
            jobs.extend(self.progress(me, &id, false, &mut writes));
        }
        self.report_waits.restore(sent, Instant::now(), Timestamp::now());
        arm_report_wait(&mut self.report_waits, me);
        if !self.open.is_empty() {
            let waiting_reports = self.report_waits.len();
            tracing::info!(
                shard = self.index,
                open = self.open.len(),
                jobs = jobs.len(),
                waiting_reports,
                "shard restored"
            );
        }
        let ctx = self.ctx.clone();
        self.ctx.submit(writes, Box::new(move |_| ctx.dispatch_all(jobs)));
    }

    /// Puts a stored notification back in memory (restart, or a replay of a finished one).
    fn reopen(&mut self, stored: StoredNotification) {
        let StoredNotification { notification, deliveries } = stored;
        for d in &deliveries {
            self.by_delivery.insert(d.id.clone(), notification.id.clone());
        }
        let adhoc_user =
            notification.user_id.is_none().then(|| User::new(notification.owner.clone(), notification.created_at));
        let open = Open {
            notification,
            deliveries,
            handoffs: HashMap::new(),
            adhoc_user,
            cancelled: false,
            accepted_at: Instant::now(),
        };
        self.open.insert(open.notification.id.clone(), open);
    }

    fn forget(&mut self, id: &str) {
        if let Some(open) = self.open.remove(id) {
            for d in &open.deliveries {
                self.by_delivery.remove(&d.id);
            }
        }
    }
}

/// Creates the deliveries of one step, their writes (and inbox items), and the jobs for the queued ones.
#[allow(clippy::too_many_arguments)]
fn plan_step(
    open: &mut Open,
    users: &HashMap<String, User>,
    channel: Channel,
    now: Timestamp,
    ctx: &EngineCtx,
    me: &ActorRef<ShardMsg>,
    writes: &mut Vec<Write>,
    jobs: &mut Vec<DeliveryJob>,
    by_delivery: &mut HashMap<DeliveryId, NotificationId>,
) {
    let deliveries = {
        let fallback;
        // A user deleted meanwhile plans like a user without contacts: everything is filtered.
        let user = match open.adhoc_user.as_ref().or_else(|| users.get(&open.notification.owner)) {
            Some(u) => u,
            None => {
                fallback = User::new(open.notification.owner.clone(), now);
                &fallback
            }
        };
        plan::deliveries_for(&open.notification, user, open.adhoc_user.is_some(), channel, now)
    };
    for d in deliveries {
        if let Some(item) = plan::inbox_item(&open.notification, &d, now) {
            writes.push(Write::PutInboxItem(item));
        }
        if let Some(o) = Outcome::of(d.status) {
            ctx.telemetry.outcome(d.provider, o);
        }
        if d.status == DeliveryStatus::Queued {
            jobs.push(job_for(open, &d, me));
        }
        by_delivery.insert(d.id.clone(), open.notification.id.clone());
        writes.push(Write::PutDelivery(Arc::new(d.clone())));
        open.deliveries.push(d);
    }
}

/// Schedules the shard's wake-up for the earliest report wait, unless one is already scheduled for it.
fn arm_report_wait(waits: &mut ReportWaits, me: &ActorRef<ShardMsg>) {
    if let Some(deadline) = waits.arm() {
        let me = me.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline.into()).await;
            let _ = me.cast(ShardMsg::ReportWaitOver);
        });
    }
}

/// A dispatcher job for a queued delivery; registers its hand-off flag so it can be cancelled.
fn job_for(open: &mut Open, d: &Delivery, me: &ActorRef<ShardMsg>) -> DeliveryJob {
    let handoff = Arc::new(AtomicU8::new(QUEUED));
    open.handoffs.insert(d.id.clone(), handoff.clone());
    let content = open.notification.content(d.channel).cloned().unwrap_or_default();
    DeliveryJob {
        request: SendRequest {
            delivery_id: d.id.clone(),
            address: d.address.clone(),
            content,
            priority: d.priority,
            attempt: d.attempts,
        },
        notification_id: open.notification.id.clone(),
        owner: Arc::from(d.owner.as_str()),
        provider: d.provider,
        accepted_at: open.accepted_at,
        handoff,
        shard: me.clone(),
    }
}
