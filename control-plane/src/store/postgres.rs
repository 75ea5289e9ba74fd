//! PostgreSQL store: the production backend.
//!
//! Events go in with `COPY` (replays: `INSERT … SELECT FROM UNNEST(arrays) ON CONFLICT DO
//! NOTHING RETURNING id`), so a group of batches costs a handful of statements, not thousands.
//! Only new events feed the roll-up deltas, committed with them as one `rollup_pending` record
//! and folded later by the roll-up stage ([`super::fold`]).
//!
//! Monthly `events` partitions are created on demand, outside the ingest transaction and under an
//! advisory lock, so concurrent writers (in this process or others) never race on DDL.

use std::collections::{BTreeSet, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hais_shared::event::FingerprintEvent;
use hais_shared::fingerprint::Method;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, Postgres};
use time::{Date, Month, OffsetDateTime, Time};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::fold::{FoldBackend, Stage, decode_all, merge_all, take_count};
use super::query::FingerprintQuery;
use super::reads::Reads;
use super::rollup::{self, BatchDeltas, Rollups};
use super::{
    FingerprintDetail, FingerprintSummary, IngestOutcome, Page, RetentionOutcome, RollupBacklog,
    Store, StoreError, StoreFuture, StoreOptions, TopEntry, now_us, to_us, uuid_floor_ms, uuid_ms,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Advisory lock key serialising partition DDL across processes ("HAISPART").
const PARTITION_LOCK: i64 = 0x4841_4953_5041_5254;
/// Advisory lock key serialising roll-up folds (and retention's roll-up deletes) across
/// processes ("HAISFOLD").
const FOLD_LOCK: i64 = 0x4841_4953_464f_4c44;

/// Most events one group commit writes (many ingest calls merged into one transaction).
const MAX_GROUP_EVENTS: usize = 20_000;
/// Ingest calls that may wait for the writers before callers are slowed down.
const WRITER_QUEUE: usize = 64;
/// Writer tasks. Two let one group's COPY overlap the previous group's commit (PostgreSQL runs
/// each on its own backend). Writers only append, so they never wait on each other's rows.
const WRITERS: usize = 2;

/// Months (year * 12 + month0) whose partition is known to exist.
type Partitions = Arc<Mutex<HashSet<i32>>>;

/// One ingest call waiting for the writer.
struct Job {
    events: Vec<FingerprintEvent>,
    reply: oneshot::Sender<Result<IngestOutcome, StoreError>>,
}

/// The PostgreSQL store.
///
/// Ingest goes through writer tasks doing *group commit*: a writer takes every ingest call
/// queued while the previous transaction ran, writes all their events in one transaction (COPY
/// when no event is a replay) with one record of their merged roll-up deltas, and commits once.
/// Callers get their answer only after the commit, so an acknowledged event is durable; roll-up
/// reads fold pending deltas first, so read-your-writes holds.
#[derive(Debug)]
pub struct PgStore {
    pool: PgPool,
    partitions: Partitions,
    writer: Mutex<Option<mpsc::Sender<Job>>>,
    writer_tasks: Mutex<Vec<JoinHandle<()>>>,
    rollups: Stage,
}

/// The roll-up stage's view of PostgreSQL.
#[derive(Debug)]
struct PgFold {
    pool: PgPool,
}

/// A calendar month, as `year * 12 + (month - 1)`.
fn month_key(ms: i64) -> i32 {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    t.year() * 12 + (u8::from(t.month()) as i32 - 1)
}

/// Milliseconds since the epoch at the start of a month key.
fn month_start_ms(key: i32) -> i64 {
    let year = key.div_euclid(12);
    let month = Month::try_from((key.rem_euclid(12) + 1) as u8).unwrap_or(Month::January);
    let date = Date::from_calendar_date(year, month, 1).unwrap_or(Date::MIN);
    (date
        .with_time(Time::MIDNIGHT)
        .assume_utc()
        .unix_timestamp_nanos()
        / 1_000_000) as i64
}

fn partition_name(key: i32) -> String {
    format!(
        "events_p{:04}{:02}",
        key.div_euclid(12),
        key.rem_euclid(12) + 1
    )
}

/// Parses `events_pYYYYMM` back into a month key.
fn parse_partition_name(name: &str) -> Option<i32> {
    let digits = name.strip_prefix("events_p")?;
    if digits.len() != 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i32 = digits[..4].parse().ok()?;
    let month: i32 = digits[4..].parse().ok()?;
    (1..=12).contains(&month).then_some(year * 12 + month - 1)
}

/// Whether an error is "no partition found for row" (a partition dropped by another process).
fn is_missing_partition(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23514"))
}

impl PgStore {
    /// Connects, creates `schema` if given (and uses it for everything), and migrates.
    pub async fn open(
        url: &str,
        schema: Option<&str>,
        max_connections: u32,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        let mut opts = PgConnectOptions::from_str(url)?;
        if let Some(schema) = schema {
            if !crate::config::is_identifier(schema) {
                return Err(StoreError::Conflict(format!(
                    "invalid schema name {schema:?}"
                )));
            }
            let mut conn = sqlx::PgConnection::connect_with(&opts).await?;
            sqlx::query(AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS {schema}"
            )))
            .execute(&mut conn)
            .await?;
            conn.close().await?;
            opts = opts.options([("search_path", schema)]);
        }
        let server_port = opts.get_port();
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(super::pg_nodelay::after_connect(conn, server_port))
            })
            .connect_with(opts)
            .await?;
        MIGRATOR.run(&pool).await?;
        let partitions: Partitions = Arc::default();
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let tasks = (0..WRITERS)
            .map(|_| tokio::spawn(run_writer(pool.clone(), partitions.clone(), rx.clone())))
            .collect();
        let rollups = Stage::start(
            Arc::new(PgFold { pool: pool.clone() }),
            options.rollup_interval,
        );
        Ok(PgStore {
            pool,
            partitions,
            writer: Mutex::new(Some(tx)),
            writer_tasks: Mutex::new(tasks),
            rollups,
        })
    }

    /// The pool, for tests and benchmarks that need raw access.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn ingest_inner(&self, events: &[FingerprintEvent]) -> Result<IngestOutcome, StoreError> {
        if events.is_empty() {
            return Ok(IngestOutcome::default());
        }
        let sender = self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| StoreError::Unavailable("store is closed".into()))?;
        let (reply, answer) = oneshot::channel();
        sender
            .send(Job {
                events: events.to_vec(),
                reply,
            })
            .await
            .map_err(|_| StoreError::Unavailable("ingest writer stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("ingest writer stopped".into()))?
    }
}

/// The group-commit writer loop; ends when every sender is gone (store closed), after
/// finishing what was queued.
async fn run_writer(
    pool: PgPool,
    partitions: Partitions,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
) {
    loop {
        // Hold the receiver only while taking a group, so the other writer can take the next.
        let jobs = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            let mut n = first.events.len();
            let mut jobs = vec![first];
            while n < MAX_GROUP_EVENTS {
                match rx.try_recv() {
                    Ok(j) => {
                        n += j.events.len();
                        jobs.push(j);
                    }
                    Err(_) => break,
                }
            }
            jobs
        };
        let all: Vec<&FingerprintEvent> = jobs.iter().flat_map(|j| j.events.iter()).collect();
        let result = write_group(&pool, &partitions, &all).await;
        match result {
            Ok(new_flags) => {
                let mut flags = new_flags.into_iter();
                for job in jobs {
                    let mut out = IngestOutcome::default();
                    for i in 0..job.events.len() {
                        if flags.next().unwrap_or(false) {
                            out.stored.push(i);
                        } else {
                            out.duplicates += 1;
                        }
                    }
                    let _ = job.reply.send(Ok(out));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, events = all.len(), "group commit failed");
                let msg = e.to_string();
                let unavailable = matches!(e, StoreError::Unavailable(_));
                for job in jobs {
                    let err = if unavailable {
                        StoreError::Unavailable(msg.clone())
                    } else {
                        StoreError::Write(msg.clone())
                    };
                    let _ = job.reply.send(Err(err));
                }
            }
        }
    }
}

/// Writes a group of events and their roll-up deltas; returns, per event, whether it was new.
/// Retries once when a partition it relied on was dropped meanwhile by another process.
async fn write_group(
    pool: &PgPool,
    partitions: &Partitions,
    events: &[&FingerprintEvent],
) -> Result<Vec<bool>, StoreError> {
    ensure_partitions(pool, partitions, events).await?;
    match write_group_tx(pool, events).await {
        Err(StoreError::Database(e)) if is_missing_partition(&e) => {
            partitions.lock().unwrap_or_else(|p| p.into_inner()).clear();
            ensure_partitions(pool, partitions, events).await?;
            write_group_tx(pool, events).await
        }
        other => other,
    }
}

/// Makes sure a partition exists for every month the ids fall in.
async fn ensure_partitions(
    pool: &PgPool,
    partitions: &Partitions,
    events: &[&FingerprintEvent],
) -> Result<(), StoreError> {
    let wanted: BTreeSet<i32> = events.iter().map(|e| month_key(uuid_ms(&e.id))).collect();
    let missing: Vec<i32> = {
        let known = partitions.lock().unwrap_or_else(|p| p.into_inner());
        wanted.into_iter().filter(|k| !known.contains(k)).collect()
    };
    if missing.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(PARTITION_LOCK)
        .execute(&mut *tx)
        .await?;
    for key in &missing {
        let lo = uuid_floor_ms(month_start_ms(*key));
        let hi = uuid_floor_ms(month_start_ms(key + 1));
        // Only computed numbers and UUIDs are spliced in: nothing from the client.
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF events FOR VALUES FROM ('{lo}') TO ('{hi}')",
            partition_name(*key)
        );
        sqlx::query(AssertSqlSafe(ddl)).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    partitions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(missing);
    Ok(())
}

/// Start of a binary COPY stream: signature, flags (none), header extension length (0).
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// End of a binary COPY stream.
const COPY_TRAILER: &[u8] = &(-1i16).to_be_bytes();

/// One binary COPY field: length, then the value in the type's binary form.
fn put_field(out: &mut Vec<u8>, value: &[u8]) {
    out.extend_from_slice(&(value.len() as i32).to_be_bytes());
    out.extend_from_slice(value);
}

fn put_null(out: &mut Vec<u8>) {
    out.extend_from_slice(&(-1i32).to_be_bytes());
}

/// A text field written by `write` straight into the stream (length patched in afterwards).
fn put_with(
    out: &mut Vec<u8>,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    write(out)?;
    let len = (out.len() - at - 4) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

fn json_into(out: &mut Vec<u8>, v: &impl serde::Serialize) -> Result<(), StoreError> {
    serde_json::to_writer(out, v).map_err(|x| StoreError::Corrupt(x.to_string()))
}

/// One event as a binary COPY tuple (columns as in [`EVENT_COLUMNS`]). Binary spares both
/// sides the text conversions (UUIDs, integers) and escaping.
fn copy_row(out: &mut Vec<u8>, e: &FingerprintEvent, received: i64) -> Result<(), StoreError> {
    use std::io::Write as _;
    let text = |out: &mut Vec<u8>, v: &dyn std::fmt::Display| {
        write!(out, "{v}").map_err(|x| StoreError::Corrupt(x.to_string()))
    };
    out.extend_from_slice(&13i16.to_be_bytes());
    put_field(out, e.id.as_bytes());
    put_field(out, &to_us(e.timestamp).to_be_bytes());
    put_field(out, e.agent_id.as_bytes());
    put_field(out, e.host.as_bytes());
    let f = &e.flow;
    put_with(out, |o| text(o, &f.src_ip))?;
    put_field(out, &i32::from(f.src_port).to_be_bytes());
    put_with(out, |o| text(o, &f.dst_ip))?;
    put_field(out, &i32::from(f.dst_port).to_be_bytes());
    put_field(out, f.transport.as_str().as_bytes());
    match &e.server_name {
        Some(sni) => put_field(out, sni.as_bytes()),
        None => put_null(out),
    }
    put_with(out, |o| json_into(o, &e.fingerprints))?;
    if e.workload.is_empty() {
        put_null(out);
    } else {
        put_with(out, |o| json_into(o, &e.workload))?;
    }
    put_field(out, &received.to_be_bytes());
    Ok(())
}

const EVENT_COLUMNS: &str = "id, ts_us, agent_id, host, src_ip, src_port, dst_ip, dst_port, \
                             transport, server_name, fingerprints, workload, received_us";

/// The group's transaction. Events go in with COPY (the fast path) inside a savepoint; if any
/// is a replay the COPY fails on the primary key, and the group is written again with
/// `INSERT … ON CONFLICT DO NOTHING RETURNING id`, which tells exactly which ones were new.
async fn write_group_tx(
    pool: &PgPool,
    events: &[&FingerprintEvent],
) -> Result<Vec<bool>, StoreError> {
    let received = now_us();
    let mut tx = pool.begin().await?;
    let mut data = Vec::with_capacity(events.len() * 320);
    data.extend_from_slice(COPY_HEADER);
    for e in events {
        copy_row(&mut data, e, received)?;
    }
    data.extend_from_slice(COPY_TRAILER);
    sqlx::query("SAVEPOINT copy_events")
        .execute(&mut *tx)
        .await?;
    let copied = {
        let stmt = format!("COPY events ({EVENT_COLUMNS}) FROM STDIN (FORMAT binary)");
        match tx.copy_in_raw(&stmt).await {
            Ok(mut copy) => match copy.send(data).await {
                Ok(_) => copy.finish().await,
                Err(e) => {
                    let _ = copy.abort("send failed").await;
                    Err(e)
                }
            },
            Err(e) => Err(e),
        }
    };
    let flags = match copied {
        Ok(_) => vec![true; events.len()],
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("23505") => {
            sqlx::query("ROLLBACK TO SAVEPOINT copy_events")
                .execute(&mut *tx)
                .await?;
            insert_returning(&mut tx, events, received).await?
        }
        Err(e) => return Err(e.into()),
    };
    let new = events
        .iter()
        .zip(&flags)
        .filter(|(_, new)| **new)
        .map(|(e, _)| *e);
    let r = BatchDeltas::from_events(new.clone());
    // The new events go on the durable bus in this transaction (the outbox). Last before the
    // roll-up record and the commit: appending locks the topic's head row until commit.
    let outbox = crate::bus::log::outbox::<crate::bus::log::FingerprintEvents>(new)
        .map_err(|err| StoreError::Corrupt(err.to_string()))?;
    super::bus::append::<sqlx::Postgres>(&mut *tx, &outbox, received).await?;
    if !r.is_empty() {
        let n = flags.iter().filter(|f| **f).count() as i64;
        sqlx::query("INSERT INTO rollup_pending (events, created_us, deltas) VALUES ($1, $2, $3)")
            .bind(n)
            .bind(received)
            .bind(r.encode())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(flags)
}

impl FoldBackend for PgFold {
    fn newest_pending(&self) -> StoreFuture<'_, Option<i64>> {
        Box::pin(async move {
            Ok(sqlx::query_scalar("SELECT max(id) FROM rollup_pending")
                .fetch_one(&self.pool)
                .await?)
        })
    }

    fn pending(&self) -> StoreFuture<'_, RollupBacklog> {
        Box::pin(async move {
            let (groups, events): (i64, i64) = sqlx::query_as(
                "SELECT count(*), coalesce(sum(events), 0)::int8 FROM rollup_pending",
            )
            .fetch_one(&self.pool)
            .await?;
            Ok(RollupBacklog {
                groups: groups as u64,
                events: events as u64,
            })
        })
    }

    fn fold_once(&self, upto: i64, max_groups: u32) -> StoreFuture<'_, RollupBacklog> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(FOLD_LOCK)
                .execute(&mut *tx)
                .await?;
            // A fold need not wait for its WAL flush: if a crash loses the commit, it loses the
            // deletes of the pending rows with it (one atomic WAL record stream), and they are
            // folded again. Exactly once either way.
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await?;
            let rows: Vec<(i64, i64)> = sqlx::query_as(
                "SELECT id, events FROM rollup_pending WHERE id <= $1 ORDER BY id LIMIT $2",
            )
            .bind(upto)
            .bind(i64::from(max_groups))
            .fetch_all(&mut *tx)
            .await?;
            let Some(last) = rows[..take_count(&rows)].last().map(|r| r.0) else {
                return Ok(RollupBacklog::default());
            };
            // Whatever this deletes is what this folds (a record with a smaller id committed
            // meanwhile included).
            let taken: Vec<(i64, Vec<u8>)> = sqlx::query_as(
                "DELETE FROM rollup_pending WHERE id <= $1 RETURNING events, deltas",
            )
            .bind(last)
            .fetch_all(&mut *tx)
            .await?;
            let (decoded, covered) = decode_all(&taken)?;
            write_rollups(&mut tx, &merge_all(&decoded)).await?;
            tx.commit().await?;
            Ok(covered)
        })
    }
}

/// The slow path: inserts what is new and says, per event, whether it was.
async fn insert_returning(
    tx: &mut sqlx::Transaction<'static, Postgres>,
    events: &[&FingerprintEvent],
    received: i64,
) -> Result<Vec<bool>, StoreError> {
    let n = events.len();
    let mut ids = Vec::with_capacity(n);
    let mut ts = Vec::with_capacity(n);
    let mut agents = Vec::with_capacity(n);
    let mut hosts = Vec::with_capacity(n);
    let mut src_ips = Vec::with_capacity(n);
    let mut src_ports = Vec::with_capacity(n);
    let mut dst_ips = Vec::with_capacity(n);
    let mut dst_ports = Vec::with_capacity(n);
    let mut transports = Vec::with_capacity(n);
    let mut snis: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut fps = Vec::with_capacity(n);
    let mut workloads: Vec<Option<String>> = Vec::with_capacity(n);
    for e in events {
        ids.push(e.id);
        ts.push(to_us(e.timestamp));
        agents.push(e.agent_id.as_str());
        hosts.push(e.host.as_str());
        src_ips.push(e.flow.src_ip.to_string());
        src_ports.push(i32::from(e.flow.src_port));
        dst_ips.push(e.flow.dst_ip.to_string());
        dst_ports.push(i32::from(e.flow.dst_port));
        transports.push(e.flow.transport.as_str());
        snis.push(e.server_name.as_deref());
        fps.push(
            serde_json::to_string(&e.fingerprints)
                .map_err(|err| StoreError::Corrupt(err.to_string()))?,
        );
        workloads.push(if e.workload.is_empty() {
            None
        } else {
            Some(
                serde_json::to_string(&e.workload)
                    .map_err(|err| StoreError::Corrupt(err.to_string()))?,
            )
        });
    }
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO events (id, ts_us, agent_id, host, src_ip, src_port, dst_ip, dst_port, \
         transport, server_name, fingerprints, workload, received_us) \
         SELECT u.id, u.ts, u.agent, u.host, u.sip, u.sport, u.dip, u.dport, u.tr, u.sni, \
                u.fps, u.wl, $13 \
         FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::int4[], \
                     $7::text[], $8::int4[], $9::text[], $10::text[], $11::text[], $12::text[]) \
              AS u(id, ts, agent, host, sip, sport, dip, dport, tr, sni, fps, wl) \
         ON CONFLICT (id) DO NOTHING RETURNING id",
    )
    .bind(&ids)
    .bind(&ts)
    .bind(&agents)
    .bind(&hosts)
    .bind(&src_ips)
    .bind(&src_ports)
    .bind(&dst_ips)
    .bind(&dst_ports)
    .bind(&transports)
    .bind(&snis)
    .bind(&fps)
    .bind(&workloads)
    .bind(received)
    .fetch_all(&mut **tx)
    .await?;
    let mut new_ids: HashSet<Uuid> = inserted.into_iter().collect();
    // `remove` makes an id repeated inside the group count as new only once.
    Ok(events.iter().map(|e| new_ids.remove(&e.id)).collect())
}

/// Upserts merged roll-up deltas, one statement per table.
async fn write_rollups(
    tx: &mut sqlx::Transaction<'static, Postgres>,
    r: &Rollups<'_>,
) -> Result<(), StoreError> {
    let n = r.fingerprints.len();
    let (mut m, mut v, mut a, mut b, mut c) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut first, mut last, mut count) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for ((method, value), s) in &r.fingerprints {
        let [pa, pb, pc] = rollup::parts(value);
        m.push(*method);
        v.push(*value);
        a.push(pa);
        b.push(pb);
        c.push(pc);
        first.push(s.first_us);
        last.push(s.last_us);
        count.push(s.count);
    }
    sqlx::query(
        "INSERT INTO fingerprints AS f (method, value, part_a, part_b, part_c, first_seen_us, \
         last_seen_us, count) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                              $6::int8[], $7::int8[], $8::int8[]) \
         ON CONFLICT (method, value) DO UPDATE SET \
         first_seen_us = LEAST(f.first_seen_us, EXCLUDED.first_seen_us), \
         last_seen_us = GREATEST(f.last_seen_us, EXCLUDED.last_seen_us), \
         count = f.count + EXCLUDED.count",
    )
    .bind(&m)
    .bind(&v)
    .bind(&a)
    .bind(&b)
    .bind(&c)
    .bind(&first)
    .bind(&last)
    .bind(&count)
    .execute(&mut **tx)
    .await?;

    let n = r.dims.len();
    let (mut dim, mut dv, mut m, mut v) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut first, mut last, mut count) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for ((d, dval, method, value), s) in &r.dims {
        dim.push(*d);
        dv.push(*dval);
        m.push(*method);
        v.push(*value);
        first.push(s.first_us);
        last.push(s.last_us);
        count.push(s.count);
    }
    sqlx::query(
        "INSERT INTO fingerprint_dims AS d (dim, dim_value, method, value, first_seen_us, \
         last_seen_us, count) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], \
                              $6::int8[], $7::int8[]) \
         ON CONFLICT (dim, dim_value, method, value) DO UPDATE SET \
         first_seen_us = LEAST(d.first_seen_us, EXCLUDED.first_seen_us), \
         last_seen_us = GREATEST(d.last_seen_us, EXCLUDED.last_seen_us), \
         count = d.count + EXCLUDED.count",
    )
    .bind(&dim)
    .bind(&dv)
    .bind(&m)
    .bind(&v)
    .bind(&first)
    .bind(&last)
    .bind(&count)
    .execute(&mut **tx)
    .await?;

    let n = r.hourly.len();
    let (mut hour, mut m, mut v, mut count) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for ((h, method, value), k) in &r.hourly {
        hour.push(*h);
        m.push(*method);
        v.push(*value);
        count.push(*k);
    }
    sqlx::query(
        "INSERT INTO fingerprint_hourly AS h (hour_us, method, value, count) \
         SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::int8[]) \
         ON CONFLICT (hour_us, method, value) DO UPDATE SET count = h.count + EXCLUDED.count",
    )
    .bind(&hour)
    .bind(&m)
    .bind(&v)
    .bind(&count)
    .execute(&mut **tx)
    .await?;
    // Per-identity roll-ups (identity service): store/identity.rs.
    super::identity::write_rollups::<Postgres>(&mut **tx, r).await?;
    Ok(())
}

impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        })
    }

    fn ingest<'a>(&'a self, events: &'a [FingerprintEvent]) -> StoreFuture<'a, IngestOutcome> {
        Box::pin(self.ingest_inner(events))
    }

    fn settle_rollups(&self) -> StoreFuture<'_, ()> {
        Box::pin(self.rollups.settle())
    }

    fn fold_rollups(&self, max_groups: u32) -> StoreFuture<'_, RollupBacklog> {
        Box::pin(self.rollups.fold(max_groups))
    }

    fn pending_rollups(&self) -> StoreFuture<'_, RollupBacklog> {
        Box::pin(self.rollups.pending())
    }

    fn search<'a>(&'a self, q: &'a FingerprintQuery) -> StoreFuture<'a, Page<FingerprintSummary>> {
        Box::pin(async move {
            self.rollups.settle().await?;
            Reads(&self.pool).search(q).await
        })
    }

    fn detail<'a>(
        &'a self,
        method: Method,
        value: &'a str,
    ) -> StoreFuture<'a, Option<FingerprintDetail>> {
        Box::pin(async move {
            self.rollups.settle().await?;
            Reads(&self.pool).detail(method, value).await
        })
    }

    fn top(
        &self,
        since_us: i64,
        method: Option<Method>,
        limit: u32,
    ) -> StoreFuture<'_, Vec<TopEntry>> {
        Box::pin(async move {
            self.rollups.settle().await?;
            Reads(&self.pool).top(since_us, method, limit).await
        })
    }

    fn retain(&self, cutoff_us: i64) -> StoreFuture<'_, RetentionOutcome> {
        Box::pin(async move {
            let cutoff_ms = cutoff_us.div_euclid(1000);
            let mut out = RetentionOutcome::default();
            let names: Vec<String> = sqlx::query_scalar(
                "SELECT c.relname::text FROM pg_inherits i \
                 JOIN pg_class c ON c.oid = i.inhrelid \
                 JOIN pg_class p ON p.oid = i.inhparent \
                 JOIN pg_namespace n ON n.oid = p.relnamespace \
                 WHERE p.relname = 'events' AND n.nspname = current_schema()",
            )
            .fetch_all(&self.pool)
            .await?;
            for name in names {
                let Some(key) = parse_partition_name(&name) else {
                    continue;
                };
                if month_start_ms(key + 1) <= cutoff_ms {
                    let rows: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
                        "SELECT count(*) FROM {}",
                        partition_name(key)
                    )))
                    .fetch_one(&self.pool)
                    .await?;
                    let mut tx = self.pool.begin().await?;
                    sqlx::query("SELECT pg_advisory_xact_lock($1)")
                        .bind(PARTITION_LOCK)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(AssertSqlSafe(format!(
                        "DROP TABLE IF EXISTS {}",
                        partition_name(key)
                    )))
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    self.partitions
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&key);
                    out.partitions_dropped += 1;
                    out.events_deleted += rows as u64;
                }
            }
            out.events_deleted += sqlx::query("DELETE FROM events WHERE id < $1")
                .bind(uuid_floor_ms(cutoff_ms))
                .execute(&self.pool)
                .await?
                .rows_affected();
            // Roll-ups of events stored before now are folded first, so none of them comes back
            // after the cut; the deletes run under the fold lock, which orders them with folds.
            self.rollups.settle().await?;
            out.fingerprints_deleted = self
                .rollups
                .exclusive(async {
                    let mut tx = self.pool.begin().await?;
                    sqlx::query("SELECT pg_advisory_xact_lock($1)")
                        .bind(FOLD_LOCK)
                        .execute(&mut *tx)
                        .await?;
                    let n = sqlx::query("DELETE FROM fingerprints WHERE last_seen_us < $1")
                        .bind(cutoff_us)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    sqlx::query("DELETE FROM fingerprint_dims WHERE last_seen_us < $1")
                        .bind(cutoff_us)
                        .execute(&mut *tx)
                        .await?;
                    for sql in super::identity::RETAIN_SQL {
                        sqlx::query(sql).bind(cutoff_us).execute(&mut *tx).await?;
                    }
                    sqlx::query("DELETE FROM fingerprint_hourly WHERE hour_us < $1")
                        .bind(cutoff_us.div_euclid(rollup::HOUR_US) * rollup::HOUR_US)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(n)
                })
                .await?;
            Ok(out)
        })
    }

    fn count_events(&self) -> StoreFuture<'_, i64> {
        Box::pin(async move {
            Ok(sqlx::query_scalar("SELECT count(*) FROM events")
                .fetch_one(&self.pool)
                .await?)
        })
    }

    fn setting_or_init<'a>(&'a self, key: &'a str, proposed: &'a str) -> StoreFuture<'a, String> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            )
            .bind(key)
            .bind(proposed)
            .execute(&self.pool)
            .await?;
            Ok(
                sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
                    .bind(key)
                    .fetch_one(&self.pool)
                    .await?,
            )
        })
    }

    fn close(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            // Dropping the sender lets the writer finish the queued jobs and end.
            drop(self.writer.lock().unwrap_or_else(|p| p.into_inner()).take());
            let tasks =
                std::mem::take(&mut *self.writer_tasks.lock().unwrap_or_else(|p| p.into_inner()));
            for t in tasks {
                let _ = t.await;
            }
            let folded = self.rollups.stop().await;
            self.pool.close().await;
            folded?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_keys_and_names() {
        // 2026-11-28T00:00:00Z
        let ms = 1_795_824_000_000;
        let key = month_key(ms);
        assert_eq!(partition_name(key), "events_p202611");
        assert_eq!(parse_partition_name("events_p202611"), Some(key));
        assert!(month_start_ms(key) <= ms && ms < month_start_ms(key + 1));
        assert_eq!(partition_name(key + 2), "events_p202701");
        assert_eq!(parse_partition_name("events_p2026x1"), None);
    }
}
