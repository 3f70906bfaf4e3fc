//! The engine's in-memory hash maps: foldhash (several times SipHash's speed on the short string keys the engine
//! uses: notification, delivery and user ids), seeded randomly per process so keys chosen by clients cannot be
//! aimed at one bucket.

/// A `std` hash map with foldhash's per-process seeded hasher; build it with `default()` or `collect()`.
pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
