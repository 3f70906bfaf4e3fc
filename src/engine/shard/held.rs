//! Due scheduled sends that wait in the shard while a provider they need is backed up.
//!
//! A midnight spike can bring more sends due than the providers take. Fired at once, every one of them would
//! become a delivery record and a queued job in a dispatcher: memory, and a store and shard mailbox busy with
//! work that cannot go out yet, in front of live traffic. So a due send fires only while every dispatcher it
//! needs holds fewer than `scheduling.fire_ahead` (512) jobs that the send would wait behind, and fewer than
//! half its `engine.queue_capacity` (the share `low` admission gets). The short window matters: fired seconds
//! ahead of their turn (up to 100,000 jobs queued, with half the capacity as the only bound), a spike's sends
//! reached the provider with their shard, index and dispatcher state gone cold, and an overloaded spike
//! delivered ~20% fewer per second for the same CPU (`docs/performance.md`, session 9); 512 instead of 4,096
//! gave another ~15% (session 10). Otherwise it stays `scheduled` and waits here, in due order, in the queue of
//! the first provider that had no room, and the shard looks again every [`RETRY`]. Jobs fired and not yet
//! committed are counted as queued from the moment they are planned ([`DispatcherHandle::reserve`]), so one
//! pass cannot overshoot. Nothing here is durable: after a restart the loader reads the sends again, still
//! `scheduled`, from the store.
//!
//! [`DispatcherHandle::reserve`]: super::super::dispatcher::DispatcherHandle::reserve

use std::collections::VecDeque;
use std::time::Duration;

use ractor::ActorRef;

use crate::domain::{Notification, NotificationStatus, ProviderKind};
use crate::key::Key;

use super::{ShardMsg, ShardState};

/// How long a shard waits before looking again at sends held for a provider's room.
const RETRY: Duration = Duration::from_millis(10);

/// Held due sends, one FIFO per provider.
#[derive(Default)]
pub(super) struct Held {
    queues: [VecDeque<Key>; ProviderKind::ALL.len()],
    /// A [`ShardMsg::HeldDue`] is on its way.
    wake_pending: bool,
}

impl Held {
    pub(super) fn is_empty(&self) -> bool {
        self.queues.iter().all(VecDeque::is_empty)
    }
}

impl ShardState {
    /// The provider a due `n` must wait for: the first it needs that already has sends held here (so it goes
    /// after them) or has no room.
    pub(super) fn hold_for(&self, n: &Notification) -> Option<ProviderKind> {
        ProviderKind::for_channels(&n.channels)
            .find(|k| !self.held.queues[k.index()].is_empty())
            .or_else(|| self.without_room(n))
    }

    /// The first provider `n` needs whose dispatcher holds `scheduling.fire_ahead` jobs or half its capacity,
    /// whichever is less, ahead of `n`'s priority.
    fn without_room(&self, n: &Notification) -> Option<ProviderKind> {
        let fire_ahead = self.ctx.scheduling.fire_ahead;
        self.ctx.backed_up(&n.channels, n.priority, |capacity| (capacity / 2).clamp(1, fire_ahead))
    }

    pub(super) fn hold(&mut self, kind: ProviderKind, id: Key) {
        self.held.queues[kind.index()].push_back(id);
        self.ctx.telemetry.held_changed(1);
    }

    /// The next held send that may fire now, in due order per provider; held sends no longer scheduled
    /// (cancelled meanwhile) are dropped on the way.
    pub(super) fn next_unheld(&mut self) -> Option<Key> {
        for k in 0..self.held.queues.len() {
            while let Some(id) = self.held.queues[k].front() {
                let waiting =
                    self.open.get(&*id.text()).filter(|o| o.notification.status == NotificationStatus::Scheduled);
                match waiting {
                    Some(open) if self.without_room(&open.notification).is_some() => break,
                    _ => {
                        let id = self.held.queues[k].pop_front();
                        self.ctx.telemetry.held_changed(-1);
                        if waiting.is_some() {
                            return id;
                        }
                    }
                }
            }
        }
        None
    }

    /// Looks at the held sends again in a moment, unless nothing is held or a look is already on its way.
    pub(super) fn arm_held(&mut self, me: &ActorRef<ShardMsg>) {
        if self.held.is_empty() || self.held.wake_pending {
            return;
        }
        self.held.wake_pending = true;
        let me = me.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RETRY).await;
            let _ = me.cast(ShardMsg::HeldDue);
        });
    }

    pub(super) fn on_held_due(&mut self, me: &ActorRef<ShardMsg>) {
        self.held.wake_pending = false;
        self.run_due_timers(me);
    }
}
