//! Applying logged ops: each record put is appended to the segments as it was logged and the index pointed at
//! it; read marks and campaign count deltas become whole records (the marked inbox item, the counts as they
//! stand), so the segments only ever hold whole-record puts and a scan can rebuild the index from them. The
//! checkpointer (`checkpoint.rs`) and the replay at start (`mod.rs`) apply through [`apply`]; only they write.

use std::collections::HashMap;

use jiff::Timestamp;

use super::encode::{Op, from_json, to_json};
use super::index::{Index, Loc};
use super::segments::{Scanned, Segments};
use crate::domain::{FinalCounts, InboxItem};
use crate::key::Key;
use crate::store::StoreError;

/// Expired idempotency keys removed per checkpoint at most, so purging never makes one checkpoint slow.
const PURGE_PER_CHECKPOINT: usize = 10_000;

/// The store's state: the indexes and the segments they point into. Behind one lock: the checkpointer
/// writes, readers look up locations and read frames through [`super::segments::Located`] handles.
pub struct State {
    pub index: Index,
    pub segments: Segments,
}

impl State {
    /// Appends `op` and points the index at it.
    pub fn store(&mut self, op: &Op, dead: &mut Vec<Loc>) {
        let loc = self.segments.append(op);
        self.segments.live_at(loc);
        self.index.put(op, loc, dead);
    }

    /// Appends the frame of a record moved out of a segment being compacted, if `at` is still where the index
    /// has it; returns whether it moved.
    pub fn relocate(&mut self, op: &Op, at: Loc, frame: &[u8]) -> bool {
        if self.index.slot(op).is_none_or(|slot| *slot != at) {
            return false;
        }
        let loc = self.segments.append_frame(frame);
        *self.index.slot(op).expect("checked above") = loc;
        self.segments.live_at(loc);
        self.segments.dead_at(at);
        true
    }

    /// Appends a checkpoint mark for log LSN `lsn`.
    pub fn mark(&mut self, lsn: u64) {
        self.segments.append_mark(Scanned { lsn, max_seq: self.index.max_seq });
    }
}

/// Applies `ops` (the coalesced ops of log records up to `lsn`) at `now`, then the checkpoint mark, into the
/// pending frames (the caller flushes them). An op that reads back a corrupt record is left out with an
/// error in the log (it was acknowledged already; refusing it would wedge every later one). Returns how many
/// ops were applied.
pub fn apply(state: &mut State, ops: &[&Op], lsn: u64, now: Timestamp) -> usize {
    let mut dead = Vec::new();
    let mut counts: HashMap<&str, FinalCounts> = HashMap::new();
    let mut applied = 0;
    for op in ops {
        let result = match op {
            Op::MarkRead { user_id, ids, at } => {
                ids.iter().try_for_each(|id| mark_read(state, user_id, &Key::new(id), *at, &mut dead))
            }
            Op::MarkAllRead { user_id, at } => {
                let unread: Vec<Key> = state.index.inboxes.get(&Key::new(user_id)).map_or_else(Vec::new, |inbox| {
                    inbox.items.iter().filter(|(_, e)| e.unread).map(|(id, _)| id.clone()).collect()
                });
                unread.iter().try_for_each(|id| mark_read(state, user_id, id, *at, &mut dead))
            }
            Op::CampaignFinal { campaign, status, delta } => {
                let counts = counts.entry(campaign).or_insert_with(|| state.index.counted(campaign, *status, 0));
                counts.add(*status, *delta);
                Ok(())
            }
            put => {
                state.store(put, &mut dead);
                Ok(())
            }
        };
        match result {
            Ok(()) => applied += 1,
            Err(error) => tracing::error!(%error, "a logged write reads back a corrupt record; skipped"),
        }
    }
    for (campaign, counts) in counts {
        state.store(&Op::CampaignCounts { campaign: campaign.to_string(), counts }, &mut dead);
    }
    state.index.purge_idempotency(now.as_millisecond(), PURGE_PER_CHECKPOINT, &mut dead);
    dead.into_iter().for_each(|loc| state.segments.dead_at(loc));
    state.mark(lsn);
    applied
}

/// Marks one item read by storing it again with `read_at`; unknown and already-read items are left alone.
fn mark_read(state: &mut State, user_id: &str, id: &Key, at: Timestamp, dead: &mut Vec<Loc>) -> Result<(), StoreError> {
    let entry = state.index.inboxes.get(&Key::new(user_id)).and_then(|inbox| inbox.items.get(id));
    let Some(entry) = entry.filter(|e| e.unread) else { return Ok(()) };
    let Op::InboxItem { user_id, id, value, .. } = state.segments.read(entry.loc)? else {
        return Err(StoreError::Corrupt("an inbox entry points at another kind of record".into()));
    };
    let mut item: InboxItem = from_json("inbox item", &value)?;
    item.read_at = Some(at);
    state.store(&Op::InboxItem { user_id, id, unread: false, value: to_json(&item)? }, dead);
    Ok(())
}
