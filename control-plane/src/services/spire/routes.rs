//! The spire service's HTTP API: join tokens, the fleet view, revocation, the trust bundle.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{AgentView, Spire, SpireError, tokens};
use crate::auth::{Caller, allow};
use crate::bus::topics::{AgentRevocation, AgentRevoked};
use crate::http::{ApiError, ErrorBody};
use crate::http::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;
use crate::store::{Page, now_us};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Default and largest fleet page.
const DEFAULT_AGENT_PAGE: u32 = 100;
const MAX_AGENT_PAGE: u32 = 1000;

/// The routes with their OpenAPI paths. Handlers reach the process's [`Spire`] through an
/// `Extension` (see [`super::SpireService`]).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_token))
        .routes(routes!(list_agents))
        .routes(routes!(get_agent))
        .routes(routes!(revoke_agent))
        .routes(routes!(bundle))
        .routes(routes!(external_status))
}

impl From<SpireError> for ApiError {
    fn from(e: SpireError) -> Self {
        match e {
            SpireError::BadRequest(m) => ApiError::bad_request(m),
            SpireError::Store(s) => s.into(),
            other => ApiError::internal(&other),
        }
    }
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// Lifetime, 60 s to 30 days (default `spire.token_ttl`, 1 h).
    #[schema(minimum = 60, maximum = 2592000)]
    #[serde(default, deserialize_with = "crate::http::int::opt_u64")]
    pub ttl_seconds: Option<u64>,
    /// Free text kept with the token (at most 256 bytes, no control characters), e.g. the host
    /// it is meant for.
    #[schema(max_length = 256, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    pub description: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateTokenResponse {
    /// `hais1.<id>.<secret>.<ca-sha256>`: give it to `hais-agent enroll --token`. Shown once.
    pub token: String,
    pub id: String,
    pub expires_us: i64,
    /// The same, RFC 3339.
    pub expires_at: String,
    pub trust_domain: String,
    /// SHA-256 of the CA certificate, which the token pins.
    pub ca_sha256: String,
}

/// Create a one-time join token (admin).
#[utoipa::path(post, path = "/api/spire/tokens", tag = "spire", security(("bearer" = [])),
    request_body = CreateTokenRequest,
    responses((status = 201, body = CreateTokenResponse), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_token(
    State(state): State<AppState>,
    Extension(spire): Extension<Arc<Spire>>,
    Caller(c): Caller,
    ApiJson(req): ApiJson<CreateTokenRequest>,
) -> Result<(StatusCode, Json<CreateTokenResponse>), ApiError> {
    c.require(allow::ADMIN)?;
    let ttl = match req.ttl_seconds {
        None => spire.config.token_ttl.0,
        Some(s) => Duration::from_secs(s),
    };
    let t = tokens::issue_token(
        &*state.store,
        &spire.authority,
        ttl,
        req.description,
        &c.sub,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreateTokenResponse {
            token: t.token,
            id: t.id,
            expires_us: t.expires_us,
            expires_at: rfc3339_us(t.expires_us),
            trust_domain: spire.authority.trust_domain().to_owned(),
            ca_sha256: hex::encode(spire.authority.hash()),
        }),
    ))
}

/// Formats µs since the Unix epoch as RFC 3339 (empty if out of range).
pub fn rfc3339_us(us: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AgentListParams {
    /// 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page (an agent id).
    #[param(pattern = "^[A-Za-z0-9._-]+$", max_length = 2018)]
    pub cursor: Option<String>,
}

/// A page of the fleet view.
pub type AgentPage = Page<AgentView>;

/// Checks an agent id from a path or cursor: what can follow `/hais/agent/` in a SPIFFE ID
/// (a UUID for enrolled agents, the name SPIRE's registration entry gave otherwise).
fn agent_id(s: &str, what: &str) -> Result<String, ApiError> {
    hais_shared::spiffe::SpiffeId::agent("x.invalid", s)
        .ok()
        .filter(|id| id.agent_id() == Some(s))
        .map(|_| s.to_owned())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{what} must be an agent id (one SPIFFE ID path segment, e.g. a UUID)"
            ))
        })
}

/// The fleet: every enrolled agent with its status (online, stale, revoked), last heartbeat and
/// SVID expiry, in enrollment order.
#[utoipa::path(get, path = "/api/spire/agents", tag = "spire", security(("bearer" = [])),
    params(AgentListParams),
    responses((status = 200, body = Page<AgentView>), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody)))]
pub async fn list_agents(
    State(state): State<AppState>,
    Extension(spire): Extension<Arc<Spire>>,
    Caller(c): Caller,
    ApiQuery(p): ApiQuery<AgentListParams>,
) -> Result<Json<AgentPage>, ApiError> {
    c.require(allow::READ)?;
    let limit = p.limit.unwrap_or(DEFAULT_AGENT_PAGE);
    if !(1..=MAX_AGENT_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be from 1 to {MAX_AGENT_PAGE}"
        )));
    }
    let after = p
        .cursor
        .as_deref()
        .map(|c| agent_id(c, "cursor"))
        .transpose()?;
    let agents = state.store.list_agents(after.as_deref(), limit).await?;
    let next_cursor = (agents.len() == limit as usize)
        .then(|| agents.last().map(|a| a.id.clone()))
        .flatten();
    let now = now_us();
    let stale_after = spire.config.stale_after.0;
    Ok(Json(Page {
        items: agents
            .into_iter()
            .map(|a| AgentView::new(a, now, stale_after))
            .collect(),
        next_cursor,
    }))
}

async fn load_agent(state: &AppState, spire: &Spire, id: &str) -> Result<AgentView, ApiError> {
    let id = agent_id(id, "the agent id")?;
    let a = state
        .store
        .get_agent(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no agent {id}")))?;
    Ok(AgentView::new(a, now_us(), spire.config.stale_after.0))
}

/// One agent of the fleet.
#[utoipa::path(get, path = "/api/spire/agents/{id}", tag = "spire", security(("bearer" = [])),
    params(("id" = String, Path, description = "agent id (a UUID for enrolled agents)", pattern = "^[A-Za-z0-9._-]+$", max_length = 2018)),
    responses((status = 200, body = AgentView), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn get_agent(
    State(state): State<AppState>,
    Extension(spire): Extension<Arc<Spire>>,
    Caller(c): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<AgentView>, ApiError> {
    c.require(allow::READ)?;
    Ok(Json(load_agent(&state, &spire, &id).await?))
}

/// Revoke an agent (admin): its SVID renewals, heartbeats, batches and connections are refused
/// from now on, and its live connections are closed. Revocation is permanent; enroll the host
/// again with a new token to bring it back.
#[utoipa::path(post, path = "/api/spire/agents/{id}/revoke", tag = "spire",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "agent id (a UUID for enrolled agents)", pattern = "^[A-Za-z0-9._-]+$", max_length = 2018)),
    responses((status = 200, body = AgentView), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn revoke_agent(
    State(state): State<AppState>,
    Extension(spire): Extension<Arc<Spire>>,
    Caller(c): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<AgentView>, ApiError> {
    c.require(allow::ADMIN)?;
    let id = agent_id(&id, "the agent id")?;
    let (revoked_us, newly) = state
        .store
        .revoke_agent(&id, now_us())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no agent {id}")))?;
    spire.revocations.insert(&id);
    let view = load_agent(&state, &spire, &id).await?;
    if newly {
        tracing::warn!(agent_id = %id, by = %c.sub, "agent revoked");
        state
            .publish::<AgentRevoked>(&AgentRevocation {
                agent_id: id.clone(),
                spiffe_id: view.agent.spiffe_id.clone(),
                revoked_us,
                by: c.sub.clone(),
            })
            .await;
    }
    Ok(Json(view))
}

/// The trust bundle (the CA certificate, PEM) agents and other peers verify SVIDs with.
#[utoipa::path(get, path = "/api/spire/bundle", tag = "spire", security(("bearer" = [])),
    responses((status = 200, content_type = "application/x-pem-file", body = String),
              (status = 401, body = ErrorBody)))]
pub async fn bundle(
    Extension(spire): Extension<Arc<Spire>>,
    Caller(c): Caller,
) -> Result<impl IntoResponse, ApiError> {
    c.require(allow::READ)?;
    Ok((
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        spire.authority.ca_pem(),
    ))
}

/// The external SPIRE deployment (`[spire.external]`): its trust domain, the bundle in use and
/// when it was loaded, and its server's health. 404 when none is configured.
#[utoipa::path(get, path = "/api/spire/external", tag = "spire", security(("bearer" = [])),
    responses((status = 200, body = super::external::ExternalStatus),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn external_status(
    Extension(spire): Extension<Arc<Spire>>,
    Caller(c): Caller,
) -> Result<Json<super::external::ExternalStatus>, ApiError> {
    c.require(allow::READ)?;
    let ext = spire.external.as_ref().ok_or_else(|| {
        ApiError::not_found("no external SPIRE is configured ([spire.external] trust_domain)")
    })?;
    Ok(Json(ext.status()))
}
