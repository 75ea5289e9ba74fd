//! Start-up and shutdown of one control-plane process.
//!
//! Start-up order: store (migrations applied), bus, signing keys, admin bootstrap, background
//! tasks, router. Shutdown order: stop accepting connections and let in-flight requests (and
//! so in-flight ingest transactions) finish, within `shutdown_grace_secs`; then stop background
//! tasks; then close the store, which waits for queries still running.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::{self, AuthError, AuthKeys};
use crate::bus::{self, BusError};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::server::{self, Server, tls::ReloadingCert};
use crate::service::ServiceName;
use crate::services;
use crate::state::{AppState, Inner};
use crate::store::{self, StoreError};

/// Why the process could not start or serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("opening the store failed: {0}")]
    Store(#[from] StoreError),
    #[error("connecting the event bus failed: {0}")]
    Bus(#[from] BusError),
    #[error("setting up authentication failed: {0}")]
    Auth(#[from] AuthError),
    #[error("serving HTTP failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("starting the {} service failed: {}", .0.service, .0)]
    Service(#[from] services::StartFailed),
    #[error("loading the TLS certificate failed: {0}")]
    Tls(#[from] crate::server::tls::TlsError),
}

/// A started process: state, router and background tasks.
#[derive(Debug)]
pub struct App {
    pub state: AppState,
    router: Router,
    shutdown_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// The admin password generated at first start, if any (tests read it; the binary prints it).
    pub generated_admin_password: Option<String>,
    /// The UDP address of the agents' QUIC uplink, when this process runs it.
    pub uplink_addr: Option<std::net::SocketAddr>,
    /// The HTTPS configuration when `[tls]` is set (its certificate reloads itself).
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl App {
    /// Opens everything `config` names and starts the background tasks.
    pub async fn start(config: Config) -> Result<App, StartError> {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        // Before anything else: a bad certificate should not leave a migrated database behind.
        let metrics = Metrics::default();
        let tls_cert = match (&config.tls.cert_file, &config.tls.key_file) {
            (Some(cert), Some(key)) => Some(Arc::new(ReloadingCert::load(
                cert,
                key,
                metrics.http_connections.clone(),
            )?)),
            _ => None,
        };
        let url = config.database_url();
        if config.database_url.is_none() {
            // The embedded database lives here: its directory must be private (secure_fs).
            crate::secure_fs::private_dir(&config.data_dir).map_err(|e| {
                StartError::Io(std::io::Error::new(
                    e.kind(),
                    format!(
                        "securing the data directory {}: {e}",
                        config.data_dir.display()
                    ),
                ))
            })?;
        }
        let store = store::open(
            &url,
            config.database_read_url.as_deref(),
            config.database_schema.as_deref(),
            config.database_max_connections,
        )
        .await?;
        tracing::info!(backend = store.backend(), "store ready, migrations applied");
        let bus = bus::open(
            config.redis_url.as_deref(),
            &config.redis_prefix,
            shutdown_rx.clone(),
        )
        .await?;
        tracing::info!(backend = bus.backend(), "event bus ready");
        let keys = AuthKeys::load(
            &*store,
            config.jwt_secret.as_deref(),
            Duration::from_secs(config.access_token_ttl_secs),
            Duration::from_secs(config.refresh_token_ttl_secs),
            Duration::from_secs(config.service_token_ttl_secs),
        )
        .await?;
        let passwords = auth::passwords::Passwords::new(
            config.auth.max_concurrent_hashes,
            config.auth.max_queued_hashes,
        );
        let generated_admin_password = if config.service.runs(ServiceName::Gateway) {
            auth::bootstrap_admin(
                &*store,
                &passwords,
                config.admin_password.as_deref(),
                &config.data_dir,
            )
            .await?
        } else {
            None
        };
        let dummy_hash = passwords.hash(auth::random_token(16)).await?;
        let throttle = auth::throttle::LoginThrottle::new(auth::throttle::ThrottleConfig {
            free_failures: config.auth.login_free_failures,
            max_backoff: config.auth.login_max_backoff.0,
            ..Default::default()
        });
        let trusted_proxies = config.auth.proxies();
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build_http();
        let state = AppState::new(Inner {
            service: config.service,
            instance: uuid::Uuid::now_v7(),
            config,
            store,
            bus,
            wakeups: Arc::new(bus::durable::Wakeups::default()),
            consumers: bus::durable::ConsumerRegistry::default(),
            auth: keys,
            metrics,
            dummy_hash,
            passwords,
            throttle,
            liveness: auth::live::Liveness::default(),
            trusted_proxies,
            http,
        });
        let wake = state
            .listener("durable wake-ups", shutdown_rx.clone())
            .spawn(state.wakeups.clone());
        let (hosted, mut tasks) = services::start(&state, shutdown_rx.clone()).await?;
        tasks.push(wake);
        let uplink_addr = hosted.iter().find_map(|h| h.service.udp_addr());
        let tls = match tls_cert {
            Some(cert) => {
                let config = server::tls::server_config(cert.clone())?;
                tasks.push(
                    cert.spawn_reloader(state.config.tls.reload_interval.0, shutdown_rx.clone()),
                );
                Some(config)
            }
            None => None,
        };
        let router = crate::gateway::router(state.clone(), hosted);
        Ok(App {
            state,
            router,
            shutdown_tx,
            tasks,
            generated_admin_password,
            uplink_addr,
            tls,
        })
    }

    /// The process's router (tests drive it without a socket).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Whether the API is served over HTTPS.
    pub fn tls_enabled(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `signal` completes, then shuts down gracefully. Binds
    /// `tls.redirect_http_listen` when it is set.
    pub async fn serve(
        self,
        listener: TcpListener,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let redirect = match self.state.config.tls.redirect_http_listen {
            Some(addr) if self.tls.is_some() => Some(TcpListener::bind(addr).await?),
            _ => None,
        };
        self.serve_with_redirect(listener, redirect, signal).await
    }

    /// Serves the API on `listener` and, with TLS, redirects plain HTTP from `redirect` to it,
    /// until `signal` completes; then stops accepting, lets in-flight requests finish within
    /// `shutdown_grace_secs`, and shuts down.
    pub async fn serve_with_redirect(
        self,
        listener: TcpListener,
        redirect: Option<TcpListener>,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let config = &self.state.config;
        let grace = Duration::from_secs(config.shutdown_grace_secs);
        let (stop_tx, mut stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            signal.await;
            tracing::info!("shutdown requested; finishing in-flight requests");
            let _ = stop_tx.send(true);
        });
        let cap = server::effective_max_connections(config.http.max_connections);
        let http = Server::new(
            config.http.clone(),
            cap,
            self.state.metrics.http_connections.clone(),
            stop_rx.clone(),
        );
        let https_port = listener.local_addr()?.port();
        let acceptor = self.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        let api = http.serve(listener, self.router.clone(), acceptor);
        let redirects = async {
            match redirect {
                Some(l) if self.tls.is_some() => {
                    tracing::info!(addr = ?l.local_addr(), "redirecting plain HTTP to HTTPS");
                    http.serve(l, server::redirect::router(https_port), None)
                        .await
                }
                _ => Ok(()),
            }
        };
        tokio::select! {
            r = async { tokio::try_join!(api, redirects) } => { r?; }
            _ = async {
                let _ = stop_rx.wait_for(|s| *s).await;
                tokio::time::sleep(grace).await;
            } => tracing::warn!(?grace, "in-flight requests still running after the grace period; closing"),
        }
        self.shutdown().await;
        Ok(())
    }

    /// Stops background tasks and closes the store.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        for t in self.tasks {
            if tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .is_err()
            {
                tracing::warn!("a background task did not stop in time");
            }
        }
        let _ = self.state.store.close().await;
        tracing::info!("stopped");
    }
}
