//! The actor engine: a supervisor, N shard actors (users hashed by id) and one dispatcher per provider.
//!
//! [`Engine`] is the handle the API uses. The flow of a notification: the API asks the owning shard to accept
//! it; the shard renders, filters and plans deliveries and submits them to the store; once committed, the 202 is
//! answered and the jobs go to the dispatchers, which send them through the [`crate::providers::Provider`]s
//! and report each outcome back to the shard, which records it and releases the dispatcher's slot.
//! See `docs/engine-semantics.md` for the guarantees.

mod accept;
mod campaign;
mod dispatcher;
mod error;
mod idempotency;
mod inbox_hub;
mod outcome;
mod plan;
mod pressure;
mod reconcile;
mod report_wait;
mod request;
mod scheduler;
mod shard;
mod timers;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use parking_lot::RwLock;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio_util::sync::CancellationToken;

use crate::config::{EngineSettings, SchedulingSettings, Settings};
use crate::domain::{
    Campaign, Channel, Delivery, Device, Notification, NotificationStatus, Preferences, Priority, ProviderKind,
    Sequence, Template, User,
};
use crate::providers::{Provider, Report};
use crate::store::{CommitCallback, Page, Store, StoreError, StoredNotification, Write};
use crate::telemetry::Telemetry;

use accept::Acceptor;
pub use campaign::CampaignCommand;
use campaign::{Campaigns, Templates};
pub use dispatcher::{DeliveryJob, DispatcherHandle};
pub use error::EngineError;
pub use idempotency::{IdempotencyIndex, Reservation, StableHasher, stable_hash};
pub use inbox_hub::{InboxHub, InboxSubscription, STREAM_BUFFER, StreamEvent};
/// Public for `benches/components` (routing): planning is the shard's per-recipient routing step.
pub use plan::deliveries_for;
pub use request::{
    AcceptReply, AdHocRecipient, Claim, Message, NewAudience, NewCampaign, NewNotification, NewSequence, NewStep,
    NotificationPatch, UserUpdate,
};
use shard::{Shard, ShardArgs, ShardMsg};
pub use timers::Clock;

/// What the actors share: the store, the dispatchers, counters and settings.
pub struct EngineCtx {
    pub store: Arc<dyn Store>,
    pub telemetry: Arc<Telemetry>,
    pub idempotency: Arc<IdempotencyIndex>,
    pub settings: EngineSettings,
    pub scheduling: SchedulingSettings,
    /// The wall clock of scheduling decisions (tests move it forward).
    pub clock: Arc<Clock>,
    /// Reads of the scheduled index started so far (see `scheduler.rs`).
    sched_reads: AtomicU64,
    /// The earliest due time (ms) the loader must read again (`i64::MAX`: none), after a failed commit.
    sched_rewind: AtomicI64,
    /// Open in-app stream connections; inbox commits are published to it (see [`EngineCtx::submit`]).
    pub inbox: Arc<InboxHub>,
    /// Claims of failed accepts waiting for a reconcile with the store (`reconcile.rs`).
    reconcile: reconcile::Reconciler,
    dispatchers: Vec<Option<DispatcherHandle>>,
    /// Accept requests sent to each shard and not yet handled (admission control).
    shard_pending: Vec<AtomicUsize>,
    seq: AtomicU64,
    /// How long transactional accepts take: campaign fan-outs back off when it grows (`pressure.rs`).
    transactional: pressure::TransactionalDelay,
}

impl EngineCtx {
    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Submits writes for group commit. Inbox changes among them reach the stream hub after they land, so
    /// the shard submits through here rather than to the store directly.
    fn submit(&self, writes: Vec<Write>, done: CommitCallback) {
        let done = self.inbox.after_commit(&writes, done);
        self.store.submit(writes, done);
    }

    /// [`EngineCtx::submit`] and wait.
    async fn commit(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(writes, Box::new(move |result| drop(tx.send(result))));
        rx.await.unwrap_or_else(|_| Err(StoreError::Unavailable("store writer stopped".into())))
    }

    /// A commit that made or fired a scheduled notification due at `due_ms` failed: the loader reads the index
    /// again from there, so whatever the store still holds as scheduled is armed again.
    fn rewind_schedule(&self, due_ms: i64) {
        self.sched_rewind.fetch_min(due_ms, Ordering::AcqRel);
    }

    fn dispatcher(&self, kind: ProviderKind) -> &DispatcherHandle {
        self.dispatchers[kind.index()].as_ref().expect("every provider that gets jobs has a dispatcher")
    }

    /// The first provider of `channels` whose dispatcher holds `limit(capacity)` jobs or more that a job of
    /// `priority` would wait behind (its lane and the more urgent ones). Admission refuses on it; a due
    /// scheduled send waits for it (`shard/held.rs`). The in-app channel has no dispatcher.
    fn backed_up(
        &self,
        mut providers: impl Iterator<Item = ProviderKind>,
        priority: Priority,
        limit: impl Fn(usize) -> usize,
    ) -> Option<ProviderKind> {
        providers.find(|k| {
            self.dispatchers[k.index()].as_ref().is_some_and(|d| d.queued_ahead_of(priority) >= limit(d.capacity))
        })
    }

    fn dispatch_all(&self, jobs: Vec<DeliveryJob>) {
        self.reserve_all(&jobs);
        self.dispatch_reserved(jobs);
    }

    /// Counts `jobs` as queued before their commit (fired scheduled sends: `shard/held.rs`); then
    /// [`EngineCtx::dispatch_reserved`] or [`EngineCtx::unreserve_all`].
    fn reserve_all(&self, jobs: &[DeliveryJob]) {
        for job in jobs {
            self.dispatcher(job.provider()).reserve(job);
        }
    }

    /// Hands `jobs` to their dispatchers, one message per dispatcher (a fired batch or a commit's follow-ups
    /// are mostly for one provider), each in the order of `jobs`.
    fn dispatch_reserved(&self, mut jobs: Vec<DeliveryJob>) {
        while let Some(provider) = jobs.first().map(DeliveryJob::provider) {
            let others = match jobs.iter().position(|j| j.provider() != provider) {
                None => Vec::new(),
                Some(_) => {
                    let (mine, others) = jobs.into_iter().partition(|j| j.provider() == provider);
                    jobs = mine;
                    others
                }
            };
            self.dispatcher(provider).dispatch_reserved(jobs);
            jobs = others;
        }
    }

    fn unreserve_all(&self, jobs: &[DeliveryJob]) {
        for job in jobs {
            self.dispatcher(job.provider()).unreserve(job);
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = Duration::from_millis(self.settings.retry_base_ms);
        outcome::backoff(base, Duration::from_millis(self.settings.retry_max_ms), attempt)
    }
}

/// Restarts nothing: a failed shard or dispatcher means a bug, and its in-memory state is gone, so the
/// supervisor stops the process; the restart recovery path (reload open work from the store) takes over.
struct Supervisor;

impl Actor for Supervisor {
    type Msg = ();
    type State = CancellationToken;
    type Arguments = CancellationToken;

    async fn pre_start(
        &self,
        _: ActorRef<()>,
        shutdown: CancellationToken,
    ) -> Result<CancellationToken, ActorProcessingErr> {
        Ok(shutdown)
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<()>,
        event: SupervisionEvent,
        shutdown: &mut CancellationToken,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                tracing::error!(actor = ?cell.get_name(), %error, "engine actor failed; shutting down for recovery");
                shutdown.cancel();
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) if !shutdown.is_cancelled() => {
                tracing::error!(actor = ?cell.get_name(), ?reason, "engine actor stopped; shutting down for recovery");
                shutdown.cancel();
            }
            _ => {}
        }
        Ok(())
    }
}

/// The engine as the API sees it.
pub struct Engine {
    ctx: Arc<EngineCtx>,
    /// The shards and the accept path, shared with campaign fan-outs.
    front: Arc<Acceptor>,
    templates: Templates,
    campaigns: Arc<Campaigns>,
    supervisor: ActorRef<()>,
    call_timeout: Duration,
    /// Stops the scheduled-send loader, the idempotency purge and the campaign fan-outs.
    loader: CancellationToken,
}

impl Engine {
    /// Loads state from the store, starts the actors and re-drives every delivery that was not final.
    pub async fn start(
        settings: &Settings,
        store: Arc<dyn Store>,
        providers: Vec<Arc<dyn Provider>>,
        telemetry: Arc<Telemetry>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Engine>, EngineError> {
        let (supervisor, _) = Actor::spawn(None, Supervisor, shutdown.clone())
            .await
            .map_err(|e| EngineError::Unavailable(format!("supervisor: {e}")))?;
        let mut dispatchers: Vec<Option<DispatcherHandle>> = vec![None; ProviderKind::ALL.len()];
        for provider in providers {
            let kind = provider.kind();
            let queued = Arc::new(dispatcher::Queued::default());
            let args = dispatcher::DispatcherArgs {
                kind,
                provider,
                limits: settings.providers.limits[&kind].clone(),
                queued: queued.clone(),
                telemetry: telemetry.clone(),
            };
            // Unnamed: ractor's name registry is process-global, and tests run several engines in one process.
            let (actor, _) = Actor::spawn_linked(None, dispatcher::Dispatcher, args, supervisor.get_cell())
                .await
                .map_err(|e| EngineError::Unavailable(format!("dispatcher: {e}")))?;
            dispatchers[kind.index()] =
                Some(DispatcherHandle { actor, queued, capacity: settings.engine.queue_capacity });
        }

        let now = Timestamp::now();
        let idempotency = Arc::new(IdempotencyIndex::default());
        for (key, entry) in store.idempotency_entries(now).await? {
            idempotency.restore(key, entry);
        }
        let n = settings.engine.shards;
        let ctx = Arc::new(EngineCtx {
            store: store.clone(),
            inbox: InboxHub::new(store.clone(), telemetry.clone(), STREAM_BUFFER),
            telemetry,
            idempotency,
            reconcile: reconcile::Reconciler::default(),
            settings: settings.engine.clone(),
            scheduling: settings.scheduling.clone(),
            clock: Arc::new(Clock::default()),
            sched_reads: AtomicU64::new(0),
            sched_rewind: AtomicI64::new(i64::MAX),
            dispatchers,
            shard_pending: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            transactional: Default::default(),
            seq: AtomicU64::new(store.max_seq().await?),
        });
        let mut users_by_shard: Vec<Vec<User>> = (0..n).map(|_| Vec::new()).collect();
        for user in store.users().await? {
            users_by_shard[shard_index(&user.id, n)].push(user);
        }
        let mut shards = Vec::with_capacity(n);
        for (index, users) in users_by_shard.into_iter().enumerate() {
            let args = ShardArgs { ctx: ctx.clone(), index, users };
            let (shard, _) = Actor::spawn_linked(None, Shard, args, supervisor.get_cell())
                .await
                .map_err(|e| EngineError::Unavailable(format!("shard: {e}")))?;
            shards.push(shard);
        }
        let templates = store.templates().await?.into_iter().map(|t| (t.id.clone(), Arc::new(t))).collect();
        let templates: Templates = Arc::new(RwLock::new(templates));
        let call_timeout = Duration::from_millis(settings.server.request_timeout_ms);
        let front = Arc::new(Acceptor { ctx: ctx.clone(), shards, call_timeout });
        let loader = shutdown.child_token();
        let campaigns = Campaigns::new(ctx.clone(), front.clone(), templates.clone(), loader.clone());
        let engine = Engine { ctx, front, templates, campaigns, supervisor, call_timeout, loader };
        engine.restore().await?;
        let shards = engine.front.shards.clone();
        tokio::spawn(scheduler::run_loader(engine.ctx.clone(), shards.clone(), engine.loader.clone()));
        tokio::spawn(idempotency::purge_expired(engine.ctx.idempotency.clone(), engine.loader.clone()));
        reconcile::spawn(engine.ctx.clone(), shards, shutdown);
        engine.campaigns.resume_all().await?;
        Ok(Arc::new(engine))
    }

    /// Hands every running sequence and then every open notification back to its shard, in acceptance order.
    async fn restore(&self) -> Result<(), EngineError> {
        let shards = &self.front.shards;
        let mut sequences: Vec<Vec<Sequence>> = (0..shards.len()).map(|_| Vec::new()).collect();
        for sequence in self.ctx.store.open_sequences().await? {
            sequences[shard_index(&sequence.user_id, shards.len())].push(sequence);
        }
        for (shard, sequences) in shards.iter().zip(sequences) {
            let _ = shard.cast(ShardMsg::RestoreSequences(sequences));
        }
        let mut by_shard: Vec<Vec<StoredNotification>> = (0..shards.len()).map(|_| Vec::new()).collect();
        let open = self.ctx.store.open_notifications().await?;
        let count = open.len();
        for stored in open {
            by_shard[shard_index(&stored.notification.owner, shards.len())].push(stored);
        }
        for (shard, stored) in shards.iter().zip(by_shard) {
            let _ = shard.cast(ShardMsg::Restore(stored));
        }
        if count > 0 {
            tracing::info!(open = count, "re-driving notifications that were not final");
        }
        Ok(())
    }

    /// Stops the actors, the loader and the campaign fan-outs (which resume from their checkpoint next start).
    pub fn stop(&self) {
        self.loader.cancel();
        self.ctx.inbox.close();
        self.supervisor.stop_children(None);
        self.supervisor.stop(None);
    }

    pub fn telemetry(&self) -> &Telemetry {
        &self.ctx.telemetry
    }

    /// Asks the shard that owns `owner`.
    async fn call<T: Send + 'static>(
        &self,
        owner: &str,
        message: impl FnOnce(ractor::RpcReplyPort<T>) -> ShardMsg,
    ) -> Result<T, EngineError> {
        self.front.call(owner, message).await
    }

    pub async fn put_user(&self, id: String, update: UserUpdate) -> Result<User, EngineError> {
        self.call(&id.clone(), |reply| ShardMsg::PutUser(id, update, reply)).await?
    }

    pub async fn user(&self, id: &str) -> Result<Option<User>, EngineError> {
        let owned = id.to_string();
        self.call(id, |reply| ShardMsg::GetUser(owned, reply)).await
    }

    pub async fn put_device(&self, id: &str, device: Device) -> Result<User, EngineError> {
        let owned = id.to_string();
        self.call(id, |reply| ShardMsg::PutDevice(owned, device, reply)).await?
    }

    pub async fn remove_device(&self, id: &str, token: String) -> Result<bool, EngineError> {
        let owned = id.to_string();
        self.call(id, |reply| ShardMsg::RemoveDevice(owned, token, reply)).await?
    }

    pub async fn put_preferences(&self, id: &str, preferences: Preferences) -> Result<User, EngineError> {
        let owned = id.to_string();
        self.call(id, |reply| ShardMsg::PutPreferences(owned, preferences, reply)).await?
    }

    pub async fn put_template(&self, template: Template) -> Result<Arc<Template>, EngineError> {
        let template = Arc::new(template);
        self.ctx.store.commit(vec![Write::PutTemplate(template.clone())]).await?;
        self.templates.write().insert(template.id.clone(), template.clone());
        Ok(template)
    }

    pub fn template(&self, id: &str) -> Option<Arc<Template>> {
        self.templates.read().get(id).cloned()
    }

    /// Creates a campaign (its record and explicit audience in one commit) and starts its fan-out.
    pub async fn create_campaign(&self, request: NewCampaign) -> Result<Campaign, EngineError> {
        self.campaigns.create(request).await
    }

    /// A campaign with its live progress and its notifications' final counts.
    pub async fn campaign(&self, id: &str) -> Result<Option<Campaign>, EngineError> {
        self.campaigns.get(id).await
    }

    /// Pauses, resumes or cancels a campaign's fan-out; answers once the change is durable. `Conflict` for a
    /// campaign that is completed or cancelled.
    pub async fn command_campaign(&self, id: &str, command: CampaignCommand) -> Result<Campaign, EngineError> {
        self.campaigns.command(id, command, self.call_timeout).await
    }

    /// Accepts a notification: idempotency, admission control, then the owning shard. Resolves once it is
    /// durable (202) or refused.
    pub async fn send(
        &self,
        request: NewNotification,
        body_hash: u64,
        content_hash: u64,
    ) -> Result<AcceptReply, EngineError> {
        self.front.send(request, body_hash, content_hash).await
    }

    pub async fn notification(&self, id: &str) -> Result<Option<StoredNotification>, EngineError> {
        Ok(self.ctx.store.notification(id).await?)
    }

    /// Cancels what has not been handed to a provider yet; returns the notification's status after that.
    pub async fn cancel(&self, id: &str) -> Result<NotificationStatus, EngineError> {
        let stored = self.ctx.store.notification(id).await?.ok_or(EngineError::NotFound("notification"))?;
        if stored.notification.status.is_final() {
            return Err(EngineError::Conflict(
                format!("notification is already {:?}", stored.notification.status).to_lowercase(),
            ));
        }
        let owner = stored.notification.owner.clone();
        self.call(&owner, |reply| ShardMsg::Cancel(Box::new(stored), reply)).await?
    }

    /// Changes a scheduled notification's message or `send_at` (until `scheduling.patch_cutoff_s` before it is
    /// due); returns the changed record.
    pub async fn patch(&self, id: &str, patch: NotificationPatch) -> Result<Notification, EngineError> {
        let stored = self.ctx.store.notification(id).await?.ok_or(EngineError::NotFound("notification"))?;
        let owner = stored.notification.owner.clone();
        let notification = Box::new(stored.notification);
        self.call(&owner, |reply| ShardMsg::Patch(notification, Box::new(patch), reply)).await?
    }

    /// Starts a sequence: its record and its first step's notification are committed before this returns.
    pub async fn start_sequence(&self, request: NewSequence) -> Result<Sequence, EngineError> {
        let shard = self.front.shard(&request.user_id);
        let first = request.steps.first();
        let channels: Vec<Channel> = first.map(|s| s.channels.clone()).unwrap_or_default();
        self.front.admit(shard, &channels, first.map_or(Priority::Normal, |s| s.priority))?;
        self.ctx.shard_pending[shard].fetch_add(1, Ordering::Relaxed);
        self.front.call_shard(shard, |reply| ShardMsg::StartSequence(Box::new(request), reply)).await?
    }

    pub async fn sequence(&self, id: &str) -> Result<Option<Sequence>, EngineError> {
        Ok(self.ctx.store.sequence(id).await?)
    }

    /// Cancels a running sequence: the running step's unsent deliveries and every later step.
    pub async fn cancel_sequence(&self, id: &str) -> Result<Sequence, EngineError> {
        let stored = self.ctx.store.sequence(id).await?.ok_or(EngineError::NotFound("sequence"))?;
        if stored.status.is_final() {
            let status = format!("{:?}", stored.status).to_lowercase();
            return Err(EngineError::Conflict(format!("sequence is already {status}")));
        }
        let owned = id.to_string();
        self.call(&stored.user_id, |reply| ShardMsg::CancelSequence(owned, reply)).await?
    }

    /// The clock scheduling decisions are made by; tests move it forward.
    pub fn clock(&self) -> &Clock {
        &self.ctx.clock
    }

    pub async fn dlq(
        &self,
        channel: Option<Channel>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<Delivery>, EngineError> {
        Ok(self.ctx.store.dlq(channel, cursor, limit).await?)
    }

    /// Puts a dead-lettered delivery back in its queue with a fresh retry budget.
    pub async fn replay(&self, delivery_id: &str) -> Result<(), EngineError> {
        let delivery = self.ctx.store.delivery(delivery_id).await?.ok_or(EngineError::NotFound("delivery"))?;
        let stored = self
            .ctx
            .store
            .notification(&delivery.notification_id)
            .await?
            .ok_or(EngineError::NotFound("notification"))?;
        let owned = delivery_id.to_string();
        self.call(&delivery.owner, |reply| ShardMsg::Replay(Box::new(stored), owned, reply)).await?
    }

    /// Applies a provider's delivery report (webhook). Unknown deliveries are ignored.
    pub async fn report(&self, report: Report) -> Result<(), EngineError> {
        let Some(delivery) = self.ctx.store.delivery(&report.delivery_id).await? else {
            tracing::debug!(provider = report.provider.as_str(), "report for an unknown delivery");
            return Ok(());
        };
        let shard = &self.front.shards[self.front.shard(&delivery.owner)];
        let _ = shard.cast(ShardMsg::Report(report, delivery.notification_id));
        Ok(())
    }

    pub async fn inbox(
        &self,
        user_id: &str,
        cursor: Option<&str>,
        limit: usize,
        unread_only: bool,
    ) -> Result<(Page<crate::domain::InboxItem>, u64), EngineError> {
        Ok(self.ctx.store.inbox(user_id, cursor, limit, unread_only).await?)
    }

    pub async fn mark_read(&self, user_id: &str, ids: Option<Vec<String>>) -> Result<(), EngineError> {
        let at = Timestamp::now();
        let user_id = user_id.to_string();
        let write = match ids {
            Some(ids) => Write::MarkInboxRead { user_id, ids, at },
            None => Write::MarkAllInboxRead { user_id, at },
        };
        Ok(self.ctx.commit(vec![write]).await?)
    }

    /// Subscribes to `user_id`'s in-app stream and reads the unread count to start it with. Subscribing first
    /// means nothing committed after that read is missed. `NotFound` for an unknown user.
    pub async fn subscribe_inbox(&self, user_id: &str) -> Result<(InboxSubscription, u64), EngineError> {
        if self.user(user_id).await?.is_none() {
            return Err(EngineError::NotFound("user"));
        }
        let subscription = self.ctx.inbox.subscribe(user_id);
        let (_, unread) = self.ctx.store.inbox(user_id, None, 1, true).await?;
        Ok((subscription, unread))
    }

    /// The in-app stream hub (tests and diagnostics).
    pub fn inbox_hub(&self) -> &InboxHub {
        &self.ctx.inbox
    }

    /// Ready when the store answers.
    pub async fn ready(&self) -> Result<(), EngineError> {
        Ok(self.ctx.store.health().await?)
    }
}

/// The shard that owns `owner`: a stable hash, so it does not change across restarts.
pub fn shard_index(owner: &str, shards: usize) -> usize {
    (stable_hash(&[owner.as_bytes()]) % shards as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_spread_over_shards_stably() {
        let mut counts = [0usize; 8];
        for i in 0..8000 {
            counts[shard_index(&format!("user-{i}"), 8)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        assert_eq!(shard_index("user-1", 8), shard_index("user-1", 8));
    }
}
