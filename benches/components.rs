//! Component benches: routing, rate limiting, template rendering, idempotency and store group commit.

use criterion::{Criterion, criterion_group, criterion_main};

fn placeholder(_: &mut Criterion) {}

criterion_group!(benches, placeholder);
criterion_main!(benches);
