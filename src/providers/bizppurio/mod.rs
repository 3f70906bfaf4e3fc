//! KakaoTalk alimtalk through the Bizppurio v3 message API, and its delivery reports.

mod settings;
pub use settings::BizppurioSettings;
