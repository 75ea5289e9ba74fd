//! Observations for the tests: a small fleet of identities and the fingerprints they present.

#![allow(dead_code)]

use std::collections::BTreeMap;

use hais_correlation::observation::{Presented, Side};
use hais_correlation::{Changes, Config, Engine, Finding, FindingKey, Observation, SECOND_US};
use hais_shared::fingerprint::Method;
use uuid::Uuid;

pub const CURL: &str = "t13d3112h2_e8f1e7e78f70_b26ce05bbdd6";
/// curl's JA4 resuming a TLS 1.3 session (pre_shared_key, early_data: two more extensions).
pub const CURL_RESUMED: &str = "t13d3114h2_e8f1e7e78f70_5e2a1c3b77f0";
pub const PYTHON: &str = "t13d1812h2_85036bcba153_b26ce05bbdd6";
/// curl with another ALPN and one extension fewer: section a only.
pub const CURL_H1: &str = "t13d3111h1_e8f1e7e78f70_b26ce05bbdd6";
pub const JA4T: &str = "65495_2-4-8-1-3_65495_7";
pub const JA4T_OTHER: &str = "64240_2-1-3-1-1-4_1460_8";

pub fn config() -> Config {
    Config {
        learning_period_us: 30 * SECOND_US,
        learning_min_flows: 5,
        shared_threshold: 3,
        path_min_samples: 3,
        ssh_session: true,
        ..Config::default()
    }
}

/// An observation by `identity` at `ts_s` seconds presenting `own` fingerprints (method, key,
/// value).
pub fn obs(n: u128, identity: &str, ts_s: i64, own: &[(Method, &str, &str)]) -> Observation {
    Observation {
        event_id: Uuid::from_u128(n),
        ts_us: ts_s * SECOND_US,
        identity: identity.to_owned(),
        destination: "api.example:443".to_owned(),
        presented: own
            .iter()
            .map(|(method, key, value)| Presented {
                method: *method,
                key: (*key).to_owned(),
                value: (*value).to_owned(),
                side: Side::Own,
            })
            .collect(),
        ssh: Vec::new(),
        ja4ls: None,
        attributes: BTreeMap::new(),
    }
}

/// A plain curl flow: JA4 (stable key = the fresh handshake's JA4) and JA4T.
pub fn curl(n: u128, identity: &str, ts_s: i64) -> Observation {
    obs(
        n,
        identity,
        ts_s,
        &[(Method::Ja4, CURL, CURL), (Method::Ja4t, JA4T, JA4T)],
    )
}

/// Absorbs the findings of `c` into `into`.
pub fn absorb(into: &mut BTreeMap<FindingKey, Finding>, c: &Changes) {
    for f in &c.findings {
        match into.get_mut(&f.key) {
            Some(old) => old.absorb(f),
            None => {
                into.insert(f.key.clone(), f.clone());
            }
        }
    }
}

/// Every finding of one engine fed all of `events` in one go.
pub fn run_whole(config: &Config, events: &[Observation]) -> BTreeMap<FindingKey, Finding> {
    let mut e = Engine::new(config.clone());
    for o in events {
        e.observe(o);
    }
    let mut out = BTreeMap::new();
    absorb(&mut out, &e.take_changes());
    out
}
