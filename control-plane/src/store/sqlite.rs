//! Embedded SQLite store: the zero-configuration default.
//!
//! SQLite allows one writer at a time, so writes go through a dedicated single-connection pool:
//! transactions queue in-process instead of failing with `SQLITE_BUSY`, while reads use their own
//! pool and proceed concurrently thanks to WAL mode. Ingest appends events and one record of
//! roll-up deltas; the roll-up stage ([`super::fold`]) folds the records on the same writer.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hais_shared::event::FingerprintEvent;
use hais_shared::fingerprint::Method;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::collections::HashSet;

use sqlx::{QueryBuilder, Sqlite};
use uuid::Uuid;

use super::fold::{FoldBackend, Stage, decode_all, merge_all, take_count};
use super::query::FingerprintQuery;
use super::reads::Reads;
use super::rollup::{self, BatchDeltas, Rollups};
use super::{
    FingerprintDetail, FingerprintSummary, IngestOutcome, Page, RetentionOutcome, RollupBacklog,
    Store, StoreError, StoreFuture, StoreOptions, TopEntry, now_us, to_us, uuid_floor_ms,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Rows per multi-row statement: 13 columns × 500 stays far below SQLite's 32,766 bound
/// parameters per statement.
const ROWS_PER_STATEMENT: usize = 500;

/// The embedded store.
#[derive(Debug)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    rollups: Stage,
}

/// The roll-up stage's view of SQLite: folds run on the single writer connection, which
/// serialises them with ingest and with each other.
#[derive(Debug)]
struct SqliteFold {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file the URL names and migrates it.
    pub async fn open(
        url: &str,
        max_connections: u32,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL in WAL mode: a commit survives a process crash; only an OS crash or power
            // loss can lose the last transactions. The embedded mode's trade for throughput.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        if let Some(parent) = Path::new(opts.get_filename()).parent()
            && !parent.as_os_str().is_empty()
        {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(crate::secure_fs::DIR_MODE)
                .create(parent)
                .map_err(|e| {
                    StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
                })?;
        }
        // The database holds secrets (JWT secret, CA key, password hashes): 0600 before SQLite
        // creates it (its -wal and -shm files take the database file's mode).
        let file = Path::new(opts.get_filename());
        if !opts.get_filename().as_os_str().is_empty() && file != Path::new(":memory:") {
            crate::secure_fs::private_db_file(file).map_err(|e| {
                StoreError::Unavailable(format!("cannot secure {}: {e}", file.display()))
            })?;
        }
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts.clone())
            .await?;
        MIGRATOR.run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts.read_only(true))
            .await?;
        let rollups = Stage::start(
            Arc::new(SqliteFold {
                writer: writer.clone(),
                reader: reader.clone(),
            }),
            options.rollup_interval,
        );
        Ok(SqliteStore {
            writer,
            reader,
            rollups,
        })
    }

    async fn ingest_inner(&self, events: &[FingerprintEvent]) -> Result<IngestOutcome, StoreError> {
        let received = now_us();
        let mut tx = self.writer.begin().await?;
        // Multi-row statements: the driver costs a round trip to its worker thread per
        // statement, so 500 rows per statement instead of one is most of the speed.
        let mut new_ids: HashSet<Uuid> = HashSet::with_capacity(events.len());
        for chunk in events.chunks(ROWS_PER_STATEMENT) {
            let mut rows = Vec::with_capacity(chunk.len());
            for e in chunk {
                let fps = serde_json::to_string(&e.fingerprints)
                    .map_err(|err| StoreError::Corrupt(err.to_string()))?;
                let workload = if e.workload.is_empty() {
                    None
                } else {
                    Some(
                        serde_json::to_string(&e.workload)
                            .map_err(|err| StoreError::Corrupt(err.to_string()))?,
                    )
                };
                rows.push((e, fps, workload));
            }
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO events (id, ts_us, agent_id, host, src_ip, src_port, dst_ip, dst_port, \
                 transport, server_name, fingerprints, workload, received_us) ",
            );
            qb.push_values(rows, |mut b, (e, fps, workload)| {
                b.push_bind(e.id)
                    .push_bind(to_us(e.timestamp))
                    .push_bind(e.agent_id.clone())
                    .push_bind(e.host.clone())
                    .push_bind(e.flow.src_ip.to_string())
                    .push_bind(i64::from(e.flow.src_port))
                    .push_bind(e.flow.dst_ip.to_string())
                    .push_bind(i64::from(e.flow.dst_port))
                    .push_bind(e.flow.transport.as_str())
                    .push_bind(e.server_name.clone())
                    .push_bind(fps)
                    .push_bind(workload)
                    .push_bind(received);
            });
            qb.push(" ON CONFLICT (id) DO NOTHING RETURNING id");
            let ids: Vec<Uuid> = qb.build_query_scalar().fetch_all(&mut *tx).await?;
            new_ids.extend(ids);
        }
        let mut out = IngestOutcome::default();
        for (i, e) in events.iter().enumerate() {
            // `remove` makes an id repeated inside the batch count as new only once.
            if new_ids.remove(&e.id) {
                out.stored.push(i);
            } else {
                out.duplicates += 1;
            }
        }
        let r = BatchDeltas::from_events(out.stored.iter().map(|&i| &events[i]));
        // The new events go on the durable bus in this transaction (the outbox): stored and
        // published together, or neither.
        let outbox = crate::bus::log::outbox::<crate::bus::log::FingerprintEvents>(
            out.stored.iter().map(|&i| &events[i]),
        )
        .map_err(|err| StoreError::Corrupt(err.to_string()))?;
        super::bus::append::<Sqlite>(&mut *tx, &outbox, received).await?;
        if !r.is_empty() {
            sqlx::query("INSERT INTO rollup_pending (events, created_us, deltas) VALUES (?, ?, ?)")
                .bind(out.stored.len() as i64)
                .bind(received)
                .bind(r.encode())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(out)
    }
}

/// Upserts merged roll-up deltas, in multi-row statements.
async fn write_rollups(
    tx: &mut sqlx::Transaction<'static, Sqlite>,
    r: &Rollups<'_>,
) -> Result<(), StoreError> {
    let fps: Vec<_> = r.fingerprints.iter().collect();
    for chunk in fps.chunks(ROWS_PER_STATEMENT) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO fingerprints (method, value, part_a, part_b, part_c, first_seen_us, \
             last_seen_us, count) ",
        );
        qb.push_values(chunk, |mut b, ((method, value), s)| {
            let [pa, pb, pc] = rollup::parts(value);
            b.push_bind(*method)
                .push_bind(*value)
                .push_bind(pa)
                .push_bind(pb)
                .push_bind(pc)
                .push_bind(s.first_us)
                .push_bind(s.last_us)
                .push_bind(s.count);
        });
        qb.push(
            " ON CONFLICT (method, value) DO UPDATE SET \
             first_seen_us = min(first_seen_us, excluded.first_seen_us), \
             last_seen_us = max(last_seen_us, excluded.last_seen_us), \
             count = count + excluded.count",
        );
        qb.build().execute(&mut **tx).await?;
    }
    let dims: Vec<_> = r.dims.iter().collect();
    for chunk in dims.chunks(ROWS_PER_STATEMENT) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO fingerprint_dims (dim, dim_value, method, value, first_seen_us, \
             last_seen_us, count) ",
        );
        qb.push_values(chunk, |mut b, ((dim, dv, method, value), s)| {
            b.push_bind(*dim)
                .push_bind(*dv)
                .push_bind(*method)
                .push_bind(*value)
                .push_bind(s.first_us)
                .push_bind(s.last_us)
                .push_bind(s.count);
        });
        qb.push(
            " ON CONFLICT (dim, dim_value, method, value) DO UPDATE SET \
             first_seen_us = min(first_seen_us, excluded.first_seen_us), \
             last_seen_us = max(last_seen_us, excluded.last_seen_us), \
             count = count + excluded.count",
        );
        qb.build().execute(&mut **tx).await?;
    }
    let hourly: Vec<_> = r.hourly.iter().collect();
    for chunk in hourly.chunks(ROWS_PER_STATEMENT) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO fingerprint_hourly (hour_us, method, value, count) ",
        );
        qb.push_values(chunk, |mut b, ((hour, method, value), n)| {
            b.push_bind(*hour)
                .push_bind(*method)
                .push_bind(*value)
                .push_bind(**n);
        });
        qb.push(
            " ON CONFLICT (hour_us, method, value) DO UPDATE SET count = count + excluded.count",
        );
        qb.build().execute(&mut **tx).await?;
    }
    // Per-identity roll-ups (identity service): store/identity.rs.
    super::identity::write_rollups::<Sqlite>(&mut **tx, r).await?;
    Ok(())
}

impl FoldBackend for SqliteFold {
    fn newest_pending(&self) -> StoreFuture<'_, Option<i64>> {
        Box::pin(async move {
            Ok(sqlx::query_scalar("SELECT max(id) FROM rollup_pending")
                .fetch_one(&self.reader)
                .await?)
        })
    }

    fn pending(&self) -> StoreFuture<'_, RollupBacklog> {
        Box::pin(async move {
            let (groups, events): (i64, i64) =
                sqlx::query_as("SELECT count(*), coalesce(sum(events), 0) FROM rollup_pending")
                    .fetch_one(&self.reader)
                    .await?;
            Ok(RollupBacklog {
                groups: groups as u64,
                events: events as u64,
            })
        })
    }

    fn fold_once(&self, upto: i64, max_groups: u32) -> StoreFuture<'_, RollupBacklog> {
        Box::pin(async move {
            let mut tx = self.writer.begin().await?;
            let rows: Vec<(i64, i64)> = sqlx::query_as(
                "SELECT id, events FROM rollup_pending WHERE id <= ? ORDER BY id LIMIT ?",
            )
            .bind(upto)
            .bind(i64::from(max_groups))
            .fetch_all(&mut *tx)
            .await?;
            let Some(last) = rows[..take_count(&rows)].last().map(|r| r.0) else {
                return Ok(RollupBacklog::default());
            };
            let taken: Vec<(i64, Vec<u8>)> =
                sqlx::query_as("DELETE FROM rollup_pending WHERE id <= ? RETURNING events, deltas")
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

impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            sqlx::query("SELECT 1").execute(&self.reader).await?;
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
            Reads(&self.reader).search(q).await
        })
    }

    fn detail<'a>(
        &'a self,
        method: Method,
        value: &'a str,
    ) -> StoreFuture<'a, Option<FingerprintDetail>> {
        Box::pin(async move {
            self.rollups.settle().await?;
            Reads(&self.reader).detail(method, value).await
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
            Reads(&self.reader).top(since_us, method, limit).await
        })
    }

    fn retain(&self, cutoff_us: i64) -> StoreFuture<'_, RetentionOutcome> {
        Box::pin(async move {
            let floor = uuid_floor_ms(cutoff_us.div_euclid(1000));
            // Roll-ups of events stored before now are folded first, so none comes back after
            // the cut (folds and these deletes share the one writer connection).
            self.rollups.settle().await?;
            let mut tx = self.writer.begin().await?;
            let events = sqlx::query("DELETE FROM events WHERE id < ?")
                .bind(floor)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let fps = sqlx::query("DELETE FROM fingerprints WHERE last_seen_us < ?")
                .bind(cutoff_us)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query("DELETE FROM fingerprint_dims WHERE last_seen_us < ?")
                .bind(cutoff_us)
                .execute(&mut *tx)
                .await?;
            for sql in super::identity::RETAIN_SQL {
                sqlx::query(sql).bind(cutoff_us).execute(&mut *tx).await?;
            }
            sqlx::query("DELETE FROM fingerprint_hourly WHERE hour_us < ?")
                .bind(cutoff_us.div_euclid(rollup::HOUR_US) * rollup::HOUR_US)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(RetentionOutcome {
                events_deleted: events,
                fingerprints_deleted: fps,
                partitions_dropped: 0,
            })
        })
    }

    fn count_events(&self) -> StoreFuture<'_, i64> {
        Box::pin(async move {
            Ok(sqlx::query_scalar("SELECT count(*) FROM events")
                .fetch_one(&self.reader)
                .await?)
        })
    }

    fn setting_or_init<'a>(&'a self, key: &'a str, proposed: &'a str) -> StoreFuture<'a, String> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
            )
            .bind(key)
            .bind(proposed)
            .execute(&self.writer)
            .await?;
            Ok(
                sqlx::query_scalar("SELECT value FROM settings WHERE key = ?")
                    .bind(key)
                    .fetch_one(&self.writer)
                    .await?,
            )
        })
    }

    fn close(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let folded = self.rollups.stop().await;
            self.reader.close().await;
            self.writer.close().await;
            folded
        })
    }
}

// ---- spire (agent enrollment): the tables' queries are in store/spire.rs ----
impl SqliteStore {
    /// The single writer connection, for [`super::spire::SpireStore`]'s writes.
    pub(super) fn spire_writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// The read-only pool, for [`super::spire::SpireStore`]'s reads.
    pub(super) fn spire_reader(&self) -> &SqlitePool {
        &self.reader
    }
}
