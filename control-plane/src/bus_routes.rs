//! `/api/bus/*`: the durable bus's consumer groups and dead letters, for operators. Served by
//! the gateway from the shared store, so it sees every replica of every service.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, allow};
use crate::bus::durable::replay_topic;
use crate::bus::topics::{Appended, BusAppended};
use crate::http::{ApiError, ApiPath, ApiQuery, ErrorBody};
use crate::state::AppState;
use crate::store::bus::{DeadLetter, GroupPosition};
use crate::store::now_us;

/// The routes with their OpenAPI paths (mounted by the gateway).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(consumers))
        .routes(routes!(list_dead_letters))
        .routes(routes!(get_dead_letter, discard_dead_letter))
        .routes(routes!(replay_dead_letter))
}

/// Every consumer group: what it handled, how far behind it is, its replicas, its dead letters.
#[utoipa::path(get, path = "/api/bus/consumers", tag = "bus", security(("bearer" = [])),
    responses((status = 200, body = [GroupPosition]), (status = 401, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn consumers(
    State(state): State<AppState>,
    Caller(c): Caller,
) -> Result<Json<Vec<GroupPosition>>, ApiError> {
    c.require(allow::READ)?;
    let ttl = state.config.bus.lease_ttl.0.as_micros() as i64;
    Ok(Json(state.store.bus_positions(now_us(), ttl).await?))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterParams {
    /// Only this consumer group (a service name).
    #[param(pattern = "^[a-z0-9_-]{1,64}$")]
    pub group: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(format = Uuid)]
    pub cursor: Option<String>,
    /// 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// A page of dead letters, oldest first.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetterPage {
    pub items: Vec<DeadLetter>,
    pub next_cursor: Option<String>,
}

/// One dead letter and what it holds.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetterView {
    #[serde(flatten)]
    pub dead_letter: DeadLetter,
    /// The row's items as the consumer was given them (JSON).
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

/// Dead letters: bus rows a consumer group gave up on after its retries (admin only).
#[utoipa::path(get, path = "/api/bus/dead-letters", tag = "bus", security(("bearer" = [])),
    params(DeadLetterParams),
    responses((status = 200, body = DeadLetterPage), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_dead_letters(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiQuery(p): ApiQuery<DeadLetterParams>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    c.require(allow::ADMIN)?;
    let limit = match p.limit {
        None => 100,
        Some(n) if (1..=1000).contains(&n) => n,
        Some(_) => return Err(ApiError::bad_request("limit must be from 1 to 1000")),
    };
    if let Some(g) = &p.group
        && (g.is_empty()
            || g.len() > 64
            || !g
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'))
    {
        return Err(ApiError::bad_request("group is a service name"));
    }
    let cursor = p.cursor.as_deref().map(dead_letter_id).transpose()?;
    let items = state
        .store
        .bus_dead_letters(p.group.as_deref(), cursor.as_deref(), i64::from(limit))
        .await?;
    let next_cursor = (items.len() == limit as usize)
        .then(|| items.last().map(|d| d.id.clone()))
        .flatten();
    Ok(Json(DeadLetterPage { items, next_cursor }))
}

fn dead_letter_id(s: &str) -> Result<String, ApiError> {
    uuid::Uuid::parse_str(s)
        .map(|u| u.to_string())
        .map_err(|_| ApiError::bad_request("a dead letter id is a UUID"))
}

async fn find(state: &AppState, id: &str) -> Result<(DeadLetter, Vec<u8>), ApiError> {
    let id = dead_letter_id(id)?;
    state
        .store
        .bus_dead_letter_get(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no dead letter {id}")))
}

/// One dead letter with its payload (admin only).
#[utoipa::path(get, path = "/api/bus/dead-letters/{id}", tag = "bus", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "the dead letter's id")),
    responses((status = 200, body = DeadLetterView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn get_dead_letter(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DeadLetterView>, ApiError> {
    c.require(allow::ADMIN)?;
    let (dead_letter, payload) = find(&state, &id).await?;
    // Undecodable rows are dead letters too: show their bytes in hex.
    let payload = crate::bus::log::payload_json(&dead_letter.topic, &payload)
        .unwrap_or_else(|| serde_json::Value::String(hex::encode(&payload)));
    Ok(Json(DeadLetterView {
        dead_letter,
        payload,
    }))
}

/// Hand a dead letter to its consumer group again (admin only). Answered at once; a replica of
/// the group replays it within seconds, out of log order, and deletes it when it succeeds (or
/// records the new failure).
#[utoipa::path(post, path = "/api/bus/dead-letters/{id}/replay", tag = "bus",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "the dead letter's id")),
    responses((status = 202, body = DeadLetter), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn replay_dead_letter(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<DeadLetter>), ApiError> {
    c.require(allow::ADMIN)?;
    let (d, _) = find(&state, &id).await?;
    if !state.store.bus_request_replay(&d.id, now_us()).await? {
        return Err(ApiError::not_found(format!("no dead letter {}", d.id)));
    }
    tracing::info!(by = %c.sub, id = %d.id, group = %d.group, "dead letter replay requested");
    state
        .publish::<BusAppended>(&Appended {
            topic: replay_topic(&d.group),
            items: d.items.max(0) as u64,
        })
        .await;
    let (d, _) = find(&state, &d.id).await?;
    Ok((StatusCode::ACCEPTED, Json(d)))
}

/// Delete a dead letter without handling it (admin only).
#[utoipa::path(delete, path = "/api/bus/dead-letters/{id}", tag = "bus",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "the dead letter's id")),
    responses((status = 200, body = DeadLetter), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn discard_dead_letter(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DeadLetter>, ApiError> {
    c.require(allow::ADMIN)?;
    let (d, _) = find(&state, &id).await?;
    if !state.store.bus_discard(&d.id).await? {
        return Err(ApiError::not_found(format!("no dead letter {}", d.id)));
    }
    tracing::warn!(by = %c.sub, id = %d.id, group = %d.group, items = d.items, "dead letter discarded");
    Ok(Json(d))
}
