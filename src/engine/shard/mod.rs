//! A shard actor owns the users hashed to it and every open notification of those users.
//!
//! It is the single writer of their state: it accepts notifications (filter, render, plan deliveries), records
//! every provider outcome and delivery report (statuses only move forward), runs the `priority` chain, and
//! decides retries. State changes are submitted to the store for group commit; effects that must follow the
//! commit (the 202, handing jobs to dispatchers, releasing a dispatcher slot) run in the commit callback, which
//! the store runs in submission order, so a user's deliveries reach dispatchers in acceptance order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::domain::{
    Channel, Delivery, DeliveryId, DeliveryStatus, Device, Notification, NotificationId, NotificationStatus,
    Preferences, Sequence, SequenceId, User,
};
use crate::hash::HashMap;
use crate::key::Key;
use crate::providers::{Accepted, ProviderError, Report};
use crate::store::{StoredNotification, Write};
use crate::telemetry::Outcome;

use super::dispatcher::{DeliveryJob, QUEUED};
use super::plan;
use super::reconcile::Forgotten;
use super::report_wait::ReportWaits;
use super::request::{AcceptReply, NewNotification, NewSequence, NotificationPatch, UserUpdate};
use super::timers::Timers;
use super::{EngineCtx, EngineError};

mod delivery;
mod held;
mod scheduled;
mod sequence;

/// A provider's answer for one job, sent back by the dispatcher's send task.
pub struct SendOutcome {
    pub job: DeliveryJob,
    pub result: Result<Accepted, ProviderError>,
}

/// How a job finds its shard again: the actor, and the queue its provider answers wait in.
///
/// Answers are queued here rather than sent one message each: the shard takes every answer that came in while
/// it was busy at once, and records them in one commit whose callback releases their dispatcher slots in one
/// message per dispatcher. Under load that is one store submission and two messages per batch instead of three
/// per answer.
pub struct ShardLink {
    actor: ActorRef<ShardMsg>,
    outcomes: parking_lot::Mutex<Vec<SendOutcome>>,
}

impl std::fmt::Debug for ShardLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardLink").field("actor", &self.actor.get_id()).finish_non_exhaustive()
    }
}

impl ShardLink {
    /// Queues a provider's answer; the answer that finds the queue empty wakes the shard. Exactly one
    /// [`ShardMsg::Outcomes`] is on its way while the queue holds anything: only its handling empties it.
    pub fn outcome(&self, outcome: SendOutcome) {
        let first = {
            let mut queue = self.outcomes.lock();
            queue.push(outcome);
            queue.len() == 1
        };
        if first && let Err(e) = self.actor.cast(ShardMsg::Outcomes) {
            tracing::error!(error = %e, "shard is gone; outcome left for restart recovery");
        }
    }
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
    /// Provider answers are waiting in the shard's [`ShardLink`].
    Outcomes,
    /// A delivery report, with the id of the delivery's notification.
    Report(Report, NotificationId),
    /// Cancel what has not been handed to a provider. Carries the stored notification in case it is scheduled
    /// and not in memory.
    Cancel(Box<StoredNotification>, Reply<NotificationStatus>),
    /// Change a scheduled notification (read from the store by the caller).
    Patch(Box<Notification>, Box<NotificationPatch>, Reply<Notification>),
    /// Re-queue a dead delivery. Carries the stored notification in case it is no longer open here.
    Replay(Box<StoredNotification>, DeliveryId, Reply<()>),
    /// Open notifications read from the store at start, in acceptance order.
    Restore(Vec<StoredNotification>),
    /// The commit of an accepted notification failed: forget it.
    Forget(NotificationId),
    /// Open notifications read from the store by a reconcile: adopt those forgotten after a failed accept
    /// commit whose batch landed anyway. Replies with how many were adopted.
    Adopt(Vec<StoredNotification>, RpcReplyPort<usize>),
    /// The earliest wait for a delivery report may have run out.
    ReportWaitOver,
    /// The scheduled-send loader is about to read the index up to this instant (see `engine/scheduler.rs`).
    SchedWindow(Timestamp),
    /// Scheduled notifications due in the window, from the loader's read number `.1`.
    Arm(Vec<Notification>, u64),
    /// The loader finished a pass whose last read was this number.
    SchedLoaded(u64),
    /// A scheduled notification's commit (accept or patch) landed.
    SchedCommitted(NotificationId),
    /// The earliest timer may be due.
    TimersDue,
    /// Due sends are held for a provider's room: look again (`held.rs`).
    HeldDue,
    StartSequence(Box<NewSequence>, Reply<Sequence>),
    CancelSequence(SequenceId, Reply<Sequence>),
    /// Running sequences read from the store at start (before `Restore`).
    RestoreSequences(Vec<Sequence>),
}

/// The shard actor. Its state is [`ShardState`].
pub struct Shard;

pub struct ShardArgs {
    pub ctx: Arc<EngineCtx>,
    pub index: usize,
    pub users: Vec<User>,
}

/// A notification this shard has in memory: scheduled, or with deliveries not all final. One is kept per queued
/// notification, so it is kept small (issue #6: ≤ 2 KiB each with 1,000,000 queued, `docs/performance.md`).
struct Open {
    /// Shared with the writes that carry it to the store, so a write costs a reference count; a change made
    /// while a write still holds it copies it first (`Arc::make_mut`).
    notification: Arc<Notification>,
    /// Shared the same way, and with the delivery's dispatcher job while it is queued. Append-only: an index
    /// names a delivery for the notification's life here. Exact capacity (most notifications have one).
    deliveries: Vec<Arc<Delivery>>,
    /// The hand-off flag of a delivery's current job, by index in `deliveries` (a notification has one or a
    /// few: a list, not a map).
    handoffs: Vec<(u32, Arc<AtomicU8>)>,
    /// Ad-hoc recipients have no stored user; their synthesized one is kept here (boxed: most have a stored
    /// user).
    adhoc_user: Option<Box<User>>,
    cancelled: bool,
    /// Fired from `scheduled` without a commit (`scheduled.rs`): the store still holds the notification as
    /// scheduled and none of its deliveries. The next write of it (its first provider answer, a cancel) writes
    /// it and every delivery.
    unsaved: bool,
    accepted_at: Instant,
}

impl Open {
    /// Boxed: the shard's map then holds a pointer per entry, and its free slots (up to half of them right after
    /// it grows) cost 32 bytes each instead of an `Open`'s size.
    fn new(notification: Notification, deliveries: Vec<Delivery>, adhoc_user: Option<User>) -> Box<Open> {
        Box::new(Open {
            notification: Arc::new(notification),
            deliveries: deliveries.into_iter().map(Arc::new).collect(),
            handoffs: Vec::new(),
            adhoc_user: adhoc_user.map(Box::new),
            cancelled: false,
            unsaved: false,
            accepted_at: Instant::now(),
        })
    }

    /// The notification record, to change (copied first if a pending write still holds it).
    fn notification_mut(&mut self) -> &mut Notification {
        Arc::make_mut(&mut self.notification)
    }

    /// The delivery at `index`, to change (copied first if a pending write or its queued job still holds it).
    fn delivery_mut(&mut self, index: usize) -> &mut Delivery {
        Arc::make_mut(&mut self.deliveries[index])
    }

    /// The index of the delivery with this id.
    fn delivery_index(&self, delivery_id: &str) -> Option<usize> {
        self.deliveries.iter().position(|d| d.id == delivery_id)
    }
}

/// Open notifications by id, keyed by the id's [`Key`]: a probe compares the 16 bytes in the table instead of
/// following each candidate's `String` to its text, one cache miss less per lookup in a spike's millions.
#[derive(Default)]
struct OpenMap(HashMap<Key, Box<Open>>);

impl OpenMap {
    fn get(&self, id: &str) -> Option<&Open> {
        self.by_key(&Key::new(id))
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut Open> {
        self.by_key_mut(&Key::new(id))
    }

    fn by_key(&self, key: &Key) -> Option<&Open> {
        self.0.get(key).map(|open| &**open)
    }

    fn by_key_mut(&mut self, key: &Key) -> Option<&mut Open> {
        self.0.get_mut(key).map(|open| &mut **open)
    }

    fn contains_key(&self, id: &str) -> bool {
        self.0.contains_key(&Key::new(id))
    }

    fn insert(&mut self, key: Key, open: Box<Open>) {
        self.0.insert(key, open);
    }

    fn remove(&mut self, id: &str) -> Option<Box<Open>> {
        self.remove_key(&Key::new(id))
    }

    fn remove_key(&mut self, key: &Key) -> Option<Box<Open>> {
        self.0.remove(key)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The user a stored ad-hoc notification plans with: only its owner key survives a restart, not the addresses.
fn stored_adhoc_user(n: &Notification) -> Option<User> {
    n.user_id.is_none().then(|| User::new(n.owner.clone(), n.created_at))
}

pub struct ShardState {
    ctx: Arc<EngineCtx>,
    index: usize,
    users: HashMap<String, User>,
    /// Open notifications by id. Deliveries are found through their notification: a provider outcome comes
    /// with its job, a delivery report with the notification id the store holds for its delivery.
    open: OpenMap,
    /// Deliveries in `sent`, waiting for their report.
    report_waits: ReportWaits,
    /// Scheduled sends due inside the loaded window, and sequence step deadlines.
    timers: Timers,
    /// Due scheduled sends waiting for a provider's room.
    held: held::Held,
    /// The loader's window end: scheduled notifications due by then are kept in memory.
    sched_until: Timestamp,
    /// Scheduled notifications that left the scheduled state here, with the loader's read count when that
    /// commit landed (`u64::MAX` until it lands): a loader read up to that count may still return them.
    left_scheduled: HashMap<Key, Arc<AtomicU64>>,
    /// Entries of `left_scheduled` whose notification has just been written for the first time since it fired
    /// unsaved: the next commit's callback records that it landed (commits land in submission order).
    landing: Vec<Arc<AtomicU64>>,
    /// Running sequences of this shard's users.
    sequences: HashMap<SequenceId, Sequence>,
    /// Notifications forgotten after a failed accept commit: the only ones a reconcile may adopt.
    forgotten: Forgotten,
    /// What this shard's jobs carry back to it.
    link: Arc<ShardLink>,
    /// The answers being recorded: swapped with the link's queue, so both keep their capacity.
    outcomes: Vec<SendOutcome>,
}

impl Actor for Shard {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = ShardArgs;

    async fn pre_start(&self, me: ActorRef<ShardMsg>, args: ShardArgs) -> Result<ShardState, ActorProcessingErr> {
        Ok(ShardState {
            index: args.index,
            users: args.users.into_iter().map(|u| (u.id.clone(), u)).collect(),
            open: OpenMap::default(),
            report_waits: ReportWaits::new(Duration::from_millis(args.ctx.settings.report_timeout_ms)),
            timers: Timers::counting(args.ctx.telemetry.scheduled_timers()),
            held: held::Held::default(),
            sched_until: Timestamp::UNIX_EPOCH,
            left_scheduled: HashMap::default(),
            landing: Vec::new(),
            sequences: HashMap::default(),
            forgotten: Forgotten::default(),
            link: Arc::new(ShardLink { actor: me, outcomes: parking_lot::Mutex::new(Vec::new()) }),
            outcomes: Vec::new(),
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
            ShardMsg::Outcomes => st.on_outcomes(&me),
            ShardMsg::Report(report, notification_id) => st.on_report(&me, report, &notification_id),
            ShardMsg::Cancel(stored, reply) => st.cancel(&me, *stored, reply),
            ShardMsg::Patch(stored, patch, reply) => st.patch(&me, *stored, *patch, reply),
            ShardMsg::Replay(stored, delivery_id, reply) => st.replay(&me, *stored, &delivery_id, reply),
            ShardMsg::Restore(stored) => st.restore(&me, stored),
            ShardMsg::Forget(id) => {
                st.forget(&id);
                st.forgotten.insert(id, Instant::now());
            }
            ShardMsg::Adopt(stored, reply) => drop(reply.send(st.adopt(&me, stored))),
            ShardMsg::ReportWaitOver => st.on_report_wait_over(&me),
            ShardMsg::SchedWindow(until) => st.on_sched_window(&me, until),
            ShardMsg::Arm(notifications, read) => st.on_arm(&me, notifications, read),
            ShardMsg::SchedLoaded(read) => st.on_sched_loaded(read),
            ShardMsg::SchedCommitted(id) => st.on_sched_committed(&me, &id),
            ShardMsg::TimersDue => st.on_timers_due(&me),
            ShardMsg::HeldDue => st.on_held_due(&me),
            ShardMsg::StartSequence(req, reply) => {
                st.ctx.shard_pending[st.index].fetch_sub(1, Ordering::Relaxed);
                st.start_sequence(&me, *req, reply);
            }
            ShardMsg::CancelSequence(id, reply) => st.cancel_sequence(&me, &id, reply),
            ShardMsg::RestoreSequences(sequences) => st.restore_sequences(&me, sequences),
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
                    .map(|d| (d.updated_at, (id.clone(), d.id.clone()))),
            );
            for index in 0..open.deliveries.len() {
                if matches!(open.deliveries[index].status, DeliveryStatus::Queued | DeliveryStatus::Retrying) {
                    jobs.push(job_for(open, index, &self.link));
                }
            }
            jobs.extend(self.progress(me, &Key::new(&id), false, &mut writes));
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
        let adhoc_user = stored_adhoc_user(&notification);
        self.open.insert(Key::new(&notification.id), Open::new(notification, deliveries, adhoc_user));
    }

    /// Re-drives the stored notifications this shard forgot after a failed accept commit (their batch landed
    /// after all), as [`ShardState::restore`] does at start; any other is left alone. Returns how many.
    fn adopt(&mut self, me: &ActorRef<ShardMsg>, stored: Vec<StoredNotification>) -> usize {
        let adopted: Vec<StoredNotification> = stored
            .into_iter()
            .filter(|s| !self.open.contains_key(&s.notification.id) && self.forgotten.take(&s.notification.id))
            .collect();
        let count = adopted.len();
        if count > 0 {
            tracing::info!(shard = self.index, adopted = count, "adopting notifications whose failed commit landed");
            self.restore(me, adopted);
        }
        count
    }

    fn forget(&mut self, id: &str) {
        let key = Key::new(id);
        self.left_scheduled.remove(&key);
        if let Some(open) = self.open.remove_key(&key) {
            self.timers.remove_send(key, scheduled::timer_due(&open.notification));
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
    link: &Arc<ShardLink>,
    writes: &mut Vec<Write>,
    jobs: &mut Vec<DeliveryJob>,
) {
    let deliveries = {
        let fallback;
        // A user deleted meanwhile plans like a user without contacts: everything is filtered.
        let user = match open.adhoc_user.as_deref().or_else(|| users.get(&open.notification.owner)) {
            Some(u) => u,
            None => {
                fallback = User::new(open.notification.owner.clone(), now);
                &fallback
            }
        };
        plan::deliveries_for(&open.notification, user, open.adhoc_user.is_some(), channel, now)
    };
    open.deliveries.reserve_exact(deliveries.len());
    for d in deliveries {
        if let Some(item) = plan::inbox_item(&open.notification, &d, now) {
            writes.push(Write::PutInboxItem(item));
        }
        if let Some(o) = Outcome::of(d.status) {
            ctx.telemetry.outcome(d.provider, o);
        }
        let d = Arc::new(d);
        writes.push(Write::PutDelivery(d.clone()));
        let queued = d.status == DeliveryStatus::Queued;
        open.deliveries.push(d);
        if queued {
            jobs.push(job_for(open, open.deliveries.len() - 1, link));
        }
    }
}

/// Counts a campaign notification's status in its campaign's finals (`delta` +1 as it becomes final, -1 when a
/// DLQ replay reopens it), in the same commit as the status.
fn count_campaign_final(n: &Notification, delta: i64, writes: &mut Vec<Write>) {
    if let Some(campaign) = &n.campaign
        && n.status.is_final()
    {
        writes.push(Write::CountCampaignFinal { campaign: campaign.clone(), status: n.status, delta });
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

/// A dispatcher job for the queued delivery at `index`; registers its hand-off flag so it can be cancelled.
fn job_for(open: &mut Open, index: usize, link: &Arc<ShardLink>) -> DeliveryJob {
    let handoff = Arc::new(AtomicU8::new(QUEUED));
    let key = u32::try_from(index).expect("a notification has few deliveries");
    match open.handoffs.iter_mut().find(|(i, _)| *i == key) {
        Some((_, flag)) => *flag = handoff.clone(),
        None => {
            open.handoffs.reserve_exact(1);
            open.handoffs.push((key, handoff.clone()));
        }
    }
    let delivery = open.deliveries[index].clone();
    let content = open.notification.content(delivery.channel).cloned().unwrap_or_default();
    DeliveryJob {
        attempt: delivery.attempts,
        delivery,
        content,
        accepted_at: open.accepted_at,
        handoff,
        shard: link.clone(),
        expires_at: open.notification.expires_at,
    }
}
