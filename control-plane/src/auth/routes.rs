//! `/api/auth/…`: login, refresh, current user, user creation, service tokens. Served by the
//! gateway (or the all-in-one process).

use std::time::Duration;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{Caller, Role, allow, hash_password, random_token, token_hash, verify_password};
use crate::bus::{BusMessage, topics};
use crate::error::{ApiError, ErrorBody};
use crate::gateway::ApiJson;
use crate::state::AppState;
use crate::store::{StoreError, UserRecord, now_us};

/// Longest accepted password, in bytes (Argon2 cost grows with input).
const MAX_PASSWORD_LEN: usize = 1024;
/// Longest service token lifetime an admin may mint (90 days).
const MAX_SERVICE_TTL_SECS: u64 = 90 * 24 * 3600;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// Tokens returned by login and refresh.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Access token lifetime, seconds.
    pub expires_in: u64,
    pub role: Role,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MeResponse {
    pub subject: String,
    pub role: Role,
    /// Expiry of the presented token, Unix seconds.
    pub expires_at: u64,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    pub username: String,
    pub password: String,
    /// admin, analyst or viewer.
    pub role: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreateUserResponse {
    pub username: String,
    pub role: Role,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceTokenRequest {
    /// Who the token is for: a service name or an agent id ([A-Za-z0-9._-], ≤ 128).
    pub subject: String,
    /// Lifetime in seconds (default `service_token_ttl_secs`, at most 90 days).
    pub ttl_secs: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceTokenResponse {
    pub token: String,
    /// The subject recorded in the token (a SPIFFE-style ID).
    pub subject: String,
    pub expires_in: u64,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/auth/login", post(login))
        .route("/api/auth/refresh", post(refresh))
        .route("/api/auth/me", get(me))
        .route("/api/auth/users", post(create_user))
        .route("/api/auth/service-tokens", post(service_token))
}

fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

async fn issue_pair(
    state: &AppState,
    username: &str,
    role: Role,
) -> Result<TokenResponse, ApiError> {
    let access = state
        .auth
        .issue(username, role, state.auth.access_ttl)
        .map_err(|e| ApiError::internal(&e))?;
    let refresh = random_token(32);
    let expires = now_us() + state.auth.refresh_ttl.as_micros() as i64;
    state
        .store
        .put_refresh_token(&token_hash(&refresh), username, expires)
        .await?;
    Ok(TokenResponse {
        access_token: access,
        refresh_token: refresh,
        token_type: "Bearer".into(),
        expires_in: state.auth.access_ttl.as_secs(),
        role,
    })
}

/// Exchange username and password for an access token and a refresh token.
#[utoipa::path(post, path = "/api/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = TokenResponse), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    if req.password.len() > MAX_PASSWORD_LEN || req.username.len() > 64 {
        return Err(ApiError::unauthorized("invalid username or password"));
    }
    let user = state.store.get_user(&req.username).await?;
    // Verify against a dummy hash for unknown users, so timing does not reveal which names exist.
    let (hash, known) = match &user {
        Some(u) => (u.password_hash.clone(), true),
        None => (state.dummy_hash.clone(), false),
    };
    let ok = verify_password(req.password, hash).await && known;
    let user = match (ok, user) {
        (true, Some(u)) => u,
        _ => {
            tracing::info!(username = %req.username, "login failed");
            return Err(ApiError::unauthorized("invalid username or password"));
        }
    };
    let role = Role::parse(&user.role)
        .ok_or_else(|| ApiError::internal(&format!("user {} has unknown role", user.username)))?;
    Ok(Json(issue_pair(&state, &user.username, role).await?))
}

/// Trade a refresh token (single use) for a new token pair.
#[utoipa::path(post, path = "/api/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = ErrorBody)))]
pub async fn refresh(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    if req.refresh_token.len() > 256 {
        return Err(ApiError::unauthorized("invalid or expired refresh token"));
    }
    let username = state
        .store
        .take_refresh_token(&token_hash(&req.refresh_token))
        .await?
        .ok_or_else(|| ApiError::unauthorized("invalid or expired refresh token"))?;
    let user = state
        .store
        .get_user(&username)
        .await?
        .ok_or_else(|| ApiError::unauthorized("user no longer exists"))?;
    let role = Role::parse(&user.role)
        .ok_or_else(|| ApiError::internal(&format!("user {username} has unknown role")))?;
    Ok(Json(issue_pair(&state, &username, role).await?))
}

/// Who the presented token belongs to.
#[utoipa::path(get, path = "/api/auth/me", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = MeResponse), (status = 401, body = ErrorBody)))]
pub async fn me(Caller(c): Caller) -> Json<MeResponse> {
    Json(MeResponse {
        subject: c.sub,
        role: c.role,
        expires_at: c.exp,
    })
}

/// Create a user (admin only).
#[utoipa::path(post, path = "/api/auth/users", tag = "auth", security(("bearer" = [])),
    request_body = CreateUserRequest,
    responses((status = 201, body = CreateUserResponse), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_user(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiJson(req): ApiJson<CreateUserRequest>,
) -> Result<(axum::http::StatusCode, Json<CreateUserResponse>), ApiError> {
    c.require(allow::ADMIN)?;
    if !valid_name(&req.username, 64) {
        return Err(ApiError::bad_request(
            "username must be 1-64 characters of A-Z a-z 0-9 . _ -",
        ));
    }
    if req.password.len() < 8 || req.password.len() > MAX_PASSWORD_LEN {
        return Err(ApiError::bad_request(format!(
            "password must be 8 to {MAX_PASSWORD_LEN} bytes long"
        )));
    }
    let role = match Role::parse(&req.role) {
        Some(r @ (Role::Admin | Role::Analyst | Role::Viewer)) => r,
        _ => {
            return Err(ApiError::bad_request(
                "role must be one of: admin, analyst, viewer",
            ));
        }
    };
    let user = UserRecord {
        username: req.username.clone(),
        password_hash: hash_password(req.password)
            .await
            .map_err(|e| ApiError::internal(&e))?,
        role: role.as_str().into(),
    };
    match state.store.create_user(&user).await {
        Ok(()) => {}
        Err(StoreError::Conflict(m)) => return Err(ApiError::conflict(m)),
        Err(e) => return Err(e.into()),
    }
    state
        .publish(BusMessage::new(
            topics::USER_CREATED,
            &state.origin(),
            &serde_json::json!({"username": user.username, "role": role}),
        ))
        .await;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(CreateUserResponse {
            username: user.username,
            role,
        }),
    ))
}

/// Mint a service token for an agent or external service (admin only).
#[utoipa::path(post, path = "/api/auth/service-tokens", tag = "auth", security(("bearer" = [])),
    request_body = ServiceTokenRequest,
    responses((status = 200, body = ServiceTokenResponse), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
pub async fn service_token(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiJson(req): ApiJson<ServiceTokenRequest>,
) -> Result<Json<ServiceTokenResponse>, ApiError> {
    c.require(allow::ADMIN)?;
    if !valid_name(&req.subject, 128) {
        return Err(ApiError::bad_request(
            "subject must be 1-128 characters of A-Z a-z 0-9 . _ -",
        ));
    }
    let ttl = req.ttl_secs.unwrap_or(state.auth.service_ttl.as_secs());
    if ttl == 0 || ttl > MAX_SERVICE_TTL_SECS {
        return Err(ApiError::bad_request(format!(
            "ttl_secs must be between 1 and {MAX_SERVICE_TTL_SECS}"
        )));
    }
    let subject = format!(
        "spiffe://{}/hais/agent/{}",
        state.config.spire.trust_domain, req.subject
    );
    let token = state
        .auth
        .issue_service(&subject, Some(Duration::from_secs(ttl)))
        .map_err(|e| ApiError::internal(&e))?;
    tracing::info!(by = %c.sub, %subject, ttl, "service token issued");
    Ok(Json(ServiceTokenResponse {
        token,
        subject,
        expires_in: ttl,
    }))
}
