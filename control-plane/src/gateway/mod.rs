//! The gateway: the router of a process and (in split mode) the reverse proxy that sends `/api/<service>/…` to the service's process.
//!
//! In the all-in-one mode the gateway mounts every service's routes directly; with
//! `--service gateway` it mounts auth and proxies everything else; with `--service NAME` a
//! process mounts only that service (plus the operations endpoints).

pub mod layers;
pub mod proxy;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{any, get};
use axum::{Extension, Json, Router, middleware};
use serde::Serialize;
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, allow};
use crate::http::{ApiError, ErrorBody};
use crate::service::ServiceName;
use crate::services::Hosted;
use crate::state::AppState;
use crate::{auth, openapi, ops, services};

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

/// Every route of the API, each with its OpenAPI path: operations, auth,
/// the gateway's own, and each service's of [`services::all`]. `/api/openapi.json` is built
/// from this (see [`openapi::document`]); a process mounts the parts it serves.
pub fn api() -> OpenApiRouter<AppState> {
    let mut r = common_routes().merge(gateway_routes());
    for svc in services::all() {
        r = r.merge(services::routes_of(&*svc, None));
    }
    r
}

/// What every process serves: health, readiness, metrics and the API document (which is not a
/// path of itself).
fn common_routes() -> OpenApiRouter<AppState> {
    ops::routes().route(openapi::PATH, get(openapi::serve))
}

/// What only the gateway serves: auth and the service overview.
fn gateway_routes() -> OpenApiRouter<AppState> {
    auth::routes::routes()
        .merge(crate::bus_routes::routes())
        .routes(routes!(services_status))
}

/// Builds the complete router of a process: every process serves the operations endpoints and
/// the API document, the gateway (or the all-in-one process) auth and the service overview, and
/// each service of `hosted` its routes. The gateway alone proxies every service it does not
/// host to its upstream.
pub fn router(state: AppState, hosted: Vec<Hosted>) -> Router {
    let hosted: Arc<[Hosted]> = hosted.into();
    let me = state.service;
    let mut r = common_routes();
    if me.runs(ServiceName::Gateway) {
        r = r.merge(gateway_routes());
    }
    for h in hosted.iter() {
        r = r.merge(services::routes_of(&*h.service, Some(h.stats.clone())));
    }
    if me == ServiceName::Gateway {
        for svc in ServiceName::backends() {
            r = r
                .route(&format!("/api/{svc}"), any(proxy::forward))
                .route(&format!("/api/{svc}/{{*rest}}"), any(proxy::forward));
        }
    }
    let (r, _) = r.layer(Extension(hosted)).split_for_parts();
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
    Extension(hosted): Extension<Arc<[Hosted]>>,
    Caller(c): Caller,
) -> Result<Json<Vec<ServiceView>>, ApiError> {
    c.require(allow::ADMIN)?;
    let mut out = Vec::new();
    for svc in ServiceName::backends() {
        if let Some(h) = hosted.iter().find(|h| h.service.name() == svc.as_str()) {
            out.push(ServiceView {
                service: svc.to_string(),
                location: "in-process".into(),
                reachable: true,
                status: serde_json::to_value(h.stats.snapshot()).ok(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The document holds nothing the router does not mount: every path is an operations
    /// endpoint, auth's, the bus's or the gateway's, or under the prefix of a service of the list; and
    /// every service has its status endpoint. (The other direction, every documented operation
    /// routed, is checked against a running router in `tests/api.rs`.)
    #[test]
    fn every_documented_path_has_an_owner_in_the_router() {
        let doc = openapi::document();
        let names: Vec<&str> = services::all().iter().map(|s| s.name()).collect();
        for path in doc.paths.paths.keys() {
            match path.strip_prefix("/api/").and_then(|r| r.split('/').next()) {
                None => assert!(["/health", "/ready", "/metrics"].contains(&path.as_str())),
                Some(owner) => assert!(
                    ["auth", "bus", "gateway"].contains(&owner) || names.contains(&owner),
                    "{path} belongs to no part of the router"
                ),
            }
        }
        for name in names {
            let status = format!("/api/{name}/status");
            assert!(doc.paths.paths.contains_key(&status), "{status}");
        }
    }
}
