//! Pure planning: which deliveries a channel of a notification gets for a user, and whether a notification is
//! settled. No actors, no I/O: the shard calls these and does the effects.

use std::borrow::Borrow;
use std::sync::Arc;

use jiff::Timestamp;

use crate::domain::{
    Address, Channel, Delivery, DeliveryStatus, Event, EventKind, InboxItem, Notification, NotificationStatus,
    ProviderKind, Strategy, User, new_id,
};

/// The deliveries of `channel` for `user`: queued ones to dispatch, `filtered` ones (preferences, missing contact)
/// and, for in-app, one already `delivered` (the inbox write is part of the same commit).
pub fn deliveries_for(
    notification: &Notification,
    user: &User,
    adhoc: bool,
    channel: Channel,
    now: Timestamp,
) -> Vec<Delivery> {
    let delivery =
        |provider: ProviderKind, address: Address, status: DeliveryStatus, kind: EventKind, reason: Option<&str>| {
            let mut events = vec![Event { kind: EventKind::Requested, at: now, reason: None }];
            if kind != EventKind::Requested {
                events.push(Event { kind, at: now, reason: reason.map(str::to_string) });
            }
            Delivery {
                id: new_id(),
                notification_id: notification.id.clone(),
                seq: notification.seq,
                owner: notification.owner.clone(),
                channel,
                provider,
                address,
                priority: notification.priority,
                status,
                attempts: 0,
                provider_message_id: None,
                events,
                updated_at: now,
            }
        };
    let queued = |provider, address| delivery(provider, address, DeliveryStatus::Queued, EventKind::Requested, None);
    let filtered = |provider, reason: &str| {
        delivery(provider, Address::Missing, DeliveryStatus::Filtered, EventKind::Filtered, Some(reason))
    };
    let default_provider = ProviderKind::for_channel(channel)[0];
    if !user.preferences.allows(notification.category, channel) {
        let reason = format!("preferences: {} disabled for {}", channel.as_str(), notification.category.as_str());
        return vec![filtered(default_provider, &reason)];
    }
    match channel {
        Channel::Push if user.devices.is_empty() => vec![filtered(ProviderKind::Fcm, "missing contact: no device")],
        Channel::Push => user
            .devices
            .iter()
            .map(|d| {
                let address = Address::Device { token: d.token.clone(), platform: d.platform };
                queued(ProviderKind::for_platform(d.platform), address)
            })
            .collect(),
        Channel::Email => match &user.email {
            Some(email) => vec![queued(ProviderKind::Smtp, Address::Email { email: email.clone() })],
            None => vec![filtered(ProviderKind::Smtp, "missing contact: no email")],
        },
        Channel::Sms => match &user.phone {
            Some(phone) => vec![queued(ProviderKind::Twilio, Address::Phone { phone: phone.clone() })],
            None => vec![filtered(ProviderKind::Twilio, "missing contact: no phone")],
        },
        Channel::Alimtalk => match user.alimtalk_phone() {
            Some(phone) => vec![queued(ProviderKind::Bizppurio, Address::Phone { phone: phone.to_string() })],
            None => vec![filtered(ProviderKind::Bizppurio, "missing contact: no phone")],
        },
        Channel::InApp if adhoc => vec![filtered(ProviderKind::Inbox, "missing contact: in-app needs a known user")],
        Channel::InApp => {
            let address = Address::Inbox { user_id: user.id.clone() };
            vec![delivery(ProviderKind::Inbox, address, DeliveryStatus::Delivered, EventKind::Delivered, None)]
        }
    }
}

/// The inbox item an in-app delivery puts in the user's feed.
pub fn inbox_item(notification: &Notification, delivery: &Delivery, now: Timestamp) -> Option<Arc<InboxItem>> {
    let Address::Inbox { user_id } = &delivery.address else { return None };
    let content = notification.content(Channel::InApp)?;
    Some(Arc::new(InboxItem {
        id: delivery.id.clone(),
        user_id: user_id.clone(),
        notification_id: notification.id.clone(),
        category: notification.category,
        title: content.title.clone(),
        body: content.body.clone(),
        created_at: now,
        read_at: None,
    }))
}

/// Where a notification stands given its deliveries so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Settle {
    /// Deliveries of the current step are still under way.
    Pending,
    /// `priority` strategy: nothing delivered on the current channel; try this index of `channels` next.
    NextChannel(usize),
    Done(NotificationStatus),
}

/// Decides what happens next for a notification (`deliveries`: records, or the shard's shared ones).
pub fn settle<D: Borrow<Delivery>>(notification: &Notification, deliveries: &[D], cancelled: bool) -> Settle {
    let current = |d: &&Delivery| match notification.strategy {
        Strategy::Parallel => true,
        Strategy::Priority => Some(&d.channel) == notification.channels.get(notification.current_channel),
    };
    let step = || deliveries.iter().map(Borrow::borrow).filter(current);
    if step().any(|d| !d.status.is_final()) {
        return Settle::Pending;
    }
    if step().any(|d| d.status == DeliveryStatus::Delivered) {
        return Settle::Done(NotificationStatus::Completed);
    }
    if cancelled {
        return Settle::Done(NotificationStatus::Cancelled);
    }
    match notification.strategy {
        Strategy::Priority if notification.current_channel + 1 < notification.channels.len() => {
            Settle::NextChannel(notification.current_channel + 1)
        }
        _ => Settle::Done(NotificationStatus::Failed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Category, Device, Platform, Priority, Rendered};

    fn notification(strategy: Strategy, channels: Vec<Channel>) -> Notification {
        let now = Timestamp::UNIX_EPOCH;
        Notification {
            id: new_id(),
            seq: 1,
            owner: "u1".into(),
            user_id: Some("u1".into()),
            category: Category::Transaction,
            contents: channels
                .iter()
                .map(|c| (*c, Arc::new(Rendered { body: "hi".into(), ..Default::default() })))
                .collect(),
            channels,
            strategy,
            priority: Priority::High,
            template_id: None,
            status: NotificationStatus::Dispatching,
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

    fn user() -> User {
        let now = Timestamp::UNIX_EPOCH;
        let mut u = User::new("u1".into(), now);
        u.email = Some("kim@example.com".into());
        for (token, platform) in [("aa", Platform::Ios), ("bb", Platform::Android)] {
            u.devices.push(Device { token: token.into(), platform, created_at: now });
        }
        u
    }

    #[test]
    fn push_goes_to_every_device_through_its_platform_provider() {
        let n = notification(Strategy::Parallel, vec![Channel::Push]);
        let ds = deliveries_for(&n, &user(), false, Channel::Push, Timestamp::UNIX_EPOCH);
        let providers: Vec<_> = ds.iter().map(|d| d.provider).collect();
        assert_eq!(providers, vec![ProviderKind::Apns, ProviderKind::Fcm]);
        assert!(ds.iter().all(|d| d.status == DeliveryStatus::Queued));
    }

    #[test]
    fn a_missing_contact_is_filtered_with_a_reason_not_failed() {
        let n = notification(Strategy::Parallel, vec![Channel::Sms]);
        let ds = deliveries_for(&n, &user(), false, Channel::Sms, Timestamp::UNIX_EPOCH);
        assert_eq!(ds.len(), 1);
        assert_eq!(ds[0].status, DeliveryStatus::Filtered);
        assert_eq!(ds[0].events[1].reason.as_deref(), Some("missing contact: no phone"));
    }

    #[test]
    fn preferences_filter_a_channel() {
        let mut n = notification(Strategy::Parallel, vec![Channel::Email]);
        n.category = Category::Promotion;
        let mut u = user();
        u.preferences.promotion.insert(Channel::Email, false);
        let ds = deliveries_for(&n, &u, false, Channel::Email, Timestamp::UNIX_EPOCH);
        assert_eq!(ds[0].status, DeliveryStatus::Filtered);
    }

    #[test]
    fn priority_moves_to_the_next_channel_only_when_nothing_was_delivered() {
        let mut n = notification(Strategy::Priority, vec![Channel::Push, Channel::Sms]);
        let mut ds = deliveries_for(&n, &user(), false, Channel::Push, Timestamp::UNIX_EPOCH);
        assert_eq!(settle(&n, &ds, false), Settle::Pending);
        ds[0].status = DeliveryStatus::Failed;
        assert_eq!(settle(&n, &ds, false), Settle::Pending, "second device still under way");
        ds[1].status = DeliveryStatus::Dead;
        assert_eq!(settle(&n, &ds, false), Settle::NextChannel(1));
        n.current_channel = 1;
        let mut sms = deliveries_for(&n, &user(), false, Channel::Sms, Timestamp::UNIX_EPOCH);
        ds.append(&mut sms);
        assert_eq!(settle(&n, &ds, false), Settle::Done(NotificationStatus::Failed), "sms filtered: no phone");
    }

    #[test]
    fn parallel_completes_when_all_are_final_and_one_delivered() {
        let n = notification(Strategy::Parallel, vec![Channel::Push, Channel::Email]);
        let mut ds = deliveries_for(&n, &user(), false, Channel::Push, Timestamp::UNIX_EPOCH);
        ds.extend(deliveries_for(&n, &user(), false, Channel::Email, Timestamp::UNIX_EPOCH));
        ds[0].status = DeliveryStatus::Delivered;
        ds[1].status = DeliveryStatus::Failed;
        assert_eq!(settle(&n, &ds, false), Settle::Pending);
        ds[2].status = DeliveryStatus::Sent;
        assert_eq!(settle(&n, &ds, false), Settle::Pending, "sent is not final");
        ds[2].status = DeliveryStatus::Delivered;
        assert_eq!(settle(&n, &ds, false), Settle::Done(NotificationStatus::Completed));
    }

    #[test]
    fn in_app_is_delivered_into_the_inbox_at_once_but_not_for_adhoc_recipients() {
        let n = notification(Strategy::Parallel, vec![Channel::InApp]);
        let ds = deliveries_for(&n, &user(), false, Channel::InApp, Timestamp::UNIX_EPOCH);
        assert_eq!(ds[0].status, DeliveryStatus::Delivered);
        assert!(inbox_item(&n, &ds[0], Timestamp::UNIX_EPOCH).is_some());
        let ds = deliveries_for(&n, &user(), true, Channel::InApp, Timestamp::UNIX_EPOCH);
        assert_eq!(ds[0].status, DeliveryStatus::Filtered);
    }
}
