//! `POST/GET/PATCH/DELETE /v1/notifications`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::ApiError;
use super::json::JsonBody;
use super::{AppState, valid_id};
use crate::domain::schedule::{SendAt, parse_send_at};
use crate::domain::{
    Address, Category, Channel, Delivery, Event, Notification, Platform, Priority, Rendered, Strategy, normalize_email,
    normalize_phone,
};
use crate::engine::{AdHocRecipient, Message, NewNotification, NotificationPatch, StableHasher, stable_hash};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendBody {
    user_id: Option<String>,
    to: Option<ToBody>,
    #[serde(default)]
    category: Category,
    channels: Vec<Channel>,
    #[serde(default)]
    strategy: Strategy,
    #[serde(default)]
    priority: Priority,
    template: Option<TemplateRef>,
    content: Option<ContentBody>,
    send_at: Option<String>,
    timezone: Option<String>,
    expires_at: Option<String>,
    idempotency_key: Option<String>,
    metadata: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToBody {
    email: Option<String>,
    phone: Option<String>,
    #[serde(default)]
    device_tokens: Vec<DeviceToken>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DeviceToken {
    /// A bare token is taken as an FCM (Android/web) token.
    Token(String),
    Device {
        token: String,
        platform: Platform,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TemplateRef {
    id: String,
    #[serde(default)]
    params: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ContentBody {
    title: Option<String>,
    body: String,
    html: Option<String>,
}

#[derive(Serialize)]
struct AcceptedView {
    id: String,
    status: crate::domain::NotificationStatus,
    duplicate: bool,
}

const MAX_CONTENT_CHARS: usize = 20_000;

pub async fn send(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: JsonBody<SendBody>,
) -> Result<impl IntoResponse, ApiError> {
    let header_key = headers.get("idempotency-key").map(|v| v.to_str().map(str::to_string));
    let header_key =
        header_key.transpose().map_err(|_| ApiError::invalid("Idempotency-Key", "must be visible ASCII"))?;
    let (request, content_hash) = validate(&state, body.value, header_key)?;
    let body_hash = stable_hash(&[&body.raw]);
    let reply = state.engine.send(request, body_hash, content_hash).await.map_err(|e| state.error(e))?;
    let view = AcceptedView { id: reply.id, status: reply.status, duplicate: reply.duplicate };
    Ok((StatusCode::ACCEPTED, Json(view)))
}

/// Turns a request body into an engine request, or a 422 naming the field.
fn validate(state: &AppState, body: SendBody, header_key: Option<String>) -> Result<(NewNotification, u64), ApiError> {
    check_channels(&body.channels)?;
    let (owner, adhoc) = match (body.user_id, body.to) {
        (Some(user_id), None) => {
            valid_id("user_id", &user_id)?;
            (user_id, None)
        }
        (None, Some(to)) => {
            let adhoc = AdHocRecipient {
                email: to
                    .email
                    .map(|e| normalize_email(&e))
                    .transpose()
                    .map_err(|e| ApiError::invalid("to.email", e.to_string()))?,
                phone: to
                    .phone
                    .map(|p| normalize_phone(&p))
                    .transpose()
                    .map_err(|e| ApiError::invalid("to.phone", e.to_string()))?,
                devices: to
                    .device_tokens
                    .into_iter()
                    .map(|t| match t {
                        DeviceToken::Token(token) => (token, Platform::Android),
                        DeviceToken::Device { token, platform } => (token, platform),
                    })
                    .collect(),
            };
            if adhoc.email.is_none() && adhoc.phone.is_none() && adhoc.devices.is_empty() {
                return Err(ApiError::invalid("to", "needs an email, a phone or device_tokens"));
            }
            (adhoc.owner(), Some(adhoc))
        }
        _ => return Err(ApiError::invalid("user_id", "give exactly one of user_id and to")),
    };
    // Identity of the content for the 60 s duplicate window: recipient, category, channels and message.
    let mut content = StableHasher::default();
    content.part(owner.as_bytes()).part(body.category.as_str().as_bytes());
    for channel in &body.channels {
        content.part(channel.as_str().as_bytes());
    }
    let message = message(state, body.template, body.content, &mut content)?;
    let send_at = send_at(body.send_at.as_deref(), body.timezone.as_deref())?;
    content
        .part(body.send_at.as_deref().unwrap_or("").as_bytes())
        .part(body.timezone.as_deref().unwrap_or("").as_bytes());
    let expires_at = body
        .expires_at
        .map(|s| s.parse::<Timestamp>().map_err(|_| ApiError::invalid("expires_at", "expected an RFC 3339 instant")))
        .transpose()?;
    if expires_at.is_some_and(|e| e <= Timestamp::now()) {
        return Err(ApiError::invalid("expires_at", "is in the past"));
    }
    let idempotency_key = header_key.or(body.idempotency_key);
    if idempotency_key.as_ref().is_some_and(|k| k.is_empty() || k.len() > 255) {
        return Err(ApiError::invalid("idempotency_key", "must be 1 to 255 characters"));
    }
    let content_hash = content.finish();
    let request = NewNotification {
        owner,
        adhoc,
        category: body.category,
        channels: body.channels,
        strategy: body.strategy,
        priority: body.priority,
        message,
        idempotency_key,
        claims: Vec::new(),
        metadata: body.metadata,
        expires_at,
        send_at,
        campaign: None,
    };
    Ok((request, content_hash))
}

/// At least one channel, none twice.
pub(super) fn check_channels(channels: &[Channel]) -> Result<(), ApiError> {
    if channels.is_empty() {
        return Err(ApiError::invalid("channels", "at least one channel is required"));
    }
    for (i, c) in channels.iter().enumerate() {
        if channels[..i].contains(c) {
            return Err(ApiError::invalid(format!("channels[{i}]"), format!("channel {} is listed twice", c.as_str())));
        }
    }
    Ok(())
}

/// The message of a request: a known template with its parameters, or literal content (exactly one). Both
/// feed `content`, the identity of the request for the duplicate window.
pub(super) fn message(
    state: &AppState,
    template: Option<TemplateRef>,
    body: Option<ContentBody>,
    content: &mut StableHasher,
) -> Result<Message, ApiError> {
    Ok(match (template, body) {
        (Some(t), None) => {
            let template =
                state.engine.template(&t.id).ok_or_else(|| ApiError::invalid("template.id", "unknown template"))?;
            let mut params = BTreeMap::new();
            for (name, value) in t.params {
                let text = match value {
                    Value::String(s) => s,
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => {
                        return Err(ApiError::invalid(
                            format!("template.params.{name}"),
                            "must be a string, number or bool",
                        ));
                    }
                };
                content.part(name.as_bytes()).part(text.as_bytes());
                params.insert(name, text);
            }
            content.part(t.id.as_bytes());
            Message::Template { template, params }
        }
        (None, Some(c)) => {
            if c.body.trim().is_empty() {
                return Err(ApiError::invalid("content.body", "must not be empty"));
            }
            let size = c.body.len() + c.title.as_ref().map_or(0, String::len) + c.html.as_ref().map_or(0, String::len);
            if size > MAX_CONTENT_CHARS {
                return Err(ApiError::invalid("content.body", "content is too long"));
            }
            for part in [c.title.as_deref(), Some(c.body.as_str()), c.html.as_deref()] {
                content.part(part.unwrap_or("").as_bytes());
            }
            Message::Content(Arc::new(Rendered { title: c.title, body: c.body, html: c.html, template_code: None }))
        }
        _ => return Err(ApiError::invalid("template", "give exactly one of template and content")),
    })
}

/// `send_at` and its `timezone`, parsed (the recipient's time zone and the allowed window are the shard's).
fn send_at(send_at: Option<&str>, timezone: Option<&str>) -> Result<Option<SendAt>, ApiError> {
    match (send_at, timezone) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(ApiError::invalid("timezone", "only applies to send_at")),
        (Some(at), tz) => parse_send_at(at, tz).map(Some).map_err(|e| ApiError::invalid(e.field(), e.to_string())),
    }
}

#[derive(Serialize)]
struct DeliveryView<'a> {
    id: &'a str,
    channel: Channel,
    provider: &'static str,
    to: &'a str,
    status: &'static str,
    attempts: u32,
    provider_message_id: Option<&'a str>,
    events: &'a [Event],
}

#[derive(Serialize)]
struct TimelineEntry<'a> {
    delivery_id: &'a str,
    channel: Channel,
    #[serde(flatten)]
    event: &'a Event,
}

fn delivery_view(d: &Delivery) -> DeliveryView<'_> {
    DeliveryView {
        id: &d.id,
        channel: d.channel,
        provider: d.provider.as_str(),
        to: match &d.address {
            Address::Missing => "",
            other => other.value(),
        },
        status: d.status.as_str(),
        attempts: d.attempts,
        provider_message_id: d.provider_message_id.as_deref(),
        events: &d.events,
    }
}

pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let stored =
        state.engine.notification(&id).await.map_err(|e| state.error(e))?.ok_or(ApiError::not_found("notification"))?;
    Ok(Json(notification_view(&stored.notification, &stored.deliveries)))
}

fn notification_view(n: &Notification, deliveries: &[Delivery]) -> Value {
    let mut timeline: Vec<TimelineEntry> = deliveries
        .iter()
        .flat_map(|d| d.events.iter().map(move |event| TimelineEntry { delivery_id: &d.id, channel: d.channel, event }))
        .collect();
    timeline.sort_by_key(|e| e.event.at);
    serde_json::json!({
        "id": n.id,
        "status": n.status,
        "user_id": n.user_id,
        "category": n.category,
        "channels": n.channels,
        "strategy": n.strategy,
        "priority": n.priority,
        "template_id": n.template_id,
        "idempotency_key": n.idempotency_key,
        "metadata": n.metadata,
        "expires_at": n.expires_at,
        "send_at": n.send_at,
        "reason": n.reason,
        "sequence": n.sequence.as_ref().map(|s| serde_json::json!({"id": s.sequence_id, "step": s.step})),
        "created_at": n.created_at,
        "updated_at": n.updated_at,
        "deliveries": deliveries.iter().map(delivery_view).collect::<Vec<_>>(),
        "events": timeline,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchBody {
    template: Option<TemplateRef>,
    content: Option<ContentBody>,
    send_at: Option<String>,
    timezone: Option<String>,
}

/// `PATCH /v1/notifications/{id}`: a scheduled notification's message and/or `send_at`.
pub async fn patch(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: JsonBody<PatchBody>,
) -> Result<impl IntoResponse, ApiError> {
    let body = body.value;
    let message = match (&body.template, &body.content) {
        (None, None) => None,
        _ => Some(message(&state, body.template, body.content, &mut StableHasher::default())?),
    };
    let send_at = send_at(body.send_at.as_deref(), body.timezone.as_deref())?;
    if message.is_none() && send_at.is_none() {
        return Err(ApiError::invalid("send_at", "nothing to change: give send_at, template or content"));
    }
    let n = state.engine.patch(&id, NotificationPatch { message, send_at }).await.map_err(|e| state.error(e))?;
    Ok(Json(notification_view(&n, &[])))
}

pub async fn cancel(State(state): State<AppState>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let status = state.engine.cancel(&id).await.map_err(|e| state.error(e))?;
    Ok(Json(serde_json::json!({ "id": id, "status": status })))
}

pub(super) fn dlq_view(d: &Delivery) -> Value {
    serde_json::json!({
        "id": d.id,
        "notification_id": d.notification_id,
        "delivery": delivery_view(d),
        "updated_at": d.updated_at,
    })
}
