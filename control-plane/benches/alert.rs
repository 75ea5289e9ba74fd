//! Alert benchmark: how long from a finding published to its notification at a webhook, under
//! a steady 10,000 findings a minute?
//!
//! Run: `cargo bench -p hais-control-plane --bench alert` (release build). Knobs:
//! * `HAIS_BENCH_FINDINGS` (default 10000): findings published, each a new alert.
//! * `HAIS_BENCH_PER_MINUTE` (default 10000): the publishing rate, in batches every 100 ms (as a
//!   correlation service publishes what one of its batches concluded).
//! * `HAIS_BENCH_BACKENDS` (default `sqlite,postgres`).
//! * `HAIS_TEST_DATABASE_URL`: PostgreSQL server (default the local one); a fresh schema is
//!   created and dropped.
//!
//! The whole control plane runs in this process (`App::start`, the default `all` service, the
//! in-process bus), with one webhook channel pointing at an HTTP server of this process that
//! checks nothing and records when each alert arrived. A finding is published as the judging
//! services do: appended to the durable topic `detections` in a transaction of its own, then
//! the topic's consumers woken. Latency = arrival at the webhook − start of that publication:
//! the consumer's transaction (alert + outbox row + checkpoint), the deliverer's claim, the
//! signed POST and its answer, the deletion.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hais_control_plane::bus::log::{Detections, DurableTopic, outbox};
use hais_control_plane::store::alert::{ChannelHealth, ChannelKind, ChannelRecord};
use hais_control_plane::store::now_us;
use hais_control_plane::{App, Config};
use hais_shared::detection::{Detection, Severity, Source};
use hais_shared::fingerprint::Method;

type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

/// The webhook receiver: records the first arrival of each identity's alert.
async fn receiver(arrivals: Arrivals) -> std::net::SocketAddr {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let arrivals = arrivals.clone();
            async move {
                let now = Instant::now();
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
                    && let Some(id) = v["alert"]["identity"].as_str()
                {
                    arrivals.lock().unwrap().entry(id.to_owned()).or_insert(now);
                }
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn finding(i: usize) -> Detection {
    let now = time::OffsetDateTime::now_utc();
    Detection {
        id: uuid::Uuid::now_v7(),
        source: Source::Correlation,
        rule: "new-fingerprint".into(),
        severity: Severity::High,
        identity: format!("spiffe://bench.example/ns/n{}/sa/w{i}", i % 50),
        method: Some(Method::Ja4),
        fingerprint: Some(format!("t13d1516h2_8daaf6152771_{i:012x}")),
        destination: Some("10.0.0.9:443".into()),
        summary: "presents a JA4 outside its baseline".into(),
        event_ids: vec![uuid::Uuid::now_v7()],
        first_seen: now,
        last_seen: now,
        count: 1,
        attributes: Default::default(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(backend: &str, total: usize, per_minute: usize) {
    let dir = std::env::temp_dir().join(format!("hais-bench-alert-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let schema = format!(
        "hais_bench_alert_{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );
    let pg = std::env::var("HAIS_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut config = Config {
        data_dir: dir.clone(),
        admin_password: Some("bench-admin-password".into()),
        jwt_secret: Some("bench-secret-bench-secret-bench-secret-0".into()),
        ..Config::default()
    };
    config.ja4.uplink_bind = None;
    if backend != "sqlite" {
        config.database_url = Some(pg.clone());
        config.database_schema = Some(schema.clone());
    }
    let app = App::start(config).await.expect("control plane");
    let state = app.state.clone();
    let arrivals: Arrivals = Arc::default();
    let addr = receiver(arrivals.clone()).await;
    let now = now_us();
    let channel = ChannelRecord {
        id: uuid::Uuid::now_v7().to_string(),
        name: "bench".into(),
        kind: ChannelKind::Webhook,
        enabled: true,
        min_severity: Severity::Info,
        identity_pattern: None,
        settings: serde_json::json!({"url": format!("http://{addr}/hook")}),
        has_secret: true,
        created_by: "bench".into(),
        created_us: now,
        updated_us: now,
        health: ChannelHealth::default(),
    };
    assert!(
        state
            .store
            .insert_channel(&channel, Some("bench-webhook-secret"))
            .await
            .unwrap()
    );

    // Publish at the rate, in batches every 100 ms.
    let per_tick = (per_minute as f64 / 600.0).max(1.0);
    let mut sent: HashMap<String, Instant> = HashMap::with_capacity(total);
    let started = Instant::now();
    let mut next = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut owed = 0.0f64;
    while next < total {
        tick.tick().await;
        owed += per_tick;
        let n = (owed as usize).min(total - next);
        owed -= n as f64;
        let batch: Vec<Detection> = (next..next + n).map(finding).collect();
        next += n;
        let t0 = Instant::now();
        state
            .store
            .bus_publish(&outbox::<Detections>(&batch), now_us())
            .await
            .unwrap();
        state.wakeups.poke(Detections::NAME);
        for d in batch {
            sent.insert(d.identity, t0);
        }
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(300);
    while arrivals.lock().unwrap().len() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = arrivals.lock().unwrap().clone();
    let mut lat: Vec<Duration> = sent
        .iter()
        .filter_map(|(id, t0)| got.get(id).map(|t| t.saturating_duration_since(*t0)))
        .collect();
    lat.sort();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "{backend}: {total} findings at {:.0}/min over {publish_secs:.1} s; delivered {} \
         ({} missing); finding→webhook p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms, max {:.0} ms; \
         load {}",
        total as f64 / publish_secs * 60.0,
        lat.len(),
        total - lat.len(),
        percentile(&lat, 0.50).as_secs_f64() * 1000.0,
        percentile(&lat, 0.95).as_secs_f64() * 1000.0,
        percentile(&lat, 0.99).as_secs_f64() * 1000.0,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    );
    app.shutdown().await;
    if backend != "sqlite" {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&pg).await.unwrap();
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE"
        )))
        .execute(&mut c)
        .await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let total = env("HAIS_BENCH_FINDINGS", 10_000);
    let per_minute = env("HAIS_BENCH_PER_MINUTE", 10_000);
    let backends =
        std::env::var("HAIS_BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    let rt = tokio::runtime::Runtime::new().unwrap();
    for b in backends.split(',') {
        rt.block_on(run(b.trim(), total, per_minute));
    }
}
