//! `/api/auth/…`: login, refresh, logout, password changes, the current user, user management
//! and service tokens. Served by the gateway (or the all-in-one process).
//!
//! Account changes that must end tokens (disable, delete, role or password change, logout
//! everywhere) revoke sessions in the store's transaction and clear this process's token cache,
//! so the very next request with an old token is refused (other processes: within
//! [`super::live::TTL`]).

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::client_ip::ClientIp;
use super::throttle::Held;
use super::{
    Caller, Claims, MAX_PASSWORD_LEN, Role, allow, canonical_username, check_new_password,
    random_token, token_hash,
};
use crate::bus::topics::{UserChangeKind, UserChanged, UserCreated, UserEvent};
use crate::http::{ApiError, ErrorBody};
use crate::http::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;
use crate::store::accounts::{AccountChange, ServiceTokenRecord, UserChange};
use crate::store::{StoreError, UserRecord, now_us};

/// Longest service token lifetime an admin may mint (90 days).
const MAX_SERVICE_TTL_SECS: u64 = 90 * 24 * 3600;
/// Longest user name.
const MAX_USERNAME_LEN: usize = 64;
/// Largest page of users or service tokens.
const MAX_LIST: u32 = 1000;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Case-insensitive.
    #[schema(max_length = 64)]
    pub username: String,
    #[schema(max_length = 1024)]
    pub password: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    #[schema(max_length = 256)]
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
    /// 1-64 characters of a-z 0-9 . _ - (case-insensitive: stored in lower case).
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._-]+$")]
    pub username: String,
    #[schema(min_length = 8, max_length = 1024)]
    pub password: String,
    /// admin, analyst or viewer.
    pub role: UserRole,
}

/// The roles a user can have (`service` is for machine callers only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UserRole {
    Admin,
    Analyst,
    Viewer,
}

impl From<UserRole> for Role {
    fn from(r: UserRole) -> Role {
        match r {
            UserRole::Admin => Role::Admin,
            UserRole::Analyst => Role::Analyst,
            UserRole::Viewer => Role::Viewer,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateUserResponse {
    pub username: String,
    pub role: Role,
}

/// A user as the API shows it (never the password hash).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserView {
    pub username: String,
    pub role: String,
    pub created_us: i64,
    /// Set while the account is disabled (µs since the Unix epoch).
    pub disabled_us: Option<i64>,
    pub password_changed_us: Option<i64>,
}

impl From<UserRecord> for UserView {
    fn from(u: UserRecord) -> Self {
        UserView {
            username: u.username,
            role: u.role,
            created_us: u.created_us,
            disabled_us: u.disabled_us,
            password_changed_us: u.password_changed_us,
        }
    }
}

/// A page of users.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserPage {
    pub items: Vec<UserView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// `next_cursor` of the previous page: a user name, or a service token id.
    #[param(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub cursor: Option<String>,
    /// 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

impl ListParams {
    fn limit(&self) -> Result<u32, ApiError> {
        match self.limit {
            None => Ok(100),
            Some(n) if (1..=MAX_LIST).contains(&n) => Ok(n),
            Some(_) => Err(ApiError::bad_request(format!(
                "limit must be from 1 to {MAX_LIST}"
            ))),
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    pub role: Option<UserRole>,
    /// true: shut the account out (its sessions end at once); false: let it log in again.
    pub disabled: Option<bool>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPasswordRequest {
    #[schema(min_length = 8, max_length = 1024)]
    pub password: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    #[schema(max_length = 1024)]
    pub current_password: String,
    #[schema(min_length = 8, max_length = 1024)]
    pub new_password: String,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogoutRequest {
    /// End every session of the user, not only this one.
    #[serde(default)]
    pub everywhere: bool,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceTokenRequest {
    /// Which agent the token is for: its agent id ([A-Za-z0-9._-], ≤ 128). The token may only
    /// ingest events of that agent.
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._-]+$")]
    pub subject: String,
    /// Lifetime in seconds (default `service_token_ttl_secs`, at most 90 days).
    #[schema(minimum = 1, maximum = 7776000)]
    #[serde(default, deserialize_with = "crate::http::int::opt_u64")]
    pub ttl_secs: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceTokenResponse {
    /// The token's id (revoke it with `DELETE /api/auth/service-tokens/{id}`).
    pub id: String,
    pub token: String,
    /// The subject recorded in the token (a SPIFFE-style ID).
    pub subject: String,
    pub expires_in: u64,
}

/// A page of service tokens, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServiceTokenPage {
    pub items: Vec<ServiceTokenRecord>,
    pub next_cursor: Option<String>,
}

/// The routes with their OpenAPI paths (one `routes!` per path).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(me))
        .routes(routes!(change_password))
        .routes(routes!(create_user, list_users))
        .routes(routes!(get_user, update_user, delete_user))
        .routes(routes!(set_password))
        .routes(routes!(service_token, list_service_tokens))
        .routes(routes!(revoke_service_token))
}

/// The cursor of the page after `items`: the key of its last item, if the page is full.
fn next_cursor<T>(items: &[T], limit: u32, key: impl Fn(&T) -> String) -> Option<String> {
    (items.len() == limit as usize)
        .then(|| items.last().map(key))
        .flatten()
}

fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A user name from a path: checked, then canonical.
fn path_username(name: &str) -> Result<String, ApiError> {
    if !valid_name(name, MAX_USERNAME_LEN) {
        return Err(ApiError::bad_request(
            "username must be 1-64 characters of A-Z a-z 0-9 . _ -",
        ));
    }
    Ok(canonical_username(name))
}

/// Opens a session for `username` and issues its first token pair.
async fn open_session(
    state: &AppState,
    username: &str,
    role: Role,
) -> Result<TokenResponse, ApiError> {
    let sid = uuid::Uuid::now_v7().to_string();
    let refresh = random_token(32);
    let now = now_us();
    let expires = now + state.auth.refresh_ttl.as_micros() as i64;
    state
        .store
        .open_session(&sid, username, &token_hash(&refresh), expires, now)
        .await?;
    token_pair(state, username, role, &sid, refresh)
}

fn token_pair(
    state: &AppState,
    username: &str,
    role: Role,
    sid: &str,
    refresh: String,
) -> Result<TokenResponse, ApiError> {
    let access = state
        .auth
        .issue_access(username, role, sid)
        .map_err(|e| ApiError::internal(&e))?;
    Ok(TokenResponse {
        access_token: access,
        refresh_token: refresh,
        token_type: "Bearer".into(),
        expires_in: state.auth.access_ttl.as_secs(),
        role,
    })
}

/// 429 with `Retry-After` (whole seconds, at least 1).
fn too_many(wait: Duration, message: &str) -> Response {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut r =
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", message).into_response();
    if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// 503 with `Retry-After: 1`: every password-hashing slot is busy.
fn busy() -> Response {
    let mut r =
        ApiError::unavailable("too many logins in progress; retry in a second").into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// Exchange username and password for an access token and a refresh token. Failed logins back
/// off per source address and per user name (429 with Retry-After); a source the user logged
/// in from before is not held back by failures from elsewhere.
#[utoipa::path(post, path = "/api/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = TokenResponse), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 415, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "too many failures; see Retry-After"),
              (status = 503, body = ErrorBody, description = "every hashing slot busy")))]
pub async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Response {
    match login_inner(&state, ip, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn login_inner(
    state: &AppState,
    ip: std::net::IpAddr,
    req: LoginRequest,
) -> Result<Response, ApiError> {
    let invalid = || ApiError::unauthorized("invalid username or password");
    if req.password.len() > MAX_PASSWORD_LEN || !valid_name(&req.username, MAX_USERNAME_LEN) {
        return Err(invalid());
    }
    let username = canonical_username(&req.username);
    if let Err(held) = state.throttle.check(&username, ip, Instant::now()) {
        state
            .metrics
            .login_throttled
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(%username, %ip, ?held, "login refused: back-off");
        let what = match held {
            Held::Source(_) => "too many failed logins from this address; retry later",
            Held::User(_) => "too many failed logins for this user; retry later",
        };
        return Ok(too_many(held.retry_after(), what));
    }
    if state.passwords.saturated() {
        // No database work for a login that could not be checked anyway.
        return Ok(busy());
    }
    let user = state.store.get_user(&username).await?;
    // Verify against a dummy hash for unknown users, so timing does not reveal which names exist.
    let hash = user
        .as_ref()
        .map_or_else(|| state.dummy_hash.clone(), |u| u.password_hash.clone());
    let Ok(matched) = state.passwords.verify(req.password, hash).await else {
        return Ok(busy());
    };
    let user = match user {
        Some(u) if matched && u.disabled_us.is_none() => u,
        other => {
            state.throttle.failed(&username, ip, Instant::now());
            state
                .metrics
                .login_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let why = match other {
                Some(u) if matched && u.disabled_us.is_some() => "account disabled",
                Some(_) => "wrong password",
                None => "unknown user",
            };
            tracing::info!(%username, %ip, why, "login failed");
            // A disabled account is told apart only to whoever knows its password.
            if why == "account disabled" {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "account_disabled",
                    "this account is disabled; ask an administrator",
                ));
            }
            return Err(invalid());
        }
    };
    state.throttle.succeeded(&username, ip, Instant::now());
    let role = Role::parse(&user.role)
        .ok_or_else(|| ApiError::internal(&format!("user {} has unknown role", user.username)))?;
    Ok(Json(open_session(state, &user.username, role).await?).into_response())
}

/// Trade a refresh token (single use) for a new token pair of the same session.
#[utoipa::path(post, path = "/api/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = TokenResponse), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub async fn refresh(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let dead = || ApiError::unauthorized("invalid or expired refresh token");
    if req.refresh_token.len() > 256 {
        return Err(dead());
    }
    let (username, sid) = state
        .store
        .take_refresh_token(&token_hash(&req.refresh_token), now_us())
        .await?
        .ok_or_else(dead)?;
    let user = state
        .store
        .get_user(&username)
        .await?
        .filter(|u| u.disabled_us.is_none())
        .ok_or_else(|| ApiError::unauthorized("the account is disabled or no longer exists"))?;
    let role = Role::parse(&user.role)
        .ok_or_else(|| ApiError::internal(&format!("user {username} has unknown role")))?;
    let next = random_token(32);
    let expires = now_us() + state.auth.refresh_ttl.as_micros() as i64;
    if !state
        .store
        .put_refresh_token(&sid, &username, &token_hash(&next), expires)
        .await?
    {
        return Err(dead());
    }
    Ok(Json(token_pair(&state, &username, role, &sid, next)?))
}

/// End this session (or, with `everywhere`, every session of the user): its access and refresh
/// tokens stop working at once.
#[utoipa::path(post, path = "/api/auth/logout", tag = "auth", security(("bearer" = [])),
    request_body(content = LogoutRequest, description = "optional; `{}` ends this session"),
    responses((status = 204, description = "logged out"), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub async fn logout(
    State(state): State<AppState>,
    Caller(c): Caller,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    // The body is optional: none (or `{}`) ends this session.
    let req: LogoutRequest = if body.iter().all(u8::is_ascii_whitespace) {
        LogoutRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string()))?
    };
    let everywhere = req.everywhere;
    let Some(sid) = c.sid.as_deref() else {
        return Err(ApiError::bad_request(
            "service tokens have no session; revoke them with DELETE /api/auth/service-tokens/{id}",
        ));
    };
    if everywhere {
        state.store.revoke_user_sessions(&c.sub, now_us()).await?;
    } else {
        state.store.revoke_session(sid, now_us()).await?;
    }
    state.liveness.invalidate();
    tracing::info!(user = %c.sub, everywhere, "logged out");
    Ok(StatusCode::NO_CONTENT)
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

/// Change your own password (the current one is required). Every session of the account ends,
/// this one included: log in again with the new password.
#[utoipa::path(post, path = "/api/auth/password", tag = "auth", security(("bearer" = [])),
    request_body = ChangePasswordRequest,
    responses((status = 204, description = "changed; log in again"), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 415, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn change_password(
    State(state): State<AppState>,
    Caller(c): Caller,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<ChangePasswordRequest>,
) -> Result<Response, ApiError> {
    if c.sid.is_none() {
        return Err(ApiError::forbidden("service tokens have no password"));
    }
    check_new_password(&req.new_password).map_err(ApiError::bad_request)?;
    if let Err(held) = state.throttle.check(&c.sub, ip, Instant::now()) {
        return Ok(too_many(
            held.retry_after(),
            "too many failed password checks; retry later",
        ));
    }
    let user = state
        .store
        .get_user(&c.sub)
        .await?
        .ok_or_else(|| ApiError::unauthorized("the account no longer exists"))?;
    if req.current_password.len() > MAX_PASSWORD_LEN {
        return Err(ApiError::forbidden("current password is wrong"));
    }
    match state
        .passwords
        .verify(req.current_password, user.password_hash)
        .await
    {
        Err(_) => return Ok(busy()),
        Ok(false) => {
            state.throttle.failed(&c.sub, ip, Instant::now());
            return Err(ApiError::forbidden("current password is wrong"));
        }
        Ok(true) => {}
    }
    let hash = hash_for_api(&state, req.new_password).await?;
    state.store.set_password(&c.sub, &hash, now_us()).await?;
    state.liveness.invalidate();
    tracing::info!(user = %c.sub, "password changed; sessions ended");
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn hash_for_api(state: &AppState, password: String) -> Result<String, ApiError> {
    state.passwords.hash(password).await.map_err(|e| match e {
        super::AuthError::Busy => {
            ApiError::unavailable("too many password operations; retry shortly")
        }
        other => ApiError::internal(&other),
    })
}

/// Create a user (admin only).
#[utoipa::path(post, path = "/api/auth/users", tag = "auth", security(("bearer" = [])),
    request_body = CreateUserRequest,
    responses((status = 201, body = CreateUserResponse), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 415, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn create_user(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiJson(req): ApiJson<CreateUserRequest>,
) -> Result<(StatusCode, Json<CreateUserResponse>), ApiError> {
    c.require(allow::ADMIN)?;
    let username = path_username(&req.username)?;
    check_new_password(&req.password).map_err(ApiError::bad_request)?;
    let role = Role::from(req.role);
    let user = UserRecord {
        username: username.clone(),
        password_hash: hash_for_api(&state, req.password).await?,
        role: role.as_str().into(),
        created_us: now_us(),
        disabled_us: None,
        password_changed_us: None,
    };
    match state.store.create_user(&user).await {
        Ok(()) => {}
        Err(StoreError::Conflict(m)) => return Err(ApiError::conflict(m)),
        Err(e) => return Err(e.into()),
    }
    publish_change(&state, &c, &username, UserChangeKind::Created, Some(role)).await;
    Ok((
        StatusCode::CREATED,
        Json(CreateUserResponse { username, role }),
    ))
}

/// Announces an account change: `user.created` for a creation, `user.changed` otherwise.
async fn publish_change(
    state: &AppState,
    by: &Claims,
    username: &str,
    change: UserChangeKind,
    role: Option<Role>,
) {
    let event = UserEvent {
        username: username.to_owned(),
        role,
        change,
        by: by.sub.clone(),
    };
    if change == UserChangeKind::Created {
        state.publish::<UserCreated>(&event).await;
    } else {
        state.publish::<UserChanged>(&event).await;
    }
}

/// Users in name order (admin only).
#[utoipa::path(get, path = "/api/auth/users", tag = "auth", security(("bearer" = [])),
    params(ListParams),
    responses((status = 200, body = UserPage), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_users(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<UserPage>, ApiError> {
    c.require(allow::ADMIN)?;
    let limit = p.limit()?;
    let after = p.cursor.as_deref().map(path_username).transpose()?;
    let users = state.store.list_users(after.as_deref(), limit).await?;
    let next_cursor = next_cursor(&users, limit, |u| u.username.clone());
    Ok(Json(UserPage {
        items: users.into_iter().map(UserView::from).collect(),
        next_cursor,
    }))
}

/// One user (admin only).
#[utoipa::path(get, path = "/api/auth/users/{username}", tag = "auth", security(("bearer" = [])),
    params(("username" = String, Path, description = "case-insensitive", max_length = 64, pattern = "^[A-Za-z0-9._-]+$")),
    responses((status = 200, body = UserView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn get_user(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<UserView>, ApiError> {
    c.require(allow::ADMIN)?;
    let name = path_username(&name)?;
    state
        .store
        .get_user(&name)
        .await?
        .map(|u| Json(u.into()))
        .ok_or_else(|| ApiError::not_found(format!("no user {name}")))
}

fn account_change(r: AccountChange, name: &str) -> Result<(), ApiError> {
    match r {
        AccountChange::Done => Ok(()),
        AccountChange::NotFound => Err(ApiError::not_found(format!("no user {name}"))),
        AccountChange::LastAdmin => Err(ApiError::conflict(
            "this would leave no enabled admin; create or enable another admin first",
        )),
    }
}

/// Change a user's role or disable/enable it (admin only). Disabling or a new role ends the
/// user's sessions at once. Refused (409) if no enabled admin would be left.
#[utoipa::path(patch, path = "/api/auth/users/{username}", tag = "auth", security(("bearer" = [])),
    params(("username" = String, Path, max_length = 64, pattern = "^[A-Za-z0-9._-]+$")),
    request_body = UpdateUserRequest,
    responses((status = 200, body = UserView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 415, body = ErrorBody)))]
pub async fn update_user(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateUserRequest>,
) -> Result<Json<UserView>, ApiError> {
    c.require(allow::ADMIN)?;
    let name = path_username(&name)?;
    let change = UserChange {
        role: req.role.map(|r| Role::from(r).as_str().to_owned()),
        disabled: req.disabled,
    };
    account_change(
        state.store.update_user(&name, &change, now_us()).await?,
        &name,
    )?;
    state.liveness.invalidate();
    let what = match (req.role, req.disabled) {
        (_, Some(true)) => UserChangeKind::Disabled,
        (_, Some(false)) => UserChangeKind::Enabled,
        _ => UserChangeKind::Role,
    };
    tracing::info!(by = %c.sub, user = %name, ?what, "user changed");
    publish_change(&state, &c, &name, what, req.role.map(Role::from)).await;
    state
        .store
        .get_user(&name)
        .await?
        .map(|u| Json(u.into()))
        .ok_or_else(|| ApiError::not_found(format!("no user {name}")))
}

/// Delete a user (admin only): its sessions end at once. Refused (409) for the last enabled
/// admin.
#[utoipa::path(delete, path = "/api/auth/users/{username}", tag = "auth", security(("bearer" = [])),
    params(("username" = String, Path, max_length = 64, pattern = "^[A-Za-z0-9._-]+$")),
    responses((status = 204, description = "deleted"), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_user(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    c.require(allow::ADMIN)?;
    let name = path_username(&name)?;
    account_change(state.store.delete_user(&name).await?, &name)?;
    state.liveness.invalidate();
    state.throttle.forget_user(&name);
    tracing::info!(by = %c.sub, user = %name, "user deleted");
    publish_change(&state, &c, &name, UserChangeKind::Deleted, None).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Set a user's password (admin only; e.g. after a compromise). The user's sessions end.
#[utoipa::path(put, path = "/api/auth/users/{username}/password", tag = "auth",
    security(("bearer" = [])),
    params(("username" = String, Path, max_length = 64, pattern = "^[A-Za-z0-9._-]+$")),
    request_body = SetPasswordRequest,
    responses((status = 204, description = "set"), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 415, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn set_password(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<SetPasswordRequest>,
) -> Result<StatusCode, ApiError> {
    c.require(allow::ADMIN)?;
    let name = path_username(&name)?;
    check_new_password(&req.password).map_err(ApiError::bad_request)?;
    let hash = hash_for_api(&state, req.password).await?;
    account_change(
        state.store.set_password(&name, &hash, now_us()).await?,
        &name,
    )?;
    state.liveness.invalidate();
    state.throttle.forget_user(&name);
    tracing::info!(by = %c.sub, user = %name, "password set by an admin; sessions ended");
    publish_change(&state, &c, &name, UserChangeKind::Password, None).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Mint a service token for an agent (admin only). It is recorded, can be listed and revoked,
/// and may only ingest events of the agent it names.
#[utoipa::path(post, path = "/api/auth/service-tokens", tag = "auth", security(("bearer" = [])),
    request_body = ServiceTokenRequest,
    responses((status = 200, body = ServiceTokenResponse), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 415, body = ErrorBody)))]
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
    let id = uuid::Uuid::now_v7().to_string();
    let now = now_us();
    state
        .store
        .create_service_token(&ServiceTokenRecord {
            id: id.clone(),
            subject: subject.clone(),
            created_by: c.sub.clone(),
            created_us: now,
            expires_us: now + (ttl as i64) * 1_000_000,
            revoked_us: None,
        })
        .await?;
    let token = state
        .auth
        .issue_service(&subject, Some(Duration::from_secs(ttl)), Some(&id))
        .map_err(|e| ApiError::internal(&e))?;
    tracing::info!(by = %c.sub, %subject, %id, ttl, "service token issued");
    Ok(Json(ServiceTokenResponse {
        id,
        token,
        subject,
        expires_in: ttl,
    }))
}

/// Service tokens, newest first (admin only). The tokens themselves are never shown again.
#[utoipa::path(get, path = "/api/auth/service-tokens", tag = "auth", security(("bearer" = [])),
    params(ListParams),
    responses((status = 200, body = ServiceTokenPage), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_service_tokens(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<ServiceTokenPage>, ApiError> {
    c.require(allow::ADMIN)?;
    let limit = p.limit()?;
    let before = p.cursor.as_deref().map(token_id).transpose()?;
    let items = state
        .store
        .list_service_tokens(before.as_deref(), limit)
        .await?;
    let next_cursor = next_cursor(&items, limit, |t| t.id.clone());
    Ok(Json(ServiceTokenPage { items, next_cursor }))
}

/// A service token id: a UUID in canonical form.
fn token_id(s: &str) -> Result<String, ApiError> {
    uuid::Uuid::parse_str(s)
        .map(|u| u.to_string())
        .map_err(|_| ApiError::bad_request("a service token id is a UUID"))
}

/// Revoke a service token (admin only): it stops working at once.
#[utoipa::path(delete, path = "/api/auth/service-tokens/{id}", tag = "auth",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "the token's id")),
    responses((status = 200, body = ServiceTokenRecord), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn revoke_service_token(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ServiceTokenRecord>, ApiError> {
    c.require(allow::ADMIN)?;
    let id = token_id(&id)?;
    if state
        .store
        .revoke_service_token(&id, now_us())
        .await?
        .is_none()
    {
        return Err(ApiError::not_found(format!("no service token {id}")));
    }
    state.liveness.invalidate();
    tracing::info!(by = %c.sub, %id, "service token revoked");
    state
        .store
        .get_service_token(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no service token {id}")))
}
