//! Component benches (issue #6): the parts of the hot path one at a time, each in its own criterion group.
//!
//! - `routing` — which shard owns a user, and planning a notification's deliveries for a user ([`routing`]).
//! - `rate_limit` — the dispatcher's per-provider token bucket ([`rate_limit`]).
//! - `templates` — rendering `{{param}}` templates, and the 422 of a missing parameter ([`templates`]).
//! - `idempotency` — the idempotency index holding 1,000,000 keys ([`idempotency`]).
//! - `group_commit` — store submits with commit callbacks, embedded (redb, fsync) and Redis ([`group_commit`]).
//! - `push_lifecycle` — a scheduled push's fire and outcome writes until applied, embedded ([`push_lifecycle`]).
//! - `scheduled_read` — the loader's pages of due sends from the embedded store ([`scheduled_read`]).
//!
//! Run: `cargo bench --bench components -- --warm-up-time 1 --measurement-time 3`; figures in
//! `docs/performance.md`.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main};
use herald::config::Settings;

#[path = "components/group_commit.rs"]
mod group_commit;
#[path = "components/idempotency.rs"]
mod idempotency;
#[path = "components/push_lifecycle.rs"]
mod push_lifecycle;
#[path = "components/rate_limit.rs"]
mod rate_limit;
#[path = "components/routing.rs"]
mod routing;
#[path = "components/scheduled_read.rs"]
mod scheduled_read;
#[path = "components/templates.rs"]
mod templates;

/// The shipped defaults (`config/default.toml`), so the benches use the limits and batch sizes Herald runs with.
fn default_settings() -> Settings {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config");
    Settings::load(&dir, "default", figment::providers::Env::prefixed("HERALD_BENCH_UNSET__"))
        .expect("config/default.toml")
}

criterion_group!(
    benches,
    routing::routing,
    rate_limit::rate_limit,
    templates::templates,
    idempotency::idempotency,
    group_commit::group_commit,
    push_lifecycle::push_lifecycle,
    scheduled_read::scheduled_read
);
criterion_main!(benches);
