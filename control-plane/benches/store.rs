//! Storage benchmark: ingest throughput (batches of 1,000 events) into SQLite and PostgreSQL,
//! then search latency (p50/p99) with the whole data set stored.
//!
//! Run: `cargo bench -p hais-control-plane --bench store` (release build). Knobs:
//! * `HAIS_BENCH_EVENTS` (default 1000000): events to store per backend.
//! * `HAIS_BENCH_BACKENDS` (default `sqlite,postgres`).
//! * `HAIS_BENCH_CONCURRENCY` (default 4): concurrent ingest calls for PostgreSQL, which its
//!   group-commit writer merges (SQLite has one writer, so it always uses 1).
//! * `HAIS_BENCH_PROFILE` (default `fleet`): `fleet` gives each agent a small repertoire of
//!   fingerprints and server names; `wide` draws every event from the fleet-wide distributions
//!   (worst case for roll-up volume).
//! * `HAIS_BENCH_ROLLUP_INTERVAL_MS` (default: the store's default): period of the background
//!   roll-up fold; `0` runs no worker (everything is folded after ingest, by `settle_rollups`).
//! * `HAIS_TEST_DATABASE_URL`: PostgreSQL server (default the local one); a fresh schema is
//!   created and dropped.
//!
//! The data (`common/mod.rs`, shared with the other benchmarks) is deterministic and shaped like
//! a fleet: 200 agents each sending its own batches; per event a JA4 and a JA4S drawn from skewed
//! distributions (a few values are very common, most are rare; 20,000 JA4, 2,000 JA4S, 5,000
//! server names fleet-wide), a server name on 80% of events, timestamps spread over the last 7
//! days.
//! It measures the store layer (validation and HTTP are not included).
//!
//! Ingest commits events plus a record of pre-aggregated roll-up deltas; the roll-up stage folds
//! those in the background (and before any roll-up read). The benchmark reports the ingest rate
//! (acknowledged, durable events), the backlog the fold had left when ingest ended, and the rate
//! with that backlog folded too (`settle_rollups`), i.e. until every roll-up is up to date.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hais_control_plane::store::{self, FingerprintQuery, Store};
use hais_shared::event::FingerprintEvent;
use hais_shared::fingerprint::Method;
use tokio::sync::Mutex;

mod common;
use common::{AGENTS, BATCH, JA4_VALUES, Profile, Rng, SNIS, ja4, make_batches};

/// Ingests all batches with `concurrency` workers; returns events/s of the first 100k and overall.
async fn ingest_all(
    store: Arc<dyn Store>,
    batches: Vec<Vec<FingerprintEvent>>,
    concurrency: usize,
) -> (f64, f64, Duration) {
    let total: usize = batches.iter().map(Vec::len).sum();
    let queue = Arc::new(Mutex::new(batches.into_iter()));
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let first_100k = Arc::new(std::sync::Mutex::new(None::<Duration>));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (queue, store, done, first) = (
            queue.clone(),
            store.clone(),
            done.clone(),
            first_100k.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let Some(batch) = queue.lock().await.next() else {
                    return;
                };
                let out = store.ingest(&batch).await.expect("ingest");
                assert_eq!(out.stored.len(), batch.len());
                let d =
                    done.fetch_add(batch.len(), std::sync::atomic::Ordering::Relaxed) + batch.len();
                if d >= 100_000 {
                    let mut f = first.lock().unwrap();
                    if f.is_none() {
                        *f = Some(start.elapsed());
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let elapsed = start.elapsed();
    let first = first_100k.lock().unwrap().unwrap_or(elapsed);
    let first_rate = total.min(100_000) as f64 / first.as_secs_f64();
    (first_rate, total as f64 / elapsed.as_secs_f64(), elapsed)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

/// Runs each kind of query `iters` times with varying parameters; prints p50/p99 per kind.
async fn search_latency(store: &dyn Store, iters: usize) -> Vec<(String, Duration, Duration)> {
    let mut rng = Rng(42);
    let now_us = store::now_us();
    let mut all = Vec::new();
    let mut rows = Vec::new();
    type Make = fn(&mut Rng, i64) -> FingerprintQuery;
    let kinds: Vec<(&str, Make)> = vec![
        ("first page, method=ja4, limit=50", |_, _| {
            FingerprintQuery {
                method: Some(Method::Ja4),
                limit: 50,
                ..Default::default()
            }
        }),
        ("exact value", |r, _| FingerprintQuery {
            value: Some(ja4(r.skewed(JA4_VALUES))),
            limit: 50,
            ..Default::default()
        }),
        ("prefix (t13d1)", |r, _| FingerprintQuery {
            prefix: Some(format!("t13d1{}", r.next() % 9)),
            limit: 50,
            ..Default::default()
        }),
        ("part_a", |r, _| FingerprintQuery {
            part_a: Some(format!(
                "t13d{:02}{:02}h2",
                10 + r.next() % 9,
                5 + r.next() % 11
            )),
            limit: 50,
            ..Default::default()
        }),
        ("host", |r, _| FingerprintQuery {
            host: Some(format!("host-{:03}.prod", r.next() % AGENTS)),
            limit: 50,
            ..Default::default()
        }),
        ("server_name + last 24h", |r, now| FingerprintQuery {
            server_name: Some(format!("svc-{}.example.com", r.skewed(SNIS))),
            from_us: Some(now - 86_400_000_000),
            limit: 50,
            ..Default::default()
        }),
        ("host + method + last 24h", |r, now| FingerprintQuery {
            host: Some(format!("host-{:03}.prod", r.next() % AGENTS)),
            method: Some(Method::Ja4),
            from_us: Some(now - 86_400_000_000),
            limit: 100,
            ..Default::default()
        }),
        ("deep page (cursor), limit=100", |r, _| FingerprintQuery {
            after: Some(store::Cursor {
                method: "ja4".into(),
                value: ja4(r.next() % JA4_VALUES),
            }),
            limit: 100,
            ..Default::default()
        }),
    ];
    for (name, make) in kinds {
        let mut lat = Vec::with_capacity(iters);
        for _ in 0..iters {
            let q = make(&mut rng, now_us);
            let t = Instant::now();
            let page = store.search(&q).await.expect("search");
            lat.push(t.elapsed());
            std::hint::black_box(page);
        }
        lat.sort();
        rows.push((
            name.to_owned(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
        ));
        all.extend(lat);
    }
    // Detail and top-N, the other read paths.
    let mut lat = Vec::new();
    for _ in 0..iters {
        let v = ja4(rng.skewed(JA4_VALUES));
        let t = Instant::now();
        std::hint::black_box(store.detail(Method::Ja4, &v).await.expect("detail"));
        lat.push(t.elapsed());
    }
    lat.sort();
    rows.push((
        "detail (4 dimension lists)".into(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
    ));
    let mut lat = Vec::new();
    for _ in 0..(iters / 10).max(5) {
        let t = Instant::now();
        std::hint::black_box(
            store
                .top(now_us - 86_400_000_000, None, 10)
                .await
                .expect("top"),
        );
        lat.push(t.elapsed());
    }
    lat.sort();
    rows.push((
        "top 10 over 24h".into(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
    ));
    all.sort();
    rows.push((
        "all searches".into(),
        percentile(&all, 0.5),
        percentile(&all, 0.99),
    ));
    rows
}

/// What to remove after a backend's run.
enum Cleanup {
    Dir(std::path::PathBuf),
    Schema { url: String, schema: String },
}

impl Cleanup {
    async fn run(self) {
        match self {
            Cleanup::Dir(d) => {
                let _ = std::fs::remove_dir_all(d);
            }
            Cleanup::Schema { url, schema } => {
                use sqlx::Connection;
                let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                    .execute(&mut c)
                    .await
                    .unwrap();
            }
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

async fn run(
    backend: &str,
    total: usize,
    concurrency: usize,
    profile: Profile,
    options: store::StoreOptions,
) {
    let batches = make_batches(total, 0x5eed, profile);
    let replay = batches[0].clone();
    let (store, cleanup) = match backend {
        "sqlite" => {
            let dir = std::env::temp_dir().join(format!("hais-bench-{}", uuid::Uuid::now_v7()));
            std::fs::create_dir_all(&dir).unwrap();
            let url = format!("sqlite://{}", dir.join("bench.db").display());
            let s = store::open_with(&url, None, 4, options)
                .await
                .expect("open sqlite");
            (s, Cleanup::Dir(dir))
        }
        "postgres" => {
            let url = std::env::var("HAIS_TEST_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
            let schema = format!("hais_bench_{}", uuid::Uuid::now_v7().simple());
            let s = store::open_with(
                &url,
                Some(&schema),
                (concurrency as u32 + 2).max(4),
                options,
            )
            .await
            .expect("open postgres");
            (s, Cleanup::Schema { url, schema })
        }
        other => panic!("unknown backend {other}"),
    };
    // SQLite has one writer; more submitters would only queue.
    let conc = if backend == "sqlite" { 1 } else { concurrency };
    let (first, overall, elapsed) = ingest_all(store.clone(), batches, conc).await;
    let backlog = store.pending_rollups().await.unwrap();
    let t = Instant::now();
    store.settle_rollups().await.unwrap();
    let settle = t.elapsed();
    let pname = if profile == Profile::Fleet {
        "fleet"
    } else {
        "wide"
    };
    println!(
        "\n### {backend}, {pname} profile: {total} events, batches of {BATCH}, {conc} concurrent submitter(s)\n"
    );
    println!("| ingest | events/s |\n|---|---|");
    println!("| first 100k (empty tables) | {first:.0} |");
    println!(
        "| all {total} ({:.1} s) | {overall:.0} |",
        elapsed.as_secs_f64()
    );
    println!(
        "| all {total} with roll-ups folded ({:.1} s; backlog at end of ingest {} events, folded in {:.2} s) | {:.0} |",
        (elapsed + settle).as_secs_f64(),
        backlog.events,
        settle.as_secs_f64(),
        total as f64 / (elapsed + settle).as_secs_f64()
    );
    // Replaying a batch stores nothing (and is fast).
    let t = Instant::now();
    let out = store.ingest(&replay).await.unwrap();
    assert_eq!(out.duplicates, replay.len());
    println!(
        "| replay of a stored batch (1,000 duplicates) | {:.0} |",
        replay.len() as f64 / t.elapsed().as_secs_f64()
    );
    assert_eq!(store.count_events().await.unwrap() as usize, total);
    let rows = search_latency(&*store, 200).await;
    println!("\n| search with {total} events stored | p50 ms | p99 ms |\n|---|---|---|");
    for (name, p50, p99) in rows {
        println!("| {name} | {} | {} |", ms(p50), ms(p99));
    }
    store.close().await.unwrap();
    cleanup.run().await;
}

fn main() {
    let total: usize = std::env::var("HAIS_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let concurrency: usize = std::env::var("HAIS_BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let profile = match std::env::var("HAIS_BENCH_PROFILE").as_deref() {
        Ok("wide") => Profile::Wide,
        _ => Profile::Fleet,
    };
    let mut options = store::StoreOptions::default();
    if let Some(ms) = std::env::var("HAIS_BENCH_ROLLUP_INTERVAL_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        options.rollup_interval = (ms > 0).then(|| Duration::from_millis(ms));
    }
    let backends =
        std::env::var("HAIS_BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    // `cargo test --benches` runs this with `--bench` absent: keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let total = if quick { 2_000 } else { total };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for b in backends.split(',').map(str::trim).filter(|b| !b.is_empty()) {
            run(b, total, concurrency, profile, options).await;
        }
    });
}
