//! Storage of the identity service (migration `0004_identity`): registration entries, the
//! per-identity roll-ups of the inventory, and the record of tied matches (conflicts).
//!
//! Organised like [`super::spire`]: the SQL is the same for both backends (`$n` placeholders work
//! in SQLite too; every column is `text` or a 64-bit integer), so [`impl_identity_store!`] writes
//! the implementation once and expands it for [`SqliteStore`](super::sqlite::SqliteStore) and
//! [`PgStore`](super::postgres::PgStore).
//!
//! Roll-ups: the identity service contributes to the roll-up stage like the ja4 service does
//! ([`IdentityRollups`], a [`RollupContributor`]): ingest records, with the fingerprint deltas,
//! per identity the events, hosts, agents and destinations; the stage folds them into
//! `identity_rollups` in the same transaction as the fingerprint roll-ups, so they are exact and
//! exactly once like those. Per identity × fingerprint figures are the
//! `fingerprint_dims` rows with dim `identity`, which the stage already maintains. Reads of the
//! inventory fold what is pending first (read-your-writes, like every roll-up read).

use std::collections::BTreeMap;

use hais_shared::event::FingerprintEvent;
use hais_shared::registration::RegistrationEntry;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::rollup::{
    DeltaKind, Extract, Measure, Part, Retention, RollupContributor, Seen, extract_subject,
};
use super::sql::{Dialect, upsert_seen};
use super::{DimList, StoreError, StoreFuture};

/// A stored registration entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EntryRecord {
    /// UUIDv7.
    pub id: String,
    pub spiffe_id: String,
    /// Sorted, distinct, validated selectors (`type:key:value`).
    pub selectors: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Who created it: a username, a service subject, or `spire-import:<user>`.
    pub created_by: String,
    pub created_us: i64,
}

impl EntryRecord {
    /// The stored form of a validated entry.
    pub fn new(e: &RegistrationEntry, created_by: &str, created_us: i64) -> EntryRecord {
        EntryRecord {
            id: e.id.clone(),
            spiffe_id: e.spiffe_id.to_string(),
            selectors: e.selectors.iter().map(ToString::to_string).collect(),
            description: e.description.clone(),
            created_by: created_by.to_owned(),
            created_us,
        }
    }

    /// Back to a matchable entry; stored rows were validated on the way in.
    pub fn to_entry(&self) -> Result<RegistrationEntry, StoreError> {
        let (spiffe_id, selectors) =
            hais_shared::registration::validate(&self.spiffe_id, &self.selectors)
                .map_err(|e| StoreError::Corrupt(format!("registration entry {}: {e}", self.id)))?;
        Ok(RegistrationEntry {
            id: self.id.clone(),
            spiffe_id,
            selectors,
            description: self.description.clone(),
        })
    }

    /// The uniqueness key: hex SHA-256 of the SPIFFE ID and the selector set.
    fn key(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.spiffe_id.as_bytes());
        for s in &self.selectors {
            h.update(b"\n");
            h.update(s.as_bytes());
        }
        hex::encode(h.finalize())
    }
}

/// How many fingerprints of each method an identity presented, and in how many events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MethodCount {
    /// Distinct fingerprint values.
    pub fingerprints: i64,
    /// Events that carried one of them.
    pub events: i64,
}

/// One fingerprint an identity presented.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IdentityFingerprint {
    pub value: String,
    pub first_seen_us: i64,
    pub last_seen_us: i64,
    pub count: i64,
}

/// One workload identity in the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IdentitySummary {
    pub spiffe_id: String,
    pub first_seen_us: i64,
    pub last_seen_us: i64,
    /// Stored events attributed to it.
    pub count: i64,
    /// Per method (`ja4`, `ja4h`, `ja4t`, …).
    pub methods: BTreeMap<String, MethodCount>,
    /// Hosts it ran on (most frequent first; [`LIST_DIM_LIMIT`] in a list, more in the detail).
    pub hosts: DimList,
    /// TLS server names, or `ip:port` when the client sent none.
    pub destinations: DimList,
    /// Events whose match tied with an entry naming another identity (see the detail's
    /// `conflicts`).
    pub conflicts: i64,
}

/// Everything the inventory knows about one identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IdentityDetail {
    #[serde(flatten)]
    pub summary: IdentitySummary,
    pub agents: DimList,
    /// Fingerprints by method, most frequent first (at most [`DETAIL_FINGERPRINT_LIMIT`] in all).
    pub fingerprints: BTreeMap<String, Vec<IdentityFingerprint>>,
    /// Distinct fingerprints in all.
    pub fingerprints_total: i64,
    /// The other identities its events tied with (`value`: the other SPIFFE ID).
    pub conflicts_with: DimList,
}

/// Tied matches to record: (SPIFFE ID given, other SPIFFE ID) → seen.
pub type ConflictDeltas = BTreeMap<(String, String), Seen>;

/// Values of each dimension an inventory list item shows.
pub const LIST_DIM_LIMIT: i64 = 10;
/// Values of each dimension an identity detail shows.
pub const DETAIL_DIM_LIMIT: i64 = 100;
/// Fingerprints an identity detail lists.
pub const DETAIL_FINGERPRINT_LIMIT: i64 = 1000;

/// Storage of entries and the inventory. A supertrait of [`super::Store`], so every store has it.
pub trait IdentityStore: Send + Sync {
    /// Inserts an entry. `Ok(Err(id))`: an entry with the same SPIFFE ID and selectors exists
    /// (its id); nothing was written.
    fn insert_entry<'a>(&'a self, e: &'a EntryRecord) -> StoreFuture<'a, Result<(), String>>;

    /// Entries in id order (= creation order), after `after`, at most `limit`.
    fn list_entries<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: u32,
    ) -> StoreFuture<'a, Vec<EntryRecord>>;

    fn get_entry<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<EntryRecord>>;

    /// False when there was no such entry.
    fn delete_entry<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool>;

    /// Replaces the SPIFFE ID, selectors and description of entry `e.id` (its creator and age
    /// stay: age breaks ties between equally specific entries). `Ok(Ok(false))` when there is no
    /// such entry; `Ok(Err(id))` when entry `id` already has this SPIFFE ID and selectors.
    fn update_entry<'a>(&'a self, e: &'a EntryRecord) -> StoreFuture<'a, Result<bool, String>>;

    /// Every entry (the resolver's snapshot), in id order.
    fn all_entries(&self) -> StoreFuture<'_, Vec<EntryRecord>>;

    /// Adds tied matches of newly stored events to `identity_conflicts`.
    fn record_conflicts<'a>(&'a self, c: &'a ConflictDeltas) -> StoreFuture<'a, ()>;

    /// The inventory: identities in SPIFFE ID (byte) order after `after`, at most `limit`.
    fn list_identities<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: u32,
    ) -> StoreFuture<'a, Vec<IdentitySummary>>;

    fn identity_detail<'a>(&'a self, spiffe_id: &'a str)
    -> StoreFuture<'a, Option<IdentityDetail>>;
}

/// Contributes the per-identity roll-ups (`identity_rollups`) to the roll-up stage: per event
/// whose workload has a SPIFFE ID, the identity itself, its host, agent and destination (the TLS
/// server name, or `ip:port` when the client sent none).
#[derive(Debug)]
pub struct IdentityRollups;

static KINDS: [DeltaKind; 1] = [DeltaKind {
    table: "identity_rollups",
    key: &[
        ("spiffe_id", Part::Str),
        ("dim", Part::Str),
        ("dim_value", Part::Str),
    ],
    measure: Measure::Seen,
    derived: None,
}];

/// Retention of the identity roll-ups and of the tied matches: rows not seen since the cutoff go,
/// as for the fingerprint roll-ups.
static RETENTION: [Retention; 2] = [
    Retention {
        table: "identity_rollups",
        column: "last_seen_us",
        bucket_us: 1,
        reported: false,
    },
    Retention {
        table: "identity_conflicts",
        column: "last_seen_us",
        bucket_us: 1,
        reported: false,
    },
];

impl RollupContributor for IdentityRollups {
    fn kinds(&self) -> &'static [DeltaKind] {
        &KINDS
    }

    fn retention(&self) -> &'static [Retention] {
        &RETENTION
    }

    fn extract<'a>(&self, events: &[&'a FingerprintEvent], out: &mut Extract<'_, 'a>) {
        extract_subject(events, out, 0, |e| e.workload.spiffe_id.as_deref());
    }
}

/// Writes tied matches (see [`IdentityStore::record_conflicts`]).
pub(crate) async fn write_conflicts<DB: Dialect>(
    conn: &mut DB::Connection,
    c: &ConflictDeltas,
) -> Result<(), StoreError> {
    let rows: Vec<([&str; 2], Seen)> = c
        .iter()
        .map(|((a, b), &s)| ([a.as_str(), b.as_str()], s))
        .collect();
    upsert_seen::<DB, 2>(
        conn,
        "identity_conflicts",
        ["spiffe_id", "other_spiffe_id"],
        &rows,
    )
    .await
}

/// Columns of [`EntryRecord`], in the order [`entry_from_row`] reads them.
pub(crate) const ENTRY_COLUMNS: &str =
    "id, spiffe_id, selectors, description, created_by, created_us";

/// One `ENTRY_COLUMNS` row: (id, spiffe_id, selectors, description, created_by, created_us).
pub(crate) type EntryRow = (String, String, String, Option<String>, String, i64);

pub(crate) fn entry_from_row(r: EntryRow) -> EntryRecord {
    let (id, spiffe_id, selectors, description, created_by, created_us) = r;
    EntryRecord {
        id,
        spiffe_id,
        selectors: selectors.lines().map(str::to_owned).collect(),
        description,
        created_by,
        created_us,
    }
}

/// The stored form of an entry's selectors and its uniqueness key.
pub(crate) fn entry_columns(e: &EntryRecord) -> (String, String) {
    (e.selectors.join("\n"), e.key())
}

/// A dimension list from `(value, first, last, count)` rows and a total.
pub(crate) fn dim_list(total: i64, rows: Vec<(String, i64, i64, i64)>) -> DimList {
    DimList {
        total,
        top: rows
            .into_iter()
            .map(
                |(value, first_seen_us, last_seen_us, count)| super::DimEntry {
                    value,
                    first_seen_us,
                    last_seen_us,
                    count,
                },
            )
            .collect(),
    }
}

/// Implements [`IdentityStore`] for a store type, given how to reach its write and read pools.
/// Expanded once per backend; the SQL is shared.
macro_rules! impl_identity_store {
    ($ty:ty, db = $db:ty, write = |$w:ident| $wexpr:expr, read = |$r:ident| $rexpr:expr) => {
        impl $ty {
            /// One dimension (`host`, `agent`, `destination`) of a subject of a roll-up table
            /// keyed (subject, dim, dim value), `identity_rollups` or `workload_rollups`: most
            /// frequent first.
            pub(crate) async fn subject_dim(
                pool: &sqlx::Pool<$db>,
                table: &str,
                column: &str,
                subject: &str,
                dim: &str,
                limit: i64,
            ) -> Result<$crate::store::DimList, $crate::store::StoreError> {
                let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT count(*) FROM {table} WHERE {column} = $1 AND dim = $2"
                )))
                .bind(subject)
                .bind(dim)
                .fetch_one(pool)
                .await?;
                let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT dim_value, first_seen_us, last_seen_us, count FROM {table} \
                     WHERE {column} = $1 AND dim = $2 ORDER BY count DESC, dim_value LIMIT $3"
                )))
                .bind(subject)
                .bind(dim)
                .bind(limit)
                .fetch_all(pool)
                .await?;
                Ok($crate::store::identity::dim_list(total, rows))
            }

            /// The fingerprints of a subject (`fingerprint_dims` rows of dimension `dim`), by
            /// method, most frequent first, at most [`DETAIL_FINGERPRINT_LIMIT`] in all.
            pub(crate) async fn subject_fingerprints(
                pool: &sqlx::Pool<$db>,
                dim: &str,
                subject: &str,
            ) -> Result<
                std::collections::BTreeMap<String, Vec<$crate::store::identity::IdentityFingerprint>>,
                $crate::store::StoreError,
            > {
                let fps: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
                    "SELECT method, value, first_seen_us, last_seen_us, count \
                     FROM fingerprint_dims WHERE dim = $1 AND dim_value = $2 \
                     ORDER BY count DESC, method, value LIMIT $3",
                )
                .bind(dim)
                .bind(subject)
                .bind($crate::store::identity::DETAIL_FINGERPRINT_LIMIT)
                .fetch_all(pool)
                .await?;
                let mut out: std::collections::BTreeMap<
                    String,
                    Vec<$crate::store::identity::IdentityFingerprint>,
                > = std::collections::BTreeMap::new();
                for (method, value, first_seen_us, last_seen_us, count) in fps {
                    out.entry(method)
                        .or_default()
                        .push($crate::store::identity::IdentityFingerprint {
                            value,
                            first_seen_us,
                            last_seen_us,
                            count,
                        });
                }
                Ok(out)
            }

            async fn identity_dim(
                pool: &sqlx::Pool<$db>,
                spiffe_id: &str,
                dim: &str,
                limit: i64,
            ) -> Result<$crate::store::DimList, $crate::store::StoreError> {
                Self::subject_dim(pool, "identity_rollups", "spiffe_id", spiffe_id, dim, limit).await
            }

            /// The summary of one identity whose own roll-up row is `(first, last, count)`.
            async fn identity_summary(
                pool: &sqlx::Pool<$db>,
                spiffe_id: String,
                (first_seen_us, last_seen_us, count): (i64, i64, i64),
                limit: i64,
            ) -> Result<$crate::store::identity::IdentitySummary, $crate::store::StoreError>
            {
                use $crate::store::rollup::{DIM_DESTINATION, DIM_HOST, DIM_IDENTITY};
                let methods: Vec<(String, i64, i64)> = sqlx::query_as(
                    "SELECT method, count(*), CAST(sum(count) AS BIGINT) FROM fingerprint_dims \
                     WHERE dim = $1 AND dim_value = $2 GROUP BY method ORDER BY method",
                )
                .bind(DIM_IDENTITY)
                .bind(&spiffe_id)
                .fetch_all(pool)
                .await?;
                let conflicts: i64 = sqlx::query_scalar(
                    "SELECT CAST(coalesce(sum(count), 0) AS BIGINT) FROM identity_conflicts \
                     WHERE spiffe_id = $1",
                )
                .bind(&spiffe_id)
                .fetch_one(pool)
                .await?;
                Ok($crate::store::identity::IdentitySummary {
                    hosts: Self::identity_dim(pool, &spiffe_id, DIM_HOST, limit).await?,
                    destinations: Self::identity_dim(pool, &spiffe_id, DIM_DESTINATION, limit).await?,
                    spiffe_id,
                    first_seen_us,
                    last_seen_us,
                    count,
                    methods: methods
                        .into_iter()
                        .map(|(m, fingerprints, events)| {
                            (
                                m,
                                $crate::store::identity::MethodCount {
                                    fingerprints,
                                    events,
                                },
                            )
                        })
                        .collect(),
                    conflicts,
                })
            }
        }

        impl $crate::store::identity::IdentityStore for $ty {
            fn insert_entry<'a>(
                &'a self,
                e: &'a $crate::store::identity::EntryRecord,
            ) -> $crate::store::StoreFuture<'a, Result<(), String>> {
                let $w = self;
                Box::pin(async move {
                    let (selectors, key) = $crate::store::identity::entry_columns(e);
                    let inserted = sqlx::query(
                        "INSERT INTO registration_entries (id, spiffe_id, selectors, \
                         description, created_by, created_us, key_sha256) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (key_sha256) DO NOTHING",
                    )
                    .bind(&e.id)
                    .bind(&e.spiffe_id)
                    .bind(selectors)
                    .bind(&e.description)
                    .bind(&e.created_by)
                    .bind(e.created_us)
                    .bind(&key)
                    .execute($wexpr)
                    .await?
                    .rows_affected()
                        == 1;
                    if inserted {
                        return Ok(Ok(()));
                    }
                    let existing: Option<String> = sqlx::query_scalar(
                        "SELECT id FROM registration_entries WHERE key_sha256 = $1",
                    )
                    .bind(&key)
                    .fetch_optional($wexpr)
                    .await?;
                    Ok(Err(existing.unwrap_or_default()))
                })
            }

            fn list_entries<'a>(
                &'a self,
                after: Option<&'a str>,
                limit: u32,
            ) -> $crate::store::StoreFuture<'a, Vec<$crate::store::identity::EntryRecord>> {
                let $r = self;
                Box::pin(async move {
                    let sql = format!(
                        "SELECT {} FROM registration_entries WHERE id > $1 ORDER BY id LIMIT $2",
                        $crate::store::identity::ENTRY_COLUMNS
                    );
                    let rows: Vec<$crate::store::identity::EntryRow> =
                        sqlx::query_as(sqlx::AssertSqlSafe(sql))
                            .bind(after.unwrap_or(""))
                            .bind(i64::from(limit))
                            .fetch_all($rexpr)
                            .await?;
                    Ok(rows
                        .into_iter()
                        .map($crate::store::identity::entry_from_row)
                        .collect())
                })
            }

            fn get_entry<'a>(
                &'a self,
                id: &'a str,
            ) -> $crate::store::StoreFuture<'a, Option<$crate::store::identity::EntryRecord>>
            {
                let $r = self;
                Box::pin(async move {
                    let sql = format!(
                        "SELECT {} FROM registration_entries WHERE id = $1",
                        $crate::store::identity::ENTRY_COLUMNS
                    );
                    let row: Option<$crate::store::identity::EntryRow> =
                        sqlx::query_as(sqlx::AssertSqlSafe(sql))
                            .bind(id)
                            .fetch_optional($rexpr)
                            .await?;
                    Ok(row.map($crate::store::identity::entry_from_row))
                })
            }

            fn delete_entry<'a>(&'a self, id: &'a str) -> $crate::store::StoreFuture<'a, bool> {
                let $w = self;
                Box::pin(async move {
                    Ok(sqlx::query("DELETE FROM registration_entries WHERE id = $1")
                        .bind(id)
                        .execute($wexpr)
                        .await?
                        .rows_affected()
                        == 1)
                })
            }

            fn update_entry<'a>(
                &'a self,
                e: &'a $crate::store::identity::EntryRecord,
            ) -> $crate::store::StoreFuture<'a, Result<bool, String>> {
                let $w = self;
                Box::pin(async move {
                    let (selectors, key) = $crate::store::identity::entry_columns(e);
                    let twin: Option<String> = sqlx::query_scalar(
                        "SELECT id FROM registration_entries WHERE key_sha256 = $1 AND id <> $2",
                    )
                    .bind(&key)
                    .bind(&e.id)
                    .fetch_optional($wexpr)
                    .await?;
                    if let Some(twin) = twin {
                        return Ok(Err(twin));
                    }
                    let updated = sqlx::query(
                        "UPDATE registration_entries SET spiffe_id = $1, selectors = $2, \
                         description = $3, key_sha256 = $4 WHERE id = $5",
                    )
                    .bind(&e.spiffe_id)
                    .bind(selectors)
                    .bind(&e.description)
                    .bind(&key)
                    .bind(&e.id)
                    .execute($wexpr)
                    .await;
                    match updated {
                        Ok(r) => Ok(Ok(r.rows_affected() == 1)),
                        // A twin created between the check and the update.
                        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                            Ok(Err(String::new()))
                        }
                        Err(e) => Err(e.into()),
                    }
                })
            }

            fn all_entries(
                &self,
            ) -> $crate::store::StoreFuture<'_, Vec<$crate::store::identity::EntryRecord>> {
                // A read started after a write's commit sees it (SQLite: WAL), so a reload right
                // after a change needs not wait for the single writer.
                $crate::store::identity::IdentityStore::list_entries(self, None, u32::MAX)
            }

            fn record_conflicts<'a>(
                &'a self,
                c: &'a $crate::store::identity::ConflictDeltas,
            ) -> $crate::store::StoreFuture<'a, ()> {
                let $w = self;
                Box::pin(async move {
                    if c.is_empty() {
                        return Ok(());
                    }
                    let mut conn = ($wexpr).acquire().await?;
                    $crate::store::identity::write_conflicts::<$db>(&mut *conn, c).await
                })
            }

            fn list_identities<'a>(
                &'a self,
                after: Option<&'a str>,
                limit: u32,
            ) -> $crate::store::StoreFuture<'a, Vec<$crate::store::identity::IdentitySummary>>
            {
                Box::pin(async move {
                    // Folds what is pending first (read-your-writes); may answer a replica.
                    let pool = self.settled_reader().await?;
                    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
                        "SELECT spiffe_id, first_seen_us, last_seen_us, count \
                         FROM identity_rollups WHERE dim = '' AND spiffe_id > $1 \
                         ORDER BY spiffe_id LIMIT $2",
                    )
                    .bind(after.unwrap_or(""))
                    .bind(i64::from(limit))
                    .fetch_all(pool)
                    .await?;
                    let mut out = Vec::with_capacity(rows.len());
                    for (id, first, last, count) in rows {
                        out.push(
                            Self::identity_summary(
                                pool,
                                id,
                                (first, last, count),
                                $crate::store::identity::LIST_DIM_LIMIT,
                            )
                            .await?,
                        );
                    }
                    Ok(out)
                })
            }

            fn identity_detail<'a>(
                &'a self,
                spiffe_id: &'a str,
            ) -> $crate::store::StoreFuture<'a, Option<$crate::store::identity::IdentityDetail>>
            {
                use $crate::store::identity::DETAIL_DIM_LIMIT;
                use $crate::store::rollup::{DIM_AGENT, DIM_IDENTITY};
                Box::pin(async move {
                    // Folds what is pending first (read-your-writes); may answer a replica.
                    let pool = self.settled_reader().await?;
                    let row: Option<(i64, i64, i64)> = sqlx::query_as(
                        "SELECT first_seen_us, last_seen_us, count FROM identity_rollups \
                         WHERE spiffe_id = $1 AND dim = ''",
                    )
                    .bind(spiffe_id)
                    .fetch_optional(pool)
                    .await?;
                    let Some(row) = row else { return Ok(None) };
                    let summary =
                        Self::identity_summary(pool, spiffe_id.to_owned(), row, DETAIL_DIM_LIMIT)
                        .await?;
                    let fingerprints =
                        Self::subject_fingerprints(pool, DIM_IDENTITY, spiffe_id).await?;
                    let conflicts_total: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM identity_conflicts WHERE spiffe_id = $1",
                    )
                    .bind(spiffe_id)
                    .fetch_one(pool)
                    .await?;
                    let conflicts: Vec<(String, i64, i64, i64)> = sqlx::query_as(
                        "SELECT other_spiffe_id, first_seen_us, last_seen_us, count \
                         FROM identity_conflicts WHERE spiffe_id = $1 \
                         ORDER BY count DESC, other_spiffe_id LIMIT $2",
                    )
                    .bind(spiffe_id)
                    .bind(DETAIL_DIM_LIMIT)
                    .fetch_all(pool)
                    .await?;
                    Ok(Some($crate::store::identity::IdentityDetail {
                        fingerprints_total: summary.methods.values().map(|m| m.fingerprints).sum(),
                        summary,
                        agents: Self::identity_dim(pool, spiffe_id, DIM_AGENT, DETAIL_DIM_LIMIT)
                            .await?,
                        fingerprints,
                        conflicts_with: $crate::store::identity::dim_list(
                            conflicts_total,
                            conflicts,
                        ),
                    }))
                })
            }
        }
    };
}

impl_identity_store!(
    super::sqlite::SqliteStore,
    db = sqlx::Sqlite,
    write = |s| s.writer(),
    read = |s| s.reader()
);
impl_identity_store!(
    super::postgres::PgStore,
    db = sqlx::Postgres,
    write = |s| s.writer(),
    read = |s| s.reader()
);

#[cfg(test)]
mod tests {
    use super::super::rollup::{BatchDeltas, Deltas, KeyVal, Rollups};
    use hais_shared::event::{Fingerprint, FingerprintEvent, Flow, Transport};
    use hais_shared::fingerprint::Method;

    fn ev(host: &str, sni: Option<&str>, id: Option<&str>) -> FingerprintEvent {
        let mut e = FingerprintEvent::new(
            "a1",
            host,
            Flow {
                src_ip: "10.0.0.1".parse().unwrap(),
                src_port: 1,
                dst_ip: "2001:db8::2".parse().unwrap(),
                dst_port: 443,
                transport: Transport::Tcp,
            },
        );
        e.server_name = sni.map(str::to_owned);
        e.workload.spiffe_id = id.map(str::to_owned);
        e.fingerprints.push(Fingerprint {
            method: Method::Ja4,
            value: "x_y_z".into(),
        });
        e
    }

    #[test]
    fn identity_deltas_round_trip_and_merge() {
        let a = ev("h1", Some("db.example"), Some("spiffe://t/a"));
        let b = ev("h2", None, Some("spiffe://t/a"));
        let c = ev("h1", None, None);
        let one = BatchDeltas::from_events([&a, &b, &c]);
        let two = BatchDeltas::from_events([&b]);
        let (d1, d2) = (
            Deltas::decode(&one.encode()).unwrap(),
            Deltas::decode(&two.encode()).unwrap(),
        );
        let mut r = Rollups::default();
        r.merge(&d1);
        r.merge(&d2);
        // The identity kind is the section after the three fingerprint kinds.
        let ids = &r.sections[3];
        let count = |dim: &str, v: &str| {
            ids.get(&[
                KeyVal::Str("spiffe://t/a"),
                KeyVal::Str(dim),
                KeyVal::Str(v),
                KeyVal::None,
            ])
            .map(|s| s.count)
        };
        assert_eq!(count("", ""), Some(3));
        assert_eq!(count("host", "h1"), Some(1));
        assert_eq!(count("host", "h2"), Some(2));
        assert_eq!(count("agent", "a1"), Some(3));
        assert_eq!(count("destination", "db.example"), Some(1));
        assert_eq!(count("destination", "[2001:db8::2]:443"), Some(2));
        assert_eq!(ids.len(), 6, "{ids:?}");
    }
}
