//! Storage of the policy service (migration `0017_policy`): the versioned policy sets (every
//! change a new version with who, when, a comment and a diff; the highest version is the active
//! set, a rollback is a new version) and the violations found on the stream (one row per
//! identity × rule × destination × mode, its count and latest explained decision updated on
//! recurrence).
//!
//! The consumer's violations, the [`Detection`]s of those that are not in audit mode (on the
//! durable topic `detections`) and its checkpoint commit in one transaction
//! ([`PolicyStore::policy_commit`]). The SQL is shared by both backends ([`impl_policy_store!`]).

use hais_policy::{Decision, Source};
use hais_shared::detection::{Detection, Severity};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::bus::Checkpoint;
use super::{StoreError, StoreFuture};

pub(crate) use super::correlation::{decode, encode};

/// One version of the policy set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyVersion {
    pub version: i64,
    /// Who made it: a user name, or `directory:<path>` for the `.cedar` directory.
    pub author: String,
    pub comment: String,
    /// `api`, `directory` or `rollback`.
    pub origin: String,
    /// Unified diff from the previous version's sources.
    pub diff: String,
    /// Policies in the set.
    pub policies: i64,
    /// When it was made (µs since the Unix epoch).
    pub created_us: i64,
    /// The sources (`[{name, text}]`); left out of version lists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub sources: Vec<Source>,
}

/// A new version to store.
#[derive(Debug, Clone)]
pub struct NewVersion<'a> {
    pub sources: &'a [Source],
    pub author: &'a str,
    pub comment: &'a str,
    pub origin: &'a str,
    pub diff: &'a str,
    pub policies: i64,
    /// The version the change was made over: refused ([`StoreError::Conflict`]) if another
    /// change was stored since. `None`: over whatever is current.
    pub expected: Option<i64>,
}

/// A violation as stored and listed: the latest explained decision, and its counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Violation {
    /// UUIDv7, kept on recurrence (the alert service's detection carries it).
    pub id: Uuid,
    pub identity: String,
    /// The deciding policies' ids joined by `+`, or `default-deny`.
    pub rule: String,
    /// `alert` or `deny` (enforced), or `audit` (an audit-mode forbid: never alerted).
    pub outcome: String,
    #[schema(value_type = String, example = "high")]
    pub severity: Severity,
    /// The policy-set version that decided (the latest occurrence's).
    pub version: i64,
    /// The connection kind (the request's action).
    pub action: String,
    /// `ip:port` of the far side.
    pub destination: String,
    pub sni: Option<String>,
    pub count: u64,
    pub first_seen_us: i64,
    pub last_seen_us: i64,
    /// The latest events that showed it, most recent last (at most 20).
    pub event_ids: Vec<Uuid>,
    /// The latest occurrence's explained decision (deciding policies, the fields they read
    /// and their values).
    #[schema(value_type = Object)]
    pub decision: Decision,
}

/// A violation found in a batch, to merge with the stored one of the same key.
#[derive(Debug, Clone)]
pub struct ViolationDraft {
    pub key: String,
    pub violation: Violation,
    /// What the alert service gets; `None` for audit-mode violations.
    pub detection: Option<Detection>,
}

/// The violations list's filters; all given must hold. Newest (highest id) first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViolationQuery {
    pub identity: Option<String>,
    pub outcome: Option<String>,
    /// Seen last at or after.
    pub since_us: Option<i64>,
    /// Ids below this one (the previous page's last).
    pub before: Option<String>,
    pub limit: u32,
}

/// Whether `e` is a unique-key violation (two writers took the same new version number).
fn is_unique_violation(e: &StoreError) -> bool {
    matches!(e, StoreError::Database(d) if d.as_database_error().is_some_and(|d| d.is_unique_violation()))
}

/// [`StoreError::Conflict`] for a version race.
pub(crate) fn version_conflict(e: StoreError) -> StoreError {
    if is_unique_violation(&e) {
        StoreError::Conflict("another policy change was stored at the same time; retry".into())
    } else {
        e
    }
}

/// Storage of the policy service. A supertrait of [`super::Store`].
pub trait PolicyStore: Send + Sync {
    /// Stores a new version (the current one + 1) and returns its number.
    fn policy_put_version<'a>(&'a self, v: &'a NewVersion<'a>, now_us: i64)
    -> StoreFuture<'a, i64>;

    /// The current version's number, 0 when none was ever stored (cheap: processes poll it).
    fn policy_latest_version(&self) -> StoreFuture<'_, i64>;

    /// One version with its sources.
    fn policy_version(&self, version: i64) -> StoreFuture<'_, Option<PolicyVersion>>;

    /// Versions below `before` (all when `None`), newest first, without their sources.
    fn policy_versions(
        &self,
        before: Option<i64>,
        limit: u32,
    ) -> StoreFuture<'_, Vec<PolicyVersion>>;

    /// Writes a batch's violations (merged with the stored ones of the same key: id and first
    /// seen kept, counts added), publishes the detections of the enforced ones on `detections`,
    /// and commits the consumer checkpoint `cp`, in one transaction.
    fn policy_commit<'a>(
        &'a self,
        drafts: &'a [ViolationDraft],
        cp: &'a Checkpoint,
        now_us: i64,
    ) -> StoreFuture<'a, ()>;

    fn policy_violations<'a>(&'a self, q: &'a ViolationQuery) -> StoreFuture<'a, Vec<Violation>>;
}

/// `draft` merged with the stored row of its key (`id`, `count`, `first_seen_us`).
pub(crate) fn merge(draft: &ViolationDraft, stored: Option<&(String, i64, i64)>) -> ViolationDraft {
    let mut d = draft.clone();
    if let Some((id, count, first)) = stored {
        let id = id.parse().unwrap_or(d.violation.id);
        let v = &mut d.violation;
        v.id = id;
        v.count = (*count as u64).saturating_add(v.count);
        v.first_seen_us = v.first_seen_us.min(*first);
        if let Some(det) = &mut d.detection {
            det.id = id;
            det.count = v.count;
            det.first_seen =
                time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(v.first_seen_us) * 1000)
                    .unwrap_or(det.first_seen);
        }
    }
    d
}

/// A `policy_versions` row as [`version_columns!`] selects it.
pub(crate) type VersionRow = (i64, String, String, String, String, String, i64, i64);

/// The columns of a [`VersionRow`], `$sources` standing for the sources column.
macro_rules! version_columns {
    ($sources:literal) => {
        concat!(
            "version, ",
            $sources,
            ", author, comment, origin, diff, policies, created_us"
        )
    };
}
pub(crate) use version_columns;

pub(crate) fn version_of(r: VersionRow) -> Result<PolicyVersion, StoreError> {
    let (version, sources, author, comment, origin, diff, policies, created_us) = r;
    Ok(PolicyVersion {
        version,
        author,
        comment,
        origin,
        diff,
        policies,
        created_us,
        sources: decode("policy sources", &sources)?,
    })
}

/// Implements [`PolicyStore`] for a store type; the SQL is shared.
macro_rules! impl_policy_store {
    ($ty:ty, db = $db:ty) => {
        impl $crate::store::policy::PolicyStore for $ty {
            fn policy_put_version<'a>(
                &'a self,
                v: &'a $crate::store::policy::NewVersion<'a>,
                now_us: i64,
            ) -> $crate::store::StoreFuture<'a, i64> {
                use $crate::store::policy::{encode, version_conflict};
                Box::pin(async move {
                    let mut tx = self.writer().begin().await?;
                    let current: i64 =
                        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM policy_versions")
                            .fetch_one(&mut *tx)
                            .await?;
                    if let Some(expected) = v.expected
                        && expected != current
                    {
                        return Err($crate::store::StoreError::Conflict(format!(
                            "the policy set changed since version {expected}: version {current} \
                             is current"
                        )));
                    }
                    let version = current + 1;
                    sqlx::query(
                        "INSERT INTO policy_versions (version, sources, author, comment, origin, \
                         diff, policies, created_us) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    )
                    .bind(version)
                    .bind(encode(&v.sources)?)
                    .bind(v.author)
                    .bind(v.comment)
                    .bind(v.origin)
                    .bind(v.diff)
                    .bind(v.policies)
                    .bind(now_us)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| version_conflict(e.into()))?;
                    tx.commit().await.map_err(|e| version_conflict(e.into()))?;
                    Ok(version)
                })
            }

            fn policy_latest_version(&self) -> $crate::store::StoreFuture<'_, i64> {
                Box::pin(async move {
                    Ok(
                        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM policy_versions")
                            .fetch_one(self.writer())
                            .await?,
                    )
                })
            }

            fn policy_version(
                &self,
                version: i64,
            ) -> $crate::store::StoreFuture<'_, Option<$crate::store::policy::PolicyVersion>> {
                Box::pin(async move {
                    let row: Option<$crate::store::policy::VersionRow> = sqlx::query_as(concat!(
                        "SELECT ",
                        $crate::store::policy::version_columns!("sources"),
                        " FROM policy_versions WHERE version = $1"
                    ))
                    .bind(version)
                    .fetch_optional(self.writer())
                    .await?;
                    row.map($crate::store::policy::version_of).transpose()
                })
            }

            fn policy_versions(
                &self,
                before: Option<i64>,
                limit: u32,
            ) -> $crate::store::StoreFuture<'_, Vec<$crate::store::policy::PolicyVersion>> {
                Box::pin(async move {
                    // Lists leave the sources out.
                    let rows: Vec<$crate::store::policy::VersionRow> = sqlx::query_as(concat!(
                        "SELECT ",
                        $crate::store::policy::version_columns!("'[]'"),
                        " FROM policy_versions WHERE version < $1 ORDER BY version DESC LIMIT $2"
                    ))
                    .bind(before.unwrap_or(i64::MAX))
                    .bind(i64::from(limit))
                    .fetch_all(self.writer())
                    .await?;
                    rows.into_iter()
                        .map($crate::store::policy::version_of)
                        .collect()
                })
            }

            fn policy_commit<'a>(
                &'a self,
                drafts: &'a [$crate::store::policy::ViolationDraft],
                cp: &'a $crate::store::bus::Checkpoint,
                now_us: i64,
            ) -> $crate::store::StoreFuture<'a, ()> {
                use $crate::store::policy::{encode, merge};
                Box::pin(async move {
                    let mut tx = self.writer().begin().await?;
                    let keys: Vec<&str> = drafts.iter().map(|d| d.key.as_str()).collect();
                    let stored = $crate::store::bus::recurrences::<$db>(
                        &mut *tx,
                        "policy_violations",
                        "vkey",
                        &keys,
                    )
                    .await?;
                    let mut detections = Vec::new();
                    for draft in drafts {
                        let d = merge(draft, stored.get(&draft.key));
                        let v = &d.violation;
                        sqlx::query(
                            "INSERT INTO policy_violations (id, vkey, identity, outcome, count, \
                             first_seen_us, last_seen_us, violation) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (vkey) DO UPDATE \
                             SET count = excluded.count, last_seen_us = excluded.last_seen_us, \
                             violation = excluded.violation",
                        )
                        .bind(v.id.to_string())
                        .bind(&d.key)
                        .bind(&v.identity)
                        .bind(&v.outcome)
                        .bind(v.count as i64)
                        .bind(v.first_seen_us)
                        .bind(v.last_seen_us)
                        .bind(encode(v)?)
                        .execute(&mut *tx)
                        .await?;
                        detections.extend(d.detection);
                    }
                    if !detections.is_empty() {
                        $crate::store::bus::append_detections::<$db>(&mut *tx, &detections, now_us)
                            .await?;
                    }
                    $crate::store::bus::commit_checkpoint::<$db>(&mut *tx, cp).await?;
                    tx.commit().await?;
                    Ok(())
                })
            }

            fn policy_violations<'a>(
                &'a self,
                q: &'a $crate::store::policy::ViolationQuery,
            ) -> $crate::store::StoreFuture<'a, Vec<$crate::store::policy::Violation>> {
                Box::pin(async move {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "SELECT violation FROM policy_violations WHERE 1 = 1",
                    );
                    if let Some(v) = &q.identity {
                        qb.push(" AND identity = ").push_bind(v.clone());
                    }
                    if let Some(v) = &q.outcome {
                        qb.push(" AND outcome = ").push_bind(v.clone());
                    }
                    if let Some(v) = q.since_us {
                        qb.push(" AND last_seen_us >= ").push_bind(v);
                    }
                    if let Some(v) = &q.before {
                        qb.push(" AND id < ").push_bind(v.clone());
                    }
                    qb.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(q.limit));
                    let rows: Vec<String> = qb.build_query_scalar().fetch_all(self.writer()).await?;
                    rows.iter()
                        .map(|j| $crate::store::policy::decode("policy violation", j))
                        .collect()
                })
            }
        }
    };
}

impl_policy_store!(super::sqlite::SqliteStore, db = sqlx::Sqlite);
impl_policy_store!(super::postgres::PgStore, db = sqlx::Postgres);
