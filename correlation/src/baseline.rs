//! One identity's baseline: the fingerprints it presents, by method, with first/last seen and
//! counts, the paths to its destinations, and its learning state.
//!
//! Bounded: at most [`crate::Config::max_per_method`] entries per method and as many
//! destinations with path statistics, whatever the identity sends; what does not fit is
//! counted in [`Baseline::overflow`] (and still judged). An entry is about 200 bytes, so a
//! typical identity (a handful of fingerprints, a few destinations) stays near 2 KB and the worst
//! case of 64 entries × 8 methods + 64 paths near 110 KB.

use std::collections::BTreeMap;

use hais_shared::fingerprint::Method;
use serde::{Deserialize, Serialize};

use crate::Config;
use crate::observation::Presented;

/// Most plain values kept per entry (the JA4s one resumption-stable key stands for).
pub const MAX_VALUES: usize = 4;

/// Whether an identity's baseline is still being learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaselineState {
    Learning,
    Established,
}

impl BaselineState {
    pub fn as_str(self) -> &'static str {
        match self {
            BaselineState::Learning => "learning",
            BaselineState::Established => "established",
        }
    }
}

/// One fingerprint an identity presented (or its destination did).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// What is compared (see [`crate::observation`]'s normalisations); for JA4SSH, the session
    /// type.
    pub key: String,
    /// The plain values seen under this key, first first (at most [`MAX_VALUES`]).
    pub values: Vec<String>,
    /// The destination, for the server-side methods of outbound flows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    pub first_seen_us: i64,
    pub last_seen_us: i64,
    pub count: u64,
    /// Part of the baseline: learnt while learning, or accepted by an analyst. An entry first
    /// seen once established is recorded (counts, times) but not accepted.
    pub accepted: bool,
}

/// What the path to one destination looked like while it was learnt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathStats {
    pub samples: u32,
    pub hops_min: u32,
    pub hops_max: u32,
    /// Welford's running mean and sum of squared deviations of the TCP/TLS latency gap.
    pub gap_n: u32,
    pub gap_mean: f64,
    pub gap_m2: f64,
}

impl PathStats {
    fn new(hops: u32) -> PathStats {
        PathStats {
            samples: 0,
            hops_min: hops,
            hops_max: hops,
            gap_n: 0,
            gap_mean: 0.0,
            gap_m2: 0.0,
        }
    }

    /// Learns one sample.
    pub fn learn(&mut self, hops: u32, gap_us: Option<f64>) {
        self.samples = self.samples.saturating_add(1);
        self.hops_min = self.hops_min.min(hops);
        self.hops_max = self.hops_max.max(hops);
        if let Some(g) = gap_us {
            self.gap_n = self.gap_n.saturating_add(1);
            let d = g - self.gap_mean;
            self.gap_mean += d / f64::from(self.gap_n);
            self.gap_m2 += d * (g - self.gap_mean);
        }
    }

    /// The gap's standard deviation (0 with fewer than two samples).
    pub fn gap_sd(&self) -> f64 {
        if self.gap_n < 2 {
            0.0
        } else {
            (self.gap_m2 / f64::from(self.gap_n - 1)).sqrt()
        }
    }
}

/// One identity's baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub identity: String,
    /// The first event since learning (re)started; `None` before any.
    pub since_us: Option<i64>,
    /// Flows seen since learning (re)started.
    pub flows: u64,
    /// When it became established; `None` while learning.
    pub established_us: Option<i64>,
    pub last_seen_us: i64,
    /// Fingerprints by method.
    pub methods: BTreeMap<Method, Vec<Entry>>,
    /// Path statistics by destination.
    pub paths: BTreeMap<String, PathStats>,
    /// Entries and paths that did not fit the bounds.
    pub overflow: u64,
}

impl Baseline {
    pub fn new(identity: impl Into<String>) -> Baseline {
        Baseline {
            identity: identity.into(),
            since_us: None,
            flows: 0,
            established_us: None,
            last_seen_us: i64::MIN,
            methods: BTreeMap::new(),
            paths: BTreeMap::new(),
            overflow: 0,
        }
    }

    pub fn state(&self) -> BaselineState {
        match self.established_us {
            Some(_) => BaselineState::Established,
            None => BaselineState::Learning,
        }
    }

    /// Counts a flow at `ts_us`; returns whether the identity is established for it. It becomes
    /// so at the first flow that finds both the learning period passed since its first event
    /// and the minimum flows seen before it.
    pub fn count_flow(&mut self, ts_us: i64, config: &Config) -> bool {
        let since = *self.since_us.get_or_insert(ts_us);
        if self.established_us.is_none()
            && self.flows >= config.learning_min_flows
            && ts_us.saturating_sub(since) >= config.learning_period_us
        {
            self.established_us = Some(ts_us);
        }
        if ts_us < since {
            self.since_us = Some(ts_us);
        }
        self.flows = self.flows.saturating_add(1);
        self.last_seen_us = self.last_seen_us.max(ts_us);
        self.established_us.is_some()
    }

    /// The entry of `method` whose key is `key` (and destination `destination`).
    pub fn entry(&self, method: Method, key: &str, destination: Option<&str>) -> Option<&Entry> {
        self.methods
            .get(&method)?
            .iter()
            .find(|e| e.key == key && e.destination.as_deref() == destination)
    }

    fn entry_mut(
        &mut self,
        method: Method,
        key: &str,
        destination: Option<&str>,
    ) -> Option<&mut Entry> {
        self.methods
            .get_mut(&method)?
            .iter_mut()
            .find(|e| e.key == key && e.destination.as_deref() == destination)
    }

    /// Accepted entries of `method` (for `destination`).
    pub fn accepted<'a>(
        &'a self,
        method: Method,
        destination: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Entry> + 'a {
        self.methods
            .get(&method)
            .into_iter()
            .flatten()
            .filter(move |e| e.accepted && e.destination.as_deref() == destination)
    }

    /// Records that `p` (its key, plain value and method) was presented at `ts_us`, adding an entry
    /// (accepted or not) when it is new. Returns whether an entry was added, and false as well
    /// when the method's entries are full (counted in [`Baseline::overflow`]).
    pub fn record(
        &mut self,
        p: &Presented,
        destination: Option<&str>,
        ts_us: i64,
        accept: bool,
        config: &Config,
    ) -> bool {
        let (method, key, value) = (p.method, p.key.as_str(), p.value.as_str());
        if let Some(e) = self.entry_mut(method, key, destination) {
            e.first_seen_us = e.first_seen_us.min(ts_us);
            e.last_seen_us = e.last_seen_us.max(ts_us);
            e.count = e.count.saturating_add(1);
            e.accepted |= accept;
            if e.values.len() < MAX_VALUES && !e.values.iter().any(|v| v == value) {
                e.values.push(value.to_owned());
            }
            return false;
        }
        let entries = self.methods.entry(method).or_default();
        if entries.len() >= config.max_per_method {
            self.overflow = self.overflow.saturating_add(1);
            return false;
        }
        entries.push(Entry {
            key: key.to_owned(),
            values: vec![value.to_owned()],
            destination: destination.map(str::to_owned),
            first_seen_us: ts_us,
            last_seen_us: ts_us,
            count: 1,
            accepted: accept,
        });
        true
    }

    /// An analyst's acceptance of `fingerprint` of `method` into the baseline: every entry of
    /// the method whose key or one of whose values it is becomes accepted; when there is none,
    /// an accepted entry is added (accepting ahead of its first flow). Returns whether anything
    /// changed.
    pub fn accept(&mut self, method: Method, fingerprint: &str, now_us: i64) -> bool {
        let key = match method {
            Method::Ja4h => crate::observation::ja4h_key(fingerprint),
            _ => fingerprint.to_owned(),
        };
        let entries = self.methods.entry(method).or_default();
        let mut found = false;
        let mut changed = false;
        for e in entries.iter_mut() {
            if e.key == key || e.values.iter().any(|v| v == fingerprint) {
                found = true;
                changed |= !e.accepted;
                e.accepted = true;
            }
        }
        if !found {
            entries.push(Entry {
                key,
                values: vec![fingerprint.to_owned()],
                destination: None,
                first_seen_us: now_us,
                last_seen_us: now_us,
                count: 0,
                accepted: true,
            });
            changed = true;
        }
        changed
    }

    /// Back to learning: learning restarts with the next event, and everything seen meanwhile
    /// joins the baseline. What was learnt before stays (an identity reset after a deployment
    /// still presents most of what it did).
    pub fn reset(&mut self) {
        self.since_us = None;
        self.flows = 0;
        self.established_us = None;
    }

    /// The path statistics of `destination`, created with `hops` when there is room.
    pub fn path_mut(
        &mut self,
        destination: &str,
        hops: u32,
        config: &Config,
    ) -> Option<&mut PathStats> {
        if !self.paths.contains_key(destination) {
            if self.paths.len() >= config.max_per_method {
                self.overflow = self.overflow.saturating_add(1);
                return None;
            }
            self.paths
                .insert(destination.to_owned(), PathStats::new(hops));
        }
        self.paths.get_mut(destination)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::Side;

    fn config() -> Config {
        Config {
            learning_period_us: 100,
            learning_min_flows: 3,
            max_per_method: 2,
            ..Config::default()
        }
    }

    #[test]
    fn learning_needs_both_the_period_and_the_flows() {
        let c = config();
        let mut b = Baseline::new("id");
        // Many flows, period not passed.
        for ts in 0..10 {
            assert!(!b.count_flow(ts, &c));
        }
        // Period passed: established from this flow on.
        assert!(b.count_flow(100, &c));
        assert_eq!(b.established_us, Some(100));
        assert_eq!(b.state(), BaselineState::Established);
        // Period passed, too few flows.
        let mut b = Baseline::new("id");
        assert!(!b.count_flow(0, &c));
        assert!(!b.count_flow(1000, &c));
        assert!(!b.count_flow(1001, &c));
        assert!(b.count_flow(1002, &c));
        b.reset();
        assert_eq!(b.state(), BaselineState::Learning);
        assert!(!b.count_flow(2000, &c));
    }

    #[test]
    fn entries_are_bounded_and_accept_marks_or_adds() {
        let c = config();
        let mut b = Baseline::new("id");
        let p = |key: &str, value: &str| Presented {
            method: Method::Ja4,
            key: key.into(),
            value: value.into(),
            side: Side::Own,
        };
        assert!(b.record(&p("k1", "v1"), None, 5, true, &c));
        assert!(!b.record(&p("k1", "v1b"), None, 3, true, &c));
        assert!(b.record(&p("k2", "v2"), None, 6, false, &c));
        assert!(!b.record(&p("k3", "v3"), None, 7, false, &c));
        assert_eq!(b.overflow, 1);
        let e = b.entry(Method::Ja4, "k1", None).unwrap();
        assert_eq!((e.first_seen_us, e.last_seen_us, e.count), (3, 5, 2));
        assert_eq!(e.values, ["v1", "v1b"]);
        assert_eq!(b.accepted(Method::Ja4, None).count(), 1);
        assert!(b.accept(Method::Ja4, "v2", 9));
        assert!(!b.accept(Method::Ja4, "k2", 9));
        assert_eq!(b.accepted(Method::Ja4, None).count(), 2);
        assert!(b.accept(Method::Ja4t, "64240_2-4-8-1-3_1460_7", 9));
        assert_eq!(b.accepted(Method::Ja4t, None).count(), 1);
    }

    #[test]
    fn path_spread_is_welford() {
        let mut p = PathStats::new(3);
        for g in [10.0, 12.0, 14.0] {
            p.learn(3, Some(g));
        }
        p.learn(5, None);
        assert_eq!((p.hops_min, p.hops_max, p.samples, p.gap_n), (3, 5, 4, 3));
        assert!((p.gap_mean - 12.0).abs() < 1e-9);
        assert!((p.gap_sd() - 2.0).abs() < 1e-9);
    }
}
