//! The record of accepted messages: what the sandbox received, in arrival order, for tests and the load
//! generator to check order, duplicates and losses. Rejected requests never enter it (they are only counted).
//!
//! A record costs about 400 bytes (the struct, its strings, the ring's slack), so millions of messages are
//! hundreds of megabytes: a long-running reader (the load generator) reads pages (`limit`) and then forgets
//! what it read (`forget_through`), so the record only holds what nobody has read yet.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::domain::{Channel, ProviderKind};

/// One message a simulated provider accepted. Several for one SMTP message with several recipients.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReceivedMessage {
    /// Arrival number, starting at 1; never reused, not even after the record is cleared.
    pub seq: u64,
    pub channel: Channel,
    pub provider: ProviderKind,
    /// Device token, e-mail address or phone number, as the provider received it.
    pub to: String,
    pub title: Option<String>,
    pub body: String,
    pub html: Option<String>,
    /// Herald's delivery id when the request carried one (FCM data, APNs payload, e-mail header, callback URL,
    /// alimtalk refkey).
    pub reference: Option<String>,
    /// The id the provider answered with (FCM name, apns-id, Twilio sid, SMTP queue id, Bizppurio messagekey).
    pub provider_message_id: String,
    pub received_at: jiff::Timestamp,
}

/// What a provider handler hands to the record; the record stamps `seq` and `received_at`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Incoming {
    pub to: String,
    pub title: Option<String>,
    pub body: String,
    pub html: Option<String>,
    pub reference: Option<String>,
    pub provider_message_id: String,
}

/// Which records a query wants; every `None` matches all.
#[derive(Clone, Debug, Default)]
pub(crate) struct Filter {
    pub channel: Option<Channel>,
    pub provider: Option<ProviderKind>,
    pub to: Option<String>,
    /// Only records with a larger `seq` (so a poller can read incrementally).
    pub after: Option<u64>,
    /// At most this many records (the first ones in arrival order): a page.
    pub limit: Option<usize>,
}

impl Filter {
    fn matches(&self, m: &ReceivedMessage) -> bool {
        self.channel.is_none_or(|c| c == m.channel)
            && self.provider.is_none_or(|p| p == m.provider)
            && self.to.as_deref().is_none_or(|t| t == m.to)
    }
}

#[derive(Default)]
struct Inner {
    next_seq: u64,
    /// In seq order; the front is dropped by `forget_through`. Shared, so that a query copies pointers under
    /// the lock rather than every message's strings (the load generator pages through all of them).
    messages: VecDeque<Arc<ReceivedMessage>>,
}

/// The append-only (until cleared) list of accepted messages.
#[derive(Default)]
pub(crate) struct Record {
    inner: Mutex<Inner>,
}

impl Record {
    /// Appends one message and returns its `seq`. The seq is taken under the same lock as the push, so record
    /// order and seq order agree.
    pub fn push(&self, provider: ProviderKind, incoming: Incoming) -> u64 {
        let received_at = jiff::Timestamp::now();
        let mut inner = self.inner.lock();
        inner.next_seq += 1;
        let seq = inner.next_seq;
        inner.messages.push_back(Arc::new(ReceivedMessage {
            seq,
            channel: provider.channel(),
            provider,
            to: incoming.to,
            title: incoming.title,
            body: incoming.body,
            html: incoming.html,
            reference: incoming.reference,
            provider_message_id: incoming.provider_message_id,
            received_at,
        }));
        seq
    }

    /// A copy of every record, in arrival order.
    pub fn snapshot(&self) -> Vec<ReceivedMessage> {
        self.inner.lock().messages.iter().map(|m| ReceivedMessage::clone(m)).collect()
    }

    /// A copy of the matching records, in arrival order.
    pub fn query(&self, filter: &Filter) -> Vec<Arc<ReceivedMessage>> {
        let inner = self.inner.lock();
        // Seqs are increasing, so `after` is a binary search rather than a scan.
        let start = filter.after.map_or(0, |after| inner.messages.partition_point(|m| m.seq <= after));
        let limit = filter.limit.unwrap_or(usize::MAX);
        inner.messages.range(start..).filter(|m| filter.matches(m)).take(limit).cloned().collect()
    }

    /// Forgets every record with a `seq` up to `seq` (a reader is done with them); returns how many.
    pub fn forget_through(&self, seq: u64) -> usize {
        let mut inner = self.inner.lock();
        let end = inner.messages.partition_point(|m| m.seq <= seq);
        inner.messages.drain(..end);
        if inner.messages.capacity() > 4 * inner.messages.len().max(1024) {
            // A drained burst should not pin its peak memory.
            inner.messages.shrink_to_fit();
        }
        end
    }

    /// Forgets every record; returns how many there were. Seqs keep counting up.
    pub fn clear(&self) -> usize {
        let mut inner = self.inner.lock();
        let cleared = inner.messages.len();
        inner.messages = VecDeque::new();
        cleared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming(to: &str) -> Incoming {
        Incoming {
            to: to.to_string(),
            body: "hi".to_string(),
            provider_message_id: "m".to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn seqs_increase_and_survive_clear() {
        let record = Record::default();
        assert_eq!(record.push(ProviderKind::Fcm, incoming("a")), 1);
        assert_eq!(record.push(ProviderKind::Smtp, incoming("b")), 2);
        assert_eq!(record.clear(), 2);
        assert!(record.snapshot().is_empty());
        assert_eq!(record.push(ProviderKind::Twilio, incoming("c")), 3);
    }

    #[test]
    fn filters_combine() {
        let record = Record::default();
        record.push(ProviderKind::Fcm, incoming("a"));
        record.push(ProviderKind::Apns, incoming("a"));
        record.push(ProviderKind::Twilio, incoming("a"));
        record.push(ProviderKind::Fcm, incoming("b"));

        let push = record.query(&Filter { channel: Some(Channel::Push), ..Default::default() });
        assert_eq!(push.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2, 4]);
        let fcm_a = record.query(&Filter {
            provider: Some(ProviderKind::Fcm),
            to: Some("a".to_string()),
            ..Default::default()
        });
        assert_eq!(fcm_a.iter().map(|m| m.seq).collect::<Vec<_>>(), [1]);
        let later = record.query(&Filter { after: Some(2), ..Default::default() });
        assert_eq!(later.iter().map(|m| m.seq).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(later[0].channel, Channel::Sms);
        let page = record.query(&Filter { after: Some(1), limit: Some(2), ..Default::default() });
        assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [2, 3]);
    }

    #[test]
    fn a_reader_forgets_what_it_read() {
        let record = Record::default();
        for to in ["a", "b", "c", "d"] {
            record.push(ProviderKind::Fcm, incoming(to));
        }
        assert_eq!(record.forget_through(2), 2);
        assert_eq!(record.forget_through(2), 0, "forgetting again changes nothing");
        assert_eq!(record.snapshot().iter().map(|m| m.seq).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(record.query(&Filter { after: Some(1), ..Default::default() }).len(), 2);
        assert_eq!(record.forget_through(10), 2);
        assert_eq!(record.push(ProviderKind::Fcm, incoming("e")), 5, "seqs keep counting");
    }
}
