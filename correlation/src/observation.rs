//! What one fingerprint event says about one identity, normalised.
//!
//! # Normalisations
//!
//! Each keeps a change that is not a change of the client out of the baselines; each is tested
//! in this module or in [`crate::engine`].
//!
//! 1. **GREASE** values are already removed by JA4 itself (cipher, extension, signature
//!    algorithm and ALPN lists skip them), so they never reach a baseline.
//! 2. **JA4 under TLS 1.3 resumption.** A client resuming a session adds `pre_shared_key` (41)
//!    and possibly `early_data` (42); session tickets (35) and `padding` (21) come and go with
//!    the ticket and the ClientHello's size. Each changes JA4's extension count (section a) and
//!    extension hash (section c), so the same client presents two or three JA4s. The agent sends,
//!    besides the JA4, the JA4 recomputed from the same ClientHello without those four
//!    extensions (`ja4_stable`); baselines compare that key and keep the plain JA4 too
//!    ([`crate::baseline::Entry::values`]). Events from agents that do not send it compare the
//!    plain JA4.
//! 3. **JA4S under resumption.** A server resuming a session answers with `pre_shared_key`
//!    (41), which changes JA4S's extension count (section a) and extension hash (section c);
//!    the server's answer also echoes what each client offered. Destinations' JA4S are compared
//!    on the protocol, TLS version, ALPN (section a without the extension count) and the chosen
//!    cipher (section b): `t130200_1302_a56c5b993250` → `t1300_1302`. The plain value is kept.
//! 4. **JA4H cookies.** Sections c and d hash the cookie names and values, which differ per user
//!    and session: baselines compare sections a and b (method, version, cookie/referer flags,
//!    header count, language, header names).
//! 5. **JA4SSH** describes one window of packets (modes and counts vary with what is typed or
//!    copied): baselines keep its session type ([`crate::detect::SshSession`]), not the value.
//! 6. **JA4L / JA4LS** are measurements (latency, TTL), not fingerprints: they feed the
//!    path-change detector, never a baseline.
//! 7. **Server-side methods** (JA4S, JA4X, JA4TS) of an outbound flow describe the destination,
//!    not the identity: they are kept per destination.
//! 8. **Inbound flows**: the client-side methods (JA4, JA4H, JA4T) are the peer's, so they are
//!    not the identity's; the server-side ones are the identity's own (kept without a
//!    destination).

use std::collections::BTreeMap;

use hais_shared::event::FingerprintEvent;
use hais_shared::fingerprint::Method;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The identity an event belongs to: its SPIFFE ID when the identity service resolved one, else
/// its workload key (`hais_shared::workload`, set on ingest, computed here for older events),
/// else its host and agent (flows no process was attributed to). Built only from the event, so
/// it is the same in every process, replica and restart; also the key the bus partitions events
/// by.
pub fn identity_of(e: &FingerprintEvent) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    let w = &e.workload;
    if let Some(id) = &w.spiffe_id {
        return Cow::Borrowed(id);
    }
    if let Some(key) = &w.key {
        return Cow::Borrowed(key);
    }
    match hais_shared::workload::workload_key(e) {
        Some(key) => Cow::Owned(key),
        None => Cow::Owned(format!("agent:{}:{}", e.host, e.agent_id)),
    }
}

/// Who presented a fingerprint of a flow: the identity itself, or the destination it talked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The identity's own fingerprint (its client stack, or its server stack on inbound flows).
    Own,
    /// The server the identity talked to (kept per destination).
    Destination,
}

/// One fingerprint of an observation, normalised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presented {
    pub method: Method,
    /// What baselines compare (the resumption-stable JA4, JA4H's sections a and b, …).
    pub key: String,
    /// The value as the agent computed it.
    pub value: String,
    pub side: Side,
}

/// One event, as the detectors read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub event_id: Uuid,
    /// When the agent observed the flow, microseconds since the Unix epoch.
    pub ts_us: i64,
    pub identity: String,
    /// The server name when the client sent one, else `ip:port`.
    pub destination: String,
    /// Baseline fingerprints ([`Presented`]), JA4SSH excluded.
    pub presented: Vec<Presented>,
    /// JA4SSH values of the flow (one per window).
    pub ssh: Vec<String>,
    /// The JA4LS (server latency and TTL) of an outbound flow, for path-change.
    pub ja4ls: Option<String>,
    /// Context carried to findings: `host`, `namespace`, `workload`.
    pub attributes: BTreeMap<String, String>,
}

/// Client-side methods: the identity's own on outbound flows, the peer's on inbound ones.
pub fn is_client_method(m: Method) -> bool {
    matches!(
        m,
        Method::Ja4 | Method::Ja4h | Method::Ja4t | Method::Ja4d | Method::Ja4d6
    )
}

/// Server-side methods: the destination's on outbound flows, the identity's own on inbound ones.
pub fn is_server_method(m: Method) -> bool {
    matches!(m, Method::Ja4s | Method::Ja4x | Method::Ja4ts)
}

/// JA4S without what resumption changes (normalisation 3): section a without the extension
/// count, and section b.
pub fn ja4s_key(value: &str) -> String {
    let mut parts = value.split('_');
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) if a.len() == 7 && a.is_ascii() => format!("{}{}_{b}", &a[..3], &a[5..]),
        _ => value.to_owned(),
    }
}

/// JA4H without its cookie sections (normalisation 4).
pub fn ja4h_key(value: &str) -> String {
    let mut parts = value.splitn(3, '_');
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => format!("{a}_{b}"),
        _ => value.to_owned(),
    }
}

impl Observation {
    /// The observation of `e`, whose `ja4_stable` is the resumption-stable JA4 when its agent
    /// sent one (normalisation 2).
    pub fn from_event(e: &FingerprintEvent) -> Observation {
        let ja4_stable = e.ja4_stable.as_deref();
        let inbound = e.workload.direction.as_deref() == Some("inbound");
        let mut presented = Vec::new();
        let mut ssh = Vec::new();
        let mut ja4ls = None;
        for f in &e.fingerprints {
            let side = match (is_client_method(f.method), is_server_method(f.method)) {
                (true, _) if inbound => continue,
                (true, _) => Side::Own,
                (_, true) if inbound => Side::Own,
                (_, true) => Side::Destination,
                _ => {
                    match f.method {
                        Method::Ja4ssh => ssh.push(f.value.clone()),
                        Method::Ja4ls if !inbound => ja4ls = Some(f.value.clone()),
                        _ => {}
                    }
                    continue;
                }
            };
            let key = match f.method {
                Method::Ja4 => ja4_stable.unwrap_or(&f.value).to_owned(),
                Method::Ja4h => ja4h_key(&f.value),
                Method::Ja4s => ja4s_key(&f.value),
                _ => f.value.clone(),
            };
            presented.push(Presented {
                method: f.method,
                key,
                value: f.value.clone(),
                side,
            });
        }
        let destination = match &e.server_name {
            Some(n) => n.clone(),
            None => std::net::SocketAddr::new(e.flow.dst_ip, e.flow.dst_port).to_string(),
        };
        let mut attributes = BTreeMap::new();
        attributes.insert("host".to_owned(), e.host.clone());
        if let Some(ns) = &e.workload.k8s_namespace {
            attributes.insert("namespace".to_owned(), ns.clone());
        }
        if let Some(k) = &e.workload.key {
            attributes.insert("workload".to_owned(), k.clone());
        }
        Observation {
            event_id: e.id,
            ts_us: (e.timestamp.unix_timestamp_nanos() / 1000) as i64,
            identity: identity_of(e).into_owned(),
            destination,
            presented,
            ssh,
            ja4ls,
            attributes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hais_shared::event::{Fingerprint, Flow, Transport};

    fn event(direction: Option<&str>) -> FingerprintEvent {
        let mut e = FingerprintEvent::new(
            "a1",
            "h1",
            Flow {
                src_ip: "10.0.0.1".parse().unwrap(),
                src_port: 40000,
                dst_ip: "10.0.0.2".parse().unwrap(),
                dst_port: 443,
                transport: Transport::Tcp,
            },
        );
        e.workload.direction = direction.map(Into::into);
        e.workload.spiffe_id = Some("spiffe://td/web".into());
        for (method, value) in [
            (Method::Ja4, "t13d1516h2_8daaf6152771_e5627efa2ab1"),
            (
                Method::Ja4h,
                "ge11cn060000_4e59edc1297a_4da5efaf0cbd_000000000000",
            ),
            (Method::Ja4s, "t130200_1301_234ea6891581"),
            (Method::Ja4ls, "5191_42"),
            (Method::Ja4ssh, "c36s36_c51s80_c69s0"),
        ] {
            e.fingerprints.push(Fingerprint {
                method,
                value: value.into(),
            });
        }
        e
    }

    #[test]
    fn outbound_flows_split_own_and_destination_fingerprints() {
        let mut e = event(Some("outbound"));
        e.ja4_stable = Some("t13d1314h2_8daaf6152771_02713d6af862".into());
        let o = Observation::from_event(&e);
        assert_eq!(o.identity, "spiffe://td/web");
        assert_eq!(o.destination, "10.0.0.2:443");
        let by: Vec<(Method, &str, Side)> = o
            .presented
            .iter()
            .map(|p| (p.method, p.key.as_str(), p.side))
            .collect();
        assert_eq!(
            by,
            [
                (
                    Method::Ja4,
                    "t13d1314h2_8daaf6152771_02713d6af862",
                    Side::Own
                ),
                (Method::Ja4h, "ge11cn060000_4e59edc1297a", Side::Own),
                (Method::Ja4s, "t1300_1301", Side::Destination),
            ]
        );
        assert_eq!(o.presented[0].value, "t13d1516h2_8daaf6152771_e5627efa2ab1");
        assert_eq!(o.ja4ls.as_deref(), Some("5191_42"));
        assert_eq!(o.ssh, ["c36s36_c51s80_c69s0"]);
    }

    #[test]
    fn ja4s_keys_ignore_the_extensions_resumption_changes() {
        // s_server's answers to curl, fresh and resumed (captured in the end-to-end test).
        assert_eq!(ja4s_key("t130200_1302_a56c5b993250"), "t1300_1302");
        assert_eq!(ja4s_key("t130300_1302_0ee26285a86f"), "t1300_1302");
        assert_eq!(ja4s_key("t1203h2_c02f_aaaaaaaaaaaa"), "t12h2_c02f");
        assert_eq!(ja4s_key("odd"), "odd");
    }

    #[test]
    fn inbound_flows_keep_only_the_identitys_server_side() {
        let o = Observation::from_event(&event(Some("inbound")));
        let by: Vec<(Method, Side)> = o.presented.iter().map(|p| (p.method, p.side)).collect();
        assert_eq!(by, [(Method::Ja4s, Side::Own)]);
        assert_eq!(o.ja4ls, None);
    }

    #[test]
    fn identity_falls_back_to_the_workload_key_then_the_agent() {
        let mut e = event(None);
        e.workload.spiffe_id = None;
        e.workload.key = Some("k8s:shop:deployment/web".into());
        assert_eq!(identity_of(&e), "k8s:shop:deployment/web");
        e.workload.key = None;
        assert_eq!(identity_of(&e), "agent:h1:a1");
    }
}
