//! Conversions between the wire messages and the domain types of [`crate::event`].
//!
//! Decoding checks shape only (lengths of ids and addresses, known enum values, a present flow);
//! the content limits stay in [`FingerprintEvent::validate`], applied by the receiver, so one set
//! of rules serves the JSON API and the uplink alike.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use time::OffsetDateTime;
use uuid::Uuid;

use super::messages as w;
use crate::event::{self, FingerprintEvent};
use crate::fingerprint::Method;

/// Why bytes or a message could not be turned into domain types.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("message is {0} bytes long; the limit is {max}", max = super::MAX_MESSAGE_LEN)]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Decode(String),
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("{field} is invalid: {why}")]
    Invalid { field: &'static str, why: String },
}

fn invalid(field: &'static str, why: impl Into<String>) -> WireError {
    WireError::Invalid {
        field,
        why: why.into(),
    }
}

impl From<Method> for w::Method {
    fn from(m: Method) -> Self {
        match m {
            Method::Ja4 => w::Method::Ja4,
            Method::Ja4s => w::Method::Ja4s,
            Method::Ja4h => w::Method::Ja4h,
            Method::Ja4l => w::Method::Ja4l,
            Method::Ja4ls => w::Method::Ja4ls,
            Method::Ja4x => w::Method::Ja4x,
            Method::Ja4ssh => w::Method::Ja4ssh,
            Method::Ja4t => w::Method::Ja4t,
            Method::Ja4ts => w::Method::Ja4ts,
            Method::Ja4d => w::Method::Ja4d,
            Method::Ja4d6 => w::Method::Ja4d6,
        }
    }
}

impl TryFrom<w::Method> for Method {
    type Error = WireError;
    fn try_from(m: w::Method) -> Result<Self, WireError> {
        Ok(match m {
            w::Method::Unspecified => return Err(invalid("fingerprints[].method", "unspecified")),
            w::Method::Ja4 => Method::Ja4,
            w::Method::Ja4s => Method::Ja4s,
            w::Method::Ja4h => Method::Ja4h,
            w::Method::Ja4l => Method::Ja4l,
            w::Method::Ja4ls => Method::Ja4ls,
            w::Method::Ja4x => Method::Ja4x,
            w::Method::Ja4ssh => Method::Ja4ssh,
            w::Method::Ja4t => Method::Ja4t,
            w::Method::Ja4ts => Method::Ja4ts,
            w::Method::Ja4d => Method::Ja4d,
            w::Method::Ja4d6 => Method::Ja4d6,
        })
    }
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn ip_from(field: &'static str, b: &[u8]) -> Result<IpAddr, WireError> {
    match b.len() {
        4 => Ok(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(b).unwrap()))),
        16 => Ok(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap()))),
        n => Err(invalid(field, format!("{n} bytes, expected 4 or 16"))),
    }
}

fn port_from(field: &'static str, p: u32) -> Result<u16, WireError> {
    u16::try_from(p).map_err(|_| invalid(field, format!("{p} is not a port")))
}

impl From<&FingerprintEvent> for w::Event {
    fn from(e: &FingerprintEvent) -> Self {
        let wl = &e.workload;
        w::Event {
            id: e.id.as_bytes().to_vec(),
            // i64 nanoseconds cover the years 1678..2262; clamp rather than wrap outside them.
            timestamp_ns: i64::try_from(e.timestamp.unix_timestamp_nanos()).unwrap_or(i64::MAX),
            agent_id: e.agent_id.clone(),
            host: e.host.clone(),
            flow: Some(w::Flow {
                src_ip: ip_bytes(e.flow.src_ip),
                src_port: e.flow.src_port.into(),
                dst_ip: ip_bytes(e.flow.dst_ip),
                dst_port: e.flow.dst_port.into(),
                transport: match e.flow.transport {
                    event::Transport::Tcp => w::Transport::Tcp,
                    event::Transport::Udp => w::Transport::Udp,
                } as i32,
            }),
            server_name: e.server_name.clone(),
            fingerprints: e
                .fingerprints
                .iter()
                .map(|f| w::Fingerprint {
                    method: w::Method::from(f.method) as i32,
                    value: f.value.clone(),
                })
                .collect(),
            ja4_stable: e.ja4_stable.clone(),
            // `selectors` is the control plane's, never sent by an agent.
            workload: (!wl.is_empty()).then(|| w::Workload {
                pid: wl.pid,
                process: wl.process.clone(),
                uid: wl.uid,
                container: wl.container.clone(),
                pod: wl.pod.clone(),
                spiffe_id: wl.spiffe_id.clone(),
                exe: wl.exe.clone(),
                exe_sha256: wl.exe_sha256.clone(),
                cmdline: wl.cmdline.clone(),
                user: wl.user.clone(),
                cgroup: wl.cgroup.clone(),
                container_runtime: wl.container_runtime.clone(),
                container_labels: wl.container_labels.clone(),
                k8s_namespace: wl.k8s_namespace.clone(),
                k8s_service_account: wl.k8s_service_account.clone(),
                direction: wl.direction.clone(),
                unattributed: wl.unattributed.clone(),
                container_image: wl.container_image.clone(),
                container_name: wl.container_name.clone(),
                k8s_pod_name: wl.k8s_pod_name.clone(),
            }),
        }
    }
}

impl TryFrom<w::Event> for FingerprintEvent {
    type Error = WireError;
    fn try_from(e: w::Event) -> Result<Self, WireError> {
        let id = Uuid::from_slice(&e.id).map_err(|_| invalid("id", "not 16 bytes"))?;
        let timestamp = OffsetDateTime::from_unix_timestamp_nanos(e.timestamp_ns.into())
            .map_err(|err| invalid("timestamp_ns", err.to_string()))?;
        let f = e.flow.ok_or(WireError::Missing("flow"))?;
        let transport = match w::Transport::try_from(f.transport) {
            Ok(w::Transport::Tcp) => event::Transport::Tcp,
            Ok(w::Transport::Udp) => event::Transport::Udp,
            _ => {
                return Err(invalid(
                    "flow.transport",
                    format!("unknown value {}", f.transport),
                ));
            }
        };
        let flow = event::Flow {
            src_ip: ip_from("flow.src_ip", &f.src_ip)?,
            src_port: port_from("flow.src_port", f.src_port)?,
            dst_ip: ip_from("flow.dst_ip", &f.dst_ip)?,
            dst_port: port_from("flow.dst_port", f.dst_port)?,
            transport,
        };
        let fingerprints = e
            .fingerprints
            .into_iter()
            .map(|fp| {
                let m = w::Method::try_from(fp.method).map_err(|_| {
                    invalid(
                        "fingerprints[].method",
                        format!("unknown value {}", fp.method),
                    )
                })?;
                Ok(event::Fingerprint {
                    method: Method::try_from(m)?,
                    value: fp.value,
                })
            })
            .collect::<Result<Vec<_>, WireError>>()?;
        let workload = e
            .workload
            .map(|wl| event::Workload {
                pid: wl.pid,
                process: wl.process,
                uid: wl.uid,
                container: wl.container,
                pod: wl.pod,
                spiffe_id: wl.spiffe_id,
                exe: wl.exe,
                exe_sha256: wl.exe_sha256,
                cmdline: wl.cmdline,
                user: wl.user,
                cgroup: wl.cgroup,
                container_runtime: wl.container_runtime,
                container_labels: wl.container_labels,
                k8s_namespace: wl.k8s_namespace,
                k8s_service_account: wl.k8s_service_account,
                direction: wl.direction,
                unattributed: wl.unattributed,
                container_image: wl.container_image,
                container_name: wl.container_name,
                k8s_pod_name: wl.k8s_pod_name,
                selectors: Vec::new(),
                key: None,
            })
            .unwrap_or_default();
        Ok(FingerprintEvent {
            id,
            timestamp,
            agent_id: e.agent_id,
            host: e.host,
            flow,
            server_name: e.server_name,
            fingerprints,
            ja4_stable: e.ja4_stable,
            workload,
        })
    }
}
