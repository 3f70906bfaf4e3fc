//! The binary form of notification and delivery records in the embedded store: the two records every push
//! writes at each status change (four puts per push), so their encoding was ~9% of Herald's CPU as JSON
//! (`docs/performance.md`, session 7). The other records stay JSON.
//!
//! A binary record starts with [`FORMAT`], which no JSON text starts with, so records written as JSON by an
//! earlier Herald (in its log or an imported store) still read. Fields follow in declaration order in the
//! primitives of `wire.rs`; enums are one-byte codes. The encoders destructure each struct completely and the
//! decoders build it field by field, so a field added to `Notification` or `Delivery` does not compile until
//! it is given a place here (append it, never reorder), and a variant added to an enum does not compile until
//! it has a code.

use std::sync::Arc;

use super::encode::from_json;
use super::wire::{Reader, Writer};
use crate::domain::{
    Address, Category, Channel, Delivery, DeliveryStatus, Event, EventKind, Notification, NotificationStatus, Platform,
    Priority, ProviderKind, Rendered, StepRef, Strategy,
};
use crate::store::StoreError;

/// First byte of a binary record (JSON starts with `{`, `[`, `"`, a digit, a letter or whitespace).
pub const FORMAT: u8 = 0xB1;

/// Defines an enum's one-byte codes in one list: `code` is an exhaustive match (a new variant fails to
/// compile), `from_code` its inverse.
macro_rules! codes {
    ($module:ident, $ty:ty, { $($code:literal => $variant:path),+ $(,)? }) => {
        mod $module {
            use super::*;
            pub fn code(v: $ty) -> u8 {
                match v { $($variant => $code),+ }
            }
            pub fn from_code(code: u8) -> Option<$ty> {
                match code { $($code => Some($variant),)+ _ => None }
            }
        }
    };
}

codes!(category, Category, { 0 => Category::Transaction, 1 => Category::AccountSecurity, 2 => Category::Announcement, 3 => Category::Promotion });
codes!(channel, Channel, { 0 => Channel::Push, 1 => Channel::Email, 2 => Channel::Sms, 3 => Channel::Alimtalk, 4 => Channel::InApp });
codes!(strategy, Strategy, { 0 => Strategy::Parallel, 1 => Strategy::Priority });
codes!(priority, Priority, { 0 => Priority::Critical, 1 => Priority::High, 2 => Priority::Normal, 3 => Priority::Low });
codes!(platform, Platform, { 0 => Platform::Ios, 1 => Platform::Android, 2 => Platform::Web });
codes!(provider, ProviderKind, {
    0 => ProviderKind::Fcm, 1 => ProviderKind::Apns, 2 => ProviderKind::Smtp, 3 => ProviderKind::Twilio,
    4 => ProviderKind::Bizppurio, 5 => ProviderKind::Inbox,
});
codes!(notification_status, NotificationStatus, {
    0 => NotificationStatus::Accepted, 1 => NotificationStatus::Scheduled, 2 => NotificationStatus::Dispatching,
    3 => NotificationStatus::Completed, 4 => NotificationStatus::Failed, 5 => NotificationStatus::Cancelled,
});
codes!(delivery_status, DeliveryStatus, {
    0 => DeliveryStatus::Queued, 1 => DeliveryStatus::Retrying, 2 => DeliveryStatus::Sent,
    3 => DeliveryStatus::Delivered, 4 => DeliveryStatus::Failed, 5 => DeliveryStatus::Filtered,
    6 => DeliveryStatus::Dead, 7 => DeliveryStatus::Cancelled,
});
codes!(event_kind, EventKind, {
    0 => EventKind::Requested, 1 => EventKind::Filtered, 2 => EventKind::Sent, 3 => EventKind::Delivered,
    4 => EventKind::Retry, 5 => EventKind::Failed, 6 => EventKind::DeadLettered, 7 => EventKind::Replayed,
    8 => EventKind::Cancelled, 9 => EventKind::Read, 10 => EventKind::Clicked,
});

/// Address kinds.
const DEVICE: u8 = 0;
const EMAIL: u8 = 1;
const PHONE: u8 = 2;
const INBOX: u8 = 3;
const MISSING: u8 = 4;

/// A notification's binary record.
pub fn notification(n: &Notification) -> Result<Vec<u8>, StoreError> {
    let Notification {
        id,
        seq,
        owner,
        user_id,
        category,
        channels,
        strategy,
        priority,
        template_id,
        contents,
        status,
        current_channel,
        idempotency_key,
        metadata,
        expires_at,
        send_at,
        reason,
        sequence,
        campaign,
        created_at,
        updated_at,
    } = n;
    let mut out = Vec::with_capacity(256);
    let mut w = Writer(&mut out);
    w.u8(FORMAT).str(id).u64(*seq).str(owner).opt_str(user_id.as_deref()).u8(category::code(*category));
    w.u32(len(channels.len()));
    for c in channels {
        w.u8(channel::code(*c));
    }
    w.u8(strategy::code(*strategy)).u8(priority::code(*priority)).opt_str(template_id.as_deref());
    w.u32(len(contents.len()));
    for (c, rendered) in contents {
        let Rendered { title, body, html, template_code } = &**rendered;
        w.u8(channel::code(*c)).opt_str(title.as_deref()).str(body).opt_str(html.as_deref());
        w.opt_str(template_code.as_deref());
    }
    w.u8(notification_status::code(*status)).u64(*current_channel as u64).opt_str(idempotency_key.as_deref());
    match metadata {
        Some(value) => {
            let json = serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(format!("metadata: {e}")))?;
            w.u8(1).bytes(&json)
        }
        None => w.u8(0),
    };
    w.opt_timestamp(*expires_at).opt_timestamp(*send_at).opt_str(reason.as_deref());
    match sequence {
        Some(StepRef { sequence_id, step }) => w.u8(1).str(sequence_id).u64(*step as u64),
        None => w.u8(0),
    };
    w.opt_str(campaign.as_deref()).timestamp(*created_at).timestamp(*updated_at);
    Ok(out)
}

/// A delivery's binary record.
pub fn delivery(d: &Delivery) -> Vec<u8> {
    let Delivery {
        id,
        notification_id,
        seq,
        owner,
        channel,
        provider,
        address,
        priority,
        status,
        attempts,
        provider_message_id,
        events,
        updated_at,
    } = d;
    let mut out = Vec::with_capacity(256);
    let mut w = Writer(&mut out);
    w.u8(FORMAT).str(id).str(notification_id).u64(*seq).str(owner).u8(channel::code(*channel));
    w.u8(provider::code(*provider));
    match address {
        Address::Device { token, platform } => w.u8(DEVICE).str(token).u8(platform::code(*platform)),
        Address::Email { email } => w.u8(EMAIL).str(email),
        Address::Phone { phone } => w.u8(PHONE).str(phone),
        Address::Inbox { user_id } => w.u8(INBOX).str(user_id),
        Address::Missing => w.u8(MISSING),
    };
    w.u8(priority::code(*priority)).u8(delivery_status::code(*status)).u32(*attempts);
    w.opt_str(provider_message_id.as_deref()).u32(len(events.len()));
    for Event { kind, at, reason } in events {
        w.u8(event_kind::code(*kind)).timestamp(*at).opt_str(reason.as_deref());
    }
    w.timestamp(*updated_at);
    out
}

/// Reads a notification record: binary, or JSON as an earlier Herald wrote it.
pub fn read_notification(bytes: &[u8]) -> Result<Notification, StoreError> {
    let Some(mut rest) = bytes.strip_prefix(&[FORMAT]) else { return from_json("notification", bytes) };
    let r = &mut Reader(&mut rest);
    let notification = Notification {
        id: r.string()?,
        seq: r.u64()?,
        owner: r.string()?,
        user_id: r.opt_string()?,
        category: code(r, "category", category::from_code)?,
        channels: {
            let n = r.count(1)?;
            (0..n).map(|_| code(r, "channel", channel::from_code)).collect::<Result<_, _>>()?
        },
        strategy: code(r, "strategy", strategy::from_code)?,
        priority: code(r, "priority", priority::from_code)?,
        template_id: r.opt_string()?,
        contents: {
            let n = r.count(7)?;
            let mut contents = Vec::with_capacity(n);
            for _ in 0..n {
                let c = code(r, "channel", channel::from_code)?;
                let rendered = Rendered {
                    title: r.opt_string()?,
                    body: r.string()?,
                    html: r.opt_string()?,
                    template_code: r.opt_string()?,
                };
                contents.push((c, Arc::new(rendered)));
            }
            contents
        },
        status: code(r, "notification status", notification_status::from_code)?,
        current_channel: r.u64()? as usize,
        idempotency_key: r.opt_string()?,
        metadata: if r.bool()? { Some(Box::new(from_json("metadata", r.raw()?)?)) } else { None },
        expires_at: r.opt_timestamp()?,
        send_at: r.opt_timestamp()?,
        reason: r.opt_string()?,
        sequence: if r.bool()? { Some(StepRef { sequence_id: r.string()?, step: r.u64()? as usize }) } else { None },
        campaign: r.opt_string()?,
        created_at: r.timestamp()?,
        updated_at: r.timestamp()?,
    };
    finished(rest, "notification")?;
    Ok(notification)
}

/// Reads a delivery record: binary, or JSON as an earlier Herald wrote it.
pub fn read_delivery(bytes: &[u8]) -> Result<Delivery, StoreError> {
    let Some(mut rest) = bytes.strip_prefix(&[FORMAT]) else { return from_json("delivery", bytes) };
    let r = &mut Reader(&mut rest);
    let delivery = Delivery {
        id: r.string()?,
        notification_id: r.string()?,
        seq: r.u64()?,
        owner: r.string()?,
        channel: code(r, "channel", channel::from_code)?,
        provider: code(r, "provider", provider::from_code)?,
        address: match r.u8()? {
            DEVICE => Address::Device { token: r.string()?, platform: code(r, "platform", platform::from_code)? },
            EMAIL => Address::Email { email: r.string()? },
            PHONE => Address::Phone { phone: r.string()? },
            INBOX => Address::Inbox { user_id: r.string()? },
            MISSING => Address::Missing,
            kind => return Err(StoreError::Corrupt(format!("delivery: unknown address kind {kind}"))),
        },
        priority: code(r, "priority", priority::from_code)?,
        status: code(r, "delivery status", delivery_status::from_code)?,
        attempts: r.u32()?,
        provider_message_id: r.opt_string()?.map(String::into_boxed_str),
        events: {
            let n = r.count(14)?;
            let mut events = Vec::with_capacity(n);
            for _ in 0..n {
                let kind = code(r, "event kind", event_kind::from_code)?;
                events.push(Event { kind, at: r.timestamp()?, reason: r.opt_string()? });
            }
            events
        },
        updated_at: r.timestamp()?,
    };
    finished(rest, "delivery")?;
    Ok(delivery)
}

fn code<T>(r: &mut Reader<'_, '_>, what: &str, from_code: fn(u8) -> Option<T>) -> Result<T, StoreError> {
    let code = r.u8()?;
    from_code(code).ok_or_else(|| StoreError::Corrupt(format!("unknown {what} code {code}")))
}

fn finished(rest: &[u8], what: &str) -> Result<(), StoreError> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Corrupt(format!("{what}: {} bytes after the record", rest.len())))
    }
}

fn len(n: usize) -> u32 {
    u32::try_from(n).expect("fewer than 4 billion items")
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;

    use super::*;
    use crate::store::codec::to_json;

    fn full_notification() -> Notification {
        let at = Timestamp::new(1_700_000_000, 123_456_789).unwrap();
        Notification {
            id: "0192f0c2a1b34c5d8e9fa0b1c2d3e4f5".into(),
            seq: 42,
            owner: "user-1".into(),
            user_id: Some("user-1".into()),
            category: Category::Promotion,
            channels: vec![Channel::Push, Channel::InApp],
            strategy: Strategy::Priority,
            priority: Priority::Low,
            template_id: Some("order_shipped".into()),
            contents: vec![(
                Channel::Push,
                Arc::new(Rendered {
                    title: Some("Tïtle \"quoted\"".into()),
                    body: "body\nline".into(),
                    html: Some("<b>x</b>".into()),
                    template_code: Some("T1".into()),
                }),
            )],
            status: NotificationStatus::Dispatching,
            current_channel: 1,
            idempotency_key: Some("k-1".into()),
            metadata: Some(Box::new(serde_json::json!({"order": 7, "tags": ["a"]}))),
            expires_at: Some(at),
            send_at: Some(at),
            reason: Some("quiet_hours".into()),
            sequence: Some(StepRef { sequence_id: "s1".into(), step: 2 }),
            campaign: Some("c1".into()),
            created_at: at,
            updated_at: Timestamp::UNIX_EPOCH,
        }
    }

    fn full_delivery(address: Address) -> Delivery {
        let at = Timestamp::new(1_700_000_000, 5).unwrap();
        Delivery {
            id: "d1".into(),
            notification_id: "n1".into(),
            seq: 9,
            owner: "user-1".into(),
            channel: Channel::Alimtalk,
            provider: ProviderKind::Bizppurio,
            address,
            priority: Priority::Critical,
            status: DeliveryStatus::Dead,
            attempts: 4,
            provider_message_id: Some("m-1".into()),
            events: vec![
                Event { kind: EventKind::Requested, at, reason: None },
                Event { kind: EventKind::DeadLettered, at, reason: Some("gave up".into()) },
            ],
            updated_at: at,
        }
    }

    #[test]
    fn every_field_of_a_notification_survives_its_binary_form() {
        let n = full_notification();
        let bytes = notification(&n).unwrap();
        assert_eq!(bytes[0], FORMAT);
        assert_eq!(read_notification(&bytes).unwrap(), n);
        let mut bare = n.clone();
        (bare.user_id, bare.metadata, bare.sequence, bare.send_at, bare.contents) = (None, None, None, None, vec![]);
        assert_eq!(read_notification(&notification(&bare).unwrap()).unwrap(), bare);
    }

    #[test]
    fn every_address_of_a_delivery_survives_its_binary_form() {
        let addresses = [
            Address::Device { token: "tok".into(), platform: Platform::Web },
            Address::Email { email: "kim@example.com".into() },
            Address::Phone { phone: "+821012345678".into() },
            Address::Inbox { user_id: "user-1".into() },
            Address::Missing,
        ];
        for address in addresses {
            let d = full_delivery(address);
            assert_eq!(read_delivery(&delivery(&d)).unwrap(), d);
        }
    }

    #[test]
    fn records_an_earlier_herald_wrote_as_json_still_read() {
        let n = full_notification();
        assert_eq!(read_notification(&to_json(&n).unwrap()).unwrap(), n);
        let d = full_delivery(Address::Missing);
        assert_eq!(read_delivery(&to_json(&d).unwrap()).unwrap(), d);
    }

    #[test]
    fn every_enum_code_reads_back_as_its_variant() {
        for c in Channel::ALL {
            assert_eq!(channel::from_code(channel::code(c)), Some(c));
        }
        for p in Priority::ALL {
            assert_eq!(priority::from_code(priority::code(p)), Some(p));
        }
        for p in ProviderKind::ALL {
            assert_eq!(provider::from_code(provider::code(p)), Some(p));
        }
        for code in 0..=u8::MAX {
            let round = |v: Option<u8>| v.is_none_or(|c| c == code);
            assert!(round(category::from_code(code).map(category::code)));
            assert!(round(strategy::from_code(code).map(strategy::code)));
            assert!(round(platform::from_code(code).map(platform::code)));
            assert!(round(notification_status::from_code(code).map(notification_status::code)));
            assert!(round(delivery_status::from_code(code).map(delivery_status::code)));
            assert!(round(event_kind::from_code(code).map(event_kind::code)));
        }
    }

    #[test]
    fn a_cut_or_padded_record_is_corrupt() {
        let bytes = delivery(&full_delivery(Address::Missing));
        for cut in 1..bytes.len() {
            assert!(matches!(read_delivery(&bytes[..cut]), Err(StoreError::Corrupt(_))), "cut at {cut}");
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(matches!(read_delivery(&padded), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn the_binary_form_is_smaller_than_json() {
        let n = full_notification();
        let d = full_delivery(Address::Device { token: "t".repeat(64), platform: Platform::Android });
        let (nb, nj) = (notification(&n).unwrap().len(), to_json(&n).unwrap().len());
        let (db, dj) = (delivery(&d).len(), to_json(&d).unwrap().len());
        assert!(nb * 2 < nj && db * 2 < dj, "notification {nb} vs {nj}, delivery {db} vs {dj}");
    }
}
