//! Synthetic events shared by the control plane's benchmarks (`store.rs`, `bus.rs`,
//! `retention.rs`), so that their figures are of the same data.
//!
//! The data is deterministic and shaped like a fleet: 200 agents each sending its own batches
//! of 1,000; per event a JA4 and a JA4S drawn from skewed distributions (a few values are very
//! common, most are rare; 20,000 JA4, 2,000 JA4S, 5,000 server names fleet-wide), a server name
//! on 80% of events, timestamps spread over the last 7 days; each event is attributed to one of
//! 20 executables of its host (the workload key the durable bus partitions by).

// Each benchmark is its own crate and uses part of this module.
#![allow(dead_code)]

use hais_shared::event::{Fingerprint, FingerprintEvent, Flow, Transport};
use hais_shared::fingerprint::Method;

pub const BATCH: usize = 1000;
pub const AGENTS: u64 = 200;
pub const JA4_VALUES: u64 = 20_000;
pub const JA4S_VALUES: u64 = 2_000;
pub const SNIS: u64 = 5_000;

/// xorshift64*: deterministic and dependency-free.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Skewed pick in 0..n: small indexes are much more frequent.
    pub fn skewed(&mut self, n: u64) -> u64 {
        ((self.unit().powi(3)) * n as f64) as u64
    }
}

pub fn ja4(i: u64) -> String {
    format!(
        "t13d{:02}{:02}h2_{:012x}_{:012x}",
        10 + i % 9,
        5 + i % 11,
        i.wrapping_mul(0x9e37_79b9),
        i
    )
}

pub fn ja4s(i: u64) -> String {
    format!("t1302{:02}_1301_{:012x}", i % 7, i)
}

/// How diverse each agent's traffic is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Each host has its own small repertoire (40 JA4, 20 JA4S, 100 server names) drawn from the
    /// fleet-wide skewed distributions: a host runs a few TLS stacks talking to a few services.
    Fleet,
    /// Every event draws from the fleet-wide distributions: a worst case for roll-up volume.
    Wide,
}

/// One agent's repertoire (Fleet profile).
struct Repertoire {
    ja4: Vec<u64>,
    ja4s: Vec<u64>,
    sni: Vec<u64>,
}

fn repertoire(agent: u64) -> Repertoire {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15 ^ (agent + 1).wrapping_mul(0x1000_0000_01b3));
    Repertoire {
        ja4: (0..40).map(|_| r.skewed(JA4_VALUES)).collect(),
        ja4s: (0..20).map(|_| r.skewed(JA4S_VALUES)).collect(),
        sni: (0..100).map(|_| r.skewed(SNIS)).collect(),
    }
}

/// An event of agent `agent` at `ts` (its id a UUIDv7 of that time), without fingerprints.
pub fn event(agent: u64, src_port: u16, ts: time::OffsetDateTime) -> FingerprintEvent {
    let mut e = FingerprintEvent::new(
        format!("agent-{agent:03}"),
        format!("host-{agent:03}.prod"),
        Flow {
            src_ip: "10.0.0.1".parse().unwrap(),
            src_port,
            dst_ip: "192.0.2.1".parse().unwrap(),
            dst_port: 443,
            transport: Transport::Tcp,
        },
    );
    e.timestamp = ts;
    e.id = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        ts.unix_timestamp() as u64,
        ts.nanosecond(),
    ));
    e
}

/// `total` events in batches of [`BATCH`], each batch one agent's.
pub fn make_batches(total: usize, seed: u64, profile: Profile) -> Vec<Vec<FingerprintEvent>> {
    let mut rng = Rng(seed | 1);
    let reps: Vec<Repertoire> = (0..AGENTS).map(repertoire).collect();
    let now = time::OffsetDateTime::now_utc();
    let span_secs = 7 * 86_400u64;
    let mut out = Vec::with_capacity(total / BATCH + 1);
    let mut made = 0;
    while made < total {
        let n = BATCH.min(total - made);
        let agent = rng.next() % AGENTS;
        let rep = &reps[agent as usize];
        let mut batch = Vec::with_capacity(n);
        // Each batch covers a short stretch of time, like a real agent flushing its spool.
        let base = rng.next() % span_secs;
        for k in 0..n {
            let ts = now - time::Duration::seconds((base + (k as u64 % 60)) as i64);
            let mut e = event(agent, 40000 + (k as u16 % 20000), ts);
            let (j, js, sni) = match profile {
                Profile::Fleet => (
                    rep.ja4[rng.skewed(rep.ja4.len() as u64) as usize],
                    rep.ja4s[rng.skewed(rep.ja4s.len() as u64) as usize],
                    rep.sni[rng.skewed(rep.sni.len() as u64) as usize],
                ),
                Profile::Wide => (
                    rng.skewed(JA4_VALUES),
                    rng.skewed(JA4S_VALUES),
                    rng.skewed(SNIS),
                ),
            };
            if rng.unit() < 0.8 {
                e.server_name = Some(format!("svc-{sni}.example.com"));
            }
            e.workload.exe = Some(format!("/usr/bin/app{}", k % 20));
            e.workload.user = Some("svc".into());
            e.fingerprints = vec![
                Fingerprint {
                    method: Method::Ja4,
                    value: ja4(j),
                },
                Fingerprint {
                    method: Method::Ja4s,
                    value: ja4s(js),
                },
            ];
            batch.push(e);
        }
        made += n;
        out.push(batch);
    }
    out
}

/// A fresh database for one benchmark run: a SQLite file in a temporary directory, or a schema
/// of its own on the PostgreSQL server of `HAIS_TEST_DATABASE_URL` (default the local one).
pub struct BenchDb {
    pub backend: String,
    /// What `store::open` takes.
    pub url: String,
    /// The PostgreSQL schema (unused on SQLite).
    pub schema: String,
    /// The PostgreSQL server, for statements outside the store (ANALYZE, DROP SCHEMA).
    pub server: String,
    dir: std::path::PathBuf,
}

impl BenchDb {
    /// `tag` names the run in the directory and schema names (`hais_bench_<tag>_…`).
    pub fn new(backend: &str, tag: &str) -> BenchDb {
        let dir = std::env::temp_dir().join(format!("hais-bench-{tag}-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let server = std::env::var("HAIS_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let schema = format!(
            "hais_bench_{tag}_{}",
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        );
        let url = match backend {
            "sqlite" => format!("sqlite://{}", dir.join("hais.db").display()),
            _ => server.clone(),
        };
        BenchDb {
            backend: backend.to_owned(),
            url,
            schema,
            server,
            dir,
        }
    }

    pub fn is_sqlite(&self) -> bool {
        self.backend == "sqlite"
    }

    /// Opens the store (applying migrations) with a pool of 8.
    pub async fn open(&self) -> std::sync::Arc<dyn hais_control_plane::store::Store> {
        let schema = (!self.is_sqlite()).then_some(self.schema.as_str());
        hais_control_plane::store::open(&self.url, None, schema, 8)
            .await
            .expect("store")
    }

    /// Runs each statement on the PostgreSQL server, on its own (so `VACUUM` may be one), with
    /// the run's schema first in the search path.
    pub async fn pg_execute(&self, statements: &[&str]) {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&self.server).await.unwrap();
        let set = format!("SET search_path TO {}", self.schema);
        for sql in std::iter::once(set.as_str()).chain(statements.iter().copied()) {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&mut c)
                .await
                .unwrap();
        }
    }

    /// Removes the database, unless `HAIS_BENCH_KEEP` is set (then says where it is, e.g. to
    /// `EXPLAIN` by hand).
    pub async fn remove(self) {
        if std::env::var_os("HAIS_BENCH_KEEP").is_some() {
            let kept = if self.is_sqlite() {
                &self.url
            } else {
                &self.schema
            };
            println!("{}: kept {kept}", self.backend);
            return;
        }
        if !self.is_sqlite() {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&self.server).await.unwrap();
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                self.schema
            )))
            .execute(&mut c)
            .await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A numeric knob from the environment, or its default.
pub fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `p` quantile (0..=1) of sorted durations.
pub fn percentile(sorted: &[std::time::Duration], p: f64) -> std::time::Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs `run` once per backend of `HAIS_BENCH_BACKENDS` (comma separated; `default` without
/// it), one after the other, on a multi-threaded runtime.
pub fn for_each_backend<F: std::future::Future<Output = ()>>(
    default: &str,
    run: impl Fn(String) -> F,
) {
    let backends = std::env::var("HAIS_BENCH_BACKENDS").unwrap_or_else(|_| default.into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for b in backends.split(',').map(str::trim).filter(|b| !b.is_empty()) {
        rt.block_on(run(b.to_owned()));
    }
}

/// The ja4 service's `search` consumer group (`services::ja4::search`), run over a bench's
/// store as the service runs it, so that filtered event search sees what the bench ingests.
pub struct SearchIndexer {
    store: std::sync::Arc<dyn hais_control_plane::store::Store>,
    wake: std::sync::Arc<hais_control_plane::bus::durable::Wakeups>,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl SearchIndexer {
    pub async fn start(store: std::sync::Arc<dyn hais_control_plane::store::Store>) -> Self {
        use hais_control_plane::bus::durable::{
            Consumer, ConsumerMetrics, ConsumerOptions, Wakeups,
        };
        use hais_control_plane::bus::log::FingerprintEvents;
        use hais_control_plane::services::ja4::search;
        let wake = std::sync::Arc::new(Wakeups::default());
        let (shutdown, rx) = tokio::sync::watch::channel(false);
        let task = Consumer::<FingerprintEvents>::new(
            store.clone(),
            wake.clone(),
            search::GROUP,
            "bench",
            ConsumerOptions {
                poll_interval: std::time::Duration::from_millis(50),
                ..Default::default()
            },
            std::sync::Arc::new(search::SearchIndexer::new(store.clone())),
            std::sync::Arc::new(ConsumerMetrics::default()),
        )
        .spawn(rx);
        SearchIndexer {
            store,
            wake,
            shutdown,
            task,
        }
    }

    /// Tells the indexer that events were stored (the live bus does this in the service).
    pub fn poke(&self) {
        self.wake.poke("fingerprint.events");
    }

    /// Items stored but not indexed yet.
    pub async fn lag(&self) -> i64 {
        let positions = self
            .store
            .bus_positions(hais_control_plane::store::now_us(), 60_000_000)
            .await
            .expect("bus positions");
        positions
            .iter()
            .find(|p| p.group == hais_control_plane::services::ja4::search::GROUP)
            .map_or(i64::MAX, |p| p.lag_items)
    }

    /// Waits until every stored event is indexed.
    pub async fn caught_up(&self) {
        while self.lag().await > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}
