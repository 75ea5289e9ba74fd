//! Discovered-workloads benchmark: how fast is the inventory list with 100,000 workloads?
//!
//! Run: `cargo bench -p hais-control-plane --bench workloads` (release build). Knobs:
//! * `HAIS_BENCH_WORKLOADS` (default 100000): distinct workloads (two events each).
//! * `HAIS_BENCH_BACKENDS` (default `postgres,sqlite`).
//! * `HAIS_BENCH_RUNS` (default 200): timed runs per query.
//! * `HAIS_TEST_DATABASE_URL`: PostgreSQL server (default the local one); a fresh schema is
//!   created and dropped.
//!
//! The inventory is built the way production builds it: events are ingested (roll-ups and the
//! outbox in the ingest transactions), then the identity service's consumer
//! (`services::identity::inventory::Inventory`, two replicas) records every workload. Then each
//! list query (limit 50, as the API's default) runs `HAIS_BENCH_RUNS` times through the store,
//! with each filter alone and combined, and a detail; p50/p99/max are printed.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hais_control_plane::bus::durable::{
    Batch, Consumer, ConsumerMetrics, ConsumerOptions, Handler, HandlerFuture, Wakeups,
};
use hais_control_plane::bus::log::FingerprintEvents;
use hais_control_plane::services::identity::Identity;
use hais_control_plane::services::identity::inventory::Inventory;
use hais_control_plane::store::workloads::WorkloadQuery;
use hais_shared::event::{Fingerprint, FingerprintEvent, Flow, Transport};
use hais_shared::fingerprint::Method;
use tokio::sync::watch;

/// Counts what the inventory consumer committed, to know when it is done.
struct Counted(Inventory, AtomicU64);

impl Handler<FingerprintEvents> for Counted {
    fn handle<'a>(&'a self, batch: &'a Batch<FingerprintEvents>) -> HandlerFuture<'a> {
        Box::pin(async move {
            let ack = self.0.handle(batch).await?;
            self.1
                .fetch_add(batch.items().count() as u64, Ordering::Relaxed);
            Ok(ack)
        })
    }
}

/// Workload `i` of `n`: 80% host processes on 100 hosts, 20% Kubernetes deployments in 50
/// namespaces (each on two nodes).
fn event(i: usize, copy: usize) -> FingerprintEvent {
    let host = i % 100;
    let mut e = FingerprintEvent::new(
        format!("agent-{host:03}"),
        format!("host-{host:03}.prod"),
        Flow {
            src_ip: "10.0.0.1".parse().unwrap(),
            src_port: 40000 + (i % 20000) as u16,
            dst_ip: "192.0.2.1".parse().unwrap(),
            dst_port: 443,
            transport: Transport::Tcp,
        },
    );
    e.server_name = Some(format!("svc-{}.example.com", i % 50));
    e.workload.pid = Some(1000 + i as u32);
    e.workload.uid = Some(1000);
    e.workload.user = Some("svc".into());
    e.workload.process = Some(format!("app{}", i / 100));
    e.workload.exe = Some(format!("/opt/app{}/bin/server", i / 100));
    if i.is_multiple_of(5) {
        e.workload.k8s_namespace = Some(format!("ns-{}", i % 50));
        e.workload.k8s_service_account = Some("default".into());
        e.workload.k8s_pod_name = Some(format!("deploy{i}-7d4b9c8f6d-x2x{}", ["9q", "4m"][copy]));
        e.host = format!("host-{:03}.prod", (host + copy) % 100);
    }
    e.fingerprints = vec![
        Fingerprint {
            method: Method::Ja4,
            value: format!("t13d1516h2_8daaf6152771_{:012x}", i % 997),
        },
        Fingerprint {
            method: Method::Ja4t,
            value: format!("64240_2-4-8-1-3_1460_{}", i % 7),
        },
    ];
    e.workload.key = hais_shared::workload::workload_key(&e);
    e
}

async fn run(backend: &str, n: usize, runs: usize) {
    let db = common::BenchDb::new(backend, "wl");
    let store = db.open().await;
    let identity = Arc::new(
        Identity::load(&*store, "hais.local")
            .await
            .expect("identity"),
    );
    let wake = Arc::new(Wakeups::default());
    let (shutdown, _) = watch::channel(false);
    let handled: Vec<Arc<Counted>> = (0..2)
        .map(|_| {
            Arc::new(Counted(
                Inventory {
                    store: store.clone(),
                    identity: identity.clone(),
                },
                AtomicU64::new(0),
            ))
        })
        .collect();
    let members: Vec<_> = handled
        .iter()
        .enumerate()
        .map(|(i, h)| {
            Consumer::<FingerprintEvents>::new(
                store.clone(),
                wake.clone(),
                "identity",
                &format!("identity-{i}"),
                ConsumerOptions {
                    renew_every: Duration::from_millis(500),
                    poll_interval: Duration::from_millis(200),
                    ..Default::default()
                },
                h.clone(),
                Arc::new(ConsumerMetrics::default()),
            )
            .spawn(shutdown.subscribe())
        })
        .collect();

    let t = Instant::now();
    let events: Vec<FingerprintEvent> = (0..n).flat_map(|i| [event(i, 0), event(i, 1)]).collect();
    for b in events.chunks(1000) {
        store.ingest(b).await.expect("ingest");
        wake.poke("fingerprint.events");
    }
    let total = events.len() as u64;
    while handled
        .iter()
        .map(|h| h.1.load(Ordering::Relaxed))
        .sum::<u64>()
        < total
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    store.settle_rollups().await.expect("settle");
    if !db.is_sqlite() {
        // What autovacuum does within a minute of such an insert-heavy load: statistics for the
        // planner, and the visibility map that lets key scans skip the rows.
        db.pg_execute(&["VACUUM ANALYZE"]).await;
    }
    println!(
        "{backend}: {n} workloads ({total} events) ingested and recorded in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let q = |f: &dyn Fn(&mut WorkloadQuery)| {
        let mut q = WorkloadQuery {
            limit: 50,
            ..Default::default()
        };
        f(&mut q);
        q
    };
    let queries: Vec<(&str, WorkloadQuery)> = vec![
        ("no filter", q(&|_| {})),
        ("host", q(&|q| q.host = Some("host-042.prod".into()))),
        ("agent", q(&|q| q.agent = Some("agent-042".into()))),
        ("namespace", q(&|q| q.namespace = Some("ns-5".into()))),
        ("kind=k8s", q(&|q| q.kind = Some("k8s".into()))),
        ("resolved=false", q(&|q| q.resolved = Some(false))),
        ("resolved=true (none)", q(&|q| q.resolved = Some(true))),
        ("q=app7 (substring)", q(&|q| q.q = Some("app7".into()))),
        ("q=nothing (no match)", q(&|q| q.q = Some("nothing".into()))),
        (
            "host + kind + q",
            q(&|q| {
                q.host = Some("host-042.prod".into());
                q.kind = Some("host".into());
                q.q = Some("app4".into());
            }),
        ),
        (
            "page in the middle",
            q(&|q| q.after = Some("host:host-050.prod:app500:svc".into())),
        ),
    ];
    for (name, query) in &queries {
        let mut times = Vec::with_capacity(runs);
        let mut items = 0;
        for _ in 0..runs {
            let t = Instant::now();
            items = store.list_workloads(query).await.expect("list").len();
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "{backend}: list {name:<22} {items:>3} items  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
            common::percentile(&times, 0.5).as_secs_f64() * 1e3,
            common::percentile(&times, 0.99).as_secs_f64() * 1e3,
            times.last().unwrap().as_secs_f64() * 1e3
        );
    }
    let key = events[42].workload.key.clone().unwrap();
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        store.workload_detail(&key).await.expect("detail").unwrap();
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "{backend}: detail                           p50 {:>7.2} ms  p99 {:>7.2} ms",
        common::percentile(&times, 0.5).as_secs_f64() * 1e3,
        common::percentile(&times, 0.99).as_secs_f64() * 1e3
    );

    let _ = shutdown.send(true);
    for m in members {
        let _ = m.await;
    }
    let _ = store.close().await;
    db.remove().await;
}

fn main() {
    let n = common::env_usize("HAIS_BENCH_WORKLOADS", 100_000);
    let runs = common::env_usize("HAIS_BENCH_RUNS", 200);
    common::for_each_backend("postgres,sqlite", |b| async move { run(&b, n, runs).await });
}
