//! `POST /v1/sequences`, `GET` and `DELETE /v1/sequences/{id}` (SPEC §4 "Sequences").

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::json::JsonBody;
use super::notifications::{ContentBody, TemplateRef, check_channels, message};
use super::{AppState, valid_id};
use crate::domain::{Category, Channel, OnFailure, Priority, Sequence, Strategy};
use crate::engine::{NewSequence, NewStep, StableHasher};

/// Steps one sequence may have.
const MAX_STEPS: usize = 50;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceBody {
    user_id: String,
    steps: Vec<StepBody>,
    /// `"10m"`, `"90s"`, `"1h 30m"`, or a number of seconds; default `scheduling.step_timeout_s`.
    step_timeout: Option<Value>,
    #[serde(default)]
    on_failure: OnFailure,
}

/// A notification body without recipient, schedule or idempotency key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepBody {
    #[serde(default)]
    category: Category,
    channels: Vec<Channel>,
    #[serde(default)]
    strategy: Strategy,
    #[serde(default)]
    priority: Priority,
    template: Option<TemplateRef>,
    content: Option<ContentBody>,
    metadata: Option<Value>,
}

pub async fn start(State(state): State<AppState>, body: JsonBody<SequenceBody>) -> Result<impl IntoResponse, ApiError> {
    let body = body.value;
    valid_id("user_id", &body.user_id)?;
    if body.steps.is_empty() || body.steps.len() > MAX_STEPS {
        return Err(ApiError::invalid("steps", format!("give 1 to {MAX_STEPS} steps")));
    }
    let step_timeout_ms = match &body.step_timeout {
        None => state.settings.scheduling.step_timeout_s * 1000,
        Some(value) => step_timeout_ms(value).ok_or_else(|| {
            ApiError::invalid("step_timeout", "expected a duration such as \"10m\" or \"90s\" (1 s to 7 days)")
        })?,
    };
    let mut steps = Vec::with_capacity(body.steps.len());
    for (i, step) in body.steps.into_iter().enumerate() {
        let in_step = |mut e: ApiError| {
            e.field = Some(format!("steps[{i}].{}", e.field.as_deref().unwrap_or("")));
            e
        };
        check_channels(&step.channels).map_err(in_step)?;
        let message = message(&state, step.template, step.content, &mut StableHasher::default()).map_err(in_step)?;
        steps.push(NewStep {
            category: step.category,
            channels: step.channels,
            strategy: step.strategy,
            priority: step.priority,
            message,
            metadata: step.metadata,
        });
    }
    let request = NewSequence { user_id: body.user_id, steps, step_timeout_ms, on_failure: body.on_failure };
    let sequence = state.engine.start_sequence(request).await.map_err(|e| state.error(e))?;
    Ok((StatusCode::ACCEPTED, Json(json!({"id": sequence.id, "status": sequence.status}))))
}

/// A duration between 1 s and 7 days, as jiff's friendly format (`10m`, `1h 30m`) or ISO 8601, or seconds.
fn step_timeout_ms(value: &Value) -> Option<u64> {
    let ms = match value {
        Value::Number(n) => n.as_u64()?.checked_mul(1000)?,
        Value::String(s) => {
            let duration: jiff::SignedDuration = s.trim().parse().ok()?;
            u64::try_from(duration.as_millis()).ok()?
        }
        _ => return None,
    };
    (1000..=7 * 86_400_000).contains(&ms).then_some(ms)
}

pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let sequence =
        state.engine.sequence(&id).await.map_err(|e| state.error(e))?.ok_or(ApiError::not_found("sequence"))?;
    Ok(Json(view(&sequence)))
}

pub async fn cancel(State(state): State<AppState>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let sequence = state.engine.cancel_sequence(&id).await.map_err(|e| state.error(e))?;
    Ok(Json(view(&sequence)))
}

fn view(s: &Sequence) -> Value {
    let steps: Vec<Value> = s
        .steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            json!({
                "index": i,
                "status": step.status,
                "channels": step.channels,
                "notification_id": step.notification_id,
                "started_at": step.started_at,
                "ended_at": step.ended_at,
                "reason": step.reason,
            })
        })
        .collect();
    json!({
        "id": s.id,
        "user_id": s.user_id,
        "status": s.status,
        "current_step": s.current.min(s.steps.len()),
        "on_failure": s.on_failure,
        "step_timeout_ms": s.step_timeout_ms,
        "steps": steps,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_timeouts_accept_friendly_iso_and_seconds_within_bounds() {
        assert_eq!(step_timeout_ms(&json!("10m")), Some(600_000));
        assert_eq!(step_timeout_ms(&json!("1h 30m")), Some(5_400_000));
        assert_eq!(step_timeout_ms(&json!("PT90S")), Some(90_000));
        assert_eq!(step_timeout_ms(&json!(30)), Some(30_000));
        for bad in [json!("soon"), json!("0s"), json!("8d"), json!(-1), json!(true)] {
            assert_eq!(step_timeout_ms(&bad), None, "{bad}");
        }
    }
}
