//! The [`Store`](super::Store) implementation, written once for both backends.
//!
//! Like [`super::spire`] and [`super::identity`], the SQL is one text (`$n` placeholders work in
//! SQLite too) and [`impl_store!`] expands it for [`SqliteStore`](super::sqlite::SqliteStore) and
//! [`PgStore`](super::postgres::PgStore). What stays in the backends' files is what the engines
//! really do differently, each said there: how events go in (SQLite: multi-row inserts on its one
//! writer connection; PostgreSQL: binary COPY from group-commit writers), how old events go out
//! (SQLite: a delete; PostgreSQL: dropping daily partitions), connection set-up (SQLite pragmas,
//! PostgreSQL schema and read replica) and where roll-up reads run.
//!
//! A backend type provides, as inherent items: `writer()` (the pool writes and reads of one's
//! own writes use), `reader()` (reads that need not see writes in flight), `rollups` (its
//! [`Stage`](super::fold::Stage)), `rollup_pool()` (where roll-up reads run once pending deltas
//! are folded), `replica_reads()`, `ingest_inner`, `retain_events`, `stop_ingest`, `close_pools`
//! and `BACKEND`.

use sqlx::Pool;

use sqlx::Database;

/// The roll-up stage's view of a backend: folds take and apply pending records in one
/// transaction on `writer`.
#[derive(Debug)]
pub(crate) struct PoolFold<DB: Database> {
    pub(crate) writer: Pool<DB>,
    pub(crate) reader: Pool<DB>,
    /// Run first in every fold and roll-up retention transaction: serialises them across
    /// processes (PostgreSQL: a transaction-level advisory lock; SQLite's single writer
    /// connection already does).
    pub(crate) lock: Option<&'static str>,
    /// Run first in a fold transaction (PostgreSQL: its commit durability, see `postgres.rs`).
    pub(crate) commit: Option<&'static str>,
}

/// Implements the fold backend and [`super::Store`] for a backend type; see the module
/// documentation for what the type must provide.
macro_rules! impl_store {
    ($ty:ty, db = $db:ty) => {
        impl $crate::store::fold::FoldBackend for $crate::store::shared::PoolFold<$db> {
            fn newest_pending(&self) -> $crate::store::StoreFuture<'_, Option<i64>> {
                Box::pin(async move {
                    Ok(sqlx::query_scalar("SELECT max(id) FROM rollup_pending")
                        .fetch_one(&self.reader)
                        .await?)
                })
            }

            fn pending(&self) -> $crate::store::StoreFuture<'_, $crate::store::RollupBacklog> {
                Box::pin(async move {
                    let (groups, events): (i64, i64) = sqlx::query_as(
                        "SELECT count(*), CAST(coalesce(sum(events), 0) AS BIGINT) \
                         FROM rollup_pending",
                    )
                    .fetch_one(&self.reader)
                    .await?;
                    Ok($crate::store::RollupBacklog {
                        groups: groups as u64,
                        events: events as u64,
                    })
                })
            }

            fn fold_once(
                &self,
                upto: i64,
                max_groups: u32,
            ) -> $crate::store::StoreFuture<'_, $crate::store::RollupBacklog> {
                use $crate::store::fold::{decode_all, merge_all, take_count};
                Box::pin(async move {
                    let mut tx = self.writer.begin().await?;
                    for sql in self.lock.iter().chain(&self.commit) {
                        sqlx::query(*sql).execute(&mut *tx).await?;
                    }
                    let rows: Vec<(i64, i64)> = sqlx::query_as(
                        "SELECT id, events FROM rollup_pending WHERE id <= $1 ORDER BY id LIMIT $2",
                    )
                    .bind(upto)
                    .bind(i64::from(max_groups))
                    .fetch_all(&mut *tx)
                    .await?;
                    let Some(last) = rows[..take_count(&rows)].last().map(|r| r.0) else {
                        return Ok($crate::store::RollupBacklog::default());
                    };
                    // Whatever this deletes is what this folds (a record with a smaller id
                    // committed meanwhile included).
                    let taken: Vec<(i64, Vec<u8>)> = sqlx::query_as(
                        "DELETE FROM rollup_pending WHERE id <= $1 RETURNING events, deltas",
                    )
                    .bind(last)
                    .fetch_all(&mut *tx)
                    .await?;
                    let (decoded, covered) = decode_all(&taken)?;
                    $crate::store::sql::write_rollups::<$db>(&mut *tx, &merge_all(&decoded))
                        .await?;
                    tx.commit().await?;
                    Ok(covered)
                })
            }
        }

        impl $ty {
            /// Appends one ingest transaction's roll-up deltas record (nothing when no event was
            /// new), inside that transaction.
            async fn append_rollup_pending(
                tx: &mut sqlx::Transaction<'static, $db>,
                new_events: usize,
                received_us: i64,
                deltas: &$crate::store::rollup::BatchDeltas<'_>,
            ) -> Result<(), $crate::store::StoreError> {
                if deltas.is_empty() {
                    return Ok(());
                }
                sqlx::query(
                    "INSERT INTO rollup_pending (events, created_us, deltas) VALUES ($1, $2, $3)",
                )
                .bind(new_events as i64)
                .bind(received_us)
                .bind(deltas.encode())
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            /// Folds what is pending, then answers where roll-up reads may run now.
            pub(crate) async fn settled_reader(
                &self,
            ) -> Result<&sqlx::Pool<$db>, $crate::store::StoreError> {
                self.rollups.settle().await?;
                self.rollup_pool().await
            }

            /// Deletes roll-up rows not seen since `cutoff_us`, every contributor's, after
            /// folding what is pending (so none comes back after the cut). Under the fold lock,
            /// which orders the deletes with folds. Returns the fingerprints deleted.
            async fn retain_rollups(
                &self,
                fold: &$crate::store::shared::PoolFold<$db>,
                cutoff_us: i64,
            ) -> Result<u64, $crate::store::StoreError> {
                self.rollups.settle().await?;
                self.rollups
                    .exclusive(async {
                        let mut tx = self.writer().begin().await?;
                        if let Some(sql) = fold.lock {
                            sqlx::query(sql).execute(&mut *tx).await?;
                        }
                        let mut reported = 0;
                        for r in $crate::store::rollup::all_retention() {
                            // Only the contributors' static table and column names are spliced.
                            let sql = format!("DELETE FROM {} WHERE {} < $1", r.table, r.column);
                            let n = sqlx::query(sqlx::AssertSqlSafe(sql))
                                .bind(cutoff_us.div_euclid(r.bucket_us) * r.bucket_us)
                                .execute(&mut *tx)
                                .await?
                                .rows_affected();
                            if r.reported {
                                reported += n;
                            }
                        }
                        tx.commit().await?;
                        Ok(reported)
                    })
                    .await
            }
        }

        impl $crate::store::Store for $ty {
            fn backend(&self) -> &'static str {
                Self::BACKEND
            }

            fn ping(&self) -> $crate::store::StoreFuture<'_, ()> {
                Box::pin(async move {
                    sqlx::query("SELECT 1").execute(self.reader()).await?;
                    Ok(())
                })
            }

            fn ingest<'a>(
                &'a self,
                events: &'a [hais_shared::event::FingerprintEvent],
            ) -> $crate::store::StoreFuture<'a, $crate::store::IngestOutcome> {
                Box::pin(self.ingest_inner(events))
            }

            fn settle_rollups(&self) -> $crate::store::StoreFuture<'_, ()> {
                Box::pin(self.rollups.settle())
            }

            fn fold_rollups(
                &self,
                max_groups: u32,
            ) -> $crate::store::StoreFuture<'_, $crate::store::RollupBacklog> {
                Box::pin(self.rollups.fold(max_groups))
            }

            fn pending_rollups(
                &self,
            ) -> $crate::store::StoreFuture<'_, $crate::store::RollupBacklog> {
                Box::pin(self.rollups.pending())
            }

            fn search<'a>(
                &'a self,
                q: &'a $crate::store::FingerprintQuery,
            ) -> $crate::store::StoreFuture<
                'a,
                $crate::store::Page<$crate::store::FingerprintSummary>,
            > {
                Box::pin(async move {
                    $crate::store::reads::Reads(self.settled_reader().await?)
                        .search(q)
                        .await
                })
            }

            fn detail<'a>(
                &'a self,
                method: hais_shared::fingerprint::Method,
                value: &'a str,
            ) -> $crate::store::StoreFuture<'a, Option<$crate::store::FingerprintDetail>> {
                Box::pin(async move {
                    $crate::store::reads::Reads(self.settled_reader().await?)
                        .detail(method, value)
                        .await
                })
            }

            fn top(
                &self,
                since_us: i64,
                method: Option<hais_shared::fingerprint::Method>,
                limit: u32,
            ) -> $crate::store::StoreFuture<'_, Vec<$crate::store::TopEntry>> {
                Box::pin(async move {
                    $crate::store::reads::Reads(self.settled_reader().await?)
                        .top(since_us, method, limit)
                        .await
                })
            }

            fn retain(
                &self,
                cutoff_us: i64,
            ) -> $crate::store::StoreFuture<'_, $crate::store::RetentionOutcome> {
                Box::pin(async move {
                    let mut out = self.retain_events(cutoff_us).await?;
                    out.fingerprints_deleted = self.retain_rollups(&self.fold, cutoff_us).await?;
                    Ok(out)
                })
            }

            fn replica_reads(&self) -> Option<$crate::store::ReplicaReads> {
                self.replica_reads()
            }

            fn count_events(&self) -> $crate::store::StoreFuture<'_, i64> {
                Box::pin(async move {
                    Ok(sqlx::query_scalar("SELECT count(*) FROM events")
                        .fetch_one(self.reader())
                        .await?)
                })
            }

            fn setting_or_init<'a>(
                &'a self,
                key: &'a str,
                proposed: &'a str,
            ) -> $crate::store::StoreFuture<'a, String> {
                Box::pin(async move {
                    sqlx::query(
                        "INSERT INTO settings (key, value) VALUES ($1, $2) \
                         ON CONFLICT (key) DO NOTHING",
                    )
                    .bind(key)
                    .bind(proposed)
                    .execute(self.writer())
                    .await?;
                    Ok(
                        sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
                            .bind(key)
                            .fetch_one(self.writer())
                            .await?,
                    )
                })
            }

            fn close(&self) -> $crate::store::StoreFuture<'_, ()> {
                Box::pin(async move {
                    self.stop_ingest().await;
                    let folded = self.rollups.stop().await;
                    self.close_pools().await;
                    folded
                })
            }
        }
    };
}

pub(crate) use impl_store;
