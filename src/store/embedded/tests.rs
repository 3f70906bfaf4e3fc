//! Unit tests of the embedded store's internals: what encoding extracts, how applying ops keeps the indexes in
//! step with the records, what the checkpointer coalesces, what the log replays at start, what the scan at start
//! rebuilds and cuts off, compaction, the import of an earlier store, and what happens to a write that cannot
//! be applied. Behaviour every backend shares is in `tests/store_conformance.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};

use super::apply::{self, State};
use super::checkpoint::{Logged, coalesce};
use super::encode::{Op, encode, split_idempotency_value};
use super::index::Index;
use super::segments::{self, Segments};
use super::{EmbeddedStore, import};
use crate::domain::*;
use crate::key::Key;
use crate::store::{Store, StoreError, Write};

fn delivery(id: &str, channel: Channel, status: DeliveryStatus) -> Arc<Delivery> {
    Arc::new(Delivery {
        id: id.into(),
        notification_id: "n1".into(),
        seq: 1,
        owner: "u1".into(),
        channel,
        provider: ProviderKind::Twilio,
        address: Address::Phone { phone: "+821012345678".into() },
        priority: Priority::Normal,
        status,
        attempts: 0,
        provider_message_id: None,
        events: vec![],
        updated_at: Timestamp::UNIX_EPOCH,
    })
}

fn notification(id: &str, seq: u64, status: NotificationStatus) -> Arc<Notification> {
    Arc::new(Notification {
        id: id.into(),
        seq,
        owner: "u1".into(),
        user_id: Some("u1".into()),
        category: Category::Transaction,
        channels: vec![Channel::Sms],
        strategy: Strategy::Parallel,
        priority: Priority::Normal,
        template_id: None,
        contents: vec![(Channel::Sms, Arc::new(Rendered { body: "hi".into(), ..Rendered::default() }))],
        status,
        current_channel: 0,
        idempotency_key: None,
        metadata: None,
        expires_at: None,
        send_at: None,
        reason: None,
        sequence: None,
        campaign: None,
        created_at: Timestamp::UNIX_EPOCH,
        updated_at: Timestamp::UNIX_EPOCH,
    })
}

fn inbox_item(id: &str, read_at: Option<Timestamp>) -> Arc<InboxItem> {
    Arc::new(InboxItem {
        id: id.into(),
        user_id: "u1".into(),
        notification_id: "n1".into(),
        category: Category::Announcement,
        title: None,
        body: "hello".into(),
        created_at: Timestamp::UNIX_EPOCH,
        read_at,
    })
}

fn idempotency(expires_at: Timestamp) -> Write {
    let entry = IdempotencyEntry {
        notification_id: "n1".into(),
        body_hash: 7,
        status: NotificationStatus::Accepted,
        expires_at,
    };
    Write::PutIdempotency { key: "k1".into(), entry }
}

/// A state on fresh segments in a temporary directory, as the checkpointer holds it.
fn fresh_state() -> (tempfile::TempDir, State) {
    let dir = tempfile::tempdir().unwrap();
    let mut index = Index::default();
    let (segments, _) = Segments::open(&dir.path().join(segments::DIR_NAME), &mut index).unwrap();
    (dir, State { index, segments })
}

/// Applies `writes` as one checkpoint at `now`, as the checkpointer would.
fn commit_at(state: &mut State, writes: Vec<Write>, now: Timestamp) {
    let ops = encode(writes).unwrap();
    let ops: Vec<&Op> = ops.iter().collect();
    apply::apply(state, &ops, 1, now);
    state.segments.flush().unwrap();
}

/// Reopens the segments of `dir` into a new index, as a start does.
fn rescan(dir: &tempfile::TempDir) -> (State, segments::Scanned) {
    let mut index = Index::default();
    let (segments, scanned) = Segments::open(&dir.path().join(segments::DIR_NAME), &mut index).unwrap();
    (State { index, segments }, scanned)
}

fn unread(state: &State) -> u64 {
    state.index.inboxes.get(&Key::new("u1")).map_or(0, |inbox| inbox.unread)
}

#[test]
fn encoding_extracts_the_facts_indexes_need() {
    let ops = encode(vec![
        Write::PutNotification(notification("n1", 9, NotificationStatus::Completed)),
        Write::PutDelivery(delivery("d1", Channel::Sms, DeliveryStatus::Dead)),
        Write::PutInboxItem(inbox_item("i1", Some(Timestamp::UNIX_EPOCH))),
        idempotency(Timestamp::from_millisecond(1_500).unwrap()),
    ])
    .unwrap();
    assert!(matches!(&ops[0], Op::Notification { seq: 9, open: false, .. }));
    assert!(
        matches!(&ops[1], Op::Delivery { channel: "sms", dead: true, notification_id, .. } if notification_id == "n1")
    );
    assert!(matches!(&ops[2], Op::InboxItem { unread: false, user_id, .. } if user_id == "u1"));
    let Op::Idempotency { expiry_ms: 1_500, value, .. } = &ops[3] else { panic!("{:?}", ops[3]) };
    let (expiry, value) = split_idempotency_value(value).unwrap();
    assert_eq!(expiry, 1_500);
    assert!(serde_json::from_slice::<IdempotencyEntry>(value).is_ok());
}

#[test]
fn the_open_index_keeps_a_notification_only_while_it_is_not_final() {
    let (_dir, mut state) = fresh_state();
    let now = Timestamp::now();
    commit_at(&mut state, vec![Write::PutNotification(notification("n1", 3, NotificationStatus::Accepted))], now);
    commit_at(&mut state, vec![Write::PutNotification(notification("n1", 3, NotificationStatus::Dispatching))], now);
    assert_eq!(state.index.open_by_seq().len(), 1);
    commit_at(&mut state, vec![Write::PutNotification(notification("n1", 3, NotificationStatus::Failed))], now);
    assert_eq!(state.index.open_by_seq().len(), 0);
    assert_eq!((state.index.notifications.len(), state.index.max_seq), (1, 3));
}

#[test]
fn a_scheduled_notification_has_one_index_entry_that_follows_its_send_at_and_status() {
    let (_dir, mut state) = fresh_state();
    let now = Timestamp::now();
    let scheduled = |due_ms| {
        let mut n = (*notification("n1", 3, NotificationStatus::Scheduled)).clone();
        n.send_at = Some(Timestamp::from_millisecond(due_ms).unwrap());
        Write::PutNotification(Arc::new(n))
    };
    let ops = encode(vec![scheduled(7)]).unwrap();
    assert!(matches!(&ops[0], Op::Notification { open: false, scheduled: Some(7), .. }));
    let due = |state: &State| state.index.scheduled.iter().map(|(due, _)| *due).collect::<Vec<_>>();
    commit_at(&mut state, vec![scheduled(1_000), scheduled(1_000)], now);
    commit_at(&mut state, vec![scheduled(2_000)], now);
    assert_eq!((due(&state), state.index.open_by_seq().len()), (vec![2_000], 0));
    commit_at(&mut state, vec![Write::PutNotification(notification("n1", 3, NotificationStatus::Dispatching))], now);
    assert_eq!((due(&state), state.index.open_by_seq()), (vec![], vec![(3, &Key::new("n1"))]));
    commit_at(&mut state, vec![scheduled(3_000)], now);
    assert_eq!((due(&state), state.index.open_by_seq().len()), (vec![3_000], 0), "scheduled again, not open");
}

#[test]
fn a_sequence_is_open_only_while_running() {
    let (_dir, mut state) = fresh_state();
    let now = Timestamp::now();
    let sequence = |status| {
        Write::PutSequence(Arc::new(Sequence {
            id: "s1".into(),
            user_id: "u1".into(),
            steps: vec![],
            step_timeout_ms: 1_000,
            on_failure: OnFailure::Continue,
            status,
            current: 0,
            created_at: Timestamp::UNIX_EPOCH,
            updated_at: Timestamp::UNIX_EPOCH,
        }))
    };
    commit_at(&mut state, vec![sequence(SequenceStatus::Running)], now);
    assert_eq!((state.index.sequences.len(), state.index.open_sequences.len()), (1, 1));
    commit_at(&mut state, vec![sequence(SequenceStatus::Completed)], now);
    assert_eq!((state.index.sequences.len(), state.index.open_sequences.len()), (1, 0));
}

#[test]
fn a_dead_delivery_is_indexed_under_its_current_channel_only() {
    let (_dir, mut state) = fresh_state();
    let now = Timestamp::now();
    commit_at(&mut state, vec![Write::PutDelivery(delivery("d1", Channel::Sms, DeliveryStatus::Dead))], now);
    commit_at(&mut state, vec![Write::PutDelivery(delivery("d1", Channel::Email, DeliveryStatus::Dead))], now);
    assert_eq!((state.index.dlq.len(), state.index.dlq_by_channel.len()), (1, 1));
    assert!(state.index.dlq_by_channel.contains(&("email", Key::new("d1"))));
    commit_at(&mut state, vec![Write::PutDelivery(delivery("d1", Channel::Email, DeliveryStatus::Retrying))], now);
    assert_eq!((state.index.dlq.len(), state.index.dlq_by_channel.len()), (0, 0));
    let n1 = &state.index.notifications[&Key::new("n1")];
    assert_eq!(n1.deliveries.as_slice(), &[Key::new("d1")], "one delivery, however often it is put");
    assert_eq!(n1.loc(), None, "the notification itself was never put");
}

#[test]
fn replacing_an_idempotency_key_moves_its_expiry_entry() {
    let (_dir, mut state) = fresh_state();
    let now = Timestamp::now();
    commit_at(&mut state, vec![idempotency(now + SignedDuration::from_hours(1))], now);
    commit_at(&mut state, vec![idempotency(now + SignedDuration::from_hours(2))], now);
    assert_eq!((state.index.idempotency.len(), state.index.idempotency_expiry.len()), (1, 1));
}

#[test]
fn expired_idempotency_keys_are_purged_a_bounded_number_per_checkpoint() {
    let (_dir, mut state) = fresh_state();
    let now = Timestamp::now();
    let expired = now - SignedDuration::from_secs(1);
    let writes = (0..10_100)
        .map(|i| {
            let Write::PutIdempotency { entry, .. } = idempotency(expired) else { unreachable!() };
            Write::PutIdempotency { key: format!("old{i}"), entry }
        })
        .chain([idempotency(now + SignedDuration::from_hours(1))])
        .collect();
    // Written while still live, so nothing is purged in the checkpoint that writes them.
    commit_at(&mut state, writes, expired - SignedDuration::from_secs(1));
    assert_eq!(state.index.idempotency.len(), 10_101);
    commit_at(&mut state, vec![], now);
    assert_eq!(state.index.idempotency.len(), 101);
    commit_at(&mut state, vec![], now);
    assert_eq!((state.index.idempotency.len(), state.index.idempotency_expiry.len()), (1, 1));
}

#[test]
fn the_unread_counter_follows_every_put_and_mark() {
    let (dir, mut state) = fresh_state();
    let now = Timestamp::now();
    commit_at(&mut state, vec![Write::PutInboxItem(inbox_item("i1", None))], now);
    commit_at(&mut state, vec![Write::PutInboxItem(inbox_item("i1", None))], now);
    assert_eq!(unread(&state), 1);
    commit_at(&mut state, vec![Write::PutInboxItem(inbox_item("i1", Some(now)))], now);
    assert_eq!(unread(&state), 0);
    commit_at(&mut state, vec![Write::PutInboxItem(inbox_item("i1", None))], now);
    let mark = || Write::MarkInboxRead { user_id: "u1".into(), ids: vec!["i1".into(), "nope".into()], at: now };
    commit_at(&mut state, vec![mark(), mark()], now);
    assert_eq!(unread(&state), 0);
    // The mark is stored as the item with `read_at`, so a start finds it read.
    let (state, _) = rescan(&dir);
    assert_eq!(unread(&state), 0);
    let entry = state.index.inboxes[&Key::new("u1")].items[&Key::new("i1")];
    let Op::InboxItem { value, .. } = state.segments.read(entry.loc).unwrap() else { panic!("not an inbox item") };
    assert_eq!(serde_json::from_slice::<InboxItem>(&value).unwrap().read_at, Some(now));
}

#[test]
fn a_mark_of_an_item_put_in_the_same_checkpoint_reads_it_from_the_pending_frames() {
    let (_dir, mut state) = fresh_state();
    let now = Timestamp::now();
    let mark = Write::MarkAllInboxRead { user_id: "u1".into(), at: now };
    commit_at(&mut state, vec![Write::PutInboxItem(inbox_item("i1", None)), mark], now);
    assert_eq!(unread(&state), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_reads_back_a_corrupt_record_is_skipped_and_the_rest_of_its_batch_lands() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), 64).unwrap();
    store.commit(vec![Write::PutInboxItem(inbox_item("i1", None))]).await.unwrap();
    store.users().await.unwrap(); // a read waits until the item is applied
    // Corrupt the stored item, so marking it read fails half-way through the batch.
    let loc = store.state.read().index.inboxes[&Key::new("u1")].items[&Key::new("i1")].loc;
    let path = dir.path().join(segments::DIR_NAME).join(format!("{:010}.seg", loc.seg));
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(b"garbage", u64::from(loc.at + loc.len - 8)).unwrap();

    let user = Arc::new(User::new("u9".into(), Timestamp::now()));
    let mark = Write::MarkInboxRead { user_id: "u1".into(), ids: vec!["i1".into()], at: Timestamp::now() };
    // Durable in the log, so acknowledged; the checkpointer skips the mark and applies the rest.
    store.commit(vec![Write::PutUser(user), mark]).await.unwrap();
    assert_eq!(store.users().await.unwrap().len(), 1, "the rest of the batch is applied");
    assert_eq!(unread(&store.state.read()), 1, "nothing of the skipped mark is applied");
    assert!(matches!(store.inbox("u1", None, 10, false).await, Err(StoreError::Corrupt(_))));

    store.commit(vec![Write::PutUser(Arc::new(User::new("u10".into(), Timestamp::now())))]).await.unwrap();
    assert_eq!(store.users().await.unwrap().len(), 2, "the checkpointer goes on after a skipped write");
    store.health().await.unwrap();
}

#[test]
fn a_checkpoint_applies_only_the_last_put_of_a_record_and_keeps_every_other_op_in_order() {
    let (dir, mut state) = fresh_state();
    let open = notification("n1", 1, NotificationStatus::Dispatching);
    let done = notification("n1", 1, NotificationStatus::Completed);
    let logged = |lsn, writes| Logged { lsn, ops: encode(writes).unwrap() };
    let count =
        |delta| Write::CountCampaignFinal { campaign: "c1".into(), status: NotificationStatus::Completed, delta };
    let batch = [
        logged(1, vec![Write::PutNotification(open), count(1)]),
        logged(2, vec![Write::PutNotification(done.clone()), count(1)]),
    ];
    let ops = coalesce(&batch);
    assert_eq!(ops.len(), 3, "{ops:?}");
    assert!(matches!(ops[0], Op::CampaignFinal { .. }) && matches!(ops[2], Op::CampaignFinal { .. }));
    assert!(matches!(ops[1], Op::Notification { open: false, .. }));

    apply::apply(&mut state, &ops, 2, Timestamp::now());
    state.segments.flush().unwrap();
    assert_eq!(state.index.open_by_seq().len(), 0, "the open put was left out and the final one indexes nothing");
    let loc = state.index.notifications[&Key::new("n1")].loc().unwrap();
    let Op::Notification { value, .. } = state.segments.read(loc).unwrap() else { panic!("not a notification") };
    assert_eq!(super::binary::read_notification(&value).unwrap(), *done);
    let counts = FinalCounts { completed: 2, failed: 0, cancelled: 0 };
    assert_eq!(state.index.finals[&Key::new("c1")].1, counts);
    let (rescanned, scanned) = rescan(&dir);
    assert_eq!((rescanned.index.finals[&Key::new("c1")].1, scanned.lsn), (counts, 2));
}

#[test]
fn a_start_rebuilds_the_indexes_and_cuts_off_a_checkpoint_that_never_finished() {
    use std::os::unix::fs::FileExt;
    let (dir, mut state) = fresh_state();
    let now = Timestamp::now();
    commit_at(&mut state, vec![Write::PutNotification(notification("n1", 4, NotificationStatus::Accepted))], now);
    let active = state.segments.active_file();
    let len = active.metadata().unwrap().len();
    // A checkpoint cut short: its op's frame is whole, but its mark never made it.
    let ops = encode(vec![Write::PutNotification(notification("n2", 5, NotificationStatus::Accepted))]).unwrap();
    apply::apply(&mut state, &[&ops[0]], 2, now);
    state.segments.flush().unwrap();
    let with_mark = active.metadata().unwrap().len();
    active.set_len(with_mark - 10).unwrap();
    active.write_all_at(b"torn", with_mark - 10).unwrap();
    drop((state, active));

    let (state, scanned) = rescan(&dir);
    assert_eq!(scanned.lsn, 1, "the last complete checkpoint");
    assert_eq!(state.index.open_by_seq().iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), vec![4]);
    let path = dir.path().join(segments::DIR_NAME).join(format!("{:010}.seg", 0));
    assert_eq!(std::fs::metadata(path).unwrap().len(), len, "cut back to the last mark");
}

#[test]
fn compaction_moves_the_live_frames_of_a_mostly_dead_segment_and_keeps_the_rest() {
    let (dir, mut state) = fresh_state();
    state.segments.set_max_bytes(1024);
    let now = Timestamp::now();
    // Many versions of one open notification, a final one kept, and a user: the first segments are mostly dead.
    for round in 0..40 {
        let status = if round % 2 == 0 { NotificationStatus::Accepted } else { NotificationStatus::Dispatching };
        commit_at(&mut state, vec![Write::PutNotification(notification("n1", 7, status))], now);
        if round == 0 {
            let keep = Write::PutNotification(notification("n2", 8, NotificationStatus::Completed));
            commit_at(&mut state, vec![keep, Write::PutUser(Arc::new(User::new("u1".into(), now)))], now);
        }
        state.segments.roll_if_full().unwrap();
    }
    let before = state.segments.usage();
    assert!(before.len() > 3, "{before:?}");
    // A first look: every segment lost frames just now, so none is a candidate until a look in which it did not.
    assert_eq!(state.segments.compaction_candidate(Instant::now(), false).map(|(n, _)| n), None, "all still dying");
    let state = parking_lot::RwLock::new(state);
    let mut compacted = 0;
    let mut buffer = Vec::new();
    while let Some(done) = super::compact::copy_live(&state, 1, false, &mut buffer).unwrap() {
        state.write().segments.remove(done.segment).unwrap();
        compacted += 1;
    }
    let state = state.into_inner();
    let after = state.segments.usage();
    assert!(compacted > 0 && after.len() < before.len(), "{before:?} -> {after:?}");
    assert!(after.iter().all(|(n, len, live)| live * 2 >= *len || *n == after.last().unwrap().0), "{after:?}");
    drop(state);
    let (state, _) = rescan(&dir);
    assert_eq!(state.index.open_by_seq().iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), vec![7]);
    assert_eq!((state.index.notifications.len(), state.index.users.len(), state.index.max_seq), (2, 1, 8));
    let loc = state.index.notifications[&Key::new("n2")].loc().unwrap();
    assert!(matches!(state.segments.read(loc).unwrap(), Op::Notification { open: false, .. }));
}

/// A put of notification `n{i}`.
fn put_n(i: u64, status: NotificationStatus) -> Write {
    Write::PutNotification(notification(&format!("n{i}"), i, status))
}

/// A state whose first segment, sealed, holds notifications n0..n99, all live; and that segment's number.
fn one_sealed_segment() -> (tempfile::TempDir, State, u32) {
    let (dir, mut state) = fresh_state();
    state.segments.set_max_bytes(1024);
    commit_at(&mut state, (0..100).map(|i| put_n(i, NotificationStatus::Accepted)).collect(), Timestamp::now());
    state.segments.roll_if_full().unwrap();
    let sealed = state.segments.usage()[0].0;
    (dir, state, sealed)
}

#[test]
fn a_segment_still_dying_is_compacted_only_once_its_deaths_stop_or_slow() {
    let (_dir, mut state, sealed) = one_sealed_segment();
    let now = Timestamp::now();
    assert_eq!(state.segments.usage().len(), 2, "one sealed segment and the newest");
    let t0 = Instant::now();
    let look = |state: &mut State, at: Duration| state.segments.compaction_candidate(t0 + at, false).map(|(n, _)| n);
    assert_eq!(look(&mut state, Duration::ZERO), None, "all live");

    // Most of it dies within half a second: it is a candidate by its live share, but still dying.
    commit_at(&mut state, (0..80).map(|i| put_n(i, NotificationStatus::Completed)).collect(), now);
    let (_, len, live) = state.segments.usage()[0];
    assert!(live * 2 < len, "mostly dead: {live} of {len}");
    assert_eq!(look(&mut state, Duration::from_millis(500)), None, "still dying");
    // One of the 20 left dies in the next half second: at that pace the rest is gone in ten seconds.
    commit_at(&mut state, vec![put_n(80, NotificationStatus::Completed)], now);
    assert_eq!(look(&mut state, Duration::from_secs(1)), None, "dying at one frame per 500 ms");
    // A look later, with nothing more died, it is compacted.
    assert_eq!(look(&mut state, Duration::from_millis(1500)), Some(sealed));
    // A trickle (one of 19 in ten minutes: all gone in over three hours) does not hold it back.
    commit_at(&mut state, vec![put_n(81, NotificationStatus::Completed)], now);
    assert_eq!(look(&mut state, Duration::from_secs(601)), Some(sealed), "one frame in ten minutes");
}

#[test]
fn a_busy_store_leaves_a_little_dead_space_for_later() {
    let (_dir, mut state, sealed) = one_sealed_segment();
    commit_at(&mut state, (0..90).map(|i| put_n(i, NotificationStatus::Completed)).collect(), Timestamp::now());
    let t0 = Instant::now();
    state.segments.compaction_candidate(t0, false);
    // Mostly dead and no longer dying, but a few KiB of dead bytes are not worth a busy store's CPU.
    let look = |state: &mut State, busy| state.segments.compaction_candidate(t0 + Duration::from_secs(1), busy);
    assert_eq!(look(&mut state, true).map(|(n, _)| n), None, "busy");
    assert_eq!(look(&mut state, false).map(|(n, _)| n), Some(sealed), "idle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_store_compacts_and_reads_what_it_moved() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), 64).unwrap();
    store.state.write().segments.set_max_bytes(8192);
    let user = Arc::new(User::new("u1".into(), Timestamp::now()));
    store.commit(vec![Write::PutUser(user.clone())]).await.unwrap();
    for round in 0..100u64 {
        let status = if round % 2 == 0 { NotificationStatus::Accepted } else { NotificationStatus::Dispatching };
        store.commit(vec![Write::PutNotification(notification("n1", 7, status))]).await.unwrap();
        store.max_seq().await.unwrap(); // one checkpoint per round
    }
    let segments = store.state.read().segments.usage();
    assert!(segments.len() <= 3, "compaction keeps up: {segments:?}");
    assert_eq!(store.users().await.unwrap(), vec![(*user).clone()]);
    assert_eq!(store.open_notifications().await.unwrap().len(), 1);
    drop(store);
    let store = EmbeddedStore::open(dir.path(), 64).unwrap();
    assert_eq!(store.users().await.unwrap(), vec![(*user).clone()]);
    assert_eq!(store.open_notifications().await.unwrap()[0].notification.status, NotificationStatus::Dispatching);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_only_in_the_log_are_applied_at_start_and_applied_ones_are_not_applied_again() {
    let dir = tempfile::tempdir().unwrap();
    let count = || Write::CountCampaignFinal { campaign: "c1".into(), status: NotificationStatus::Failed, delta: 1 };
    {
        let store = EmbeddedStore::open(dir.path(), 64).unwrap();
        store.commit(vec![count()]).await.unwrap();
    }
    // A record that reached the log but not the segments: what a crash between the two leaves behind.
    let user = User::new("u1".into(), Timestamp::now());
    let mut log = super::wal::Wal::new(&dir.path().join(super::wal::DIR_NAME), 100).unwrap();
    let ops = encode(vec![Write::PutUser(Arc::new(user.clone())), count()]).unwrap();
    log.append(std::iter::once(ops.as_slice())).unwrap();
    drop(log);

    let store = EmbeddedStore::open(dir.path(), 64).unwrap();
    assert_eq!(store.users().await.unwrap(), vec![user]);
    let finals = |store: &EmbeddedStore| store.state.read().index.finals[&Key::new("c1")].1;
    assert_eq!(finals(&store), FinalCounts { completed: 0, failed: 2, cancelled: 0 }, "once each");
    drop(store);
    let store = EmbeddedStore::open(dir.path(), 64).unwrap();
    assert_eq!(finals(&store).failed, 2, "a second start replays nothing");
    store.commit(vec![count()]).await.unwrap();
    assert_eq!(store.max_seq().await.unwrap(), 0);
    assert_eq!(finals(&store).failed, 3, "the log goes on after the replayed LSN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_an_earlier_herald_is_imported_with_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let now = Timestamp::now();
    let redb_path = dir.path().join(import::FILE_NAME);
    let value = |v: &dyn erased::Json| v.value();
    let (open, done) =
        (notification("n1", 3, NotificationStatus::Dispatching), notification("n2", 9, NotificationStatus::Completed));
    let key_value = {
        let Write::PutIdempotency { entry, .. } = idempotency(now + SignedDuration::from_hours(1)) else {
            unreachable!()
        };
        super::encode::idempotency_value(entry.expires_at.as_millisecond(), &serde_json::to_vec(&entry).unwrap())
    };
    import::write_earlier_store(&redb_path, |txn| {
        let mut users = txn.open_table(import::USERS).unwrap();
        let mut tagged = User::new("u1".into(), now);
        tagged.tags = vec!["vip".into()];
        users.insert("u1", value(&tagged).as_slice()).unwrap();
        let mut notifications = txn.open_table(import::NOTIFICATIONS).unwrap();
        notifications.insert("n1", value(&*open).as_slice()).unwrap();
        notifications.insert("n2", value(&*done).as_slice()).unwrap();
        let d = delivery("d1", Channel::Sms, DeliveryStatus::Dead);
        txn.open_table(import::DELIVERIES).unwrap().insert("d1", value(&*d).as_slice()).unwrap();
        txn.open_table(import::IDEMPOTENCY).unwrap().insert("k1", key_value.as_slice()).unwrap();
        let item = inbox_item("i1", None);
        txn.open_table(import::INBOX).unwrap().insert(("u1", "i1"), value(&*item).as_slice()).unwrap();
        txn.open_table(import::CAMPAIGN_FINALS).unwrap().insert("c1", (4, 1, 0)).unwrap();
        let mut meta = txn.open_table(import::META).unwrap();
        meta.insert("wal_applied", 5).unwrap();
        meta.insert("max_seq", 9).unwrap();
    });
    // Its log holds one record past what the file has applied, and one it has.
    let mut log = super::wal::Wal::new(&dir.path().join(super::wal::DIR_NAME), 5).unwrap();
    let applied = encode(vec![Write::PutUser(Arc::new(User::new("stale".into(), now)))]).unwrap();
    log.append(std::iter::once(applied.as_slice())).unwrap();
    let pending = encode(vec![Write::PutUser(Arc::new(User::new("u2".into(), now)))]).unwrap();
    log.append(std::iter::once(pending.as_slice())).unwrap();
    drop(log);

    let store = EmbeddedStore::open(dir.path(), 64).unwrap();
    let ids = |users: Vec<User>| users.into_iter().map(|u| u.id).collect::<Vec<_>>();
    assert_eq!(ids(store.users().await.unwrap()), vec!["u1", "u2"], "the file's users and the log's new one");
    assert_eq!(store.user_ids(None, Some("vip"), 10).await.unwrap(), vec!["u1"]);
    assert_eq!(store.open_notifications().await.unwrap().len(), 1);
    assert_eq!(store.notification("n2").await.unwrap().unwrap().notification, *done);
    assert_eq!(store.dlq(None, None, 10).await.unwrap().items.len(), 1);
    assert_eq!(store.idempotency_entries(now).await.unwrap().len(), 1);
    assert_eq!(store.inbox("u1", None, 10, false).await.unwrap().1, 1);
    assert_eq!(store.max_seq().await.unwrap(), 9);
    assert_eq!(store.state.read().index.finals[&Key::new("c1")].1.completed, 4);
    assert!(!redb_path.exists() && dir.path().join("herald.redb.imported").exists());
    drop(store);
    let store = EmbeddedStore::open(dir.path(), 64).unwrap();
    assert_eq!(ids(store.users().await.unwrap()), vec!["u1", "u2"], "imported once");
}

/// JSON of any record, for writing an earlier store's tables.
mod erased {
    pub trait Json {
        fn value(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn value(&self) -> Vec<u8> {
            serde_json::to_vec(self).unwrap()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_store_cannot_open_a_directory_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), 64).unwrap();
    let Err(StoreError::Unavailable(why)) = EmbeddedStore::open(dir.path(), 64) else { panic!("opened twice") };
    assert!(why.contains("in use"), "{why}");
    drop(store);
    EmbeddedStore::open(dir.path(), 64).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_callback_does_not_stop_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), 64).unwrap();
    store.submit(vec![], Box::new(|_| panic!("callback bug")));
    store.commit(vec![]).await.unwrap();
    store.health().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_store_finishes_queued_work_and_closes_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), 4).unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    for i in 0..50 {
        let user = Arc::new(User::new(format!("u{i}"), Timestamp::now()));
        let ran = ran.clone();
        store.submit(vec![Write::PutUser(user)], Box::new(move |r| ran.store(r.is_ok(), Ordering::SeqCst)));
    }
    drop(store);
    assert!(ran.load(Ordering::SeqCst), "the last callback ran before drop returned");
    let reopened = EmbeddedStore::open(dir.path(), 4).unwrap();
    assert_eq!(reopened.users().await.unwrap().len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_that_drops_the_last_handle_lets_go_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), 4).unwrap();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let last = store.clone();
    store.submit(
        vec![],
        Box::new(move |_| {
            // Runs on the writer thread; once the test has dropped its handle, this one is the last.
            let _ = released.recv();
            drop(last);
        }),
    );
    drop(store);
    release.send(()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let reopened = loop {
        match EmbeddedStore::open(dir.path(), 4) {
            Ok(store) => break store,
            Err(e) if std::time::Instant::now() > deadline => panic!("the file is still held: {e}"),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    };
    reopened.health().await.unwrap();
}
