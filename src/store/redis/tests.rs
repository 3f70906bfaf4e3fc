//! Unit tests of the parts that need no Redis: key layout and encoding. Behaviour against a real redis-server
//! is in `tests/store_conformance.rs` and `tests/store_redis.rs`.

use std::sync::Arc;

use super::encode::{Layout, encode};
use super::keys::Keys;
use super::scripts::SCRIPTS;
use crate::config::{RedisSettings, Secret};
use crate::domain::{IdempotencyEntry, NotificationStatus, User};
use crate::store::Write;

fn layout() -> Layout {
    Layout { keys: Keys::new("h:"), inbox_cap: 10, retention_s: 60 }
}

#[test]
fn keys_of_different_kinds_never_collide() {
    let keys = Keys::new("h:");
    assert_ne!(keys.inbox("x:items"), keys.inbox_items("x"));
    assert_ne!(keys.inbox_unread("u"), keys.inbox_read("u"));
    assert_ne!(keys.notification("x"), keys.deliveries_of("x"));
    assert_ne!(keys.dlq(), keys.dlq_channel(""));
    assert_ne!(keys.idempotency_index(), keys.idempotency("potency"));
    assert_eq!(keys.delivery("d1"), format!("{}d1", keys.delivery_prefix()));
    assert!(keys.users().starts_with("h:"));
}

#[test]
fn encoding_marks_the_scripts_a_submission_calls() {
    let user = Write::PutUser(Arc::new(User::new("u1".into(), jiff::Timestamp::UNIX_EPOCH)));
    let plain = encode(&layout(), vec![user], 0).unwrap();
    assert_eq!((plain.cmds.len(), plain.scripts, plain.writes), (1, 0, 1));

    let mark = Write::MarkAllInboxRead { user_id: "u1".into(), at: jiff::Timestamp::UNIX_EPOCH };
    let empty_mark = Write::MarkInboxRead { user_id: "u1".into(), ids: vec![], at: jiff::Timestamp::UNIX_EPOCH };
    let marks = encode(&layout(), vec![mark, empty_mark], 0).unwrap();
    assert_eq!((marks.cmds.len(), marks.scripts, marks.writes), (1, 1 << SCRIPTS[4].bit, 2));
}

#[test]
fn an_expired_idempotency_entry_is_deleted_not_set() {
    let entry = IdempotencyEntry {
        notification_id: "n1".into(),
        body_hash: 1,
        status: NotificationStatus::Accepted,
        expires_at: jiff::Timestamp::from_millisecond(1_000).unwrap(),
    };
    let put = |now| encode(&layout(), vec![Write::PutIdempotency { key: "k".into(), entry: entry.clone() }], now);
    let live = put(999).unwrap();
    assert_eq!(live.cmds[0].args_iter().count(), 5, "SET key json PXAT ms");
    let expired = put(1_000).unwrap();
    let packed = String::from_utf8_lossy(&expired.cmds[0].get_packed_command()).to_string();
    assert!(packed.contains("DEL"), "{packed}");
}

#[test]
fn logs_and_errors_name_the_redis_without_its_password() {
    let settings =
        RedisSettings { url: Secret::new("redis://admin:hunter2@cache.internal:6380/2"), ..RedisSettings::default() };
    assert_eq!(super::redact(&settings), "cache.internal:6380/2");
    assert_eq!(super::redact(&RedisSettings::default()), "127.0.0.1:6379");
}

#[test]
fn every_script_has_a_distinct_bit_and_sha() {
    let mut bits: Vec<_> = SCRIPTS.iter().map(|s| s.bit).collect();
    bits.dedup();
    assert_eq!(bits.len(), SCRIPTS.len());
    assert!(SCRIPTS.iter().all(|s| s.sha.len() == 40));
}
