//! APNs provider API (`POST {base}/3/device/{token}` over HTTP/2 + TLS) for iOS tokens, authorized by an ES256
//! provider token.

mod client;
mod error;
mod settings;
mod token;

#[cfg(test)]
mod sandbox_tests;

pub use client::ApnsClient;
pub use error::ApnsError;
pub use settings::ApnsSettings;
pub use token::{Clock, Es256ProviderToken, ProviderTokenSource, TOKEN_TTL_RANGE_S, system_clock};
