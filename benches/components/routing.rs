//! `routing`: which shard owns a recipient ([`shard_index`]) and the shard's planning step
//! ([`deliveries_for`]: user + channel + preferences → deliveries).
//!
//! The dispatcher's lanes and per-recipient queues are private to its actor (a job carries the owning shard's
//! `ActorRef`), so they are measured only through `benches/hot_path.rs`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput};
use herald::domain::{
    Category, Channel, DeliveryStatus, Device, Notification, NotificationStatus, Platform, Priority, Rendered,
    Strategy, User, new_id,
};
use herald::engine::{deliveries_for, shard_index};
use jiff::Timestamp;

/// `engine.shards` in `config/default.toml`.
const SHARDS: usize = 8;

pub fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("routing");

    let ids: Vec<String> = (0..1024).map(|i| format!("user-{i:08}")).collect();
    let uuid_ids: Vec<String> = (0..1024).map(|_| new_id()).collect();
    group.throughput(Throughput::Elements(1));
    for (name, ids) in [("shard_index/short_id", &ids), ("shard_index/uuid_id", &uuid_ids)] {
        let mut next = 0usize;
        group.bench_function(name, |b| {
            b.iter(|| {
                next = (next + 1) % ids.len();
                shard_index(black_box(&ids[next]), SHARDS)
            })
        });
    }

    let now = Timestamp::now();
    let user = contactable_user(now);
    let channels = [Channel::Push, Channel::Email, Channel::Sms];
    let parallel = notification(&user.id, Category::Transaction, &channels, now);
    let planned: Vec<_> = channels.iter().flat_map(|&ch| deliveries_for(&parallel, &user, false, ch, now)).collect();
    assert_eq!(planned.len(), 4, "two devices, one e-mail, one phone");
    assert!(planned.iter().all(|d| d.status == DeliveryStatus::Queued));
    group.bench_function("plan/parallel_push2_email_sms", |b| {
        b.iter(|| {
            channels.iter().map(|&ch| deliveries_for(black_box(&parallel), &user, false, ch, now).len()).sum::<usize>()
        })
    });

    // A promotion to a user who turned promotional push and SMS off: two channels filtered, e-mail queued.
    let mut picky = user.clone();
    picky.preferences.promotion = BTreeMap::from([(Channel::Push, false), (Channel::Sms, false)]);
    let promotion = notification(&picky.id, Category::Promotion, &channels, now);
    let planned: Vec<_> = channels.iter().flat_map(|&ch| deliveries_for(&promotion, &picky, false, ch, now)).collect();
    let filtered = planned.iter().filter(|d| d.status == DeliveryStatus::Filtered).count();
    assert_eq!((planned.len(), filtered), (3, 2), "push and sms filtered by preferences");
    group.bench_function("plan/promotion_filtered_by_preferences", |b| {
        b.iter(|| {
            channels
                .iter()
                .map(|&ch| deliveries_for(black_box(&promotion), &picky, false, ch, now).len())
                .sum::<usize>()
        })
    });
    group.finish();
}

fn contactable_user(now: Timestamp) -> User {
    let mut user = User::new("user-00000042".into(), now);
    user.email = Some("someone@example.com".into());
    user.phone = Some("+821012345678".into());
    user.devices = [Platform::Android, Platform::Ios]
        .into_iter()
        .map(|platform| Device { token: format!("{}-token", new_id()), platform, created_at: now })
        .collect();
    user
}

fn notification(owner: &str, category: Category, channels: &[Channel], now: Timestamp) -> Notification {
    let content = Arc::new(Rendered {
        title: Some("Order shipped".into()),
        body: "Your order is on its way".into(),
        ..Default::default()
    });
    Notification {
        id: new_id(),
        seq: 1,
        owner: owner.into(),
        user_id: Some(owner.into()),
        category,
        channels: channels.to_vec(),
        strategy: Strategy::Parallel,
        priority: Priority::Normal,
        template_id: None,
        contents: channels.iter().map(|&ch| (ch, content.clone())).collect(),
        status: NotificationStatus::Accepted,
        current_channel: 0,
        idempotency_key: None,
        metadata: None,
        expires_at: None,
        send_at: None,
        reason: None,
        sequence: None,
        campaign: None,
        created_at: now,
        updated_at: now,
    }
}
