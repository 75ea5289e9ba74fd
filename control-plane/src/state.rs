//! The state every handler shares.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde::Serialize;

use crate::auth::AuthKeys;
use crate::bus::{Bus, BusMessage};
use crate::config::Config;
use crate::ops::Metrics;
use crate::service::ServiceName;
use crate::store::Store;

/// HTTP client used by the gateway's proxy and for inter-service calls.
pub type HttpClient = Client<HttpConnector, Body>;

/// Cheap to clone: one `Arc`.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Inner>);

#[derive(Debug)]
pub struct Inner {
    pub config: Config,
    pub service: ServiceName,
    /// Identifies this process on the bus (one UUIDv7 per start).
    pub instance: uuid::Uuid,
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    /// Wakes this process's durable consumers when their topics get rows.
    pub wakeups: Arc<crate::bus::durable::Wakeups>,
    /// This process's durable consumers and their counters.
    pub consumers: crate::bus::durable::ConsumerRegistry,
    pub auth: AuthKeys,
    pub metrics: Metrics,
    /// Argon2 hash of a random password, verified against when a login names an unknown user.
    pub dummy_hash: String,
    /// The bounded password-hashing pool (logins, password changes).
    pub passwords: crate::auth::passwords::Passwords,
    /// Failed-login back-off per source and per user.
    pub throttle: crate::auth::throttle::LoginThrottle,
    /// Whether signed tokens are still good (sessions, users, service tokens).
    pub liveness: crate::auth::live::Liveness,
    /// Reverse proxies whose `X-Forwarded-For` is believed (`auth.trusted_proxies`).
    pub trusted_proxies: Vec<crate::auth::client_ip::Cidr>,
    /// What each service hosted by this process has seen on the bus.
    pub stats: BTreeMap<ServiceName, Arc<ServiceStats>>,
    pub http: HttpClient,
    /// The spire CA and revocation set, when this process runs the spire or ja4 service.
    pub spire: Option<Arc<crate::services::spire::Spire>>,
    /// Registration entries for resolving workload identities on ingest (loaded when this
    /// process runs the ja4 or identity service; empty otherwise).
    pub identity: Arc<crate::services::identity::Identity>,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(inner: Inner) -> Self {
        AppState(Arc::new(inner))
    }

    /// `service/instance`, the origin stamped on published messages.
    pub fn origin(&self) -> String {
        format!("{}/{}", self.service, self.instance)
    }

    /// Publishes, counting and logging failures instead of failing the caller: by the time
    /// anything is published, the state change it reports is already committed.
    pub async fn publish(&self, msg: BusMessage) -> bool {
        let msg = Arc::new(msg);
        match self.bus.publish(&msg).await {
            Ok(()) => {
                self.metrics.bus_published.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                self.metrics.bus_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(topic = %msg.topic, error = %e, "bus publish failed");
                false
            }
        }
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
