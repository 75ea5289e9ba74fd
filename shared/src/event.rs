//! The fingerprint event: what an agent reports about one flow, and what the control plane stores,
//! searches and publishes on its bus.
//!
//! One event per flow, carrying every fingerprint computed for it so far. The id is a UUIDv7:
//! unique (so storage can drop replays and at-least-once delivery stores each event once) and
//! time-ordered (so it doubles as a time key for partitioning and keyset pagination).
//!
//! [`FingerprintEvent::validate`] holds the limits both sides enforce; an agent can check an event
//! before spooling it, and the control plane rejects what fails with a clear message.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::fingerprint::Method;

/// Longest accepted agent id, host name or process name, in bytes.
pub const MAX_NAME_LEN: usize = 256;
/// Longest accepted TLS server name (a DNS name is at most 253 characters).
pub const MAX_SERVER_NAME_LEN: usize = 253;
/// Longest accepted fingerprint value. JA4H and JA4X are the longest methods and stay far below.
pub const MAX_FINGERPRINT_LEN: usize = 512;
/// Most fingerprints one event may carry (one flow yields a handful; certificates add a few).
pub const MAX_FINGERPRINTS_PER_EVENT: usize = 64;
/// Longest accepted SPIFFE ID, container or pod identifier.
pub const MAX_IDENTITY_LEN: usize = 2048;

/// One flow's fingerprints as reported by an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FingerprintEvent {
    /// Unique, time-ordered event id (UUIDv7). A replayed event keeps its id.
    pub id: Uuid,
    /// When the agent observed the flow (RFC 3339 on the wire).
    #[serde(with = "time::serde::rfc3339")]
    pub timestamp: OffsetDateTime,
    /// The reporting agent's id (the last segment of its SPIFFE ID once enrolled).
    pub agent_id: String,
    /// Host name of the machine the agent runs on.
    pub host: String,
    /// The flow the fingerprints were taken from.
    pub flow: Flow,
    /// TLS SNI / QUIC server name, when the client sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Every fingerprint computed for this flow so far.
    pub fingerprints: Vec<Fingerprint>,
    /// The resumption-stable JA4 of the flow's ClientHello (its JA4 without the extensions TLS
    /// session resumption adds or drops: `hais_ja4::ja4::RESUMPTION_EXTENSIONS`), what
    /// correlation baselines compare; absent from agents that do not compute it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ja4_stable: Option<String>,
    /// The local workload behind the flow, once attribution is available.
    #[serde(default, skip_serializing_if = "Workload::is_empty")]
    pub workload: Workload,
}

/// A flow's endpoints and transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    pub src_ip: IpAddr,
    pub src_port: u16,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    pub transport: Transport,
}

/// The transport protocol of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    /// The lowercase name used on the wire and in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }

    /// The transport [`Transport::as_str`] names; `None` for anything else.
    pub fn from_name(s: &str) -> Option<Transport> {
        [Transport::Tcp, Transport::Udp]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

/// One fingerprint: which method produced it, and its value (e.g. `t13d1516h2_8daaf6152771_e5627efa2ab1`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint {
    pub method: Method,
    pub value: String,
}

impl Fingerprint {
    /// The first three `_`-separated sections (JA4's a, b and c parts). Methods whose values have
    /// fewer sections yield `None` for the missing ones.
    pub fn parts(&self) -> [Option<&str>; 3] {
        let mut it = self.value.split('_');
        [it.next(), it.next(), it.next()]
    }
}

/// The workload a flow belongs to. Every field is optional: attribution fills in what it can.
///
/// The agent reports what it observed about the local process (pid, executable, uid, cgroup,
/// container, pod); the control plane adds the workload `key`, and `spiffe_id` and `selectors`
/// by matching registration entries, so agents never hold or decide workload identities.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Short process name (`comm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Container id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Kubernetes pod UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The workload's SPIFFE ID, resolved by the control plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// Executable path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// SHA-256 of the executable, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe_sha256: Option<String>,
    /// Command line, truncated by the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// User name of `uid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// `docker`, `containerd`, `cri-o`, `podman` or `unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_runtime: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub container_labels: BTreeMap<String, String>,
    /// The container's image reference as the runtime started it (`registry/app:tag`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_image: Option<String>,
    /// The container's name (Docker's `Name` without the leading `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// The Kubernetes pod's name; with the namespace it names the owning workload (see
    /// [`crate::workload`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s_pod_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s_service_account: Option<String>,
    /// `outbound` (the local process opened the flow) or `inbound` (it accepted it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// Why no process is known, when attribution ran and failed (`process-gone`, `not-local`,
    /// `queue-full`, `unknown`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unattributed: Option<String>,
    /// Selectors of the registration entry that named `spiffe_id` (set by the control plane).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub selectors: Vec<String>,
    /// The workload key ([`crate::workload`]), set by the control plane on ingest (whatever a
    /// sender put here is replaced), so every consumer reads the same key without recomputing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl Workload {
    /// True when attribution found nothing.
    pub fn is_empty(&self) -> bool {
        *self == Workload::default()
    }
}

/// Most container labels kept per event.
pub const MAX_LABELS: usize = 64;

/// Why an event was refused. The message names the field and the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    #[error("id {0} is not a UUIDv7 (event ids must be time-ordered)")]
    NotUuidV7(Uuid),
    #[error("{field} must not be empty")]
    Empty { field: &'static str },
    #[error("{field} is {len} bytes long; the limit is {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} contains a control or non-ASCII character")]
    BadCharacter { field: &'static str },
    #[error("an event needs between 1 and {max} fingerprints, got {got}")]
    FingerprintCount { got: usize, max: usize },
}

impl FingerprintEvent {
    /// A new event with a fresh UUIDv7 id, stamped now, with no fingerprints and no workload.
    pub fn new(agent_id: impl Into<String>, host: impl Into<String>, flow: Flow) -> Self {
        FingerprintEvent {
            id: Uuid::now_v7(),
            timestamp: OffsetDateTime::now_utc(),
            agent_id: agent_id.into(),
            host: host.into(),
            flow,
            server_name: None,
            fingerprints: Vec::new(),
            ja4_stable: None,
            workload: Workload::default(),
        }
    }

    /// Checks the limits shared by agent and control plane. Events that pass can be stored and
    /// indexed without surprises (bounded sizes, printable text in indexed columns).
    pub fn validate(&self) -> Result<(), EventError> {
        if self.id.get_version_num() != 7 {
            return Err(EventError::NotUuidV7(self.id));
        }
        check_text("agent_id", &self.agent_id, MAX_NAME_LEN, true)?;
        check_text("host", &self.host, MAX_NAME_LEN, true)?;
        if let Some(sni) = &self.server_name {
            check_text("server_name", sni, MAX_SERVER_NAME_LEN, true)?;
        }
        if let Some(k) = &self.ja4_stable {
            check_text("ja4_stable", k, MAX_FINGERPRINT_LEN, true)?;
        }
        let n = self.fingerprints.len();
        if n == 0 || n > MAX_FINGERPRINTS_PER_EVENT {
            return Err(EventError::FingerprintCount {
                got: n,
                max: MAX_FINGERPRINTS_PER_EVENT,
            });
        }
        for fp in &self.fingerprints {
            check_text("fingerprints[].value", &fp.value, MAX_FINGERPRINT_LEN, true)?;
        }
        let w = &self.workload;
        for (field, v, ascii) in [
            ("workload.process", &w.process, false),
            ("workload.exe", &w.exe, false),
            ("workload.cmdline", &w.cmdline, false),
            ("workload.cgroup", &w.cgroup, false),
            ("workload.user", &w.user, true),
            ("workload.container", &w.container, true),
            ("workload.container_runtime", &w.container_runtime, true),
            ("workload.pod", &w.pod, true),
            ("workload.spiffe_id", &w.spiffe_id, true),
            ("workload.exe_sha256", &w.exe_sha256, true),
            ("workload.k8s_namespace", &w.k8s_namespace, true),
            ("workload.k8s_service_account", &w.k8s_service_account, true),
            ("workload.k8s_pod_name", &w.k8s_pod_name, true),
            ("workload.container_image", &w.container_image, true),
            ("workload.container_name", &w.container_name, true),
            ("workload.direction", &w.direction, true),
            ("workload.unattributed", &w.unattributed, true),
            ("workload.key", &w.key, false),
        ] {
            if let Some(v) = v {
                check_text(field, v, MAX_IDENTITY_LEN, ascii)?;
            }
        }
        if w.container_labels.len() > MAX_LABELS {
            return Err(EventError::TooLong {
                field: "workload.container_labels",
                len: w.container_labels.len(),
                max: MAX_LABELS,
            });
        }
        for (k, v) in &w.container_labels {
            check_text("workload.container_labels", k, MAX_NAME_LEN, false)?;
            if v.len() > MAX_IDENTITY_LEN {
                return Err(EventError::TooLong {
                    field: "workload.container_labels",
                    len: v.len(),
                    max: MAX_IDENTITY_LEN,
                });
            }
            // A label's value may be empty, but never carry NUL or terminal escapes into
            // storage, logs or a terminal showing them.
            if v.chars().any(char::is_control) {
                return Err(EventError::BadCharacter {
                    field: "workload.container_labels",
                });
            }
        }
        for sel in &w.selectors {
            check_text("workload.selectors", sel, MAX_IDENTITY_LEN, false)?;
        }
        Ok(())
    }
}

/// Rejects empty, over-long and (when `ascii_only`) non-printable-ASCII text. Indexed columns are
/// kept to printable ASCII so that prefix search and byte-wise ordering behave the same in every
/// database backend.
fn check_text(
    field: &'static str,
    v: &str,
    max: usize,
    ascii_only: bool,
) -> Result<(), EventError> {
    if v.is_empty() {
        return Err(EventError::Empty { field });
    }
    if v.len() > max {
        return Err(EventError::TooLong {
            field,
            len: v.len(),
            max,
        });
    }
    let bad = if ascii_only {
        v.bytes().any(|b| !(0x21..=0x7e).contains(&b))
    } else {
        v.chars().any(char::is_control)
    };
    if bad {
        return Err(EventError::BadCharacter { field });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FingerprintEvent {
        let mut e = FingerprintEvent::new(
            "agent-1",
            "web-01",
            Flow {
                src_ip: "10.0.0.2".parse().unwrap(),
                src_port: 51000,
                dst_ip: "93.184.216.34".parse().unwrap(),
                dst_port: 443,
                transport: Transport::Tcp,
            },
        );
        e.server_name = Some("example.com".into());
        e.fingerprints.push(Fingerprint {
            method: Method::Ja4,
            value: "t13d1516h2_8daaf6152771_e5627efa2ab1".into(),
        });
        e
    }

    #[test]
    fn round_trips_through_json_with_lowercase_names() {
        let e = sample();
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["fingerprints"][0]["method"], "ja4");
        assert_eq!(json["flow"]["transport"], "tcp");
        assert!(json.get("workload").is_none(), "empty workload is omitted");
        let back: FingerprintEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn ids_are_v7_and_time_ordered() {
        let a = sample();
        let b = sample();
        assert_eq!(a.id.get_version_num(), 7);
        assert!(a.id < b.id);
        a.validate().unwrap();
    }

    #[test]
    fn validation_names_the_field() {
        let mut e = sample();
        e.id = Uuid::nil();
        assert!(matches!(e.validate(), Err(EventError::NotUuidV7(_))));
        let mut e = sample();
        e.host = "x".repeat(MAX_NAME_LEN + 1);
        assert_eq!(
            e.validate().unwrap_err().to_string(),
            "host is 257 bytes long; the limit is 256"
        );
        let mut e = sample();
        e.fingerprints.clear();
        assert!(matches!(
            e.validate(),
            Err(EventError::FingerprintCount { got: 0, .. })
        ));
        let mut e = sample();
        e.fingerprints[0].value = "a b".into();
        assert!(matches!(e.validate(), Err(EventError::BadCharacter { .. })));
    }

    #[test]
    fn parts_split_on_underscore() {
        let e = sample();
        assert_eq!(
            e.fingerprints[0].parts(),
            [
                Some("t13d1516h2"),
                Some("8daaf6152771"),
                Some("e5627efa2ab1")
            ]
        );
    }
}
