//! Ordered, report-gated sequences of notifications to one user (SPEC §4 "Sequences").
//!
//! A sequence is a list of steps; each step becomes one notification when it starts. Step N+1 starts only after
//! step N's notification is `completed` (some delivery `delivered`, which for alimtalk means the delivery report
//! said so). A failed or timed-out step stops the sequence or is skipped, per `on_failure`.

use std::sync::Arc;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{Category, Channel, NotificationId, Priority, Rendered, Strategy};

/// Same form as a notification id.
pub type SequenceId = String;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    #[default]
    Stop,
    Continue,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SequenceStatus {
    Running,
    /// Every step ran (with `continue`, some may have failed).
    Completed,
    /// A step failed or timed out and `on_failure` is `stop`.
    Failed,
    Cancelled,
}

impl SequenceStatus {
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Running)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    /// Its notification exists and is not final.
    Running,
    Delivered,
    Failed,
    /// Its notification was not final within `step_timeout`; a late report is recorded on the notification but
    /// changes nothing here.
    TimedOut,
    /// Never started: an earlier step stopped the sequence, or it was cancelled.
    Skipped,
    Cancelled,
}

/// One step: the rendered notification it becomes, and how it went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SequenceStep {
    pub category: Category,
    pub channels: Vec<Channel>,
    pub strategy: Strategy,
    pub priority: Priority,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<String>,
    /// Rendered when the sequence is accepted, in `channels` order.
    pub contents: Vec<(Channel, Arc<Rendered>)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    pub status: StepStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_id: Option<NotificationId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sequence {
    pub id: SequenceId,
    /// The user (and ordering key): sequences run in the shard that owns the user.
    pub user_id: String,
    pub steps: Vec<SequenceStep>,
    pub step_timeout_ms: u64,
    pub on_failure: OnFailure,
    pub status: SequenceStatus,
    /// Index of the running step; `steps.len()` once the sequence is final.
    pub current: usize,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}
