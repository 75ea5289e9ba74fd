//! Bulk row writes with one SQL text for both backends.
//!
//! A bulk insert or upsert is written once: `INSERT INTO t (columns) <rows> <tail>`, where the
//! tail (`ON CONFLICT …`) is the same SQL in SQLite and PostgreSQL. Only the row source differs,
//! because the engines really do: SQLite has no arrays, so rows are a multi-row `VALUES` list,
//! chunked below its bound-parameter limit; PostgreSQL takes one array per column and
//! `SELECT * FROM UNNEST(…)`, one statement whatever the row count (a fold can upsert hundreds of
//! thousands of rows; 500-row statements would cost a round trip each). [`Dialect`] is that
//! difference and nothing else.

use std::collections::BTreeMap;
use std::ops::Range;

use hais_shared::event::FingerprintEvent;
use sqlx::{Database, Postgres, QueryBuilder, Row as _, Sqlite};
use uuid::Uuid;

use super::rollup::{DeltaKind, Key, Measure, Part, Rollups, Seen, all_kinds};
use super::{StoreError, to_us};

/// One column of rows to write.
#[derive(Debug)]
pub(crate) enum Column<'a> {
    Text(Vec<Option<&'a str>>),
    /// Text built for the write (addresses, JSON).
    Owned(Vec<Option<String>>),
    Int(Vec<i64>),
    Uuid(Vec<Uuid>),
}

impl Column<'_> {
    fn len(&self) -> usize {
        match self {
            Column::Text(v) => v.len(),
            Column::Owned(v) => v.len(),
            Column::Int(v) => v.len(),
            Column::Uuid(v) => v.len(),
        }
    }
}

/// How a backend takes many rows in one statement; see the module documentation.
pub(crate) trait Dialect: Database {
    /// Rows one statement carries at most.
    const ROWS_PER_STATEMENT: usize;

    /// Appends `rows` of `cols` as the statement's row source.
    fn push_rows(qb: &mut QueryBuilder<Self>, cols: &[Column<'_>], rows: Range<usize>);

    /// Runs the statement, returning what it returns.
    fn run(
        qb: QueryBuilder<Self>,
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<Vec<Self::Row>, sqlx::Error>> + Send + '_;

    /// The UUID in the first column of a returned row.
    fn uuid_at(row: &Self::Row) -> Result<Uuid, sqlx::Error>;

    /// Writes the rows of `cols` whose key is not in `table` yet and leaves the others alone,
    /// the fastest way the backend has: `INSERT … ON CONFLICT DO NOTHING` in general; PostgreSQL
    /// first tries `COPY`, which skips the per-row conflict check and writes its btrees in bulk
    /// (15× cheaper per row into partitioned tables), and falls back to the `INSERT` only when a
    /// key is already there.
    fn insert_new<'a>(
        conn: &'a mut Self::Connection,
        table: &'a str,
        names: &'a [&'a str],
        cols: &'a [Column<'a>],
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'a {
        insert_skipping::<Self>(conn, table, names, cols)
    }
}

/// The [`Dialect`] items whose text is the same for both backends but which need the concrete
/// type (generic code would have to restate sqlx's executor bounds everywhere).
macro_rules! same_in_both {
    () => {
        async fn run(
            mut qb: QueryBuilder<Self>,
            conn: &mut Self::Connection,
        ) -> Result<Vec<Self::Row>, sqlx::Error> {
            qb.build().fetch_all(conn).await
        }

        fn uuid_at(row: &Self::Row) -> Result<Uuid, sqlx::Error> {
            row.try_get(0)
        }
    };
}

/// `ON CONFLICT DO NOTHING`: the general way of [`Dialect::insert_new`].
async fn insert_skipping<DB: Dialect>(
    conn: &mut DB::Connection,
    table: &str,
    names: &[&str],
    cols: &[Column<'_>],
) -> Result<(), StoreError> {
    insert_rows::<DB>(conn, table, names, cols, " ON CONFLICT DO NOTHING").await?;
    Ok(())
}

impl Dialect for Sqlite {
    /// 15 columns × 500 rows stays far below SQLite's 32,766 bound parameters per statement.
    const ROWS_PER_STATEMENT: usize = 500;

    fn push_rows(qb: &mut QueryBuilder<Self>, cols: &[Column<'_>], rows: Range<usize>) {
        qb.push_values(rows, |mut b, i| {
            for c in cols {
                match c {
                    Column::Text(v) => b.push_bind(v[i]),
                    Column::Owned(v) => b.push_bind(v[i].clone()),
                    Column::Int(v) => b.push_bind(v[i]),
                    Column::Uuid(v) => b.push_bind(v[i]),
                };
            }
        });
    }

    same_in_both!();
}

impl Dialect for Postgres {
    const ROWS_PER_STATEMENT: usize = usize::MAX;

    fn push_rows(qb: &mut QueryBuilder<Self>, cols: &[Column<'_>], rows: Range<usize>) {
        qb.push("SELECT * FROM UNNEST(");
        for (n, c) in cols.iter().enumerate() {
            if n > 0 {
                qb.push(", ");
            }
            let r = rows.clone();
            match c {
                Column::Text(v) => qb.push_bind(&v[r]).push("::text[]"),
                Column::Owned(v) => qb.push_bind(&v[r]).push("::text[]"),
                Column::Int(v) => qb.push_bind(&v[r]).push("::int8[]"),
                Column::Uuid(v) => qb.push_bind(&v[r]).push("::uuid[]"),
            };
        }
        qb.push(")");
    }

    async fn insert_new<'a>(
        conn: &'a mut Self::Connection,
        table: &'a str,
        names: &'a [&'a str],
        cols: &'a [Column<'a>],
    ) -> Result<(), StoreError> {
        if cols.first().is_none_or(|c| c.len() == 0) {
            return Ok(());
        }
        let stmt = format!("COPY {table} ({}) FROM STDIN", names.join(", "));
        sqlx::query("SAVEPOINT insert_new")
            .execute(&mut *conn)
            .await?;
        let mut copy = conn.copy_in_raw(&stmt).await?;
        let copied = match copy.send(copy_text(cols)).await {
            Ok(_) => copy.finish().await.map(drop),
            Err(e) => {
                let _ = copy.abort("send failed").await;
                Err(e)
            }
        };
        match copied {
            Ok(()) => Ok(()),
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("23505") => {
                sqlx::query("ROLLBACK TO SAVEPOINT insert_new")
                    .execute(&mut *conn)
                    .await?;
                insert_skipping::<Self>(conn, table, names, cols).await
            }
            Err(e) => Err(e.into()),
        }
    }

    same_in_both!();
}

/// The rows of `cols` in `COPY`'s text format: a line per row, fields separated by tabs, `\N`
/// for NULL, and backslash, tab, newline and carriage return escaped in text.
fn copy_text(cols: &[Column<'_>]) -> Vec<u8> {
    use std::io::Write as _;
    let n = cols.first().map_or(0, Column::len);
    let mut out = Vec::with_capacity(n * cols.len() * 24);
    let text = |out: &mut Vec<u8>, v: Option<&str>| match v {
        None => out.extend_from_slice(b"\\N"),
        Some(v) => {
            for b in v.bytes() {
                match b {
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    b => out.push(b),
                }
            }
        }
    };
    for i in 0..n {
        for (k, c) in cols.iter().enumerate() {
            if k > 0 {
                out.push(b'\t');
            }
            match c {
                Column::Text(v) => text(&mut out, v[i]),
                Column::Owned(v) => text(&mut out, v[i].as_deref()),
                // Writing into a Vec cannot fail.
                Column::Int(v) => drop(write!(out, "{}", v[i])),
                Column::Uuid(v) => drop(write!(out, "{}", v[i])),
            }
        }
        out.push(b'\n');
    }
    out
}

/// `INSERT INTO table (names) <rows> tail` for every row of `cols`, in as few statements as the
/// backend allows; returns the rows the statements return (`tail` may say `RETURNING`).
pub(crate) async fn insert_rows<DB: Dialect>(
    conn: &mut DB::Connection,
    table: &str,
    names: &[&str],
    cols: &[Column<'_>],
    tail: &str,
) -> Result<Vec<DB::Row>, StoreError> {
    let n = cols.first().map_or(0, Column::len);
    let mut out = Vec::new();
    let mut at = 0;
    while at < n {
        let end = n.min(at.saturating_add(DB::ROWS_PER_STATEMENT));
        let mut qb = QueryBuilder::<DB>::default();
        qb.push(format!("INSERT INTO {table} ({}) ", names.join(", ")));
        DB::push_rows(&mut qb, cols, at..end);
        qb.push(tail);
        out.extend(DB::run(qb, conn).await?);
        at = end;
    }
    Ok(out)
}

/// The `ON CONFLICT` clause merging a row into an existing one: first/last seen as min/max
/// (`CASE`, because SQLite says `min`/`max` where PostgreSQL says `LEAST`/`GREATEST`), counts
/// added.
fn merge_tail(table: &str, keys: &[&str], measure: Measure) -> String {
    let count = format!("count = {table}.count + excluded.count");
    let set = match measure {
        Measure::Count => count,
        Measure::Seen => format!(
            "first_seen_us = CASE WHEN excluded.first_seen_us < {table}.first_seen_us \
             THEN excluded.first_seen_us ELSE {table}.first_seen_us END, \
             last_seen_us = CASE WHEN excluded.last_seen_us > {table}.last_seen_us \
             THEN excluded.last_seen_us ELSE {table}.last_seen_us END, {count}"
        ),
    };
    format!(" ON CONFLICT ({}) DO UPDATE SET {set}", keys.join(", "))
}

/// Measure columns of a kind, in the order [`measure_columns`] fills them.
fn measure_names(m: Measure) -> &'static [&'static str] {
    match m {
        Measure::Seen => &["first_seen_us", "last_seen_us", "count"],
        Measure::Count => &["count"],
    }
}

fn measure_columns<'a>(m: Measure, seen: impl Iterator<Item = Seen>) -> Vec<Column<'a>> {
    let (mut first, mut last, mut count) = (Vec::new(), Vec::new(), Vec::new());
    for s in seen {
        first.push(s.first_us);
        last.push(s.last_us);
        count.push(s.count);
    }
    match m {
        Measure::Seen => vec![Column::Int(first), Column::Int(last), Column::Int(count)],
        Measure::Count => vec![Column::Int(count)],
    }
}

/// Upserts one kind's merged deltas into its table.
async fn write_kind<DB: Dialect>(
    conn: &mut DB::Connection,
    kind: &DeltaKind,
    rows: &BTreeMap<Key<'_>, Seen>,
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut cols: Vec<Column<'_>> = kind
        .key
        .iter()
        .enumerate()
        .map(|(i, &(_, part))| match part {
            Part::Str => Column::Text(rows.keys().map(|k| k[i].str()).collect()),
            Part::Int => Column::Int(
                rows.keys()
                    .map(|k| match k[i] {
                        super::rollup::KeyVal::Int(x) => x,
                        _ => 0,
                    })
                    .collect(),
            ),
        })
        .collect();
    let mut names: Vec<&str> = kind.key.iter().map(|(c, _)| *c).collect();
    let keys = names.clone();
    if let Some(d) = &kind.derived {
        let values: Vec<Vec<Option<&str>>> = rows.keys().map(|k| (d.values)(k)).collect();
        for (i, name) in d.columns.iter().enumerate() {
            names.push(name);
            cols.push(Column::Text(
                values.iter().map(|v| v.get(i).copied().flatten()).collect(),
            ));
        }
    }
    names.extend(measure_names(kind.measure));
    cols.extend(measure_columns(kind.measure, rows.values().copied()));
    let tail = merge_tail(kind.table, &keys, kind.measure);
    insert_rows::<DB>(conn, kind.table, &names, &cols, &tail).await?;
    Ok(())
}

/// Upserts every contributor's merged deltas, inside the fold transaction.
pub(crate) async fn write_rollups<DB: Dialect>(
    conn: &mut DB::Connection,
    r: &Rollups<'_>,
) -> Result<(), StoreError> {
    for (kind, rows) in all_kinds().zip(&r.sections) {
        write_kind::<DB>(conn, kind, rows).await?;
    }
    Ok(())
}

/// Upserts `(key…, first, last, count)` rows into `table` (tables written outside the fold,
/// e.g. the identity service's tied matches). Keys must be distinct.
pub(crate) async fn upsert_seen<DB: Dialect, const K: usize>(
    conn: &mut DB::Connection,
    table: &'static str,
    keys: [&'static str; K],
    rows: &[([&str; K], Seen)],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut cols: Vec<Column<'_>> = (0..K)
        .map(|i| Column::Text(rows.iter().map(|(k, _)| Some(k[i])).collect()))
        .collect();
    cols.extend(measure_columns(Measure::Seen, rows.iter().map(|(_, s)| *s)));
    let mut names = keys.to_vec();
    names.extend(measure_names(Measure::Seen));
    let tail = merge_tail(table, &keys, Measure::Seen);
    insert_rows::<DB>(conn, table, &names, &cols, &tail).await?;
    Ok(())
}

/// Columns of `events`, in the order the PostgreSQL COPY writes them.
pub(crate) const EVENT_COLUMNS: [&str; 15] = [
    "id",
    "ts_us",
    "agent_id",
    "host",
    "src_ip",
    "src_port",
    "dst_ip",
    "dst_port",
    "transport",
    "server_name",
    "fingerprints",
    "workload",
    "received_us",
    "spiffe_id",
    "workload_key",
];

fn json(v: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Columns of `event_search` (migration `0013_event_search_async`): the id and every column an
/// events filter matches.
pub(crate) const SEARCH_COLUMNS: [&str; 9] = [
    "id",
    "host",
    "agent_id",
    "src_ip",
    "dst_ip",
    "dst_port",
    "server_name",
    "spiffe_id",
    "workload_key",
];

/// Column `name` (of [`EVENT_COLUMNS`] or [`SEARCH_COLUMNS`]) of the events: one definition of
/// what each column holds, for both tables.
fn event_column<'a>(
    name: &str,
    events: &[&'a FingerprintEvent],
    received: i64,
) -> Result<Column<'a>, StoreError> {
    let text = |f: fn(&'a FingerprintEvent) -> Option<&'a str>| {
        Column::Text(events.iter().map(|e| f(e)).collect())
    };
    let int = |f: fn(&FingerprintEvent) -> i64| Column::Int(events.iter().map(|e| f(e)).collect());
    let shown = |f: fn(&FingerprintEvent) -> String| {
        Column::Owned(events.iter().map(|e| Some(f(e))).collect())
    };
    Ok(match name {
        "id" => Column::Uuid(events.iter().map(|e| e.id).collect()),
        "ts_us" => int(|e| to_us(e.timestamp)),
        "agent_id" => text(|e| Some(&e.agent_id)),
        "host" => text(|e| Some(&e.host)),
        "src_ip" => shown(|e| e.flow.src_ip.to_string()),
        "src_port" => int(|e| i64::from(e.flow.src_port)),
        "dst_ip" => shown(|e| e.flow.dst_ip.to_string()),
        "dst_port" => int(|e| i64::from(e.flow.dst_port)),
        "transport" => text(|e| Some(e.flow.transport.as_str())),
        "server_name" => text(|e| e.server_name.as_deref()),
        "fingerprints" => Column::Owned(
            events
                .iter()
                .map(|e| json(&e.fingerprints).map(Some))
                .collect::<Result<_, _>>()?,
        ),
        "workload" => Column::Owned(
            events
                .iter()
                .map(|e| {
                    (!e.workload.is_empty())
                        .then(|| json(&e.workload))
                        .transpose()
                })
                .collect::<Result<_, _>>()?,
        ),
        "received_us" => Column::Int(vec![received; events.len()]),
        "spiffe_id" => text(|e| e.workload.spiffe_id.as_deref()),
        "workload_key" => text(|e| e.workload.key.as_deref()),
        other => return Err(StoreError::Corrupt(format!("no event column {other}"))),
    })
}

/// The events as the columns `names`.
fn event_columns<'a>(
    names: &[&str],
    events: &[&'a FingerprintEvent],
    received: i64,
) -> Result<Vec<Column<'a>>, StoreError> {
    names
        .iter()
        .map(|n| event_column(n, events, received))
        .collect()
}

/// The `event_fingerprints` rows of `events` (method, value, id): one per distinct fingerprint
/// of each event, so the side table's key never repeats within a write.
pub(crate) fn event_fingerprint_rows<'a>(
    events: impl IntoIterator<Item = &'a FingerprintEvent>,
) -> Vec<(&'a str, &'a str, Uuid)> {
    let mut rows = Vec::new();
    for e in events {
        let at = rows.len();
        for f in &e.fingerprints {
            let row = (f.method.as_str(), f.value.as_str(), e.id);
            if !rows[at..].contains(&row) {
                rows.push(row);
            }
        }
    }
    rows
}

/// Indexes stored events for search: their fingerprints' `event_fingerprints` rows and their
/// `event_search` rows. Rows already there are left alone, so indexing an event twice (a
/// replayed bus row, the overlap after an upgrade) is harmless.
///
/// The tables are written in [`super::events::SEARCH_TABLES`] order, the order in which
/// PostgreSQL partition creation (`partitions::ensure`) locks them: in the other order, an
/// indexer holding one table while a new day's partitions are being created would deadlock.
pub(crate) async fn insert_search_rows<DB: Dialect>(
    conn: &mut DB::Connection,
    events: &[&FingerprintEvent],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let rows = event_fingerprint_rows(events.iter().copied());
    if !rows.is_empty() {
        let cols = [
            Column::Text(rows.iter().map(|r| Some(r.0)).collect()),
            Column::Text(rows.iter().map(|r| Some(r.1)).collect()),
            Column::Uuid(rows.iter().map(|r| r.2).collect()),
        ];
        DB::insert_new(
            conn,
            "event_fingerprints",
            &["method", "value", "id"],
            &cols,
        )
        .await?;
    }
    let cols = event_columns(&SEARCH_COLUMNS, events, 0)?;
    DB::insert_new(conn, "event_search", &SEARCH_COLUMNS, &cols).await
}

/// Inserts the events whose id is not stored yet; says, per event, whether it was new. An id
/// repeated inside `events` counts as new once.
pub(crate) async fn insert_events<DB: Dialect>(
    conn: &mut DB::Connection,
    events: &[&FingerprintEvent],
    received: i64,
) -> Result<Vec<bool>, StoreError> {
    let cols = event_columns(&EVENT_COLUMNS, events, received)?;
    let rows = insert_rows::<DB>(
        conn,
        "events",
        &EVENT_COLUMNS,
        &cols,
        " ON CONFLICT (id) DO NOTHING RETURNING id",
    )
    .await?;
    let mut new_ids = rows
        .iter()
        .map(DB::uuid_at)
        .collect::<Result<std::collections::HashSet<Uuid>, _>>()?;
    // `remove` makes an id repeated inside the batch count as new only once.
    Ok(events.iter().map(|e| new_ids.remove(&e.id)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NULL is `\N`, and the four characters `COPY`'s text format gives a meaning are escaped,
    /// so no value can end a field or a row early or be read as NULL.
    #[test]
    fn copy_text_escapes_what_copy_reads_specially() {
        let id = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001);
        let cols = [
            Column::Uuid(vec![id, id]),
            Column::Text(vec![Some(r"a\b"), None]),
            Column::Owned(vec![Some("t\tn\nr\r".into()), Some(r"\N".into())]),
            Column::Int(vec![443, -1]),
        ];
        let text = String::from_utf8(copy_text(&cols)).unwrap();
        assert_eq!(
            text,
            format!("{id}\ta\\\\b\tt\\tn\\nr\\r\t443\n{id}\t\\N\t\\\\N\t-1\n")
        );
        assert!(copy_text(&[Column::Int(Vec::new())]).is_empty());
    }
}
