//! `POST /v1/campaigns`, `GET /v1/campaigns/{id}` and `POST /v1/campaigns/{id}/pause|resume|cancel` (SPEC §4
//! "Campaigns", `docs/campaigns.md`).

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::json::JsonBody;
use super::notifications::{TemplateRef, check_channels, message};
use super::{AppState, valid_id};
use crate::domain::{Audience, Campaign, Category, Channel, valid_tag};
use crate::engine::{CampaignCommand, Message, NewAudience, NewCampaign, StableHasher};

/// Users an explicit audience may list.
const MAX_USER_IDS: usize = 1_000_000;
const MAX_RATE: u64 = 1_000_000;
const MAX_NAME_CHARS: usize = 200;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignBody {
    template: TemplateRef,
    channels: Vec<Channel>,
    category: Category,
    audience: AudienceBody,
    /// RFC 3339; one that has passed starts the campaign at once.
    send_at: Option<String>,
    rate_per_second: Option<u64>,
    name: Option<String>,
}

/// Exactly one of the three.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AudienceBody {
    user_ids: Option<Vec<String>>,
    all_users: Option<bool>,
    tag: Option<String>,
}

pub async fn create(
    State(state): State<AppState>,
    body: JsonBody<CampaignBody>,
) -> Result<impl IntoResponse, ApiError> {
    let body = body.value;
    check_channels(&body.channels)?;
    let audience = audience(body.audience)?;
    if let Some(rate) = body.rate_per_second
        && !(1..=MAX_RATE).contains(&rate)
    {
        return Err(ApiError::invalid("rate_per_second", format!("must be between 1 and {MAX_RATE}")));
    }
    if let Some(name) = &body.name
        && (name.trim().is_empty() || name.chars().count() > MAX_NAME_CHARS)
    {
        return Err(ApiError::invalid("name", format!("must be 1 to {MAX_NAME_CHARS} characters")));
    }
    let send_at = body.send_at.as_deref().map(|s| send_at(&state, s)).transpose()?;
    let Message::Template { template, params } =
        message(&state, Some(body.template), None, &mut StableHasher::default())?
    else {
        unreachable!("a template reference makes a template message");
    };
    let request = NewCampaign {
        name: body.name,
        template,
        params,
        channels: body.channels,
        category: body.category,
        audience,
        send_at,
        rate_per_second: body.rate_per_second.map(|r| r as u32),
    };
    let campaign = state.engine.create_campaign(request).await.map_err(|e| state.error(e))?;
    Ok((StatusCode::ACCEPTED, Json(json!({"id": campaign.id, "status": campaign.status}))))
}

fn audience(body: AudienceBody) -> Result<NewAudience, ApiError> {
    let kinds =
        usize::from(body.user_ids.is_some()) + usize::from(body.all_users.is_some()) + usize::from(body.tag.is_some());
    if kinds != 1 {
        return Err(ApiError::invalid("audience", "give exactly one of user_ids, all_users and tag"));
    }
    if let Some(ids) = body.user_ids {
        if ids.is_empty() || ids.len() > MAX_USER_IDS {
            return Err(ApiError::invalid("audience.user_ids", format!("give 1 to {MAX_USER_IDS} user ids")));
        }
        for (i, id) in ids.iter().enumerate() {
            valid_id(&format!("audience.user_ids[{i}]"), id)?;
        }
        return Ok(NewAudience::UserIds(ids));
    }
    if let Some(tag) = body.tag {
        if !valid_tag(&tag) {
            return Err(ApiError::invalid("audience.tag", "tags are 1-64 characters of letters, digits and _.:-"));
        }
        return Ok(NewAudience::Tag(tag));
    }
    match body.all_users {
        Some(true) => Ok(NewAudience::AllUsers),
        _ => Err(ApiError::invalid("audience.all_users", "must be true")),
    }
}

/// An RFC 3339 instant no further ahead than `scheduling.max_lead_s` (by the engine clock).
fn send_at(state: &AppState, value: &str) -> Result<Timestamp, ApiError> {
    let at: Timestamp =
        value.parse().map_err(|_| ApiError::invalid("send_at", "expected an RFC 3339 instant with an offset"))?;
    let max_lead = Duration::from_secs(state.settings.scheduling.max_lead_s);
    let now = state.engine.clock().now();
    if now.checked_add(max_lead).is_ok_and(|limit| at > limit) {
        let days = state.settings.scheduling.max_lead_s / 86_400;
        return Err(ApiError::invalid("send_at", format!("must be at most {days} days ahead")));
    }
    Ok(at)
}

pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let campaign =
        state.engine.campaign(&id).await.map_err(|e| state.error(e))?.ok_or(ApiError::not_found("campaign"))?;
    Ok(Json(view(&campaign)))
}

pub async fn pause(state: State<AppState>, id: Path<String>) -> Result<impl IntoResponse, ApiError> {
    command(state, id, CampaignCommand::Pause).await
}

pub async fn resume(state: State<AppState>, id: Path<String>) -> Result<impl IntoResponse, ApiError> {
    command(state, id, CampaignCommand::Resume).await
}

pub async fn cancel(state: State<AppState>, id: Path<String>) -> Result<impl IntoResponse, ApiError> {
    command(state, id, CampaignCommand::Cancel).await
}

async fn command(
    State(state): State<AppState>,
    Path(id): Path<String>,
    command: CampaignCommand,
) -> Result<Json<Value>, ApiError> {
    let campaign = state.engine.command_campaign(&id, command).await.map_err(|e| state.error(e))?;
    Ok(Json(view(&campaign)))
}

fn view(c: &Campaign) -> Value {
    let audience = match &c.audience {
        Audience::UserIds { size, .. } => json!({"kind": "user_ids", "size": size}),
        Audience::AllUsers => json!({"kind": "all_users", "size": c.total()}),
        Audience::Tag { tag } => json!({"kind": "tag", "tag": tag, "size": c.total()}),
    };
    json!({
        "id": c.id,
        "name": c.name,
        "status": c.status,
        "template": {"id": c.template_id, "params": c.params},
        "channels": c.channels,
        "category": c.category,
        "audience": audience,
        "rate_per_second": c.rate_per_second,
        "send_at": c.send_at,
        "created_at": c.created_at,
        "started_at": c.started_at,
        "finished_at": c.finished_at,
        "updated_at": c.updated_at,
        "progress": {"processed": c.progress.processed, "total": c.total()},
        "counts": {
            "accepted": c.progress.accepted,
            "skipped": c.progress.skipped,
            "completed": c.finals.completed,
            "failed": c.finals.failed,
            "cancelled": c.finals.cancelled,
        },
    })
}
