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

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use authority::{Authority, IssuedSvid, leaf_facts};
pub use enroll::{enroll, recover, renew};
pub use fleet::{AgentStatus, AgentView, heartbeat, status_of};
pub use revocation::Revocations;
pub use routes::router;
pub use tokens::{CreatedToken, issue_token};

use crate::config::SpireConfig;
use crate::service::ServiceName;
use crate::state::AppState;
use crate::store::spire::TokenRefusal;
use crate::store::{Store, StoreError};

/// Shown by the status endpoint.
pub const DESCRIPTION: &str = "Trust: built-in SPIFFE CA, one-time join tokens, agent enrollment \
    and SVID renewal (over the ja4 service's QUIC port), revocation, fleet health.";

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

/// Starts the spire background work this process needs: the fleet-status sweeper where the
/// spire service runs, the revocation refresher where the uplink (ja4) runs.
pub fn start(state: &AppState, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let Some(spire) = state.spire.clone() else {
        return Vec::new();
    };
    let mut tasks = Vec::new();
    if let Some(ext) = &spire.external {
        // The uplink (ja4) needs the bundle; the spire service reports it and the health.
        let health = state.service.runs(ServiceName::Spire);
        tasks.push(external::spawn_refresher(
            ext.clone(),
            health,
            shutdown.clone(),
        ));
    }
    if state.service.runs(ServiceName::Spire) {
        tasks.push(fleet::spawn_sweeper(
            state.clone(),
            spire.clone(),
            shutdown.clone(),
        ));
    }
    if state.service.runs(ServiceName::Ja4) {
        tasks.push(revocation::spawn_refresher(state.clone(), spire, shutdown));
    }
    tasks
}

/// The spire state of a process that hosts the service (always there when its routes are).
fn spire_of(state: &AppState) -> Result<&Arc<Spire>, crate::error::ApiError> {
    state
        .spire
        .as_ref()
        .ok_or_else(|| crate::error::ApiError::unavailable("the spire service is not running here"))
}
