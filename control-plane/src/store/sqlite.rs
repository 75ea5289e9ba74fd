//! Embedded SQLite store: the zero-configuration default.
//!
//! SQLite allows one writer at a time, so writes go through a dedicated single-connection pool:
//! transactions queue in-process instead of failing with `SQLITE_BUSY`, while reads use their own
//! pool and proceed concurrently thanks to WAL mode.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use hais_shared::event::FingerprintEvent;
use hais_shared::fingerprint::Method;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use std::collections::HashSet;

use sqlx::{QueryBuilder, Row, Sqlite};
use uuid::Uuid;

use super::query::{Cursor, FingerprintQuery, build_search};
use super::rollup::{self, DIM_AGENT, DIM_HOST, DIM_IDENTITY, DIM_SERVER_NAME, Rollups};
use super::{
    DETAIL_DIM_LIMIT, DimEntry, DimList, FingerprintDetail, FingerprintSummary, IngestOutcome,
    Page, RetentionOutcome, Store, StoreError, StoreFuture, TopEntry, UserRecord, method_from_db,
    now_us, to_us, uuid_floor_ms,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Rows per multi-row statement: 13 columns × 500 stays far below SQLite's 32,766 bound
/// parameters per statement.
const ROWS_PER_STATEMENT: usize = 500;

/// The embedded store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file the URL names and migrates it.
    pub async fn open(url: &str, max_connections: u32) -> Result<Self, StoreError> {
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
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
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
        Ok(SqliteStore { writer, reader })
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
        let r = Rollups::from_events(out.stored.iter().map(|&i| &events[i]));
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
            qb.build().execute(&mut *tx).await?;
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
            qb.build().execute(&mut *tx).await?;
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
            qb.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn dim_list(
        &self,
        method: Method,
        value: &str,
        dim: &str,
    ) -> Result<DimList, StoreError> {
        let total: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM fingerprint_dims WHERE method = ? AND value = ? AND dim = ?",
        )
        .bind(method.as_str())
        .bind(value)
        .bind(dim)
        .fetch_one(&self.reader)
        .await?;
        let rows = sqlx::query(
            "SELECT dim_value, first_seen_us, last_seen_us, count FROM fingerprint_dims \
             WHERE method = ? AND value = ? AND dim = ? ORDER BY count DESC, dim_value LIMIT ?",
        )
        .bind(method.as_str())
        .bind(value)
        .bind(dim)
        .bind(DETAIL_DIM_LIMIT)
        .fetch_all(&self.reader)
        .await?;
        let top = rows
            .iter()
            .map(|r| {
                Ok(DimEntry {
                    value: r.try_get(0)?,
                    first_seen_us: r.try_get(1)?,
                    last_seen_us: r.try_get(2)?,
                    count: r.try_get(3)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(DimList { total, top })
    }
}

fn summary_from_row(r: &SqliteRow) -> Result<FingerprintSummary, StoreError> {
    let method: String = r.try_get(0)?;
    Ok(FingerprintSummary {
        method: method_from_db(&method)?,
        value: r.try_get(1)?,
        part_a: r.try_get(2)?,
        part_b: r.try_get(3)?,
        part_c: r.try_get(4)?,
        first_seen_us: r.try_get(5)?,
        last_seen_us: r.try_get(6)?,
        count: r.try_get(7)?,
    })
}

/// Turns `limit + 1` fetched rows into a page and the cursor after its last item.
pub(crate) fn paginate(mut items: Vec<FingerprintSummary>, limit: u32) -> Page<FingerprintSummary> {
    let limit = limit as usize;
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|l| {
            Cursor {
                method: l.method.as_str().to_owned(),
                value: l.value.clone(),
            }
            .encode()
        })
    } else {
        None
    };
    Page { items, next_cursor }
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

    fn search<'a>(&'a self, q: &'a FingerprintQuery) -> StoreFuture<'a, Page<FingerprintSummary>> {
        Box::pin(async move {
            let mut qb = build_search::<Sqlite>(q);
            let rows = qb.build().fetch_all(&self.reader).await?;
            let items = rows
                .iter()
                .map(summary_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(paginate(items, q.limit))
        })
    }

    fn detail<'a>(
        &'a self,
        method: Method,
        value: &'a str,
    ) -> StoreFuture<'a, Option<FingerprintDetail>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT method, value, part_a, part_b, part_c, first_seen_us, last_seen_us, count \
                 FROM fingerprints WHERE method = ? AND value = ?",
            )
            .bind(method.as_str())
            .bind(value)
            .fetch_optional(&self.reader)
            .await?;
            let Some(row) = row else { return Ok(None) };
            let labels: Vec<String> = sqlx::query_scalar(
                "SELECT label FROM fingerprint_labels WHERE method = ? AND value = ? ORDER BY label",
            )
            .bind(method.as_str())
            .bind(value)
            .fetch_all(&self.reader)
            .await?;
            Ok(Some(FingerprintDetail {
                summary: summary_from_row(&row)?,
                hosts: self.dim_list(method, value, DIM_HOST).await?,
                agents: self.dim_list(method, value, DIM_AGENT).await?,
                server_names: self.dim_list(method, value, DIM_SERVER_NAME).await?,
                identities: self.dim_list(method, value, DIM_IDENTITY).await?,
                labels,
            }))
        })
    }

    fn top(
        &self,
        since_us: i64,
        method: Option<Method>,
        limit: u32,
    ) -> StoreFuture<'_, Vec<TopEntry>> {
        Box::pin(async move {
            let hour = since_us.div_euclid(rollup::HOUR_US) * rollup::HOUR_US;
            let rows = sqlx::query(
                "SELECT method, value, sum(count) AS n FROM fingerprint_hourly \
                 WHERE hour_us >= ? AND (? IS NULL OR method = ?) \
                 GROUP BY method, value ORDER BY n DESC, method, value LIMIT ?",
            )
            .bind(hour)
            .bind(method.map(Method::as_str))
            .bind(method.map(Method::as_str))
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
            rows.iter()
                .map(|r| {
                    let m: String = r.try_get(0)?;
                    Ok(TopEntry {
                        method: method_from_db(&m)?,
                        value: r.try_get(1)?,
                        count: r.try_get(2)?,
                    })
                })
                .collect()
        })
    }

    fn add_label<'a>(
        &'a self,
        method: Method,
        value: &'a str,
        label: &'a str,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let r = sqlx::query(
                "INSERT INTO fingerprint_labels (method, value, label, created_us) \
                 SELECT method, value, ?, ? FROM fingerprints WHERE method = ? AND value = ? \
                 ON CONFLICT DO NOTHING",
            )
            .bind(label)
            .bind(now_us())
            .bind(method.as_str())
            .bind(value)
            .execute(&self.writer)
            .await?;
            if r.rows_affected() == 1 {
                return Ok(true);
            }
            let known: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM fingerprints WHERE method = ? AND value = ?")
                    .bind(method.as_str())
                    .bind(value)
                    .fetch_optional(&self.reader)
                    .await?;
            Ok(known.is_some())
        })
    }

    fn retain(&self, cutoff_us: i64) -> StoreFuture<'_, RetentionOutcome> {
        Box::pin(async move {
            let floor = uuid_floor_ms(cutoff_us.div_euclid(1000));
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

    fn count_users(&self) -> StoreFuture<'_, i64> {
        Box::pin(async move {
            Ok(sqlx::query_scalar("SELECT count(*) FROM users")
                .fetch_one(&self.reader)
                .await?)
        })
    }

    fn get_user<'a>(&'a self, username: &'a str) -> StoreFuture<'a, Option<UserRecord>> {
        Box::pin(async move {
            let row =
                sqlx::query("SELECT username, password_hash, role FROM users WHERE username = ?")
                    .bind(username)
                    .fetch_optional(&self.reader)
                    .await?;
            row.map(|r| {
                Ok(UserRecord {
                    username: r.try_get(0)?,
                    password_hash: r.try_get(1)?,
                    role: r.try_get(2)?,
                })
            })
            .transpose()
        })
    }

    fn create_user<'a>(&'a self, user: &'a UserRecord) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let r = sqlx::query(
                "INSERT INTO users (username, password_hash, role, created_us) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (username) DO NOTHING",
            )
            .bind(&user.username)
            .bind(&user.password_hash)
            .bind(&user.role)
            .bind(now_us())
            .execute(&self.writer)
            .await?;
            if r.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!(
                    "user {:?} already exists",
                    user.username
                )));
            }
            Ok(())
        })
    }

    fn put_refresh_token<'a>(
        &'a self,
        token_hash: &'a str,
        username: &'a str,
        expires_us: i64,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.writer.begin().await?;
            sqlx::query("DELETE FROM refresh_tokens WHERE expires_us < ?")
                .bind(now_us())
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO refresh_tokens (token_hash, username, expires_us) VALUES (?, ?, ?)",
            )
            .bind(token_hash)
            .bind(username)
            .bind(expires_us)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn take_refresh_token<'a>(&'a self, token_hash: &'a str) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            let user: Option<String> = sqlx::query_scalar(
                "DELETE FROM refresh_tokens WHERE token_hash = ? AND expires_us >= ? RETURNING username",
            )
            .bind(token_hash)
            .bind(now_us())
            .fetch_optional(&self.writer)
            .await?;
            Ok(user)
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
            self.reader.close().await;
            self.writer.close().await;
            Ok(())
        })
    }
}
