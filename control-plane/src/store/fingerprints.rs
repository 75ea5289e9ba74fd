//! The fingerprint roll-ups (the ja4 service's): `fingerprints` (first/last seen, count, JA4
//! parts), `fingerprint_dims` (per fingerprint and host, agent, server name, workload
//! identity or workload key) and `fingerprint_hourly` (counts per hour, for top-N over a window). One
//! [`RollupContributor`] of the roll-up stage, like the identity service's.

use hais_shared::event::FingerprintEvent;

use super::rollup::{
    DIM_AGENT, DIM_HOST, DIM_IDENTITY, DIM_SERVER_NAME, DIM_WORKLOAD, DeltaKind, Derived, Extract,
    HOUR_US, KeyVal, Measure, Part, Retention, RollupContributor,
};
use super::to_us;

/// Contributes the fingerprint roll-ups.
#[derive(Debug)]
pub struct FingerprintRollups;

/// Index of each kind in [`KINDS`].
const FINGERPRINTS: usize = 0;
const DIMS: usize = 1;
const HOURLY: usize = 2;

static KINDS: [DeltaKind; 3] = [
    DeltaKind {
        table: "fingerprints",
        key: &[("method", Part::Str), ("value", Part::Str)],
        measure: Measure::Seen,
        derived: Some(Derived {
            columns: &["part_a", "part_b", "part_c"],
            values: ja4_parts,
        }),
    },
    DeltaKind {
        table: "fingerprint_dims",
        key: &[
            ("dim", Part::Str),
            ("dim_value", Part::Str),
            ("method", Part::Str),
            ("value", Part::Str),
        ],
        measure: Measure::Seen,
        derived: None,
    },
    DeltaKind {
        table: "fingerprint_hourly",
        key: &[
            ("hour_us", Part::Int),
            ("method", Part::Str),
            ("value", Part::Str),
        ],
        measure: Measure::Count,
        derived: None,
    },
];

static RETENTION: [Retention; 3] = [
    Retention {
        table: "fingerprints",
        column: "last_seen_us",
        bucket_us: 1,
        reported: true,
    },
    Retention {
        table: "fingerprint_dims",
        column: "last_seen_us",
        bucket_us: 1,
        reported: false,
    },
    Retention {
        table: "fingerprint_hourly",
        column: "hour_us",
        bucket_us: HOUR_US,
        reported: false,
    },
];

/// The JA4 a/b/c parts of a `fingerprints` key's value (first three `_`-separated sections).
fn ja4_parts<'a>(key: &[KeyVal<'a>]) -> Vec<Option<&'a str>> {
    let mut it = key.get(1).and_then(KeyVal::str).unwrap_or("").split('_');
    vec![it.next(), it.next(), it.next()]
}

impl RollupContributor for FingerprintRollups {
    fn kinds(&self) -> &'static [DeltaKind] {
        &KINDS
    }

    fn retention(&self) -> &'static [Retention] {
        &RETENTION
    }

    /// A fingerprint repeated inside one event counts once.
    fn extract<'a>(&self, events: &[&'a FingerprintEvent], out: &mut Extract<'_, 'a>) {
        let [host, agent, sni, identity, workload] = [
            DIM_HOST,
            DIM_AGENT,
            DIM_SERVER_NAME,
            DIM_IDENTITY,
            DIM_WORKLOAD,
        ]
        .map(|d| out.intern(d));
        let mut fps: Vec<(i64, i64)> = Vec::new();
        let mut dims: Vec<(i64, i64)> = Vec::with_capacity(4);
        // Batches come from one agent, mostly one host: skip the lookups when they repeat.
        let mut last_host: Option<(&str, i64)> = None;
        let mut last_agent: Option<(&str, i64)> = None;
        for e in events {
            let ts = to_us(e.timestamp);
            let hour = ts.div_euclid(HOUR_US) * HOUR_US;
            fps.clear();
            for f in &e.fingerprints {
                let m = out.intern(f.method.as_str());
                fps.push((m, out.intern(&f.value)));
            }
            fps.sort_unstable();
            fps.dedup();
            dims.clear();
            for (dim, v, last) in [
                (host, e.host.as_str(), &mut last_host),
                (agent, e.agent_id.as_str(), &mut last_agent),
            ] {
                let id = match *last {
                    Some((s, id)) if s == v => id,
                    _ => out.intern(v),
                };
                *last = Some((v, id));
                dims.push((dim, id));
            }
            if let Some(v) = &e.server_name {
                dims.push((sni, out.intern(v)));
            }
            if let Some(v) = &e.workload.spiffe_id {
                dims.push((identity, out.intern(v)));
            }
            if let Some(v) = &e.workload.key {
                dims.push((workload, out.intern(v)));
            }
            for &(m, v) in &fps {
                out.seen(FINGERPRINTS, [m, v, 0, 0], ts);
                out.count(HOURLY, [hour, m, v, 0], 1);
                for &(dim, dv) in &dims {
                    out.seen(DIMS, [dim, dv, m, v], ts);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use hais_shared::event::{Fingerprint, Flow, Transport};
    use hais_shared::fingerprint::Method;

    use super::super::rollup::{BatchDeltas, Deltas, Rollups, Seen};
    use super::*;

    fn ev(host: &str, fps: &[&str]) -> FingerprintEvent {
        let mut e = FingerprintEvent::new(
            "a1",
            host,
            Flow {
                src_ip: "10.0.0.1".parse().unwrap(),
                src_port: 1,
                dst_ip: "10.0.0.2".parse().unwrap(),
                dst_port: 443,
                transport: Transport::Tcp,
            },
        );
        e.fingerprints = fps
            .iter()
            .map(|v| Fingerprint {
                method: Method::Ja4,
                value: v.to_string(),
            })
            .collect();
        e
    }

    /// Merged roll-ups of `events`, one record per event group.
    fn folded(groups: &[&[&FingerprintEvent]]) -> Vec<BTreeMap<String, Seen>> {
        let decoded: Vec<Deltas> = groups
            .iter()
            .map(|g| Deltas::decode(&BatchDeltas::from_events(g.iter().copied()).encode()).unwrap())
            .collect();
        let mut r = Rollups::default();
        for d in &decoded {
            r.merge(d);
        }
        r.sections
            .iter()
            .map(|s| s.iter().map(|(k, v)| (format!("{k:?}"), *v)).collect())
            .collect()
    }

    #[test]
    fn folds_counts_and_dims() {
        let a = ev("h1", &["x_y_z", "x_y_z"]);
        let b = ev("h2", &["x_y_z"]);
        let r = folded(&[&[&a, &b]]);
        let fp = r[FINGERPRINTS].values().next().unwrap();
        assert_eq!(fp.count, 2, "a repeated fingerprint counts once per event");
        assert_eq!(r[DIMS].len(), 3, "two hosts and one agent");
        assert_eq!(r[HOURLY].values().map(|s| s.count).sum::<i64>(), 2);
        assert_eq!(
            ja4_parts(&[KeyVal::Str("ja4"), KeyVal::Str("x_y_z")]),
            vec![Some("x"), Some("y"), Some("z")]
        );
    }

    #[test]
    fn deltas_round_trip_and_merge() {
        let mut a = ev("h1", &["x_y_z", "p_q_r"]);
        a.server_name = Some("s\u{e9}rver.example".into());
        a.timestamp -= time::Duration::days(20_000); // before 1970: negative µs
        let b = ev("h2", &["x_y_z"]);
        // Three records merged equal one record of all three events.
        assert_eq!(folded(&[&[&a], &[&b, &b]]), folded(&[&[&a, &b, &b]]));
        let bytes = BatchDeltas::from_events([&a]).encode();
        for cut in 0..bytes.len() {
            assert!(Deltas::decode(&bytes[..cut]).is_err(), "truncated at {cut}");
        }
        assert!(Deltas::decode(&[]).is_err());
    }
}
