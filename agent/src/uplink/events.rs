//! Finished streams → [`FingerprintEvent`]s, the unit the control plane stores.
//!
//! The engine reports a stream as an ordered record in the reference tool's layout (what
//! `read` and `run` print). The uplink needs typed events instead, so this module reads the
//! record's well-known fields: the flow's endpoints, the TLS server name and every fingerprint,
//! each mapped to its [`Method`]. Working from the record (the engine's public output) rather
//! than the engine's internals keeps the printed and the streamed views of a stream identical.
//!
//! Streams without any fingerprint (e.g. a TCP flow seen only mid-connection) produce no event:
//! the control plane has nothing to learn from them.
//!
//! The event also carries the flow's [`Workload`]: the attribution resolved when the flow's
//! first packet was seen ([`crate::attribution`]), taken from the attributor by the flow's key
//! ([`take_workload`]) with the event's own orientation, client → server.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use hais_attribute::{Attribution, Attributor, FlowKey, Proto};
use hais_shared::event::{
    self, Fingerprint, FingerprintEvent, MAX_FINGERPRINTS_PER_EVENT, MAX_SERVER_NAME_LEN, Workload,
};
use hais_shared::fingerprint::Method;
use hais_shared::wire;

use crate::engine::StreamReport;
use crate::output::{Map, Value};

/// Who reports the events.
#[derive(Debug, Clone)]
pub struct EventSource {
    /// The enrolled agent's id (last segment of its SPIFFE ID).
    pub agent_id: String,
    /// This machine's host name.
    pub host: String,
}

/// Why a stream produced no event; counted, never fatal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// The stream carries no fingerprint.
    NoFingerprint,
    /// The record lacks a field every stream has (endpoints, transport).
    Malformed(&'static str),
    /// The event breaks the shared limits (see [`FingerprintEvent::validate`]).
    Invalid(String),
}

/// Record fields whose value is a fingerprint string, and their method.
const SCALAR_FIELDS: &[(&str, Method)] = &[
    ("ja4t", Method::Ja4t),
    ("ja4ts", Method::Ja4ts),
    ("ja4", Method::Ja4),
    ("ja4s", Method::Ja4s),
    ("ja4l_c", Method::Ja4l),
    ("ja4l_s", Method::Ja4ls),
];

fn str_field<'a>(m: &'a Map, key: &str) -> Option<&'a str> {
    match m.get(key) {
        Some(Value::Str(s)) => Some(s),
        _ => None,
    }
}

fn int_field(m: &Map, key: &str) -> Option<u64> {
    match m.get(key) {
        Some(Value::Int(n)) => Some(*n),
        _ => None,
    }
}

fn list_field<'a>(m: &'a Map, key: &str) -> &'a [Value] {
    match m.get(key) {
        Some(Value::List(l)) => l,
        _ => &[],
    }
}

/// Every fingerprint in the record, in record order, without duplicates (a certificate seen
/// twice, a JA4SSH window repeated), cut at the per-event limit.
pub fn fingerprints_of(record: &Map, ipv6: bool) -> Vec<Fingerprint> {
    let mut out: Vec<Fingerprint> = Vec::new();
    let mut seen = HashSet::new();
    let mut push = |method: Method, value: &str| {
        if !value.is_empty()
            && out.len() < MAX_FINGERPRINTS_PER_EVENT
            && seen.insert((method, value.to_string()))
        {
            out.push(Fingerprint {
                method,
                value: value.to_string(),
            });
        }
    };
    for (key, method) in SCALAR_FIELDS {
        if let Some(v) = str_field(record, key) {
            push(*method, v);
        }
    }
    for group in list_field(record, "tls_certs") {
        let Value::Map(g) = group else { continue };
        for cert in list_field(g, "x509") {
            if let Value::Map(c) = cert
                && let Some(v) = str_field(c, "ja4x")
            {
                push(Method::Ja4x, v);
            }
        }
    }
    for req in list_field(record, "http") {
        if let Value::Map(h) = req
            && let Some(v) = str_field(h, "ja4h")
        {
            push(Method::Ja4h, v);
        }
    }
    for w in list_field(record, "ja4ssh") {
        if let Value::Str(v) = w {
            push(Method::Ja4ssh, v);
        }
    }
    // DHCPv4 runs over IPv4 only and DHCPv6 over IPv6 only, so the flow's address family
    // tells JA4D from JA4D6 (the record uses one field for both).
    let dhcp = if ipv6 { Method::Ja4d6 } else { Method::Ja4d };
    for d in list_field(record, "ja4d") {
        match d {
            Value::Str(v) => push(dhcp, v),
            Value::Map(m) => {
                if let Some(v) = str_field(m, "ja4d") {
                    push(dhcp, v);
                }
            }
            _ => {}
        }
    }
    out
}

/// The flow of a record: its first packet's endpoints (for a TCP stream opened in view, the
/// client's SYN; for UDP, the first datagram's sender) and transport.
pub fn flow_of(r: &Map) -> Result<event::Flow, Skip> {
    let ip = |key: &'static str| -> Result<IpAddr, Skip> {
        str_field(r, key)
            .and_then(|s| s.parse().ok())
            .ok_or(Skip::Malformed(key))
    };
    let port = |key: &'static str| -> Result<u16, Skip> {
        int_field(r, key)
            .and_then(|n| u16::try_from(n).ok())
            .ok_or(Skip::Malformed(key))
    };
    let transport = match str_field(r, "transport") {
        Some("tcp") => event::Transport::Tcp,
        Some("udp") => event::Transport::Udp,
        _ => return Err(Skip::Malformed("transport")),
    };
    Ok(event::Flow {
        src_ip: ip("src")?,
        src_port: port("src_port")?,
        dst_ip: ip("dst")?,
        dst_port: port("dst_port")?,
        transport,
    })
}

/// The attributor's key of a flow, oriented as the event's flow (initiator first), which is
/// how the capture thread notified it.
pub fn flow_key(flow: &event::Flow) -> FlowKey {
    FlowKey {
        proto: match flow.transport {
            event::Transport::Tcp => Proto::Tcp,
            event::Transport::Udp => Proto::Udp,
        },
        src: SocketAddr::new(flow.src_ip, flow.src_port),
        dst: SocketAddr::new(flow.dst_ip, flow.dst_port),
    }
}

/// The attributor's key of a finished stream, when its record has endpoints.
pub fn report_key(report: &StreamReport) -> Option<FlowKey> {
    flow_of(&report.record).ok().map(|f| flow_key(&f))
}

/// Takes the stream's attribution out of the attributor (each flow's answer is taken once)
/// and returns it in the event's form; `None` when attribution never ran for the flow.
pub fn take_workload(report: &StreamReport, attributor: &Attributor) -> Option<Workload> {
    report_key(report).and_then(|k| workload_of(&attributor.take(&k)))
}

/// The event form of an attribution, sanitized to pass the event limits.
pub fn workload_of(a: &Attribution) -> Option<Workload> {
    a.to_workload().map(crate::attribution::sanitize)
}

/// The event for one finished stream, without workload.
pub fn to_event(report: &StreamReport, src: &EventSource) -> Result<FingerprintEvent, Skip> {
    to_event_with(report, src, None)
}

/// The event for one finished stream, carrying `workload` (from [`take_workload`]).
pub fn to_event_with(
    report: &StreamReport,
    src: &EventSource,
    workload: Option<Workload>,
) -> Result<FingerprintEvent, Skip> {
    let r = &report.record;
    let flow = flow_of(r)?;
    let fingerprints = fingerprints_of(r, flow.src_ip.is_ipv6());
    if fingerprints.is_empty() {
        return Err(Skip::NoFingerprint);
    }
    let mut ev = FingerprintEvent::new(src.agent_id.clone(), src.host.clone(), flow);
    // A server name that breaks the shared limits (non-ASCII, over-long) is dropped rather
    // than costing the event its fingerprints.
    ev.server_name = str_field(r, "tls_server_name")
        .filter(|s| {
            !s.is_empty()
                && s.len() <= MAX_SERVER_NAME_LEN
                && s.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_string);
    ev.fingerprints = fingerprints;
    ev.ja4_stable = report.ja4_stable.clone();
    ev.validate().map_err(|e| Skip::Invalid(e.to_string()))?;
    if let Some(w) = workload {
        ev.workload = w;
        // Sanitized already; should a workload still break a limit, the event keeps its
        // fingerprints and loses the workload rather than the other way round.
        if let Err(e) = ev.validate() {
            tracing::debug!(error = %e, "workload dropped from event");
            ev.workload = Workload::default();
        }
    }
    Ok(ev)
}

/// The spool record of an event: the encoded [`wire::Event`].
pub fn encode(ev: &FingerprintEvent) -> Vec<u8> {
    wire::encode(&wire::Event::from(ev))
}

/// This machine's host name (the kernel's, as `hostname` prints it), `unknown` if unreadable.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Proto;

    fn src() -> EventSource {
        EventSource {
            agent_id: "a1b2c3".into(),
            host: "web-01".into(),
        }
    }

    fn base(transport: &str, src_ip: &str, dst_ip: &str) -> Map {
        let mut m = Map::new();
        m.push("stream", 3u64);
        m.push("transport", transport);
        m.push("src", src_ip);
        m.push("dst", dst_ip);
        m.push("src_port", 51000u16);
        m.push("dst_port", 443u16);
        m
    }

    fn report(record: Map) -> StreamReport {
        StreamReport {
            proto: Proto::Tcp,
            stream: 3,
            record,
            ja4_stable: None,
        }
    }

    fn methods(ev: &FingerprintEvent) -> Vec<(Method, &str)> {
        ev.fingerprints
            .iter()
            .map(|f| (f.method, f.value.as_str()))
            .collect()
    }

    #[test]
    fn tls_stream_maps_every_fingerprint() {
        let mut m = base("tcp", "10.0.0.2", "93.184.216.34");
        m.push("ja4t", "64240_2-4-8-1-3_1460_7");
        m.push("ja4ts", "65160_2-4-8-1-3_1460_7");
        m.push("tls_server_name", "example.com");
        m.push("ja4", "t13d1516h2_8daaf6152771_02713d6af862");
        m.push("ja4_r", "raw-is-not-a-fingerprint");
        m.push("ja4s", "t130200_1301_234ea6891581");
        let mut cert = Map::new();
        cert.push("ja4x", "a373a9f83c6b_2bab15409345_7bf9a7bf7029");
        cert.push("issuerCN", "Example CA");
        let mut group = Map::new();
        group.push(
            "x509",
            Value::List(vec![Value::Map(cert.clone()), Value::Map(cert)]),
        );
        m.push("tls_certs", Value::List(vec![Value::Map(group)]));
        m.push("ja4l_c", "15_64");
        m.push("ja4l_s", "2004_64");
        let mut h = Map::new();
        h.push(
            "ja4h",
            "ge11nn050000_4740ae6347b0_000000000000_000000000000",
        );
        m.push("http", Value::List(vec![Value::Map(h)]));

        let mut r = report(m);
        r.ja4_stable = Some("t13d1514h2_8daaf6152771_0f2d6ba15cd1".into());
        let ev = to_event(&r, &src()).unwrap();
        assert_eq!(
            ev.ja4_stable.as_deref(),
            Some("t13d1514h2_8daaf6152771_0f2d6ba15cd1"),
            "the resumption-stable JA4 travels with the event"
        );
        assert_eq!(ev.agent_id, "a1b2c3");
        assert_eq!(ev.host, "web-01");
        assert_eq!(ev.server_name.as_deref(), Some("example.com"));
        assert_eq!(ev.flow.src_port, 51000);
        assert_eq!(ev.flow.dst_ip, "93.184.216.34".parse::<IpAddr>().unwrap());
        assert_eq!(ev.flow.transport, event::Transport::Tcp);
        assert_eq!(ev.id.get_version_num(), 7);
        assert_eq!(
            methods(&ev),
            vec![
                (Method::Ja4t, "64240_2-4-8-1-3_1460_7"),
                (Method::Ja4ts, "65160_2-4-8-1-3_1460_7"),
                (Method::Ja4, "t13d1516h2_8daaf6152771_02713d6af862"),
                (Method::Ja4s, "t130200_1301_234ea6891581"),
                (Method::Ja4l, "15_64"),
                (Method::Ja4ls, "2004_64"),
                (Method::Ja4x, "a373a9f83c6b_2bab15409345_7bf9a7bf7029"),
                (
                    Method::Ja4h,
                    "ge11nn050000_4740ae6347b0_000000000000_000000000000"
                ),
            ]
        );
    }

    #[test]
    fn ssh_windows_are_deduplicated() {
        let mut m = base("tcp", "10.0.0.2", "10.0.0.3");
        m.push(
            "ja4ssh",
            Value::List(vec![
                Value::Str("c36s36_c51s80_c69s0".into()),
                Value::Str("c36s36_c51s80_c69s0".into()),
                Value::Str("c76s76_c71s59_c0s70".into()),
            ]),
        );
        let ev = to_event(&report(m), &src()).unwrap();
        assert_eq!(
            methods(&ev),
            vec![
                (Method::Ja4ssh, "c36s36_c51s80_c69s0"),
                (Method::Ja4ssh, "c76s76_c71s59_c0s70")
            ]
        );
    }

    #[test]
    fn dhcp_family_picks_ja4d_or_ja4d6() {
        let mut m = base("udp", "0.0.0.0", "255.255.255.255");
        m.push(
            "ja4d",
            Value::List(vec![Value::Str("disco_12_1-3-6_50".into())]),
        );
        let ev = to_event(&report(m), &src()).unwrap();
        assert_eq!(methods(&ev), vec![(Method::Ja4d, "disco_12_1-3-6_50")]);
        assert_eq!(ev.flow.transport, event::Transport::Udp);

        let mut m = base("udp", "fe80::1", "ff02::1:2");
        let mut d = Map::new();
        d.push("pkt_ja4d", 4u64);
        d.push("ja4d", "solct0010id_1-4-39-6_23");
        m.push("ja4d", Value::List(vec![Value::Map(d)]));
        let ev = to_event(&report(m), &src()).unwrap();
        assert_eq!(
            methods(&ev),
            vec![(Method::Ja4d6, "solct0010id_1-4-39-6_23")]
        );
    }

    #[test]
    fn streams_without_fingerprints_or_endpoints_are_skipped() {
        let m = base("tcp", "10.0.0.2", "10.0.0.3");
        assert_eq!(to_event(&report(m), &src()), Err(Skip::NoFingerprint));
        let mut m = Map::new();
        m.push("transport", "tcp");
        m.push("ja4", "t13d1516h2_8daaf6152771_02713d6af862");
        assert_eq!(to_event(&report(m), &src()), Err(Skip::Malformed("src")));
    }

    #[test]
    fn a_bad_server_name_is_dropped_and_the_event_kept() {
        let mut m = base("tcp", "10.0.0.2", "10.0.0.3");
        m.push("tls_server_name", "bücher.example");
        m.push("ja4", "t13d1516h2_8daaf6152771_02713d6af862");
        let ev = to_event(&report(m), &src()).unwrap();
        assert_eq!(ev.server_name, None);
    }

    #[test]
    fn fingerprints_are_capped_at_the_event_limit() {
        let mut m = base("tcp", "10.0.0.2", "10.0.0.3");
        m.push(
            "ja4ssh",
            Value::List(
                (0..200)
                    .map(|i| Value::Str(format!("c{i}s36_c51s80_c69s0")))
                    .collect(),
            ),
        );
        let ev = to_event(&report(m), &src()).unwrap();
        assert_eq!(ev.fingerprints.len(), MAX_FINGERPRINTS_PER_EVENT);
    }

    #[test]
    fn workload_rides_on_the_event_and_keys_follow_the_record() {
        let mut m = base("tcp", "10.0.0.2", "10.0.0.3");
        m.push("ja4t", "64240_2-4-8-1-3_1460_7");
        let rep = report(m);
        let key = report_key(&rep).unwrap();
        assert_eq!(key.proto, hais_attribute::Proto::Tcp);
        assert_eq!(key.src, "10.0.0.2:51000".parse().unwrap());
        assert_eq!(key.dst, "10.0.0.3:443".parse().unwrap());
        let w = Workload {
            pid: Some(42),
            uid: Some(0),
            process: Some("curl".into()),
            direction: Some("outbound".into()),
            ..Workload::default()
        };
        let ev = to_event_with(&rep, &src(), Some(w.clone())).unwrap();
        assert_eq!(ev.workload, w);
        let back: wire::Event = wire::decode(&encode(&ev)).unwrap();
        assert_eq!(FingerprintEvent::try_from(back).unwrap().workload, w);
        // A workload that breaks the limits costs the event its workload, not the event.
        let bad = Workload {
            user: Some(String::new()),
            ..Workload::default()
        };
        let ev = to_event_with(&rep, &src(), Some(bad)).unwrap();
        assert!(ev.workload.is_empty());
        assert!(to_event(&rep, &src()).unwrap().workload.is_empty());
    }

    #[test]
    fn encoded_events_round_trip_through_the_wire_type() {
        let mut m = base("tcp", "2001:db8::1", "2001:db8::2");
        m.push("ja4", "t13d1516h2_8daaf6152771_02713d6af862");
        let ev = to_event(&report(m), &src()).unwrap();
        let w: wire::Event = wire::decode(&encode(&ev)).unwrap();
        assert_eq!(FingerprintEvent::try_from(w).unwrap(), ev);
    }
}
