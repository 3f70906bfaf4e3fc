//! Templates: per-channel, per-locale bodies with `{{param}}` placeholders, and their rendering.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{Channel, Rendered};

/// A named message with one body per channel and locale.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Template {
    pub id: String,
    /// Channel → locale (`ko`, `en-US`, …) → body.
    pub channels: BTreeMap<Channel, BTreeMap<String, TemplateBody>>,
    /// Locale used when the recipient's has no body; defaults to the first locale of the channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_locale: Option<String>,
    pub updated_at: Timestamp,
}

/// One channel's body in one locale.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateBody {
    /// Push title or e-mail subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub body: String,
    /// E-mail HTML part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// Alimtalk: the provider-approved template code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templatecode: Option<String>,
}

/// Why a template could not be rendered; the API answers 422 with `field()`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RenderError {
    #[error("template has no body for channel {0}")]
    NoBodyForChannel(&'static str),
    #[error("template parameter `{0}` is missing")]
    MissingParam(String),
    #[error("template has an unclosed `{{{{` placeholder")]
    Unclosed,
}

impl RenderError {
    /// The request field the error belongs to.
    pub fn field(&self) -> String {
        match self {
            RenderError::NoBodyForChannel(_) => "channels".to_string(),
            RenderError::MissingParam(name) => format!("template.params.{name}"),
            RenderError::Unclosed => "template.id".to_string(),
        }
    }
}

impl Template {
    /// The body for `channel` in the best matching locale: exact, then language only (`ko-KR` → `ko`), then the
    /// template's default locale, then the first one.
    pub fn body_for(&self, channel: Channel, locale: Option<&str>) -> Option<&TemplateBody> {
        let bodies = self.channels.get(&channel)?;
        let exact = locale.and_then(|l| bodies.get(l));
        let language = locale.and_then(|l| l.split(['-', '_']).next()).and_then(|l| bodies.get(l));
        let default = self.default_locale.as_deref().and_then(|l| bodies.get(l));
        exact.or(language).or(default).or_else(|| bodies.values().next())
    }

    /// Renders `channel`'s body for `locale` with `params`.
    pub fn render(
        &self,
        channel: Channel,
        locale: Option<&str>,
        params: &BTreeMap<String, String>,
    ) -> Result<Rendered, RenderError> {
        let body = self.body_for(channel, locale).ok_or(RenderError::NoBodyForChannel(channel.as_str()))?;
        Ok(Rendered {
            title: body.title.as_deref().map(|t| render_text(t, params)).transpose()?,
            body: render_text(&body.body, params)?,
            html: body.html.as_deref().map(|t| render_text(t, params)).transpose()?,
            template_code: body.templatecode.clone(),
        })
    }
}

/// Substitutes `{{ name }}` placeholders. Every placeholder must have a parameter.
pub fn render_text(text: &str, params: &BTreeMap<String, String>) -> Result<String, RenderError> {
    let mut out = String::with_capacity(text.len() + 32);
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or(RenderError::Unclosed)?;
        let name = after[..end].trim();
        let value = params.get(name).ok_or_else(|| RenderError::MissingParam(name.to_string()))?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn template() -> Template {
        let body = |t: &str| TemplateBody {
            title: Some(format!("{t} title")),
            body: format!("{t} {{{{item}}}}"),
            html: None,
            templatecode: None,
        };
        let mut push = BTreeMap::new();
        push.insert("en".to_string(), body("en"));
        push.insert("ko".to_string(), body("ko"));
        Template {
            id: "t".into(),
            channels: BTreeMap::from([(Channel::Push, push)]),
            default_locale: Some("en".into()),
            updated_at: Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn placeholders_are_substituted() {
        let out = render_text("Hi {{name}}, {{ item }} shipped.", &params(&[("name", "Kim"), ("item", "book")]));
        assert_eq!(out.unwrap(), "Hi Kim, book shipped.");
    }

    #[test]
    fn a_missing_parameter_names_its_field() {
        let err = render_text("{{a}} {{b}}", &params(&[("a", "1")])).unwrap_err();
        assert_eq!(err, RenderError::MissingParam("b".into()));
        assert_eq!(err.field(), "template.params.b");
        assert_eq!(render_text("{{a", &params(&[])), Err(RenderError::Unclosed));
    }

    #[test]
    fn locale_falls_back_from_region_to_language_to_default() {
        let t = template();
        let p = params(&[("item", "x")]);
        assert_eq!(t.render(Channel::Push, Some("ko-KR"), &p).unwrap().body, "ko x");
        assert_eq!(t.render(Channel::Push, Some("fr"), &p).unwrap().body, "en x");
        assert_eq!(t.render(Channel::Push, None, &p).unwrap().title.as_deref(), Some("en title"));
        assert_eq!(t.render(Channel::Sms, None, &p), Err(RenderError::NoBodyForChannel("sms")));
    }
}
