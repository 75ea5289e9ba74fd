//! The gateway: the router of a process, the extractors that turn bad input into 4xx JSON, and
//! (in split mode) the reverse proxy that sends `/api/<service>/…` to the service's process.
//!
//! In the all-in-one mode the gateway mounts every service's routes directly; with
//! `--service gateway` it mounts auth and proxies everything else; with `--service NAME` a
//! process mounts only that service (plus the operations endpoints).

pub mod layers;
pub mod proxy;

use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{any, get};
use axum::{Json, Router, middleware};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tower_http::trace::TraceLayer;

use crate::auth::{Caller, allow};
use crate::error::{ApiError, ErrorBody};
use crate::service::ServiceName;
use crate::state::{AppState, StatsSnapshot};
use crate::{auth, openapi, ops, services};

/// A JSON body whose every parse failure is a 4xx JSON error (never axum's plain text).
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::bad_request(e.body_text())),
            Err(JsonRejection::JsonSyntaxError(e)) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                e.body_text(),
            )),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected Content-Type: application/json",
            )),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(
                ApiError::payload_too_large("request body exceeds max_body_bytes"),
            ),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// Query parameters with 400 JSON on failure.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| ApiError::bad_request(e.body_text()))
    }
}

/// Path parameters with 400 JSON on failure.
#[derive(Debug, Clone)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e: PathRejection| ApiError::bad_request(e.body_text()))
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

/// Builds the complete router of a process.
pub fn router(state: AppState) -> Router {
    let mut r = Router::new()
        .merge(ops::router())
        .route("/api/openapi.json", get(openapi::serve));
    let me = state.service;
    if me.runs(ServiceName::Gateway) {
        r = r
            .merge(auth::routes::router())
            .route("/api/gateway/services", get(services_status));
    }
    for svc in ServiceName::BACKENDS {
        if me.runs(svc) {
            r = r.merge(services::router(svc));
        } else if me == ServiceName::Gateway {
            r = r
                .route(&format!("/api/{svc}"), any(proxy::forward))
                .route(&format!("/api/{svc}/{{*rest}}"), any(proxy::forward));
        }
    }
    let r = r
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    layers::harden(r, &state)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), ops::track))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// One service's status as the gateway sees it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServiceView {
    pub service: String,
    /// Where it runs: `in-process` or the upstream URL.
    pub location: String,
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Status of every service (admin). In split mode the gateway asks each service over HTTP,
/// authenticating with its own service token.
#[utoipa::path(get, path = "/api/gateway/services", tag = "gateway", security(("bearer" = [])),
    responses((status = 200, body = [ServiceView]), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
pub async fn services_status(
    State(state): State<AppState>,
    Caller(c): Caller,
) -> Result<Json<Vec<ServiceView>>, ApiError> {
    c.require(allow::ADMIN)?;
    let mut out = Vec::new();
    for svc in ServiceName::BACKENDS {
        if state.service.runs(svc) {
            let snap: Option<StatsSnapshot> = state.stats.get(&svc).map(|s| s.snapshot());
            out.push(ServiceView {
                service: svc.to_string(),
                location: "in-process".into(),
                reachable: true,
                status: snap.and_then(|s| serde_json::to_value(s).ok()),
                error: None,
            });
            continue;
        }
        let base = state.config.upstream(svc);
        let url = format!("{base}/api/{svc}/status");
        let fetched = tokio::time::timeout(Duration::from_secs(3), proxy::get_json(&state, &url))
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
        let (reachable, status, error) = match fetched {
            Ok(v) => (true, Some(v), None),
            Err(e) => (false, None, Some(e)),
        };
        out.push(ServiceView {
            service: svc.to_string(),
            location: base,
            reachable,
            status,
            error,
        });
    }
    Ok(Json(out))
}
