//! The services. `ja4`, `spire` and `identity` are implemented; the others are **placeholders** for now: each mounts a
//! status endpoint and listens on the bus (so split deployments can be wired and tested end to
//! end), and says plainly in its status that it does nothing else yet.

pub mod alert;
pub mod correlation;
pub mod identity;
pub mod ja4;
pub mod policy;
pub mod spire;
pub mod threat;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::auth::{Caller, allow};
use crate::bus::durable::{Ack, Batch, Consumer, Handler, HandlerFuture};
use crate::bus::log::{DurableTopic, FingerprintEvents};
use crate::bus::{BusMessage, topics};
use crate::error::{ApiError, ErrorBody};
use crate::service::ServiceName;
use crate::state::{AppState, ServiceStats, StatsSnapshot};

/// What a service's status endpoint reports.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceStatus {
    pub service: String,
    /// `ok` for implemented services, `placeholder` for those that only exist as a skeleton.
    pub status: String,
    pub description: String,
    pub instance: String,
    pub bus_backend: String,
    pub bus: StatsSnapshot,
    /// The service's durable consumers in this process, with their groups' positions.
    pub consumers: Vec<crate::bus::durable::ConsumerStatus>,
}

/// One-line description and implementation state of a service.
pub fn describe(svc: ServiceName) -> (&'static str, &'static str) {
    match svc {
        ServiceName::Ja4 => ("ok", ja4::DESCRIPTION),
        ServiceName::Spire => ("ok", spire::DESCRIPTION),
        ServiceName::Correlation => ("placeholder", correlation::DESCRIPTION),
        ServiceName::Identity => ("ok", identity::DESCRIPTION),
        ServiceName::Policy => ("placeholder", policy::DESCRIPTION),
        ServiceName::Alert => ("placeholder", alert::DESCRIPTION),
        ServiceName::Threat => ("placeholder", threat::DESCRIPTION),
        ServiceName::All | ServiceName::Gateway => ("ok", "gateway"),
    }
}

/// The routes of one backend service.
pub fn router(svc: ServiceName) -> Router<AppState> {
    let status_route = Router::new().route(
        &format!("/api/{svc}/status"),
        get(move |state: State<AppState>, caller: Caller| status(svc, state, caller)),
    );
    match svc {
        ServiceName::Ja4 => status_route.merge(ja4::router()),
        ServiceName::Spire => status_route.merge(spire::router()),
        ServiceName::Identity => status_route.merge(identity::routes::router()),
        _ => status_route,
    }
}

/// Status of one service: implementation state and what it saw on the bus.
#[utoipa::path(get, path = "/api/{service}/status", tag = "services", security(("bearer" = [])),
    params(("service" = String, Path, description = "ja4, spire, correlation, identity, policy, alert or threat", pattern = "^(ja4|spire|correlation|identity|policy|alert|threat)$")),
    responses((status = 200, body = ServiceStatus), (status = 401, body = ErrorBody)))]
pub async fn status(
    svc: ServiceName,
    State(state): State<AppState>,
    Caller(c): Caller,
) -> Result<Json<ServiceStatus>, ApiError> {
    c.require(allow::READ)?;
    let (st, desc) = describe(svc);
    let positions = crate::ops::bus_positions(&state).await.unwrap_or_default();
    let consumers = state
        .consumers
        .status(&positions)
        .into_iter()
        .filter(|c| c.group == svc.as_str())
        .collect();
    let bus = state
        .stats
        .get(&svc)
        .map(|s| s.snapshot())
        .unwrap_or_else(|| ServiceStats::default().snapshot());
    Ok(Json(ServiceStatus {
        service: svc.to_string(),
        status: st.into(),
        description: desc.into(),
        instance: state.instance.to_string(),
        bus_backend: state.bus.backend().into(),
        bus,
        consumers,
    }))
}

/// Starts the background work of every service this process hosts: a live bus subscription per
/// service (feeding its status counters) and, for correlation, the durable work queue of
/// fingerprint events. Announces each service on the bus.
pub async fn start(state: &AppState, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for (svc, stats) in &state.stats {
        tasks.push(spawn_listener(
            state.bus.subscribe(),
            stats.clone(),
            state.clone(),
            shutdown.clone(),
        ));
        if PLACEHOLDERS.contains(svc) {
            tasks.push(spawn_placeholder_consumer(
                state,
                *svc,
                stats.clone(),
                shutdown.clone(),
            ));
        }
        state
            .publish(BusMessage::new(
                topics::SERVICE_STARTED,
                &format!("{svc}/{}", state.instance),
                &serde_json::json!({"service": svc.as_str(), "instance": state.instance}),
            ))
            .await;
    }
    tasks.extend(identity::start(state, shutdown.clone()));
    tasks.extend(spire::start(state, shutdown));
    tasks
}

/// The services that do no work yet but consume fingerprint events durably, so that split
/// deployments, replicas and the bus's guarantees are exercised end to end before they do.
const PLACEHOLDERS: [ServiceName; 4] = [
    ServiceName::Correlation,
    ServiceName::Policy,
    ServiceName::Alert,
    ServiceName::Threat,
];

/// A placeholder's work: counting the events it was handed (its only effect, the handled
/// count, is committed with the cursor by the consumer).
struct CountEvents(Arc<ServiceStats>);

impl Handler<FingerprintEvents> for CountEvents {
    fn handle<'a>(&'a self, batch: &'a Batch<FingerprintEvents>) -> HandlerFuture<'a> {
        Box::pin(async move {
            let n = batch.items().count() as u64;
            self.0.work_events.fetch_add(n, Ordering::Relaxed);
            Ok(Ack::Done)
        })
    }
}

fn spawn_placeholder_consumer(
    state: &AppState,
    svc: ServiceName,
    stats: Arc<ServiceStats>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let metrics = state
        .consumers
        .register(svc.as_str(), FingerprintEvents::NAME);
    Consumer::<FingerprintEvents>::new(
        state.store.clone(),
        state.wakeups.clone(),
        svc.as_str(),
        &state.instance.to_string(),
        state.config.bus.consumer_options(),
        Arc::new(CountEvents(stats)),
        metrics,
    )
    .spawn(shutdown)
}

/// Resolves once shutdown is requested. Its output is a plain `()`, so a `select!` using it holds
/// no watch guard (which is not `Send`) while other branches await.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn spawn_listener(
    mut rx: broadcast::Receiver<Arc<BusMessage>>,
    stats: Arc<ServiceStats>,
    state: AppState,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let m = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                m = rx.recv() => m,
            };
            match m {
                Ok(m) => {
                    state.metrics.bus_received.fetch_add(1, Ordering::Relaxed);
                    stats.record(&m);
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(skipped = n, "bus listener lagged");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}
