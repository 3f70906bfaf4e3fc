//! E-mail over SMTP.

mod client;
mod error;
mod settings;

pub use client::{HeraldDelivery, SmtpClient};
pub use error::SmtpError;
pub use settings::SmtpSettings;
