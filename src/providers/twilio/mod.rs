//! SMS through the Twilio-compatible Messages API, and its status callbacks.

mod settings;
pub use settings::TwilioSettings;
