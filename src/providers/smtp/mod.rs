//! E-mail over SMTP.

mod settings;
pub use settings::SmtpSettings;
