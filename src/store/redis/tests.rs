//! Unit tests of the parts that need no Redis: key layout and encoding. Behaviour against a real redis-server
//! is in `tests/store_conformance.rs` and `tests/store_redis.rs`.

use std::sync::Arc;

use super::encode::{Layout, encode};
use super::keys::{Keys, scheduled_member, scheduled_until};
use super::scripts::SCRIPTS;
use crate::config::{RedisSettings, Secret};
use crate::domain::{IdempotencyEntry, NotificationStatus, OnFailure, Sequence, SequenceStatus, User};
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
    assert_ne!(keys.campaign("s"), keys.active_campaigns());
    assert_ne!(keys.audience("x"), keys.campaign_finals("x"));
    assert_ne!(keys.user_ids(), keys.users());
    assert_eq!(keys.tag("vip"), format!("{}vip", keys.tag_prefix()));
}

#[test]
fn encoding_marks_the_scripts_a_submission_calls() {
    let count = Write::CountCampaignFinal { campaign: "c1".into(), status: NotificationStatus::Failed, delta: 1 };
    let plain = encode(&layout(), vec![count], 0).unwrap();
    assert_eq!((plain.cmds.len(), plain.scripts, plain.writes), (1, 0, 1), "HINCRBY, no script");
    let user = Write::PutUser(Arc::new(User::new("u1".into(), jiff::Timestamp::UNIX_EPOCH)));
    let user = encode(&layout(), vec![user], 0).unwrap();
    assert_eq!((user.cmds.len(), user.scripts), (1, 1 << SCRIPTS[5].bit), "tag upkeep reads the old tags");
    let ignored = Write::CountCampaignFinal { campaign: "c1".into(), status: NotificationStatus::Accepted, delta: 1 };
    assert!(encode(&layout(), vec![ignored], 0).unwrap().cmds.is_empty(), "a status that is not final");

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

#[test]
fn scheduled_members_sort_bytewise_by_due_time_then_id() {
    let entries = [(i64::MIN, "a"), (-1, "z"), (0, "a"), (0, "b"), (1, "a"), (10_000, ""), (i64::MAX, "a")];
    let members: Vec<_> = entries.iter().map(|(due, id)| scheduled_member(*due, id)).collect();
    assert!(members.windows(2).all(|w| w[0] < w[1]), "{members:?}");
    // The bound is exclusive and sits above every member due by then, below every later one.
    let bound = scheduled_until(0);
    let bound = bound.strip_prefix('(').unwrap();
    assert!(scheduled_member(0, "\u{10ffff}").as_str() < bound && bound < scheduled_member(1, "").as_str());
    assert!(scheduled_member(i64::MAX, "zz").as_str() < &scheduled_until(i64::MAX)[1..], "no overflow at the top");
}

#[test]
fn a_final_sequence_is_set_to_expire_and_a_running_one_is_not() {
    let put = |status| {
        let sequence = Sequence {
            id: "s1".into(),
            user_id: "u1".into(),
            steps: vec![],
            step_timeout_ms: 1_000,
            on_failure: OnFailure::Stop,
            status,
            current: 0,
            created_at: jiff::Timestamp::UNIX_EPOCH,
            updated_at: jiff::Timestamp::UNIX_EPOCH,
        };
        let encoded = encode(&layout(), vec![Write::PutSequence(Arc::new(sequence))], 0).unwrap();
        encoded.cmds.iter().map(|c| String::from_utf8_lossy(&c.get_packed_command()).to_string()).collect::<Vec<_>>()
    };
    let running = put(SequenceStatus::Running);
    assert!(!running[0].contains("\r\nEX\r\n") && running[1].contains("ZADD"), "{running:?}");
    let done = put(SequenceStatus::Failed);
    assert!(done[0].contains("\r\nEX\r\n$2\r\n60\r\n") && done[1].contains("ZREM"), "{done:?}");
}
