//! Storage of discovered workloads (identity service, migration `0009_workloads`): every
//! workload key seen, with its newest facts and current resolution (`workloads`), and its
//! roll-ups (`workload_rollups`, contributed to the roll-up stage like `identity_rollups`).
//!
//! Why two tables: counts, first/last seen and where a workload was seen must be exact and
//! exactly once, which the roll-up stage already guarantees (deltas recorded in the ingest
//! transaction). The facts and the resolution are *state*, not sums: the newest facts win, and
//! the resolution changes when entries or templates change, without any new event. The identity
//! service's durable consumer writes that state with its bus checkpoint, and rewrites the
//! resolution after every change of the entries or templates.
//!
//! Per workload × fingerprint figures are the `fingerprint_dims` rows with dim `workload`.
//! The SQL is shared by both backends ([`impl_workload_store!`]).

use std::collections::BTreeMap;

use hais_shared::event::{FingerprintEvent, Workload};
use serde::{Deserialize, Serialize};

use super::bus::Checkpoint;
use super::identity::{IdentityFingerprint, MethodCount};
use super::rollup::{DeltaKind, Extract, Measure, Part, Retention, RollupContributor};
use super::{DimList, StoreFuture};

/// Contributes `workload_rollups`: per event with a workload key, the workload, its host, agent
/// and destination.
#[derive(Debug)]
pub struct WorkloadRollups;

static KINDS: [DeltaKind; 1] = [DeltaKind {
    table: "workload_rollups",
    key: &[
        ("key", Part::Str),
        ("dim", Part::Str),
        ("dim_value", Part::Str),
    ],
    measure: Measure::Seen,
    derived: None,
}];

/// Workloads not seen since the cutoff leave the inventory with their roll-ups.
static RETENTION: [Retention; 2] = [
    Retention {
        table: "workload_rollups",
        column: "last_seen_us",
        bucket_us: 1,
        reported: false,
    },
    Retention {
        table: "workloads",
        column: "facts_us",
        bucket_us: 1,
        reported: false,
    },
];

impl RollupContributor for WorkloadRollups {
    fn kinds(&self) -> &'static [DeltaKind] {
        &KINDS
    }

    fn retention(&self) -> &'static [Retention] {
        &RETENTION
    }

    fn extract<'a>(&self, events: &[&'a FingerprintEvent], out: &mut Extract<'_, 'a>) {
        super::rollup::extract_subject(events, out, 0, |e| e.workload.key.as_deref());
    }
}

/// What the inventory keeps of a workload's newest event: where it ran, and the facts the agent
/// observed, without what changes per flow (pid, direction) or what the control plane adds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkloadFacts {
    pub host: String,
    pub agent_id: String,
    /// Process, executable, user, container and Kubernetes facts, named as in events.
    #[schema(value_type = Object)]
    pub workload: Workload,
}

impl WorkloadFacts {
    pub fn of(e: &FingerprintEvent) -> WorkloadFacts {
        let mut workload = e.workload.clone();
        workload.pid = None;
        workload.direction = None;
        workload.spiffe_id = None;
        workload.selectors.clear();
        workload.key = None;
        WorkloadFacts {
            host: e.host.clone(),
            agent_id: e.agent_id.clone(),
            workload,
        }
    }

    /// Fills what these (newer) facts lack from `older` ones: the agent knows more of a process
    /// on some flows than on others (a process that exited before `/proc` was read is named by
    /// the kernel tracer without its executable), and the inventory should keep what it learnt.
    pub fn fill_from(&mut self, older: &WorkloadFacts) {
        let (w, o) = (&mut self.workload, &older.workload);
        for (new, old) in [
            (&mut w.process, &o.process),
            (&mut w.exe, &o.exe),
            (&mut w.exe_sha256, &o.exe_sha256),
            (&mut w.cmdline, &o.cmdline),
            (&mut w.user, &o.user),
            (&mut w.cgroup, &o.cgroup),
            (&mut w.container, &o.container),
            (&mut w.container_runtime, &o.container_runtime),
            (&mut w.container_image, &o.container_image),
            (&mut w.container_name, &o.container_name),
            (&mut w.pod, &o.pod),
            (&mut w.k8s_namespace, &o.k8s_namespace),
            (&mut w.k8s_service_account, &o.k8s_service_account),
            (&mut w.k8s_pod_name, &o.k8s_pod_name),
        ] {
            if new.is_none() {
                new.clone_from(old);
            }
        }
        if w.uid.is_none() {
            w.uid = o.uid;
        }
        if w.container_labels.is_empty() {
            w.container_labels.clone_from(&o.container_labels);
        }
        // The kernel tracer's cgroup is `/` when it could not tell; a known one is better.
        if w.cgroup.as_deref() == Some("/") && o.cgroup.as_deref().is_some_and(|c| c != "/") {
            w.cgroup.clone_from(&o.cgroup);
        }
    }

    /// An event with these facts (and no flow worth reading), for the resolver: selectors and
    /// templates are functions of an event. `pid` is set back because the facts are those of an
    /// attributed process.
    pub fn as_event(&self) -> FingerprintEvent {
        let unspecified = std::net::IpAddr::from([0, 0, 0, 0]);
        let mut e = FingerprintEvent::new(
            self.agent_id.clone(),
            self.host.clone(),
            hais_shared::event::Flow {
                src_ip: unspecified,
                src_port: 0,
                dst_ip: unspecified,
                dst_port: 0,
                transport: hais_shared::event::Transport::Tcp,
            },
        );
        e.workload = self.workload.clone();
        e.workload.pid = Some(0);
        e
    }
}

/// The state the identity service records for one workload key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadRecord {
    pub key: String,
    pub kind: &'static str,
    pub namespace: Option<String>,
    pub facts: WorkloadFacts,
    /// Selectors of the newest event, sorted.
    pub selectors: Vec<String>,
    pub facts_us: i64,
    pub resolution: Option<Resolved>,
}

/// What names a workload now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub spiffe_id: String,
    /// `entry:<id>` or `template:<id>`.
    pub by: String,
}

/// One workload of the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkloadSummary {
    /// The workload key (`k8s:…`, `container:…`, `host:…`).
    pub key: String,
    /// `k8s`, `container` or `host`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The SPIFFE ID the registration entries or templates give it now, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// `entry:<id>` or `template:<id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_by: Option<String>,
    /// The facts of its newest event.
    pub facts: WorkloadFacts,
    /// The selectors those facts yield (what an entry can match).
    pub selectors: Vec<String>,
    pub first_seen_us: i64,
    pub last_seen_us: i64,
    /// Stored flows (events) of the workload.
    pub count: i64,
    /// Per method (`ja4`, `ja4h`, `ja4t`, …).
    pub methods: BTreeMap<String, MethodCount>,
    /// Hosts it ran on (most frequent first; a few in a list, more in the detail).
    pub hosts: DimList,
}

/// Everything the inventory knows about one workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkloadDetail {
    #[serde(flatten)]
    pub summary: WorkloadSummary,
    pub agents: DimList,
    /// TLS server names, or `ip:port` when the client sent none.
    pub destinations: DimList,
    /// Fingerprints by method, most frequent first.
    pub fingerprints: BTreeMap<String, Vec<IdentityFingerprint>>,
    /// Distinct fingerprints in all.
    pub fingerprints_total: i64,
}

/// The list's filters; all given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadQuery {
    pub host: Option<String>,
    pub agent: Option<String>,
    pub namespace: Option<String>,
    pub kind: Option<String>,
    /// `Some(true)`: only workloads an entry or template names; `Some(false)`: only the others.
    pub resolved: Option<bool>,
    /// Part of the key (case-sensitive).
    pub q: Option<String>,
    /// Keys after this one.
    pub after: Option<String>,
    pub limit: u32,
}

/// A stored workload's facts and resolution, for re-resolving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResolution {
    pub key: String,
    pub facts: WorkloadFacts,
    pub resolution: Option<Resolved>,
}

/// Hosts a list item shows.
pub const LIST_HOSTS: usize = 5;

/// Storage of discovered workloads. A supertrait of [`super::Store`].
pub trait WorkloadStore: Send + Sync {
    /// Records the newest facts and resolution of each workload (older facts than stored are
    /// ignored) and, in the same transaction, the consumer checkpoint `cp`.
    fn record_workloads<'a>(
        &'a self,
        rows: &'a [WorkloadRecord],
        cp: &'a Checkpoint,
    ) -> StoreFuture<'a, ()>;

    fn list_workloads<'a>(&'a self, q: &'a WorkloadQuery) -> StoreFuture<'a, Vec<WorkloadSummary>>;

    fn workload_detail<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<WorkloadDetail>>;

    /// The stored facts of those of `keys` that are stored.
    fn workload_facts<'a>(
        &'a self,
        keys: &'a [String],
    ) -> StoreFuture<'a, std::collections::HashMap<String, WorkloadFacts>>;

    /// Facts and resolutions in key order after `after`, at most `limit`.
    fn workload_resolutions<'a>(
        &'a self,
        after: &'a str,
        limit: u32,
    ) -> StoreFuture<'a, Vec<StoredResolution>>;

    /// Sets the resolution of each key (`None`: no longer named).
    fn set_workload_resolutions<'a>(
        &'a self,
        rows: &'a [(String, Option<Resolved>)],
        now_us: i64,
    ) -> StoreFuture<'a, ()>;
}

/// One `workloads` row as listed: (key, kind, namespace, facts, selectors, spiffe_id,
/// resolved_by). Its roll-ups come from a second query for the whole page: a join would let the
/// planner merge-join both tables from their start, which costs a scan once filters skip far.
pub(crate) type ListRow = (
    String,
    String,
    Option<String>,
    String,
    String,
    Option<String>,
    Option<String>,
);

pub(crate) const LIST_COLUMNS: &str =
    "key, kind, namespace, facts, selectors, spiffe_id, resolved_by FROM workloads";

pub(crate) fn summary_of(row: ListRow) -> Result<WorkloadSummary, super::StoreError> {
    let (key, kind, namespace, facts, selectors, spiffe_id, resolved_by) = row;
    let facts: WorkloadFacts = serde_json::from_str(&facts)
        .map_err(|e| super::StoreError::Corrupt(format!("workload {key} facts: {e}")))?;
    Ok(WorkloadSummary {
        key,
        kind,
        namespace,
        spiffe_id,
        resolved_by,
        facts,
        selectors: selectors.lines().map(str::to_owned).collect(),
        first_seen_us: 0,
        last_seen_us: 0,
        count: 0,
        methods: BTreeMap::new(),
        hosts: DimList::default(),
    })
}

/// The key range of a kind: keys start with `<kind>:`, and `;` follows `:` in byte order.
pub(crate) fn kind_range(kind: &str) -> (String, String) {
    (format!("{kind}:"), format!("{kind};"))
}

/// `s` as a LIKE pattern matching it anywhere, with `\` escaping LIKE's wildcards.
pub(crate) fn contains_pattern(s: &str) -> String {
    let mut p = String::with_capacity(s.len() + 2);
    p.push('%');
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// Implements [`WorkloadStore`] for a store type; the SQL is shared.
macro_rules! impl_workload_store {
    ($ty:ty, db = $db:ty) => {
        impl $ty {
            /// Per-method fingerprint counts, first/last seen, flows and the top hosts of each
            /// listed workload: two queries for the whole page.
            async fn workload_page_dims(
                pool: &sqlx::Pool<$db>,
                items: &mut [$crate::store::workloads::WorkloadSummary],
                hosts_limit: usize,
            ) -> Result<(), $crate::store::StoreError> {
                use $crate::store::rollup::{DIM_HOST, DIM_WORKLOAD};
                if items.is_empty() {
                    return Ok(());
                }
                let index: std::collections::HashMap<String, usize> = items
                    .iter()
                    .enumerate()
                    .map(|(i, w)| (w.key.clone(), i))
                    .collect();
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "SELECT dim_value, method, count(*), CAST(sum(count) AS BIGINT) \
                     FROM fingerprint_dims WHERE dim = ",
                );
                qb.push_bind(DIM_WORKLOAD).push(" AND dim_value IN (");
                let mut sep = qb.separated(", ");
                for w in items.iter() {
                    sep.push_bind(w.key.clone());
                }
                qb.push(") GROUP BY dim_value, method");
                let rows: Vec<(String, String, i64, i64)> =
                    qb.build_query_as().fetch_all(pool).await?;
                for (key, method, fingerprints, events) in rows {
                    if let Some(&i) = index.get(&key) {
                        items[i].methods.insert(
                            method,
                            $crate::store::identity::MethodCount {
                                fingerprints,
                                events,
                            },
                        );
                    }
                }
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "SELECT key, dim, dim_value, first_seen_us, last_seen_us, count \
                     FROM workload_rollups WHERE dim IN ('', ",
                );
                qb.push_bind(DIM_HOST).push(") AND key IN (");
                let mut sep = qb.separated(", ");
                for w in items.iter() {
                    sep.push_bind(w.key.clone());
                }
                qb.push(") ORDER BY key, count DESC, dim_value");
                let rows: Vec<(String, String, String, i64, i64, i64)> =
                    qb.build_query_as().fetch_all(pool).await?;
                for (key, dim, value, first_seen_us, last_seen_us, count) in rows {
                    if let Some(&i) = index.get(&key) {
                        if dim.is_empty() {
                            let w = &mut items[i];
                            (w.first_seen_us, w.last_seen_us, w.count) =
                                (first_seen_us, last_seen_us, count);
                            continue;
                        }
                        let hosts = &mut items[i].hosts;
                        hosts.total += 1;
                        if hosts.top.len() < hosts_limit {
                            hosts.top.push($crate::store::DimEntry {
                                value,
                                first_seen_us,
                                last_seen_us,
                                count,
                            });
                        }
                    }
                }
                Ok(())
            }

            /// One workload's dimension, most frequent first.
            async fn workload_dim(
                pool: &sqlx::Pool<$db>,
                key: &str,
                dim: &str,
                limit: i64,
            ) -> Result<$crate::store::DimList, $crate::store::StoreError> {
                Self::subject_dim(pool, "workload_rollups", "key", key, dim, limit).await
            }
        }

        impl $crate::store::workloads::WorkloadStore for $ty {
            fn record_workloads<'a>(
                &'a self,
                rows: &'a [$crate::store::workloads::WorkloadRecord],
                cp: &'a $crate::store::bus::Checkpoint,
            ) -> $crate::store::StoreFuture<'a, ()> {
                Box::pin(async move {
                    let mut tx = self.writer().begin().await?;
                    for r in rows {
                        let facts = serde_json::to_string(&r.facts).map_err(|e| {
                            $crate::store::StoreError::Corrupt(format!("workload facts: {e}"))
                        })?;
                        let (spiffe_id, by) = match &r.resolution {
                            Some(x) => (Some(x.spiffe_id.as_str()), Some(x.by.as_str())),
                            None => (None, None),
                        };
                        sqlx::query(
                            "INSERT INTO workloads (key, kind, namespace, facts, selectors, \
                             facts_us, spiffe_id, resolved_by, resolved_us) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $6) \
                             ON CONFLICT (key) DO UPDATE SET kind = excluded.kind, \
                             namespace = excluded.namespace, facts = excluded.facts, \
                             selectors = excluded.selectors, facts_us = excluded.facts_us, \
                             spiffe_id = excluded.spiffe_id, resolved_by = excluded.resolved_by, \
                             resolved_us = excluded.resolved_us \
                             WHERE workloads.facts_us <= excluded.facts_us",
                        )
                        .bind(&r.key)
                        .bind(r.kind)
                        .bind(&r.namespace)
                        .bind(facts)
                        .bind(r.selectors.join("\n"))
                        .bind(r.facts_us)
                        .bind(spiffe_id)
                        .bind(by)
                        .execute(&mut *tx)
                        .await?;
                    }
                    $crate::store::bus::commit_checkpoint::<$db>(&mut *tx, cp).await?;
                    tx.commit().await?;
                    Ok(())
                })
            }

            fn list_workloads<'a>(
                &'a self,
                q: &'a $crate::store::workloads::WorkloadQuery,
            ) -> $crate::store::StoreFuture<'a, Vec<$crate::store::workloads::WorkloadSummary>>
            {
                use $crate::store::rollup::{DIM_AGENT, DIM_HOST};
                Box::pin(async move {
                    // Folds what is pending first (read-your-writes); may answer a replica.
                    let pool = self.settled_reader().await?;
                    // Phase 1, the page's keys: from the host or agent dimension's index when
                    // one is given (a few workloads of many), else in key order; only narrow
                    // columns, so a substring filter reads the key index, not the rows.
                    let mut qb = sqlx::QueryBuilder::<$db>::new("SELECT w.key FROM ");
                    let driver = [(DIM_HOST, &q.host), (DIM_AGENT, &q.agent)]
                        .into_iter()
                        .find_map(|(d, v)| v.as_ref().map(|v| (d, v)));
                    match driver {
                        Some((dim, v)) => {
                            qb.push("workload_rollups d JOIN workloads w ON w.key = d.key WHERE d.dim = ")
                                .push_bind(dim)
                                .push(" AND d.dim_value = ")
                                .push_bind(v.clone())
                                .push(" AND d.key > ")
                                .push_bind(q.after.clone().unwrap_or_default());
                        }
                        None => {
                            qb.push("workloads w WHERE w.key > ")
                                .push_bind(q.after.clone().unwrap_or_default());
                        }
                    }
                    if let Some(ns) = &q.namespace {
                        qb.push(" AND w.namespace = ").push_bind(ns.clone());
                    }
                    if let Some(kind) = &q.kind {
                        // A key range (the primary key's order), not a scan for the column.
                        let (from, to) = $crate::store::workloads::kind_range(kind);
                        qb.push(" AND w.key >= ")
                            .push_bind(from)
                            .push(" AND w.key < ")
                            .push_bind(to);
                    }
                    match q.resolved {
                        Some(true) => {
                            qb.push(" AND w.spiffe_id IS NOT NULL");
                        }
                        Some(false) => {
                            qb.push(" AND w.spiffe_id IS NULL");
                        }
                        None => {}
                    }
                    for (dim, v) in [(DIM_HOST, &q.host), (DIM_AGENT, &q.agent)] {
                        match v {
                            Some(v) if driver.map(|(d, _)| d) != Some(dim) => {
                                qb.push(
                                    " AND EXISTS (SELECT 1 FROM workload_rollups x \
                                     WHERE x.key = w.key AND x.dim = ",
                                )
                                .push_bind(dim)
                                .push(" AND x.dim_value = ")
                                .push_bind(v.clone())
                                .push(")");
                            }
                            _ => {}
                        }
                    }
                    if let Some(s) = &q.q {
                        qb.push(" AND w.key LIKE ")
                            .push_bind($crate::store::workloads::contains_pattern(s))
                            .push(" ESCAPE '\\'");
                    }
                    qb.push(match driver {
                        Some(_) => " ORDER BY d.key LIMIT ",
                        None => " ORDER BY w.key LIMIT ",
                    })
                    .push_bind(i64::from(q.limit));
                    let keys: Vec<String> = qb.build_query_scalar().fetch_all(pool).await?;
                    if keys.is_empty() {
                        return Ok(Vec::new());
                    }
                    // Phase 2, the page's rows.
                    let mut qb = sqlx::QueryBuilder::<$db>::new("SELECT ");
                    qb.push($crate::store::workloads::LIST_COLUMNS)
                        .push(" WHERE key IN (");
                    let mut sep = qb.separated(", ");
                    for k in &keys {
                        sep.push_bind(k.clone());
                    }
                    qb.push(") ORDER BY key");
                    let rows: Vec<$crate::store::workloads::ListRow> =
                        qb.build_query_as().fetch_all(pool).await?;
                    let mut items = rows
                        .into_iter()
                        .map($crate::store::workloads::summary_of)
                        .collect::<Result<Vec<_>, _>>()?;
                    Self::workload_page_dims(
                        pool,
                        &mut items,
                        $crate::store::workloads::LIST_HOSTS,
                    )
                    .await?;
                    Ok(items)
                })
            }

            fn workload_detail<'a>(
                &'a self,
                key: &'a str,
            ) -> $crate::store::StoreFuture<'a, Option<$crate::store::workloads::WorkloadDetail>>
            {
                use $crate::store::identity::DETAIL_DIM_LIMIT;
                use $crate::store::rollup::{DIM_AGENT, DIM_DESTINATION, DIM_HOST, DIM_WORKLOAD};
                Box::pin(async move {
                    let pool = self.settled_reader().await?;
                    let sql = format!(
                        "SELECT {} WHERE key = $1",
                        $crate::store::workloads::LIST_COLUMNS
                    );
                    let row: Option<$crate::store::workloads::ListRow> =
                        sqlx::query_as(sqlx::AssertSqlSafe(sql))
                            .bind(key)
                            .fetch_optional(pool)
                            .await?;
                    let Some(row) = row else { return Ok(None) };
                    let mut items = vec![$crate::store::workloads::summary_of(row)?];
                    Self::workload_page_dims(pool, &mut items, 0).await?;
                    let mut summary = items.pop().expect("one item");
                    summary.hosts = Self::workload_dim(pool, key, DIM_HOST, DETAIL_DIM_LIMIT).await?;
                    let fingerprints =
                        Self::subject_fingerprints(pool, DIM_WORKLOAD, key).await?;
                    Ok(Some($crate::store::workloads::WorkloadDetail {
                        fingerprints_total: summary.methods.values().map(|m| m.fingerprints).sum(),
                        agents: Self::workload_dim(pool, key, DIM_AGENT, DETAIL_DIM_LIMIT).await?,
                        destinations: Self::workload_dim(
                            pool,
                            key,
                            DIM_DESTINATION,
                            DETAIL_DIM_LIMIT,
                        )
                        .await?,
                        summary,
                        fingerprints,
                    }))
                })
            }

            fn workload_facts<'a>(
                &'a self,
                keys: &'a [String],
            ) -> $crate::store::StoreFuture<
                'a,
                std::collections::HashMap<String, $crate::store::workloads::WorkloadFacts>,
            > {
                Box::pin(async move {
                    let mut out = std::collections::HashMap::new();
                    for chunk in keys.chunks(500) {
                        let mut qb = sqlx::QueryBuilder::<$db>::new(
                            "SELECT key, facts FROM workloads WHERE key IN (",
                        );
                        let mut sep = qb.separated(", ");
                        for k in chunk {
                            sep.push_bind(k.clone());
                        }
                        qb.push(")");
                        let rows: Vec<(String, String)> =
                            qb.build_query_as().fetch_all(self.writer()).await?;
                        for (key, facts) in rows {
                            let facts = serde_json::from_str(&facts).map_err(|e| {
                                $crate::store::StoreError::Corrupt(format!(
                                    "workload {key} facts: {e}"
                                ))
                            })?;
                            out.insert(key, facts);
                        }
                    }
                    Ok(out)
                })
            }

            fn workload_resolutions<'a>(
                &'a self,
                after: &'a str,
                limit: u32,
            ) -> $crate::store::StoreFuture<'a, Vec<$crate::store::workloads::StoredResolution>>
            {
                Box::pin(async move {
                    let rows: Vec<(String, String, Option<String>, Option<String>)> =
                        sqlx::query_as(
                            "SELECT key, facts, spiffe_id, resolved_by FROM workloads \
                             WHERE key > $1 ORDER BY key LIMIT $2",
                        )
                        .bind(after)
                        .bind(i64::from(limit))
                        .fetch_all(self.writer())
                        .await?;
                    rows.into_iter()
                        .map(|(key, facts, spiffe_id, by)| {
                            let facts = serde_json::from_str(&facts).map_err(|e| {
                                $crate::store::StoreError::Corrupt(format!(
                                    "workload {key} facts: {e}"
                                ))
                            })?;
                            Ok($crate::store::workloads::StoredResolution {
                                key,
                                facts,
                                resolution: spiffe_id.map(|spiffe_id| {
                                    $crate::store::workloads::Resolved {
                                        spiffe_id,
                                        by: by.unwrap_or_default(),
                                    }
                                }),
                            })
                        })
                        .collect()
                })
            }

            fn set_workload_resolutions<'a>(
                &'a self,
                rows: &'a [(String, Option<$crate::store::workloads::Resolved>)],
                now_us: i64,
            ) -> $crate::store::StoreFuture<'a, ()> {
                Box::pin(async move {
                    let mut tx = self.writer().begin().await?;
                    for (key, r) in rows {
                        sqlx::query(
                            "UPDATE workloads SET spiffe_id = $1, resolved_by = $2, \
                             resolved_us = $3 WHERE key = $4",
                        )
                        .bind(r.as_ref().map(|r| r.spiffe_id.as_str()))
                        .bind(r.as_ref().map(|r| r.by.as_str()))
                        .bind(now_us)
                        .bind(key)
                        .execute(&mut *tx)
                        .await?;
                    }
                    tx.commit().await?;
                    Ok(())
                })
            }
        }
    };
}

impl_workload_store!(super::sqlite::SqliteStore, db = sqlx::Sqlite);
impl_workload_store!(super::postgres::PgStore, db = sqlx::Postgres);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_facts_keep_what_only_older_ones_knew() {
        let mut older = WorkloadFacts::default();
        older.workload.exe = Some("/usr/bin/curl".into());
        older.workload.process = Some("curl".into());
        older.workload.cgroup = Some("/user.slice".into());
        older.workload.uid = Some(0);
        let mut newer = WorkloadFacts::default();
        newer.workload.process = Some("curl2".into());
        newer.workload.cgroup = Some("/".into());
        newer.fill_from(&older);
        assert_eq!(newer.workload.exe.as_deref(), Some("/usr/bin/curl"));
        assert_eq!(newer.workload.process.as_deref(), Some("curl2"));
        assert_eq!(newer.workload.cgroup.as_deref(), Some("/user.slice"));
        assert_eq!(newer.workload.uid, Some(0));
    }

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(contains_pattern("a_b%c\\d"), "%a\\_b\\%c\\\\d%");
        assert_eq!(contains_pattern(""), "%%");
    }

    #[test]
    fn facts_drop_what_changes_per_flow_and_come_back_as_an_event() {
        let mut e = FingerprintEvent::new(
            "a1",
            "h1",
            hais_shared::event::Flow {
                src_ip: "10.0.0.1".parse().unwrap(),
                src_port: 1,
                dst_ip: "10.0.0.2".parse().unwrap(),
                dst_port: 2,
                transport: hais_shared::event::Transport::Tcp,
            },
        );
        e.workload.pid = Some(77);
        e.workload.exe = Some("/usr/bin/curl".into());
        e.workload.direction = Some("outbound".into());
        e.workload.spiffe_id = Some("spiffe://t/x".into());
        e.workload.key = Some("host:h1:curl:".into());
        let f = WorkloadFacts::of(&e);
        assert_eq!(f.workload.pid, None);
        assert_eq!(f.workload.direction, None);
        assert_eq!(f.workload.spiffe_id, None);
        assert_eq!(f.workload.exe.as_deref(), Some("/usr/bin/curl"));
        let back = f.as_event();
        assert_eq!(back.host, "h1");
        assert_eq!(
            hais_shared::workload::workload_key(&back),
            hais_shared::workload::workload_key(&e)
        );
    }
}
