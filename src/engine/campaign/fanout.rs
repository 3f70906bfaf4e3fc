//! One campaign's task: waits for `send_at`, then reads the audience one page at a time and submits each user
//! as a `low` notification, at most [`IN_FLIGHT`] at once (fewer while its accepts queue: `limit.rs`) and paced
//! to `rate_per_second`, checkpointing the cursor with the counts after every page.
//!
//! Back-pressure: a user refused with `Overloaded` (admission turns `low` away at half the thresholds) or
//! `Unavailable` (store down) is retried after a pause that doubles up to [`RETRY_MAX`], and the in-flight
//! limit shrinks, so a blast slows down before transactional traffic is refused. Pause and cancel stop issuing, wait for the accepts in flight, and
//! save the exact cursor: everything before it is done, nothing after it was submitted. A stopped engine ends
//! the task without writing; the next start resumes from the last checkpoint, and the users submitted since are
//! submitted again, which their idempotency keys turn into duplicates (counted as accepted: their first accept
//! was not in the checkpoint).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;

use crate::domain::{
    Audience, Campaign, CampaignCursor, CampaignStatus, Category, Channel, Priority, Strategy, Template,
};
use crate::engine::idempotency::stable_hash;
use crate::engine::request::{Message, NewNotification};
use crate::engine::timers::until;
use crate::store::{StoreError, Write};

use super::limit::InFlightLimit;
use super::pacing::Pacer;
use super::{CampaignCommand, Campaigns, Command, EngineError, Handle};

/// Users read per page of all users or of a tag (explicit lists are stored in pages of `AUDIENCE_PAGE`).
const PAGE: usize = 500;
/// Accepts one campaign has in flight at most.
const IN_FLIGHT: usize = 64;
const RETRY_MIN: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// How often a scheduled campaign looks at the engine clock (tests move it forward).
const CLOCK_POLL: Duration = Duration::from_millis(250);

/// The engine stopped: end the task without writing.
struct Stopped;

/// What woke the fan-out between two users.
enum Wake {
    Slot,
    Interrupt(Command),
}

/// The fixed part of every notification of one page.
struct Spec {
    campaign_id: String,
    template: Option<Arc<Template>>,
    params: std::collections::BTreeMap<String, String>,
    channels: Vec<Channel>,
    category: Category,
}

struct Task {
    campaigns: Arc<Campaigns>,
    handle: Arc<Handle>,
    campaign: Campaign,
    commands: mpsc::Receiver<Command>,
    pacer: Pacer,
    limit: InFlightLimit,
}

/// How one user's accept ended.
struct Accept {
    /// A notification was accepted (or had been: a duplicate); false: the user was skipped.
    accepted: bool,
    /// Of the last attempt, for the in-flight limit.
    latency: Duration,
    /// Admission refused an attempt first.
    overloaded: bool,
}

/// Runs the campaign until it is completed or cancelled, or the engine stops.
pub(super) async fn run(
    campaigns: Arc<Campaigns>,
    handle: Arc<Handle>,
    campaign: Campaign,
    commands: mpsc::Receiver<Command>,
) {
    let pacer = Pacer::new(campaign.rate_per_second);
    let limit = InFlightLimit::new(IN_FLIGHT);
    let mut task = Task { campaigns, handle, campaign, commands, pacer, limit };
    loop {
        let flow = match task.campaign.status {
            CampaignStatus::Scheduled => task.wait_until_due().await,
            CampaignStatus::Paused => task.wait_for_resume().await,
            CampaignStatus::Running => task.fan_out().await,
            CampaignStatus::Completed | CampaignStatus::Cancelled => {
                task.campaigns.finished(&task.campaign.id);
                return;
            }
        };
        if flow.is_err() {
            return;
        }
    }
}

impl Task {
    async fn wait_until_due(&mut self) -> Result<(), Stopped> {
        loop {
            let now = self.campaigns.ctx.clock.now();
            let due = self.campaign.send_at.unwrap_or(now);
            if now >= due {
                self.campaign.status = CampaignStatus::Running;
                self.campaign.started_at.get_or_insert(now);
                self.save().await?;
                self.pacer.restart();
                return Ok(());
            }
            let stop = self.campaigns.stop.clone();
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Err(Stopped),
                Some(command) = self.commands.recv() => {
                    self.apply(command).await?;
                    if self.campaign.status != CampaignStatus::Scheduled {
                        return Ok(());
                    }
                }
                _ = tokio::time::sleep(until(now, due).min(CLOCK_POLL)) => {}
            }
        }
    }

    async fn wait_for_resume(&mut self) -> Result<(), Stopped> {
        let stop = self.campaigns.stop.clone();
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Err(Stopped),
                Some(command) = self.commands.recv() => {
                    self.apply(command).await?;
                    if self.campaign.status != CampaignStatus::Paused {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Pages through the audience until it is exhausted (completed) or a command interrupts.
    async fn fan_out(&mut self) -> Result<(), Stopped> {
        loop {
            let Some(users) = self.next_page().await? else {
                let now = self.campaigns.ctx.clock.now();
                self.campaign.status = CampaignStatus::Completed;
                self.campaign.finished_at = Some(now);
                self.save().await?;
                let progress = self.handle.progress();
                tracing::info!(
                    campaign = %self.campaign.id,
                    accepted = progress.accepted,
                    skipped = progress.skipped,
                    "campaign fan-out completed"
                );
                return Ok(());
            };
            let spec = Arc::new(self.spec());
            let mut in_flight = FuturesUnordered::new();
            let mut issued = 0;
            let mut interrupt = None;
            for user in &users {
                match self.next_slot().await? {
                    Wake::Slot => {}
                    Wake::Interrupt(command) => {
                        interrupt = Some(command);
                        break;
                    }
                }
                while in_flight.len() >= self.limit.get() {
                    self.settle_one(&mut in_flight).await?;
                }
                in_flight.push(accept_one(self.campaigns.clone(), spec.clone(), user.clone()));
                issued += 1;
            }
            while !in_flight.is_empty() {
                self.settle_one(&mut in_flight).await?;
            }
            self.advance(&users, issued);
            match interrupt {
                Some(command) => return self.apply(command).await,
                None => self.save().await?,
            }
        }
    }

    /// Waits for the pace, answering a resume (a no-op while running) and returning on pause or cancel.
    async fn next_slot(&mut self) -> Result<Wake, Stopped> {
        let stop = self.campaigns.stop.clone();
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Err(Stopped),
                Some(command) = self.commands.recv() => {
                    if command.kind != CampaignCommand::Resume {
                        return Ok(Wake::Interrupt(command));
                    }
                    let _ = command.reply.send(Ok(self.handle.snapshot()));
                }
                _ = self.pacer.ready() => return Ok(Wake::Slot),
            }
        }
    }

    /// Waits for one accept in flight to finish and counts it.
    async fn settle_one<F>(&mut self, in_flight: &mut FuturesUnordered<F>) -> Result<(), Stopped>
    where
        F: Future<Output = Option<Accept>>,
    {
        let stop = self.campaigns.stop.clone();
        let outcome = tokio::select! {
            biased;
            _ = stop.cancelled() => return Err(Stopped),
            outcome = in_flight.next() => outcome,
        };
        let Accept { accepted, latency, overloaded } = outcome.flatten().ok_or(Stopped)?;
        if overloaded {
            self.limit.overloaded();
        }
        let now = tokio::time::Instant::now();
        self.limit.record(latency, self.campaigns.ctx.transactional.queueing(now), now);
        let h = &self.handle;
        h.processed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let counter = if accepted { &h.accepted } else { &h.skipped };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.campaigns.ctx.telemetry.campaign_user(accepted);
        Ok(())
    }

    /// The next users after the cursor: the rest of the current explicit page (possibly none, when a pause
    /// fell on its end), or the next page of all users or of the tag. `None` once the audience is exhausted.
    async fn next_page(&mut self) -> Result<Option<Vec<String>>, Stopped> {
        let store = self.campaigns.ctx.store.clone();
        let mut backoff = RETRY_MIN;
        loop {
            let id = self.campaign.id.as_str();
            let read: Result<Option<Vec<String>>, StoreError> = match (&self.campaign.audience, &self.campaign.cursor) {
                (Audience::UserIds { pages, .. }, CampaignCursor::Page { page, offset }) => {
                    if page >= pages {
                        Ok(None)
                    } else {
                        store.audience_page(id, *page).await.map(|ids| {
                            let ids = ids.unwrap_or_else(|| {
                                tracing::error!(campaign = id, page, "audience page missing; skipping it");
                                Vec::new()
                            });
                            Some(ids.into_iter().skip(*offset as usize).collect())
                        })
                    }
                }
                (Audience::AllUsers, CampaignCursor::After { after }) => {
                    store.user_ids(after.as_deref(), None, PAGE).await.map(|ids| (!ids.is_empty()).then_some(ids))
                }
                (Audience::Tag { tag }, CampaignCursor::After { after }) => {
                    store.user_ids(after.as_deref(), Some(tag), PAGE).await.map(|ids| (!ids.is_empty()).then_some(ids))
                }
                (audience, cursor) => {
                    tracing::error!(campaign = id, ?audience, ?cursor, "cursor does not fit the audience; ending");
                    Ok(None)
                }
            };
            match read {
                Ok(users) => return Ok(users),
                Err(error) => {
                    tracing::warn!(campaign = id, %error, "cannot read the campaign audience; retrying");
                    self.nap(backoff).await?;
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Moves the cursor past the first `issued` of `users` (all of them done), or to the next explicit page
    /// when the whole page was issued.
    fn advance(&mut self, users: &[String], issued: usize) {
        match &mut self.campaign.cursor {
            CampaignCursor::Page { page, offset } if issued == users.len() => {
                *page += 1;
                *offset = 0;
            }
            CampaignCursor::Page { offset, .. } => *offset += issued as u32,
            CampaignCursor::After { after } => {
                if let Some(last) = issued.checked_sub(1).map(|i| users[i].clone()) {
                    *after = Some(last);
                }
            }
        }
    }

    /// Applies a command while nothing is in flight, saves the change and answers it.
    async fn apply(&mut self, command: Command) -> Result<(), Stopped> {
        let now = self.campaigns.ctx.clock.now();
        let status = self.campaign.status;
        let next = match (command.kind, status) {
            (CampaignCommand::Pause, CampaignStatus::Paused)
            | (CampaignCommand::Resume, CampaignStatus::Running | CampaignStatus::Scheduled) => None,
            (CampaignCommand::Pause, _) => Some(CampaignStatus::Paused),
            (CampaignCommand::Resume, _) if self.campaign.send_at.is_some_and(|at| at > now) => {
                Some(CampaignStatus::Scheduled)
            }
            (CampaignCommand::Resume, _) => Some(CampaignStatus::Running),
            (CampaignCommand::Cancel, _) => Some(CampaignStatus::Cancelled),
        };
        if let Some(next) = next {
            self.campaign.status = next;
            match next {
                CampaignStatus::Running => {
                    self.campaign.started_at.get_or_insert(now);
                    self.pacer.restart();
                }
                CampaignStatus::Cancelled => self.campaign.finished_at = Some(now),
                _ => {}
            }
            self.save().await?;
            tracing::info!(campaign = %self.campaign.id, from = status.as_str(), to = next.as_str(), "campaign");
        }
        let _ = command.reply.send(Ok(self.handle.snapshot()));
        Ok(())
    }

    /// Commits the record with the cursor and the counts, retrying while the store is down.
    async fn save(&mut self) -> Result<(), Stopped> {
        self.campaign.progress = self.handle.progress();
        self.campaign.updated_at = self.campaigns.ctx.clock.now();
        let record = Arc::new(self.campaign.clone());
        let mut backoff = RETRY_MIN;
        while let Err(error) = self.campaigns.ctx.commit(vec![Write::PutCampaign(record.clone())]).await {
            tracing::warn!(campaign = %self.campaign.id, %error, "cannot save the campaign; retrying");
            self.nap(backoff).await?;
            backoff = (backoff * 2).min(RETRY_MAX);
        }
        *self.handle.record.lock() = self.campaign.clone();
        Ok(())
    }

    async fn nap(&self, duration: Duration) -> Result<(), Stopped> {
        tokio::select! {
            _ = self.campaigns.stop.cancelled() => Err(Stopped),
            _ = tokio::time::sleep(duration) => Ok(()),
        }
    }

    /// What this page's notifications share; the template is looked up now, so an update applies from the
    /// next page on.
    fn spec(&self) -> Spec {
        let c = &self.campaign;
        Spec {
            campaign_id: c.id.clone(),
            template: self.campaigns.templates.read().get(&c.template_id).cloned(),
            params: c.params.clone(),
            channels: c.channels.clone(),
            category: c.category,
        }
    }
}

/// Submits one user through the engine's accept path until it is accepted (a duplicate included) or refused
/// for good (unknown user, preferences, a rendering error); retries overload and store outages. `None`: the
/// engine stopped.
async fn accept_one(campaigns: Arc<Campaigns>, spec: Arc<Spec>, user: String) -> Option<Accept> {
    let Some(template) = &spec.template else {
        tracing::error!(campaign = %spec.campaign_id, "campaign template is gone; skipping");
        return Some(Accept { accepted: false, latency: Duration::ZERO, overloaded: false });
    };
    let key = format!("campaign:{}:{user}", spec.campaign_id);
    let body_hash = stable_hash(&[b"campaign", spec.campaign_id.as_bytes(), user.as_bytes()]);
    let mut backoff = RETRY_MIN;
    let mut overloaded = false;
    loop {
        let started = tokio::time::Instant::now();
        let request = NewNotification {
            owner: user.clone(),
            adhoc: None,
            category: spec.category,
            channels: spec.channels.clone(),
            strategy: Strategy::Parallel,
            priority: Priority::Low,
            message: Message::Template { template: template.clone(), params: spec.params.clone() },
            idempotency_key: Some(key.clone()),
            claims: Vec::new(),
            metadata: None,
            expires_at: None,
            send_at: None,
            campaign: Some(spec.campaign_id.clone()),
        };
        let result = campaigns.front.send(request, body_hash, body_hash).await;
        let done = |accepted| Some(Accept { accepted, latency: started.elapsed(), overloaded });
        match result {
            Ok(_) => return done(true),
            Err(EngineError::Invalid { .. } | EngineError::NotFound(_)) => return done(false),
            // Overloaded, store down, or the same key still in progress after a timed-out call: wait and retry.
            Err(e @ (EngineError::Overloaded | EngineError::Unavailable(_) | EngineError::Conflict(_))) => {
                overloaded |= matches!(e, EngineError::Overloaded);
                tokio::select! {
                    _ = campaigns.stop.cancelled() => return None,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
    }
}
