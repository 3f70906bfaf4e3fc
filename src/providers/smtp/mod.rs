//! E-mail over SMTP: `settings.rs` (the `providers.smtp` section), `transport.rs` (the pooled connection: TLS,
//! trusted roots, AUTH), `message.rs` (the MIME message), `error.rs` (reply codes to error classes) and
//! `client.rs` (the [`crate::providers::Provider`]).

mod client;
mod error;
mod message;
mod settings;
mod transport;

pub use client::SmtpClient;
pub use error::SmtpError;
pub use message::HeraldDelivery;
pub use settings::{SmtpSettings, SmtpTls};
pub use transport::extra_root_pems;
