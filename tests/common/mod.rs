//! Records for store tests: small valid domain values with the fields the store indexes on as parameters.
#![allow(dead_code)] // each test binary uses a different subset

pub mod redis;

use std::collections::BTreeMap;
use std::sync::Arc;

use herald::domain::*;
use jiff::Timestamp;

pub fn user(id: &str) -> Arc<User> {
    let mut user = User::new(id.to_string(), Timestamp::UNIX_EPOCH);
    user.email = Some(format!("{id}@example.com"));
    user.phone = Some("+821012345678".into());
    Arc::new(user)
}

pub fn template(id: &str) -> Arc<Template> {
    let body =
        TemplateBody { title: Some("Shipped".into()), body: "{{item}} shipped".into(), html: None, templatecode: None };
    Arc::new(Template {
        id: id.to_string(),
        channels: BTreeMap::from([(Channel::Push, BTreeMap::from([("en".to_string(), body)]))]),
        default_locale: Some("en".into()),
        updated_at: Timestamp::UNIX_EPOCH,
    })
}

pub fn notification(id: &str, seq: u64, status: NotificationStatus) -> Arc<Notification> {
    Arc::new(Notification {
        id: id.to_string(),
        seq,
        owner: "u1".into(),
        user_id: Some("u1".into()),
        category: Category::Transaction,
        channels: vec![Channel::Sms, Channel::Push],
        strategy: Strategy::Parallel,
        priority: Priority::High,
        template_id: None,
        contents: vec![(Channel::Sms, Arc::new(Rendered { body: "hi".into(), ..Rendered::default() }))],
        status,
        current_channel: 0,
        idempotency_key: Some("key".into()),
        metadata: Some(Box::new(serde_json::json!({"order": 42}))),
        expires_at: None,
        send_at: None,
        reason: None,
        sequence: None,
        campaign: None,
        created_at: Timestamp::UNIX_EPOCH,
        updated_at: Timestamp::UNIX_EPOCH,
    })
}

pub fn delivery(id: &str, notification_id: &str, channel: Channel, status: DeliveryStatus) -> Arc<Delivery> {
    let (provider, address) = match channel {
        Channel::Push => (ProviderKind::Fcm, Address::Device { token: "tok".into(), platform: Platform::Android }),
        Channel::Email => (ProviderKind::Smtp, Address::Email { email: "u1@example.com".into() }),
        Channel::Sms => (ProviderKind::Twilio, Address::Phone { phone: "+821012345678".into() }),
        Channel::Alimtalk => (ProviderKind::Bizppurio, Address::Phone { phone: "+821012345678".into() }),
        Channel::InApp => (ProviderKind::Inbox, Address::Inbox { user_id: "u1".into() }),
    };
    Arc::new(Delivery {
        id: id.to_string(),
        notification_id: notification_id.to_string(),
        seq: 1,
        owner: "u1".into(),
        channel,
        provider,
        address,
        priority: Priority::Normal,
        status,
        attempts: 3,
        provider_message_id: Some("pm-1".into()),
        events: vec![Event { kind: EventKind::Requested, at: Timestamp::UNIX_EPOCH, reason: None }],
        updated_at: Timestamp::UNIX_EPOCH,
    })
}

pub fn idempotency_entry(notification_id: &str, expires_at: Timestamp) -> IdempotencyEntry {
    IdempotencyEntry {
        notification_id: notification_id.to_string(),
        body_hash: 0xfeed,
        status: NotificationStatus::Accepted,
        expires_at,
    }
}

pub fn inbox_item(user_id: &str, id: &str) -> Arc<InboxItem> {
    Arc::new(InboxItem {
        id: id.to_string(),
        user_id: user_id.to_string(),
        notification_id: "n1".into(),
        category: Category::Announcement,
        title: Some("Hello".into()),
        body: format!("item {id}"),
        created_at: Timestamp::UNIX_EPOCH,
        read_at: None,
    })
}

/// A time-ordered id that sorts after `id(n - 1)`, readable in assertions.
pub fn id(n: u32) -> String {
    format!("{n:032x}")
}
