//! Event search: stored events, newest first, filtered by any flow field, identity, workload or
//! fingerprint, one keyset page at a time.
//!
//! Search has tables of its own (migrations `0008_events_search`, `0013_event_search_async`):
//! `event_search`, one row per event with every filtered column, each with an index ending in
//! the event id (`(host, id)`, `(spiffe_id, id)`, …), and `event_fingerprints (method, value,
//! id)`. The id is a UUIDv7, i.e. the event's time, so "this value, newest first, before this
//! cursor, within this time range" is one backward range scan per index (per daily partition on
//! PostgreSQL, where the time range also prunes partitions), whatever the tables hold. The time
//! range is the event time carried by the id (the agent stamps id and `timestamp` together).
//!
//! Ingest does not write them: maintaining ten btrees in the ingest transaction cut PostgreSQL
//! ingest by 60%. The ja4 service's durable consumer group `search` of `fingerprint.events`
//! writes them ([`EventStore::index_events`]) in a transaction with its checkpoint, so each
//! event is indexed exactly once, shortly after it is stored, and filtered search lags ingest
//! by that group's lag (`hais_bus_group_lag_items{group="search"}`). A search with no filter
//! reads `events` itself and is never behind.
//!
//! A filter on a fingerprint value without its method looks the methods up in the fingerprint
//! roll-up first (a value nearly always belongs to one method; the read folds pending roll-up
//! deltas first, like every roll-up read), so the side table's primary key still drives the
//! scan.
//!
//! On PostgreSQL the statement is sent unprepared, so the planner sees the actual values (a
//! fingerprint on half the events and one seen twice want different plans; a cached generic plan
//! would pick one for both).

use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hais_shared::event::{Fingerprint, FingerprintEvent, Flow, Transport, Workload};
use hais_shared::fingerprint::Method;
use serde::Serialize;
use sqlx::{ColumnIndex, Database, Decode, Encode, QueryBuilder, Row, Type};
use time::OffsetDateTime;
use uuid::Uuid;

use super::bus::Checkpoint;
use super::query::MAX_PAGE_SIZE;
use super::{Page, StoreError, StoreFuture, uuid_floor_ms};

/// The tables search reads besides `events`, written by [`EventStore::index_events`]. On
/// PostgreSQL they are partitioned exactly like `events` and retired with it
/// (`store::partitions`).
pub(crate) const SEARCH_TABLES: [&str; 2] = ["event_fingerprints", "event_search"];

/// Filters of an event search. All given filters must match (AND).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    pub method: Option<Method>,
    /// A fingerprint value, exact.
    pub value: Option<String>,
    /// The SPIFFE ID the identity service resolved for the event.
    pub identity: Option<String>,
    /// The workload key (`hais_shared::workload`).
    pub workload: Option<String>,
    pub host: Option<String>,
    pub agent: Option<String>,
    pub src_ip: Option<IpAddr>,
    pub dst_ip: Option<IpAddr>,
    pub dst_port: Option<u16>,
    pub server_name: Option<String>,
    /// Event time at or after (µs since the Unix epoch).
    pub from_us: Option<i64>,
    /// Event time at or before (µs).
    pub to_us: Option<i64>,
    /// Continue with events older than this one.
    pub before: Option<EventCursor>,
    /// Page size, 1..=[`MAX_PAGE_SIZE`].
    pub limit: u32,
}

/// A position in newest-first order: the last event of the previous page. Opaque to clients
/// (base64url of the id's bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventCursor(pub Uuid);

impl EventCursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0.as_bytes())
    }

    /// `None` unless it is a cursor this API issued.
    pub fn decode(s: &str) -> Option<EventCursor> {
        let bytes: [u8; 16] = URL_SAFE_NO_PAD.decode(s).ok()?.try_into().ok()?;
        let id = Uuid::from_bytes(bytes);
        (id.get_version_num() == 7).then_some(EventCursor(id))
    }
}

/// One stored event as the API returns it: the event as the agent sent it (with the workload
/// facts, the workload key and the SPIFFE ID the control plane added at ingest), and when it was
/// stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct EventRecord {
    /// `id` (UUIDv7), `timestamp`, `agent_id`, `host`, `flow` {src_ip, src_port, dst_ip,
    /// dst_port, transport}, `server_name`, `fingerprints` [{method, value}], `workload` (facts,
    /// `key`, `spiffe_id`, `selectors`).
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub event: FingerprintEvent,
    /// The SPIFFE ID the event was stored with (the identity filter matches it).
    pub identity: Option<String>,
    /// The workload key the event was stored with (the workload filter matches it).
    pub workload_key: Option<String>,
    /// When the control plane stored it (µs since the Unix epoch).
    pub received_us: i64,
}

/// Event search. A supertrait of [`super::Store`].
pub trait EventStore: Send + Sync {
    /// Events matching `q`, newest first, one page.
    fn events<'a>(&'a self, q: &'a EventQuery) -> StoreFuture<'a, Page<EventRecord>>;
    fn event(&self, id: Uuid) -> StoreFuture<'_, Option<EventRecord>>;
    /// Writes the search rows of stored `events` and commits `checkpoint` (the `search` consumer
    /// group's progress) in the same transaction: indexed once, or not at all.
    /// [`StoreError::Fenced`] when the group's partition moved to another member meanwhile.
    fn index_events<'a>(
        &'a self,
        events: &'a [&'a FingerprintEvent],
        checkpoint: &'a Checkpoint,
    ) -> StoreFuture<'a, ()>;
}

/// The columns [`record`] decodes, in order.
const COLUMNS: &str = "e.id, e.ts_us, e.agent_id, e.host, e.src_ip, CAST(e.src_port AS BIGINT), \
     e.dst_ip, CAST(e.dst_port AS BIGINT), e.transport, e.server_name, e.fingerprints, \
     e.workload, e.received_us, e.spiffe_id, e.workload_key";

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("stored event {what}: {e}"))
}

fn record<R: Row>(r: &R) -> Result<EventRecord, StoreError>
where
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Uuid: Decode<'r, R::Database> + Type<R::Database>,
    usize: ColumnIndex<R>,
{
    let ip = |i: usize| -> Result<IpAddr, StoreError> {
        let s: String = r.try_get(i)?;
        s.parse().map_err(|e| corrupt("address", e))
    };
    let port = |i: usize| -> Result<u16, StoreError> {
        let p: i64 = r.try_get(i)?;
        u16::try_from(p).map_err(|e| corrupt("port", e))
    };
    let ts_us: i64 = r.try_get(1)?;
    let transport: String = r.try_get(8)?;
    let fingerprints: String = r.try_get(10)?;
    let workload: Option<String> = r.try_get(11)?;
    let event = FingerprintEvent {
        id: r.try_get(0)?,
        timestamp: OffsetDateTime::from_unix_timestamp_nanos(i128::from(ts_us) * 1000)
            .map_err(|e| corrupt("timestamp", e))?,
        agent_id: r.try_get(2)?,
        host: r.try_get(3)?,
        flow: Flow {
            src_ip: ip(4)?,
            src_port: port(5)?,
            dst_ip: ip(6)?,
            dst_port: port(7)?,
            transport: Transport::from_name(&transport)
                .ok_or_else(|| corrupt("transport", &transport))?,
        },
        server_name: r.try_get(9)?,
        fingerprints: serde_json::from_str::<Vec<Fingerprint>>(&fingerprints)
            .map_err(|e| corrupt("fingerprints", e))?,
        workload: workload
            .map(|w| serde_json::from_str::<Workload>(&w))
            .transpose()
            .map_err(|e| corrupt("workload", e))?
            .unwrap_or_default(),
        // Not stored: the correlation service reads it from the durable bus, where events keep
        // it (see `FingerprintEvent::ja4_stable`).
        ja4_stable: None,
    };
    Ok(EventRecord {
        event,
        received_us: r.try_get(12)?,
        identity: r.try_get(13)?,
        workload_key: r.try_get(14)?,
    })
}

/// Builds the search statement, `limit + 1` rows so the caller can tell whether another page
/// follows. `methods`: the methods the fingerprint filter covers (the query's own, or those the
/// roll-up knows for a bare value); empty for no fingerprint filter.
///
/// With no filter but the id bounds, `events` is read directly (newest first along its primary
/// key). Otherwise the page's ids come from the search tables, walked newest first along the
/// driving filter's index, and only those events are read.
pub(crate) fn build<DB>(q: &EventQuery, methods: &[Method]) -> QueryBuilder<DB>
where
    DB: Database,
    <DB as Database>::Arguments: Default,
    for<'t> String: Encode<'t, DB> + Type<DB>,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> Uuid: Encode<'t, DB> + Type<DB>,
{
    // The id bounds (cursor, time range), on the table that drives: on PostgreSQL they prune
    // its partitions.
    let lower = q.from_us.map(|us| uuid_floor_ms(us.div_euclid(1000)));
    let upper = q.to_us.map(|us| uuid_floor_ms(us.div_euclid(1000) + 1));
    let bounds = |qb: &mut QueryBuilder<DB>, alias: &str| {
        if let Some(lo) = lower {
            qb.push(format!(" AND {alias}.id >= "));
            qb.push_bind(lo);
        }
        if let Some(hi) = upper {
            qb.push(format!(" AND {alias}.id < "));
            qb.push_bind(hi);
        }
        if let Some(c) = q.before {
            qb.push(format!(" AND {alias}.id < "));
            qb.push_bind(c.0);
        }
    };
    let method_filter = |qb: &mut QueryBuilder<DB>| {
        if let [m] = methods {
            qb.push(" AND f.method = ");
            qb.push_bind(m.as_str());
        } else {
            qb.push(" AND f.method IN (");
            let mut list = qb.separated(", ");
            for m in methods {
                list.push_bind(m.as_str());
            }
            qb.push(")");
        }
    };
    // The filters on `event_search` (alias `s`), each a column with an index ending in the id.
    let text = [
        ("s.spiffe_id", &q.identity),
        ("s.workload_key", &q.workload),
        ("s.host", &q.host),
        ("s.agent_id", &q.agent),
        ("s.server_name", &q.server_name),
    ];
    let ips = [("s.src_ip", &q.src_ip), ("s.dst_ip", &q.dst_ip)];
    let others = text.iter().any(|(_, v)| v.is_some())
        || ips.iter().any(|(_, v)| v.is_some())
        || q.dst_port.is_some();
    let search_filters = |qb: &mut QueryBuilder<DB>| {
        for (col, v) in text {
            if let Some(v) = v {
                qb.push(format!(" AND {col} = "));
                qb.push_bind(v.clone());
            }
        }
        for (col, ip) in ips {
            if let Some(ip) = ip {
                // Stored as `IpAddr`'s display form, which is canonical (compressed IPv6, no
                // zone).
                qb.push(format!(" AND {col} = "));
                qb.push_bind(ip.to_string());
            }
        }
        if let Some(p) = q.dst_port {
            qb.push(" AND s.dst_port = ");
            qb.push_bind(i64::from(p));
        }
    };
    let page = i64::from(q.limit.clamp(1, MAX_PAGE_SIZE)) + 1;
    let mut qb = QueryBuilder::<DB>::new(format!("SELECT {COLUMNS} FROM events e WHERE "));
    if methods.is_empty() && !others {
        qb.push("1 = 1");
        bounds(&mut qb, "e");
        qb.push(" ORDER BY e.id DESC LIMIT ");
        qb.push_bind(page);
        return qb;
    }
    qb.push("e.id IN (");
    // The column the page is ordered by is the driving table's, so both engines walk its index
    // in order instead of sorting what matched.
    let order = match (&q.value, methods.is_empty()) {
        // (method, value, id) is the side table's key: at most one row per event. CROSS JOIN
        // makes SQLite drive from it (its planner may not reorder a CROSS JOIN; PostgreSQL's
        // does, with the statistics of the actual value).
        (Some(v), false) => {
            qb.push("SELECT f.id FROM event_fingerprints f");
            if others {
                qb.push(" CROSS JOIN event_search s WHERE s.id = f.id AND f.value = ");
            } else {
                qb.push(" WHERE f.value = ");
            }
            qb.push_bind(v.clone());
            method_filter(&mut qb);
            bounds(&mut qb, "f");
            "f.id"
        }
        // An event may carry several fingerprints of one method (certificates, SSH windows):
        // the newest distinct ids of the method, straight from its (method, id) index.
        (None, false) if !others => {
            qb.push("SELECT DISTINCT f.id FROM event_fingerprints f WHERE 1 = 1");
            method_filter(&mut qb);
            bounds(&mut qb, "f");
            "f.id"
        }
        // With other filters, whichever side is more selective drives (the planner's choice).
        (None, false) => {
            qb.push(
                "SELECT s.id FROM event_search s WHERE EXISTS \
                 (SELECT 1 FROM event_fingerprints f WHERE f.id = s.id",
            );
            method_filter(&mut qb);
            qb.push(")");
            bounds(&mut qb, "s");
            "s.id"
        }
        _ => {
            qb.push("SELECT s.id FROM event_search s WHERE 1 = 1");
            bounds(&mut qb, "s");
            "s.id"
        }
    };
    if others {
        search_filters(&mut qb);
    }
    qb.push(format!(" ORDER BY {order} DESC LIMIT "));
    qb.push_bind(page);
    qb.push(") ORDER BY e.id DESC");
    qb
}

/// The methods a bare fingerprint value (no method given) may belong to, from the roll-up.
const METHODS_OF_VALUE: &str = "SELECT method FROM fingerprints WHERE value = $1 ORDER BY method";

/// Turns `limit + 1` rows into a page.
fn paginate(mut items: Vec<EventRecord>, limit: u32) -> Page<EventRecord> {
    let limit = limit.clamp(1, MAX_PAGE_SIZE) as usize;
    let next_cursor = (items.len() > limit).then(|| {
        items.truncate(limit);
        items
            .last()
            .map(|e| EventCursor(e.event.id).encode())
            .unwrap_or_default()
    });
    Page { items, next_cursor }
}

macro_rules! impl_event_store {
    ($ty:ty, db = $db:ty) => {
        impl EventStore for $ty {
            fn events<'a>(&'a self, q: &'a EventQuery) -> StoreFuture<'a, Page<EventRecord>> {
                Box::pin(async move {
                    let methods: Vec<Method> = match (q.method, &q.value) {
                        (Some(m), _) => vec![m],
                        (None, Some(v)) => {
                            let names: Vec<String> = sqlx::query_scalar(METHODS_OF_VALUE)
                                .bind(v)
                                .fetch_all(self.settled_reader().await?)
                                .await?;
                            let methods = names
                                .iter()
                                .map(|n| super::method_from_db(n))
                                .collect::<Result<Vec<_>, _>>()?;
                            if methods.is_empty() {
                                // No event ever carried it.
                                return Ok(Page {
                                    items: Vec::new(),
                                    next_cursor: None,
                                });
                            }
                            methods
                        }
                        (None, None) => Vec::new(),
                    };
                    let mut qb = build::<$db>(q, &methods);
                    let rows = qb
                        .build()
                        .persistent(false)
                        .fetch_all(self.reader())
                        .await?;
                    let items = rows.iter().map(record).collect::<Result<Vec<_>, _>>()?;
                    Ok(paginate(items, q.limit))
                })
            }

            fn index_events<'a>(
                &'a self,
                events: &'a [&'a FingerprintEvent],
                checkpoint: &'a Checkpoint,
            ) -> StoreFuture<'a, ()> {
                Box::pin(async move {
                    self.prepare_search(events, false).await?;
                    match self.write_search(events, checkpoint).await {
                        // A partition retired since `prepare_search` (PostgreSQL).
                        Err(StoreError::Database(e))
                            if super::partitions::is_missing_partition(&e) =>
                        {
                            self.prepare_search(events, true).await?;
                            self.write_search(events, checkpoint).await
                        }
                        other => other,
                    }
                })
            }

            fn event(&self, id: Uuid) -> StoreFuture<'_, Option<EventRecord>> {
                Box::pin(async move {
                    let sql = format!("SELECT {COLUMNS} FROM events e WHERE e.id = $1");
                    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(id)
                        .fetch_optional(self.reader())
                        .await?;
                    row.as_ref().map(record).transpose()
                })
            }
        }

        impl $ty {
            /// One transaction: the search rows of `events` and the group's checkpoint.
            async fn write_search(
                &self,
                events: &[&FingerprintEvent],
                checkpoint: &Checkpoint,
            ) -> Result<(), StoreError> {
                let mut tx = self.writer().begin().await?;
                if let Some(sql) = <$ty>::SEARCH_COMMIT {
                    sqlx::query(sql).execute(&mut *tx).await?;
                }
                super::sql::insert_search_rows::<$db>(&mut *tx, events).await?;
                super::bus::commit_checkpoint::<$db>(&mut *tx, checkpoint).await?;
                tx.commit().await?;
                Ok(())
            }
        }
    };
}

impl_event_store!(super::sqlite::SqliteStore, db = sqlx::Sqlite);
impl_event_store!(super::postgres::PgStore, db = sqlx::Postgres);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_what_we_did_not_issue() {
        let c = EventCursor(Uuid::now_v7());
        assert_eq!(EventCursor::decode(&c.encode()), Some(c));
        assert_eq!(EventCursor::decode("nope"), None);
        assert_eq!(
            EventCursor::decode(
                &URL_SAFE_NO_PAD
                    .encode(Uuid::from_u128(0x0123_4567_89ab_4def_8123_4567_89ab_cdef).as_bytes())
            ),
            None,
            "not a v7 id"
        );
        assert_eq!(
            EventCursor::decode(&URL_SAFE_NO_PAD.encode([7u8; 15])),
            None
        );
    }

    /// `sql::insert_search_rows` writes the tables in this order, the order partition creation
    /// locks them in; changing one without the other brings back a deadlock.
    #[test]
    fn search_tables_are_written_in_lock_order() {
        assert_eq!(SEARCH_TABLES, ["event_fingerprints", "event_search"]);
    }

    #[test]
    fn every_value_is_bound() {
        let q = EventQuery {
            value: Some("x' OR '1'='1".into()),
            host: Some("h' --".into()),
            dst_port: Some(443),
            from_us: Some(1_800_000_000_000_000),
            limit: 10,
            ..Default::default()
        };
        let sql = build::<sqlx::Postgres>(&q, &[Method::Ja4])
            .into_sql()
            .as_str()
            .to_owned();
        assert!(!sql.contains("OR '1'"), "{sql}");
        assert!(!sql.contains("h'"), "{sql}");
        for part in ["s.host = $", "s.dst_port = $", "f.id >= $"] {
            assert!(sql.contains(part), "{part} in {sql}");
        }
        assert!(
            sql.contains("FROM event_fingerprints f CROSS JOIN event_search s"),
            "{sql}"
        );
        assert!(sql.contains("ORDER BY f.id DESC"), "{sql}");
        let method_only = EventQuery {
            method: Some(Method::Ja4x),
            limit: 10,
            ..Default::default()
        };
        let sql = build::<sqlx::Sqlite>(&method_only, &[Method::Ja4x])
            .into_sql()
            .as_str()
            .to_owned();
        assert!(sql.contains("SELECT DISTINCT f.id"), "{sql}");
        let with_host = EventQuery {
            host: Some("h".into()),
            ..method_only
        };
        let sql = build::<sqlx::Sqlite>(&with_host, &[Method::Ja4x])
            .into_sql()
            .as_str()
            .to_owned();
        assert!(sql.contains("EXISTS"), "{sql}");
        assert!(sql.contains("s.host = "), "{sql}");
        let cursor = EventQuery {
            before: Some(EventCursor(Uuid::now_v7())),
            limit: 10,
            ..Default::default()
        };
        let sql = build::<sqlx::Sqlite>(&cursor, &[])
            .into_sql()
            .as_str()
            .to_owned();
        assert!(sql.contains("e.id < "), "{sql}");
    }
}
