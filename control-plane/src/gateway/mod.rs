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

/// A JSON object body whose every parse failure is a 4xx JSON error (never axum's plain
/// text). Every request body of this API is an object: arrays are refused before parsing
/// (serde would otherwise read `[a, b]` as a struct's fields in order).
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json_type = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<mime_type::Essence>().ok())
            .is_some_and(|m| m.is_json());
        if !json_type {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected Content-Type: application/json",
            ));
        }
        let bytes = match axum::body::Bytes::from_request(req, state).await {
            Ok(b) => b,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::payload_too_large(
                    "request body exceeds max_body_bytes",
                ));
            }
            Err(e) => return Err(ApiError::bad_request(e.body_text())),
        };
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                "the body must be a JSON object",
            ));
        }
        match Json::<T>::from_bytes(&bytes) {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::JsonSyntaxError(e)) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                e.body_text(),
            )),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// JSON numbers for integer fields. JSON has one number type: `300.0` is the integer 300 to
/// JSON Schema (and to clients that only have doubles), but serde refuses it for a `u64`.
pub mod int {
    use serde::{Deserialize, Deserializer};

    /// An optional non-negative integer that may be written with a zero fraction.
    pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
            return Ok(None);
        };
        if let Some(v) = n.as_u64() {
            return Ok(Some(v));
        }
        match n.as_f64() {
            Some(f) if f.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(&f) => {
                Ok(Some(f as u64))
            }
            _ => Err(serde::de::Error::custom(format!(
                "{n} is not a non-negative integer"
            ))),
        }
    }
}

/// `type/subtype` of a Content-Type, without parameters.
mod mime_type {
    pub struct Essence(String);
    impl std::str::FromStr for Essence {
        type Err = ();
        fn from_str(s: &str) -> Result<Self, ()> {
            let e = s
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if e.contains('/') {
                Ok(Essence(e))
            } else {
                Err(())
            }
        }
    }
    impl Essence {
        /// `application/json` or any `…/…+json`, as axum's `Json` accepts.
        pub fn is_json(&self) -> bool {
            self.0 == "application/json"
                || (self.0.starts_with("application/") && self.0.ends_with("+json"))
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
            .merge(crate::bus_routes::router())
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
