//! The fleet view: each agent's status from its last heartbeat, heartbeats themselves, and the
//! sweeper that announces status changes on the bus.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hais_shared::wire;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Spire, SpireError};
use crate::bus::topics::{AgentStatusChange, AgentStatusChanged};
use crate::state::AppState;
use crate::store::now_us;
use crate::store::spire::{AgentRecord, HeartbeatRecord};

/// Agents read per page while sweeping.
const SWEEP_PAGE: u32 = 1000;
/// Longest accepted heartbeat strings and interface list.
const MAX_FIELD_LEN: usize = 256;
const MAX_INTERFACES: usize = 256;

/// An agent's status in the fleet view (declared with the `agent.status` payload that carries
/// it, since the bus imports no service).
pub use crate::bus::topics::AgentStatus;

/// An agent's status at `now_us`.
pub fn status_of(a: &AgentRecord, now_us: i64, stale_after: Duration) -> AgentStatus {
    if a.revoked_us.is_some() {
        return AgentStatus::Revoked;
    }
    match &a.heartbeat {
        Some(hb) if now_us - hb.received_us <= stale_after.as_micros() as i64 => {
            AgentStatus::Online
        }
        _ => AgentStatus::Stale,
    }
}

/// One agent in the fleet view.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AgentView {
    #[serde(flatten)]
    pub agent: AgentRecord,
    pub status: AgentStatus,
    /// Agent clock minus control-plane clock at the last heartbeat (ms; network delay
    /// included), when there was one.
    pub clock_skew_ms: Option<i64>,
}

impl AgentView {
    pub fn new(agent: AgentRecord, now_us: i64, stale_after: Duration) -> Self {
        let status = status_of(&agent, now_us, stale_after);
        let clock_skew_ms = agent
            .heartbeat
            .as_ref()
            .map(|h| h.sent_at_ms - h.received_us / 1000);
        AgentView {
            agent,
            status,
            clock_skew_ms,
        }
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn bounded(s: String) -> String {
    if s.len() <= MAX_FIELD_LEN {
        return s;
    }
    let mut end = MAX_FIELD_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Stores an agent's heartbeat and answers with the control plane's clock.
pub async fn heartbeat(
    state: &AppState,
    agent_id: &str,
    hb: wire::Heartbeat,
    remote: SocketAddr,
) -> Result<wire::HeartbeatAck, SpireError> {
    let received_us = now_us();
    let rec = HeartbeatRecord {
        received_us,
        remote_addr: remote.to_string(),
        version: bounded(hb.version),
        uptime_s: clamp(hb.uptime_s),
        interfaces: hb
            .interfaces
            .into_iter()
            .take(MAX_INTERFACES)
            .map(bounded)
            .collect(),
        packets: clamp(hb.packets),
        bytes: clamp(hb.bytes),
        drops: clamp(hb.drops),
        parse_errors: clamp(hb.parse_errors),
        spool_depth: clamp(hb.spool_depth),
        spool_dropped: clamp(hb.spool_dropped),
        svid_expiry_unix: hb.svid_expiry_unix,
        sent_at_ms: hb.sent_at_unix_ms,
        hostname: bounded(hb.hostname),
    };
    if !state.store.record_heartbeat(agent_id, &rec).await? {
        return Err(match state.store.get_agent(agent_id).await? {
            Some(a) if a.revoked_us.is_some() => SpireError::Revoked(agent_id.to_owned()),
            _ => SpireError::UnknownAgent(agent_id.to_owned()),
        });
    }
    Ok(wire::HeartbeatAck {
        server_time_unix_ms: now_us() / 1000,
    })
}

/// Every `stale_after / 3` (1 to 30 s), computes every agent's status and publishes
/// `agent.status` for each one that changed since the previous pass. The first pass only
/// records, so a restart does not announce the whole fleet.
pub fn spawn_sweeper(
    state: AppState,
    spire: Arc<Spire>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let stale_after = spire.config.stale_after.0;
        let every = (stale_after / 3).clamp(Duration::from_secs(1), Duration::from_secs(30));
        let mut known: Option<HashMap<String, AgentStatus>> = None;
        loop {
            match sweep(&state, stale_after, known.as_ref()).await {
                Ok(now) => known = Some(now),
                Err(e) => tracing::warn!(error = %e, "fleet sweep failed"),
            }
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    })
}

async fn sweep(
    state: &AppState,
    stale_after: Duration,
    before: Option<&HashMap<String, AgentStatus>>,
) -> Result<HashMap<String, AgentStatus>, SpireError> {
    let now = now_us();
    let mut statuses = HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let page = state
            .store
            .list_agents(after.as_deref(), SWEEP_PAGE)
            .await?;
        let full = page.len() == SWEEP_PAGE as usize;
        let last = page.last().map(|a| a.id.clone());
        for a in page {
            let status = status_of(&a, now, stale_after);
            if let Some(before) = before {
                let previous = before.get(&a.id).copied();
                // A new agent was announced by `agent.enrolled`; its first status matters only
                // when it is already online.
                let changed = match previous {
                    Some(p) => p != status,
                    None => status == AgentStatus::Online,
                };
                if changed {
                    state
                        .publish::<AgentStatusChanged>(&AgentStatusChange {
                            agent_id: a.id.clone(),
                            status,
                            previous,
                        })
                        .await;
                }
            }
            statuses.insert(a.id, status);
        }
        match last {
            Some(id) if full => after = Some(id),
            _ => return Ok(statuses),
        }
    }
}
