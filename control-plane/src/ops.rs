//! Operations endpoints on every service: `/health` (the process is alive), `/ready` (its store
//! and bus answer), `/metrics` (Prometheus text format: the process's
//! [`crate::metrics::Metrics`], then each hosted service's own lines).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::services::Hosted;
use crate::state::AppState;

/// Middleware recording every response's status class and latency.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let resp = next.run(req).await;
    state.metrics.observe(resp.status(), start.elapsed());
    resp
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: &'static str,
    pub service: String,
    pub version: &'static str,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    pub ready: bool,
    pub store: Dependency,
    pub bus: Dependency,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Dependency {
    pub backend: &'static str,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The routes with their OpenAPI paths. `/metrics` needs the services this process hosts (an
/// `Extension`, added by the gateway's router).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(metrics))
}

/// Liveness: answers as long as the process serves HTTP.
#[utoipa::path(get, path = "/health", tag = "ops", responses((status = 200, body = Health)))]
pub async fn health(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        service: state.service.to_string(),
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// Readiness: 200 when the store and the bus answer within two seconds, else 503.
#[utoipa::path(get, path = "/ready", tag = "ops",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn ready(State(state): State<AppState>) -> Response {
    let limit = Duration::from_secs(2);
    let store = match tokio::time::timeout(limit, state.store.ping()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("timed out".to_owned()),
    };
    let bus = match tokio::time::timeout(limit, state.bus.ping()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("timed out".to_owned()),
    };
    let body = Readiness {
        ready: store.is_none() && bus.is_none(),
        store: Dependency {
            backend: state.store.backend(),
            ok: store.is_none(),
            error: store,
        },
        bus: Dependency {
            backend: state.bus.backend(),
            ok: bus.is_none(),
            error: bus,
        },
    };
    let code = if body.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// Every consumer group's position, unless the store takes over a second to say.
pub async fn bus_positions(state: &AppState) -> Option<Vec<crate::store::bus::GroupPosition>> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1000;
    let ttl = state.config.bus.lease_ttl.0.as_micros() as i64;
    tokio::time::timeout(Duration::from_secs(1), state.store.bus_positions(now, ttl))
        .await
        .ok()?
        .ok()
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, content_type = "text/plain")))]
pub async fn metrics(
    State(state): State<AppState>,
    Extension(hosted): Extension<Arc<[Hosted]>>,
) -> Response {
    let mut text = state.metrics.render(
        state.service.as_str(),
        state.store.backend(),
        state.bus.backend(),
    );
    if !state.consumers.all().is_empty() {
        let positions = bus_positions(&state).await.unwrap_or_default();
        text.push_str(&state.consumers.render(&positions));
    }
    if let Some(r) = state.store.replica_reads() {
        let _ = writeln!(
            text,
            "# HELP hais_store_replica_reads_total Roll-up reads (search, detail, top, inventory) by where they ran: the read replica once it had replayed past the read's fold, else the primary.\n\
             # TYPE hais_store_replica_reads_total counter\n\
             hais_store_replica_reads_total{{server=\"replica\"}} {}\n\
             hais_store_replica_reads_total{{server=\"primary\"}} {}",
            r.replica, r.primary
        );
    }
    let _ = writeln!(
        text,
        "# HELP hais_login_busy_total Logins and password changes refused (503) because every hashing slot and queue place was taken.\n\
         # TYPE hais_login_busy_total counter\nhais_login_busy_total {}",
        state.passwords.busy_total()
    );
    for h in hosted.iter() {
        h.service.metrics(&state, &mut text).await;
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
