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
use crate::bus::topics;
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
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let mut bus = Some(state.bus.subscribe());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REVOCATION_REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = crate::services::stopped(&mut shutdown) => return,
                m = async {
                    match bus.as_mut() {
                        Some(b) => b.recv().await,
                        None => std::future::pending().await,
                    }
                } => match m {
                    Ok(m) if m.topic == topics::AGENT_REVOKED => {
                        if let Some(id) = m.json().get("agent_id").and_then(|v| v.as_str())
                            && spire.revocations.insert(id)
                        {
                            tracing::info!(agent_id = id, origin = %m.origin, "revocation received");
                        }
                    }
                    Ok(_) => {}
                    // Missed messages: the store has them.
                    Err(broadcast::error::RecvError::Lagged(_)) => tick.reset_immediately(),
                    // The bus is gone (shutting down); the store still answers.
                    Err(broadcast::error::RecvError::Closed) => bus = None,
                },
                _ = tick.tick() => match state.store.revoked_agents().await {
                    Ok(ids) => spire.revocations.extend(ids),
                    Err(e) => tracing::warn!(error = %e, "reading revoked agents failed"),
                },
            }
        }
    })
}
