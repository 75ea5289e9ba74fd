//! The agent's configuration (`agent.toml`).
//!
//! Four layers, each overriding the one before: built-in defaults, the TOML file, `HAIS_*`
//! environment variables, then command-line flags (applied by the command itself). Defaults
//! make a config file optional; environment variables let a container or a systemd unit
//! change one setting without shipping a file; flags win because they are what an operator
//! typed last.
//!
//! ```toml
//! state_dir = "/var/lib/hais-agent"  # identity, spool, status socket
//!
//! [capture]
//! interfaces = ["eth0", "eth1"]   # empty or absent: "any"
//! bpf = "tcp or udp"              # see DEFAULT_BPF for why the default keeps bulk payload
//! snaplen = 65535
//! buffer_mib = 16
//! promiscuous = false
//! stats_interval_secs = 10
//!
//! [flows]
//! idle_timeout_secs = 30
//! max_flows = 65536
//! ssh_window = 200
//!
//! [output]
//! path = "-"                      # "-" is standard output
//! format = "json"                 # or "yaml"
//! with_raw = false
//! with_workload = false           # add the `workload` object to printed records
//!
//! [attribution]                   # which process is behind each flow (Linux)
//! enabled = true
//! queue = 4096                    # flows waiting to be resolved; beyond: "queue-full"
//! cache = 65536                   # resolved flows waiting for their event
//! batch_window_ms = 10            # batching delay, only above 200 new flows/s
//! notified_flows = 16384          # per interface: flows already asked about
//! max_latency_ms = 10             # longest the capture holds a packet before we see it
//! ebpf = true                     # record outbound TCP connections' owners in the kernel
//!
//! [uplink]
//! server = "cp.example:3001"      # empty: the address saved by `hais-agent enroll`
//! heartbeat_interval_secs = 10
//! max_in_flight = 8               # batches awaiting their ack
//! batch_events = 1000
//!
//! [spool]
//! max_bytes = 268435456           # 256 MiB; the oldest events are dropped beyond it
//!
//! [metrics]                       # Prometheus /metrics, /health, /ready while running
//! listen = "127.0.0.1:9464"       # empty (default): no endpoint
//!
//! [spire]                         # identity from a SPIRE agent instead of `hais-agent enroll`
//! workload_api_socket = "/run/spire/sockets/agent.sock"
//! control_plane_id = ""           # empty: spiffe://<td of control_plane_bundle>/hais/control-plane
//! control_plane_bundle = "/etc/hais/control-plane-bundle.pem"  # GET /api/spire/bundle
//! connect_timeout_secs = 30
//! ```
//!
//! Unknown keys are errors, so a misspelt setting is reported instead of silently ignored.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

/// The default capture filter: every TCP and UDP packet, plus the tunnels the decoder opens
/// (GRE and ERSPAN, IP-in-IP, IPv6-in-IPv4); VXLAN and Geneve ride on UDP already.
///
/// It deliberately keeps bulk payload instead of only SYNs and the first data packets:
/// JA4SSH counts every SSH packet (lengths and bare ACKs per window of 200), TCP reassembly
/// needs every segment of a handshake that spans several packets (certificates for JA4X,
/// large ClientHellos), and JA4L times packets after the handshake. The engine stops
/// buffering a stream once its fingerprints are done, so the cost of the extra packets is
/// filter and decode CPU, not memory. `--bpf` overrides it for hosts where that CPU matters.
///
/// Not matched: IPv6 packets whose transport header follows extension headers other than a
/// fragment header, and frames whose VLAN tags the NIC did not strip (add `vlan and ...`
/// with `--bpf` on such trunk ports).
pub const DEFAULT_BPF: &str = "tcp or udp or proto gre or proto 4 or proto 41";

/// The environment variables read by [`AgentConfig::apply_env`], for `--help` and docs.
pub const ENV_VARS: &[(&str, &str)] = &[
    (
        "HAIS_INTERFACES",
        "capture.interfaces, comma- or space-separated",
    ),
    ("HAIS_BPF", "capture.bpf"),
    ("HAIS_SNAPLEN", "capture.snaplen"),
    ("HAIS_BUFFER_MIB", "capture.buffer_mib"),
    ("HAIS_PROMISCUOUS", "capture.promiscuous (true/false)"),
    ("HAIS_STATS_INTERVAL", "capture.stats_interval_secs"),
    ("HAIS_IDLE_TIMEOUT", "flows.idle_timeout_secs"),
    ("HAIS_MAX_FLOWS", "flows.max_flows"),
    ("HAIS_SSH_WINDOW", "flows.ssh_window"),
    ("HAIS_OUTPUT", "output.path"),
    ("HAIS_FORMAT", "output.format (json/yaml)"),
    ("HAIS_WITH_RAW", "output.with_raw (true/false)"),
    ("HAIS_WITH_WORKLOAD", "output.with_workload (true/false)"),
    ("HAIS_ATTRIBUTION", "attribution.enabled (true/false)"),
    ("HAIS_ATTRIBUTION_EBPF", "attribution.ebpf (true/false)"),
    (
        "HAIS_ATTRIBUTION_MAX_LATENCY_MS",
        "attribution.max_latency_ms",
    ),
    ("HAIS_STATE_DIR", "state_dir"),
    ("HAIS_SERVER", "uplink.server (HOST:PORT)"),
    ("HAIS_HEARTBEAT_INTERVAL", "uplink.heartbeat_interval_secs"),
    ("HAIS_SPOOL_MAX_BYTES", "spool.max_bytes"),
    ("HAIS_METRICS_LISTEN", "metrics.listen"),
    (
        "HAIS_SPIRE_WORKLOAD_API_SOCKET",
        "spire.workload_api_socket (path)",
    ),
    ("HAIS_SPIRE_CONTROL_PLANE_ID", "spire.control_plane_id"),
    (
        "HAIS_SPIRE_CONTROL_PLANE_BUNDLE",
        "spire.control_plane_bundle (path)",
    ),
];

/// The whole agent configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Identity, spool and status socket (see [`crate::state`]).
    pub state_dir: PathBuf,
    pub capture: CaptureConfig,
    pub flows: FlowConfig,
    pub output: OutputConfig,
    pub uplink: UplinkConfig,
    pub spool: SpoolConfig,
    pub attribution: AttributionConfig,
    pub spire: SpireConfig,
    pub metrics: MetricsConfig,
}

/// `[metrics]`: an HTTP endpoint for Prometheus (`/metrics`) and probes (`/health`,
/// `/ready`) while `hais-agent run` runs. Off unless an address is given: most hosts are
/// watched through the control plane's fleet view, and an open port is a choice to make.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// e.g. "127.0.0.1:9464"; empty: no endpoint.
    pub listen: String,
}

/// `[spire]`: taking the agent's identity from a SPIRE agent over the SPIFFE Workload API.
/// SPIRE then issues and rotates the agent's SVID (`spiffe://<td>/hais/agent/<name>`, from a
/// registration entry for the agent's process) and `hais-agent enroll` is not used. The
/// control plane must trust that SPIRE (`[spire.external]` on its side).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct SpireConfig {
    /// The SPIRE agent's Workload API socket; setting it turns the integration on.
    pub workload_api_socket: Option<PathBuf>,
    /// The SPIFFE ID the control plane must present. Empty: `/hais/control-plane` in the trust
    /// domain of `control_plane_bundle`'s CA (else of the agent's own SVID).
    pub control_plane_id: String,
    /// The control plane's CA (PEM or SPIFFE JWKS; the control plane serves it at
    /// `/api/spire/bundle`). Not needed when SPIRE federates with the control plane's trust
    /// domain: the federated bundle from the Workload API is used (merged with this file).
    pub control_plane_bundle: Option<PathBuf>,
    /// How long start-up waits for the first SVID before giving up with an error.
    pub connect_timeout_secs: u64,
}

impl SpireConfig {
    /// Whether the identity comes from SPIRE.
    pub fn enabled(&self) -> bool {
        self.workload_api_socket.is_some()
    }

    pub fn connect_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(if self.connect_timeout_secs == 0 {
            30
        } else {
            self.connect_timeout_secs
        })
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            state_dir: PathBuf::from(crate::state::DEFAULT_STATE_DIR),
            capture: CaptureConfig::default(),
            flows: FlowConfig::default(),
            output: OutputConfig::default(),
            uplink: UplinkConfig::default(),
            spool: SpoolConfig::default(),
            attribution: AttributionConfig::default(),
            spire: SpireConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

/// `[attribution]`: finding the process, user, container and pod behind each flow (see
/// [`crate::attribution`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttributionConfig {
    /// On by default on Linux, the only platform with sock_diag. When the kernel refuses the
    /// netlink socket the agent logs one warning and runs without attribution.
    pub enabled: bool,
    /// Flows waiting for the attribution thread; a burst beyond it marks the excess
    /// `queue-full` instead of slowing capture down.
    pub queue: usize,
    /// Answers kept until their flow's event is built (flows can last minutes).
    pub cache: usize,
    /// How long the attribution thread gathers new flows into one batch, above 200 new flows
    /// a second (one `/proc` pass then serves the whole batch).
    pub batch_window_ms: u64,
    /// Per interface: flows whose first packet was already seen and notified. Older entries
    /// are forgotten (at worst a flow is looked up twice).
    pub notified_flows: usize,
    /// Longest a packet may wait in the kernel's capture ring before the agent reads it, while
    /// attribution is on. A flow is attributed only while its socket exists, so a short-lived
    /// process must be looked up within its lifetime; without attribution the capture may
    /// hold packets up to 100 ms to save wake-ups. Lower is more accurate and costs about
    /// 1000/max_latency_ms wake-ups a second per interface.
    pub max_latency_ms: u64,
    /// Record who opens each outbound TCP connection in the kernel, at `connect()` (an eBPF
    /// program on the `sock:inet_sock_set_state` tracepoint; Linux 5.8+, CAP_BPF and
    /// CAP_PERFMON). Such flows then need no `/proc` search, and a process that exits at once
    /// is still named. Where the program cannot load the agent logs why and uses `/proc` alone.
    pub ebpf: bool,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        AttributionConfig {
            enabled: cfg!(target_os = "linux"),
            queue: 4096,
            cache: 65_536,
            batch_window_ms: 10,
            notified_flows: 16_384,
            max_latency_ms: 10,
            ebpf: true,
        }
    }
}

/// `[uplink]`: the connection to the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UplinkConfig {
    /// The control plane's `HOST:PORT` (UDP, the ja4 service's port 3001 by default). Empty:
    /// the address `hais-agent enroll` saved in the state directory.
    pub server: String,
    /// Seconds between heartbeats (fleet health, clock skew).
    pub heartbeat_interval_secs: u64,
    /// Batches sent and not yet acknowledged, each on its own QUIC stream. Several in flight
    /// hide the control plane's commit latency; too many only add memory.
    pub max_in_flight: usize,
    /// Most events per batch.
    pub batch_events: usize,
}

impl Default for UplinkConfig {
    fn default() -> Self {
        UplinkConfig {
            server: String::new(),
            heartbeat_interval_secs: 10,
            max_in_flight: 8,
            batch_events: 1000,
        }
    }
}

/// `[spool]`: the on-disk queue between capture and the uplink.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolConfig {
    /// Upper bound of the spool's files; beyond it the oldest events are dropped (and counted).
    pub max_bytes: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            max_bytes: crate::uplink::spool::DEFAULT_MAX_BYTES,
        }
    }
}

/// `[capture]`: where and how packets are read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureConfig {
    /// Interfaces to capture on; empty means `any` (every interface, Linux cooked headers).
    pub interfaces: Vec<String>,
    /// libpcap filter expression; empty captures everything.
    pub bpf: String,
    /// Bytes kept of each packet. 65535 covers any non-jumbo segment whole: a cut handshake
    /// segment would stall reassembly.
    pub snaplen: u32,
    /// Kernel ring buffer per interface, MiB. Larger rides out bursts without drops.
    pub buffer_mib: u32,
    /// Promiscuous mode. Off by default: a host agent fingerprints its own host's traffic.
    pub promiscuous: bool,
    /// How often kernel and interface drop counters are read and logged.
    pub stats_interval_secs: u64,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            interfaces: Vec::new(),
            bpf: DEFAULT_BPF.to_string(),
            snaplen: 65_535,
            buffer_mib: 16,
            promiscuous: false,
            stats_interval_secs: 10,
        }
    }
}

/// `[flows]`: flow tracking limits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowConfig {
    /// A flow idle this long is finished and its record written.
    pub idle_timeout_secs: u64,
    /// Most flows tracked at once per interface (about 1 KiB each).
    pub max_flows: usize,
    /// JA4SSH window, in SSH packets.
    pub ssh_window: u32,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            idle_timeout_secs: 30,
            max_flows: 65_536,
            ssh_window: 200,
        }
    }
}

/// `[output]`: where records go.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    /// File to append records to; `-` is standard output.
    pub path: String,
    pub format: OutputFormat,
    /// Also write the raw (unhashed) strings.
    pub with_raw: bool,
    /// Add the flow's `workload` (pid, process, uid, user, exe, cgroup, container, ...) to each
    /// printed record. Off by default so records stay diffable with the reference tool's.
    pub with_workload: bool,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            path: "-".to_string(),
            format: OutputFormat::Yaml,
            with_raw: false,
            with_workload: false,
        }
    }
}

/// Record format, as for `read`: YAML list items by default, or JSON Lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    #[default]
    Yaml,
    Json,
}

/// Why the configuration can't be used; every message names the file or variable at fault.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Parse { path: String, detail: String },
    #[error("{var}={value:?}: {detail}")]
    Env {
        var: String,
        value: String,
        detail: String,
    },
    #[error("{field}: {detail}")]
    Invalid { field: &'static str, detail: String },
}

impl ConfigError {
    /// sysexits.h: EX_NOINPUT (66) for a file that is missing or unreadable, EX_CONFIG (78)
    /// for one that is wrong.
    pub fn exit_code(&self) -> i32 {
        match self {
            ConfigError::Read { .. } => 66,
            _ => 78,
        }
    }
}

impl AgentConfig {
    /// Defaults, overridden by the file at `path` (when given), then by the environment.
    pub fn load(path: Option<&Path>) -> Result<AgentConfig, ConfigError> {
        let mut cfg = match path {
            Some(p) => AgentConfig::from_file(p)?,
            None => AgentConfig::default(),
        };
        cfg.apply_env(|k| std::env::var(k).ok())?;
        Ok(cfg)
    }

    /// Reads and parses one TOML file (no environment).
    pub fn from_file(path: &Path) -> Result<AgentConfig, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        AgentConfig::from_toml(&text).map_err(|detail| ConfigError::Parse {
            path: shown,
            detail,
        })
    }

    /// Parses TOML text; the error is toml's message, flattened to one line.
    pub fn from_toml(text: &str) -> Result<AgentConfig, String> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            e.to_string()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
    }

    /// Applies `HAIS_*` overrides, looked up through `get` (the process environment in
    /// [`AgentConfig::load`]; a map in tests, since setting the real environment in a
    /// threaded test binary is unsound).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("HAIS_INTERFACES") {
            self.capture.interfaces = split_list(&v);
        }
        if let Some(v) = get("HAIS_BPF") {
            self.capture.bpf = v;
        }
        env_parse(&get, "HAIS_SNAPLEN", &mut self.capture.snaplen)?;
        env_parse(&get, "HAIS_BUFFER_MIB", &mut self.capture.buffer_mib)?;
        env_bool(&get, "HAIS_PROMISCUOUS", &mut self.capture.promiscuous)?;
        env_parse(
            &get,
            "HAIS_STATS_INTERVAL",
            &mut self.capture.stats_interval_secs,
        )?;
        env_parse(&get, "HAIS_IDLE_TIMEOUT", &mut self.flows.idle_timeout_secs)?;
        env_parse(&get, "HAIS_MAX_FLOWS", &mut self.flows.max_flows)?;
        env_parse(&get, "HAIS_SSH_WINDOW", &mut self.flows.ssh_window)?;
        if let Some(v) = get("HAIS_OUTPUT") {
            self.output.path = v;
        }
        if let Some(v) = get("HAIS_FORMAT") {
            self.output.format = match v.trim().to_ascii_lowercase().as_str() {
                "json" => OutputFormat::Json,
                "yaml" => OutputFormat::Yaml,
                _ => {
                    return Err(ConfigError::Env {
                        var: "HAIS_FORMAT".into(),
                        value: v,
                        detail: "expected json or yaml".into(),
                    });
                }
            };
        }
        env_bool(&get, "HAIS_WITH_RAW", &mut self.output.with_raw)?;
        env_bool(&get, "HAIS_WITH_WORKLOAD", &mut self.output.with_workload)?;
        env_bool(&get, "HAIS_ATTRIBUTION", &mut self.attribution.enabled)?;
        env_bool(&get, "HAIS_ATTRIBUTION_EBPF", &mut self.attribution.ebpf)?;
        env_parse(
            &get,
            "HAIS_ATTRIBUTION_MAX_LATENCY_MS",
            &mut self.attribution.max_latency_ms,
        )?;
        if let Some(v) = get("HAIS_STATE_DIR") {
            self.state_dir = PathBuf::from(v);
        }
        if let Some(v) = get("HAIS_SERVER") {
            self.uplink.server = v.trim().to_string();
        }
        env_parse(
            &get,
            "HAIS_HEARTBEAT_INTERVAL",
            &mut self.uplink.heartbeat_interval_secs,
        )?;
        env_parse(&get, "HAIS_SPOOL_MAX_BYTES", &mut self.spool.max_bytes)?;
        if let Some(v) = get("HAIS_METRICS_LISTEN") {
            self.metrics.listen = v.trim().to_string();
        }
        if let Some(v) = get("HAIS_SPIRE_WORKLOAD_API_SOCKET") {
            self.spire.workload_api_socket =
                Some(v.trim()).filter(|v| !v.is_empty()).map(PathBuf::from);
        }
        if let Some(v) = get("HAIS_SPIRE_CONTROL_PLANE_ID") {
            self.spire.control_plane_id = v.trim().to_string();
        }
        if let Some(v) = get("HAIS_SPIRE_CONTROL_PLANE_BUNDLE") {
            self.spire.control_plane_bundle =
                Some(v.trim()).filter(|v| !v.is_empty()).map(PathBuf::from);
        }
        Ok(())
    }

    /// Checks ranges after every layer is applied, so the error names the final value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, detail: &str| {
            Err(ConfigError::Invalid {
                field,
                detail: detail.to_string(),
            })
        };
        if self.flows.idle_timeout_secs == 0 {
            return bad(
                "flows.idle_timeout_secs",
                "must be at least 1 (0 would keep every flow until shutdown)",
            );
        }
        if self.capture.stats_interval_secs == 0 {
            return bad("capture.stats_interval_secs", "must be at least 1");
        }
        if !(96..=262_144).contains(&self.capture.snaplen) {
            return bad(
                "capture.snaplen",
                "must be 96..=262144 (smaller cuts TCP headers)",
            );
        }
        if !(1..=1024).contains(&self.capture.buffer_mib) {
            return bad("capture.buffer_mib", "must be 1..=1024");
        }
        if self.flows.max_flows == 0 {
            return bad("flows.max_flows", "must be at least 1");
        }
        if !self.metrics.listen.is_empty()
            && self.metrics.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return bad(
                "metrics.listen",
                "must be an address and port, e.g. 127.0.0.1:9464",
            );
        }
        if self.flows.ssh_window == 0 {
            return bad("flows.ssh_window", "must be at least 1");
        }
        if self.capture.interfaces.iter().any(|i| i.trim().is_empty()) {
            return bad("capture.interfaces", "empty interface name");
        }
        if self.output.path.is_empty() {
            return bad("output.path", "empty (use \"-\" for standard output)");
        }
        if self.state_dir.as_os_str().is_empty() {
            return bad("state_dir", "empty");
        }
        if self.uplink.heartbeat_interval_secs == 0 {
            return bad("uplink.heartbeat_interval_secs", "must be at least 1");
        }
        if !(1..=64).contains(&self.uplink.max_in_flight) {
            return bad("uplink.max_in_flight", "must be 1..=64");
        }
        if !(1..=hais_shared::wire::MAX_EVENTS_PER_BATCH).contains(&self.uplink.batch_events) {
            return bad("uplink.batch_events", "must be 1..=10000");
        }
        if !self.spire.control_plane_id.is_empty()
            && hais_shared::spiffe::SpiffeId::parse(&self.spire.control_plane_id).is_err()
        {
            return bad(
                "spire.control_plane_id",
                "not a SPIFFE ID (spiffe://<td>/<path>)",
            );
        }
        if self.spool.max_bytes < 1 << 20 {
            return bad("spool.max_bytes", "must be at least 1048576 (1 MiB)");
        }
        let a = &self.attribution;
        if !(1..=1 << 20).contains(&a.queue) {
            return bad("attribution.queue", "must be 1..=1048576");
        }
        if !(1..=1 << 24).contains(&a.cache) {
            return bad("attribution.cache", "must be 1..=16777216");
        }
        if a.batch_window_ms > 1000 {
            return bad("attribution.batch_window_ms", "must be 0..=1000");
        }
        if !(2..=1 << 24).contains(&a.notified_flows) {
            return bad("attribution.notified_flows", "must be 2..=16777216");
        }
        if !(1..=100).contains(&a.max_latency_ms) {
            return bad(
                "attribution.max_latency_ms",
                "must be 1..=100 (the capture's own limit is 100 ms)",
            );
        }
        Ok(())
    }

    /// The interfaces to open: the configured ones without duplicates, or `any`.
    pub fn interfaces(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for i in &self.capture.interfaces {
            let i = i.trim();
            if !out.iter().any(|o| o == i) {
                out.push(i.to_string());
            }
        }
        if out.is_empty() {
            out.push("any".to_string());
        }
        out
    }
}

fn split_list(v: &str) -> Vec<String> {
    v.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn env_parse<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    var: &str,
    slot: &mut T,
) -> Result<(), ConfigError>
where
    T::Err: std::fmt::Display,
{
    if let Some(v) = get(var) {
        *slot = v.trim().parse().map_err(|e: T::Err| ConfigError::Env {
            var: var.to_string(),
            value: v.clone(),
            detail: e.to_string(),
        })?;
    }
    Ok(())
}

fn env_bool(
    get: &impl Fn(&str) -> Option<String>,
    var: &str,
    slot: &mut bool,
) -> Result<(), ConfigError> {
    if let Some(v) = get(var) {
        *slot = match v.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            _ => {
                return Err(ConfigError::Env {
                    var: var.to_string(),
                    value: v,
                    detail: "expected true or false".into(),
                });
            }
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn defaults_need_no_file() {
        let c = AgentConfig::from_toml("").unwrap();
        assert_eq!(c, AgentConfig::default());
        assert_eq!(c.capture.bpf, DEFAULT_BPF);
        assert_eq!(c.flows.idle_timeout_secs, 30);
        assert_eq!(c.capture.stats_interval_secs, 10);
        assert_eq!(c.interfaces(), vec!["any"]);
        c.validate().unwrap();
    }

    #[test]
    fn file_overrides_defaults_and_keeps_the_rest() {
        let c = AgentConfig::from_toml(
            "[capture]\ninterfaces = [\"lo\", \"eth0\", \"lo\"]\nbpf = \"tcp\"\n\
             [flows]\nidle_timeout_secs = 5\n[output]\nformat = \"json\"\n",
        )
        .unwrap();
        assert_eq!(c.interfaces(), vec!["lo", "eth0"]);
        assert_eq!(c.capture.bpf, "tcp");
        assert_eq!(c.capture.snaplen, 65_535);
        assert_eq!(c.flows.idle_timeout_secs, 5);
        assert_eq!(c.flows.max_flows, 65_536);
        assert_eq!(c.output.format, OutputFormat::Json);
    }

    #[test]
    fn unknown_keys_and_bad_types_are_errors() {
        let e = AgentConfig::from_toml("[capture]\ninterface = [\"lo\"]\n").unwrap_err();
        assert!(e.contains("interface"), "{e}");
        assert!(!e.contains('\n'));
        let e = AgentConfig::from_toml("[flows]\nidle_timeout_secs = \"30\"\n").unwrap_err();
        assert!(e.contains("idle_timeout_secs"), "{e}");
        assert!(AgentConfig::from_toml("[output]\nformat = \"xml\"\n").is_err());
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut c = AgentConfig::from_toml("[flows]\nidle_timeout_secs = 5\n").unwrap();
        c.apply_env(env(&[
            ("HAIS_INTERFACES", "eth0, eth1 lo"),
            ("HAIS_IDLE_TIMEOUT", "7"),
            ("HAIS_FORMAT", "JSON"),
            ("HAIS_PROMISCUOUS", "yes"),
            ("HAIS_BPF", ""),
        ]))
        .unwrap();
        assert_eq!(c.interfaces(), vec!["eth0", "eth1", "lo"]);
        assert_eq!(c.flows.idle_timeout_secs, 7);
        assert_eq!(c.output.format, OutputFormat::Json);
        assert!(c.capture.promiscuous);
        assert_eq!(c.capture.bpf, "", "an empty filter is allowed: capture all");
    }

    #[test]
    fn spire_settings_from_file_and_environment() {
        let mut c = AgentConfig::from_toml(
            "[spire]\nworkload_api_socket = \"/run/spire/agent.sock\"\nconnect_timeout_secs = 5\n",
        )
        .unwrap();
        assert!(c.spire.enabled());
        assert_eq!(c.spire.connect_timeout(), std::time::Duration::from_secs(5));
        assert!(!AgentConfig::default().spire.enabled());
        c.apply_env(env(&[
            ("HAIS_SPIRE_WORKLOAD_API_SOCKET", "/tmp/other.sock"),
            (
                "HAIS_SPIRE_CONTROL_PLANE_ID",
                "spiffe://hais.local/hais/control-plane",
            ),
            ("HAIS_SPIRE_CONTROL_PLANE_BUNDLE", "/etc/hais/cp.pem"),
        ]))
        .unwrap();
        assert_eq!(
            c.spire.workload_api_socket.as_deref(),
            Some(Path::new("/tmp/other.sock"))
        );
        assert_eq!(
            c.spire.control_plane_bundle.as_deref(),
            Some(Path::new("/etc/hais/cp.pem"))
        );
        c.validate().unwrap();
        // An empty variable turns SPIRE off; a malformed control-plane ID is refused.
        c.apply_env(env(&[("HAIS_SPIRE_WORKLOAD_API_SOCKET", "")]))
            .unwrap();
        assert!(!c.spire.enabled());
        c.spire.control_plane_id = "hais.local/control-plane".into();
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("spire.control_plane_id"), "{e}");
    }

    #[test]
    fn bad_environment_values_name_the_variable() {
        let mut c = AgentConfig::default();
        let e = c.apply_env(env(&[("HAIS_MAX_FLOWS", "lots")])).unwrap_err();
        assert!(e.to_string().starts_with("HAIS_MAX_FLOWS="), "{e}");
        assert_eq!(e.exit_code(), 78);
        let e = c.apply_env(env(&[("HAIS_WITH_RAW", "maybe")])).unwrap_err();
        assert!(e.to_string().contains("HAIS_WITH_RAW"), "{e}");
    }

    #[test]
    fn validation_rejects_out_of_range_values() {
        let mut c = AgentConfig::default();
        c.flows.idle_timeout_secs = 0;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                field: "flows.idle_timeout_secs",
                ..
            })
        ));
        let mut c = AgentConfig::default();
        c.capture.snaplen = 10;
        assert!(c.validate().is_err());
        let mut c = AgentConfig::default();
        c.capture.interfaces = vec![" ".into()];
        assert!(c.validate().is_err());
    }

    #[test]
    fn uplink_and_spool_keys_have_defaults_file_and_env_layers() {
        let c = AgentConfig::default();
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/hais-agent"));
        assert_eq!(c.uplink.heartbeat_interval_secs, 10);
        assert_eq!(c.uplink.max_in_flight, 8);
        assert_eq!(c.spool.max_bytes, 256 << 20);
        let mut c = AgentConfig::from_toml(
            "state_dir = \"/tmp/s\"\n[uplink]\nserver = \"cp:3001\"\n[spool]\nmax_bytes = 2097152\n",
        )
        .unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/tmp/s"));
        assert_eq!(c.uplink.server, "cp:3001");
        assert_eq!(c.spool.max_bytes, 2 << 20);
        c.validate().unwrap();
        c.apply_env(env(&[
            ("HAIS_SERVER", "other:3001"),
            ("HAIS_STATE_DIR", "/srv/hais"),
            ("HAIS_HEARTBEAT_INTERVAL", "3"),
        ]))
        .unwrap();
        assert_eq!(c.uplink.server, "other:3001");
        assert_eq!(c.state_dir, PathBuf::from("/srv/hais"));
        assert_eq!(c.uplink.heartbeat_interval_secs, 3);
        c.spool.max_bytes = 1000;
        assert!(c.validate().is_err());
        assert!(AgentConfig::from_toml("[uplink]\nservr = \"x\"\n").is_err());
    }

    #[test]
    fn metrics_listen_is_an_address() {
        let mut c = AgentConfig::from_toml("[metrics]\nlisten = \"127.0.0.1:9464\"\n").unwrap();
        c.validate().unwrap();
        c.metrics.listen = "localhost".into();
        assert!(c.validate().is_err());
        c.apply_env(env(&[("HAIS_METRICS_LISTEN", " [::1]:9 ")]))
            .unwrap();
        assert_eq!(c.metrics.listen, "[::1]:9");
        c.validate().unwrap();
        assert_eq!(AgentConfig::default().metrics.listen, "");
    }

    #[test]
    fn the_shipped_example_config_is_valid() {
        let c = AgentConfig::from_toml(include_str!("../../packaging/config/agent.toml")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/hais-agent"));
        assert!(c.attribution.ebpf);
    }

    #[test]
    fn attribution_keys_have_defaults_file_and_env_layers() {
        let c = AgentConfig::default();
        assert_eq!(c.attribution.enabled, cfg!(target_os = "linux"));
        assert!(!c.output.with_workload);
        let mut c = AgentConfig::from_toml(
            "[attribution]\nenabled = false\nqueue = 16\nbatch_window_ms = 0\nebpf = false\n\
             [output]\nwith_workload = true\n",
        )
        .unwrap();
        assert!(!c.attribution.enabled);
        assert!(!c.attribution.ebpf);
        assert!(AgentConfig::default().attribution.ebpf);
        assert_eq!(c.attribution.queue, 16);
        assert_eq!(c.attribution.cache, 65_536);
        assert!(c.output.with_workload);
        c.validate().unwrap();
        c.apply_env(env(&[
            ("HAIS_ATTRIBUTION", "on"),
            ("HAIS_ATTRIBUTION_EBPF", "true"),
            ("HAIS_ATTRIBUTION_MAX_LATENCY_MS", "25"),
            ("HAIS_WITH_WORKLOAD", "0"),
        ]))
        .unwrap();
        assert!(c.attribution.enabled);
        assert!(c.attribution.ebpf);
        assert_eq!(c.attribution.max_latency_ms, 25);
        assert!(!c.output.with_workload);
        c.attribution.max_latency_ms = 0;
        assert!(c.validate().is_err());
        assert!(AgentConfig::from_toml("[attribution]\nenable = true\n").is_err());
        let e = c
            .apply_env(env(&[("HAIS_ATTRIBUTION", "perhaps")]))
            .unwrap_err();
        assert!(e.to_string().starts_with("HAIS_ATTRIBUTION="), "{e}");
    }

    #[test]
    fn missing_file_is_66_and_names_the_path() {
        let e = AgentConfig::from_file(Path::new("/nonexistent/agent.toml")).unwrap_err();
        assert_eq!(e.exit_code(), 66);
        assert!(e.to_string().contains("/nonexistent/agent.toml"), "{e}");
    }
}
