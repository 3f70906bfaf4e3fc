//! What callers hand the engine: a validated notification request, a user update, and the accept answer.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;

use crate::domain::{
    CampaignId, Category, Channel, Device, IdempotencyEntry, NotificationStatus, Platform, Priority, Rendered,
    Strategy, Template, User,
};

use crate::domain::schedule::SendAt;

use super::EngineError;

/// The message of a notification: a template with parameters, or literal content.
#[derive(Clone, Debug)]
pub enum Message {
    Template { template: Arc<Template>, params: BTreeMap<String, String> },
    Content(Arc<Rendered>),
}

/// A recipient given inline instead of by user id.
#[derive(Clone, Debug, Default)]
pub struct AdHocRecipient {
    pub email: Option<String>,
    pub phone: Option<String>,
    pub devices: Vec<(String, Platform)>,
}

impl AdHocRecipient {
    pub fn to_user(&self, owner: &str, now: Timestamp) -> User {
        let mut user = User::new(owner.to_string(), now);
        user.email = self.email.clone();
        user.phone = self.phone.clone();
        user.devices = self
            .devices
            .iter()
            .map(|(token, platform)| Device { token: token.clone(), platform: *platform, created_at: now })
            .collect();
        user
    }

    /// The ordering key of an ad-hoc recipient: its first address.
    pub fn owner(&self) -> String {
        let first = self.email.as_deref().or(self.phone.as_deref()).or(self.devices.first().map(|(t, _)| t.as_str()));
        format!("adhoc:{}", first.unwrap_or(""))
    }
}

/// An idempotency key (or content hash) this request claims, with the hash of its body.
#[derive(Clone, Debug)]
pub struct Claim {
    pub key: String,
    pub body_hash: u64,
    pub expires_at: Timestamp,
}

impl Claim {
    /// The entry a replay of this request answers with: the notification's id and its status when accepted.
    pub fn entry(&self, notification_id: &str, status: NotificationStatus) -> IdempotencyEntry {
        super::idempotency::entry(notification_id, self.body_hash, status, self.expires_at)
    }
}

/// A validated request to notify one recipient.
#[derive(Clone, Debug)]
pub struct NewNotification {
    /// User id, or the ad-hoc owner key.
    pub owner: String,
    pub adhoc: Option<AdHocRecipient>,
    pub category: Category,
    pub channels: Vec<Channel>,
    pub strategy: Strategy,
    pub priority: Priority,
    pub message: Message,
    pub idempotency_key: Option<String>,
    /// Filled by the engine from the key and the content hash.
    pub claims: Vec<Claim>,
    pub metadata: Option<serde_json::Value>,
    pub expires_at: Option<Timestamp>,
    /// A scheduled send; resolved against the recipient's time zone by the shard.
    pub send_at: Option<SendAt>,
    /// The campaign whose fan-out sends this; such a request is refused (and the user skipped) when the user's
    /// preferences turn off every one of its channels.
    pub campaign: Option<CampaignId>,
}

impl Message {
    /// The template's id, if the message is a template.
    pub fn template_id(&self) -> Option<String> {
        match self {
            Message::Template { template, .. } => Some(template.id.clone()),
            Message::Content(_) => None,
        }
    }
}

impl NewNotification {
    pub fn template_id(&self) -> Option<String> {
        self.message.template_id()
    }

    /// Renders every channel's content for `locale`.
    pub fn render(&self, locale: Option<&str>) -> Result<Vec<(Channel, Arc<Rendered>)>, EngineError> {
        render(&self.message, &self.channels, locale)
    }
}

/// Renders `message` for every channel in `locale`; a missing template parameter is a 422 on its field.
pub fn render(
    message: &Message,
    channels: &[Channel],
    locale: Option<&str>,
) -> Result<Vec<(Channel, Arc<Rendered>)>, EngineError> {
    channels
        .iter()
        .map(|&channel| {
            let rendered = match message {
                Message::Template { template, params } => Arc::new(
                    template
                        .render(channel, locale, params)
                        .map_err(|e| EngineError::invalid(e.field(), e.to_string()))?,
                ),
                Message::Content(content) => content.clone(),
            };
            if channel == Channel::Alimtalk && rendered.template_code.is_none() {
                return Err(EngineError::invalid(
                    "template",
                    "alimtalk needs a template whose alimtalk body has a templatecode",
                ));
            }
            Ok((channel, rendered))
        })
        .collect()
}

/// A change to a scheduled notification (PATCH): a new message and/or a new `send_at`.
#[derive(Clone, Debug, Default)]
pub struct NotificationPatch {
    pub message: Option<Message>,
    pub send_at: Option<SendAt>,
}

/// The answer to an accepted (or replayed) notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptReply {
    pub id: String,
    pub status: NotificationStatus,
    pub duplicate: bool,
}

/// Changes to a user's profile: `Some(None)` clears a field, `None` leaves it.
#[derive(Clone, Debug, Default)]
pub struct UserUpdate {
    pub email: Option<Option<String>>,
    pub phone: Option<Option<String>>,
    pub kakao_phone: Option<Option<String>>,
    pub locale: Option<Option<String>>,
    pub timezone: Option<Option<String>>,
    /// Replaces the tags when given (validated, without duplicates).
    pub tags: Option<Vec<String>>,
}

impl UserUpdate {
    pub fn apply(self, user: &mut User) {
        let set = |field: &mut Option<String>, value: Option<Option<String>>| {
            if let Some(v) = value {
                *field = v;
            }
        };
        set(&mut user.email, self.email);
        set(&mut user.phone, self.phone);
        set(&mut user.kakao_phone, self.kakao_phone);
        set(&mut user.locale, self.locale);
        set(&mut user.timezone, self.timezone);
        if let Some(tags) = self.tags {
            user.tags = tags;
        }
    }
}

/// One step of a new sequence: a notification body without recipient or schedule.
#[derive(Clone, Debug)]
pub struct NewStep {
    pub category: Category,
    pub channels: Vec<Channel>,
    pub strategy: Strategy,
    pub priority: Priority,
    pub message: Message,
    pub metadata: Option<serde_json::Value>,
}

/// A validated request to run steps in order for one user.
#[derive(Clone, Debug)]
pub struct NewSequence {
    pub user_id: String,
    pub steps: Vec<NewStep>,
    pub step_timeout_ms: u64,
    pub on_failure: crate::domain::OnFailure,
}

/// Who a new campaign goes to.
#[derive(Clone, Debug)]
pub enum NewAudience {
    /// Valid ids, as given (duplicates are skipped when the campaign is created).
    UserIds(Vec<String>),
    AllUsers,
    Tag(String),
}

/// A validated request to send one template to an audience (`POST /v1/campaigns`).
#[derive(Clone, Debug)]
pub struct NewCampaign {
    pub name: Option<String>,
    pub template: Arc<Template>,
    pub params: BTreeMap<String, String>,
    pub channels: Vec<Channel>,
    pub category: Category,
    pub audience: NewAudience,
    /// Already checked to be in the future by the engine clock.
    pub send_at: Option<Timestamp>,
    pub rate_per_second: Option<u32>,
}
