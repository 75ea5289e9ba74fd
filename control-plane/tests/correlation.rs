//! The correlation service on both backends: baselines learnt from ingested events, findings
//! raised once an identity is established, stored, published on `detections` and served; an
//! analyst's accept and reset; baselines surviving a restart; 4xx JSON on bad input.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::{Backend, TestApp, enc, error_code, event};
use hais_control_plane::config::{Config, HumanDuration};
use hais_control_plane::services::expire_findings;
use hais_control_plane::store::expiry;
use hais_control_plane::store::now_us;
use hais_shared::event::FingerprintEvent;
use hais_shared::fingerprint::Method;
use serde_json::{Value, json};

const CURL: &str = "t13d3112h2_e8f1e7e78f70_b26ce05bbdd6";
const PYTHON: &str = "t13d1812h2_85036bcba153_b26ce05bbdd6";
const CURL_H1: &str = "t13d3111h1_e8f1e7e78f70_b26ce05bbdd6";
const JA4T: &str = "65495_2-4-8-1-3_65495_7";
const WEB: &str = "spiffe://test.example/web";

/// Learning takes 60 s of event time and 5 flows; the events are back-dated, so no test waits.
fn config(t: &common::Isolation) -> Config {
    let mut c = t.config();
    c.correlation.learning_period = HumanDuration::from_secs(60);
    c.correlation.learning_min_flows = 5;
    c
}

/// A flow of host web-01 (identity `WEB` once [`learn`] named it) presenting `ja4` (and curl's JA4T) `ago` seconds ago.
fn flow(ja4: &str, ago: i64) -> FingerprintEvent {
    let mut e = event(
        "agent-1",
        "web-01",
        Some("api.example"),
        &[(Method::Ja4, ja4), (Method::Ja4t, JA4T)],
        -ago,
    );
    e.workload.direction = Some("outbound".into());
    e
}

/// Names the workloads of host web-01 `WEB`, then ingests ten curl flows from 300 s to 210 s
/// ago: established after them.
async fn learn(t: &TestApp) {
    let (s, v) = t
        .call(
            "POST",
            "/api/identity/entries",
            Some(&t.admin),
            Some(json!({"spiffe_id": WEB, "selectors": ["hais:host:web-01"]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let events: Vec<_> = (0..10).map(|i| flow(CURL, 300 - i * 10)).collect();
    t.ingest(&events).await;
}

/// Calls `f` every 100 ms until it gives `Ok` (the consumer is asynchronous); panics with its
/// last `Err` after a generous deadline.
async fn poll<T, F: std::future::Future<Output = Result<T, String>>>(
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if tokio::time::Instant::now() >= deadline => panic!("never happened: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Polls the findings of `WEB` until `done` holds.
async fn findings_until(t: &TestApp, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let uri = format!("/api/correlation/findings?identity={}", enc(WEB));
    poll(|| async {
        let (s, v) = t.call("GET", &uri, Some(&t.admin), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let items = v["items"].as_array().unwrap().clone();
        if done(&items) {
            Ok(items)
        } else {
            Err(format!("findings {items:?}"))
        }
    })
    .await
}

async fn baseline(t: &TestApp) -> Value {
    let (s, v) = t
        .call(
            "GET",
            &format!("/api/correlation/baselines/{}", enc(WEB)),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

// ---------------------------------------------------------------- scenarios

/// Learning, then one new-fingerprint finding naming the new JA4, stored, served and published;
/// a recurrence updates it.
async fn learns_then_finds(backend: Backend) {
    let iso = common::Isolation::new(backend, "corrfind").await;
    let t = TestApp::start_with(iso.clone(), config(&iso)).await;
    let (s, v) = t
        .call("GET", "/api/correlation/status", Some(&t.admin), None)
        .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::OK, Some("ok")),
        "{v}"
    );
    learn(&t).await;
    let python = flow(PYTHON, 100);
    t.ingest(std::slice::from_ref(&python)).await;
    // A marker after it, in the same partition: once its finding is there, python's was judged.
    t.ingest(&[flow(CURL_H1, 90)]).await;
    let items = findings_until(&t, |f| f.len() == 2).await;
    let f = items
        .iter()
        .find(|f| f["fingerprint"] == PYTHON)
        .expect("a finding naming the python JA4");
    assert_eq!(f["detector"], "new-fingerprint");
    assert_eq!(f["method"], "ja4");
    assert_eq!(f["identity"], WEB);
    assert_eq!(f["severity"], "medium", "{f}");
    assert_eq!(f["count"], 1);
    assert_eq!(f["event_ids"], json!([python.id]));
    let low = items.iter().find(|f| f["fingerprint"] == CURL_H1).unwrap();
    assert_eq!(low["severity"], "low", "only section a changed: {low}");
    // One finding; its id serves it.
    let id = f["id"].as_str().unwrap();
    let (s, one) = t
        .call(
            "GET",
            &format!("/api/correlation/findings/{id}"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(&one, f);
    // Published on `detections`: the alert service (same process) makes it one open alert.
    // (Read through the alert API rather than the log, which the alert group's commit lets
    // the trimmer empty at any moment.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let alert = loop {
        let (s, v) = t
            .call(
                "GET",
                &format!("/api/alert/alerts?identity={}", enc(WEB)),
                Some(&t.admin),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        if let Some(a) = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["fingerprint"] == PYTHON)
        {
            break a.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no alert for the finding: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (
            alert["source"].as_str(),
            alert["rule"].as_str(),
            alert["status"].as_str()
        ),
        (Some("correlation"), Some("new-fingerprint"), Some("open")),
        "{alert}"
    );
    assert_eq!(alert["identity"], WEB);
    let (s, detail) = t
        .call(
            "GET",
            &format!("/api/alert/alerts/{}", alert["id"].as_str().unwrap()),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{detail}");
    assert!(detail["detections"].to_string().contains(id), "{detail}");
    // The baseline: established, curl learnt, python recorded but not accepted.
    let b = baseline(&t).await;
    assert_eq!(b["state"], "established", "{b}");
    let ja4: Vec<(String, bool)> = b["fingerprints"]["ja4"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["fingerprint"].as_str().unwrap().to_owned(),
                e["accepted"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ja4,
        [
            (CURL.to_owned(), true),
            (PYTHON.to_owned(), false),
            (CURL_H1.to_owned(), false)
        ]
    );
    // Recurrence: same finding, count 2, the same id, published again.
    let again = flow(PYTHON, 50);
    t.ingest(std::slice::from_ref(&again)).await;
    let items = findings_until(&t, |f| {
        f.iter()
            .any(|f| f["fingerprint"] == PYTHON && f["count"] == 2)
    })
    .await;
    assert_eq!(items.len(), 2);
    let f = items.iter().find(|f| f["fingerprint"] == PYTHON).unwrap();
    assert_eq!(f["id"], id);
    assert_eq!(f["event_ids"], json!([python.id, again.id]));
    // Filters.
    for (q, n) in [
        ("detector=new-fingerprint", 2),
        ("detector=path-change", 0),
        ("severity=medium", 1),
        ("severity=low", 2),
        ("limit=1", 1),
        ("since=2999-01-01T00:00:00Z", 0),
    ] {
        let (s, v) = t
            .call(
                "GET",
                &format!("/api/correlation/findings?{q}"),
                Some(&t.admin),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{q}: {v}");
        assert_eq!(v["items"].as_array().unwrap().len(), n, "{q}: {v}");
    }
    // Paging: two pages of one, then none.
    let (_, p1) = t
        .call(
            "GET",
            "/api/correlation/findings?limit=1",
            Some(&t.admin),
            None,
        )
        .await;
    let cursor = p1["next_cursor"].as_str().unwrap();
    let (_, p2) = t
        .call(
            "GET",
            &format!("/api/correlation/findings?limit=1&cursor={cursor}"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(p2["items"].as_array().unwrap().len(), 1);
    assert_ne!(p2["items"][0]["id"], p1["items"][0]["id"]);
    // Retention: a finding not seen since the cutoff goes, one seen after it stays (python was
    // last seen 50 s ago, the section-a change 90 s ago).
    let state = &t.app.as_ref().unwrap().state;
    let gone = state
        .store
        .expire(&expiry::CORRELATION_FINDINGS, now_us() - 70_000_000)
        .await
        .unwrap();
    assert_eq!(gone, 1);
    let items = findings_until(&t, |f| f.len() == 1).await;
    assert_eq!(items[0]["fingerprint"], PYTHON);
    // The scheduled pass keeps what is younger than `findings_retention_days`; the threat
    // tables' keys (one of them composite) delete on both backends.
    let tables = [
        expiry::CORRELATION_FINDINGS,
        expiry::THREAT_MATCHES,
        expiry::THREAT_GEO,
    ];
    let passed = expire_findings(state, &tables).await.unwrap();
    assert_eq!(
        passed,
        [
            ("correlation_findings", 0),
            ("threat_matches", 0),
            ("threat_geo", 0)
        ]
    );
    t.finish().await;
}

/// Accepting a fingerprint ends its findings; a reset goes back to learning; the baselines
/// survive a restart.
async fn accept_reset_restart(backend: Backend) {
    let iso = common::Isolation::new(backend, "corracc").await;
    let mut t = TestApp::start_with(iso.clone(), config(&iso)).await;
    learn(&t).await;
    // The consumer creates the baseline asynchronously: accept once it exists.
    let b = poll(|| async {
        let (s, v) = t
            .call(
                "POST",
                &format!("/api/correlation/baselines/{}/accept", enc(WEB)),
                Some(&t.admin),
                Some(json!({"method": "ja4", "fingerprint": PYTHON})),
            )
            .await;
        match s {
            StatusCode::OK => Ok(v),
            StatusCode::NOT_FOUND => Err(format!("{v}")),
            _ => panic!("{s}: {v}"),
        }
    })
    .await;
    assert!(
        b["fingerprints"]["ja4"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["fingerprint"] == PYTHON && e["accepted"] == true),
        "{b}"
    );
    // Restart: the baseline (established, python accepted) is in the store.
    let app = t.app.take().unwrap();
    app.shutdown().await;
    t = TestApp::start_with(iso.clone(), config(&iso)).await;
    t.ingest(&[flow(PYTHON, 100), flow(CURL_H1, 90)]).await;
    let items = findings_until(&t, |f| !f.is_empty()).await;
    let fps: Vec<&str> = items
        .iter()
        .map(|f| f["fingerprint"].as_str().unwrap())
        .collect();
    assert_eq!(fps, [CURL_H1], "python was accepted before the restart");
    // Reset: learning again, and what it presents meanwhile joins the baseline.
    let (s, v) = t
        .call(
            "POST",
            &format!("/api/correlation/baselines/{}/reset", enc(WEB)),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(
        (s, v["state"].as_str()),
        (StatusCode::OK, Some("learning")),
        "{v}"
    );
    t.ingest(&[flow("t13d0000h2_000000000000_000000000000", 80)])
        .await;
    t.ingest(&[flow(CURL_H1, 70)]).await;
    let b = poll(|| async {
        let b = baseline(&t).await;
        if b["flows"] == 2 {
            Ok(b)
        } else {
            Err(format!("{b}"))
        }
    })
    .await;
    assert_eq!(b["state"], "learning");
    let items = findings_until(&t, |_| true).await;
    assert_eq!(items.len(), 1, "no finding while learning: {items:?}");
    t.finish().await;
}

/// Bad input is a 4xx JSON error; writes need the analyst role.
async fn bad_input(backend: Backend) {
    let t = TestApp::start(backend, "corrbad").await;
    for q in [
        "detector=nope",
        "severity=urgent",
        "since=yesterday",
        "limit=0",
        "limit=1001",
        "cursor=not-a-uuid",
        "unknown=1",
    ] {
        let (s, v) = t
            .call(
                "GET",
                &format!("/api/correlation/findings?{q}"),
                Some(&t.admin),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {v}");
        assert_eq!(error_code(&v), "invalid_request", "{q}");
    }
    let (s, v) = t
        .call(
            "GET",
            "/api/correlation/findings/nope",
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let (s, v) = t
        .call(
            "GET",
            &format!("/api/correlation/findings/{}", uuid::Uuid::now_v7()),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!((s, error_code(&v)), (StatusCode::NOT_FOUND, "not_found"));
    let path = format!("/api/correlation/baselines/{}", enc(WEB));
    let (s, v) = t.call("GET", &path, Some(&t.admin), None).await;
    assert_eq!((s, error_code(&v)), (StatusCode::NOT_FOUND, "not_found"));
    let (s, v) = t
        .call(
            "GET",
            "/api/correlation/baselines/a%01b",
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::BAD_REQUEST, "invalid_request"),
        "{v}"
    );
    for body in [
        json!({"method": "ja5", "fingerprint": "x"}),
        json!({"method": "ja4", "fingerprint": ""}),
        json!({"method": "ja4", "fingerprint": "a b"}),
        json!({"method": "ja4"}),
        json!({"method": "ja4", "fingerprint": "x", "extra": 1}),
    ] {
        let (s, v) = t
            .call(
                "POST",
                &format!("{path}/accept"),
                Some(&t.admin),
                Some(body.clone()),
            )
            .await;
        assert!(s.is_client_error(), "{body}: {s} {v}");
        assert!(v["error"]["code"].is_string(), "{body}: {v}");
    }
    let (s, v) = t.call("POST", &format!("{path}/reset"), None, None).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    common::assert_router_serves_document(&t, "/api/correlation/").await;
    t.finish().await;
}

backend_tests!(learns_then_finds, accept_reset_restart, bad_input);
