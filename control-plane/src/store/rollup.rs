//! Roll-up aggregation, done in memory per ingest batch before touching the database.
//!
//! Folding a batch first means each roll-up row is written once per batch instead of once per
//! event, which is what makes batch ingest cheap. Keys come out sorted, so concurrent batches lock
//! roll-up rows in the same order and cannot deadlock each other.

use std::collections::BTreeMap;

use hais_shared::event::FingerprintEvent;

use super::to_us;

/// The dimensions a fingerprint is rolled up by.
pub const DIM_HOST: &str = "host";
pub const DIM_AGENT: &str = "agent";
pub const DIM_SERVER_NAME: &str = "server_name";
pub const DIM_IDENTITY: &str = "identity";

/// One hour, in microseconds: the bucket size of `fingerprint_hourly`.
pub const HOUR_US: i64 = 3_600_000_000;

/// First/last seen and count of one key within a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub first_us: i64,
    pub last_us: i64,
    pub count: i64,
}

impl Seen {
    fn add(&mut self, ts: i64) {
        self.first_us = self.first_us.min(ts);
        self.last_us = self.last_us.max(ts);
        self.count += 1;
    }
    fn new(ts: i64) -> Self {
        Seen {
            first_us: ts,
            last_us: ts,
            count: 1,
        }
    }
}

/// A batch's roll-up deltas, each sorted by key. Keys borrow from the events, so folding a
/// batch allocates nothing per event.
#[derive(Debug, Default)]
pub struct Rollups<'a> {
    /// (method, value) → seen.
    pub fingerprints: BTreeMap<(&'static str, &'a str), Seen>,
    /// (dim, dim value, method, value) → seen.
    pub dims: BTreeMap<(&'static str, &'a str, &'static str, &'a str), Seen>,
    /// (hour start µs, method, value) → count.
    pub hourly: BTreeMap<(i64, &'static str, &'a str), i64>,
}

impl<'a> Rollups<'a> {
    /// Folds the given (newly stored) events. A fingerprint repeated inside one event counts once.
    pub fn from_events(events: impl IntoIterator<Item = &'a FingerprintEvent>) -> Rollups<'a> {
        let mut r = Rollups::default();
        let mut fps: Vec<(&'static str, &'a str)> = Vec::new();
        let mut dims: Vec<(&'static str, &'a str)> = Vec::with_capacity(4);
        for e in events {
            let ts = to_us(e.timestamp);
            let hour = ts.div_euclid(HOUR_US) * HOUR_US;
            fps.clear();
            fps.extend(
                e.fingerprints
                    .iter()
                    .map(|f| (f.method.as_str(), f.value.as_str())),
            );
            fps.sort_unstable();
            fps.dedup();
            dims.clear();
            dims.push((DIM_HOST, e.host.as_str()));
            dims.push((DIM_AGENT, e.agent_id.as_str()));
            if let Some(sni) = &e.server_name {
                dims.push((DIM_SERVER_NAME, sni.as_str()));
            }
            if let Some(id) = &e.workload.spiffe_id {
                dims.push((DIM_IDENTITY, id.as_str()));
            }
            for &(method, value) in &fps {
                r.fingerprints
                    .entry((method, value))
                    .and_modify(|s| s.add(ts))
                    .or_insert_with(|| Seen::new(ts));
                *r.hourly.entry((hour, method, value)).or_default() += 1;
                for &(dim, dv) in &dims {
                    r.dims
                        .entry((dim, dv, method, value))
                        .and_modify(|s| s.add(ts))
                        .or_insert_with(|| Seen::new(ts));
                }
            }
        }
        r
    }
}

/// The JA4 a/b/c parts of a value (first three `_`-separated sections).
pub fn parts(value: &str) -> [Option<String>; 3] {
    let mut it = value.split('_').map(str::to_owned);
    [it.next(), it.next(), it.next()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use hais_shared::event::{Fingerprint, Flow, Transport};
    use hais_shared::fingerprint::Method;

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

    #[test]
    fn folds_counts_and_dims() {
        let a = ev("h1", &["x_y_z", "x_y_z"]);
        let b = ev("h2", &["x_y_z"]);
        let r = Rollups::from_events([&a, &b]);
        let s = r.fingerprints[&("ja4", "x_y_z")];
        assert_eq!(s.count, 2, "a repeated fingerprint counts once per event");
        assert_eq!(r.dims.len(), 3, "two hosts and one agent");
        assert_eq!(r.hourly.values().sum::<i64>(), 2);
    }
}
