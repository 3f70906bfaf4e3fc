//! The in-memory indexes of the embedded store: where the live version of every record is in the record
//! segments ([`Loc`]), and the secondary indexes the reads need (open notifications by seq, scheduled ones by
//! due time, deliveries by notification, the DLQ, inboxes with unread counts, users by tag, open sequences,
//! active campaigns and their audience pages and final counts, idempotency keys by expiry).
//!
//! Pure data: no I/O. [`Index::put`] is the only index upkeep there is; the checkpointer calls it for every op
//! it stores and the scan at start for every op it finds, so the two cannot disagree. Every location a put
//! replaces or removes is handed back, so the segments can count their live bytes for compaction.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::encode::Op;
use crate::domain::{FinalCounts, NotificationStatus};
use crate::key::Key;

pub use crate::hash::HashMap;

/// Where a record's frame is: segment number, byte offset of the frame in it, frame length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    pub seg: u32,
    pub at: u32,
    pub len: u32,
}

/// A location that holds no record: the entry of a notification whose deliveries were indexed before it.
const NOWHERE: Loc = Loc { seg: 0, at: 0, len: 0 };

/// A notification's entry: its record, where it stands (open with its seq, scheduled with its due time, or
/// neither), and its deliveries' ids. Kept together because a queued notification's index cost counts against
/// issue #6's memory bound: separate ordered indexes of open notifications and of deliveries by notification
/// cost ~150 bytes more per notification. The due time kept here is what finds a scheduled entry in
/// [`Index::scheduled`] when it fires or moves: a map of its own cost a cold lookup per fired send and ~40 bytes
/// per scheduled notification.
#[derive(Debug)]
pub struct NotificationEntry {
    /// [`NOWHERE`] until the notification itself is put.
    loc: Loc,
    standing: Standing,
    /// The seq while [`Standing::Open`], the due ms while [`Standing::Scheduled`].
    at: i64,
    pub deliveries: DeliveryIds,
}

/// Which of the notification secondary indexes an entry is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Standing {
    Open,
    Scheduled,
    /// Final, or only known from its deliveries so far.
    Neither,
}

impl NotificationEntry {
    /// Where the record is, if it has been put.
    pub fn loc(&self) -> Option<Loc> {
        (self.loc != NOWHERE).then_some(self.loc)
    }

    pub fn is_open(&self) -> bool {
        self.standing == Standing::Open && self.loc != NOWHERE
    }

    /// The due ms of a scheduled notification.
    fn due_ms(&self) -> Option<i64> {
        (self.standing == Standing::Scheduled).then_some(self.at)
    }
}

/// A notification's delivery ids, in id order; most notifications have one.
#[derive(Debug, Default)]
pub enum DeliveryIds {
    #[default]
    None,
    One(Key),
    Many(Box<[Key]>),
}

impl DeliveryIds {
    pub fn as_slice(&self) -> &[Key] {
        match self {
            DeliveryIds::None => &[],
            DeliveryIds::One(id) => std::slice::from_ref(id),
            DeliveryIds::Many(ids) => ids,
        }
    }

    fn insert(&mut self, id: Key) {
        let ids = self.as_slice();
        let Err(at) = ids.binary_search(&id) else { return };
        *self = match std::mem::take(self) {
            DeliveryIds::None => DeliveryIds::One(id),
            other => {
                let mut ids = Vec::from(other.as_slice());
                ids.insert(at, id);
                DeliveryIds::Many(ids.into_boxed_slice())
            }
        };
    }
}

/// One inbox item: where it is and whether it is unread.
#[derive(Clone, Copy, Debug)]
pub struct InboxEntry {
    pub loc: Loc,
    pub unread: bool,
}

/// A user's inbox: items by id (UUIDv7, so creation order) and how many are unread.
#[derive(Default)]
pub struct Inbox {
    pub items: BTreeMap<Key, InboxEntry>,
    pub unread: u64,
}

/// Every index of the store. Fields are read by `read.rs`; only the methods here change them.
#[derive(Default)]
pub struct Index {
    pub users: BTreeMap<Key, Loc>,
    /// The tags of each user that has any, so a changed user's old tags are found without its old record.
    user_tags: HashMap<Key, Box<[Box<str>]>>,
    pub users_by_tag: BTreeSet<(Box<str>, Key)>,
    pub templates: BTreeMap<Box<str>, Loc>,
    /// Notifications, with their deliveries and whether they are open.
    pub notifications: HashMap<Key, NotificationEntry>,
    /// Scheduled notifications by (due ms, id); each one's entry in `notifications` has its due ms.
    pub scheduled: BTreeSet<(i64, Key)>,
    pub max_seq: u64,
    pub deliveries: HashMap<Key, Loc>,
    /// Dead delivery id → its channel, and (channel, id) for one channel's DLQ.
    pub dlq: BTreeMap<Key, &'static str>,
    pub dlq_by_channel: BTreeSet<(&'static str, Key)>,
    pub idempotency: HashMap<Arc<str>, (i64, Loc)>,
    /// (expiry ms, key): what is purged once it is in the past.
    pub idempotency_expiry: BTreeSet<(i64, Arc<str>)>,
    pub inboxes: HashMap<Key, Inbox>,
    pub sequences: HashMap<Key, Loc>,
    pub open_sequences: BTreeSet<Key>,
    pub campaigns: HashMap<Key, Loc>,
    pub active_campaigns: BTreeSet<Key>,
    /// Pages of each active campaign's explicit audience.
    pub audience: BTreeMap<(Key, u32), Loc>,
    /// Each campaign's final counts and where they were last stored.
    pub finals: HashMap<Key, (Loc, FinalCounts)>,
}

impl Index {
    /// Records that the record `op` puts is now stored at `loc`, keeping every secondary index in step, and
    /// pushes every location that no longer holds a live record onto `dead`. Ops that are not whole-record
    /// puts (read marks, count deltas) are not stored as themselves and change nothing here.
    pub fn put(&mut self, op: &Op, loc: Loc, dead: &mut Vec<Loc>) {
        match op {
            Op::User { id, tags, .. } => {
                let key = Key::new(id);
                replace(&mut self.users, key.clone(), loc, dead);
                self.retag(key, tags);
            }
            Op::Template { id, .. } => replace(&mut self.templates, id.as_str().into(), loc, dead),
            Op::Notification { id, seq, open, scheduled, .. } => {
                let key = Key::new(id);
                let entry = self.notification_entry(key.clone());
                let old = std::mem::replace(&mut entry.loc, loc);
                if old != NOWHERE {
                    dead.push(old);
                }
                let was_due = entry.due_ms();
                (entry.standing, entry.at) = match scheduled {
                    Some(due_ms) => (Standing::Scheduled, *due_ms),
                    None if *open => (Standing::Open, *seq as i64),
                    None => (Standing::Neither, 0),
                };
                self.max_seq = self.max_seq.max(*seq);
                self.reschedule(key, was_due, *scheduled);
            }
            Op::Delivery { id, notification_id, channel, dead: is_dead, .. } => {
                let key = Key::new(id);
                replace(&mut self.deliveries, key.clone(), loc, dead);
                self.notification_entry(Key::new(notification_id)).deliveries.insert(key.clone());
                let previous = if *is_dead { self.dlq.insert(key.clone(), channel) } else { self.dlq.remove(&key) };
                if let Some(old_channel) = previous
                    && !(*is_dead && old_channel == *channel)
                {
                    self.dlq_by_channel.remove(&(old_channel, key.clone()));
                }
                if *is_dead {
                    self.dlq_by_channel.insert((channel, key));
                }
            }
            Op::Idempotency { key, expiry_ms, .. } => {
                let key: Arc<str> = key.as_str().into();
                if let Some((old_expiry, old)) = self.idempotency.insert(key.clone(), (*expiry_ms, loc)) {
                    dead.push(old);
                    self.idempotency_expiry.remove(&(old_expiry, key.clone()));
                }
                self.idempotency_expiry.insert((*expiry_ms, key));
            }
            Op::InboxItem { user_id, id, unread, .. } => {
                let inbox = self.inboxes.entry(Key::new(user_id)).or_default();
                let entry = InboxEntry { loc, unread: *unread };
                let was_unread = inbox.items.insert(Key::new(id), entry).is_some_and(|old| {
                    dead.push(old.loc);
                    old.unread
                });
                match (was_unread, *unread) {
                    (false, true) => inbox.unread += 1,
                    (true, false) => inbox.unread = inbox.unread.saturating_sub(1),
                    _ => {}
                }
            }
            Op::Sequence { id, open, .. } => {
                let key = Key::new(id);
                replace(&mut self.sequences, key.clone(), loc, dead);
                if *open {
                    self.open_sequences.insert(key);
                } else {
                    self.open_sequences.remove(&key);
                }
            }
            Op::Campaign { id, active, .. } => {
                let key = Key::new(id);
                replace(&mut self.campaigns, key.clone(), loc, dead);
                if *active {
                    self.active_campaigns.insert(key);
                } else {
                    self.active_campaigns.remove(&key);
                    self.drop_audience(&key, dead);
                }
            }
            Op::AudiencePage { campaign, page, .. } => {
                replace(&mut self.audience, (Key::new(campaign), *page), loc, dead)
            }
            Op::CampaignCounts { campaign, counts } => {
                if let Some((old, _)) = self.finals.insert(Key::new(campaign), (loc, *counts)) {
                    dead.push(old);
                }
            }
            Op::MarkRead { .. } | Op::MarkAllRead { .. } | Op::CampaignFinal { .. } => {}
        }
    }

    /// Where the record `op` puts is stored now, for moving it; None if the index does not hold it (or `op` is
    /// not a whole-record put).
    pub fn slot(&mut self, op: &Op) -> Option<&mut Loc> {
        match op {
            Op::User { id, .. } => self.users.get_mut(&Key::new(id)),
            Op::Template { id, .. } => self.templates.get_mut(id.as_str()),
            Op::Notification { id, .. } => {
                self.notifications.get_mut(&Key::new(id)).map(|e| &mut e.loc).filter(|loc| **loc != NOWHERE)
            }
            Op::Delivery { id, .. } => self.deliveries.get_mut(&Key::new(id)),
            Op::Idempotency { key, .. } => self.idempotency.get_mut(key.as_str()).map(|(_, loc)| loc),
            Op::InboxItem { user_id, id, .. } => self
                .inboxes
                .get_mut(&Key::new(user_id))
                .and_then(|inbox| inbox.items.get_mut(&Key::new(id)))
                .map(|entry| &mut entry.loc),
            Op::Sequence { id, .. } => self.sequences.get_mut(&Key::new(id)),
            Op::Campaign { id, .. } => self.campaigns.get_mut(&Key::new(id)),
            Op::AudiencePage { campaign, page, .. } => self.audience.get_mut(&(Key::new(campaign), *page)),
            Op::CampaignCounts { campaign, .. } => self.finals.get_mut(&Key::new(campaign)).map(|(loc, _)| loc),
            Op::MarkRead { .. } | Op::MarkAllRead { .. } | Op::CampaignFinal { .. } => None,
        }
    }

    /// Open notifications' ids in seq order (a scan of every notification: only a start asks).
    pub fn open_by_seq(&self) -> Vec<(u64, &Key)> {
        let mut open: Vec<(u64, &Key)> =
            self.notifications.iter().filter(|(_, e)| e.is_open()).map(|(id, e)| (e.at as u64, id)).collect();
        open.sort_unstable();
        open
    }

    fn notification_entry(&mut self, id: Key) -> &mut NotificationEntry {
        self.notifications.entry(id).or_insert_with(|| NotificationEntry {
            loc: NOWHERE,
            standing: Standing::Neither,
            at: 0,
            deliveries: DeliveryIds::None,
        })
    }

    /// A campaign's final counts after adding `delta` to `status`'s (stored by the caller as
    /// [`Op::CampaignCounts`]).
    pub fn counted(&self, campaign: &str, status: NotificationStatus, delta: i64) -> FinalCounts {
        let mut counts = self.finals.get(&Key::new(campaign)).map(|(_, counts)| *counts).unwrap_or_default();
        counts.add(status, delta);
        counts
    }

    /// Removes up to `max` idempotency keys that expired before `now_ms`.
    pub fn purge_idempotency(&mut self, now_ms: i64, max: usize, dead: &mut Vec<Loc>) {
        for _ in 0..max {
            let Some((expiry, _)) = self.idempotency_expiry.first() else { return };
            if *expiry >= now_ms {
                return;
            }
            let (_, key) = self.idempotency_expiry.pop_first().expect("checked above");
            if let Some((_, loc)) = self.idempotency.remove(&key) {
                dead.push(loc);
            }
        }
    }

    /// Drops the audience pages of every campaign that is not active (after a scan: pages a crash left behind
    /// a campaign's end, which the end would have dropped).
    pub fn drop_ended_audiences(&mut self, dead: &mut Vec<Loc>) {
        let ended: BTreeSet<Key> =
            self.audience.keys().filter(|(c, _)| !self.active_campaigns.contains(c)).map(|(c, _)| c.clone()).collect();
        for campaign in ended {
            self.drop_audience(&campaign, dead);
        }
    }

    fn drop_audience(&mut self, campaign: &Key, dead: &mut Vec<Loc>) {
        let pages: Vec<u32> =
            self.audience.range((campaign.clone(), 0)..=(campaign.clone(), u32::MAX)).map(|((_, p), _)| *p).collect();
        for page in pages {
            dead.extend(self.audience.remove(&(campaign.clone(), page)));
        }
    }

    /// Makes the tag index say exactly `tags` for `user`.
    fn retag(&mut self, user: Key, tags: &[String]) {
        let old = if tags.is_empty() {
            self.user_tags.remove(&user)
        } else {
            self.user_tags.insert(user.clone(), tags.iter().map(|t| t.as_str().into()).collect())
        };
        let old = old.unwrap_or_default();
        for tag in old.iter().filter(|t| !tags.iter().any(|n| n == &***t)) {
            self.users_by_tag.remove(&(tag.clone(), user.clone()));
        }
        for tag in tags.iter().filter(|t| !old.iter().any(|o| &**o == t.as_str())) {
            self.users_by_tag.insert((tag.as_str().into(), user.clone()));
        }
    }

    /// Moves the notification's scheduled entry from `was` to `due_ms` (either may be none).
    fn reschedule(&mut self, id: Key, was: Option<i64>, due_ms: Option<i64>) {
        if was == due_ms {
            return;
        }
        if let Some(was) = was {
            self.scheduled.remove(&(was, id.clone()));
        }
        if let Some(due_ms) = due_ms {
            self.scheduled.insert((due_ms, id));
        }
    }
}

/// Points `key` at `loc`, pushing the location it replaces onto `dead`.
fn replace<K: Ord + std::hash::Hash, M: Map<K>>(map: &mut M, key: K, loc: Loc, dead: &mut Vec<Loc>) {
    if let Some(old) = map.insert_loc(key, loc) {
        dead.push(old);
    }
}

/// The two map kinds the primary indexes use.
trait Map<K> {
    fn insert_loc(&mut self, key: K, loc: Loc) -> Option<Loc>;
}

impl<K: Ord> Map<K> for BTreeMap<K, Loc> {
    fn insert_loc(&mut self, key: K, loc: Loc) -> Option<Loc> {
        self.insert(key, loc)
    }
}

impl<K: Eq + std::hash::Hash> Map<K> for HashMap<K, Loc> {
    fn insert_loc(&mut self, key: K, loc: Loc) -> Option<Loc> {
        self.insert(key, loc)
    }
}
