//! Judgements that age out: correlation findings, policy violations, threat matches and the threat service's
//! country roll-ups are kept while they keep being seen, and deleted once nothing renewed them
//! for `findings_retention_days` (events have their own retention, by partition; see
//! `partitions`). Each service expires its own tables ([`Aging`]) on the retention schedule.
//!
//! Deletes run in batches of [`BATCH`] rows, each its own statement, so a first pass over a
//! large backlog never holds one long transaction (on PostgreSQL a long transaction holds back
//! every durable consumer; see `store::bus`).

use super::StoreFuture;

/// A table whose rows age out by a time column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aging {
    pub table: &'static str,
    /// The primary key's columns (a delete batch selects them).
    pub key: &'static str,
    /// Microseconds since the epoch of the last time the row was seen or renewed.
    pub seen: &'static str,
}

/// Correlation findings not seen again (`hais_correlation::Finding::last_seen`).
pub const CORRELATION_FINDINGS: Aging = Aging {
    table: "correlation_findings",
    key: "id",
    seen: "last_seen_us",
};

/// Threat matches not seen again.
pub const THREAT_MATCHES: Aging = Aging {
    table: "threat_matches",
    key: "mkey",
    seen: "last_seen_us",
};

/// Policy violations (enforced and audit) not seen again.
pub const POLICY_VIOLATIONS: Aging = Aging {
    table: "policy_violations",
    key: "id",
    seen: "last_seen_us",
};

/// Hourly events per country and identity, by the hour.
pub const THREAT_GEO: Aging = Aging {
    table: "threat_geo",
    key: "hour_us, country, identity",
    seen: "hour_us",
};

/// Rows one delete statement removes at most.
pub const BATCH: i64 = 5_000;

/// Deletes aged-out rows.
pub trait ExpiryStore {
    /// Deletes the rows of `what` last seen before `before_us`; returns how many.
    fn expire<'a>(&'a self, what: &'a Aging, before_us: i64) -> StoreFuture<'a, u64>;
}

macro_rules! impl_expiry_store {
    ($ty:ty) => {
        impl ExpiryStore for $ty {
            fn expire<'a>(&'a self, what: &'a Aging, before_us: i64) -> StoreFuture<'a, u64> {
                Box::pin(async move {
                    let Aging { table, key, seen } = *what;
                    let sql = format!(
                        "DELETE FROM {table} WHERE ({key}) IN \
                         (SELECT {key} FROM {table} WHERE {seen} < $1 LIMIT $2)"
                    );
                    let mut deleted = 0;
                    loop {
                        let n = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                            .bind(before_us)
                            .bind(BATCH)
                            .execute(self.writer())
                            .await?
                            .rows_affected();
                        deleted += n;
                        if n < BATCH as u64 {
                            return Ok(deleted);
                        }
                    }
                })
            }
        }
    };
}

impl_expiry_store!(super::sqlite::SqliteStore);
impl_expiry_store!(super::postgres::PgStore);
