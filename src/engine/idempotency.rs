//! The idempotency index: explicit keys (24 h) and content-hash duplicates (60 s), SPEC §4.
//!
//! The index is global, not per shard, because a key may be reused across users (that is a conflict, 409).
//! It is an in-memory map split into lock stripes; entries are persisted with the notification they belong
//! to (same commit) and reloaded at start. [`purge_expired`] drops expired entries from memory every
//! [`PURGE_INTERVAL`]; without it every accepted notification's content hash would stay for the process's life.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::domain::{IdempotencyEntry, NotificationStatus};

const STRIPES: usize = 64;

/// How often expired entries leave memory: a sixth of the default 60 s content-hash window, so the index holds
/// about 70 s of content hashes (at 4,000 accepts/s, ~280,000 entries) plus the 24 h keys.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(10);

enum Slot {
    /// The first request with this key is being accepted.
    Pending {
        body_hash: u64,
    },
    Done(IdempotencyEntry),
}

/// What the index says about a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Reservation {
    /// First time seen: the caller now owns the key and must `complete` or `release` it.
    New,
    /// Seen before with the same body: answer the first answer again.
    Replay(IdempotencyEntry),
    /// Seen before with a different body.
    Conflict,
    /// The first request with this key is still being accepted.
    InProgress,
}

/// Stable 64-bit FNV-1a over separated parts, so hashes survive restarts (unlike `RandomState`).
pub struct StableHasher(u64);

impl Default for StableHasher {
    fn default() -> Self {
        StableHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl StableHasher {
    /// Adds one part; parts are separated, so `("ab", "c")` and `("a", "bc")` differ.
    pub fn part(&mut self, bytes: &[u8]) -> &mut Self {
        for byte in bytes.iter().copied().chain([0xff]) {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// [`StableHasher`] over `parts`.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut hasher = StableHasher::default();
    for part in parts {
        hasher.part(part);
    }
    hasher.finish()
}

/// Keys currently remembered, striped by key hash.
pub struct IdempotencyIndex {
    stripes: Vec<Mutex<HashMap<String, Slot>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for IdempotencyIndex {
    fn default() -> Self {
        IdempotencyIndex {
            stripes: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
        }
    }
}

impl IdempotencyIndex {
    fn stripe(&self, key: &str) -> &Mutex<HashMap<String, Slot>> {
        &self.stripes[(self.hasher.hash_one(key) as usize) % STRIPES]
    }

    /// Looks the key up and, when it is new (or expired), reserves it.
    pub fn reserve(&self, key: &str, body_hash: u64, now: Timestamp) -> Reservation {
        let mut map = self.stripe(key).lock();
        match map.get(key) {
            Some(Slot::Done(entry)) if entry.expires_at > now => {
                if entry.body_hash == body_hash {
                    Reservation::Replay(entry.clone())
                } else {
                    Reservation::Conflict
                }
            }
            Some(Slot::Pending { body_hash: pending }) => {
                if *pending == body_hash {
                    Reservation::InProgress
                } else {
                    Reservation::Conflict
                }
            }
            _ => {
                map.insert(key.to_string(), Slot::Pending { body_hash });
                Reservation::New
            }
        }
    }

    /// The reserved request was accepted.
    pub fn complete(&self, key: &str, entry: IdempotencyEntry) {
        self.stripe(key).lock().insert(key.to_string(), Slot::Done(entry));
    }

    /// The reserved request was not accepted: forget the key.
    pub fn release(&self, key: &str) {
        let mut map = self.stripe(key).lock();
        if matches!(map.get(key), Some(Slot::Pending { .. })) {
            map.remove(key);
        }
    }

    /// Loads an entry read from the store at start.
    pub fn restore(&self, key: String, entry: IdempotencyEntry) {
        self.stripe(&key).lock().insert(key, Slot::Done(entry));
    }

    /// Drops expired entries; returns how many are left. A stripe left at under a quarter of its capacity
    /// gives the rest back (after a burst, the window's entries are gone a minute later; the table is not).
    pub fn purge(&self, now: Timestamp) -> usize {
        self.stripes
            .iter()
            .map(|stripe| {
                let mut map = stripe.lock();
                map.retain(|_, slot| !matches!(slot, Slot::Done(e) if e.expires_at <= now));
                let left = map.len();
                if left < map.capacity() / 4 {
                    map.shrink_to(left * 2);
                }
                left
            })
            .sum()
    }
}

/// Purges `index` every [`PURGE_INTERVAL`] until `stop`.
pub async fn purge_expired(index: Arc<IdempotencyIndex>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(PURGE_INTERVAL) => {}
        }
        let left = index.purge(Timestamp::now());
        tracing::debug!(left, "expired idempotency entries purged");
    }
}

/// An entry for a just-accepted notification.
pub fn entry(
    notification_id: &str,
    body_hash: u64,
    status: NotificationStatus,
    expires_at: Timestamp,
) -> IdempotencyEntry {
    IdempotencyEntry { notification_id: notification_id.to_string(), body_hash, status, expires_at }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn same_key_same_body_replays_and_different_body_conflicts() {
        let index = IdempotencyIndex::default();
        assert_eq!(index.reserve("k", 1, at(0)), Reservation::New);
        assert_eq!(index.reserve("k", 1, at(0)), Reservation::InProgress);
        assert_eq!(index.reserve("k", 2, at(0)), Reservation::Conflict);
        index.complete("k", entry("n1", 1, NotificationStatus::Accepted, at(100)));
        match index.reserve("k", 1, at(50)) {
            Reservation::Replay(e) => assert_eq!(e.notification_id, "n1"),
            other => panic!("{other:?}"),
        }
        assert_eq!(index.reserve("k", 2, at(50)), Reservation::Conflict);
    }

    #[test]
    fn expired_and_released_keys_are_new_again() {
        let index = IdempotencyIndex::default();
        assert_eq!(index.reserve("k", 1, at(0)), Reservation::New);
        index.release("k");
        assert_eq!(index.reserve("k", 2, at(0)), Reservation::New);
        index.complete("k", entry("n1", 2, NotificationStatus::Accepted, at(10)));
        assert_eq!(index.reserve("k", 3, at(10)), Reservation::New);
        index.complete("k", entry("n2", 3, NotificationStatus::Accepted, at(20)));
        assert_eq!(index.purge(at(30)), 0);
    }

    #[test]
    fn a_purge_drops_expired_entries_and_gives_back_an_emptied_table() {
        let index = IdempotencyIndex::default();
        for n in 0..10_000 {
            let key = format!("content:{n}");
            assert_eq!(index.reserve(&key, 1, at(0)), Reservation::New);
            index.complete(&key, entry("n", 1, NotificationStatus::Accepted, at(if n < 10 { 100 } else { 60 })));
        }
        assert_eq!(index.purge(at(59)), 10_000);
        assert_eq!(index.purge(at(60)), 10);
        let capacity: usize = index.stripes.iter().map(|s| s.lock().capacity()).sum();
        assert!(capacity < 1_000, "{capacity} slots kept for 10 entries");
    }

    #[test]
    fn stable_hash_separates_parts() {
        assert_ne!(stable_hash(&[b"ab", b"c"]), stable_hash(&[b"a", b"bc"]));
        assert_eq!(stable_hash(&[b"x"]), stable_hash(&[b"x"]));
    }
}
