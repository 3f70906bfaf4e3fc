//! The conformance suite's scheduling part, re-exported by `suite`: the scheduled index (by due time, then id)
//! and sequences. Plus the one Redis-only check the trait cannot see: which of these records expire.

use std::sync::Arc;

use herald::config::{RedisSettings, Secret};
use herald::domain::*;
use herald::store::{RedisStore, ScheduleCursor, Store, Write};
use jiff::Timestamp;

use crate::common::redis::RedisServer;
use crate::common::*;

/// A scheduled notification due at `due_ms`.
pub fn scheduled(id: &str, seq: u64, due_ms: i64) -> Arc<Notification> {
    let mut n = (*notification(id, seq, NotificationStatus::Scheduled)).clone();
    n.send_at = Some(Timestamp::from_millisecond(due_ms).unwrap());
    Arc::new(n)
}

/// `n` with another status (and the same `send_at`).
fn with_status(n: &Notification, status: NotificationStatus) -> Write {
    Write::PutNotification(Arc::new(Notification { status, ..n.clone() }))
}

/// A two-step alimtalk sequence for `u1`.
pub fn sequence(id: &str, status: SequenceStatus) -> Arc<Sequence> {
    let content = Rendered { body: "step".into(), template_code: Some("T1".into()), ..Rendered::default() };
    let step = SequenceStep {
        category: Category::Transaction,
        channels: vec![Channel::Alimtalk],
        strategy: Strategy::Parallel,
        priority: Priority::Normal,
        template_id: None,
        contents: vec![(Channel::Alimtalk, Arc::new(content))],
        metadata: None,
        status: StepStatus::Pending,
        notification_id: None,
        started_at: None,
        ended_at: None,
        reason: None,
    };
    Arc::new(Sequence {
        id: id.to_string(),
        user_id: "u1".into(),
        steps: vec![step.clone(), step],
        step_timeout_ms: 600_000,
        on_failure: OnFailure::Stop,
        status,
        current: 0,
        created_at: Timestamp::UNIX_EPOCH,
        updated_at: Timestamp::UNIX_EPOCH,
    })
}

fn ids(notifications: &[Notification]) -> Vec<String> {
    notifications.iter().map(|n| n.id.clone()).collect()
}

pub async fn scheduled_is_in_due_then_id_order_up_to_until(store: Arc<dyn Store>) {
    let due = [("c", 2_000), ("b", 1_000), ("a", 2_000), ("d", 3_000), ("e", -500)];
    let mut writes: Vec<_> =
        due.iter().zip(1..).map(|((id, due_ms), seq)| Write::PutNotification(scheduled(id, seq, *due_ms))).collect();
    writes.push(Write::PutNotification(notification("open", 10, NotificationStatus::Accepted)));
    writes.push(Write::PutNotification(notification("done", 11, NotificationStatus::Completed)));
    store.commit(writes).await.unwrap();

    let all = store.scheduled(None, i64::MAX, 10).await.unwrap();
    assert_eq!(ids(&all), ["e", "b", "a", "c", "d"], "due time, then id; nothing else");
    assert_eq!(all[1], *scheduled("b", 2, 1_000), "whole records");
    let open = store.open_notifications().await.unwrap();
    assert_eq!(
        open.iter().map(|s| s.notification.id.as_str()).collect::<Vec<_>>(),
        ["open"],
        "scheduled ones are not open"
    );

    assert_eq!(ids(&store.scheduled(None, 2_000, 10).await.unwrap()), ["e", "b", "a", "c"], "until is inclusive");
    assert_eq!(ids(&store.scheduled(None, 1_999, 10).await.unwrap()), ["e", "b"]);
    assert_eq!(ids(&store.scheduled(None, i64::MAX, 2).await.unwrap()), ["e", "b"], "at most limit");
    assert!(store.scheduled(None, i64::MAX, 0).await.unwrap().is_empty());

    let after_a = ScheduleCursor::of(&all[2]);
    assert_eq!(ids(&store.scheduled(Some(&after_a), i64::MAX, 10).await.unwrap()), ["c", "d"], "after is exclusive");
    let between = ScheduleCursor { due_ms: 2_000, id: "b".into() };
    assert_eq!(
        ids(&store.scheduled(Some(&between), i64::MAX, 10).await.unwrap()),
        ["c", "d"],
        "a cursor need not be an entry"
    );
    assert!(store.scheduled(Some(&between), 1_000, 10).await.unwrap().is_empty());
}

pub async fn scheduled_pages_through_a_shared_due_time_exactly_once(store: Arc<dyn Store>) {
    const DUE: i64 = 1_700_000_000_000;
    const TIED: u32 = 1_500;
    // Put in reverse id order, with one due just before (but with the greatest id) and one just after.
    let mut writes: Vec<_> =
        (1..=TIED).rev().map(|n| Write::PutNotification(scheduled(&id(n), n.into(), DUE))).collect();
    writes.push(Write::PutNotification(scheduled(&id(9_999), 9_999, DUE - 1)));
    writes.push(Write::PutNotification(scheduled(&id(0), 10_000, DUE + 1)));
    store.commit(writes).await.unwrap();

    let (mut seen, mut after, mut pages) = (Vec::new(), None, 0);
    loop {
        let page = store.scheduled(after.as_ref(), DUE, 500).await.unwrap();
        let Some(last) = page.last() else { break };
        assert!(page.len() <= 500);
        after = Some(ScheduleCursor::of(last));
        seen.extend(ids(&page));
        pages += 1;
    }
    let expected: Vec<_> = [id(9_999)].into_iter().chain((1..=TIED).map(id)).collect();
    assert_eq!(seen, expected, "every entry due by the bound exactly once, in (due, id) order");
    assert_eq!(pages, 4);
    let later = store.scheduled(after.as_ref(), DUE + 1, 500).await.unwrap();
    assert_eq!(ids(&later), [id(0)], "the next bound resumes after the last cursor");
}

pub async fn scheduled_notifications_leave_and_move_in_the_index_as_they_change(store: Arc<dyn Store>) {
    let (n1, n2, n3) = (scheduled("n1", 1, 1_000), scheduled("n2", 2, 2_000), scheduled("n3", 3, 3_000));
    let n4 = notification("n4", 4, NotificationStatus::Accepted);
    let puts = [&n1, &n2, &n3, &n4].map(|n| Write::PutNotification(Arc::clone(n)));
    store.commit(puts.to_vec()).await.unwrap();

    let moved = scheduled("n3", 3, 500);
    // Deferred after acceptance (quiet hours): it leaves the open index for the scheduled one.
    let deferred = scheduled("n4", 4, 4_000);
    let writes = vec![
        with_status(&n1, NotificationStatus::Dispatching),
        with_status(&n2, NotificationStatus::Cancelled),
        Write::PutNotification(moved.clone()),
        Write::PutNotification(deferred.clone()),
    ];
    store.commit(writes).await.unwrap();
    let all = store.scheduled(None, i64::MAX, 10).await.unwrap();
    assert_eq!(all, vec![(*moved).clone(), (*deferred).clone()], "started and cancelled ones left; n3 moved");
    assert_eq!(ids(&store.scheduled(None, 2_999, 10).await.unwrap()), ["n3"], "n3 is at its new due time");
    let past_old = ScheduleCursor { due_ms: 2_999, id: String::new() };
    assert_eq!(
        ids(&store.scheduled(Some(&past_old), 3_999, 10).await.unwrap()),
        Vec::<String>::new(),
        "no stale entry"
    );
    let open = store.open_notifications().await.unwrap();
    assert_eq!(open.iter().map(|s| s.notification.id.as_str()).collect::<Vec<_>>(), ["n1"], "started: open again");
    let cancelled = store.notification("n2").await.unwrap().expect("readable");
    assert_eq!(cancelled.notification.status, NotificationStatus::Cancelled);

    // The same put twice keeps one entry; then n3 runs to the end and is in neither index.
    store.commit(vec![Write::PutNotification(moved.clone()), Write::PutNotification(moved.clone())]).await.unwrap();
    assert_eq!(ids(&store.scheduled(None, i64::MAX, 10).await.unwrap()), ["n3", "n4"]);
    store.commit(vec![with_status(&moved, NotificationStatus::Dispatching)]).await.unwrap();
    store.commit(vec![with_status(&moved, NotificationStatus::Completed)]).await.unwrap();
    assert_eq!(ids(&store.scheduled(None, i64::MAX, 10).await.unwrap()), ["n4"]);
    let open = store.open_notifications().await.unwrap();
    assert_eq!(open.iter().map(|s| s.notification.id.as_str()).collect::<Vec<_>>(), ["n1"]);
}

pub async fn sequences_round_trip_and_only_running_ones_are_open(store: Arc<dyn Store>) {
    assert_eq!(store.sequence("s1").await.unwrap(), None);
    assert!(store.open_sequences().await.unwrap().is_empty());
    let (s1, s2, s3) = (
        sequence("s1", SequenceStatus::Running),
        sequence("s2", SequenceStatus::Completed),
        sequence("s3", SequenceStatus::Running),
    );
    let puts = [&s3, &s1, &s2].map(|s| Write::PutSequence(Arc::clone(s)));
    store.commit(puts.to_vec()).await.unwrap();
    assert_eq!(store.open_sequences().await.unwrap(), vec![(*s1).clone(), (*s3).clone()], "running ones, id order");
    assert_eq!(store.sequence("s2").await.unwrap(), Some((*s2).clone()), "a final one stays readable");

    let mut advanced = (*s1).clone();
    advanced.current = 1;
    advanced.steps[0].status = StepStatus::Delivered;
    advanced.steps[0].notification_id = Some("n1".into());
    store.commit(vec![Write::PutSequence(Arc::new(advanced.clone()))]).await.unwrap();
    assert_eq!(store.sequence("s1").await.unwrap(), Some(advanced.clone()), "a put replaces");
    assert_eq!(store.open_sequences().await.unwrap().len(), 2);

    let end = |s: &Sequence, status| Write::PutSequence(Arc::new(Sequence { status, ..s.clone() }));
    store.commit(vec![end(&advanced, SequenceStatus::Cancelled), end(&s3, SequenceStatus::Failed)]).await.unwrap();
    assert!(store.open_sequences().await.unwrap().is_empty());
    assert_eq!(store.sequence("s3").await.unwrap().map(|s| s.status), Some(SequenceStatus::Failed));
}

async fn ttl(server: &RedisServer, key: &str) -> i64 {
    let client = ::redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    ::redis::cmd("TTL").arg(key).query_async(&mut conn).await.unwrap()
}

/// Redis: a scheduled notification (not final) never expires; a final sequence expires after `retention_s`
/// like a final notification, and a running one does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keeps_scheduled_notifications_and_running_sequences_and_expires_final_sequences() {
    let Some(server) = RedisServer::start() else { return };
    let settings = RedisSettings { url: Secret::new(server.url()), retention_s: 3_600, ..RedisSettings::default() };
    let store = RedisStore::open(&settings, 64).await.unwrap();
    let n = scheduled("n1", 1, 1_000);
    let writes = vec![
        Write::PutNotification(Arc::new(Notification { status: NotificationStatus::Completed, ..(*n).clone() })),
        Write::PutNotification(n),
        Write::PutSequence(sequence("s1", SequenceStatus::Completed)),
        Write::PutSequence(sequence("s2", SequenceStatus::Running)),
    ];
    store.commit(writes).await.unwrap();
    let prefix = &settings.prefix;
    assert_eq!(ttl(&server, &format!("{prefix}n:n1")).await, -1, "scheduled after final: the expiry is lifted");
    assert!((1..=3_600).contains(&ttl(&server, &format!("{prefix}sequence:s1")).await));
    assert_eq!(ttl(&server, &format!("{prefix}sequence:s2")).await, -1);
    store.commit(vec![Write::PutSequence(sequence("s1", SequenceStatus::Running))]).await.unwrap();
    assert_eq!(ttl(&server, &format!("{prefix}sequence:s1")).await, -1, "running again: kept");
}
