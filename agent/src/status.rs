//! The running agent's live state: what `hais-agent status` shows and what heartbeats carry.
//!
//! Capture threads publish their counters into [`InterfaceCounters`] (atomics: the packet
//! path never takes a lock for this), the uplink records its connection state in
//! [`UplinkStatus`], and [`AgentStatus::report`] assembles a [`StatusReport`] on demand. The
//! report is served as one JSON document per connection on a Unix socket in the state
//! directory (mode 0600: only the agent's user, or root, may read it).

use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hais_shared::wire;
use serde::{Deserialize, Serialize};

use crate::attribution::Attributor;
use crate::uplink::SharedSpool;
use crate::uplink::spool::SpoolStats;

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One interface's counters, written by its capture thread.
#[derive(Debug, Default)]
pub struct InterfaceCounters {
    pub name: String,
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    pub parse_errors: AtomicU64,
    pub kernel_dropped: AtomicU64,
    pub interface_dropped: AtomicU64,
    pub live_flows: AtomicU64,
    pub streams: AtomicU64,
    /// Streams turned into events and spooled.
    pub events: AtomicU64,
}

impl InterfaceCounters {
    pub fn new(name: &str) -> Self {
        InterfaceCounters {
            name: name.to_string(),
            ..Default::default()
        }
    }

    fn report(&self) -> InterfaceReport {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        InterfaceReport {
            name: self.name.clone(),
            packets: g(&self.packets),
            bytes: g(&self.bytes),
            parse_errors: g(&self.parse_errors),
            kernel_dropped: g(&self.kernel_dropped),
            interface_dropped: g(&self.interface_dropped),
            live_flows: g(&self.live_flows),
            streams: g(&self.streams),
            events: g(&self.events),
        }
    }
}

/// The uplink's connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    /// No server configured or not enrolled: records are only printed.
    Disabled,
    Connecting,
    Connected,
    /// Waiting before the next attempt after a failure.
    Backoff,
    Stopped,
}

/// What the uplink reports about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UplinkStatus {
    pub state: ConnectionState,
    pub server: Option<String>,
    /// When `state` last changed, ms since the epoch.
    pub since_unix_ms: i64,
    pub last_error: Option<String>,
    pub last_ack_unix_ms: Option<i64>,
    pub batches_acked: u64,
    /// Events the control plane stored for the first time.
    pub events_stored: u64,
    /// Events it already had (redelivery after a lost ack).
    pub events_duplicate: u64,
    /// Events it refused as invalid (logged, not resent).
    pub events_rejected: u64,
    pub connects: u64,
    pub renewals: u64,
    /// Control-plane clock minus ours, from the last heartbeat round trip.
    pub clock_skew_ms: Option<i64>,
    pub spiffe_id: Option<String>,
    pub svid_expiry_unix: Option<i64>,
    pub svid_renew_at_unix: Option<i64>,
    /// Why the agent cannot deliver right now, in an operator's words (SVID expired at T,
    /// refused by the control plane, revoked, unreachable...); `None` once the control plane
    /// has accepted the agent again.
    #[serde(default)]
    pub problem: Option<String>,
    /// What to do about `problem` (sometimes: nothing, the agent recovers by itself).
    #[serde(default)]
    pub fix: Option<String>,
}

impl Default for UplinkStatus {
    fn default() -> Self {
        UplinkStatus {
            state: ConnectionState::Disabled,
            server: None,
            since_unix_ms: unix_ms(),
            last_error: None,
            last_ack_unix_ms: None,
            batches_acked: 0,
            events_stored: 0,
            events_duplicate: 0,
            events_rejected: 0,
            connects: 0,
            renewals: 0,
            clock_skew_ms: None,
            spiffe_id: None,
            svid_expiry_unix: None,
            svid_renew_at_unix: None,
            problem: None,
            fix: None,
        }
    }
}

/// The whole agent's state, shared by capture threads, the uplink and the status socket.
#[derive(Debug)]
pub struct AgentStatus {
    started: Instant,
    pub interfaces: Vec<Arc<InterfaceCounters>>,
    pub uplink: Mutex<UplinkStatus>,
    pub spool: Option<SharedSpool>,
    /// Streams that produced no event (no fingerprint, or invalid), and spool write failures.
    pub events_skipped: AtomicU64,
    pub spool_errors: AtomicU64,
    /// The workload attributor, once started (absent when disabled or unavailable).
    pub attribution: OnceLock<Arc<Attributor>>,
}

/// The attributor's counters since start, as `status` and heartbeats show them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttributionReport {
    /// Flows whose first packet asked for attribution.
    pub requests: u64,
    /// Resolved to a process.
    pub attributed: u64,
    /// The socket was found but its process had already exited.
    pub process_gone: u64,
    /// No local socket (traffic passing through, another network namespace).
    pub not_local: u64,
    /// Not attempted: the request queue was full.
    pub dropped: u64,
    pub errors: u64,
    /// Time the attribution thread spent resolving, in microseconds.
    pub busy_us: u64,
    /// Events that found their flow's answer / found none.
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Whether the eBPF connect tracer runs, and the flows resolved from its records.
    #[serde(default)]
    pub ebpf: bool,
    #[serde(default)]
    pub ebpf_hits: u64,
}

impl AttributionReport {
    pub fn from_stats(s: &crate::attribution::AttributorStats) -> Self {
        AttributionReport {
            requests: s.requests,
            attributed: s.attributed,
            process_gone: s.process_gone,
            not_local: s.not_local,
            dropped: s.dropped,
            errors: s.errors,
            busy_us: s.busy_ns / 1000,
            cache_hits: s.cache_hits,
            cache_misses: s.cache_misses,
            ebpf: s.ebpf,
            ebpf_hits: s.ebpf_hits,
        }
    }
}

/// `hais-agent status --json`: a snapshot of [`AgentStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    pub pid: u32,
    pub uptime_s: u64,
    pub interfaces: Vec<InterfaceReport>,
    pub spool: Option<SpoolStats>,
    pub uplink: UplinkStatus,
    pub events_skipped: u64,
    pub spool_errors: u64,
    /// Workload attribution, when it runs (absent from older agents' reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribution: Option<AttributionReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceReport {
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
    pub parse_errors: u64,
    pub kernel_dropped: u64,
    pub interface_dropped: u64,
    pub live_flows: u64,
    pub streams: u64,
    pub events: u64,
}

impl AgentStatus {
    pub fn new(interfaces: Vec<Arc<InterfaceCounters>>, spool: Option<SharedSpool>) -> Self {
        AgentStatus {
            started: Instant::now(),
            interfaces,
            uplink: Mutex::new(UplinkStatus::default()),
            spool,
            events_skipped: AtomicU64::new(0),
            spool_errors: AtomicU64::new(0),
            attribution: OnceLock::new(),
        }
    }

    /// Changes the uplink's fields under its lock.
    pub fn update_uplink(&self, f: impl FnOnce(&mut UplinkStatus)) {
        let mut u = self.uplink.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut u);
    }

    pub fn uplink(&self) -> UplinkStatus {
        self.uplink
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn spool_stats(&self) -> Option<SpoolStats> {
        self.spool
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).stats())
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn report(&self) -> StatusReport {
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            uptime_s: self.uptime().as_secs(),
            interfaces: self.interfaces.iter().map(|i| i.report()).collect(),
            spool: self.spool_stats(),
            uplink: self.uplink(),
            events_skipped: self.events_skipped.load(Ordering::Relaxed),
            spool_errors: self.spool_errors.load(Ordering::Relaxed),
            attribution: self
                .attribution
                .get()
                .map(|a| AttributionReport::from_stats(&a.stats())),
        }
    }

    /// The heartbeat's body, `sent_at` stamped now.
    pub fn heartbeat(&self, hostname: &str) -> wire::Heartbeat {
        let r = self.report();
        let sum = |f: fn(&InterfaceReport) -> u64| r.interfaces.iter().map(f).sum::<u64>();
        let spool = r.spool.unwrap_or_default();
        wire::Heartbeat {
            version: r.version,
            uptime_s: r.uptime_s,
            interfaces: r.interfaces.iter().map(|i| i.name.clone()).collect(),
            packets: sum(|i| i.packets),
            bytes: sum(|i| i.bytes),
            drops: sum(|i| i.kernel_dropped + i.interface_dropped),
            parse_errors: sum(|i| i.parse_errors),
            spool_depth: spool.depth,
            spool_dropped: spool.dropped,
            svid_expiry_unix: r.uplink.svid_expiry_unix.unwrap_or(0),
            sent_at_unix_ms: unix_ms(),
            hostname: hostname.to_string(),
            attribution: r.attribution.map(|a| wire::AttributionCounters {
                requests: a.requests,
                attributed: a.attributed,
                process_gone: a.process_gone,
                not_local: a.not_local,
                dropped: a.dropped,
                busy_us: a.busy_us,
            }),
        }
    }
}

/// The status socket: answers every connection with the JSON report and closes it.
#[derive(Debug)]
pub struct StatusServer {
    path: PathBuf,
}

impl StatusServer {
    /// Binds `path` (replacing a stale socket) and serves on a background thread.
    pub fn start(path: &Path, status: Arc<AgentStatus>) -> io::Result<StatusServer> {
        if path.exists() {
            // Only a leftover of a crashed agent: the state lock ensures no live one owns it.
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        std::thread::Builder::new()
            .name("status".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(mut conn) = conn else { continue };
                    let body = serde_json::to_vec(&status.report()).unwrap_or_default();
                    let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
                    let _ = conn.write_all(&body);
                }
            })?;
        Ok(StatusServer {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Asks the agent listening on `path` for its report.
pub fn query(path: &Path) -> io::Result<StatusReport> {
    let mut conn = UnixStream::connect(path)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut body = Vec::new();
    conn.read_to_end(&mut body)?;
    serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_serves_the_report_and_heartbeat_sums_interfaces() {
        let d = tempfile::tempdir().unwrap();
        let eth0 = Arc::new(InterfaceCounters::new("eth0"));
        let lo = Arc::new(InterfaceCounters::new("lo"));
        eth0.packets.store(10, Ordering::Relaxed);
        lo.packets.store(5, Ordering::Relaxed);
        eth0.kernel_dropped.store(2, Ordering::Relaxed);
        lo.interface_dropped.store(1, Ordering::Relaxed);
        let status = Arc::new(AgentStatus::new(vec![eth0, lo], None));
        status.update_uplink(|u| {
            u.state = ConnectionState::Connected;
            u.svid_expiry_unix = Some(1_900_000_000);
        });
        let path = d.path().join("agent.sock");
        let server = StatusServer::start(&path, Arc::clone(&status)).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let r = query(&path).unwrap();
        assert_eq!(r.interfaces.len(), 2);
        assert_eq!(r.uplink.state, ConnectionState::Connected);
        assert_eq!(r.pid, std::process::id());

        let hb = status.heartbeat("host-1");
        assert_eq!(hb.packets, 15);
        assert_eq!(hb.drops, 3);
        assert_eq!(hb.interfaces, vec!["eth0", "lo"]);
        assert_eq!(hb.svid_expiry_unix, 1_900_000_000);
        assert_eq!(hb.hostname, "host-1");
        assert_eq!(hb.attribution, None, "no attributor: no counters");
        assert_eq!(r.attribution, None);
        drop(server);
        assert!(!path.exists());
    }
}
