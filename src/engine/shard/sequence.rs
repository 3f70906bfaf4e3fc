//! Sequences in the shard that owns their user: step N+1 becomes a notification only once step N's notification
//! is final. "Final" for a delivery that a provider accepted means its delivery report arrived (or the report
//! wait ran out), so an alimtalk step is done when Bizppurio's report says so, not when the send was accepted.
//!
//! The step's notification finishing, the sequence moving on and the next step's notification are written in
//! one commit, so a crash leaves either the old step running or the next one started, never both or neither.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use ractor::ActorRef;

use crate::domain::{
    Notification, NotificationStatus, OnFailure, Sequence, SequenceStatus, SequenceStep, StepRef, StepStatus,
};
use crate::key::Key;
use crate::store::Write;

use super::super::EngineError;
use super::super::dispatcher::DeliveryJob;
use super::super::request::NewSequence;
use super::delivery::cancel_unhanded;
use super::{Open, Reply, ShardMsg, ShardState};

impl ShardState {
    /// `POST /v1/sequences`: renders every step now (a missing template parameter is a 422 up front), then starts
    /// step 0 in the same commit as the sequence record.
    pub(super) fn start_sequence(&mut self, me: &ActorRef<ShardMsg>, req: NewSequence, reply: Reply<Sequence>) {
        let Some(user) = self.users.get(&req.user_id) else {
            return drop(
                reply.send(Err(EngineError::invalid("user_id", "unknown user; create it with PUT /v1/users/{id}"))),
            );
        };
        let locale = user.locale.clone();
        let mut steps = Vec::with_capacity(req.steps.len());
        for (i, step) in req.steps.into_iter().enumerate() {
            let contents = match super::super::request::render(&step.message, &step.channels, locale.as_deref()) {
                Ok(contents) => contents,
                Err(EngineError::Invalid { field, message }) => {
                    return drop(
                        reply.send(Err(EngineError::Invalid { field: format!("steps[{i}].{field}"), message })),
                    );
                }
                Err(e) => return drop(reply.send(Err(e))),
            };
            let template_id = step.message.template_id();
            steps.push(SequenceStep {
                category: step.category,
                channels: step.channels,
                strategy: step.strategy,
                priority: step.priority,
                template_id,
                contents,
                metadata: step.metadata,
                status: StepStatus::Pending,
                notification_id: None,
                started_at: None,
                ended_at: None,
                reason: None,
            });
        }
        let now = self.ctx.clock.now();
        let sequence = Sequence {
            id: crate::domain::new_id(),
            user_id: req.user_id,
            steps,
            step_timeout_ms: req.step_timeout_ms,
            on_failure: req.on_failure,
            status: SequenceStatus::Running,
            current: 0,
            created_at: now,
            updated_at: now,
        };
        let id = sequence.id.clone();
        self.sequences.insert(id.clone(), sequence);
        let mut writes = Vec::new();
        let jobs = self.start_step(me, &id, now, &mut writes);
        if let Some(sequence) = self.sequences.get(&id) {
            writes.push(Write::PutSequence(Arc::new(sequence.clone())));
        }
        let snapshot = self.sequences.get(&id).cloned();
        let ctx = self.ctx.clone();
        self.ctx.submit(
            writes,
            Box::new(move |result| match result {
                Ok(()) => {
                    ctx.dispatch_all(jobs);
                    let _ = reply.send(snapshot.ok_or(EngineError::Unavailable("sequence vanished".into())));
                }
                Err(e) => {
                    ctx.telemetry.store_error(&e);
                    let _ = reply.send(Err(e.into()));
                }
            }),
        );
    }

    /// Turns the sequence's current step into a notification and plans it (the caller writes the sequence).
    fn start_step(
        &mut self,
        me: &ActorRef<ShardMsg>,
        sequence_id: &str,
        now: Timestamp,
        writes: &mut Vec<Write>,
    ) -> Vec<DeliveryJob> {
        let seq = self.ctx.next_seq();
        let Some(sequence) = self.sequences.get_mut(sequence_id) else { return Vec::new() };
        let index = sequence.current;
        let owner = sequence.user_id.clone();
        let deadline = now.checked_add(Duration::from_millis(sequence.step_timeout_ms)).unwrap_or(now);
        sequence.updated_at = now;
        let step = &mut sequence.steps[index];
        let notification = Notification {
            id: crate::domain::new_id(),
            seq,
            owner: owner.clone(),
            user_id: Some(owner),
            category: step.category,
            channels: step.channels.clone(),
            strategy: step.strategy,
            priority: step.priority,
            template_id: step.template_id.clone(),
            contents: step.contents.clone(),
            status: NotificationStatus::Dispatching,
            current_channel: 0,
            idempotency_key: None,
            metadata: step.metadata.clone().map(Box::new),
            expires_at: None,
            send_at: None,
            reason: None,
            sequence: Some(StepRef { sequence_id: sequence_id.to_string(), step: index }),
            campaign: None,
            created_at: now,
            updated_at: now,
        };
        step.status = StepStatus::Running;
        step.notification_id = Some(notification.id.clone());
        step.started_at = Some(now);
        self.timers.insert_step(Key::new(sequence_id), deadline);
        self.arm_timers(me);
        let key = Key::new(&notification.id);
        self.open.insert(key.clone(), Open::new(notification, Vec::new(), None));
        self.progress(me, &key, true, writes)
    }

    /// A step's notification became final: record the step and move on (the caller writes the notification).
    /// A step that already timed out records nothing more: its late outcome is on the notification only.
    pub(super) fn on_step_final(
        &mut self,
        me: &ActorRef<ShardMsg>,
        step: &StepRef,
        status: NotificationStatus,
        writes: &mut Vec<Write>,
    ) -> Vec<DeliveryJob> {
        let Some(sequence) = self.sequences.get(&step.sequence_id) else { return Vec::new() };
        if sequence.current != step.step || sequence.steps[step.step].status != StepStatus::Running {
            return Vec::new();
        }
        let (outcome, reason) = match status {
            NotificationStatus::Completed => (StepStatus::Delivered, None),
            NotificationStatus::Cancelled => (StepStatus::Cancelled, Some("its notification was cancelled".into())),
            _ => (StepStatus::Failed, Some("no delivery was delivered".into())),
        };
        self.end_step(me, &step.sequence_id, outcome, reason, writes)
    }

    /// The running step used up `step_timeout`: what was not handed to a provider is cancelled, and the
    /// sequence moves on as after a failure.
    pub(super) fn on_step_timeout(
        &mut self,
        me: &ActorRef<ShardMsg>,
        sequence_id: &str,
        writes: &mut Vec<Write>,
        jobs: &mut Vec<DeliveryJob>,
    ) {
        let Some(sequence) = self.sequences.get(sequence_id) else { return };
        let Some(step) = sequence.steps.get(sequence.current) else { return };
        if step.status != StepStatus::Running {
            return;
        }
        let notification_id = step.notification_id.clone();
        let reason = format!("step_timeout: not delivered within {} ms", sequence.step_timeout_ms);
        // The step ends first, so its notification settling below no longer counts for the sequence.
        jobs.extend(self.end_step(me, sequence_id, StepStatus::TimedOut, Some(reason), writes));
        if let Some(key) = notification_id.as_deref().map(Key::new)
            && let Some(open) = self.open.by_key_mut(&key)
        {
            cancel_unhanded(open, self.ctx.clock.now(), writes);
            jobs.extend(self.progress(me, &key, true, writes));
        }
    }

    /// Records the current step's outcome, then starts the next step, or ends the sequence.
    fn end_step(
        &mut self,
        me: &ActorRef<ShardMsg>,
        sequence_id: &str,
        outcome: StepStatus,
        reason: Option<String>,
        writes: &mut Vec<Write>,
    ) -> Vec<DeliveryJob> {
        let now = self.ctx.clock.now();
        self.timers.remove_step(&Key::new(sequence_id));
        let Some(sequence) = self.sequences.get_mut(sequence_id) else { return Vec::new() };
        let step = &mut sequence.steps[sequence.current];
        step.status = outcome;
        step.reason = reason;
        step.ended_at = Some(now);
        sequence.updated_at = now;
        let stop = outcome != StepStatus::Delivered && sequence.on_failure == OnFailure::Stop;
        sequence.current += 1;
        let mut jobs = Vec::new();
        if stop {
            finish(sequence, SequenceStatus::Failed, StepStatus::Skipped, now);
        } else if sequence.current == sequence.steps.len() {
            sequence.status = SequenceStatus::Completed;
        } else {
            jobs = self.start_step(me, sequence_id, now, writes);
        }
        // The next step may have finished at once (everything filtered) and ended the sequence meanwhile.
        if let Some(sequence) = self.sequences.get(sequence_id) {
            writes.push(Write::PutSequence(Arc::new(sequence.clone())));
            if sequence.status.is_final() {
                self.sequences.remove(sequence_id);
            }
        }
        jobs
    }

    /// `DELETE /v1/sequences/{id}`: the running step's unsent deliveries and every later step are cancelled.
    pub(super) fn cancel_sequence(&mut self, me: &ActorRef<ShardMsg>, id: &str, reply: Reply<Sequence>) {
        let Some(mut sequence) = self.sequences.remove(id) else {
            return drop(reply.send(Err(EngineError::Conflict("sequence is already final".into()))));
        };
        let now = self.ctx.clock.now();
        self.timers.remove_step(&Key::new(id));
        let mut writes = Vec::new();
        let mut jobs = Vec::new();
        if let Some(step) = sequence.steps.get_mut(sequence.current) {
            step.status = StepStatus::Cancelled;
            step.ended_at = Some(now);
            if let Some(key) = step.notification_id.as_deref().map(Key::new)
                && let Some(open) = self.open.by_key_mut(&key)
            {
                cancel_unhanded(open, now, &mut writes);
                jobs = self.progress(me, &key, true, &mut writes);
            }
        }
        sequence.current += 1;
        finish(&mut sequence, SequenceStatus::Cancelled, StepStatus::Cancelled, now);
        writes.push(Write::PutSequence(Arc::new(sequence.clone())));
        let ctx = self.ctx.clone();
        self.ctx.submit(
            writes,
            Box::new(move |result| {
                ctx.dispatch_all(jobs);
                let _ = reply.send(result.map(|()| sequence).map_err(Into::into));
            }),
        );
    }

    /// Running sequences read from the store at start, before their step notifications are restored.
    pub(super) fn restore_sequences(&mut self, me: &ActorRef<ShardMsg>, sequences: Vec<Sequence>) {
        for sequence in sequences {
            if let Some(started) = sequence.steps.get(sequence.current).and_then(|s| s.started_at) {
                let deadline = started.checked_add(Duration::from_millis(sequence.step_timeout_ms)).unwrap_or(started);
                self.timers.insert_step(Key::new(&sequence.id), deadline);
            }
            self.sequences.insert(sequence.id.clone(), sequence);
        }
        self.arm_timers(me);
    }
}

/// Ends `sequence` with `status`; the steps after the current one get `rest`.
fn finish(sequence: &mut Sequence, status: SequenceStatus, rest: StepStatus, now: Timestamp) {
    for step in sequence.steps.iter_mut().skip(sequence.current) {
        step.status = rest;
        step.ended_at = Some(now);
    }
    sequence.current = sequence.steps.len();
    sequence.status = status;
    sequence.updated_at = now;
}
