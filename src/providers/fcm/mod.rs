//! FCM HTTP v1 (`POST {base}/v1/projects/{project}/messages:send`) for Android and web tokens, authorized by a
//! Google service account's OAuth2 access token.

mod account;
mod client;
mod error;
mod oauth;
mod settings;

pub use account::ServiceAccount;
pub use client::FcmClient;
pub use error::FcmError;
pub use oauth::{Clock, SystemClock};
pub use settings::FcmSettings;
