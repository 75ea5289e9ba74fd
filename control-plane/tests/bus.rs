//! The durable bus on both backends (SQLite + in-process wake-ups, PostgreSQL + Redis-fed
//! wake-ups): retries, dead letters and their replay, and trimming that never discards what a
//! group has not committed. Events are appended by the real ingest path (`Store::ingest`), and
//! consumed by real consumers of `bus::durable`; on PostgreSQL, a transaction committing after a
//! younger one is not skipped. Replicas in separate processes: `split.rs`.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, Isolation, TestApp, event};
use hais_control_plane::bus::durable::{
    Ack, Batch, Consumer, ConsumerMetrics, ConsumerOptions, Handler, HandlerError, HandlerFuture,
    Wakeups,
};
use hais_control_plane::bus::log::FingerprintEvents;
use hais_control_plane::store::bus::{GroupPosition, Position};
use hais_control_plane::store::{self, Store};
use hais_shared::event::FingerprintEvent;
use hais_shared::fingerprint::Method;
use tokio::sync::watch;

backend_tests!(
    a_transient_failure_is_retried_and_succeeds,
    a_poison_row_is_dead_lettered_without_blocking_and_replays_from_the_api,
    a_consumer_far_behind_loses_nothing_to_trimming,
);

/// Records what it was given, and fails as told.
#[derive(Default)]
struct Recorder {
    /// Deliveries of each event id that were acknowledged.
    seen: Mutex<HashMap<uuid::Uuid, u32>>,
    /// Event ids in the order they were acknowledged.
    order: Mutex<Vec<uuid::Uuid>>,
    /// Fail this many deliveries first (transiently).
    fail_first: AtomicU32,
    /// Batches holding an event of this host fail permanently (the poison), until cleared.
    poison_host: Mutex<Option<String>>,
    calls: AtomicU32,
}

impl Handler<FingerprintEvents> for Recorder {
    fn handle<'a>(&'a self, batch: &'a Batch<FingerprintEvents>) -> HandlerFuture<'a> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if self
                .fail_first
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(HandlerError::transient("database busy (test)"));
            }
            if let Some(h) = self.poison_host.lock().unwrap().as_deref()
                && batch.items().any(|e| e.host == h)
            {
                return Err(HandlerError::permanent("poison (test)"));
            }
            let mut seen = self.seen.lock().unwrap();
            for e in batch.items() {
                *seen.entry(e.id).or_default() += 1;
            }
            self.order
                .lock()
                .unwrap()
                .extend(batch.items().map(|e| e.id));
            Ok(Ack::Done)
        })
    }
}

struct Fixture {
    iso: Isolation,
    store: Arc<dyn Store>,
    wake: Arc<Wakeups>,
    shutdown: watch::Sender<bool>,
}

impl Fixture {
    async fn new(backend: Backend) -> Fixture {
        let iso = Isolation::new(backend, "bus").await;
        let c = iso.config();
        let store = store::open(&c.database_url(), None, c.database_schema.as_deref(), 8)
            .await
            .unwrap();
        Fixture {
            iso,
            store,
            wake: Arc::new(Wakeups::default()),
            shutdown: watch::channel(false).0,
        }
    }

    fn consumer(
        &self,
        group: &str,
        member: &str,
        handler: Arc<Recorder>,
    ) -> (tokio::task::JoinHandle<()>, Arc<ConsumerMetrics>) {
        let metrics = Arc::new(ConsumerMetrics::default());
        let opts = ConsumerOptions {
            max_attempts: 3,
            retry_initial: Duration::from_millis(20),
            retry_max: Duration::from_millis(100),
            renew_every: Duration::from_millis(200),
            lease_ttl: Duration::from_secs(2),
            poll_interval: Duration::from_millis(100),
            max_rows: 8,
        };
        let task = Consumer::<FingerprintEvents>::new(
            self.store.clone(),
            self.wake.clone(),
            group,
            member,
            opts,
            handler,
            metrics.clone(),
        )
        .spawn(self.shutdown.subscribe());
        (task, metrics)
    }

    /// Stores `n` events of `hosts` hosts (round robin) in batches of 50, as ingest does.
    async fn ingest(&self, n: usize, hosts: usize, host_prefix: &str) -> Vec<FingerprintEvent> {
        let events: Vec<FingerprintEvent> = (0..n)
            .map(|i| {
                let mut e = event(
                    "agent-1",
                    &format!("{host_prefix}{}", i % hosts),
                    None,
                    &[(Method::Ja4, "t13d1516h2_8daaf6152771_b186095e22b6")],
                    0,
                );
                e.workload.exe = Some("/usr/bin/curl".into());
                e
            })
            .collect();
        for chunk in events.chunks(50) {
            self.store.ingest(chunk).await.unwrap();
            self.wake.poke("fingerprint.events");
        }
        events
    }

    async fn position(&self, group: &str) -> GroupPosition {
        let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1000;
        self.store
            .bus_positions(now, 2_000_000)
            .await
            .unwrap()
            .into_iter()
            .find(|p| p.group == group)
            .unwrap_or_default()
    }

    /// Waits until `group` committed `n` items and has nothing left.
    async fn until_handled(&self, group: &str, n: i64) -> GroupPosition {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let p = self.position(group).await;
            if p.handled >= n && p.lag_items == 0 {
                return p;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{group} never caught up: {p:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn finish(self, tasks: Vec<tokio::task::JoinHandle<()>>) {
        let _ = self.shutdown.send(true);
        for t in tasks {
            t.await.unwrap();
        }
        let _ = self.store.close().await;
        self.iso.cleanup().await;
    }
}

fn exactly_once(r: &Recorder, events: &[FingerprintEvent]) {
    let seen = r.seen.lock().unwrap();
    assert_eq!(seen.len(), events.len(), "every event handled");
    for e in events {
        assert_eq!(seen.get(&e.id), Some(&1), "event {} handled once", e.id);
    }
}

async fn a_transient_failure_is_retried_and_succeeds(backend: Backend) {
    let f = Fixture::new(backend).await;
    let events = f.ingest(200, 7, "host-").await;
    let r = Arc::new(Recorder::default());
    // Two failures in a row: within max_attempts (3), so nothing is dead-lettered.
    r.fail_first.store(2, Ordering::Relaxed);
    let (task, m) = f.consumer("retrying", "m1", r.clone());
    let p = f.until_handled("retrying", 200).await;
    assert_eq!(p.handled, 200);
    assert_eq!(p.dead_letters, 0);
    assert_eq!(m.retries.load(Ordering::Relaxed), 2);
    exactly_once(&r, &events);
    f.finish(vec![task]).await;
}

async fn a_poison_row_is_dead_lettered_without_blocking_and_replays_from_the_api(backend: Backend) {
    // Through a whole control plane: the API lists and replays the dead letter.
    let t = TestApp::start(backend, "deadletter").await;
    let store = t.app.as_ref().unwrap().state.store.clone();
    let f = Fixture {
        iso: t.iso.clone(),
        store,
        wake: t.app.as_ref().unwrap().state.wakeups.clone(),
        shutdown: watch::channel(false).0,
    };
    let r = Arc::new(Recorder::default());
    *r.poison_host.lock().unwrap() = Some("poison0".into());
    let (task, m) = f.consumer("poisoned", "m1", r.clone());
    let mut events = f.ingest(300, 10, "host-").await;
    let poison = f.ingest(1, 1, "poison").await;
    events.extend(f.ingest(300, 10, "host-").await);
    // Every other event is handled: the poison row held up its partition only during retries.
    let p = f.until_handled("poisoned", 600).await;
    assert_eq!(p.handled, 600, "{p:?}");
    assert_eq!(p.dead_letters, 1, "{p:?}");
    exactly_once(&r, &events);
    assert!(m.dead_lettered.load(Ordering::Relaxed) >= 1);

    let (s, v) = t
        .call(
            "GET",
            "/api/bus/dead-letters?group=poisoned",
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{v}");
    let id = items[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(items[0]["error"], "poison (test)");
    assert_eq!(items[0]["items"], 1);
    let (s, v) = t
        .call(
            "GET",
            &format!("/api/bus/dead-letters/{id}"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["payload"][0]["id"], poison[0].id.to_string());
    // Bad ids and unknown ones are 4xx JSON.
    let (s, _) = t
        .call("GET", "/api/bus/dead-letters/nope", Some(&t.admin), None)
        .await;
    assert_eq!(s, 400);
    let (s, _) = t
        .call(
            "POST",
            &format!("/api/bus/dead-letters/{}/replay", uuid::Uuid::now_v7()),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, 404);

    // Fixed (the poison is no longer poison): the replay is handled and the letter is gone.
    *r.poison_host.lock().unwrap() = None;
    let (s, v) = t
        .call(
            "POST",
            &format!("/api/bus/dead-letters/{id}/replay"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let p = f.until_handled("poisoned", 601).await;
    assert_eq!(p.handled, 601);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while f.position("poisoned").await.dead_letters != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead letter never replayed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    events.extend(poison);
    exactly_once(&r, &events);
    let (s, v) = t
        .call("GET", "/api/bus/consumers", Some(&t.admin), None)
        .await;
    assert_eq!(s, 200, "{v}");
    let g = v
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == "poisoned")
        .unwrap();
    assert_eq!(g["handled"], 601, "{v}");

    let _ = f.shutdown.send(true);
    task.await.unwrap();
    t.finish().await;
}

async fn a_consumer_far_behind_loses_nothing_to_trimming(backend: Backend) {
    let f = Fixture::new(backend).await;
    // Both groups exist; only the fast one runs at first.
    f.store
        .bus_register("slow", "fingerprint.events")
        .await
        .unwrap();
    let fast = Arc::new(Recorder::default());
    let (t1, _) = f.consumer("fast", "m1", fast.clone());
    let events = f.ingest(2000, 13, "host-").await;
    f.until_handled("fast", 2000).await;
    // Trimming now may delete nothing "slow" has not committed: that is everything.
    f.store.bus_trim("fingerprint.events").await.unwrap();
    let slow = Arc::new(Recorder::default());
    let (t2, _) = f.consumer("slow", "m1", slow.clone());
    f.until_handled("slow", 2000).await;
    exactly_once(&fast, &events);
    exactly_once(&slow, &events);
    // Once both have committed everything, trimming empties the log.
    f.store.bus_trim("fingerprint.events").await.unwrap();
    for part in 0..16 {
        let rows = f
            .store
            .bus_read("fingerprint.events", part, Position::START, 10)
            .await
            .unwrap();
        assert!(
            rows.is_empty(),
            "partition {part} still holds {} rows",
            rows.len()
        );
    }
    f.finish(vec![t1, t2]).await;
}

/// PostgreSQL numbers rows without a lock, so a transaction that appended first (the older xid)
/// can commit after one that appended later. Its rows must not be skipped by a cursor that went
/// past the later transaction's: the consumer may not read the later rows while the older
/// transaction is open, and then handles every row once, the older transaction's first in each
/// partition. (SQLite has one writer: its transactions cannot overlap.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_late_commit_with_an_older_xid_is_not_skipped() {
    use hais_control_plane::bus::log::{outbox, partition_of, workload_key};
    use sqlx::Connection as _;

    let f = Fixture::new(Backend::Postgres).await;
    let r = Arc::new(Recorder::default());
    let (task, _) = f.consumer("late", "m1", r.clone());
    let events = |n: usize, tag: &str| -> Vec<FingerprintEvent> {
        (0..n)
            .map(|i| {
                let mut e = event(
                    "agent-1",
                    &format!("host-{}", i % 7),
                    None,
                    &[(Method::Ja4, "t13d1516h2_8daaf6152771_b186095e22b6")],
                    0,
                );
                e.workload.exe = Some(format!("/usr/bin/{tag}"));
                e.workload.user = Some("svc".into());
                e
            })
            .collect()
    };
    // The same hosts and executables in both, so their rows share partitions.
    let (older, newer) = (events(120, "curl"), events(80, "curl"));
    let schema = f.iso.schema.clone().unwrap();
    let connect = || async {
        let mut c = sqlx::PgConnection::connect(&common::pg_url())
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("SET search_path TO {schema}")))
            .execute(&mut c)
            .await
            .unwrap();
        c
    };
    let (mut a, mut b) = (connect().await, connect().await);
    // Appends `events` in a transaction left open; returns it and its id.
    async fn append_open<'c>(
        conn: &'c mut sqlx::PgConnection,
        events: &[FingerprintEvent],
    ) -> (sqlx::Transaction<'c, sqlx::Postgres>, i64) {
        let mut tx = conn.begin().await.unwrap();
        let rows = outbox::<FingerprintEvents>(events);
        store::bus::append::<sqlx::Postgres>(&mut *tx, &rows, store::now_us())
            .await
            .unwrap();
        let xid = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        (tx, xid)
    }
    // A appends first (its transaction gets the older id) and stays open; B appends later and
    // commits first.
    let (ta, xid_a) = append_open(&mut a, &older).await;
    let (tb, xid_b) = append_open(&mut b, &newer).await;
    assert!(xid_a < xid_b, "{xid_a} < {xid_b}");
    tb.commit().await.unwrap();

    // The consumer polls (and is woken) meanwhile: B's rows are committed but wait for A.
    for _ in 0..10 {
        f.wake.poke("fingerprint.events");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let p = f.position("late").await;
    assert_eq!(p.handled, 0, "read past an open older transaction: {p:?}");
    assert_eq!(p.lag_items, 80, "B is committed, A is not: {p:?}");
    assert!(r.seen.lock().unwrap().is_empty());

    ta.commit().await.unwrap();
    f.wake.poke("fingerprint.events");
    f.until_handled("late", 200).await;
    let all: Vec<FingerprintEvent> = older.iter().chain(&newer).cloned().collect();
    exactly_once(&r, &all);
    // Within each partition, A's rows (older xid) came before B's.
    {
        let order = r.order.lock().unwrap();
        let at = |id: &uuid::Uuid| order.iter().position(|x| x == id).unwrap();
        for part in 0..16 {
            let in_part = |e: &&FingerprintEvent| partition_of(&workload_key(e)) == part;
            let last_a = older.iter().filter(in_part).map(|e| at(&e.id)).max();
            let first_b = newer.iter().filter(in_part).map(|e| at(&e.id)).min();
            if let (Some(x), Some(y)) = (last_a, first_b) {
                assert!(x < y, "partition {part}: B's rows before A's");
            }
        }
    }
    f.finish(vec![task]).await;
}
