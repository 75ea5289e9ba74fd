//! PostgreSQL store: the production backend.
//!
//! Everything both backends do alike is in `shared.rs` and the SQL modules; this file holds
//! what only PostgreSQL does:
//! * ingest: events go in with binary `COPY` (replays: the shared `INSERT … ON CONFLICT DO
//!   NOTHING RETURNING id`), from group-commit writer tasks, so a group of batches costs a
//!   handful of statements, not thousands. Only new events feed the roll-up deltas, committed
//!   with them as one `rollup_pending` record and folded later by the roll-up stage
//!   ([`super::fold`]).
//! * daily `events` partitions, created on demand and dropped by retention
//!   (`partitions.rs`).
//! * an optional read replica (`database_read_url`) for roll-up reads, used only once it has
//!   replayed the primary's WAL past the read's own fold (`PgStore::rollup_pool`).

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hais_shared::event::FingerprintEvent;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, Postgres};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::fold::Stage;
use super::partitions::{self, Known};
use super::rollup::BatchDeltas;
use super::shared::{PoolFold, impl_store};
use super::sql::EVENT_COLUMNS;
use super::{
    IngestOutcome, RetentionOutcome, StoreError, StoreOptions, now_us, to_us, uuid_floor_ms,
    uuid_ms,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Serialises roll-up folds (and retention's roll-up deletes) across processes: a
/// transaction-level advisory lock ("HAISFOLD" = 0x4841_4953_464f_4c44).
const FOLD_LOCK_SQL: &str = "SELECT pg_advisory_xact_lock(5206523266227719236)";

/// A fold's commit need not wait for its WAL flush: if a crash loses the commit, it loses the
/// deletes of the pending rows with it (one atomic WAL record stream), and they are folded again.
/// Exactly once either way.
const FOLD_COMMIT_ASYNC: &str = "SET LOCAL synchronous_commit = off";
/// With a read replica, a fold flushes its commit at once (not the up to `wal_writer_delay`
/// later an asynchronous commit would), because the WAL sender ships only flushed WAL and the
/// read waiting for the replica to replay the fold would wait that long.
const FOLD_COMMIT_LOCAL: &str = "SET LOCAL synchronous_commit = local";

/// Most events one group commit writes (many ingest calls merged into one transaction).
const MAX_GROUP_EVENTS: usize = 20_000;
/// Ingest calls that may wait for the writers before callers are slowed down.
const WRITER_QUEUE: usize = 64;
/// Writer tasks. Two let one group's COPY overlap the previous group's commit (PostgreSQL runs
/// each on its own backend). Writers only append, so they never wait on each other's rows.
const WRITERS: usize = 2;

/// One ingest call waiting for the writer.
struct Job {
    events: Vec<FingerprintEvent>,
    reply: oneshot::Sender<Result<IngestOutcome, StoreError>>,
}

/// Where roll-up reads were answered (see [`PgStore::replica_reads`]).
#[derive(Debug, Default)]
struct ReplicaStats {
    replica: AtomicU64,
    primary: AtomicU64,
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
    /// The read replica, if configured.
    replica: Option<PgPool>,
    replica_wait: Duration,
    replica_stats: ReplicaStats,
    partitions: Known,
    writer: Mutex<Option<mpsc::Sender<Job>>>,
    writer_tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Drops of partitions retention detached (awaited at close).
    retiring: Mutex<Vec<JoinHandle<()>>>,
    fold: Arc<PoolFold<Postgres>>,
    rollups: Stage,
}

/// Connection options for `url`, using `schema` (checked) when given.
fn connect_options(url: &str, schema: Option<&str>) -> Result<PgConnectOptions, StoreError> {
    let opts = PgConnectOptions::from_str(url)?;
    Ok(match schema {
        Some(schema) => opts.options([("search_path", schema)]),
        None => opts,
    })
}

/// A pool with `TCP_NODELAY` set on its connections (see `pg_nodelay`).
async fn connect(opts: PgConnectOptions, max_connections: u32) -> Result<PgPool, StoreError> {
    let server_port = opts.get_port();
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(move |conn, _| Box::pin(super::pg_nodelay::after_connect(conn, server_port)))
        .connect_with(opts)
        .await?)
}

impl PgStore {
    const BACKEND: &'static str = "postgres";

    /// The search indexer's transactions need not wait for their WAL flush either: a commit a
    /// crash loses takes the group's checkpoint with it, so those events are indexed again.
    pub(super) const SEARCH_COMMIT: Option<&'static str> = Some(FOLD_COMMIT_ASYNC);

    /// Connects, creates `schema` if given (and uses it for everything), and migrates. With a
    /// `read_url`, roll-up reads go to that replica when it is up to date (see
    /// `rollup_pool`).
    pub async fn open(
        url: &str,
        read_url: Option<&str>,
        schema: Option<&str>,
        max_connections: u32,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        if let Some(schema) = schema {
            if !crate::config::is_identifier(schema) {
                return Err(StoreError::Conflict(format!(
                    "invalid schema name {schema:?}"
                )));
            }
            let mut conn = sqlx::PgConnection::connect_with(&connect_options(url, None)?).await?;
            sqlx::query(AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS {schema}"
            )))
            .execute(&mut conn)
            .await?;
            conn.close().await?;
        }
        let pool = connect(connect_options(url, schema)?, max_connections).await?;
        MIGRATOR.run(&pool).await?;
        let replica = match read_url {
            Some(u) => Some(open_replica(connect_options(u, schema)?, max_connections).await?),
            None => None,
        };
        let partitions: Known = Arc::default();
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let tasks = (0..WRITERS)
            .map(|_| tokio::spawn(run_writer(pool.clone(), partitions.clone(), rx.clone())))
            .collect();
        let fold = Arc::new(PoolFold {
            writer: pool.clone(),
            reader: pool.clone(),
            lock: Some(FOLD_LOCK_SQL),
            commit: Some(if replica.is_some() {
                FOLD_COMMIT_LOCAL
            } else {
                FOLD_COMMIT_ASYNC
            }),
        });
        let rollups = Stage::start(fold.clone(), options.rollup_interval);
        Ok(PgStore {
            pool,
            replica,
            replica_wait: options.replica_wait,
            replica_stats: ReplicaStats::default(),
            partitions,
            writer: Mutex::new(Some(tx)),
            writer_tasks: Mutex::new(tasks),
            retiring: Mutex::default(),
            fold,
            rollups,
        })
    }

    /// The primary's pool, for tests and benchmarks that need raw access.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The read replica's pool, if one is configured.
    pub fn replica_pool(&self) -> Option<&PgPool> {
        self.replica.as_ref()
    }

    /// Roll-up reads answered so far by the replica, and by the primary instead (it had not
    /// caught up in time, or could not be reached); `None` without a replica.
    pub fn replica_reads(&self) -> Option<super::ReplicaReads> {
        self.replica.as_ref().map(|_| super::ReplicaReads {
            replica: self.replica_stats.replica.load(Ordering::Relaxed),
            primary: self.replica_stats.primary.load(Ordering::Relaxed),
        })
    }

    /// Every write, and every read that must see one's own writes: the primary.
    pub(super) fn writer(&self) -> &PgPool {
        &self.pool
    }

    /// Reads other than roll-up reads (accounts, tokens, entries: they must see what was just
    /// written, and are small): the primary too.
    pub(super) fn reader(&self) -> &PgPool {
        &self.pool
    }

    /// Where a roll-up read runs, called once the read's fold has committed on the primary.
    ///
    /// The replica is used only when it has replayed the primary's WAL up to the primary's
    /// position now (`pg_last_wal_replay_lsn()` ≥ `pg_current_wal_lsn()`): that position is after
    /// the fold's commit and after every ingest acknowledged before the read began, so the
    /// replica then answers exactly what the primary would (read-your-writes holds). It waits at
    /// most `replica_wait` (`StoreOptions`) for that, polling; if the replica lags longer or
    /// cannot be reached, the read runs on the primary: slower for the primary, never stale.
    async fn rollup_pool(&self) -> Result<&PgPool, StoreError> {
        let Some(replica) = &self.replica else {
            return Ok(&self.pool);
        };
        let target: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&self.pool)
            .await?;
        let deadline = tokio::time::Instant::now() + self.replica_wait;
        let mut pause = Duration::from_millis(1);
        loop {
            // NULL: not a standby (the URL names a primary, e.g. through a pooler): it has
            // every commit it will ever have, so it is as current as anything.
            let caught_up: Result<Option<bool>, sqlx::Error> = sqlx::query_scalar(
                "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn OR NOT pg_is_in_recovery()",
            )
            .bind(&target)
            .fetch_one(replica)
            .await;
            match caught_up {
                Ok(Some(true)) => {
                    self.replica_stats.replica.fetch_add(1, Ordering::Relaxed);
                    return Ok(replica);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "read replica unreachable; reading the primary");
                    break;
                }
            }
            if tokio::time::Instant::now() + pause > deadline {
                tracing::debug!(lsn = %target, "read replica behind; reading the primary");
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
        self.replica_stats.primary.fetch_add(1, Ordering::Relaxed);
        Ok(&self.pool)
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

    /// Detaches the daily (or, from before the upgrade, monthly) partitions wholly older than
    /// the cutoff, then deletes the older rows of the partition straddling it. The detached
    /// partitions are dropped by a background task (see [`partitions::retire_older`] for why),
    /// which the store's close awaits.
    async fn retain_events(&self, cutoff_us: i64) -> Result<RetentionOutcome, StoreError> {
        let cutoff_ms = cutoff_us.div_euclid(1000);
        let dropped = partitions::retire_older(&self.pool, &self.partitions, cutoff_ms).await?;
        let pool = self.pool.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = partitions::drop_retired(&pool).await {
                tracing::warn!(error = %e, "dropping retired partitions failed; retrying at the next retention");
            }
        });
        {
            let mut retiring = self.retiring.lock().unwrap_or_else(|p| p.into_inner());
            retiring.retain(|t| !t.is_finished());
            retiring.push(task);
        }
        for table in super::events::SEARCH_TABLES {
            sqlx::query(AssertSqlSafe(format!("DELETE FROM {table} WHERE id < $1")))
                .bind(uuid_floor_ms(cutoff_ms))
                .execute(&self.pool)
                .await?;
        }
        let deleted = sqlx::query("DELETE FROM events WHERE id < $1")
            .bind(uuid_floor_ms(cutoff_ms))
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(RetentionOutcome {
            events_deleted: dropped.events + deleted,
            events_deleted_estimated: dropped.estimated,
            partitions_dropped: dropped.partitions,
            ..RetentionOutcome::default()
        })
    }

    /// Makes sure the search tables have a partition for every event's day. They do unless
    /// retention retired the day meanwhile (the `search` group lagged past the cutoff): the
    /// partition is then made again, and the next retention retires it again.
    pub(super) async fn prepare_search(
        &self,
        events: &[&FingerprintEvent],
        again: bool,
    ) -> Result<(), StoreError> {
        if again {
            self.partitions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        }
        partitions::ensure(
            &self.pool,
            &self.partitions,
            events.iter().map(|e| uuid_ms(&e.id)),
        )
        .await
    }

    /// Lets the writers finish the queued jobs and end.
    async fn stop_ingest(&self) {
        drop(self.writer.lock().unwrap_or_else(|p| p.into_inner()).take());
        let tasks =
            std::mem::take(&mut *self.writer_tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn close_pools(&self) {
        let retiring =
            std::mem::take(&mut *self.retiring.lock().unwrap_or_else(|p| p.into_inner()));
        for t in retiring {
            let _ = t.await;
        }
        if let Some(r) = &self.replica {
            r.close().await;
        }
        self.pool.close().await;
    }
}

impl_store!(PgStore, db = Postgres);

/// Connects to the read replica. One that is not a standby is accepted (e.g. the primary behind
/// a pooler) but noted, since it takes no load off the primary.
async fn open_replica(opts: PgConnectOptions, max_connections: u32) -> Result<PgPool, StoreError> {
    let replica = connect(opts, max_connections).await?;
    let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&replica)
        .await?;
    if !standby {
        tracing::warn!("database_read_url names a server that is not a standby");
    }
    Ok(replica)
}

/// The group-commit writer loop; ends when every sender is gone (store closed), after
/// finishing what was queued.
async fn run_writer(
    pool: PgPool,
    partitions: Known,
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
    known: &Known,
    events: &[&FingerprintEvent],
) -> Result<Vec<bool>, StoreError> {
    let days = || events.iter().map(|e| uuid_ms(&e.id));
    partitions::ensure(pool, known, days()).await?;
    match write_group_tx(pool, events).await {
        Err(StoreError::Database(e)) if partitions::is_missing_partition(&e) => {
            known.lock().unwrap_or_else(|p| p.into_inner()).clear();
            partitions::ensure(pool, known, days()).await?;
            write_group_tx(pool, events).await
        }
        other => other,
    }
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
    out.extend_from_slice(&(EVENT_COLUMNS.len() as i16).to_be_bytes());
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
    put_opt(out, e.workload.spiffe_id.as_deref());
    put_opt(out, e.workload.key.as_deref());
    Ok(())
}

fn put_opt(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        Some(v) => put_field(out, v.as_bytes()),
        None => put_null(out),
    }
}

/// Runs one binary `COPY table (columns) FROM STDIN` of `data` in the transaction.
async fn copy_in(
    tx: &mut sqlx::PgConnection,
    table: &str,
    columns: &[&str],
    data: Vec<u8>,
) -> Result<(), sqlx::Error> {
    let stmt = format!(
        "COPY {table} ({}) FROM STDIN (FORMAT binary)",
        columns.join(", ")
    );
    let mut copy = tx.copy_in_raw(&stmt).await?;
    match copy.send(data).await {
        Ok(_) => copy.finish().await.map(drop),
        Err(e) => {
            let _ = copy.abort("send failed").await;
            Err(e)
        }
    }
}

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
    let copied = copy_in(&mut tx, "events", &EVENT_COLUMNS, data).await;
    let flags = match copied {
        Ok(()) => vec![true; events.len()],
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("23505") => {
            sqlx::query("ROLLBACK TO SAVEPOINT copy_events")
                .execute(&mut *tx)
                .await?;
            super::sql::insert_events::<Postgres>(&mut *tx, events, received).await?
        }
        Err(e) => return Err(e.into()),
    };
    let new = events
        .iter()
        .zip(&flags)
        .filter(|(_, new)| **new)
        .map(|(e, _)| *e);
    let r = BatchDeltas::from_events(new.clone());
    // The new events go on the durable bus in this transaction (the outbox). Appending takes no
    // lock: transactions order their rows by their own id (see `store::bus::BusDialect::READ`).
    let outbox = crate::bus::log::outbox::<crate::bus::log::FingerprintEvents>(new);
    super::bus::append::<sqlx::Postgres>(&mut *tx, &outbox, received).await?;
    let n = flags.iter().filter(|f| **f).count();
    PgStore::append_rollup_pending(&mut tx, n, received, &r).await?;
    tx.commit().await?;
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fold lock is the key every release uses ("HAISFOLD"), so processes of different
    /// versions sharing a database still serialise their folds.
    #[test]
    fn fold_lock_key() {
        let key = i64::from_be_bytes(*b"HAISFOLD");
        assert_eq!(
            FOLD_LOCK_SQL,
            format!("SELECT pg_advisory_xact_lock({key})")
        );
        assert_eq!(key, 0x4841_4953_464f_4c44);
    }
}
