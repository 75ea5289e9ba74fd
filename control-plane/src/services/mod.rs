//! The services: the [`Service`] seam every one of them implements, and [`all`], the one list of
//! them that start-up, the gateway's router and proxy, `/api/openapi.json`, `/metrics` and
//! `--service` parsing iterate.
//!
//! Every service of the list is implemented. A new one may start as a [`Placeholder`]: it has
//! the status endpoint every service gets and listens on the bus (so split deployments can be
//! wired and tested end to end), and says plainly in its status that it does nothing else yet.
//!
//! A service lives in `services/<name>/` and owns its state: what a handler needs is given to
//! its routes by `Service::routes` (an axum `Extension` set once the service started), never put
//! in [`AppState`]. A service that calls another one (ja4 resolving identities, ja4's uplink
//! asking spire) holds that service's handle, taken explicitly while starting (for example
//! [`spire::handle`]), shared by every service of the process through [`Host::shared`].

pub mod alert;
pub mod correlation;
pub mod identity;
pub mod ja4;
pub mod policy;
pub mod spire;
pub mod threat;

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, allow};
use crate::bus::BusMessage;
use crate::bus::durable::{Ack, Batch, Consumer, Handler, HandlerFuture};
use crate::bus::listen::{OnLive, Received};
use crate::bus::log::{DurableTopic, FingerprintEvents};
use crate::bus::topics::{ServiceStart, ServiceStarted};
use crate::http::{ApiError, ErrorBody};
use crate::state::AppState;
use crate::store::expiry::Aging;

/// Every service of the control plane, in seed-port order (the gateway, port 3000, is not a
/// service of this list: it is the process that mounts them). Adding a service takes its folder
/// `services/<name>/` and one line here.
///
/// Each call builds fresh, unstarted values: a process starts the ones it hosts, and the OpenAPI
/// document is read from unstarted ones (a gateway documents services running elsewhere).
pub fn all() -> Vec<Arc<dyn Service>> {
    vec![
        Arc::new(ja4::Ja4::default()),
        Arc::new(spire::SpireService::default()),
        Arc::new(correlation::CorrelationService::default()),
        Arc::new(identity::IdentityService::default()),
        Arc::new(policy::PolicyService::default()),
        Arc::new(alert::AlertService::default()),
        Arc::new(threat::ThreatService::default()),
    ]
}

/// A boxed future, so [`Service`] stays usable as `dyn Service` (the list holds trait objects).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a service could not start; the service's own error, boxed so the seam stays one trait.
pub type ServiceError = Box<dyn std::error::Error + Send + Sync>;

/// Whether a service does its job or is still a skeleton, as its status endpoint reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Implementation {
    Ok,
    Placeholder,
}

impl Implementation {
    pub fn as_str(self) -> &'static str {
        match self {
            Implementation::Ok => "ok",
            Implementation::Placeholder => "placeholder",
        }
    }
}

/// One service of the control plane: what it is called, where it listens alone, what it does,
/// its HTTP API and its background work. Everything outside `services/<name>/` reaches a
/// service through this trait and [`all`].
pub trait Service: Send + Sync + 'static {
    /// The name in `--service NAME`, `/api/<name>/…`, `upstreams.<name>` and the bus origin.
    fn name(&self) -> &'static str;

    /// The port this service listens on when it runs alone and nothing else is configured.
    fn seed_port(&self) -> u16;

    /// One line for the status endpoint and the OpenAPI tag.
    fn description(&self) -> &'static str;

    /// Placeholders say so in their status, so nobody mistakes them for the real thing.
    fn implementation(&self) -> Implementation {
        Implementation::Ok
    }

    /// The service's routes (under `/api/<name>/`), each registered with its OpenAPI path in
    /// one call (`utoipa_axum::routes!`), so the document cannot drift from the router. Also
    /// called on an unstarted service to build the document: what the handlers need from the
    /// started service is added as an `Extension` only once [`Service::start`] set it.
    fn routes(&self) -> OpenApiRouter<AppState> {
        OpenApiRouter::new()
    }

    /// Loads the service's state and starts its background work, in a process that hosts it.
    /// Tasks go to [`Host::tasks`]; they stop when [`Host::shutdown`] turns true.
    fn start<'a>(&'a self, host: &'a mut Host) -> BoxFuture<'a, Result<(), ServiceError>> {
        let _ = host;
        Box::pin(async { Ok(()) })
    }

    /// Appends the service's own lines to `/metrics` (Prometheus text format). Called only on a
    /// started service; must stay quick (a scrape waits for it).
    fn metrics<'a>(&'a self, state: &'a AppState, out: &'a mut String) -> BoxFuture<'a, ()> {
        let _ = (state, out);
        Box::pin(async {})
    }

    /// The UDP address the service bound, if any (the ja4 service's agent uplink), for the
    /// binary's log and the tests.
    fn udp_addr(&self) -> Option<SocketAddr> {
        None
    }
}

/// A service that is not built yet: the status endpoint and bus listener every service gets,
/// nothing else. Its description says so.
#[derive(Debug, Clone, Copy)]
pub struct Placeholder {
    pub name: &'static str,
    pub seed_port: u16,
    pub description: &'static str,
}

impl Service for Placeholder {
    fn name(&self) -> &'static str {
        self.name
    }
    fn seed_port(&self) -> u16 {
        self.seed_port
    }
    fn description(&self) -> &'static str {
        self.description
    }
    fn implementation(&self) -> Implementation {
        Implementation::Placeholder
    }

    /// Consumes `fingerprint.events` durably, counting events (see [`count_events_durably`]).
    fn start<'a>(&'a self, host: &'a mut Host) -> BoxFuture<'a, Result<(), ServiceError>> {
        count_events_durably(host, self.name);
        Box::pin(async { Ok(()) })
    }
}

/// Gives `routes` the started service's `handle` as an axum `Extension` (how its handlers reach
/// the service's state), or leaves them as they are on an unstarted service, whose routes only
/// document it.
pub fn with_handle<T: Clone + Send + Sync + 'static>(
    routes: OpenApiRouter<AppState>,
    handle: Option<&T>,
) -> OpenApiRouter<AppState> {
    match handle {
        Some(h) => routes.layer(Extension(h.clone())),
        None => routes,
    }
}

/// What a service gets while starting: the process's shared state, the shutdown signal, its
/// bus counters, and the handles of other services already loaded in this process.
#[derive(Debug)]
pub struct Host {
    pub app: AppState,
    pub shutdown: watch::Receiver<bool>,
    /// The bus counters of the service being started (its status endpoint shows them).
    pub stats: Arc<ServiceStats>,
    /// Background tasks, awaited at shutdown.
    pub tasks: Vec<JoinHandle<()>>,
    /// One value per type: handles that several services of one process use (the spire CA, the
    /// identity entries), loaded once by whichever service needs them first.
    shared: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl Host {
    pub fn new(app: AppState, shutdown: watch::Receiver<bool>) -> Host {
        Host {
            app,
            shutdown,
            stats: Arc::default(),
            tasks: Vec::new(),
            shared: HashMap::new(),
        }
    }

    /// Whether this process hosts the service called `name`.
    pub fn hosts(&self, name: &str) -> bool {
        self.app.service.runs_named(name)
    }

    /// The shared handle of type `T`, if a service of this process loaded it already.
    pub fn shared<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.shared
            .get(&TypeId::of::<T>())
            .and_then(|v| v.clone().downcast::<T>().ok())
    }

    /// Makes `handle` the one [`Host::shared`] returns for its type from now on.
    pub fn share<T: Any + Send + Sync>(&mut self, handle: Arc<T>) {
        self.shared.insert(TypeId::of::<T>(), handle);
    }
}

impl Host {
    /// Runs `pass` on the retention schedule (every `retention_interval_secs`, the first time a
    /// minute after start, so a restart loop cannot turn into a deletion loop) until shutdown.
    /// A failed pass is logged and tried again next time.
    pub fn every_retention<F, Fut>(&mut self, what: &'static str, pass: F)
    where
        F: Fn(AppState) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), crate::store::StoreError>> + Send,
    {
        let state = self.app.clone();
        let every = Duration::from_secs(state.config.retention_interval_secs.max(60));
        self.tasks.push(spawn_every_after(
            Duration::from_secs(60),
            every,
            self.shutdown.clone(),
            what,
            move || pass(state.clone()),
        ));
    }

    /// Expires `tables` on the retention schedule when `findings_retention_days` is set.
    pub fn expire_findings(&mut self, tables: &'static [Aging]) {
        if self.app.config.findings_retention_days > 0 {
            self.every_retention("retention of findings", move |state| async move {
                expire_findings(&state, tables).await.map(drop)
            });
        }
    }
}

/// Deletes the rows of `tables` not seen for `findings_retention_days`; returns how many went
/// per table.
pub async fn expire_findings(
    state: &AppState,
    tables: &[Aging],
) -> Result<Vec<(&'static str, u64)>, crate::store::StoreError> {
    let age = i64::from(state.config.findings_retention_days) * 86_400_000_000;
    let before = crate::store::now_us() - age;
    let mut out = Vec::new();
    for t in tables {
        let n = state.store.expire(t, before).await?;
        tracing::info!(table = t.table, deleted = n, "findings retention pass");
        out.push((t.table, n));
    }
    Ok(out)
}

/// A service this process runs, with its bus counters.
#[derive(Clone)]
pub struct Hosted {
    pub service: Arc<dyn Service>,
    pub stats: Arc<ServiceStats>,
}

impl std::fmt::Debug for Hosted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hosted")
            .field("service", &self.service.name())
            .finish_non_exhaustive()
    }
}

/// A service failed to start.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct StartFailed {
    pub service: &'static str,
    #[source]
    pub source: ServiceError,
}

/// Starts every service of [`all`] that this process hosts, in list order: a live bus
/// subscription feeding its status counters, then the service's own [`Service::start`], then
/// its announcement on the bus. Returns the started services and every background task.
pub async fn start(
    app: &AppState,
    shutdown: watch::Receiver<bool>,
) -> Result<(Vec<Hosted>, Vec<JoinHandle<()>>), StartFailed> {
    let mut host = Host::new(app.clone(), shutdown);
    let mut hosted = Vec::new();
    for service in all() {
        let name = service.name();
        if !host.hosts(name) {
            continue;
        }
        let stats = Arc::new(ServiceStats::default());
        host.tasks.push(
            app.listener("service status", host.shutdown.clone())
                .spawn(CountLive {
                    stats: stats.clone(),
                    state: app.clone(),
                }),
        );
        host.stats = stats.clone();
        service
            .start(&mut host)
            .await
            .map_err(|source| StartFailed {
                service: name,
                source,
            })?;
        app.publish_from::<ServiceStarted>(
            &format!("{name}/{}", app.instance),
            &ServiceStart {
                service: name.to_owned(),
                instance: app.instance,
            },
        )
        .await;
        hosted.push(Hosted { service, stats });
    }
    Ok((hosted, host.tasks))
}

/// The routes of one service: the status endpoint every service has, then its own. `stats` (the
/// service's bus counters) is given when this process runs the service; without it the routes
/// serve only to document the service.
pub fn routes_of(
    service: &dyn Service,
    stats: Option<Arc<ServiceStats>>,
) -> OpenApiRouter<AppState> {
    let name = service.name();
    let mut status_route = OpenApiRouter::new().routes(routes!(status));
    // Every service shares one handler: give each operation its own id, as OpenAPI requires.
    for item in status_route.get_openapi_mut().paths.paths.values_mut() {
        if let Some(op) = item.get.as_mut() {
            op.operation_id = Some(format!("{name}_status"));
        }
    }
    if let Some(stats) = stats {
        status_route = status_route.layer(Extension(StatusOf {
            name,
            implementation: service.implementation(),
            description: service.description(),
            stats,
        }));
    }
    OpenApiRouter::new()
        .nest(&format!("/api/{name}"), status_route)
        .merge(service.routes())
}

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

/// What the status handler knows of its service.
#[derive(Debug, Clone)]
struct StatusOf {
    name: &'static str,
    implementation: Implementation,
    description: &'static str,
    stats: Arc<ServiceStats>,
}

/// Status of the service: implementation state and what it saw on the bus.
#[utoipa::path(get, path = "/status", tag = "services", security(("bearer" = [])),
    responses((status = 200, body = ServiceStatus), (status = 401, body = ErrorBody)))]
async fn status(
    State(state): State<AppState>,
    Extension(svc): Extension<StatusOf>,
    Caller(c): Caller,
) -> Result<Json<ServiceStatus>, ApiError> {
    c.require(allow::READ)?;
    let positions = crate::ops::bus_positions(&state).await.unwrap_or_default();
    let consumers = state
        .consumers
        .status(&positions)
        .into_iter()
        .filter(|c| c.group == svc.name)
        .collect();
    Ok(Json(ServiceStatus {
        service: svc.name.to_owned(),
        status: svc.implementation.as_str().into(),
        description: svc.description.into(),
        instance: state.instance.to_string(),
        bus_backend: state.bus.backend().into(),
        bus: svc.stats.snapshot(),
        consumers,
    }))
}

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

/// Joins the consumer group `name` of `fingerprint.events` with a handler that counts, so that
/// split deployments, replicas and the bus's guarantees are exercised end to end before the
/// service does real work.
fn count_events_durably(host: &mut Host, name: &'static str) {
    let handler = Arc::new(CountEvents(host.stats.clone()));
    consume::<FingerprintEvents>(host, name, handler);
}

/// Joins consumer group `group` of durable topic `T` with `handler`, as a task of the service
/// being started (its counters on `/metrics` and the service's status).
pub fn consume<T: DurableTopic>(host: &mut Host, group: &str, handler: Arc<dyn Handler<T>>) {
    let app = &host.app;
    let metrics = app.consumers.register(group, T::NAME);
    host.tasks.push(
        Consumer::<T>::new(
            app.store.clone(),
            app.wakeups.clone(),
            group,
            &app.instance.to_string(),
            app.config.bus.consumer_options(),
            handler,
            metrics,
        )
        .spawn(host.shutdown.clone()),
    );
}

/// Runs `work` every `period` (the first time at once) until shutdown, logging
/// its failures as `what`: how a service re-reads state other processes change (threat
/// indicators, policy sets).
pub fn spawn_every<F, Fut, E>(
    period: std::time::Duration,
    shutdown: watch::Receiver<bool>,
    what: &'static str,
    work: F,
) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: std::fmt::Display,
{
    spawn_every_after(Duration::ZERO, period, shutdown, what, work)
}

/// [`spawn_every`], the first time `first` after start.
pub fn spawn_every_after<F, Fut, E>(
    first: Duration,
    period: Duration,
    mut shutdown: watch::Receiver<bool>,
    what: &'static str,
    work: F,
) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: std::fmt::Display,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + first, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped(&mut shutdown) => return,
            }
            if let Err(e) = work().await {
                tracing::warn!(error = %e, "{what} failed");
            }
        }
    })
}

/// Resolves once shutdown is requested (see [`crate::bus::listen::stopped`]).
pub(crate) use crate::bus::listen::stopped;

/// A service's live listener: counts what it sees for its status endpoint.
struct CountLive {
    stats: Arc<ServiceStats>,
    state: AppState,
}

impl OnLive for CountLive {
    async fn message(&mut self, m: Received<'_>) {
        self.state
            .metrics
            .bus_received
            .fetch_add(1, Ordering::Relaxed);
        self.stats.record(&m);
    }
}

/// Bus activity seen by one service: for its status endpoint, and proof that split processes
/// see each other's messages.
#[derive(Debug, Default)]
pub struct ServiceStats {
    seen: Mutex<BTreeMap<String, u64>>,
    origins: Mutex<BTreeSet<String>>,
    /// Fingerprint events handled through the durable work queue.
    pub work_events: AtomicU64,
}

/// Serializable snapshot of [`ServiceStats`].
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct StatsSnapshot {
    /// Live messages seen, per topic.
    pub seen: BTreeMap<String, u64>,
    /// Distinct publishers (service/instance) seen.
    pub origins: Vec<String>,
    pub work_events: u64,
}

impl ServiceStats {
    pub fn record(&self, msg: &BusMessage) {
        *self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(msg.topic.clone())
            .or_default() += 1;
        let mut o = self.origins.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: a long-running process sees few distinct publishers, but never trust that.
        if o.len() < 256 {
            o.insert(msg.origin.clone());
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            seen: self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            origins: self
                .origins
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect(),
            work_events: self.work_events.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed ports operators and packaging rely on (docs/ARCHITECTURE.md); the gateway
    /// holds 3000.
    const SEED_TABLE: [(&str, u16); 7] = [
        ("ja4", 3001),
        ("spire", 3002),
        ("correlation", 3003),
        ("identity", 3004),
        ("policy", 3005),
        ("alert", 3006),
        ("threat", 3007),
    ];

    #[test]
    fn the_list_matches_the_seed_table_with_unique_names_and_ports() {
        let list: Vec<(&str, u16)> = all().iter().map(|s| (s.name(), s.seed_port())).collect();
        assert_eq!(list, SEED_TABLE);
        let mut names: Vec<&str> = list
            .iter()
            .map(|(n, _)| *n)
            .chain(["all", "gateway"])
            .collect();
        let mut ports: Vec<u16> = list
            .iter()
            .map(|(_, p)| *p)
            .chain([crate::service::GATEWAY_SEED_PORT])
            .collect();
        let (n, p) = (names.len(), ports.len());
        names.sort_unstable();
        names.dedup();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(names.len(), n, "names must be unique");
        assert_eq!(ports.len(), p, "seed ports must be unique");
        for (name, _) in list {
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
                "{name}: a service name is a path segment and an env-var suffix"
            );
        }
    }
}
