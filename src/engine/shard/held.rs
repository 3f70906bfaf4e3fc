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

use crate::domain::{Notification, Priority, ProviderKind};
use crate::key::Key;

use super::{ShardMsg, ShardState};

/// How long a shard waits before looking again at sends held for a provider's room.
const RETRY: Duration = Duration::from_millis(10);

/// Held due sends, one FIFO per provider.
#[derive(Default)]
pub(super) struct Held {
    queues: [VecDeque<HeldSend>; ProviderKind::ALL.len()],
    /// A [`ShardMsg::HeldDue`] is on its way.
    wake_pending: bool,
}

/// A held send with what the room check needs: a spike holds hundreds of thousands, and looking each one up in
/// the shard's notifications again to learn its providers and lane was a cache miss per send.
struct HeldSend {
    id: Key,
    route: Route,
}

/// The lane and providers of a due send.
#[derive(Clone, Copy)]
pub(super) struct Route {
    priority: Priority,
    /// One bit per [`ProviderKind::index`].
    providers: u8,
}

impl Route {
    fn of(n: &Notification) -> Route {
        let providers = ProviderKind::for_channels(&n.channels).fold(0, |bits, k| bits | 1 << k.index());
        Route { priority: n.priority, providers }
    }

    fn providers(self) -> impl Iterator<Item = ProviderKind> {
        ProviderKind::ALL.into_iter().filter(move |k| self.providers & (1 << k.index()) != 0)
    }
}

impl Held {
    pub(super) fn is_empty(&self) -> bool {
        self.queues.iter().all(VecDeque::is_empty)
    }
}

impl ShardState {
    /// The provider a due `n` must wait for, with its route: the first it needs that already has sends held
    /// here (so it goes after them) or has no room.
    pub(super) fn hold_for(&self, n: &Notification) -> Option<(ProviderKind, Route)> {
        let route = Route::of(n);
        let kind =
            route.providers().find(|k| !self.held.queues[k.index()].is_empty()).or_else(|| self.without_room(route))?;
        Some((kind, route))
    }

    /// The first provider of `route` whose dispatcher holds `scheduling.fire_ahead` jobs or half its capacity,
    /// whichever is less, ahead of its priority.
    fn without_room(&self, route: Route) -> Option<ProviderKind> {
        let fire_ahead = self.ctx.scheduling.fire_ahead;
        self.ctx.backed_up(route.providers(), route.priority, |capacity| (capacity / 2).clamp(1, fire_ahead))
    }

    pub(super) fn hold(&mut self, kind: ProviderKind, id: Key, route: Route) {
        self.held.queues[kind.index()].push_back(HeldSend { id, route });
        self.ctx.telemetry.held_changed(1);
    }

    /// The next held send that may fire now, in due order per provider. One cancelled meanwhile is returned
    /// too (once there is room for it): `fire` looks it up and leaves it be unless it is still scheduled. (A
    /// held send is past due, hence past PATCH's cutoff: cancelling is the only change it can see.)
    pub(super) fn next_unheld(&mut self) -> Option<Key> {
        for queue in 0..self.held.queues.len() {
            let Some(front) = self.held.queues[queue].front() else { continue };
            if self.without_room(front.route).is_none() {
                let held = self.held.queues[queue].pop_front()?;
                self.ctx.telemetry.held_changed(-1);
                return Some(held.id);
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
