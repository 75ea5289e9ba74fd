//! Roll-up reads, shared by both backends: the same SQL (built with `QueryBuilder`, so the
//! placeholders suit the backend), the same row decoding. Callers fold pending roll-up deltas
//! first ([`super::fold::Stage::settle`]).

use hais_shared::fingerprint::Method;
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, QueryBuilder, Row, Type,
};

use super::query::{Cursor, FingerprintQuery, build_search};
use super::rollup::{self, DIM_AGENT, DIM_HOST, DIM_IDENTITY, DIM_SERVER_NAME, DIM_WORKLOAD};
use super::{
    DETAIL_DIM_LIMIT, DimEntry, DimList, FingerprintDetail, FingerprintSummary, Page, StoreError,
    TopEntry, method_from_db,
};

/// Read queries on a pool of backend `DB`.
pub(crate) struct Reads<'p, DB: Database>(pub &'p Pool<DB>);

/// The columns [`summary`] decodes, in order.
const SUMMARY_COLUMNS: &str =
    "method, value, part_a, part_b, part_c, first_seen_us, last_seen_us, count";

fn summary<R: Row>(r: &R) -> Result<FingerprintSummary, StoreError>
where
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    usize: ColumnIndex<R>,
{
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
fn paginate(mut items: Vec<FingerprintSummary>, limit: u32) -> Page<FingerprintSummary> {
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

impl<DB> Reads<'_, DB>
where
    DB: Database,
    <DB as Database>::Arguments: Default + IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'t> String: Encode<'t, DB> + Decode<'t, DB> + Type<DB>,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Decode<'t, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    /// Fingerprint roll-ups matching `q`, one page.
    pub(crate) async fn search(
        &self,
        q: &FingerprintQuery,
    ) -> Result<Page<FingerprintSummary>, StoreError> {
        let mut qb = build_search::<DB>(q);
        let rows = qb.build().fetch_all(self.0).await?;
        let items = rows.iter().map(summary).collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(items, q.limit))
    }

    /// `WHERE method = … AND value = …` on a fresh statement starting with `head`.
    fn by_key(head: &str, method: Method, value: &str) -> QueryBuilder<DB> {
        let mut qb = QueryBuilder::new(head);
        qb.push(" WHERE method = ");
        qb.push_bind(method.as_str());
        qb.push(" AND value = ");
        qb.push_bind(value.to_owned());
        qb
    }

    pub(crate) async fn detail(
        &self,
        method: Method,
        value: &str,
    ) -> Result<Option<FingerprintDetail>, StoreError> {
        let head = format!("SELECT {SUMMARY_COLUMNS} FROM fingerprints");
        let row = Self::by_key(&head, method, value)
            .build()
            .fetch_optional(self.0)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let mut qb = Self::by_key("SELECT label FROM fingerprint_labels", method, value);
        qb.push(" ORDER BY label");
        let labels: Vec<String> = qb.build_query_scalar().fetch_all(self.0).await?;
        Ok(Some(FingerprintDetail {
            summary: summary(&row)?,
            hosts: self.dim_list(method, value, DIM_HOST).await?,
            agents: self.dim_list(method, value, DIM_AGENT).await?,
            server_names: self.dim_list(method, value, DIM_SERVER_NAME).await?,
            identities: self.dim_list(method, value, DIM_IDENTITY).await?,
            workloads: self.dim_list(method, value, DIM_WORKLOAD).await?,
            labels,
        }))
    }

    /// A dimension's most frequent [`DETAIL_DIM_LIMIT`] values and how many there are.
    async fn dim_list(
        &self,
        method: Method,
        value: &str,
        dim: &'static str,
    ) -> Result<DimList, StoreError> {
        let mut qb = Self::by_key("SELECT count(*) FROM fingerprint_dims", method, value);
        qb.push(" AND dim = ");
        qb.push_bind(dim);
        let total: i64 = qb.build_query_scalar().fetch_one(self.0).await?;
        let mut qb = Self::by_key(
            "SELECT dim_value, first_seen_us, last_seen_us, count FROM fingerprint_dims",
            method,
            value,
        );
        qb.push(" AND dim = ");
        qb.push_bind(dim);
        qb.push(" ORDER BY count DESC, dim_value LIMIT ");
        qb.push_bind(DETAIL_DIM_LIMIT);
        let rows = qb.build().fetch_all(self.0).await?;
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

    /// The `limit` fingerprints carried by the most events since `since_us` (hour granularity).
    pub(crate) async fn top(
        &self,
        since_us: i64,
        method: Option<Method>,
        limit: u32,
    ) -> Result<Vec<TopEntry>, StoreError> {
        let hour = since_us.div_euclid(rollup::HOUR_US) * rollup::HOUR_US;
        let mut qb = QueryBuilder::new(
            "SELECT method, value, CAST(sum(count) AS BIGINT) AS n FROM fingerprint_hourly \
             WHERE hour_us >= ",
        );
        qb.push_bind(hour);
        if let Some(m) = method {
            qb.push(" AND method = ");
            qb.push_bind(m.as_str());
        }
        qb.push(" GROUP BY method, value ORDER BY n DESC, method, value LIMIT ");
        qb.push_bind(i64::from(limit));
        let rows = qb.build().fetch_all(self.0).await?;
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
    }
}
