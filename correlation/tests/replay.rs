//! Property tests: the findings are a function of the events and their order per identity, not
//! of how they were batched or how often they were replayed from the start.

mod common;

use std::collections::BTreeMap;

use common::*;
use hais_correlation::{Baseline, Engine, Observation, Prevalence};
use hais_shared::fingerprint::Method;
use proptest::prelude::*;

const FINGERPRINTS: [&str; 5] = [
    CURL,
    CURL_RESUMED,
    PYTHON,
    CURL_H1,
    "t12d0909h1_1111111111aa_2222222222bb",
];

/// A stream of observations: identities 0..6, times increasing, a few fingerprints each.
fn stream() -> impl Strategy<Value = Vec<Observation>> {
    prop::collection::vec(
        (
            0u8..6,
            0i64..120,
            0usize..5,
            any::<bool>(),
            0u32..4,
            any::<bool>(),
        ),
        1..120,
    )
    .prop_map(|raw| {
        let mut ts = 0;
        raw.into_iter()
            .enumerate()
            .map(|(n, (id, dt, fp, with_t, hops, ssh))| {
                ts += dt;
                let mut own = vec![(Method::Ja4, FINGERPRINTS[fp], FINGERPRINTS[fp])];
                if with_t {
                    own.push((Method::Ja4t, JA4T, JA4T));
                }
                let mut o = obs(n as u128 + 1, &format!("id{id}"), ts, &own);
                o.ja4ls = Some(format!("1000_{}_{}", 60 - hops * 2, 3000 + hops * 900));
                if ssh {
                    o.ssh = vec!["c76s76_c71s59_c0s70".into()];
                }
                o
            })
            .collect()
    })
}

/// Feeds `events` in batches of the given sizes the way the control plane does: a fresh engine
/// per batch, given only the stored baselines and prevalence the batch needs, its changes
/// written back after.
fn run_batched(
    events: &[Observation],
    sizes: &[usize],
) -> BTreeMap<hais_correlation::FindingKey, hais_correlation::Finding> {
    let config = config();
    let mut baselines: BTreeMap<String, Baseline> = BTreeMap::new();
    let mut prevalence: BTreeMap<(Method, String), Prevalence> = BTreeMap::new();
    let mut findings = BTreeMap::new();
    let mut rest = events;
    let mut sizes = sizes.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap()).clamp(1, rest.len());
        let (batch, tail) = rest.split_at(n);
        rest = tail;
        let mut e = Engine::new(config.clone());
        for o in batch {
            if let Some(b) = baselines.get(&o.identity) {
                e.load(b.clone());
            }
        }
        for (m, fp) in e.unknown_fingerprints(batch) {
            if let Some(p) = prevalence.get(&(m, fp.clone())) {
                e.load_prevalence(m, fp, p.clone());
            }
        }
        for o in batch {
            e.observe(o);
        }
        let c = e.take_changes();
        absorb(&mut findings, &c);
        for b in c.baselines {
            baselines.insert(b.identity.clone(), b);
        }
        prevalence.extend(c.prevalence);
    }
    findings
}

proptest! {
    #[test]
    fn replaying_gives_the_same_findings(events in stream()) {
        let config = config();
        prop_assert_eq!(run_whole(&config, &events), run_whole(&config, &events));
    }

    #[test]
    fn batch_boundaries_do_not_matter(
        events in stream(),
        a in prop::collection::vec(1usize..40, 1..6),
        b in prop::collection::vec(1usize..40, 1..6),
    ) {
        let whole = run_whole(&config(), &events);
        prop_assert_eq!(&run_batched(&events, &a), &whole);
        prop_assert_eq!(&run_batched(&events, &b), &whole);
    }
}

/// The property tests would pass on an engine that never finds anything: make sure the streams
/// they generate do produce findings.
#[test]
fn the_streams_do_find_things() {
    let mut events = Vec::new();
    for i in 0..12 {
        events.push(curl(i, "id0", i as i64 * 4));
    }
    events.push(obs(100, "id0", 100, &[(Method::Ja4, PYTHON, PYTHON)]));
    let whole = run_whole(&config(), &events);
    assert_eq!(whole.len(), 1);
    assert_eq!(run_batched(&events, &[3, 1, 7]), whole);
}
