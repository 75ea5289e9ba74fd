//! The state every handler shares: the process's infrastructure (configuration, store, bus,
//! authentication, metrics). It names no service: a service's own state lives in its folder
//! (see [`crate::services`]).

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::sync::watch;

use crate::auth::AuthKeys;
use crate::bus::listen::Listener;
use crate::bus::topics::{Encodes, LiveTopic};
use crate::bus::{self, Bus};
use crate::config::Config;
use crate::metrics::Metrics;
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
    pub http: HttpClient,
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

    /// Publishes `payload` on topic `T` from this process ([`AppState::origin`]); see
    /// [`AppState::publish_from`].
    pub async fn publish<T: LiveTopic>(&self, payload: &impl Encodes<T>) -> bool {
        self.publish_from::<T>(&self.origin(), payload).await
    }

    /// Publishes `payload` on topic `T`, counting and logging failures instead of failing the
    /// caller: by the time anything is published, the state change it reports is already
    /// committed. Returns whether it went out.
    pub async fn publish_from<T: LiveTopic>(
        &self,
        origin: &str,
        payload: &impl Encodes<T>,
    ) -> bool {
        match bus::publish::<T>(&*self.bus, origin, payload).await {
            Ok(()) => {
                self.metrics.bus_published.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                self.metrics.bus_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(topic = T::NAME, error = %e, "bus publish failed");
                false
            }
        }
    }

    /// A listener of this process's live bus (subscribed now), counting into its metrics; see
    /// [`bus::listen`]. `name` says what it is for, in logs.
    pub fn listener(&self, name: &'static str, shutdown: watch::Receiver<bool>) -> Listener {
        Listener::new(name, &*self.bus, self.metrics.bus_live.clone(), shutdown)
    }
}
