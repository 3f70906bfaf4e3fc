//! FCM HTTP v1 (`POST {base}/v1/projects/{project}/messages:send`) for Android and web tokens.

mod client;
mod error;
mod settings;

pub use client::FcmClient;
pub use error::FcmError;
pub use settings::FcmSettings;
