//! The domain: users, templates, notifications, deliveries and their statuses, sequences and campaigns.
//!
//! Architecture invariant: nothing here does I/O or knows tokio, HTTP or the store. Everything is plain data
//! and pure functions, so the engine, the API and the store can all share it and unit tests need no runtime.

pub mod campaign;
pub mod channel;
pub mod contact;
pub mod notification;
pub mod schedule;
pub mod sequence;
pub mod template;
pub mod user;

pub use campaign::{
    AUDIENCE_PAGE, Audience, Campaign, CampaignCursor, CampaignId, CampaignStatus, FinalCounts, MAX_TAGS, Progress,
    valid_tag,
};
pub use channel::{Category, Channel, Platform, Priority, ProviderKind, Strategy};
pub use contact::{ContactError, normalize_email, normalize_phone};
pub use notification::{
    Address, Delivery, DeliveryId, DeliveryStatus, Event, EventKind, IdempotencyEntry, InboxItem, Notification,
    NotificationId, NotificationStatus, Rendered, StepRef, new_id,
};
pub use sequence::{OnFailure, Sequence, SequenceId, SequenceStatus, SequenceStep, StepStatus};
pub use template::{RenderError, Template, TemplateBody};
pub use user::{Device, Preferences, QuietHours, User};
