//! Events-search benchmark: how fast is `GET /api/ja4/events` with 10,000,000 stored events?
//!
//! Run: `cargo bench -p hais-control-plane --bench events` (release build). Knobs:
//! * `HAIS_BENCH_EVENTS` (default 10000000): events stored.
//! * `HAIS_BENCH_BACKENDS` (default `postgres`; `sqlite` works too).
//! * `HAIS_BENCH_RUNS` (default 200): timed runs per query.
//! * `HAIS_TEST_DATABASE_URL`: PostgreSQL server (default the local one); a fresh schema is
//!   created and dropped (`HAIS_BENCH_KEEP=1` keeps it, e.g. to `EXPLAIN` by hand).
//!
//! The events are the shared synthetic fleet (`common`: 200 agents, skewed JA4/JA4S/server
//! names over 7 days), stored through the store's ingest path in batches of 1,000, with what a
//! fleet also varies: destinations (2,000 addresses, 30 ports, skewed), source addresses, a
//! resolved SPIFFE ID on half the events and the workload key on all. Then each query (a page
//! of 50, the API's default) runs `HAIS_BENCH_RUNS` times through the store, each run with a
//! different filter value drawn from the stored events (so common and rare values both come
//! up, as often as users would meet them): every filter alone, and with a 6-hour time range
//! somewhere in the 7 days. p50/p99/max are printed.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::{Profile, Rng, make_batches};
use hais_control_plane::store;
use hais_control_plane::store::events::{EventCursor, EventQuery};
use hais_shared::event::FingerprintEvent;
use hais_shared::fingerprint::Method;

/// Ports of the synthetic fleet, most common first.
const PORTS: [u16; 30] = [
    443, 8443, 80, 5432, 6379, 9092, 22, 3306, 8080, 9200, 2379, 11211, 27017, 5672, 8000, 9000,
    3000, 4317, 9090, 53, 636, 389, 25, 587, 993, 1433, 1521, 5000, 7000, 8888,
];

/// Gives an event of the shared generator what a fleet varies besides fingerprints.
fn vary(e: &mut FingerprintEvent, rng: &mut Rng) {
    let dst = rng.skewed(2_000);
    e.flow.dst_ip = IpAddr::from([10, 20, (dst / 250) as u8, (dst % 250) as u8]);
    e.flow.dst_port = PORTS[rng.skewed(PORTS.len() as u64) as usize];
    let agent: u16 = e.agent_id[6..].parse().unwrap_or(0);
    e.flow.src_ip = IpAddr::from([10, 0, (agent / 250) as u8, (agent % 250) as u8]);
    let app = e.workload.exe.as_deref().unwrap_or("").to_owned();
    let process = app.rsplit('/').next().unwrap_or("app").to_owned();
    e.workload.process = Some(process.clone());
    e.workload.key = Some(format!("host:{}:{process}:svc", e.host));
    if rng.unit() < 0.5 {
        e.workload.spiffe_id = Some(format!("spiffe://prod.example/{}/{process}", e.host));
    }
}

/// One query to time: a name and how to make its filter from a sampled event.
struct Case {
    name: &'static str,
    filter: fn(&FingerprintEvent, &mut EventQuery),
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "newest (no filter)",
            filter: |_, _| {},
        },
        Case {
            name: "method=ja4s",
            filter: |_, q| q.method = Some(Method::Ja4s),
        },
        Case {
            name: "method+value (JA4)",
            filter: |e, q| {
                q.method = Some(Method::Ja4);
                q.value = Some(e.fingerprints[0].value.clone());
            },
        },
        Case {
            name: "value (JA4S, no method)",
            filter: |e, q| q.value = Some(e.fingerprints[1].value.clone()),
        },
        Case {
            name: "identity",
            filter: |e, q| {
                q.identity = Some(
                    e.workload
                        .spiffe_id
                        .clone()
                        .unwrap_or_else(|| format!("spiffe://prod.example/{}/app3", e.host)),
                )
            },
        },
        Case {
            name: "workload",
            filter: |e, q| q.workload = e.workload.key.clone(),
        },
        Case {
            name: "host",
            filter: |e, q| q.host = Some(e.host.clone()),
        },
        Case {
            name: "agent",
            filter: |e, q| q.agent = Some(e.agent_id.clone()),
        },
        Case {
            name: "src_ip",
            filter: |e, q| q.src_ip = Some(e.flow.src_ip),
        },
        Case {
            name: "dst_ip",
            filter: |e, q| q.dst_ip = Some(e.flow.dst_ip),
        },
        Case {
            name: "dst_port",
            filter: |e, q| q.dst_port = Some(e.flow.dst_port),
        },
        Case {
            name: "server_name",
            filter: |e, q| {
                q.server_name = Some(
                    e.server_name
                        .clone()
                        .unwrap_or_else(|| "svc-1.example.com".into()),
                )
            },
        },
        Case {
            name: "JA4 + host",
            filter: |e, q| {
                q.method = Some(Method::Ja4);
                q.value = Some(e.fingerprints[0].value.clone());
                q.host = Some(e.host.clone());
            },
        },
    ]
}

async fn run(backend: &str, n: usize, runs: usize) {
    let db = common::BenchDb::new(backend, "ev");
    let store = db.open().await;

    // Store the events in chunks (10M events do not fit in memory at once), keeping a sample
    // to draw filter values from.
    // The `search` group indexes while events are stored, as in the service.
    let indexer = common::SearchIndexer::start(store.clone()).await;
    let started = Instant::now();
    let mut rng = Rng(0x5eed_e7e7);
    let mut sample = Vec::new();
    let chunk = 200_000;
    let mut stored = 0;
    let mut seed = 1u64;
    while stored < n {
        let m = chunk.min(n - stored);
        let mut batches = make_batches(m, seed, Profile::Fleet);
        seed += 1;
        for b in &mut batches {
            for e in b.iter_mut() {
                vary(e, &mut rng);
            }
            sample.push(b[rng.next() as usize % b.len()].clone());
        }
        let writers: Vec<_> = batches
            .into_iter()
            .map(|b| {
                let store = store.clone();
                tokio::spawn(async move { store.ingest(&b).await.expect("ingest") })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        indexer.poke();
        stored += m;
        eprintln!(
            "{backend}: {stored} events stored ({:.0}/s)",
            stored as f64 / started.elapsed().as_secs_f64()
        );
    }
    let stored_in = started.elapsed().as_secs_f64();
    let behind = indexer.lag().await;
    indexer.caught_up().await;
    let indexed_in = started.elapsed().as_secs_f64();
    indexer.stop().await;
    store.settle_rollups().await.unwrap();
    println!(
        "{backend}: {n} events stored in {stored_in:.0} s ({:.0} events/s acknowledged); \
         search indexed them all {:.1} s later ({behind} behind when ingest ended; \
         {:.0} events/s stored and indexed)",
        n as f64 / stored_in,
        indexed_in - stored_in,
        n as f64 / indexed_in
    );
    if !db.is_sqlite() {
        // What autovacuum does after such a load: statistics, and the visibility map that
        // lets index-only scans skip the rows.
        db.pg_execute(&[
            "VACUUM ANALYZE events",
            "VACUUM ANALYZE event_fingerprints",
            "VACUUM ANALYZE event_search",
        ])
        .await;
    }

    let now_us = store::now_us();
    let week_us = 7 * 86_400_000_000i64;
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "query (limit 50)", "p50", "p99", "max", "+6h p50", "+6h p99", "+6h max", "rows"
    );
    for case in cases() {
        let mut plain = Vec::with_capacity(runs);
        let mut ranged = Vec::with_capacity(runs);
        let mut rows = 0usize;
        for r in 0..runs {
            let e = &sample[rng.next() as usize % sample.len()];
            for with_range in [false, true] {
                let mut q = EventQuery {
                    limit: 50,
                    ..Default::default()
                };
                (case.filter)(e, &mut q);
                if with_range {
                    let from = now_us - week_us + (rng.next() % (week_us as u64)) as i64;
                    q.from_us = Some(from);
                    q.to_us = Some(from + 6 * 3_600_000_000);
                }
                // Every fifth run asks for the second page.
                if r % 5 == 4
                    && let Some(c) = store.events(&q).await.unwrap().next_cursor
                {
                    q.before = EventCursor::decode(&c);
                }
                let t = Instant::now();
                let page = store.events(&q).await.unwrap();
                let took = t.elapsed();
                rows += page.items.len();
                if with_range {
                    ranged.push(took);
                } else {
                    plain.push(took);
                }
            }
        }
        plain.sort();
        ranged.sort();
        let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1000.0);
        println!(
            "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
            case.name,
            ms(common::percentile(&plain, 0.5)),
            ms(common::percentile(&plain, 0.99)),
            ms(*plain.last().unwrap()),
            ms(common::percentile(&ranged, 0.5)),
            ms(common::percentile(&ranged, 0.99)),
            ms(*ranged.last().unwrap()),
            rows / (2 * runs)
        );
    }

    let _ = store.close().await;
    db.remove().await;
}

fn main() {
    let n = common::env_usize("HAIS_BENCH_EVENTS", 10_000_000);
    let runs = common::env_usize("HAIS_BENCH_RUNS", 200);
    common::for_each_backend("postgres", |b| async move { run(&b, n, runs).await });
}
