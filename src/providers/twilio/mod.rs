//! SMS through the Twilio-compatible Messages API, and its status callbacks.

mod client;
mod error;
mod settings;
mod webhook;

pub use client::TwilioClient;
pub use error::TwilioError;
pub use settings::TwilioSettings;
pub use webhook::{parse_status_callback, signature, verify_signature};
