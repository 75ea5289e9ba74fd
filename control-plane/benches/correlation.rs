//! Correlation latency, live: from the commit of an event an identity never presented before to
//! its `new-fingerprint` finding stored, while normal traffic keeps flowing (issue 14's "p99
//! from event commit to stored finding < 1 s").
//!
//! Run: `cargo bench -p hais-control-plane --bench correlation` (release build). Knobs:
//! * `HAIS_BENCH_IDENTITIES` (default 2000): identities, each learnt first (10 flows back-dated
//!   over ten minutes, so every one is established before the live phase).
//! * `HAIS_BENCH_RATE` (default 2000): normal events per second during the live phase.
//! * `HAIS_BENCH_ANOMALIES` (default 600): identities that present a new JA4 during the live
//!   phase, spread evenly over it (one each, so each is exactly one finding).
//! * `HAIS_BENCH_SECONDS` (default 60): length of the live phase.
//! * `HAIS_BENCH_BACKENDS` (default `sqlite,postgres`).
//!
//! The whole control plane runs in this process (`App::start`, the default `all` service), and
//! events go in through its HTTP ingest route (identity resolution, the commit, the wake-up of
//! the consumers), every 100 ms a batch of normal flows and, separately, that tick's anomalies.
//! t0 = the anomaly batch's ingest answered (its commit is done); t1 = a poller, reading the
//! findings through the store every 5 ms, first sees the identity's finding. Latency = t1 − t0,
//! so it includes up to 5 ms of polling.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, header};
use common::{BenchDb, env_usize, for_each_backend, percentile};
use hais_control_plane::config::HumanDuration;
use hais_control_plane::store::correlation::FindingQuery;
use hais_control_plane::{App, Config};
use hais_shared::event::{Fingerprint, FingerprintEvent};
use hais_shared::fingerprint::Method;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tower::ServiceExt as _;

const CURL: &str = "t13d3112h2_e8f1e7e78f70_b26ce05bbdd6";
const PYTHON: &str = "t13d1812h2_85036bcba153_b26ce05bbdd6";
const JA4T: &str = "65495_2-4-8-1-3_65495_7";
const PASSWORD: &str = "bench-admin-password";

/// A flow of identity `i` (`agent:host-<i>.prod:agent-<i>`) presenting `ja4` at `ts`.
fn flow(i: usize, ja4: &str, ts: OffsetDateTime, port: u16) -> FingerprintEvent {
    let mut e = common::event(i as u64, port, ts);
    e.server_name = Some("api.example".into());
    e.workload.direction = Some("outbound".into());
    e.fingerprints = [(Method::Ja4, ja4), (Method::Ja4t, JA4T)]
        .into_iter()
        .map(|(method, v)| Fingerprint {
            method,
            value: v.to_owned(),
        })
        .collect();
    e
}

fn identity(i: usize) -> String {
    format!("agent:host-{i:03}.prod:agent-{i:03}")
}

/// The app's router, called in-process as a client would call it.
struct Api {
    router: axum::Router,
    token: String,
}

impl Api {
    async fn call(&self, uri: &str, body: Value) -> Value {
        let mut b = Request::builder()
            .method("POST")
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json");
        if !self.token.is_empty() {
            b = b.header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        }
        let req = b
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert!(status.is_success(), "{uri}: {status} {v}");
        v
    }

    async fn ingest(&self, events: &[FingerprintEvent]) {
        for chunk in events.chunks(2000) {
            self.call("/api/ja4/ingest", json!({ "events": chunk }))
                .await;
        }
    }
}

async fn run(backend: String) {
    let identities = env_usize("HAIS_BENCH_IDENTITIES", 2000);
    let rate = env_usize("HAIS_BENCH_RATE", 2000);
    let anomalies = env_usize("HAIS_BENCH_ANOMALIES", 600).min(identities);
    let seconds = env_usize("HAIS_BENCH_SECONDS", 60);
    let db = BenchDb::new(&backend, "corr");
    let dir = std::env::temp_dir().join(format!("hais-bench-corr-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = Config {
        data_dir: dir.clone(),
        admin_password: Some(PASSWORD.into()),
        jwt_secret: Some("bench-secret-bench-secret-bench-secret-0".into()),
        database_url: Some(db.url.clone()),
        database_schema: (!db.is_sqlite()).then(|| db.schema.clone()),
        ..Config::default()
    };
    config.ja4.uplink_bind = None;
    config.correlation.learning_period = HumanDuration::from_secs(60);
    config.correlation.learning_min_flows = 5;
    let app = App::start(config).await.expect("control plane");
    let store = app.state.store.clone();
    let mut api = Api {
        router: app.router(),
        token: String::new(),
    };
    let login = api
        .call(
            "/api/auth/login",
            json!({"username": "admin", "password": PASSWORD}),
        )
        .await;
    api.token = login["access_token"].as_str().unwrap().to_owned();

    // Learning: ten curl flows per identity over the last ten minutes.
    let now = OffsetDateTime::now_utc();
    let mut learn = Vec::with_capacity(identities * 10);
    for k in 0..10 {
        for i in 0..identities {
            let ts = now - time::Duration::seconds(600 - k * 60);
            learn.push(flow(i, CURL, ts, 40000 + k as u16));
        }
    }
    let t = Instant::now();
    api.ingest(&learn).await;
    // Learnt once the last identity's baseline is established.
    let last = identity(identities - 1);
    loop {
        let b = store
            .correlation_baselines(std::slice::from_ref(&last))
            .await;
        if b.ok().and_then(|m| {
            m.get(&last)
                .map(|s| s.baseline.state().as_str() == "established")
        }) == Some(true)
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "learning never ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{backend}: {identities} identities learnt ({} events) in {:.1} s",
        learn.len(),
        t.elapsed().as_secs_f64()
    );

    // The poller: when each anomalous identity's finding is first seen.
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let live_from_us = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (store, seen, stop) = (store.clone(), seen.clone(), stop.clone());
        tokio::spawn(async move {
            let q = FindingQuery {
                detector: Some("new-fingerprint".into()),
                since_us: Some(live_from_us),
                limit: 1000,
                ..FindingQuery::default()
            };
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let found = store.correlation_findings(&q).await.unwrap_or_default();
                let at = Instant::now();
                {
                    let mut s = seen.lock().unwrap();
                    for f in found {
                        s.entry(f.key.identity).or_insert(at);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // Live: normal traffic every 100 ms, and that tick's share of the anomalies.
    let ticks = seconds * 10;
    let per_tick = (rate / 10).max(1);
    let mut sent: HashMap<String, Instant> = HashMap::with_capacity(anomalies);
    let mut rng = common::Rng(7);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let started = Instant::now();
    let mut normal = 0usize;
    for n in 0..ticks {
        tick.tick().await;
        let ts = OffsetDateTime::now_utc();
        let batch: Vec<FingerprintEvent> = (0..per_tick)
            .map(|k| {
                let i = rng.next() as usize % identities;
                flow(i, CURL, ts, 1024 + (k % 60000) as u16)
            })
            .collect();
        api.ingest(&batch).await;
        normal += batch.len();
        let due = (n + 1) * anomalies / ticks - n * anomalies / ticks;
        let first = sent.len();
        let odd: Vec<FingerprintEvent> = (first..first + due)
            .map(|i| flow(i, PYTHON, ts, 443))
            .collect();
        if !odd.is_empty() {
            api.ingest(&odd).await;
            let t0 = Instant::now();
            for i in first..first + due {
                sent.insert(identity(i), t0);
            }
        }
    }
    let live_secs = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.lock().unwrap().len() < sent.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = poller.await;
    let got = seen.lock().unwrap().clone();
    let mut lat: Vec<Duration> = sent
        .iter()
        .filter_map(|(id, t0)| got.get(id).map(|t| t.saturating_duration_since(*t0)))
        .collect();
    lat.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "{backend}: live {live_secs:.1} s, {normal} normal events ({:.0}/s) + {} anomalies; \
         findings {} ({} missing, {} unexpected); commit→finding p50 {:.0} ms, p95 {:.0} ms, \
         p99 {:.0} ms, max {:.0} ms; load {}",
        normal as f64 / live_secs,
        sent.len(),
        lat.len(),
        sent.len() - lat.len(),
        got.len().saturating_sub(lat.len()),
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.95)),
        ms(percentile(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or_default()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    );
    app.shutdown().await;
    db.remove().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    for_each_backend("sqlite,postgres", run);
}
