//! Queries over the state: each looks up what it needs in the index under the read lock, releases it, and then
//! reads and decodes the frames through [`Located`] handles, so the checkpointer never waits for a decode.
//! Pages fetch one id more than asked to know whether a next page exists; the cursor is the last id returned.
//! They block (disk reads), so the store runs them in `spawn_blocking`.

use std::ops::Bound;
use std::sync::Arc;

use jiff::Timestamp;
use parking_lot::RwLock;

use super::apply::State;
use super::binary;
use super::encode::{Op, from_json, split_idempotency_value};
use super::index::Loc;
use super::segments::Located;
use crate::domain::{Campaign, Channel, Delivery, IdempotencyEntry, InboxItem, Notification, Sequence, Template, User};
use crate::key::Key;
use crate::store::{Page, ScheduleCursor, StoreError, StoredNotification};

pub fn users(state: &RwLock<State>) -> Result<Vec<User>, StoreError> {
    let located = {
        let state = state.read();
        locate_all(&state, state.index.users.values())?
    };
    load_all(&located)
}

pub fn templates(state: &RwLock<State>) -> Result<Vec<Template>, StoreError> {
    let located = {
        let state = state.read();
        locate_all(&state, state.index.templates.values())?
    };
    load_all(&located)
}

/// A notification's frame and its deliveries' frames, found under the lock.
struct NotificationFrames {
    notification: Located,
    deliveries: Vec<Located>,
}

impl NotificationFrames {
    fn find(state: &State, id: &Key) -> Result<Option<NotificationFrames>, StoreError> {
        let Some(entry) = state.index.notifications.get(id) else { return Ok(None) };
        let Some(loc) = entry.loc() else { return Ok(None) };
        let mut deliveries = Vec::with_capacity(entry.deliveries.as_slice().len());
        for delivery in entry.deliveries.as_slice() {
            let loc =
                state.index.deliveries.get(delivery).ok_or_else(|| {
                    StoreError::Corrupt(format!("notification {id} lists missing delivery {delivery}"))
                })?;
            deliveries.push(state.segments.locate(*loc)?);
        }
        Ok(Some(NotificationFrames { notification: state.segments.locate(loc)?, deliveries }))
    }

    fn load(&self) -> Result<StoredNotification, StoreError> {
        Ok(StoredNotification { notification: load(&self.notification)?, deliveries: load_all(&self.deliveries)? })
    }
}

pub fn open_notifications(state: &RwLock<State>) -> Result<Vec<StoredNotification>, StoreError> {
    let frames = {
        let state = state.read();
        let open = state.index.open_by_seq();
        let mut frames = Vec::with_capacity(open.len());
        for (seq, id) in open {
            let found = NotificationFrames::find(&state, id)?;
            frames.push(found.ok_or_else(|| {
                StoreError::Corrupt(format!("open index names missing notification {id} (seq {seq})"))
            })?);
        }
        frames
    };
    frames.iter().map(NotificationFrames::load).collect()
}

pub fn notification(state: &RwLock<State>, id: &str) -> Result<Option<StoredNotification>, StoreError> {
    let frames = NotificationFrames::find(&state.read(), &Key::new(id))?;
    frames.map(|f| f.load()).transpose()
}

pub fn delivery(state: &RwLock<State>, id: &str) -> Result<Option<Delivery>, StoreError> {
    let located = locate_one(&state.read(), |s| s.index.deliveries.get(&Key::new(id)).copied())?;
    located.map(|l| load(&l)).transpose()
}

pub fn idempotency_entries(
    state: &RwLock<State>,
    now: Timestamp,
) -> Result<Vec<(String, IdempotencyEntry)>, StoreError> {
    let located = {
        let state = state.read();
        let index = &state.index;
        // The index is in milliseconds; the exact comparison below drops entries expiring within `now`'s ms.
        let start = (now.as_millisecond(), Arc::<str>::from(""));
        let mut located = Vec::new();
        for (_, key) in index.idempotency_expiry.range(start..) {
            let (_, loc) =
                index.idempotency.get(key).ok_or_else(|| StoreError::Corrupt(format!("missing key {key}")))?;
            located.push((key.to_string(), state.segments.locate(*loc)?));
        }
        located
    };
    let mut entries = Vec::with_capacity(located.len());
    for (key, located) in located {
        let Op::Idempotency { value, .. } = located.read()? else {
            return Err(StoreError::Corrupt(format!("idempotency key {key} points at another kind of record")));
        };
        let entry: IdempotencyEntry = from_json("idempotency entry", split_idempotency_value(&value)?.1)?;
        if entry.expires_at > now {
            entries.push((key, entry));
        }
    }
    Ok(entries)
}

pub fn dlq(
    state: &RwLock<State>,
    channel: Option<Channel>,
    cursor: Option<&str>,
    limit: usize,
) -> Result<Page<Delivery>, StoreError> {
    let limit = limit.max(1);
    let cursor = cursor.map(Key::new);
    let (ids, located) = {
        let state = state.read();
        let index = &state.index;
        let ids: Vec<Key> = match channel {
            None => {
                let start = cursor.map_or(Bound::Unbounded, Bound::Excluded);
                index.dlq.range((start, Bound::Unbounded)).take(limit + 1).map(|(id, _)| id.clone()).collect()
            }
            Some(channel) => {
                let channel = channel.as_str();
                let start = cursor.map_or(Bound::Included((channel, Key::min())), |c| Bound::Excluded((channel, c)));
                (index.dlq_by_channel.range((start, Bound::Unbounded)))
                    .take_while(|(c, _)| *c == channel)
                    .take(limit + 1)
                    .map(|(_, id)| id.clone())
                    .collect()
            }
        };
        let located = ids
            .iter()
            .take(limit)
            .map(|id| {
                let loc =
                    index.deliveries.get(id).ok_or_else(|| StoreError::Corrupt(format!("dlq names missing {id}")))?;
                state.segments.locate(*loc)
            })
            .collect::<Result<Vec<_>, _>>()?;
        (ids, located)
    };
    Ok(Page { items: load_all(&located)?, next_cursor: next_cursor(ids, limit) })
}

pub fn inbox(
    state: &RwLock<State>,
    user_id: &str,
    cursor: Option<&str>,
    limit: usize,
    unread_only: bool,
) -> Result<(Page<InboxItem>, u64), StoreError> {
    let limit = limit.max(1);
    let (ids, located, unread) = {
        let state = state.read();
        let Some(inbox) = state.index.inboxes.get(&Key::new(user_id)) else {
            return Ok((Page { items: Vec::new(), next_cursor: None }, 0));
        };
        let end = cursor.map_or(Bound::Unbounded, |c| Bound::Excluded(Key::new(c)));
        let page: Vec<(Key, Loc)> = (inbox.items.range((Bound::Unbounded, end)).rev())
            .filter(|(_, entry)| entry.unread || !unread_only)
            .take(limit + 1)
            .map(|(id, entry)| (id.clone(), entry.loc))
            .collect();
        let located = locate_all(&state, page.iter().take(limit).map(|(_, loc)| loc))?;
        (page.into_iter().map(|(id, _)| id).collect(), located, inbox.unread)
    };
    let items = load_all(&located)?;
    Ok((Page { items, next_cursor: next_cursor(ids, limit) }, unread))
}

/// Reads the scheduled index from just after `after` while entries are due by `until_ms`.
pub fn scheduled(
    state: &RwLock<State>,
    after: Option<&ScheduleCursor>,
    until_ms: i64,
    limit: usize,
) -> Result<Vec<Notification>, StoreError> {
    let located = {
        let state = state.read();
        let index = &state.index;
        let start = after.map_or(Bound::Unbounded, |c| Bound::Excluded((c.due_ms, Key::new(&c.id))));
        let mut located = Vec::with_capacity(limit.min(1024));
        for (_, id) in
            index.scheduled.range((start, Bound::Unbounded)).take_while(|(due, _)| *due <= until_ms).take(limit)
        {
            let loc = index
                .notifications
                .get(id)
                .and_then(|e| e.loc())
                .ok_or_else(|| StoreError::Corrupt(format!("scheduled index names missing notification {id}")))?;
            located.push(state.segments.locate(loc)?);
        }
        located
    };
    load_all(&located)
}

pub fn sequence(state: &RwLock<State>, id: &str) -> Result<Option<Sequence>, StoreError> {
    let located = locate_one(&state.read(), |s| s.index.sequences.get(&Key::new(id)).copied())?;
    located.map(|l| load(&l)).transpose()
}

pub fn open_sequences(state: &RwLock<State>) -> Result<Vec<Sequence>, StoreError> {
    let located = {
        let state = state.read();
        let locs = state.index.open_sequences.iter().map(|id| {
            state
                .index
                .sequences
                .get(id)
                .ok_or_else(|| StoreError::Corrupt(format!("open sequence index names missing sequence {id}")))
        });
        locs.map(|loc| state.segments.locate(*loc?)).collect::<Result<Vec<_>, _>>()?
    };
    load_all(&located)
}

pub fn campaign(state: &RwLock<State>, id: &str) -> Result<Option<Campaign>, StoreError> {
    let key = Key::new(id);
    let found = {
        let state = state.read();
        let finals = state.index.finals.get(&key).map(|(_, counts)| *counts).unwrap_or_default();
        let located = locate_one(&state, |s| s.index.campaigns.get(&key).copied())?;
        located.map(|l| (l, finals))
    };
    let Some((located, finals)) = found else { return Ok(None) };
    let mut campaign: Campaign = load(&located)?;
    campaign.finals = finals;
    Ok(Some(campaign))
}

pub fn active_campaigns(state: &RwLock<State>) -> Result<Vec<Campaign>, StoreError> {
    let found = {
        let state = state.read();
        let index = &state.index;
        let mut found = Vec::new();
        for id in &index.active_campaigns {
            let loc = index
                .campaigns
                .get(id)
                .ok_or_else(|| StoreError::Corrupt(format!("active campaign index names missing campaign {id}")))?;
            let finals = index.finals.get(id).map(|(_, counts)| *counts).unwrap_or_default();
            found.push((state.segments.locate(*loc)?, finals));
        }
        found
    };
    let mut campaigns = Vec::with_capacity(found.len());
    for (located, finals) in found {
        let mut campaign: Campaign = load(&located)?;
        campaign.finals = finals;
        campaigns.push(campaign);
    }
    Ok(campaigns)
}

pub fn audience_page(state: &RwLock<State>, id: &str, page: u32) -> Result<Option<Vec<String>>, StoreError> {
    let located = locate_one(&state.read(), |s| s.index.audience.get(&(Key::new(id), page)).copied())?;
    located.map(|l| load(&l)).transpose()
}

/// All users from the user index, or those carrying `tag` from the tag index; never the records.
pub fn user_ids(
    state: &RwLock<State>,
    after: Option<&str>,
    tag: Option<&str>,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let state = state.read();
    let index = &state.index;
    let after = after.map(Key::new);
    Ok(match tag {
        None => {
            let start = after.map_or(Bound::Unbounded, Bound::Excluded);
            index.users.range((start, Bound::Unbounded)).take(limit).map(|(id, _)| id.to_string()).collect()
        }
        Some(tag) => {
            let tag: Box<str> = tag.into();
            let start = after.map_or(Bound::Included((tag.clone(), Key::min())), |a| Bound::Excluded((tag.clone(), a)));
            (index.users_by_tag.range((start, Bound::Unbounded)))
                .take_while(|(t, _)| *t == tag)
                .take(limit)
                .map(|(_, id)| id.to_string())
                .collect()
        }
    })
}

pub fn max_seq(state: &RwLock<State>) -> Result<u64, StoreError> {
    Ok(state.read().index.max_seq)
}

/// The next page's cursor: the last id of this page, if one more was found.
fn next_cursor(mut ids: Vec<Key>, limit: usize) -> Option<String> {
    if ids.len() <= limit {
        return None;
    }
    ids.truncate(limit);
    ids.pop().map(|id| id.to_string())
}

fn locate_one(state: &State, get: impl FnOnce(&State) -> Option<Loc>) -> Result<Option<Located>, StoreError> {
    get(state).map(|loc| state.segments.locate(loc)).transpose()
}

fn locate_all<'a>(state: &State, locs: impl Iterator<Item = &'a Loc>) -> Result<Vec<Located>, StoreError> {
    locs.map(|loc| state.segments.locate(*loc)).collect()
}

fn load_all<T: Stored>(located: &[Located]) -> Result<Vec<T>, StoreError> {
    Located::read_many(located)?.iter().map(record).collect()
}

/// Reads a record's frame and decodes the record.
fn load<T: Stored>(located: &Located) -> Result<T, StoreError> {
    record(&located.read()?)
}

/// The record an op holds.
fn record<T: Stored>(op: &Op) -> Result<T, StoreError> {
    let value = match op {
        Op::User { value, .. }
        | Op::Template { value, .. }
        | Op::Notification { value, .. }
        | Op::Delivery { value, .. }
        | Op::InboxItem { value, .. }
        | Op::Sequence { value, .. }
        | Op::Campaign { value, .. }
        | Op::AudiencePage { value, .. } => value,
        _ => return Err(StoreError::Corrupt(format!("a {} points at another kind of record", T::WHAT))),
    };
    T::read(value)
}

/// A record kind as the segments store it: its name in errors, and how its bytes decode.
trait Stored: Sized {
    const WHAT: &'static str;
    fn read(bytes: &[u8]) -> Result<Self, StoreError>;
}

impl Stored for Notification {
    const WHAT: &'static str = "notification";
    fn read(bytes: &[u8]) -> Result<Self, StoreError> {
        binary::read_notification(bytes)
    }
}

impl Stored for Delivery {
    const WHAT: &'static str = "delivery";
    fn read(bytes: &[u8]) -> Result<Self, StoreError> {
        binary::read_delivery(bytes)
    }
}

/// Kinds stored as JSON.
macro_rules! json_records {
    ($($ty:ty => $what:literal),+ $(,)?) => {$(
        impl Stored for $ty {
            const WHAT: &'static str = $what;
            fn read(bytes: &[u8]) -> Result<Self, StoreError> {
                from_json($what, bytes)
            }
        }
    )+};
}

json_records!(
    User => "user",
    Template => "template",
    InboxItem => "inbox item",
    Sequence => "sequence",
    Campaign => "campaign",
    Vec<String> => "audience page",
);
