//! The scheduled-send loader: moves scheduled notifications from the store's index into their shards' timers
//! ahead of time (`scheduling.horizon_s`), one slice of the index per `scheduling.load_interval_ms`.
//!
//! Each pass has a window end `until` (now + horizon). The loader first tells every shard the new end
//! (`SchedWindow`), then reads the index after its cursor up to `until` in pages (`Arm`), then tells every shard
//! the pass is over (`SchedLoaded`). A shard keeps a scheduled notification in memory when it is due by the
//! window end it knows, and otherwise leaves it to a later pass. That split is race-free:
//!
//! - A notification committed before a read starts is in that read (or an earlier one).
//! - One committed after the read started was accepted by a shard that had already been told `until`
//!   (the message precedes the read), so that shard keeps it itself once the commit lands.
//! - A record in a read can be stale: the shard fired or cancelled it after the read started. Shards remember
//!   notifications that left the scheduled state until every read that might still return them is over (the
//!   read counter in [`EngineCtx`]), and drop such records.
//!
//! A failed commit that created or fired a scheduled notification rewinds the cursor to its due time, so a
//! notification the store still holds as scheduled is read again (one the failed batch did change after all is
//! re-driven by the reconcile, `reconcile.rs`).
//!
//! At start-up the first pass reads from the beginning of the index: everything that came due while Herald
//! was down fires at once, oldest first within each shard.
//!
//! Memory: a pass reads no more than the shards have room for under `scheduling.max_loaded` (scheduled sends in
//! their timers or held, `Telemetry::scheduled_in_memory`); the rest of its window stays after the cursor for
//! the next passes. The shards' window end may then be past what was read, which the argument above allows:
//! a shard keeping its own accepts due by it and a later read returning them too only meet in `Arm`, which
//! skips what the shard already has.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use jiff::SignedDuration;
use ractor::ActorRef;
use tokio_util::sync::CancellationToken;

use crate::store::ScheduleCursor;

use super::shard::ShardMsg;
use super::{EngineCtx, shard_index};

/// Runs until `stop` is cancelled or the shards are gone.
pub(super) async fn run_loader(ctx: Arc<EngineCtx>, shards: Vec<ActorRef<ShardMsg>>, stop: CancellationToken) {
    let settings = ctx.scheduling.clone();
    let interval = Duration::from_millis(settings.load_interval_ms);
    let horizon = SignedDuration::from_secs(i64::try_from(settings.horizon_s).unwrap_or(i64::MAX));
    let mut cursor: Option<ScheduleCursor> = None;
    loop {
        let rewind = ctx.sched_rewind.swap(i64::MAX, Ordering::AcqRel);
        if cursor.as_ref().is_some_and(|c| c.due_ms >= rewind) {
            // Before every entry due at `rewind`: (due, "") sorts first among them.
            cursor = Some(ScheduleCursor { due_ms: rewind, id: String::new() });
        }
        let now = ctx.clock.now();
        let until = now.checked_add(horizon).unwrap_or(now);
        let until_ms = until.as_millisecond();
        let window_end = jiff::Timestamp::from_millisecond(until_ms).unwrap_or(until);
        if shards.iter().any(|s| s.cast(ShardMsg::SchedWindow(window_end)).is_err()) {
            return;
        }
        let room = settings.max_loaded.saturating_sub(ctx.telemetry.scheduled_in_memory());
        match load(&ctx, &shards, &mut cursor, until_ms, settings.load_batch, room).await {
            Ok(Some(read)) => {
                for shard in &shards {
                    let _ = shard.cast(ShardMsg::SchedLoaded(read));
                }
            }
            Ok(None) => return,
            Err(e) => {
                ctx.telemetry.store_error(&e);
                tracing::warn!(error = %e, "reading the scheduled index failed; retrying");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Reads the index after `cursor` up to `until_ms`, at most `room` notifications, and hands each page to the
/// shards. Returns the number of the last read, or `None` if the shards are gone.
async fn load(
    ctx: &EngineCtx,
    shards: &[ActorRef<ShardMsg>],
    cursor: &mut Option<ScheduleCursor>,
    until_ms: i64,
    batch: usize,
    mut room: usize,
) -> Result<Option<u64>, crate::store::StoreError> {
    loop {
        if room == 0 {
            // The shards hold `scheduling.max_loaded`: the rest of the window waits after the cursor until some
            // fire. No read is in flight, so the last one's number is a correct end of this pass.
            return Ok(Some(ctx.sched_reads.load(Ordering::Acquire)));
        }
        let read = ctx.sched_reads.fetch_add(1, Ordering::AcqRel) + 1;
        let limit = batch.min(room);
        let page = ctx.store.scheduled(cursor.as_ref(), until_ms, limit).await?;
        let full = page.len() >= limit;
        room -= page.len().min(room);
        if let Some(last) = page.last() {
            *cursor = Some(ScheduleCursor::of(last));
        }
        let mut by_shard: Vec<Vec<crate::domain::Notification>> = (0..shards.len()).map(|_| Vec::new()).collect();
        for n in page {
            by_shard[shard_index(&n.owner, shards.len())].push(n);
        }
        for (shard, notifications) in shards.iter().zip(by_shard) {
            if !notifications.is_empty() && shard.cast(ShardMsg::Arm(notifications, read)).is_err() {
                return Ok(None);
            }
        }
        if !full {
            return Ok(Some(read));
        }
    }
}
