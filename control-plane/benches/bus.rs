//! Durable bus benchmark: does a consumer group with two replicas keep up with ingest?
//!
//! Run: `cargo bench -p hais-control-plane --bench bus` (release build). Knobs:
//! * `HAIS_BENCH_EVENTS` (default 1000000): events ingested per backend, in batches of 1,000.
//! * `HAIS_BENCH_BACKENDS` (default `sqlite,postgres`).
//! * `HAIS_BENCH_REPLICAS` (default 2): members of each consumer group.
//! * `HAIS_BENCH_CONCURRENCY` (default 4): concurrent ingest calls for PostgreSQL, which its
//!   group-commit writers merge (SQLite has one writer, so it always uses 1).
//! * `HAIS_TEST_DATABASE_URL`: PostgreSQL server (default the local one); a fresh schema is
//!   created and dropped.
//!
//! Per backend, in one run:
//! 1. group `live` (replicas members) runs while the events are ingested: the ingest rate
//!    (acknowledged, with the outbox rows in the same transactions), the group's lag when ingest
//!    ends, and when it caught up;
//! 2. group `drain` then starts on the full log: its rate through the whole backlog. It is
//!    registered before ingest (as a deployed group is), so the log keeps every row for it:
//!    trimming deletes only what every registered group has passed.
//!
//! The events are `store.rs`'s (the `fleet` profile, `common/mod.rs`), so its ingest figures
//! (the same ingest without consumers) are the reference. Progress is polled every 50 ms from
//! `bus_positions`, which reads counters, not the log, so polling costs the same at any lag.
//!
//! The handler counts items and acknowledges (the consumer commits the checkpoint and the
//! handled count in one transaction per batch), so this measures the bus, not a service.
//! Members are tasks of this process: they coordinate through the store exactly as replicas in
//! separate processes do (leases, fencing), and share this machine's two cores with the database.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hais_control_plane::bus::durable::{
    Ack, Batch, Consumer, ConsumerMetrics, ConsumerOptions, Handler, HandlerFuture, Wakeups,
};
use hais_control_plane::bus::log::FingerprintEvents;
use hais_control_plane::store::{self, Store};
use tokio::sync::watch;

mod common;

struct Count(AtomicU64);

impl Handler<FingerprintEvents> for Count {
    fn handle<'a>(&'a self, batch: &'a Batch<FingerprintEvents>) -> HandlerFuture<'a> {
        Box::pin(async move {
            self.0
                .fetch_add(batch.items().count() as u64, Ordering::Relaxed);
            Ok(Ack::Done)
        })
    }
}

fn group(
    store: &Arc<dyn Store>,
    wake: &Arc<Wakeups>,
    name: &str,
    replicas: usize,
    shutdown: &watch::Sender<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..replicas)
        .map(|i| {
            Consumer::<FingerprintEvents>::new(
                store.clone(),
                wake.clone(),
                name,
                &format!("{name}-{i}"),
                ConsumerOptions {
                    renew_every: Duration::from_millis(500),
                    poll_interval: Duration::from_millis(200),
                    ..Default::default()
                },
                Arc::new(Count(AtomicU64::new(0))),
                Arc::new(ConsumerMetrics::default()),
            )
            .spawn(shutdown.subscribe())
        })
        .collect()
}

async fn handled(store: &Arc<dyn Store>, name: &str) -> (i64, i64) {
    let p = store
        .bus_positions(store::now_us(), 10_000_000)
        .await
        .expect("positions")
        .into_iter()
        .find(|p| p.group == name)
        .unwrap_or_default();
    (p.handled, p.lag_items)
}

/// Waits until `name` has handled `n` items; returns when.
async fn until(store: &Arc<dyn Store>, name: &str, n: i64) -> Instant {
    loop {
        if handled(store, name).await.0 >= n {
            return Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run(backend: &str, total: usize, replicas: usize, concurrency: usize) {
    let db = common::BenchDb::new(backend, "bus");
    let store = db.open().await;
    let wake = Arc::new(Wakeups::default());
    let (shutdown, _) = watch::channel(false);
    let data = common::make_batches(total, 0x5eed, common::Profile::Fleet);

    // Registered now, started after ingest: until then the log keeps every row for it. (A group
    // registered only after ingest would start with what `live` had not trimmed yet.)
    store
        .bus_register("drain", "fingerprint.events")
        .await
        .expect("register");
    let live = group(&store, &wake, "live", replicas, &shutdown);
    let concurrency = if backend == "sqlite" { 1 } else { concurrency };
    let queue = Arc::new(tokio::sync::Mutex::new(data.into_iter()));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (queue, store, wake) = (queue.clone(), store.clone(), wake.clone());
            tokio::spawn(async move {
                loop {
                    let Some(b) = queue.lock().await.next() else {
                        return;
                    };
                    store.ingest(&b).await.expect("ingest");
                    wake.poke("fingerprint.events");
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let ingested = start.elapsed();
    let (done_at_end, lag_at_end) = handled(&store, "live").await;
    let caught_up = until(&store, "live", total as i64).await - start;
    let ingest_rate = total as f64 / ingested.as_secs_f64();
    println!(
        "{backend}: ingest {total} events ({concurrency} concurrent calls) in {:.1} s = {:.0} \
         events/s (outbox included); group `live` ({replicas} replicas) had handled \
         {done_at_end} with {lag_at_end} behind when ingest ended, all after {:.1} s ({:.0} \
         events/s over the run)",
        ingested.as_secs_f64(),
        ingest_rate,
        caught_up.as_secs_f64(),
        total as f64 / caught_up.as_secs_f64()
    );

    let t = Instant::now();
    let drain = group(&store, &wake, "drain", replicas, &shutdown);
    let drained = until(&store, "drain", total as i64).await - t;
    let drain_rate = total as f64 / drained.as_secs_f64();
    println!(
        "{backend}: group `drain` ({replicas} replicas) through the {total}-event backlog in \
         {:.1} s = {:.0} events/s = {:.2}× the ingest rate",
        drained.as_secs_f64(),
        drain_rate,
        drain_rate / ingest_rate
    );
    let _ = shutdown.send(true);
    for t in live.into_iter().chain(drain) {
        let _ = t.await;
    }
    let _ = store.close().await;
    db.remove().await;
}

fn main() {
    let total: usize = std::env::var("HAIS_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let replicas: usize = std::env::var("HAIS_BENCH_REPLICAS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let concurrency: usize = std::env::var("HAIS_BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let backends =
        std::env::var("HAIS_BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for b in backends.split(',').map(str::trim).filter(|b| !b.is_empty()) {
        rt.block_on(run(b, total, replicas, concurrency));
    }
}
