//! Scheduled sends in the shard: accepting one, keeping those due in the loaded window in timers, firing them
//! (or deferring them past quiet hours, or failing them as expired), cancelling and patching them.
//!
//! A scheduled notification lives in the store's scheduled index; this shard holds it in memory (in `open`,
//! status `scheduled`, no deliveries, one timer) only while it is due by `sched_until`, the window end the
//! loader announced (`engine/scheduler.rs` explains why that split loses and duplicates nothing).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use ractor::ActorRef;

use crate::domain::schedule::{quiet_hours_end, resolve_send_at};
use crate::domain::{DeliveryStatus, Notification, NotificationStatus, Priority, User};
use crate::key::Key;
use crate::store::Write;

use super::super::request::{AcceptReply, Claim, NewNotification, NotificationPatch, render};
use super::super::timers::{TimerKey, until};
use super::super::{EngineCtx, EngineError};
use super::delivery::AfterAccept;
use super::{Open, Reply, ShardMsg, ShardState, count_campaign_final, stored_adhoc_user};

impl ShardState {
    /// When `req` is due if it is not to be sent now: its `send_at`, or the end of the user's quiet hours for a
    /// non-critical send, with the reason for the deferral.
    pub(super) fn schedule_for(
        &self,
        req: &NewNotification,
        user: &User,
    ) -> Result<Option<(Timestamp, Option<String>)>, EngineError> {
        let now = self.ctx.clock.now();
        let settings = &self.ctx.scheduling;
        let due = match &req.send_at {
            Some(send_at) => {
                let at =
                    resolve_send_at(send_at, user.timezone.as_deref(), now, settings.min_lead_s, settings.max_lead_s)
                        .map_err(|e| EngineError::invalid(e.field(), e.to_string()))?;
                if req.expires_at.is_some_and(|expires| expires <= at) {
                    return Err(EngineError::invalid("expires_at", "is not after send_at"));
                }
                Some((ceil_ms(at), None))
            }
            None => None,
        };
        let at = due.as_ref().map_or(now, |(at, _)| *at);
        match quiet_end(req.priority, user, at) {
            Some(end) => Ok(Some((end, Some("quiet_hours".into())))),
            None => Ok(due),
        }
    }

    pub(super) fn accept_scheduled(
        &mut self,
        me: &ActorRef<ShardMsg>,
        notification: Notification,
        adhoc_user: Option<User>,
        claims: Vec<Claim>,
        reply: Reply<AcceptReply>,
    ) {
        let id = notification.id.clone();
        let due_ms = notification.send_at.map_or(0, |t| t.as_millisecond());
        let mut writes = Vec::with_capacity(claims.len() + 1);
        writes.push(Write::PutNotification(Arc::new(notification.clone())));
        for channel in &notification.channels {
            self.ctx.telemetry.accepted(*channel);
        }
        self.open.insert(Key::new(&id), Open::new(notification, Vec::new(), adhoc_user));
        self.submit_accept(me, id, writes, claims, AfterAccept::Scheduled { due_ms }, reply);
    }

    /// A scheduled notification's record is durable: keep it in a timer if it is due inside the loaded
    /// window, otherwise leave it to the loader.
    pub(super) fn on_sched_committed(&mut self, me: &ActorRef<ShardMsg>, id: &str) {
        let Some(open) = self.open.get(id) else { return };
        if open.notification.status != NotificationStatus::Scheduled {
            return;
        }
        let due = timer_due(&open.notification);
        if due <= self.sched_until {
            self.timers.insert_send(Key::new(id), due);
            self.arm_timers(me);
        } else {
            self.open.remove(id);
        }
    }

    pub(super) fn on_sched_window(&mut self, me: &ActorRef<ShardMsg>, until: Timestamp) {
        self.sched_until = self.sched_until.max(until);
        // The loader's tick doubles as a check of the timers against the clock, which tests move.
        self.run_due_timers(me);
    }

    pub(super) fn on_arm(&mut self, me: &ActorRef<ShardMsg>, notifications: Vec<Notification>, _read: u64) {
        for n in notifications {
            let key = Key::new(&n.id);
            if n.status != NotificationStatus::Scheduled
                || self.open.by_key(&key).is_some()
                || self.left_scheduled.contains_key(&key)
            {
                continue;
            }
            let due = timer_due(&n);
            let adhoc_user = stored_adhoc_user(&n);
            self.timers.insert_send(key.clone(), due);
            self.open.insert(key, Open::new(n, Vec::new(), adhoc_user));
        }
        self.run_due_timers(me);
    }

    /// Forgets the notifications that left the scheduled state before the reads up to `read` began: no later
    /// read can return them.
    pub(super) fn on_sched_loaded(&mut self, read: u64) {
        self.left_scheduled.retain(|_, landed| landed.load(Ordering::Acquire) >= read);
    }

    pub(super) fn on_timers_due(&mut self, me: &ActorRef<ShardMsg>) {
        self.timers.fired();
        self.run_due_timers(me);
    }

    /// Fires every timer due by the clock, and the held sends that have room again, in due order, as one
    /// commit. A due send whose provider has no room is held instead (`held.rs`).
    pub(super) fn run_due_timers(&mut self, me: &ActorRef<ShardMsg>) {
        let now = self.ctx.clock.now();
        let due = self.timers.pop_due(now);
        let mut writes = Vec::new();
        let mut jobs = Vec::new();
        let mut left = Vec::new();
        let mut unsaved = Vec::new();
        while let Some(key) = self.next_unheld() {
            let before = (jobs.len(), unsaved.len());
            self.fire(me, &key, now, &mut writes, &mut jobs, &mut left, &mut unsaved);
            self.ctx.reserve_all(&jobs[before.0..]);
            self.ctx.reserve_all(&unsaved[before.1..]);
        }
        for (at, key) in due {
            let before = (jobs.len(), unsaved.len());
            match key {
                TimerKey::Send(key) => {
                    // A timer that no longer matches its notification's due time (or state) is left be.
                    let Some(o) = self.open.by_key(&key).filter(|o| {
                        o.notification.status == NotificationStatus::Scheduled && timer_due(&o.notification) == at
                    }) else {
                        continue;
                    };
                    match self.hold_for(&o.notification) {
                        Some((kind, route)) => self.hold(kind, key, route),
                        None => self.fire(me, &key, now, &mut writes, &mut jobs, &mut left, &mut unsaved),
                    }
                }
                TimerKey::Step(key) => self.on_step_timeout(me, &key.text(), &mut writes, &mut jobs),
            }
            self.ctx.reserve_all(&jobs[before.0..]);
            self.ctx.reserve_all(&unsaved[before.1..]);
        }
        // Sends fired unsaved go at once: nothing of theirs waits for the store.
        self.ctx.dispatch_reserved(unsaved);
        if !writes.is_empty() || !jobs.is_empty() {
            let ctx = self.ctx.clone();
            let shard = me.clone();
            let landing = std::mem::take(&mut self.landing);
            self.ctx.submit(
                writes,
                Box::new(move |result| match result {
                    Ok(()) => {
                        landed(&ctx, landing.iter().chain(left.iter().map(|(_, _, landed)| landed)));
                        ctx.dispatch_reserved(jobs);
                    }
                    Err(e) => {
                        // Not fired as far as anyone knows: drop the in-memory state. The loader reads what is
                        // still scheduled again; a batch that landed anyway is adopted by the reconcile.
                        ctx.telemetry.store_error(&e);
                        ctx.unreserve_all(&jobs);
                        for (id, due_ms, _) in left {
                            let _ = shard.cast(ShardMsg::Forget(id.clone()));
                            ctx.reconcile.accept_failed(&id, &[]);
                            ctx.rewind_schedule(due_ms);
                        }
                    }
                }),
            );
        }
        self.arm_timers(me);
        self.arm_held(me);
    }

    /// A scheduled notification is due: fail it if it expired, defer it past quiet hours, or plan and dispatch
    /// its deliveries.
    ///
    /// A plain fire (every delivery queued for a provider, nothing else changed) is not written: its jobs go to
    /// `unsaved`, to be dispatched at once, and the notification stays `scheduled` in the store until its first
    /// provider answer writes it with every delivery (`Open::unsaved`). A crash in between loses nothing: the
    /// restart fires it again from the store, as it re-sends a queued delivery, and what was in flight is
    /// bounded by the same in-flight window. At a 30,000/s spike this commit was a third of the store's work.
    #[allow(clippy::too_many_arguments)]
    fn fire(
        &mut self,
        me: &ActorRef<ShardMsg>,
        key: &Key,
        now: Timestamp,
        writes: &mut Vec<Write>,
        jobs: &mut Vec<super::DeliveryJob>,
        left: &mut Vec<(String, i64, Arc<AtomicU64>)>,
        unsaved: &mut Vec<super::DeliveryJob>,
    ) {
        let Some(open) = self.open.by_key_mut(key) else { return };
        if open.notification.status != NotificationStatus::Scheduled {
            return;
        }
        let n = open.notification_mut();
        let due_ms = n.send_at.map_or(0, |t| t.as_millisecond());
        n.updated_at = now;
        if n.expires_at.is_some_and(|expires| expires <= now) {
            n.status = NotificationStatus::Failed;
            n.reason = Some("expired: expires_at passed before the send was due".into());
            count_campaign_final(n, 1, writes);
            writes.push(Write::PutNotification(open.notification.clone()));
            self.open.remove_key(key);
            left.push((key.to_string(), due_ms, self.leave_scheduled(key.clone())));
            return;
        }
        let user = open.adhoc_user.as_deref().or_else(|| self.users.get(&open.notification.owner));
        if let Some(end) = user.and_then(|u| quiet_end(open.notification.priority, u, now)) {
            let n = open.notification_mut();
            n.send_at = Some(end);
            n.reason = Some("quiet_hours".into());
            writes.push(Write::PutNotification(open.notification.clone()));
            if end <= self.sched_until {
                self.timers.insert_send(key.clone(), end);
            } else {
                self.open.remove_key(key);
            }
            return;
        }
        let n = open.notification_mut();
        n.status = NotificationStatus::Dispatching;
        // Ordering among the recipient's sends follows when it is really sent, not when it was requested.
        n.seq = self.ctx.next_seq();
        open.accepted_at = Instant::now();
        let landed = self.leave_scheduled(key.clone());
        let mut fired = Vec::new();
        let fired_jobs = self.progress(me, key, true, &mut fired);
        let plain = self.open.by_key_mut(key).filter(|o| {
            !o.deliveries.is_empty()
                && o.deliveries.iter().all(|d| d.status == DeliveryStatus::Queued)
                && fired.iter().all(|w| matches!(w, Write::PutNotification(_) | Write::PutDelivery(_)))
        });
        match plain {
            Some(open) => {
                open.unsaved = true;
                unsaved.extend(fired_jobs);
            }
            None => {
                writes.append(&mut fired);
                jobs.extend(fired_jobs);
                left.push((key.to_string(), due_ms, landed));
            }
        }
    }

    /// Remembers that `key` left the scheduled state here, until no loader read can return it any more.
    fn leave_scheduled(&mut self, key: Key) -> Arc<AtomicU64> {
        let landed = Arc::new(AtomicU64::new(u64::MAX));
        self.left_scheduled.insert(key, landed.clone());
        landed
    }

    /// DELETE of a scheduled notification, in memory or only in the store.
    pub(super) fn cancel_scheduled(&mut self, notification: Notification, reply: Reply<NotificationStatus>) {
        let key = Key::new(&notification.id);
        let mut notification = match self.open.remove_key(&key) {
            Some(open) => Arc::unwrap_or_clone(open.notification),
            None => notification,
        };
        self.timers.remove_send(key.clone(), timer_due(&notification));
        let now = self.ctx.clock.now();
        notification.status = NotificationStatus::Cancelled;
        notification.updated_at = now;
        let left = self.leave_scheduled(key);
        let ctx = self.ctx.clone();
        let mut writes = Vec::with_capacity(2);
        count_campaign_final(&notification, 1, &mut writes);
        writes.push(Write::PutNotification(Arc::new(notification)));
        self.ctx.submit(
            writes,
            Box::new(move |result| {
                if result.is_ok() {
                    landed(&ctx, [&left]);
                }
                let _ = reply.send(result.map(|()| NotificationStatus::Cancelled).map_err(Into::into));
            }),
        );
    }

    /// PATCH: a new message and/or `send_at`, until `scheduling.patch_cutoff_s` before the send is due.
    pub(super) fn patch(
        &mut self,
        me: &ActorRef<ShardMsg>,
        stored: Notification,
        patch: NotificationPatch,
        reply: Reply<Notification>,
    ) {
        let id = stored.id.clone();
        let mut n = self.open.get(&id).map_or(stored, |o| Notification::clone(&o.notification));
        let now = self.ctx.clock.now();
        let settings = &self.ctx.scheduling;
        if n.status != NotificationStatus::Scheduled {
            let status = format!("{:?}", n.status).to_lowercase();
            return drop(reply.send(Err(EngineError::Conflict(format!(
                "only a scheduled notification can be changed; this one is {status}"
            )))));
        }
        let cutoff = SignedDuration::from_secs(i64::try_from(settings.patch_cutoff_s).unwrap_or(i64::MAX));
        let due = n.send_at.unwrap_or(Timestamp::UNIX_EPOCH);
        if now.checked_add(cutoff).is_ok_and(|limit| limit >= due) {
            return drop(reply.send(Err(EngineError::Conflict(format!(
                "a scheduled notification can be changed until {} s before it is due",
                settings.patch_cutoff_s
            )))));
        }
        let adhoc_user = stored_adhoc_user(&n);
        let user = adhoc_user.as_ref().or_else(|| self.users.get(&n.owner));
        let (locale, tz) = user.map_or((None, None), |u| (u.locale.clone(), u.timezone.clone()));
        if let Some(message) = &patch.message {
            match render(message, &n.channels, locale.as_deref()) {
                Ok(contents) => n.contents = contents,
                Err(e) => return drop(reply.send(Err(e))),
            }
            n.template_id = message.template_id();
        }
        if let Some(send_at) = &patch.send_at {
            match resolve_send_at(send_at, tz.as_deref(), now, settings.min_lead_s, settings.max_lead_s) {
                Ok(at) if n.expires_at.is_some_and(|expires| expires <= at) => {
                    return drop(reply.send(Err(EngineError::invalid("send_at", "is not before expires_at"))));
                }
                Ok(at) => {
                    n.send_at = Some(ceil_ms(at));
                    n.reason = None;
                }
                Err(e) => return drop(reply.send(Err(EngineError::invalid(e.field(), e.to_string())))),
            }
        }
        n.updated_at = now;
        if let Some(open) = self.open.get(&id) {
            self.timers.remove_send(Key::new(&id), timer_due(&open.notification));
        }
        let record = Arc::new(n.clone());
        match self.open.get_mut(&id) {
            Some(open) => open.notification = record.clone(),
            None => {
                self.open.insert(Key::new(&id), Open::new(n.clone(), Vec::new(), adhoc_user));
            }
        }
        let shard = me.clone();
        self.ctx.submit(
            vec![Write::PutNotification(record)],
            Box::new(move |result| {
                match &result {
                    Ok(()) => drop(shard.cast(ShardMsg::SchedCommitted(id))),
                    Err(_) => drop(shard.cast(ShardMsg::Forget(id))),
                }
                let _ = reply.send(result.map(|()| n).map_err(Into::into));
            }),
        );
    }

    /// Schedules the shard's wake-up for its earliest timer, unless one is already scheduled for it.
    pub(super) fn arm_timers(&mut self, me: &ActorRef<ShardMsg>) {
        if let Some(due) = self.timers.arm() {
            let me = me.clone();
            let delay = until(self.ctx.clock.now(), due);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = me.cast(ShardMsg::TimersDue);
            });
        }
    }
}

/// The end of `user`'s quiet hours if a send of `priority` at `at` falls inside them (critical sends never wait).
fn quiet_end(priority: Priority, user: &User, at: Timestamp) -> Option<Timestamp> {
    if priority == Priority::Critical {
        return None;
    }
    let quiet = user.preferences.quiet_hours.as_ref()?;
    quiet_hours_end(quiet, user.timezone.as_deref(), at).map(ceil_ms)
}

/// When a scheduled notification's timer is set: its `send_at`.
pub(super) fn timer_due(n: &Notification) -> Timestamp {
    n.send_at.unwrap_or(Timestamp::UNIX_EPOCH)
}

/// `t` rounded up to the millisecond: the index orders by milliseconds, and rounding up never fires early.
fn ceil_ms(t: Timestamp) -> Timestamp {
    let floor = Timestamp::from_millisecond(t.as_millisecond()).unwrap_or(t);
    if floor < t { floor.checked_add(Duration::from_millis(1)).unwrap_or(t) } else { floor }
}

/// The commit that took the notifications of `landing` out of the scheduled state (a fire, a cancel, the first
/// write of a send fired unsaved) has landed: loader reads that start from now on see them as they are, so the
/// shard may forget them once those reads are over (`left_scheduled`).
pub(super) fn landed<'a>(ctx: &EngineCtx, landing: impl IntoIterator<Item = &'a Arc<AtomicU64>>) {
    let reads = ctx.sched_reads.load(Ordering::Acquire);
    for landed in landing {
        landed.store(reads, Ordering::Release);
    }
}
