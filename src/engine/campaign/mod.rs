//! Campaigns in the engine: creating one, one fan-out task per active campaign (`fanout.rs`), and the registry
//! through which the API reads live progress and pauses, resumes or cancels a fan-out.
//!
//! The task is the only writer of its campaign's record: commands reach it over a channel and are answered
//! once the resulting record is durable. Each user becomes a `low` notification submitted through the same
//! accept path as `POST /v1/notifications` (admission, idempotency, owning shard), with the idempotency key
//! `campaign:{id}:{user}`, so a page re-submitted after a crash yields duplicates, never second messages. The
//! final statuses of those notifications are counted by the shards in the commits that make them final
//! (`Write::CountCampaignFinal`). See `docs/campaigns.md`.

mod fanout;
mod limit;
mod pacing;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::domain::{
    AUDIENCE_PAGE, Audience, Campaign, CampaignCursor, CampaignId, CampaignStatus, Progress, Template, new_id,
};
use crate::store::Write;

use super::accept::Acceptor;
use super::request::{Message, NewAudience, NewCampaign, render};
use super::{EngineCtx, EngineError};

/// Templates by id, shared with [`super::Engine`] so a fan-out renders with the current version.
pub(super) type Templates = Arc<RwLock<HashMap<String, Arc<Template>>>>;

/// What a command asks of a fan-out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CampaignCommand {
    Pause,
    Resume,
    Cancel,
}

/// A command and where to answer it: the record once the change is durable, or why it was refused.
struct Command {
    kind: CampaignCommand,
    reply: oneshot::Sender<Result<Campaign, EngineError>>,
}

/// What the API sees of a running fan-out.
struct Handle {
    commands: mpsc::Sender<Command>,
    /// The record as of the task's last change (its progress is in the counters below).
    record: Mutex<Campaign>,
    processed: AtomicU64,
    accepted: AtomicU64,
    skipped: AtomicU64,
}

impl Handle {
    /// The record with the live counts.
    fn snapshot(&self) -> Campaign {
        let mut campaign = self.record.lock().clone();
        campaign.progress = self.progress();
        campaign
    }

    fn progress(&self) -> Progress {
        Progress {
            processed: self.processed.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
        }
    }
}

/// Every campaign with a task in this engine, and what the tasks need.
pub(super) struct Campaigns {
    ctx: Arc<EngineCtx>,
    front: Arc<Acceptor>,
    templates: Templates,
    /// Engine stop: tasks end without writing, as in a crash; the next start resumes them.
    stop: CancellationToken,
    running: Mutex<HashMap<CampaignId, Arc<Handle>>>,
}

impl Campaigns {
    pub(super) fn new(
        ctx: Arc<EngineCtx>,
        front: Arc<Acceptor>,
        templates: Templates,
        stop: CancellationToken,
    ) -> Arc<Campaigns> {
        Arc::new(Campaigns { ctx, front, templates, stop, running: Mutex::new(HashMap::new()) })
    }

    /// Starts a task for every campaign the store holds as active (engine start), from its saved cursor.
    pub(super) async fn resume_all(self: &Arc<Self>) -> Result<(), EngineError> {
        let active = self.ctx.store.active_campaigns().await?;
        if !active.is_empty() {
            tracing::info!(campaigns = active.len(), "resuming campaign fan-outs");
        }
        for campaign in active {
            self.spawn(campaign);
        }
        Ok(())
    }

    fn spawn(self: &Arc<Self>, campaign: Campaign) {
        let (commands, receiver) = mpsc::channel(16);
        let handle = Arc::new(Handle {
            commands,
            processed: AtomicU64::new(campaign.progress.processed),
            accepted: AtomicU64::new(campaign.progress.accepted),
            skipped: AtomicU64::new(campaign.progress.skipped),
            record: Mutex::new(campaign.clone()),
        });
        self.running.lock().insert(campaign.id.clone(), handle.clone());
        tokio::spawn(fanout::run(self.clone(), handle, campaign, receiver));
    }

    /// The fan-out ended (completed or cancelled): nothing more to read live.
    fn finished(&self, id: &str) {
        self.running.lock().remove(id);
    }

    /// Validates, stores the record and its audience pages in one commit, and starts the fan-out.
    pub(super) async fn create(self: &Arc<Self>, request: NewCampaign) -> Result<Campaign, EngineError> {
        check_renders(&request)?;
        let now = self.ctx.clock.now();
        let id = new_id();
        let mut progress = Progress::default();
        let mut writes = Vec::new();
        let audience = match request.audience {
            NewAudience::UserIds(ids) => {
                let size = ids.len() as u64;
                let mut seen = HashSet::with_capacity(ids.len());
                let distinct: Vec<String> = ids.into_iter().filter(|id| seen.insert(id.clone())).collect();
                drop(seen);
                // A listed duplicate is processed (and skipped) at once: it never gets a second message.
                let duplicates = size - distinct.len() as u64;
                progress = Progress { processed: duplicates, accepted: 0, skipped: duplicates };
                let pages = distinct.chunks(AUDIENCE_PAGE).len() as u32;
                for (page, chunk) in distinct.chunks(AUDIENCE_PAGE).enumerate() {
                    writes.push(Write::PutAudiencePage {
                        campaign: id.clone(),
                        page: page as u32,
                        user_ids: chunk.iter().cloned().collect(),
                    });
                }
                Audience::UserIds { size, pages }
            }
            NewAudience::AllUsers => Audience::AllUsers,
            NewAudience::Tag(tag) => Audience::Tag { tag },
        };
        let scheduled = request.send_at.is_some_and(|at| at > now);
        let campaign = Campaign {
            id,
            name: request.name,
            status: if scheduled { CampaignStatus::Scheduled } else { CampaignStatus::Running },
            template_id: request.template.id.clone(),
            params: request.params,
            channels: request.channels,
            category: request.category,
            cursor: CampaignCursor::start(&audience),
            audience,
            rate_per_second: request.rate_per_second,
            send_at: request.send_at,
            progress,
            finals: Default::default(),
            created_at: now,
            started_at: (!scheduled).then_some(now),
            finished_at: None,
            updated_at: now,
        };
        writes.insert(0, Write::PutCampaign(Arc::new(campaign.clone())));
        self.ctx.commit(writes).await?;
        tracing::info!(campaign = %campaign.id, status = campaign.status.as_str(), "campaign created");
        self.spawn(campaign.clone());
        Ok(campaign)
    }

    /// The stored campaign with its final counts, and the live progress of its fan-out if it has one.
    pub(super) async fn get(&self, id: &str) -> Result<Option<Campaign>, EngineError> {
        let Some(stored) = self.ctx.store.campaign(id).await? else { return Ok(None) };
        let live = self.running.lock().get(id).map(|h| h.snapshot());
        Ok(Some(match live {
            Some(live) => Campaign { finals: stored.finals, ..live },
            None => stored,
        }))
    }

    /// Hands a command to the campaign's task and waits (up to `timeout`) for the durable result. A campaign
    /// without a task has ended: every command is a conflict.
    pub(super) async fn command(
        &self,
        id: &str,
        kind: CampaignCommand,
        timeout: Duration,
    ) -> Result<Campaign, EngineError> {
        let handle = self.running.lock().get(id).cloned();
        if let Some(handle) = handle {
            let (reply, answer) = oneshot::channel();
            let sent = tokio::time::timeout(timeout, handle.commands.send(Command { kind, reply })).await;
            if matches!(sent, Ok(Ok(()))) {
                match tokio::time::timeout(timeout, answer).await {
                    Ok(Ok(result)) => {
                        let finals = self.ctx.store.campaign(id).await?.map(|c| c.finals).unwrap_or_default();
                        return result.map(|campaign| Campaign { finals, ..campaign });
                    }
                    // The task ended meanwhile (it completed): answer from the store below.
                    Ok(Err(_)) => {}
                    Err(_) => {
                        return Err(EngineError::Unavailable(
                            "the campaign is still finishing its accepts in flight; the command applies once they \
                             are done"
                                .into(),
                        ));
                    }
                }
            }
        }
        let campaign = self.ctx.store.campaign(id).await?.ok_or(EngineError::NotFound("campaign"))?;
        if campaign.status.is_active() {
            return Err(EngineError::Unavailable("the campaign's fan-out is not running; retry shortly".into()));
        }
        Err(EngineError::Conflict(format!("campaign is already {}", campaign.status.as_str())))
    }
}

/// Renders the template in every locale it has for the campaign's channels, so a missing parameter or an
/// alimtalk body without a templatecode is a 422 now rather than a skipped user per recipient later.
fn check_renders(request: &NewCampaign) -> Result<(), EngineError> {
    let message = Message::Template { template: request.template.clone(), params: request.params.clone() };
    let mut locales: Vec<Option<&str>> = vec![None];
    for channel in &request.channels {
        if let Some(bodies) = request.template.channels.get(channel) {
            locales.extend(bodies.keys().map(|l| Some(l.as_str())));
        }
    }
    for locale in locales {
        render(&message, &request.channels, locale)?;
    }
    Ok(())
}
