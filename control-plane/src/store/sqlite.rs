//! Embedded SQLite store: the zero-configuration default.
//!
//! SQLite allows one writer at a time, so writes go through a dedicated single-connection pool:
//! transactions queue in-process instead of failing with `SQLITE_BUSY`, while reads use their own
//! pool and proceed concurrently thanks to WAL mode. Ingest appends events and one record of
//! roll-up deltas; the roll-up stage ([`super::fold`]) folds the records on the same writer.
//!
//! Everything both backends do alike is in `shared.rs` and the SQL modules; this file holds
//! what only SQLite needs: its connection pragmas and file permissions, the single-writer
//! ingest, and retention as a plain delete (no partitions).

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hais_shared::event::FingerprintEvent;
use sqlx::Sqlite;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::fold::Stage;
use super::rollup::BatchDeltas;
use super::shared::{PoolFold, impl_store};
use super::{IngestOutcome, RetentionOutcome, StoreError, StoreOptions, now_us, uuid_floor_ms};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The embedded store.
#[derive(Debug)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    fold: Arc<PoolFold<Sqlite>>,
    rollups: Stage,
}

impl SqliteStore {
    /// Search index transactions commit like any other (see `PgStore::SEARCH_COMMIT`).
    pub(super) const SEARCH_COMMIT: Option<&'static str> = None;

    const BACKEND: &'static str = "sqlite";

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
        // Folds run on the single writer connection, which serialises them with ingest and with
        // each other: no lock statement needed.
        let fold = Arc::new(PoolFold {
            writer: writer.clone(),
            reader: reader.clone(),
            lock: None,
            commit: None,
        });
        let rollups = Stage::start(fold.clone(), options.rollup_interval);
        Ok(SqliteStore {
            writer,
            reader,
            fold,
            rollups,
        })
    }

    /// The single writer connection: every write, and reads that must see them.
    pub(super) fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// The read-only pool (WAL: a read started after a commit sees it).
    pub(super) fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    /// Roll-up reads run on the read-only pool.
    async fn rollup_pool(&self) -> Result<&SqlitePool, StoreError> {
        Ok(&self.reader)
    }

    /// No replicas: SQLite's readers share the file.
    fn replica_reads(&self) -> Option<super::ReplicaReads> {
        None
    }

    async fn ingest_inner(&self, events: &[FingerprintEvent]) -> Result<IngestOutcome, StoreError> {
        let received = now_us();
        let mut tx = self.writer.begin().await?;
        // Multi-row statements: the driver costs a round trip to its worker thread per
        // statement, so 500 rows per statement instead of one is most of the speed.
        let all: Vec<&FingerprintEvent> = events.iter().collect();
        let flags = super::sql::insert_events::<Sqlite>(&mut *tx, &all, received).await?;
        let mut out = IngestOutcome::default();
        for (i, new) in flags.iter().enumerate() {
            if *new {
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
        );
        super::bus::append::<Sqlite>(&mut *tx, &outbox, received).await?;
        Self::append_rollup_pending(&mut tx, out.stored.len(), received, &r).await?;
        tx.commit().await?;
        Ok(out)
    }

    /// Deletes events older than the cutoff. Roll-ups of events stored before now are folded
    /// first (folds and this delete share the one writer connection).
    async fn retain_events(&self, cutoff_us: i64) -> Result<RetentionOutcome, StoreError> {
        let floor = uuid_floor_ms(cutoff_us.div_euclid(1000));
        self.rollups.settle().await?;
        for table in super::events::SEARCH_TABLES {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE id < $1"
            )))
            .bind(floor)
            .execute(&self.writer)
            .await?;
        }
        let events = sqlx::query("DELETE FROM events WHERE id < $1")
            .bind(floor)
            .execute(&self.writer)
            .await?
            .rows_affected();
        Ok(RetentionOutcome {
            events_deleted: events,
            ..RetentionOutcome::default()
        })
    }

    /// Nothing to prepare: one table, no partitions.
    pub(super) async fn prepare_search(
        &self,
        _events: &[&FingerprintEvent],
        _again: bool,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    /// Nothing to stop: ingest runs in the caller's task.
    async fn stop_ingest(&self) {}

    async fn close_pools(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

impl_store!(SqliteStore, db = Sqlite);
