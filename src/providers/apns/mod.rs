//! APNs provider API (`POST {base}/3/device/{token}`) for iOS tokens.

mod settings;
pub use settings::ApnsSettings;
