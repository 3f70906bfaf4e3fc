//! APNs provider API (`POST {base}/3/device/{token}`) for iOS tokens.

mod client;
mod error;
mod settings;
mod token;

pub use client::ApnsClient;
pub use error::ApnsError;
pub use settings::ApnsSettings;
pub use token::{ProviderTokenSource, StaticProviderToken};
