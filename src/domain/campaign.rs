//! Campaigns: one template to a large audience, fanned out lazily as low-priority notifications (SPEC §4
//! "Campaigns", `docs/campaigns.md`).
//!
//! The record holds what the fan-out needs to resume: the audience's kind (an explicit id list is stored apart,
//! in pages), the cursor of the next user and the counts up to it. The counts of the notifications' final
//! statuses (`finals`) are kept by the store beside the record, bumped in the commits that make them final.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{Category, Channel, NotificationStatus};

/// Same form as a notification id.
pub type CampaignId = String;

/// User ids per stored page of an explicit audience.
pub const AUDIENCE_PAGE: usize = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CampaignStatus {
    /// `send_at` is in the future.
    Scheduled,
    Running,
    Paused,
    /// Every user of the audience was processed (accepted or skipped); its notifications go on by themselves.
    Completed,
    Cancelled,
}

impl CampaignStatus {
    /// Whether the fan-out may still run: a campaign in one of these states has a task.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Scheduled | Self::Running | Self::Paused)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Who a campaign goes to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Audience {
    /// An explicit list of `size` ids (as given, duplicates included), stored in `pages` pages of
    /// [`AUDIENCE_PAGE`] distinct ids.
    UserIds { size: u64, pages: u32 },
    /// Every user, in id order.
    AllUsers,
    /// Every user with this tag, in id order.
    Tag { tag: String },
}

/// Where the fan-out goes on: everything before it has been processed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CampaignCursor {
    /// Explicit ids: the next id is `offset` in page `page`.
    Page { page: u32, offset: u32 },
    /// All users or a tag: the next user is the first after `after` in id order.
    After {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
    },
}

impl CampaignCursor {
    /// The cursor of a campaign that has not started.
    pub fn start(audience: &Audience) -> CampaignCursor {
        match audience {
            Audience::UserIds { .. } => CampaignCursor::Page { page: 0, offset: 0 },
            _ => CampaignCursor::After { after: None },
        }
    }
}

/// What the fan-out has done so far; saved with the cursor, so the two always agree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Users handled (`accepted + skipped`), listed duplicates included.
    pub processed: u64,
    /// Users who got a notification.
    pub accepted: u64,
    /// Users who did not: unknown, listed twice, or every channel turned off by their preferences.
    pub skipped: u64,
}

/// How many of a campaign's notifications ended in each final status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalCounts {
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl FinalCounts {
    /// Adds `delta` to the count of `status`; a status that is not final changes nothing.
    pub fn add(&mut self, status: NotificationStatus, delta: i64) {
        let count = match status {
            NotificationStatus::Completed => &mut self.completed,
            NotificationStatus::Failed => &mut self.failed,
            NotificationStatus::Cancelled => &mut self.cancelled,
            _ => return,
        };
        *count = count.saturating_add_signed(delta);
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Campaign {
    pub id: CampaignId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub status: CampaignStatus,
    pub template_id: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    pub channels: Vec<Channel>,
    pub category: Category,
    pub audience: Audience,
    /// Accepts per second at most; none: as fast as admission allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_second: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_at: Option<Timestamp>,
    pub cursor: CampaignCursor,
    pub progress: Progress,
    /// Not part of the record: the store keeps these apart and fills them in on reads.
    #[serde(skip)]
    pub finals: FinalCounts,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    pub updated_at: Timestamp,
}

impl Campaign {
    /// Users in the audience, when known: the list's size, or for the others what was processed once done.
    pub fn total(&self) -> Option<u64> {
        match self.audience {
            Audience::UserIds { size, .. } => Some(size),
            _ if self.status == CampaignStatus::Completed => Some(self.progress.processed),
            _ => None,
        }
    }
}

/// Tags a user may carry: at most this many.
pub const MAX_TAGS: usize = 32;

/// A tag is 1–64 characters of letters, digits and `_.:-`.
pub fn valid_tag(tag: &str) -> bool {
    (1..=64).contains(&tag.len())
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_short_words_of_a_few_symbols() {
        for ok in ["vip", "tier:gold", "a.b_c-d", &"x".repeat(64)] {
            assert!(valid_tag(ok), "{ok}");
        }
        for bad in ["", "has space", "ünï", "a/b", &"x".repeat(65)] {
            assert!(!valid_tag(bad), "{bad}");
        }
    }

    #[test]
    fn final_counts_move_by_status_and_never_below_zero() {
        let mut counts = FinalCounts::default();
        counts.add(NotificationStatus::Completed, 2);
        counts.add(NotificationStatus::Failed, 1);
        counts.add(NotificationStatus::Failed, -3);
        counts.add(NotificationStatus::Dispatching, 5);
        assert_eq!(counts, FinalCounts { completed: 2, failed: 0, cancelled: 0 });
    }

    #[test]
    fn the_record_round_trips_without_its_final_counts() {
        let now = Timestamp::UNIX_EPOCH;
        let audience = Audience::Tag { tag: "vip".into() };
        let campaign = Campaign {
            id: "c1".into(),
            name: None,
            status: CampaignStatus::Running,
            template_id: "t".into(),
            params: BTreeMap::new(),
            channels: vec![Channel::Push],
            category: Category::Promotion,
            cursor: CampaignCursor::start(&audience),
            audience,
            rate_per_second: Some(10),
            send_at: None,
            progress: Progress { processed: 3, accepted: 2, skipped: 1 },
            finals: FinalCounts { completed: 1, failed: 0, cancelled: 0 },
            created_at: now,
            started_at: Some(now),
            finished_at: None,
            updated_at: now,
        };
        let json = serde_json::to_string(&campaign).unwrap();
        assert!(json.contains(r#""audience":{"kind":"tag","tag":"vip"}"#), "{json}");
        let back: Campaign = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Campaign { finals: FinalCounts::default(), ..campaign.clone() });
        assert_eq!(campaign.total(), None, "unknown until done");
    }
}
