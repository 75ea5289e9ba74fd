//! What HaIS says in the Open Cybersecurity Schema Framework (OCSF 1.3), for SIEMs and data
//! lakes that read it: stored events as Network Activity (class 4001) with their JA4+
//! fingerprints in `ja4_fingerprint_list` (`GET /api/ja4/export/ocsf`), and alerts as Detection
//! Findings (class 2004, the alert service's syslog channel). Plain JSON building, no I/O.
//!
//! OCSF names JA4, JA4S, JA4H, JA4L, JA4X, JA4SSH, JA4T and JA4TS in its `ja4_fingerprint`
//! object's `type_id`; JA4LS, JA4D and JA4D6 are "Other" (99) with the method's name in `type`.
//! What OCSF has no attribute for (the SPIFFE ID, the workload key, the process's hash) goes in
//! `unmapped`.

use hais_shared::event::FingerprintEvent;
use hais_shared::fingerprint::Method;
use serde_json::{Map, Value, json};

use crate::store::events::EventRecord;

/// The OCSF schema version these documents follow.
pub const VERSION: &str = "1.3.0";

/// `metadata` of every document: the schema version, the document's id and HaIS as product.
pub fn metadata(uid: &str) -> Value {
    json!({
        "version": VERSION,
        "uid": uid,
        "product": {"name": "HaIS", "vendor_name": "HaIS", "version": env!("CARGO_PKG_VERSION")},
    })
}

/// OCSF's `ja4_fingerprint.type_id` of a method, and FoxIO's name of it (the `type`).
pub fn ja4_type(m: Method) -> (u8, &'static str) {
    match m {
        Method::Ja4 => (1, "JA4"),
        Method::Ja4s => (2, "JA4Server"),
        Method::Ja4h => (3, "JA4HTTP"),
        Method::Ja4l => (4, "JA4Latency"),
        Method::Ja4x => (5, "JA4X509"),
        Method::Ja4ssh => (6, "JA4SSH"),
        Method::Ja4t => (7, "JA4TCP"),
        Method::Ja4ts => (8, "JA4TCPServer"),
        Method::Ja4ls => (99, "JA4LatencyServer"),
        Method::Ja4d => (99, "JA4DHCP"),
        Method::Ja4d6 => (99, "JA4DHCPv6"),
    }
}

/// One `ja4_fingerprint` object. The a/b/c(/d) sections are given for the methods whose value is
/// sections joined by `_` (not the latency and DHCP ones, whose parts are measurements or lists).
pub fn ja4_fingerprint(m: Method, value: &str) -> Value {
    let (type_id, name) = ja4_type(m);
    let mut o = Map::new();
    o.insert("type_id".into(), type_id.into());
    o.insert("type".into(), name.into());
    o.insert("value".into(), value.into());
    let sectioned = !matches!(
        m,
        Method::Ja4l | Method::Ja4ls | Method::Ja4d | Method::Ja4d6
    );
    if sectioned {
        let parts: Vec<&str> = value.split('_').collect();
        if (3..=4).contains(&parts.len()) {
            for (name, part) in ["section_a", "section_b", "section_c", "section_d"]
                .iter()
                .zip(parts)
            {
                o.insert((*name).into(), part.into());
            }
        }
    }
    Value::Object(o)
}

/// A stored event as an OCSF Network Activity (class 4001, activity Traffic): the flow's
/// endpoints (the server name as the destination's hostname), the host as `device`, the
/// attributed process and user as `actor`, and the fingerprints.
pub fn network_activity(r: &EventRecord) -> Value {
    let e: &FingerprintEvent = &r.event;
    let w = &e.workload;
    let time_ms = (e.timestamp.unix_timestamp_nanos() / 1_000_000) as i64;
    let mut dst = json!({"ip": e.flow.dst_ip.to_string(), "port": e.flow.dst_port});
    if let Some(sni) = &e.server_name {
        dst["hostname"] = sni.as_str().into();
    }
    let mut doc = json!({
        "class_uid": 4001,
        "class_name": "Network Activity",
        "category_uid": 4,
        "category_name": "Network Activity",
        "activity_id": 6,
        "activity_name": "Traffic",
        "type_uid": 4001 * 100 + 6,
        "severity_id": 1,
        "severity": "Informational",
        "time": time_ms,
        "metadata": metadata(&e.id.to_string()),
        "device": {"hostname": e.host, "uid": e.agent_id},
        "src_endpoint": {"ip": e.flow.src_ip.to_string(), "port": e.flow.src_port},
        "dst_endpoint": dst,
        "connection_info": {"protocol_name": e.flow.transport.as_str()},
        "ja4_fingerprint_list": e
            .fingerprints
            .iter()
            .map(|f| ja4_fingerprint(f.method, &f.value))
            .collect::<Vec<_>>(),
    });
    if w.pid.is_some() || w.exe.is_some() || w.process.is_some() {
        let mut process = Map::new();
        if let Some(pid) = w.pid {
            process.insert("pid".into(), pid.into());
        }
        if let Some(name) = &w.process {
            process.insert("name".into(), name.as_str().into());
        }
        if let Some(exe) = &w.exe {
            process.insert("file".into(), json!({"path": exe}));
        }
        if let Some(cmd) = &w.cmdline {
            process.insert("cmd_line".into(), cmd.as_str().into());
        }
        let mut actor = json!({"process": process});
        if w.uid.is_some() || w.user.is_some() {
            let mut user = Map::new();
            if let Some(uid) = w.uid {
                user.insert("uid".into(), uid.to_string().into());
            }
            if let Some(name) = &w.user {
                user.insert("name".into(), name.as_str().into());
            }
            actor["user"] = Value::Object(user);
        }
        doc["actor"] = actor;
    }
    let mut unmapped = Map::new();
    if let Some(id) = &r.identity {
        unmapped.insert("spiffe_id".into(), id.as_str().into());
    }
    if let Some(key) = &r.workload_key {
        unmapped.insert("workload_key".into(), key.as_str().into());
    }
    if let Some(h) = &w.exe_sha256 {
        unmapped.insert("exe_sha256".into(), h.as_str().into());
    }
    if !unmapped.is_empty() {
        doc["unmapped"] = Value::Object(unmapped);
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_types_and_sections() {
        let j = ja4_fingerprint(Method::Ja4, "t13d1516h2_8daaf6152771_e5627efa2ab1");
        assert_eq!(
            j,
            json!({"type_id": 1, "type": "JA4", "value": "t13d1516h2_8daaf6152771_e5627efa2ab1",
                   "section_a": "t13d1516h2", "section_b": "8daaf6152771",
                   "section_c": "e5627efa2ab1"})
        );
        let h = ja4_fingerprint(
            Method::Ja4h,
            "ge11nn05enus_974ebe531c03_000000000000_000000000000",
        );
        assert_eq!(h["type_id"], 3);
        assert_eq!(h["section_d"], "000000000000");
        let l = ja4_fingerprint(Method::Ja4ls, "2046_64");
        assert_eq!(
            (l["type_id"].as_u64(), l.get("section_a")),
            (Some(99), None)
        );
        assert_eq!(l["type"], "JA4LatencyServer");
        // Every method has a type; only the eight OCSF names are not "Other".
        let named = Method::ALL.iter().filter(|m| ja4_type(**m).0 != 99).count();
        assert_eq!(named, 8);
    }
}
