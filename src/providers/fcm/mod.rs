//! FCM HTTP v1 (`POST {base}/v1/projects/{project}/messages:send`) for Android and web tokens.

mod settings;
pub use settings::FcmSettings;
