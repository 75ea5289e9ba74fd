//! Storage of the correlation service (migration `0010_correlation`): baselines (one JSON
//! document per identity, written over the version read), findings (one row per finding key,
//! its JSON updated on recurrence) and adoptions (the first time an identity presented a client
//! fingerprint), which give the shared-fingerprint detector its prevalence.
//!
//! The consumer's effects — baselines, findings, adoptions, the findings published as
//! [`Detection`]s on the durable topic `detections` — and its checkpoint commit in one
//! transaction ([`CorrelationStore::correlation_commit`]). The SQL is shared by both backends
//! ([`impl_correlation_store!`]).

use std::collections::HashMap;

use hais_correlation::{Adoption, Baseline, Finding, Prevalence};
use hais_shared::detection::{Detection, Severity};
use hais_shared::fingerprint::Method;

use super::bus::Checkpoint;
use super::{StoreError, StoreFuture};

/// A stored baseline and the version it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredBaseline {
    pub baseline: Baseline,
    pub version: i64,
}

/// What one batch of the consumer changed.
#[derive(Debug)]
pub struct Commit<'a> {
    /// Each baseline with the version it was read at (`None`: it was not stored).
    pub baselines: &'a [(Baseline, Option<i64>)],
    /// Findings raised, to absorb into the stored ones.
    pub findings: &'a [Finding],
    pub adoptions: &'a [Adoption],
    pub now_us: i64,
}

/// The findings list's filters; all given must hold. Newest (highest id) first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FindingQuery {
    pub identity: Option<String>,
    pub detector: Option<String>,
    /// At least this severity.
    pub severity: Option<Severity>,
    /// Seen last at or after.
    pub since_us: Option<i64>,
    /// Ids below this one (the previous page's last).
    pub before: Option<String>,
    pub limit: u32,
}

/// A severity as stored (ordered, so "at least" is a comparison).
pub fn severity_rank(s: Severity) -> i64 {
    Severity::ALL.iter().position(|x| *x == s).unwrap_or(0) as i64
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    what: &str,
    json: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

pub(crate) fn encode<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(format!("encoding: {e}")))
}

/// Storage of the correlation service. A supertrait of [`super::Store`].
pub trait CorrelationStore: Send + Sync {
    /// The stored baselines of those of `identities` that have one.
    fn correlation_baselines<'a>(
        &'a self,
        identities: &'a [String],
    ) -> StoreFuture<'a, HashMap<String, StoredBaseline>>;

    /// The prevalence of each fingerprint: identities that ever presented it, and at most
    /// `recent` established ones that started after `since_us`, oldest first.
    fn correlation_prevalence<'a>(
        &'a self,
        keys: &'a [(Method, String)],
        since_us: i64,
        recent: u32,
    ) -> StoreFuture<'a, Vec<((Method, String), Prevalence)>>;

    /// Writes a batch's effects and the consumer checkpoint `cp` in one transaction, and
    /// publishes every finding written on `detections`. `Ok(false)`, with nothing written, when
    /// a baseline changed since it was read (an analyst accepted or reset it): read again.
    fn correlation_commit<'a>(
        &'a self,
        c: &'a Commit<'a>,
        cp: &'a Checkpoint,
    ) -> StoreFuture<'a, bool>;

    /// Writes one baseline over `version` (`None`: it must not exist yet); `Ok(false)` when the
    /// stored version differs.
    fn correlation_put_baseline<'a>(
        &'a self,
        b: &'a Baseline,
        version: Option<i64>,
        now_us: i64,
    ) -> StoreFuture<'a, bool>;

    fn correlation_findings<'a>(&'a self, q: &'a FindingQuery) -> StoreFuture<'a, Vec<Finding>>;

    fn correlation_finding<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Finding>>;
}

/// Findings with the same key as one of `raised`, stored, merged with them: what to write back
/// and publish.
pub(crate) fn merged(stored: HashMap<String, Finding>, raised: &[Finding]) -> Vec<Finding> {
    let mut stored = stored;
    raised
        .iter()
        .map(|f| match stored.remove(&f.key.text()) {
            Some(mut old) => {
                old.absorb(f);
                old
            }
            None => f.clone(),
        })
        .collect()
}

/// The detections of `findings`, for the outbox.
pub(crate) fn detections(findings: &[Finding]) -> Vec<Detection> {
    findings.iter().map(Finding::detection).collect()
}

/// Implements [`CorrelationStore`] for a store type; the SQL is shared.
macro_rules! impl_correlation_store {
    ($ty:ty, db = $db:ty) => {
        impl $crate::store::correlation::CorrelationStore for $ty {
            fn correlation_baselines<'a>(
                &'a self,
                identities: &'a [String],
            ) -> $crate::store::StoreFuture<
                'a,
                std::collections::HashMap<String, $crate::store::correlation::StoredBaseline>,
            > {
                Box::pin(async move {
                    let mut out = std::collections::HashMap::new();
                    for chunk in identities.chunks(500) {
                        let mut qb = sqlx::QueryBuilder::<$db>::new(
                            "SELECT identity, baseline, version FROM correlation_baselines \
                             WHERE identity IN (",
                        );
                        let mut sep = qb.separated(", ");
                        for k in chunk {
                            sep.push_bind(k.clone());
                        }
                        qb.push(")");
                        let rows: Vec<(String, String, i64)> =
                            qb.build_query_as().fetch_all(self.writer()).await?;
                        for (identity, json, version) in rows {
                            let baseline = $crate::store::correlation::decode(
                                &format!("baseline of {identity}"),
                                &json,
                            )?;
                            out.insert(
                                identity,
                                $crate::store::correlation::StoredBaseline { baseline, version },
                            );
                        }
                    }
                    Ok(out)
                })
            }

            fn correlation_prevalence<'a>(
                &'a self,
                keys: &'a [(hais_shared::fingerprint::Method, String)],
                since_us: i64,
                recent: u32,
            ) -> $crate::store::StoreFuture<
                'a,
                Vec<((hais_shared::fingerprint::Method, String), hais_correlation::Prevalence)>,
            > {
                Box::pin(async move {
                    let mut out = Vec::with_capacity(keys.len());
                    for (method, fp) in keys {
                        let identities: i64 = sqlx::query_scalar(
                            "SELECT count(*) FROM correlation_adoptions \
                             WHERE method = $1 AND fingerprint = $2",
                        )
                        .bind(method.as_str())
                        .bind(fp)
                        .fetch_one(self.writer())
                        .await?;
                        if identities == 0 {
                            continue;
                        }
                        let rows: Vec<(String, String, i64)> = sqlx::query_as(
                            "SELECT identity, event_id, ts_us FROM correlation_adoptions \
                             WHERE method = $1 AND fingerprint = $2 AND established = 1 \
                             AND ts_us > $3 ORDER BY ts_us DESC, identity LIMIT $4",
                        )
                        .bind(method.as_str())
                        .bind(fp)
                        .bind(since_us)
                        .bind(i64::from(recent))
                        .fetch_all(self.writer())
                        .await?;
                        let recent = rows
                            .into_iter()
                            .rev()
                            .map(|(identity, event_id, ts_us)| hais_correlation::Adoption {
                                method: *method,
                                fingerprint: fp.clone(),
                                identity,
                                event_id: event_id.parse().unwrap_or_default(),
                                ts_us,
                                established: true,
                            })
                            .collect();
                        out.push((
                            (*method, fp.clone()),
                            hais_correlation::Prevalence {
                                identities: identities as u64,
                                recent,
                            },
                        ));
                    }
                    Ok(out)
                })
            }

            fn correlation_commit<'a>(
                &'a self,
                c: &'a $crate::store::correlation::Commit<'a>,
                cp: &'a $crate::store::bus::Checkpoint,
            ) -> $crate::store::StoreFuture<'a, bool> {
                use $crate::store::correlation::{encode, decode};
                Box::pin(async move {
                    let mut tx = self.writer().begin().await?;
                    for (b, version) in c.baselines {
                        if !Self::put_baseline(&mut *tx, b, *version, c.now_us).await? {
                            return Ok(false);
                        }
                    }
                    let mut stored = std::collections::HashMap::new();
                    let keys: Vec<String> = c.findings.iter().map(|f| f.key.text()).collect();
                    for chunk in keys.chunks(500) {
                        let mut qb = sqlx::QueryBuilder::<$db>::new(
                            "SELECT fkey, finding FROM correlation_findings WHERE fkey IN (",
                        );
                        let mut sep = qb.separated(", ");
                        for k in chunk {
                            sep.push_bind(k.clone());
                        }
                        qb.push(")");
                        let rows: Vec<(String, String)> =
                            qb.build_query_as().fetch_all(&mut *tx).await?;
                        for (k, json) in rows {
                            let f: hais_correlation::Finding = decode("finding", &json)?;
                            stored.insert(k, f);
                        }
                    }
                    let findings = $crate::store::correlation::merged(stored, c.findings);
                    for f in &findings {
                        sqlx::query(
                            "INSERT INTO correlation_findings (id, fkey, identity, detector, \
                             severity, last_seen_us, finding) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                             ON CONFLICT (fkey) DO UPDATE SET severity = excluded.severity, \
                             last_seen_us = excluded.last_seen_us, finding = excluded.finding",
                        )
                        .bind(f.id.to_string())
                        .bind(f.key.text())
                        .bind(&f.key.identity)
                        .bind(f.key.detector.as_str())
                        .bind($crate::store::correlation::severity_rank(f.severity))
                        .bind(f.last_seen_us)
                        .bind(encode(f)?)
                        .execute(&mut *tx)
                        .await?;
                    }
                    for a in c.adoptions {
                        sqlx::query(
                            "INSERT INTO correlation_adoptions (method, fingerprint, identity, \
                             event_id, ts_us, established) VALUES ($1, $2, $3, $4, $5, $6) \
                             ON CONFLICT (method, fingerprint, identity) DO NOTHING",
                        )
                        .bind(a.method.as_str())
                        .bind(&a.fingerprint)
                        .bind(&a.identity)
                        .bind(a.event_id.to_string())
                        .bind(a.ts_us)
                        .bind(i64::from(a.established))
                        .execute(&mut *tx)
                        .await?;
                    }
                    let detections = $crate::store::correlation::detections(&findings);
                    let rows = $crate::bus::log::outbox::<$crate::bus::log::Detections>(&detections);
                    $crate::store::bus::append::<$db>(&mut *tx, &rows, c.now_us).await?;
                    $crate::store::bus::commit_checkpoint::<$db>(&mut *tx, cp).await?;
                    tx.commit().await?;
                    Ok(true)
                })
            }

            fn correlation_put_baseline<'a>(
                &'a self,
                b: &'a hais_correlation::Baseline,
                version: Option<i64>,
                now_us: i64,
            ) -> $crate::store::StoreFuture<'a, bool> {
                Box::pin(async move {
                    let mut tx = self.writer().begin().await?;
                    let ok = Self::put_baseline(&mut *tx, b, version, now_us).await?;
                    if ok {
                        tx.commit().await?;
                    }
                    Ok(ok)
                })
            }

            fn correlation_findings<'a>(
                &'a self,
                q: &'a $crate::store::correlation::FindingQuery,
            ) -> $crate::store::StoreFuture<'a, Vec<hais_correlation::Finding>> {
                Box::pin(async move {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "SELECT finding FROM correlation_findings WHERE 1 = 1",
                    );
                    if let Some(v) = &q.identity {
                        qb.push(" AND identity = ").push_bind(v.clone());
                    }
                    if let Some(v) = &q.detector {
                        qb.push(" AND detector = ").push_bind(v.clone());
                    }
                    if let Some(s) = q.severity {
                        qb.push(" AND severity >= ")
                            .push_bind($crate::store::correlation::severity_rank(s));
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
                        .map(|j| $crate::store::correlation::decode("finding", j))
                        .collect()
                })
            }

            fn correlation_finding<'a>(
                &'a self,
                id: &'a str,
            ) -> $crate::store::StoreFuture<'a, Option<hais_correlation::Finding>> {
                Box::pin(async move {
                    let row: Option<String> =
                        sqlx::query_scalar("SELECT finding FROM correlation_findings WHERE id = $1")
                            .bind(id)
                            .fetch_optional(self.writer())
                            .await?;
                    row.map(|j| $crate::store::correlation::decode("finding", &j))
                        .transpose()
                })
            }
        }

        impl $ty {
            /// Writes `b` over `version` (`None`: must not exist) in `conn`'s transaction.
            async fn put_baseline(
                conn: &mut <$db as sqlx::Database>::Connection,
                b: &hais_correlation::Baseline,
                version: Option<i64>,
                now_us: i64,
            ) -> Result<bool, $crate::store::StoreError> {
                let json = $crate::store::correlation::encode(b)?;
                let state = b.state().as_str();
                let done = match version {
                    Some(v) => sqlx::query(
                        "UPDATE correlation_baselines SET state = $1, baseline = $2, \
                         version = version + 1, updated_us = $3 WHERE identity = $4 AND version = $5",
                    )
                    .bind(state)
                    .bind(json)
                    .bind(now_us)
                    .bind(&b.identity)
                    .bind(v)
                    .execute(&mut *conn)
                    .await?,
                    None => sqlx::query(
                        "INSERT INTO correlation_baselines (identity, state, baseline, version, \
                         updated_us) VALUES ($1, $2, $3, 1, $4) ON CONFLICT (identity) DO NOTHING",
                    )
                    .bind(&b.identity)
                    .bind(state)
                    .bind(json)
                    .bind(now_us)
                    .execute(&mut *conn)
                    .await?,
                };
                Ok(done.rows_affected() == 1)
            }
        }
    };
}

impl_correlation_store!(super::sqlite::SqliteStore, db = sqlx::Sqlite);
impl_correlation_store!(super::postgres::PgStore, db = sqlx::Postgres);
