//! The `spire` service: the built-in SPIFFE CA, one-time join tokens, agent enrollment and SVID
//! renewal, revocation, and the fleet view.
//!
//! # Where things run
//! The CA's certificate and key live in the database (`settings`, key `spire_ca`), created by the
//! first process that starts (first writer wins), so every process sharing the database — the
//! all-in-one process, or the split `spire` and `ja4` processes, or `hais-control-plane token
//! create` — signs with the same CA. The HTTP API (tokens, fleet, revocation, bundle) belongs to
//! the spire service; enrollment, renewal and heartbeats arrive over QUIC at the ja4 service's
//! uplink (`services::ja4::uplink`), which calls into this module. The two meet only in the
//! store and on the bus: a revocation is written to the store and published as `agent.revoked`;
//! uplinks keep a revocation set fed by that topic and re-read from the store periodically (so a
//! lost bus message delays a revocation by at most [`REVOCATION_REFRESH`]).
//!
//! # Trust
//! Agents are `spiffe://<td>/hais/agent/<id>` with a UUIDv7 id the control plane picks; the
//! uplink presents `spiffe://<td>/hais/control-plane`. With `[spire.external]`, agents of a SPIRE
//! deployment (`spiffe://<spire td>/hais/agent/<name>`, SVIDs from their SPIRE agent) are also
//! accepted: their chain must lead to that deployment's bundle ([`external`]), and they are
//! registered in the fleet at their first connection. Join tokens are stored as the SHA-256 of
//! their secret and consumed atomically with the agent's insertion (see `store::spire`).

mod authority;
mod enroll;
pub mod external;
mod fleet;
mod revocation;
pub mod routes;
mod tokens;

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use utoipa_axum::router::OpenApiRouter;

pub use authority::{Authority, IssuedSvid, leaf_facts};
pub use enroll::{enroll, recover, renew};
pub use fleet::{AgentStatus, AgentView, heartbeat, status_of};
/// Keeps a [`Spire`]'s revocation set current for an uplink (the ja4 service starts it).
pub use revocation::{Revocations, spawn_refresher as watch_revocations};
pub use tokens::{CreatedToken, issue_token};

use super::{BoxFuture, Host, Service, ServiceError};
use crate::config::SpireConfig;
use crate::state::AppState;
use crate::store::spire::TokenRefusal;
use crate::store::{Store, StoreError};

/// The service's name (its handle starts the external SPIRE's health checks where it runs).
pub const NAME: &str = "spire";

/// The service, as [`super::all`] lists it: the HTTP API and the fleet sweeper, around the
/// process's [`Spire`] handle.
#[derive(Debug, Default)]
pub struct SpireService {
    spire: OnceLock<Arc<Spire>>,
}

impl Service for SpireService {
    fn name(&self) -> &'static str {
        NAME
    }
    fn seed_port(&self) -> u16 {
        3002
    }
    fn description(&self) -> &'static str {
        "Trust: built-in SPIFFE CA, one-time join tokens, agent enrollment and SVID renewal \
         (over the ja4 service's QUIC port), revocation, fleet health."
    }
    fn routes(&self) -> OpenApiRouter<AppState> {
        super::with_handle(routes::routes(), self.spire.get())
    }
    fn start<'a>(&'a self, host: &'a mut Host) -> BoxFuture<'a, Result<(), ServiceError>> {
        Box::pin(async move {
            let spire = handle(host).await?;
            host.tasks.push(fleet::spawn_sweeper(
                host.app.clone(),
                spire.clone(),
                host.shutdown.clone(),
            ));
            let _ = self.spire.set(spire);
            Ok(())
        })
    }
    fn metrics<'a>(&'a self, _: &'a AppState, out: &'a mut String) -> BoxFuture<'a, ()> {
        if let Some(spire) = self.spire.get() {
            spire.render_metrics(out);
        }
        Box::pin(async {})
    }
}

/// How often uplinks re-read the revoked agents from the store, in case a bus message was lost.
pub const REVOCATION_REFRESH: Duration = Duration::from_secs(10);

/// Why a spire operation failed. [`SpireError::wire_code`] maps it onto the wire protocol.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpireError {
    #[error(transparent)]
    Token(#[from] TokenRefusal),
    #[error("{0}")]
    BadRequest(String),
    #[error("agent {0} is revoked")]
    Revoked(String),
    #[error("agent {0} is not enrolled here")]
    UnknownAgent(String),
    /// An expired SVID's renewal was refused; the agent must enroll again.
    #[error(
        "renewal of the expired SVID refused: {0}; enroll the agent again with a new join token"
    )]
    RecoveryRefused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Svid(#[from] hais_svid::SvidError),
    #[error(
        "the CA stored in the database is for trust domain {stored:?}, but spire.trust_domain is \
         {configured:?}; a trust domain cannot change once agents are enrolled"
    )]
    TrustDomainMismatch { stored: String, configured: String },
    #[error("stored CA is unreadable: {0}")]
    Corrupt(String),
    #[error("external SPIRE trust bundle: {0}")]
    ExternalBundle(String),
}

impl SpireError {
    /// The wire error code telling the agent whether to retry.
    pub fn wire_code(&self) -> hais_shared::wire::ErrorCode {
        use hais_shared::wire::ErrorCode;
        match self {
            SpireError::Token(_) | SpireError::UnknownAgent(_) | SpireError::RecoveryRefused(_) => {
                ErrorCode::Unauthorized
            }
            SpireError::Revoked(_) => ErrorCode::Revoked,
            SpireError::BadRequest(_) => ErrorCode::BadRequest,
            SpireError::Svid(hais_svid::SvidError::BadCsr(_)) => ErrorCode::BadRequest,
            _ => ErrorCode::Unavailable,
        }
    }
}

/// The spire state a process holds when it runs the spire or the ja4 service.
#[derive(Debug)]
pub struct Spire {
    pub authority: Authority,
    pub revocations: Revocations,
    pub config: SpireConfig,
    /// The external SPIRE deployment, when `[spire.external]` is configured.
    pub external: Option<Arc<external::External>>,
}

impl Spire {
    /// Loads the CA from the store (creating it on first start) and the revocation set.
    pub async fn load(store: &dyn Store, config: &SpireConfig) -> Result<Spire, SpireError> {
        let authority = Authority::load(store, config).await?;
        let revocations = Revocations::default();
        revocations.extend(store.revoked_agents().await?);
        let external = external::External::load(&config.external).await?;
        tracing::info!(
            trust_domain = authority.trust_domain(),
            ca_sha256 = %hex::encode(authority.hash()),
            "SPIFFE CA ready"
        );
        Ok(Spire {
            authority,
            revocations,
            config: config.clone(),
            external,
        })
    }
}

impl Spire {
    /// The external SPIRE's gauges for `/metrics`, when one is configured.
    pub fn render_metrics(&self, out: &mut String) {
        let Some(ext) = &self.external else {
            return;
        };
        let st = ext.status();
        let _ = writeln!(
            out,
            "# HELP hais_spire_external_healthy The external SPIRE server's health endpoint: 1 healthy, 0 not, -1 not checked.\n\
             # TYPE hais_spire_external_healthy gauge\nhais_spire_external_healthy {}\n\
             # HELP hais_spire_external_bundle_loaded_seconds When the external SPIRE bundle was last loaded (Unix time; 0 never).\n\
             # TYPE hais_spire_external_bundle_loaded_seconds gauge\nhais_spire_external_bundle_loaded_seconds {}",
            ext.health_gauge(),
            st.bundle_loaded_us.unwrap_or(0) / 1_000_000
        );
    }
}

/// The process's [`Spire`] handle, loaded by the first service that asks (the spire service, or
/// the ja4 service, whose uplink enrolls and authenticates agents with it). Loading it also
/// starts following the external SPIRE's bundle (and, where the spire service runs, its health).
pub async fn handle(host: &mut Host) -> Result<Arc<Spire>, SpireError> {
    if let Some(spire) = host.shared::<Spire>() {
        return Ok(spire);
    }
    let spire = Arc::new(Spire::load(&*host.app.store, &host.app.config.spire).await?);
    if let Some(ext) = &spire.external {
        // The uplink (ja4) needs the bundle; the spire service reports it and the health.
        host.tasks.push(external::spawn_refresher(
            ext.clone(),
            host.hosts(NAME),
            host.shutdown.clone(),
        ));
    }
    host.share(spire.clone());
    Ok(spire)
}
