//! The log's own behaviour: every op survives its binary form, replay stops at a torn or corrupt record but
//! goes on with the next segment, and covered segments are deleted.

use std::io::Write as _;

use jiff::Timestamp;

use super::super::encode::Op;
use super::*;
use crate::domain::{FinalCounts, NotificationStatus};

fn every_op() -> Vec<Op> {
    let value = br#"{"a":1}"#.to_vec();
    let at = Timestamp::new(1_700_000_000, 123_456_789).unwrap();
    vec![
        Op::User { id: "u1".into(), tags: vec!["vip".into(), "kr".into()], value: value.clone() },
        Op::Template { id: "t1".into(), value: value.clone() },
        Op::Notification { id: "n1".into(), seq: 7, open: false, scheduled: Some(-5), value: value.clone() },
        Op::Notification { id: "n2".into(), seq: 8, open: true, scheduled: None, value: value.clone() },
        Op::Delivery {
            id: "d1".into(),
            notification_id: "n1".into(),
            channel: "in_app",
            dead: true,
            value: value.clone(),
        },
        Op::Idempotency { key: "k".into(), expiry_ms: 99, value: vec![0, 1, 2] },
        Op::InboxItem { user_id: "u1".into(), id: "i1".into(), unread: true, value: value.clone() },
        Op::MarkRead { user_id: "u1".into(), ids: vec!["i1".into(), "ü".into()], at },
        Op::MarkAllRead { user_id: "u1".into(), at },
        Op::Sequence { id: "s1".into(), open: true, value: value.clone() },
        Op::Campaign { id: "c1".into(), active: false, value: value.clone() },
        Op::AudiencePage { campaign: "c1".into(), page: 3, value },
        Op::CampaignFinal { campaign: "c1".into(), status: NotificationStatus::Cancelled, delta: -1 },
        Op::CampaignCounts { campaign: "c1".into(), counts: FinalCounts { completed: 3, failed: 2, cancelled: 1 } },
    ]
}

#[test]
fn every_op_decodes_to_what_was_encoded() {
    let ops = every_op();
    let mut bytes = Vec::new();
    ops.iter().for_each(|op| codec::encode(op, &mut bytes));
    let mut input = bytes.as_slice();
    let decoded: Vec<Op> = (0..ops.len()).map(|_| codec::decode(&mut input).unwrap()).collect();
    assert_eq!(decoded, ops);
    assert!(input.is_empty());
    assert!(codec::decode(&mut &bytes[..bytes.len() - 1][bytes.len() - 3..]).is_err(), "a cut op is an error");
}

fn read_all(dir: &Path) -> Vec<(u64, Vec<Op>)> {
    let mut records = Vec::new();
    replay(dir, |lsn, ops| {
        records.push((lsn, ops));
        Ok(())
    })
    .unwrap();
    records
}

#[test]
fn replay_returns_every_appended_record_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let ops = every_op();
    let mut wal = Wal::new(dir.path(), 1).unwrap();
    assert_eq!(wal.append([&ops[..2], &ops[2..5]].into_iter()).unwrap(), 1);
    assert_eq!(wal.append(std::iter::once(&ops[5..])).unwrap(), 2);
    assert_eq!(wal.append(std::iter::empty()).unwrap(), 3);
    let records = read_all(dir.path());
    assert_eq!(records, vec![(1, ops[..5].to_vec()), (2, ops[5..].to_vec()), (3, vec![])]);
}

#[test]
fn replay_stops_a_segment_at_a_torn_or_corrupt_record_and_goes_on_with_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let ops = every_op();
    let mut wal = Wal::new(dir.path(), 1).unwrap();
    wal.append(std::iter::once(&ops[..1])).unwrap();
    wal.append(std::iter::once(&ops[1..2])).unwrap();
    drop(wal);
    let first = segment_path(dir.path(), 1);
    // A torn write: half of a third record.
    let mut file = OpenOptions::new().append(true).open(&first).unwrap();
    file.write_all(&[40, 0, 0, 0, 1, 2, 3, 4, 5]).unwrap();
    assert_eq!(read_all(dir.path()).len(), 2, "the torn tail is not a record");

    // A later segment (as after a failed append) is read on.
    let mut wal = Wal::new(dir.path(), 4).unwrap();
    wal.append(std::iter::once(&ops[2..3])).unwrap();
    drop(wal);
    assert_eq!(read_all(dir.path()).iter().map(|(lsn, _)| *lsn).collect::<Vec<_>>(), vec![1, 2, 4]);

    // A flipped bit in the second record: its checksum fails, and the first segment ends at the first record.
    let mut bytes = std::fs::read(&first).unwrap();
    let second = MAGIC.len() + HEADER_BYTES + 8 + {
        let mut one = Vec::new();
        codec::encode(&ops[0], &mut one);
        one.len()
    };
    bytes[second + HEADER_BYTES + 9] ^= 1;
    std::fs::write(&first, bytes).unwrap();
    assert_eq!(read_all(dir.path()).iter().map(|(lsn, _)| *lsn).collect::<Vec<_>>(), vec![1, 4]);
}

#[test]
fn a_segment_is_deleted_once_everything_in_it_is_applied_but_never_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    for first in [1, 5, 9] {
        let mut wal = Wal::new(dir.path(), first).unwrap();
        for _ in 0..4 {
            wal.append(std::iter::empty()).unwrap();
        }
    }
    assert_eq!(remove_through(dir.path(), 3).unwrap(), 0, "segment 1 still holds record 4");
    assert_eq!(remove_through(dir.path(), 4).unwrap(), 1);
    assert_eq!(remove_through(dir.path(), 100).unwrap(), 1, "the newest segment stays");
    assert_eq!(read_all(dir.path()).iter().map(|(lsn, _)| *lsn).collect::<Vec<_>>(), vec![9, 10, 11, 12]);
}
