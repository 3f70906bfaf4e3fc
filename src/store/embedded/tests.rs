//! Unit tests of the embedded store's internals: what encoding extracts, how applying ops keeps the indexes in
//! step with the records, what the checkpointer coalesces, what the log replays at start, and what happens to a
//! write that cannot be applied. Behaviour every backend shares is in `tests/store_conformance.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use jiff::{SignedDuration, Timestamp};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::apply::{self, create_tables};
use super::checkpoint::{Logged, coalesce};
use super::encode::{Op, encode};
use super::tables::*;
use super::{EmbeddedStore, FILE_NAME};
use crate::domain::*;
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

fn fresh_db() -> (tempfile::TempDir, Database) {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
    create_tables(&db).unwrap();
    (dir, db)
}

/// Applies `writes` in one transaction at `now`, as the checkpointer would.
fn commit_at(db: &Database, writes: Vec<Write>, now: Timestamp) -> Result<(), StoreError> {
    let ops = encode(writes)?;
    let ops: Vec<&Op> = ops.iter().collect();
    apply::commit(db, &ops, &[], 1, redb::Durability::Immediate, now).map_err(|e| e.error)
}

fn rows<K: redb::Key + 'static, V: redb::Value + 'static>(db: &Database, table: TableDefinition<K, V>) -> u64 {
    db.begin_read().unwrap().open_table(table).unwrap().len().unwrap()
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
    let (expiry, json) = split_idempotency_value(value).unwrap();
    assert_eq!(expiry, 1_500);
    assert!(serde_json::from_slice::<IdempotencyEntry>(json).is_ok());
}

#[test]
fn the_open_index_keeps_a_notification_only_while_it_is_not_final() {
    let (_dir, db) = fresh_db();
    let now = Timestamp::now();
    commit_at(&db, vec![Write::PutNotification(notification("n1", 3, NotificationStatus::Accepted))], now).unwrap();
    commit_at(&db, vec![Write::PutNotification(notification("n1", 3, NotificationStatus::Dispatching))], now).unwrap();
    assert_eq!(rows(&db, OPEN_BY_SEQ), 1);
    commit_at(&db, vec![Write::PutNotification(notification("n1", 3, NotificationStatus::Failed))], now).unwrap();
    assert_eq!(rows(&db, OPEN_BY_SEQ), 0);
    assert_eq!(rows(&db, NOTIFICATIONS), 1);
}

#[test]
fn a_scheduled_notification_has_one_index_entry_that_follows_its_send_at_and_status() {
    let (_dir, db) = fresh_db();
    let now = Timestamp::now();
    let scheduled = |due_ms| {
        let mut n = (*notification("n1", 3, NotificationStatus::Scheduled)).clone();
        n.send_at = Some(Timestamp::from_millisecond(due_ms).unwrap());
        Write::PutNotification(Arc::new(n))
    };
    let ops = encode(vec![scheduled(7)]).unwrap();
    assert!(matches!(&ops[0], Op::Notification { open: false, scheduled: Some(7), .. }));
    let due = |db: &Database| {
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(SCHEDULED).unwrap();
        let keys: Vec<i64> = table.iter().unwrap().map(|e| e.unwrap().0.value().0).collect();
        keys
    };
    commit_at(&db, vec![scheduled(1_000), scheduled(1_000)], now).unwrap();
    commit_at(&db, vec![scheduled(2_000)], now).unwrap();
    assert_eq!((due(&db), rows(&db, SCHEDULED_DUE), rows(&db, OPEN_BY_SEQ)), (vec![2_000], 1, 0));
    commit_at(&db, vec![Write::PutNotification(notification("n1", 3, NotificationStatus::Dispatching))], now).unwrap();
    assert_eq!((rows(&db, SCHEDULED), rows(&db, SCHEDULED_DUE), rows(&db, OPEN_BY_SEQ)), (0, 0, 1));
}

#[test]
fn a_sequence_is_open_only_while_running() {
    let (_dir, db) = fresh_db();
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
    commit_at(&db, vec![sequence(SequenceStatus::Running)], now).unwrap();
    assert_eq!((rows(&db, SEQUENCES), rows(&db, OPEN_SEQUENCES)), (1, 1));
    commit_at(&db, vec![sequence(SequenceStatus::Completed)], now).unwrap();
    assert_eq!((rows(&db, SEQUENCES), rows(&db, OPEN_SEQUENCES)), (1, 0));
}

#[test]
fn a_dead_delivery_is_indexed_under_its_current_channel_only() {
    let (_dir, db) = fresh_db();
    let now = Timestamp::now();
    commit_at(&db, vec![Write::PutDelivery(delivery("d1", Channel::Sms, DeliveryStatus::Dead))], now).unwrap();
    commit_at(&db, vec![Write::PutDelivery(delivery("d1", Channel::Email, DeliveryStatus::Dead))], now).unwrap();
    assert_eq!((rows(&db, DLQ), rows(&db, DLQ_BY_CHANNEL)), (1, 1));
    let txn = db.begin_read().unwrap();
    let by_channel = txn.open_table(DLQ_BY_CHANNEL).unwrap();
    assert!(by_channel.get(("email", "d1")).unwrap().is_some());
    drop((by_channel, txn));
    commit_at(&db, vec![Write::PutDelivery(delivery("d1", Channel::Email, DeliveryStatus::Retrying))], now).unwrap();
    assert_eq!((rows(&db, DLQ), rows(&db, DLQ_BY_CHANNEL)), (0, 0));
}

#[test]
fn replacing_an_idempotency_key_moves_its_expiry_entry() {
    let (_dir, db) = fresh_db();
    let now = Timestamp::now();
    commit_at(&db, vec![idempotency(now + SignedDuration::from_hours(1))], now).unwrap();
    commit_at(&db, vec![idempotency(now + SignedDuration::from_hours(2))], now).unwrap();
    assert_eq!((rows(&db, IDEMPOTENCY), rows(&db, IDEMPOTENCY_EXPIRY)), (1, 1));
}

#[test]
fn the_writer_purges_expired_idempotency_keys_a_bounded_number_per_commit() {
    let (_dir, db) = fresh_db();
    let now = Timestamp::now();
    let expired = now - SignedDuration::from_secs(1);
    let writes = (0..100)
        .map(|i| {
            let Write::PutIdempotency { entry, .. } = idempotency(expired) else { unreachable!() };
            Write::PutIdempotency { key: format!("old{i}"), entry }
        })
        .chain([idempotency(now + SignedDuration::from_hours(1))])
        .collect();
    // Written while still live, so nothing is purged in the commit that writes them.
    commit_at(&db, writes, expired - SignedDuration::from_secs(1)).unwrap();
    assert_eq!(rows(&db, IDEMPOTENCY), 101);
    commit_at(&db, vec![], now).unwrap();
    assert_eq!(rows(&db, IDEMPOTENCY), 101 - 64);
    commit_at(&db, vec![], now).unwrap();
    assert_eq!((rows(&db, IDEMPOTENCY), rows(&db, IDEMPOTENCY_EXPIRY)), (1, 1));
}

#[test]
fn the_unread_counter_follows_every_put_and_mark() {
    let (_dir, db) = fresh_db();
    let now = Timestamp::now();
    let count = |db: &Database| {
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(UNREAD_COUNT).unwrap();
        table.get("u1").unwrap().map(|v| v.value())
    };
    commit_at(&db, vec![Write::PutInboxItem(inbox_item("i1", None))], now).unwrap();
    commit_at(&db, vec![Write::PutInboxItem(inbox_item("i1", None))], now).unwrap();
    assert_eq!(count(&db), Some(1));
    commit_at(&db, vec![Write::PutInboxItem(inbox_item("i1", Some(now)))], now).unwrap();
    assert_eq!(count(&db), None, "a zero count is not stored");
    commit_at(&db, vec![Write::PutInboxItem(inbox_item("i1", None))], now).unwrap();
    let mark = || Write::MarkInboxRead { user_id: "u1".into(), ids: vec!["i1".into(), "nope".into()], at: now };
    commit_at(&db, vec![mark(), mark()], now).unwrap();
    assert_eq!(count(&db), None);
    assert_eq!(rows(&db, INBOX_UNREAD), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_reads_back_a_corrupt_record_is_skipped_and_the_rest_of_its_batch_lands() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), 64).unwrap();
    store.commit(vec![Write::PutInboxItem(inbox_item("i1", None))]).await.unwrap();
    store.users().await.unwrap(); // a read waits until the item is applied
    // Corrupt the stored item, so marking it read fails half-way through the batch.
    let txn = store.db.begin_write().unwrap();
    txn.open_table(INBOX).unwrap().insert(("u1", "i1"), b"not json".as_slice()).unwrap();
    txn.commit().unwrap();

    let user = Arc::new(User::new("u9".into(), Timestamp::now()));
    let mark = Write::MarkInboxRead { user_id: "u1".into(), ids: vec!["i1".into()], at: Timestamp::now() };
    // Durable in the log, so acknowledged; the checkpointer skips the mark and applies the rest.
    store.commit(vec![Write::PutUser(user), mark]).await.unwrap();
    assert_eq!(store.users().await.unwrap().len(), 1, "the rest of the batch is applied");
    assert_eq!(rows(&store.db, INBOX_UNREAD), 1, "nothing of the skipped mark is applied");

    store.commit(vec![Write::PutUser(Arc::new(User::new("u10".into(), Timestamp::now())))]).await.unwrap();
    assert_eq!(store.users().await.unwrap().len(), 2, "the checkpointer goes on after a skipped write");
    store.health().await.unwrap();
}

#[test]
fn a_checkpoint_applies_only_the_last_put_of_a_record_and_keeps_every_other_op_in_order() {
    let (_dir, db) = fresh_db();
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

    apply::commit(&db, &ops, &[], 2, redb::Durability::Immediate, Timestamp::now()).unwrap();
    assert_eq!(rows(&db, OPEN_BY_SEQ), 0, "the open put was left out and the final one indexes nothing");
    let txn = db.begin_read().unwrap();
    let stored = txn.open_table(NOTIFICATIONS).unwrap().get("n1").unwrap().unwrap().value().to_vec();
    assert_eq!(serde_json::from_slice::<Notification>(&stored).unwrap(), *done);
    assert_eq!(txn.open_table(CAMPAIGN_FINALS).unwrap().get("c1").unwrap().unwrap().value(), (2, 0, 0));
    assert_eq!(apply::wal_applied(&db).unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_only_in_the_log_are_applied_at_start_and_applied_ones_are_not_applied_again() {
    let dir = tempfile::tempdir().unwrap();
    let count = || Write::CountCampaignFinal { campaign: "c1".into(), status: NotificationStatus::Failed, delta: 1 };
    {
        let store = EmbeddedStore::open(dir.path(), 64).unwrap();
        store.commit(vec![count()]).await.unwrap();
    }
    // A record that reached the log but not the database: what a crash between the two leaves behind.
    let user = User::new("u1".into(), Timestamp::now());
    let mut log = super::wal::Wal::new(&dir.path().join(super::wal::DIR_NAME), 100).unwrap();
    let ops = encode(vec![Write::PutUser(Arc::new(user.clone())), count()]).unwrap();
    log.append(std::iter::once(ops.as_slice())).unwrap();
    drop(log);

    let store = EmbeddedStore::open(dir.path(), 64).unwrap();
    assert_eq!(store.users().await.unwrap(), vec![user]);
    let finals = |db: &Database| {
        db.begin_read().unwrap().open_table(CAMPAIGN_FINALS).unwrap().get("c1").unwrap().unwrap().value()
    };
    assert_eq!(finals(&store.db), (0, 2, 0), "the first count once, the logged one once");
    drop(store);
    let store = EmbeddedStore::open(dir.path(), 64).unwrap();
    assert_eq!(finals(&store.db), (0, 2, 0), "a second start replays nothing");
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
