//! Herald: a notification dispatch engine. One HTTP API for push (FCM, APNs), e-mail (SMTP), SMS (Twilio),
//! KakaoTalk alimtalk (Bizppurio) and in-app messages.
//!
//! Crate map (see `docs/ARCHITECTURE.md`):
//! - [`domain`]: users, templates, notifications, deliveries, statuses. Pure data, no I/O.
//! - [`config`]: layered, typed settings.
//! - [`store`]: the durable [`store::Store`] trait and its backends (embedded: a write-ahead log and record segments; Redis).
//! - [`providers`]: one client per provider protocol behind [`providers::Provider`].
//! - [`sandbox`]: the provider simulator used by default, by tests and by the load generator.

pub mod api;
pub mod config;
pub mod domain;
pub mod engine;
pub mod hash;
pub mod key;
pub mod providers;
pub mod sandbox;
pub mod server;
pub mod store;
pub mod telemetry;
