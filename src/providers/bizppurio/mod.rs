//! KakaoTalk alimtalk through the Bizppurio v3 message API, and its delivery reports.

mod client;
mod error;
mod report;
mod settings;
mod token;

pub use client::{BizppurioClient, domestic_phone};
pub use error::BizppurioError;
pub use report::{parse_report, parse_report_value};
pub use settings::BizppurioSettings;
