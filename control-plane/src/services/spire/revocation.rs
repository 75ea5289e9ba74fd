//! The revocation set an uplink checks on every connection and request.
//!
//! Revocation is permanent, so the set only grows: it is fed by the local revoke call, by
//! `agent.revoked` messages from the bus (other processes), and by re-reading the store every
//! [`super::REVOCATION_REFRESH`] (a lost bus message). Every newly revoked id is broadcast, so the
//! agent's live connections close at once.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use super::{REVOCATION_REFRESH, Spire};
use crate::bus::listen::{OnLive, Received};
use crate::bus::topics::AgentRevoked;
use crate::state::AppState;

/// Capacity of the broadcast of newly revoked ids; a lagging receiver re-checks the set.
const NOTIFY_CAPACITY: usize = 256;

/// Revoked agent ids, and a broadcast of each newly revoked one.
#[derive(Debug)]
pub struct Revocations {
    set: RwLock<HashSet<String>>,
    notify: broadcast::Sender<String>,
}

impl Default for Revocations {
    fn default() -> Self {
        Revocations {
            set: RwLock::default(),
            notify: broadcast::channel(NOTIFY_CAPACITY).0,
        }
    }
}

impl Revocations {
    pub fn is_revoked(&self, agent_id: &str) -> bool {
        self.set
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(agent_id)
    }

    /// Adds `agent_id`; announces it to live connections if it is new. Returns whether it was.
    pub fn insert(&self, agent_id: &str) -> bool {
        let new = self
            .set
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(agent_id.to_owned());
        if new {
            // No receiver (no live connection) is fine.
            let _ = self.notify.send(agent_id.to_owned());
        }
        new
    }

    /// Adds every id of `ids` (see [`insert`](Self::insert)).
    pub fn extend(&self, ids: impl IntoIterator<Item = String>) {
        for id in ids {
            self.insert(&id);
        }
    }

    /// Newly revoked ids from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.notify.subscribe()
    }
}

/// Keeps `spire.revocations` current from the bus and the store.
pub fn spawn_refresher(
    state: AppState,
    spire: Arc<Spire>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    state
        .listener("revocations", shutdown)
        .every(REVOCATION_REFRESH)
        .spawn(Refresher { state, spire })
}

/// Adds the agents of `agent.revoked` messages (from any process) to the set, and re-reads the
/// store every [`REVOCATION_REFRESH`] and whenever messages were missed.
struct Refresher {
    state: AppState,
    spire: Arc<Spire>,
}

impl Refresher {
    async fn reread(&self) {
        match self.state.store.revoked_agents().await {
            Ok(ids) => self.spire.revocations.extend(ids),
            Err(e) => tracing::warn!(error = %e, "reading revoked agents failed"),
        }
    }
}

impl OnLive for Refresher {
    async fn message(&mut self, m: Received<'_>) {
        if let Some(r) = m.payload::<AgentRevoked>()
            && self.spire.revocations.insert(&r.agent_id)
        {
            tracing::info!(agent_id = %r.agent_id, origin = %m.origin, "revocation received");
        }
    }
    /// Missed messages: the store has them.
    async fn lagged(&mut self, _skipped: u64) {
        self.reread().await;
    }
    async fn tick(&mut self) {
        self.reread().await;
    }
}
