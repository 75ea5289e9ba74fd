//! Each detector on a small scripted fleet.

mod common;

use common::*;
use hais_correlation::{BaselineState, Detector, Engine};
use hais_shared::detection::Severity;
use hais_shared::fingerprint::Method;

/// Learns curl for `identity` over 40 s (10 flows) from event number `n0`.
fn learn(e: &mut Engine, n0: u128, identity: &str) {
    for i in 0..10 {
        e.observe(&curl(n0 + i, identity, i as i64 * 4));
    }
}

#[test]
fn nothing_while_learning_then_one_finding_per_new_fingerprint() {
    let mut e = Engine::new(config());
    // A python flow while learning joins the baseline.
    e.observe(&obs(1, "id", 0, &[(Method::Ja4, PYTHON, PYTHON)]));
    learn(&mut e, 100, "id");
    assert_eq!(
        e.baseline("id").unwrap().state(),
        BaselineState::Established
    );
    assert!(e.take_changes().findings.is_empty());
    // Known fingerprints, and a resumed curl whose stable key is curl's: nothing.
    e.observe(&curl(200, "id", 60));
    e.observe(&obs(201, "id", 61, &[(Method::Ja4, CURL, CURL_RESUMED)]));
    e.observe(&obs(202, "id", 62, &[(Method::Ja4, PYTHON, PYTHON)]));
    assert!(e.take_changes().findings.is_empty());
    // Section a only: low; recurrence updates the same finding.
    for n in [300, 301] {
        e.observe(&obs(
            n,
            "id",
            70,
            &[(Method::Ja4, CURL_H1, CURL_H1), (Method::Ja4t, JA4T, JA4T)],
        ));
    }
    let c = e.take_changes();
    assert_eq!(c.findings.len(), 1);
    let f = &c.findings[0];
    assert_eq!(
        (
            f.key.detector,
            f.key.method,
            f.key.fingerprint.as_str(),
            f.severity,
            f.count
        ),
        (
            Detector::NewFingerprint,
            Method::Ja4,
            CURL_H1,
            Severity::Low,
            2
        )
    );
    assert_eq!(f.event_ids.len(), 2);
}

#[test]
fn severity_says_what_changed() {
    let mut e = Engine::new(config());
    learn(&mut e, 0, "id");
    e.take_changes();
    // Another cipher set, same TCP stack: medium.
    e.observe(&obs(
        100,
        "id",
        60,
        &[
            (Method::Ja4, "t13d1812h2_aaaaaaaaaaaa_bbbbbbbbbbbb", "x"),
            (Method::Ja4t, JA4T, JA4T),
        ],
    ));
    // JA4 and JA4T both new: a different client family, high.
    e.observe(&obs(
        101,
        "id",
        61,
        &[
            (Method::Ja4, PYTHON, PYTHON),
            (Method::Ja4t, JA4T_OTHER, JA4T_OTHER),
        ],
    ));
    let c = e.take_changes();
    let got: Vec<(&str, Severity)> = c
        .findings
        .iter()
        .map(|f| (f.key.fingerprint.as_str(), f.severity))
        .collect();
    assert_eq!(
        got,
        [
            (PYTHON, Severity::High),
            ("t13d1812h2_aaaaaaaaaaaa_bbbbbbbbbbbb", Severity::Medium),
            (JA4T_OTHER, Severity::High),
        ]
    );
}

#[test]
fn accept_and_reset() {
    let mut e = Engine::new(config());
    learn(&mut e, 0, "id");
    let mut b = e.baseline("id").unwrap().clone();
    assert!(b.accept(Method::Ja4, PYTHON, 0));
    e.load(b);
    e.take_changes();
    e.observe(&obs(100, "id", 60, &[(Method::Ja4, PYTHON, PYTHON)]));
    assert!(e.take_changes().findings.is_empty());
    let mut b = e.baseline("id").unwrap().clone();
    b.reset();
    e.load(b);
    e.observe(&obs(101, "id", 100, &[(Method::Ja4, CURL_H1, CURL_H1)]));
    assert!(e.take_changes().findings.is_empty());
    assert_eq!(e.baseline("id").unwrap().state(), BaselineState::Learning);
}

#[test]
fn shared_fingerprint_when_a_tool_spreads_within_the_window() {
    let mut e = Engine::new(config());
    for (k, id) in ["a", "b", "c", "d"].iter().enumerate() {
        learn(&mut e, k as u128 * 100, id);
    }
    e.take_changes();
    let tool = "t12d0909h1_1111111111aa_2222222222bb";
    // Three established identities start presenting it within minutes: each gets a finding.
    for (k, id) in ["a", "b", "c"].iter().enumerate() {
        e.observe(&obs(
            1000 + k as u128,
            id,
            100 + k as i64 * 60,
            &[(Method::Ja4, tool, tool)],
        ));
    }
    let c = e.take_changes();
    let shared: Vec<&str> = c
        .findings
        .iter()
        .filter(|f| f.key.detector == Detector::SharedFingerprint)
        .map(|f| f.key.identity.as_str())
        .collect();
    assert_eq!(shared, ["a", "b", "c"]);
    // A fourth an hour and a half later: outside the window, and three were there before.
    e.observe(&obs(2000, "d", 100 + 5400, &[(Method::Ja4, tool, tool)]));
    let c = e.take_changes();
    assert!(
        c.findings
            .iter()
            .all(|f| f.key.detector != Detector::SharedFingerprint)
    );
    // A fingerprint every identity learnt is not spreading.
    assert!(
        c.prevalence
            .iter()
            .all(|((_, fp), p)| fp != CURL || p.identities == 4)
    );
}

#[test]
fn path_change_on_hops_and_latency_gap() {
    let mut e = Engine::new(config());
    let with_path = |n: u128, ts: i64, ja4ls: &str| {
        let mut o = curl(n, "id", ts);
        o.ja4ls = Some(ja4ls.to_owned());
        o
    };
    for i in 0..10 {
        e.observe(&with_path(
            i,
            i as i64 * 4,
            &format!("{}_58_{}", 1000 + i, 3000 + i * 10),
        ));
    }
    for i in 10..13 {
        e.observe(&with_path(i, 40 + i as i64, "1005_58_3050"));
    }
    assert!(e.take_changes().findings.is_empty());
    // One hop more: route flapping, tolerated. Three more: a finding.
    e.observe(&with_path(20, 60, "1005_57_3050"));
    assert!(e.take_changes().findings.is_empty());
    e.observe(&with_path(21, 61, "1005_55_3050"));
    // The TLS handshake 20 ms slower than the TCP one: interception.
    e.observe(&with_path(22, 62, "1005_58_23050"));
    let c = e.take_changes();
    let got: Vec<(&str, Option<&str>)> = c
        .findings
        .iter()
        .map(|f| (f.key.fingerprint.as_str(), f.key.destination.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            ("hops:9", Some("api.example:443")),
            ("latency-gap", Some("api.example:443"))
        ]
    );
}

#[test]
fn ssh_session_only_when_enabled_and_new() {
    let ssh = |n: u128, ts: i64, v: &str| {
        let mut o = obs(n, "id", ts, &[]);
        o.ssh = vec![v.to_owned()];
        o
    };
    for enabled in [true, false] {
        let mut e = Engine::new(hais_correlation::Config {
            ssh_session: enabled,
            ..config()
        });
        for i in 0..10 {
            e.observe(&ssh(i, i as i64 * 4, "c112s1460_c0s179_c21s0"));
        }
        e.observe(&ssh(20, 60, "c76s76_c71s59_c0s70"));
        let c = e.take_changes();
        if enabled {
            assert_eq!(c.findings.len(), 1);
            assert_eq!(c.findings[0].key.fingerprint, "reverse-shell");
            assert_eq!(c.findings[0].severity, Severity::High);
        } else {
            assert!(c.findings.is_empty());
        }
    }
    // An identity that had interactive sessions while learning: none.
    let mut e = Engine::new(config());
    for i in 0..10 {
        e.observe(&ssh(i, i as i64 * 4, "c36s36_c51s80_c69s0"));
    }
    e.observe(&ssh(20, 60, "c36s36_c40s60_c50s0"));
    assert!(e.take_changes().findings.is_empty());
}
