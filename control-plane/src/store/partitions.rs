//! PostgreSQL `events` partitions: one per UTC day, on the UUIDv7 id range.
//!
//! UUIDv7 ids start with their millisecond timestamp, so an id range *is* a time range, and
//! partitioning on the id keeps the id alone unique across partitions (a time column would have
//! to join the primary key, and a replay with another timestamp would slip through). A day per
//! partition makes retention the removal of whole days (detach, then drop in the background:
//! [`retire_older`]), cheap whatever the partition holds, where deleting rows costs time, WAL
//! and vacuum in proportion to them.
//!
//! Upgrade: releases before daily partitions made one per calendar month (`events_pYYYYMM`).
//! Those keep working as they are: a day inside an existing monthly partition gets no daily
//! partition of its own (the ranges would overlap), and retention drops a monthly partition once
//! all of its month is older than the cutoff (deleting rows from whichever partition, monthly or
//! daily, straddles the cutoff). So an upgraded database turns daily from its next month on.
//!
//! Partitions are created on demand by the ingest path, outside the ingest transaction and under
//! an advisory lock, so concurrent writers (in this process or others) never race on DDL.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, PgConnection};
use time::{Date, Month, Time};

use super::events::SEARCH_TABLES;
use super::{StoreError, uuid_floor_ms};

/// Advisory lock key serialising partition DDL across processes ("HAISPART").
const PARTITION_LOCK: i64 = 0x4841_4953_5041_5254;

/// One day, in milliseconds.
const DAY_MS: i64 = 86_400_000;

/// Julian day number of 1970-01-01.
const UNIX_EPOCH_JULIAN_DAY: i64 = 2_440_588;

/// Partitions at most this large are counted exactly before they are dropped; larger ones report
/// the planner's row estimate (`reltuples`), because an exact count would read the whole
/// partition and cost more than dropping it.
const EXACT_COUNT_MAX_BYTES: i64 = 64 << 20;

/// Days (since the Unix epoch) known to have a partition, daily or monthly.
pub(crate) type Known = Arc<Mutex<HashSet<i64>>>;

/// What one partition holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Span {
    /// Days since the Unix epoch (`events_pYYYYMMDD`).
    Day(i64),
    /// `year * 12 + month0`: a partition made before daily partitions (`events_pYYYYMM`).
    Month(i32),
}

fn date_of_day(day: i64) -> Date {
    i32::try_from(day + UNIX_EPOCH_JULIAN_DAY)
        .ok()
        .and_then(|j| Date::from_julian_day(j).ok())
        .unwrap_or(Date::MIN)
}

fn ms_of_date(date: Date) -> i64 {
    (date
        .with_time(Time::MIDNIGHT)
        .assume_utc()
        .unix_timestamp_nanos()
        / 1_000_000) as i64
}

fn month_start_ms(key: i32) -> i64 {
    let year = key.div_euclid(12);
    let month = Month::try_from((key.rem_euclid(12) + 1) as u8).unwrap_or(Month::January);
    ms_of_date(Date::from_calendar_date(year, month, 1).unwrap_or(Date::MIN))
}

/// The day (since the Unix epoch) of a millisecond timestamp.
pub(crate) fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

impl Span {
    /// `[start, end)` in milliseconds since the Unix epoch.
    pub(crate) fn range_ms(self) -> (i64, i64) {
        match self {
            Span::Day(d) => (d * DAY_MS, (d + 1) * DAY_MS),
            Span::Month(k) => (month_start_ms(k), month_start_ms(k + 1)),
        }
    }

    pub(crate) fn name(self) -> String {
        match self {
            Span::Day(d) => {
                let date = date_of_day(d);
                format!(
                    "events_p{:04}{:02}{:02}",
                    date.year(),
                    u8::from(date.month()),
                    date.day()
                )
            }
            Span::Month(k) => format!("events_p{:04}{:02}", k.div_euclid(12), k.rem_euclid(12) + 1),
        }
    }

    /// The name of side table `table`'s partition with the same bounds (the side tables are
    /// partitioned exactly like `events`: migrations `0008_events_search`,
    /// `0013_event_search_async`).
    pub(crate) fn side_name(self, table: &str) -> String {
        format!("{table}{}", &self.name()["events".len()..])
    }

    /// `FOR VALUES FROM (…) TO (…)` of this span.
    fn bounds(self) -> String {
        let (lo, hi) = self.range_ms();
        // Only computed UUIDs are spliced in: nothing from a client.
        format!(
            "FOR VALUES FROM ('{}') TO ('{}')",
            uuid_floor_ms(lo),
            uuid_floor_ms(hi)
        )
    }

    /// Parses a partition name back; `None` for a table that is not one of ours.
    pub(crate) fn parse(name: &str) -> Option<Span> {
        let digits = name.strip_prefix("events_p")?;
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let year: i32 = digits.get(..4)?.parse().ok()?;
        let month: u8 = digits.get(4..6)?.parse().ok()?;
        match digits.len() {
            6 => (1..=12)
                .contains(&month)
                .then_some(Span::Month(year * 12 + i32::from(month) - 1)),
            8 => {
                let day: u8 = digits[6..].parse().ok()?;
                let date =
                    Date::from_calendar_date(year, Month::try_from(month).ok()?, day).ok()?;
                Some(Span::Day(
                    i64::from(date.to_julian_day()) - UNIX_EPOCH_JULIAN_DAY,
                ))
            }
            _ => None,
        }
    }

    fn covers_day(self, day: i64) -> bool {
        let (lo, hi) = self.range_ms();
        lo <= day * DAY_MS && (day + 1) * DAY_MS <= hi
    }
}

/// The partitions of `events` in the current schema, with their size in bytes and estimated rows.
async fn list(conn: &mut PgConnection) -> Result<Vec<(Span, i64, i64)>, StoreError> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT c.relname::text, pg_relation_size(c.oid), c.reltuples::int8 FROM pg_inherits i \
         JOIN pg_class c ON c.oid = i.inhrelid \
         JOIN pg_class p ON p.oid = i.inhparent \
         JOIN pg_namespace n ON n.oid = p.relnamespace \
         WHERE p.relname = 'events' AND n.nspname = current_schema()",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(name, bytes, tuples)| Some((Span::parse(&name)?, bytes, tuples)))
        .collect())
}

/// Makes sure a partition holds every day the ids' timestamps (ms) fall in: an existing
/// (daily, or monthly from before the upgrade) one, or a new daily one.
pub(crate) async fn ensure(
    pool: &PgPool,
    known: &Known,
    ids_ms: impl Iterator<Item = i64>,
) -> Result<(), StoreError> {
    let wanted: BTreeSet<i64> = ids_ms.map(day_of).collect();
    let missing: Vec<i64> = {
        let known = known.lock().unwrap_or_else(|p| p.into_inner());
        wanted.into_iter().filter(|d| !known.contains(d)).collect()
    };
    if missing.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(PARTITION_LOCK)
        .execute(&mut *tx)
        .await?;
    let existing: Vec<Span> = list(&mut tx).await?.into_iter().map(|p| p.0).collect();
    for &day in &missing {
        let span = match existing.iter().find(|s| s.covers_day(day)) {
            Some(s) => *s,
            None => {
                let span = Span::Day(day);
                let ddl = format!(
                    "CREATE TABLE IF NOT EXISTS {} PARTITION OF events {}",
                    span.name(),
                    span.bounds()
                );
                sqlx::query(AssertSqlSafe(ddl)).execute(&mut *tx).await?;
                span
            }
        };
        // The side tables' twins; already there for partitions the migrations mirrored.
        for table in SEARCH_TABLES {
            let ddl = format!(
                "CREATE TABLE IF NOT EXISTS {} PARTITION OF {table} {}",
                span.side_name(table),
                span.bounds()
            );
            sqlx::query(AssertSqlSafe(ddl)).execute(&mut *tx).await?;
        }
    }
    tx.commit().await?;
    known
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(missing);
    Ok(())
}

/// What retiring partitions removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dropped {
    pub(crate) partitions: u64,
    pub(crate) events: u64,
    /// Some partition was too large to count: `events` is partly the planner's estimate.
    pub(crate) estimated: bool,
}

/// The name a partition of `table` (`events` or a side table) gets once retention detached it,
/// until [`drop_retired`] drops it.
fn retired_prefix(table: &str) -> String {
    format!("{table}_retired_")
}

/// Detaches every partition (daily or monthly) wholly older than `cutoff_ms` and renames it
/// `events_retired_…` (its side tables' twins alike); [`drop_retired`] then drops them.
///
/// Why not `DROP TABLE` here: dropping a partition deletes its files at commit, while it still
/// holds the lock on `events` that it took to detach it, and deleting gigabytes of files is not
/// free (on a file system mounted with online `discard`, about a second per gigabyte). Ingest
/// would wait all that time. Detaching commits at once; the files go afterwards, with no lock on
/// `events`. The rename frees the name, so the day can get a new partition meanwhile.
pub(crate) async fn retire_older(
    pool: &PgPool,
    known: &Known,
    cutoff_ms: i64,
) -> Result<Dropped, StoreError> {
    let mut out = Dropped::default();
    let parts = list(&mut *pool.acquire().await?).await?;
    for (span, bytes, estimate) in parts {
        if span.range_ms().1 > cutoff_ms {
            continue;
        }
        let name = span.name();
        let rows = if bytes <= EXACT_COUNT_MAX_BYTES || estimate < 0 {
            sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {name}")))
                .fetch_one(pool)
                .await?
        } else {
            out.estimated = true;
            estimate
        };
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(PARTITION_LOCK)
            .execute(&mut *tx)
            .await?;
        let suffix = &name["events_".len()..];
        let mut ddl = vec![
            format!("ALTER TABLE events DETACH PARTITION {name}"),
            format!(
                "ALTER TABLE {name} RENAME TO {}{suffix}",
                retired_prefix("events")
            ),
        ];
        for table in SEARCH_TABLES {
            let side = span.side_name(table);
            // Monthly partitions from before a side table existed may have no twin.
            let has_side: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                .bind(&side)
                .fetch_one(&mut *tx)
                .await?;
            if has_side {
                ddl.push(format!("ALTER TABLE {table} DETACH PARTITION {side}"));
                ddl.push(format!(
                    "ALTER TABLE {side} RENAME TO {}{suffix}",
                    retired_prefix(table)
                ));
            }
        }
        for ddl in ddl {
            sqlx::query(AssertSqlSafe(ddl)).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        let (lo, hi) = span.range_ms();
        known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|d| !(lo <= d * DAY_MS && d * DAY_MS < hi));
        out.partitions += 1;
        out.events += rows as u64;
    }
    Ok(out)
}

/// Drops the partitions retention detached, including any a stopped process left behind.
pub(crate) async fn drop_retired(pool: &PgPool) -> Result<u64, StoreError> {
    let patterns: Vec<String> = std::iter::once("events")
        .chain(SEARCH_TABLES)
        .map(|t| format!("{}%", retired_prefix(t).replace('_', "\\_")))
        .collect();
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relname LIKE ANY ($1)",
    )
    .bind(&patterns)
    .fetch_all(pool)
    .await?;
    for name in &names {
        // Names come from the catalogue and match our prefix; nothing from a client.
        sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {name}")))
            .execute(pool)
            .await?;
    }
    Ok(names.len() as u64)
}

/// Whether an error is "no partition found for row" (a partition dropped by another process).
pub(crate) fn is_missing_partition(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23514"))
}

/// The day of an `OffsetDateTime` (tests).
#[cfg(test)]
fn day_of_time(t: time::OffsetDateTime) -> i64 {
    day_of((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        // 2026-11-28T00:00:00Z
        let ms = 1_795_824_000_000;
        let day = Span::Day(day_of(ms));
        assert_eq!(day.name(), "events_p20261128");
        assert_eq!(Span::parse("events_p20261128"), Some(day));
        let (lo, hi) = day.range_ms();
        assert!(lo <= ms && ms < hi && hi - lo == DAY_MS);
        let month = Span::parse("events_p202611").unwrap();
        assert_eq!(month.name(), "events_p202611");
        assert!(month.covers_day(day_of(ms)));
        assert!(
            !month.covers_day(day_of(ms) + 3),
            "December is not November"
        );
        assert_eq!(Span::Month(2026 * 12 + 12).name(), "events_p202701");
        assert_eq!(Span::parse("events_p2026x1"), None);
        assert_eq!(Span::parse("events_p20260230"), None, "no such date");
        assert_eq!(Span::parse("events_default"), None);
        let before_epoch = time::OffsetDateTime::from_unix_timestamp(-43_200).unwrap();
        assert_eq!(
            Span::Day(day_of_time(before_epoch)).name(),
            "events_p19691231"
        );
    }
}
