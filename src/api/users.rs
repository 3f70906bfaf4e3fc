//! Users, devices, preferences and templates.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use jiff::Timestamp;
use serde::{Deserialize, Deserializer};

use super::error::ApiError;
use super::json::JsonBody;
use super::{AppState, valid_id};
use crate::domain::{
    Channel, Device, MAX_TAGS, Platform, Preferences, Template, TemplateBody, normalize_email, normalize_phone,
    valid_tag,
};
use crate::engine::UserUpdate;

/// `Some(None)` for an explicit `null`, `None` for an absent field.
fn nullable<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserBody {
    #[serde(default, deserialize_with = "nullable")]
    email: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    phone: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    kakao_phone: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    locale: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    timezone: Option<Option<String>>,
    /// Replaces the user's tags; absent leaves them, `[]` (or `null`) removes them all.
    #[serde(default, deserialize_with = "nullable_list")]
    tags: Option<Vec<String>>,
}

/// `Some([])` for an explicit `null`, so `"tags": null` clears like `[]`.
fn nullable_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    Option::<Vec<String>>::deserialize(d).map(|v| Some(v.unwrap_or_default()))
}

/// At most [`MAX_TAGS`] valid tags; a repeated one is kept once.
fn tags(tags: Vec<String>) -> Result<Vec<String>, ApiError> {
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for (i, tag) in tags.into_iter().enumerate() {
        if !valid_tag(&tag) {
            return Err(ApiError::invalid(
                format!("tags[{i}]"),
                "tags are 1-64 characters of letters, digits and _.:-",
            ));
        }
        if !out.contains(&tag) {
            out.push(tag);
        }
    }
    if out.len() > MAX_TAGS {
        return Err(ApiError::invalid("tags", format!("at most {MAX_TAGS} tags")));
    }
    Ok(out)
}

/// Validates and normalizes a profile update.
fn user_update(body: UserBody) -> Result<UserUpdate, ApiError> {
    let check = |field: &'static str, value: Option<Option<String>>, f: &dyn Fn(&str) -> Result<String, String>| {
        value.map(|v| v.map(|s| f(&s)).transpose().map_err(|m| ApiError::invalid(field, m))).transpose()
    };
    let phone = |s: &str| normalize_phone(s).map_err(|e| e.to_string());
    Ok(UserUpdate {
        email: check("email", body.email, &|s| normalize_email(s).map_err(|e| e.to_string()))?,
        phone: check("phone", body.phone, &phone)?,
        kakao_phone: check("kakao_phone", body.kakao_phone, &phone)?,
        locale: check("locale", body.locale, &|s| {
            let ok =
                !s.is_empty() && s.len() <= 35 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if ok { Ok(s.to_string()) } else { Err("locale must be a language tag such as ko or en-US".into()) }
        })?,
        timezone: check("timezone", body.timezone, &|s| {
            jiff::tz::TimeZone::get(s).map(|_| s.to_string()).map_err(|_| format!("unknown IANA time zone `{s}`"))
        })?,
        tags: body.tags.map(tags).transpose()?,
    })
}

pub async fn put_user(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: JsonBody<UserBody>,
) -> Result<impl IntoResponse, ApiError> {
    valid_id("user_id", &id)?;
    let update = user_update(body.value)?;
    let user = state.engine.put_user(id, update).await.map_err(|e| state.error(e))?;
    Ok(Json(user))
}

pub async fn get_user(State(state): State<AppState>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let user = state.engine.user(&id).await.map_err(|e| state.error(e))?.ok_or(ApiError::not_found("user"))?;
    Ok(Json(user))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceBody {
    token: String,
    platform: Platform,
}

pub async fn add_device(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: JsonBody<DeviceBody>,
) -> Result<impl IntoResponse, ApiError> {
    let DeviceBody { token, platform } = body.value;
    let token = token.trim().to_string();
    if token.is_empty() || token.len() > 4096 || token.contains(char::is_whitespace) {
        return Err(ApiError::invalid("token", "token must be 1 to 4096 characters without spaces"));
    }
    let device = Device { token, platform, created_at: Timestamp::now() };
    let user = state.engine.put_device(&id, device).await.map_err(|e| state.error(e))?;
    Ok((StatusCode::CREATED, Json(user)))
}

pub async fn remove_device(
    State(state): State<AppState>,
    Path((id, token)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    match state.engine.remove_device(&id, token).await.map_err(|e| state.error(e))? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(ApiError::not_found("device")),
    }
}

pub async fn put_preferences(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: JsonBody<Preferences>,
) -> Result<impl IntoResponse, ApiError> {
    if let Some(q) = &body.value.quiet_hours {
        for (field, value) in [("quiet_hours.start", &q.start), ("quiet_hours.end", &q.end)] {
            if jiff::civil::Time::strptime("%H:%M", value).is_err() {
                return Err(ApiError::invalid(field, "expected HH:MM"));
            }
        }
    }
    let user = state.engine.put_preferences(&id, body.value).await.map_err(|e| state.error(e))?;
    Ok(Json(user.preferences))
}

pub async fn get_preferences(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let user = state.engine.user(&id).await.map_err(|e| state.error(e))?.ok_or(ApiError::not_found("user"))?;
    Ok(Json(user.preferences))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateBodyIn {
    channels: BTreeMap<Channel, BTreeMap<String, TemplateBody>>,
    #[serde(default)]
    default_locale: Option<String>,
}

pub async fn put_template(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: JsonBody<TemplateBodyIn>,
) -> Result<impl IntoResponse, ApiError> {
    valid_id("template_id", &id)?;
    let TemplateBodyIn { channels, default_locale } = body.value;
    if channels.is_empty() {
        return Err(ApiError::invalid("channels", "a template needs at least one channel"));
    }
    for (channel, locales) in &channels {
        if locales.is_empty() {
            return Err(ApiError::invalid(format!("channels.{}", channel.as_str()), "needs at least one locale"));
        }
        for (locale, b) in locales {
            let field = format!("channels.{}.{locale}", channel.as_str());
            for text in [Some(&b.body), b.title.as_ref(), b.html.as_ref()].into_iter().flatten() {
                if text.matches("{{").count() != text.matches("}}").count() {
                    return Err(ApiError::invalid(field, "unbalanced {{ }} placeholder"));
                }
            }
            if *channel == Channel::Alimtalk && b.templatecode.as_deref().is_none_or(str::is_empty) {
                return Err(ApiError::invalid(
                    format!("{field}.templatecode"),
                    "alimtalk bodies need the approved templatecode",
                ));
            }
        }
    }
    let template = Template { id, channels, default_locale, updated_at: Timestamp::now() };
    let saved = state.engine.put_template(template).await.map_err(|e| state.error(e))?;
    Ok(Json(saved.as_ref().clone()))
}

pub async fn get_template(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let template = state.engine.template(&id).ok_or(ApiError::not_found("template"))?;
    Ok(Json(template.as_ref().clone()))
}
