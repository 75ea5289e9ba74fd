//! Storage of the durable bus (migrations `0006_bus`, `0007_bus_order`): the log, consumer
//! groups' cursors and leases, members, dead letters, and the counters lag is computed from. See
//! [`crate::bus::durable`] for how they are used and docs/ARCHITECTURE.md ("The durable bus")
//! for why the database is the log and why rows are read in `(xid, seq)` order.
//!
//! One SQL text for both backends, like [`super::spire`], except the few statements
//! [`BusDialect`] holds. Appending ([`append`]) and committing a consumer's progress
//! ([`commit_checkpoint`]) are generic over the backend so that they run inside someone else's
//! transaction: ingest appends its new events in its own transaction, and a service commits its
//! effects and its cursor together.

use serde::{Deserialize, Serialize};
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, QueryBuilder, Type};

use super::{StoreError, StoreFuture};
use crate::bus::log::OutboxRow;

/// A place in a topic's log. Rows are consumed in `(xid, seq)` order: `xid` is the writing
/// transaction's id on PostgreSQL (0 on SQLite, whose single writer makes `seq` order the commit
/// order), `seq` the row's number. A cursor is the position of the last row passed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub xid: i64,
    pub seq: i64,
}

impl Position {
    /// Before every row.
    pub const START: Position = Position { xid: 0, seq: 0 };
}

/// One stored row of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRow {
    /// The transaction that appended it (PostgreSQL; 0 on SQLite and for a replayed dead letter).
    pub xid: i64,
    pub seq: i64,
    pub part: i64,
    pub items: i64,
    pub created_us: i64,
    pub payload: Vec<u8>,
}

impl LogRow {
    pub fn position(&self) -> Position {
        Position {
            xid: self.xid,
            seq: self.seq,
        }
    }
}

/// What a consumer has done and must record, atomically with the effects of doing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkpoint {
    /// Rows `(from, to]` of one partition, passed by `owner`: moves the cursor, only if it is
    /// still at `from` and `owner` still holds the partition (fencing: a member whose lease was
    /// taken over cannot commit twice what its successor also handles).
    Cursor {
        grp: String,
        topic: String,
        part: i64,
        from: Position,
        to: Position,
        owner: String,
        /// Items whose effects are committed (0 when the rows go to the dead letters).
        items: i64,
        /// Rows and items in `(from, to]`, handled or not: what the group's lag loses.
        passed_rows: i64,
        passed_items: i64,
    },
    /// A dead letter replayed by `owner`, who claimed it: deletes it, only if still claimed by
    /// `owner`.
    Replay {
        id: String,
        grp: String,
        topic: String,
        part: i64,
        owner: String,
        items: i64,
    },
}

impl Checkpoint {
    /// How many items the work covered.
    pub fn items(&self) -> i64 {
        match self {
            Checkpoint::Cursor { items, .. } | Checkpoint::Replay { items, .. } => *items,
        }
    }
}

/// A row a consumer group gave up on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetter {
    /// UUIDv7.
    pub id: String,
    pub group: String,
    pub topic: String,
    pub partition: i64,
    /// The row's number in the topic's log.
    pub seq: i64,
    /// Items (e.g. events) the row holds.
    pub items: i64,
    /// The last failure.
    pub error: String,
    /// Deliveries tried so far.
    pub attempts: i64,
    pub created_us: i64,
    /// Set when an admin asked for a replay that has not happened yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_requested_us: Option<i64>,
}

/// A consumer group's position on its topic, as the store knows it.
///
/// The lag is counted, not read from the log: rows and items appended to the topic by committed
/// transactions (counters the appends keep, `bus_counts`) minus those the group's cursors moved
/// past (handled or dead-lettered) and those trimmed before the group existed. It includes rows
/// committed but not yet readable (on PostgreSQL a row becomes readable once every transaction
/// older than its own has ended) and no row of a transaction still open. Reading it costs a
/// few index lookups however far behind the group is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GroupPosition {
    pub group: String,
    pub topic: String,
    /// Items whose effects the group committed, since it was created.
    pub handled: i64,
    /// Log rows committed to the topic that the group's cursors have not passed yet.
    pub lag_rows: i64,
    /// Items in those rows.
    pub lag_items: i64,
    /// Partitions currently leased by a member.
    pub owned_partitions: i64,
    /// Members that reported within the membership TTL.
    pub live_members: i64,
    pub dead_letters: i64,
}

const DEAD_LETTER_COLUMNS: &str = "id, grp, topic, part, seq, items, error, attempts, created_us, \
                                   replay_requested_us";

/// One `DEAD_LETTER_COLUMNS` row.
#[doc(hidden)]
pub type DeadLetterRow = (
    String,
    String,
    String,
    i64,
    i64,
    i64,
    String,
    i64,
    i64,
    Option<i64>,
);

/// Public to [`impl_bus_store!`]'s expansion only.
#[doc(hidden)]
pub fn dead_letter_of(r: DeadLetterRow) -> DeadLetter {
    let (id, group, topic, partition, seq, items, error, attempts, created_us, replay) = r;
    DeadLetter {
        id,
        group,
        topic,
        partition,
        seq,
        items,
        error,
        attempts,
        created_us,
        replay_requested_us: replay,
    }
}

/// What the backends do differently on the bus: how rows are numbered and when they may be read.
pub trait BusDialect: Database {
    /// Whether rows are numbered from `bus_heads` in the appending transaction (SQLite: its one
    /// writer makes that order the commit order) rather than by the columns' defaults
    /// (PostgreSQL: `seq` from a sequence, `xid` the transaction's id; no lock).
    const NUMBERS_FROM_HEADS: bool;
    /// Adds `$2` rows and `$3` items to topic `$1`'s appended counters, in a counter row of this
    /// connection's own (PostgreSQL: its backend's pid), so concurrent appenders never wait on
    /// one another.
    const COUNT: &'static str;
    /// Up to `$5` rows of topic `$1`, partition `$2` after position (`$3`, `$4`), in order, that
    /// no transaction still open can precede.
    const READ: &'static str;
}

/// The part of [`BusDialect::READ`] the backends share.
macro_rules! read_head {
    () => {
        "SELECT xid, seq, part, items, created_us, payload FROM bus_log \
         WHERE topic = $1 AND part = $2 AND (xid, seq) > ($3, $4) "
    };
}

impl BusDialect for sqlx::Sqlite {
    const NUMBERS_FROM_HEADS: bool = true;
    const COUNT: &'static str = "INSERT INTO bus_counts (topic, shard, log_rows, log_items) \
        VALUES ($1, 0, $2, $3) ON CONFLICT (topic, shard) DO UPDATE SET \
        log_rows = bus_counts.log_rows + excluded.log_rows, \
        log_items = bus_counts.log_items + excluded.log_items";
    const READ: &'static str = concat!(read_head!(), "ORDER BY xid, seq LIMIT $5");
}

impl BusDialect for sqlx::Postgres {
    const NUMBERS_FROM_HEADS: bool = false;
    const COUNT: &'static str = "INSERT INTO bus_counts (topic, shard, log_rows, log_items) \
        VALUES ($1, pg_backend_pid(), $2, $3) ON CONFLICT (topic, shard) DO UPDATE SET \
        log_rows = bus_counts.log_rows + excluded.log_rows, \
        log_items = bus_counts.log_items + excluded.log_items";
    // The horizon: every transaction whose id is below the snapshot's xmin has ended, and no
    // transaction can be given such an id any more. A row above it may still be preceded by a
    // row an open transaction will commit, so it waits (see docs/ARCHITECTURE.md).
    const READ: &'static str = concat!(
        read_head!(),
        "AND xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint \
         ORDER BY xid, seq LIMIT $5"
    );
}

/// Appends `rows` to the log inside the caller's transaction, and counts them. On SQLite, topics
/// are numbered in name order (two transactions never wait on each other there, but the order
/// costs nothing).
pub async fn append<DB>(
    conn: &mut DB::Connection,
    rows: &[OutboxRow],
    now_us: i64,
) -> Result<(), StoreError>
where
    DB: BusDialect,
    <DB as Database>::Arguments: Default + IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Decode<'t, DB> + Type<DB>,
    for<'t> &'t [u8]: Encode<'t, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    let mut topics: Vec<&'static str> = rows.iter().map(|r| r.topic).collect();
    topics.sort_unstable();
    topics.dedup();
    for topic in topics {
        let mine: Vec<&OutboxRow> = rows.iter().filter(|r| r.topic == topic).collect();
        let n = mine.len() as i64;
        let first = if DB::NUMBERS_FROM_HEADS {
            let end: i64 = sqlx::query_scalar(
                "INSERT INTO bus_heads (topic, next_seq) VALUES ($1, $2) ON CONFLICT (topic) \
                 DO UPDATE SET next_seq = bus_heads.next_seq + excluded.next_seq \
                 RETURNING next_seq",
            )
            .bind(topic)
            .bind(n)
            .fetch_one(&mut *conn)
            .await?;
            Some(end - n + 1)
        } else {
            None
        };
        for (c, chunk) in mine.chunks(200).enumerate() {
            let mut qb = QueryBuilder::<DB>::new(if first.is_some() {
                "INSERT INTO bus_log (topic, part, items, created_us, payload, seq) "
            } else {
                "INSERT INTO bus_log (topic, part, items, created_us, payload) "
            });
            qb.push_values(chunk.iter().enumerate(), |mut b, (i, r)| {
                b.push_bind(topic)
                    .push_bind(r.part)
                    .push_bind(r.items)
                    .push_bind(now_us)
                    .push_bind(r.payload.as_slice());
                if let Some(first) = first {
                    b.push_bind(first + (c * 200 + i) as i64);
                }
            });
            qb.build().execute(&mut *conn).await?;
        }
        sqlx::query(DB::COUNT)
            .bind(topic)
            .bind(n)
            .bind(mine.iter().map(|r| r.items).sum::<i64>())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Publishes `detections` on the durable topic `detections` ([`crate::bus::log::Detections`])
/// inside the caller's transaction: a judging service (correlation, policy, threat) calls it in
/// the transaction that stores its finding, violation or match, so the alert service hears of
/// each exactly when it is committed. A recurrence is published again with the same id and a
/// higher count.
pub async fn append_detections<DB>(
    conn: &mut DB::Connection,
    detections: &[hais_shared::detection::Detection],
    now_us: i64,
) -> Result<(), StoreError>
where
    DB: BusDialect,
    <DB as Database>::Arguments: Default + IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Decode<'t, DB> + Type<DB>,
    for<'t> &'t [u8]: Encode<'t, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    let rows = crate::bus::log::outbox::<crate::bus::log::Detections>(detections);
    append::<DB>(conn, &rows, now_us).await
}

/// The stored id, count and first-seen time (µs) of the rows of `table` whose `key_col` is one
/// of `keys`, read in the caller's transaction: a judging service's detections (threat matches,
/// policy violations) keep their id and add to their count when they recur.
pub async fn recurrences<DB>(
    conn: &mut DB::Connection,
    table: &'static str,
    key_col: &'static str,
    keys: &[&str],
) -> Result<std::collections::HashMap<String, (String, i64, i64)>, StoreError>
where
    DB: Database,
    <DB as Database>::Arguments: Default + IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'t> String: Encode<'t, DB> + Decode<'t, DB> + Type<DB>,
    for<'t> i64: Decode<'t, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    use sqlx::Row as _;
    let mut out = std::collections::HashMap::new();
    for chunk in keys.chunks(500) {
        let mut qb = QueryBuilder::<DB>::new(format!(
            "SELECT {key_col}, id, count, first_seen_us FROM {table} WHERE {key_col} IN ("
        ));
        let mut sep = qb.separated(", ");
        for k in chunk {
            sep.push_bind(k.to_string());
        }
        qb.push(")");
        for r in qb.build().fetch_all(&mut *conn).await? {
            out.insert(r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?, r.try_get(3)?));
        }
    }
    Ok(out)
}

/// Records a consumer's progress inside the caller's transaction; [`StoreError::Fenced`] when the
/// caller no longer owns the work (the transaction must then be rolled back).
pub async fn commit_checkpoint<DB>(
    conn: &mut DB::Connection,
    cp: &Checkpoint,
) -> Result<(), StoreError>
where
    DB: Database,
    <DB as Database>::Arguments: Default + IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
    for<'t> String: Decode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Decode<'t, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    match cp {
        Checkpoint::Cursor {
            grp,
            topic,
            part,
            from,
            to,
            owner,
            items,
            passed_rows,
            passed_items,
        } => {
            let moved: Option<i64> = sqlx::query_scalar(
                "UPDATE bus_partitions SET xid = $1, seq = $2, handled = handled + $3, \
                 passed_rows = passed_rows + $4, passed_items = passed_items + $5 \
                 WHERE grp = $6 AND topic = $7 AND part = $8 AND xid = $9 AND seq = $10 \
                 AND owner = $11 RETURNING seq",
            )
            .bind(to.xid)
            .bind(to.seq)
            .bind(*items)
            .bind(*passed_rows)
            .bind(*passed_items)
            .bind(grp.as_str())
            .bind(topic.as_str())
            .bind(*part)
            .bind(from.xid)
            .bind(from.seq)
            .bind(owner.as_str())
            .fetch_optional(&mut *conn)
            .await?;
            if moved.is_none() {
                return Err(StoreError::Fenced(format!(
                    "{grp}/{topic} partition {part} is no longer at {from:?} for {owner}"
                )));
            }
        }
        Checkpoint::Replay {
            id,
            grp,
            topic,
            part,
            owner,
            items,
        } => {
            let gone: Option<String> = sqlx::query_scalar(
                "DELETE FROM bus_dead_letters WHERE id = $1 AND claimed_by = $2 RETURNING id",
            )
            .bind(id.as_str())
            .bind(owner.as_str())
            .fetch_optional(&mut *conn)
            .await?;
            if gone.is_none() {
                return Err(StoreError::Fenced(format!(
                    "dead letter {id} is no longer claimed by {owner}"
                )));
            }
            sqlx::query(
                "UPDATE bus_partitions SET handled = handled + $1 \
                 WHERE grp = $2 AND topic = $3 AND part = $4",
            )
            .bind(*items)
            .bind(grp.as_str())
            .bind(topic.as_str())
            .bind(*part)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// The bus's storage, implemented for both backends by [`impl_bus_store!`].
pub trait BusStore {
    /// Creates a group's partitions (cursor at the start of what the log holds, lag counted
    /// from what was trimmed before) if new.
    fn bus_register<'a>(&'a self, grp: &'a str, topic: &'a str) -> StoreFuture<'a, ()>;
    /// Records that `member` is alive; returns how many members were seen within `ttl_us`.
    fn bus_heartbeat<'a>(
        &'a self,
        grp: &'a str,
        topic: &'a str,
        member: &'a str,
        now_us: i64,
        ttl_us: i64,
    ) -> StoreFuture<'a, i64>;
    /// Gives up every lease of `member` and forgets it (clean shutdown: others take over now).
    fn bus_leave<'a>(
        &'a self,
        grp: &'a str,
        topic: &'a str,
        member: &'a str,
    ) -> StoreFuture<'a, ()>;
    /// Extends `member`'s leases; returns the partitions it still holds.
    fn bus_renew<'a>(
        &'a self,
        grp: &'a str,
        topic: &'a str,
        member: &'a str,
        until_us: i64,
    ) -> StoreFuture<'a, Vec<i64>>;
    /// Takes a partition that is free or whose lease ran out; returns its cursor if taken.
    fn bus_acquire<'a>(
        &'a self,
        grp: &'a str,
        topic: &'a str,
        part: i64,
        member: &'a str,
        now_us: i64,
        until_us: i64,
    ) -> StoreFuture<'a, Option<Position>>;
    /// Gives a partition back.
    fn bus_release<'a>(
        &'a self,
        grp: &'a str,
        topic: &'a str,
        part: i64,
        member: &'a str,
    ) -> StoreFuture<'a, ()>;
    /// Up to `max_rows` rows of a partition after `after`, in log order, among those that can
    /// no longer be preceded by a row committed later ([`BusDialect::READ`]).
    fn bus_read<'a>(
        &'a self,
        topic: &'a str,
        part: i64,
        after: Position,
        max_rows: i64,
    ) -> StoreFuture<'a, Vec<LogRow>>;
    /// Commits a checkpoint on its own (work whose effects are not in the database).
    fn bus_commit<'a>(&'a self, cp: &'a Checkpoint) -> StoreFuture<'a, ()>;
    /// Moves `row` to the dead letters and past it (or, for a replay, records the new failure),
    /// in one transaction.
    fn bus_dead_letter<'a>(
        &'a self,
        cp: &'a Checkpoint,
        row: &'a LogRow,
        error: &'a str,
        attempts: i64,
        now_us: i64,
    ) -> StoreFuture<'a, ()>;
    /// Appends rows in a transaction of their own.
    fn bus_publish<'a>(&'a self, rows: &'a [OutboxRow], now_us: i64) -> StoreFuture<'a, ()>;
    /// Every group's position (for status and metrics), from counters: see [`GroupPosition`].
    fn bus_positions(&self, now_us: i64, member_ttl_us: i64)
    -> StoreFuture<'_, Vec<GroupPosition>>;
    /// Deletes rows of `topic` that every group has committed; returns how many. Also folds the
    /// appended counters' shards into one.
    fn bus_trim<'a>(&'a self, topic: &'a str) -> StoreFuture<'a, u64>;
    /// Dead letters, oldest first, after `after` (an id), optionally of one group.
    fn bus_dead_letters<'a>(
        &'a self,
        grp: Option<&'a str>,
        after: Option<&'a str>,
        limit: i64,
    ) -> StoreFuture<'a, Vec<DeadLetter>>;
    /// One dead letter with its payload.
    fn bus_dead_letter_get<'a>(
        &'a self,
        id: &'a str,
    ) -> StoreFuture<'a, Option<(DeadLetter, Vec<u8>)>>;
    /// Asks the group to handle a dead letter again; false if there is none.
    fn bus_request_replay<'a>(&'a self, id: &'a str, now_us: i64) -> StoreFuture<'a, bool>;
    /// Deletes a dead letter; false if there is none.
    fn bus_discard<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool>;
    /// Claims up to `limit` dead letters of the group whose replay was requested.
    fn bus_claim_replays<'a>(
        &'a self,
        grp: &'a str,
        topic: &'a str,
        member: &'a str,
        now_us: i64,
        until_us: i64,
        limit: i64,
    ) -> StoreFuture<'a, Vec<(DeadLetter, LogRow)>>;
}

macro_rules! impl_bus_store {
    ($ty:ty, db = $db:ty, write = |$w:ident| $wexpr:expr, read = |$r:ident| $rexpr:expr) => {
        impl $crate::store::bus::BusStore for $ty {
            fn bus_register<'a>(
                &'a self,
                grp: &'a str,
                topic: &'a str,
            ) -> $crate::store::StoreFuture<'a, ()> {
                let $w = self;
                Box::pin(async move {
                    let mut tx = $wexpr.begin().await?;
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO bus_trimmed (topic, part) ",
                    );
                    qb.push_values(0..$crate::bus::log::PARTITIONS, |mut b, p| {
                        b.push_bind(topic).push_bind(p);
                    });
                    qb.push(" ON CONFLICT (topic, part) DO NOTHING");
                    qb.build().execute(&mut *tx).await?;
                    // Locks the trimmed counts (as trimming does) so that none is trimmed between
                    // reading them and the new cursors being visible to trimming.
                    sqlx::query("UPDATE bus_trimmed SET log_rows = log_rows WHERE topic = $1")
                        .bind(topic)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(
                        "INSERT INTO bus_partitions (grp, topic, part, passed_rows, passed_items) \
                         SELECT $1, topic, part, log_rows, log_items FROM bus_trimmed \
                         WHERE topic = $2 ON CONFLICT (grp, topic, part) DO NOTHING",
                    )
                    .bind(grp)
                    .bind(topic)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(())
                })
            }

            fn bus_heartbeat<'a>(
                &'a self,
                grp: &'a str,
                topic: &'a str,
                member: &'a str,
                now_us: i64,
                ttl_us: i64,
            ) -> $crate::store::StoreFuture<'a, i64> {
                let $w = self;
                Box::pin(async move {
                    sqlx::query(
                        "INSERT INTO bus_members (grp, topic, member, seen_us) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT (grp, topic, member) \
                         DO UPDATE SET seen_us = excluded.seen_us",
                    )
                    .bind(grp)
                    .bind(topic)
                    .bind(member)
                    .bind(now_us)
                    .execute($wexpr)
                    .await?;
                    // Members gone for long are forgotten, so the table stays small.
                    sqlx::query(
                        "DELETE FROM bus_members WHERE grp = $1 AND topic = $2 AND seen_us < $3",
                    )
                    .bind(grp)
                    .bind(topic)
                    .bind(now_us - 100 * ttl_us)
                    .execute($wexpr)
                    .await?;
                    Ok(sqlx::query_scalar(
                        "SELECT count(*) FROM bus_members \
                         WHERE grp = $1 AND topic = $2 AND seen_us > $3",
                    )
                    .bind(grp)
                    .bind(topic)
                    .bind(now_us - ttl_us)
                    .fetch_one($wexpr)
                    .await?)
                })
            }

            fn bus_leave<'a>(
                &'a self,
                grp: &'a str,
                topic: &'a str,
                member: &'a str,
            ) -> $crate::store::StoreFuture<'a, ()> {
                let $w = self;
                Box::pin(async move {
                    sqlx::query(
                        "UPDATE bus_partitions SET owner = NULL, lease_until_us = 0 \
                         WHERE grp = $1 AND topic = $2 AND owner = $3",
                    )
                    .bind(grp)
                    .bind(topic)
                    .bind(member)
                    .execute($wexpr)
                    .await?;
                    sqlx::query(
                        "DELETE FROM bus_members WHERE grp = $1 AND topic = $2 AND member = $3",
                    )
                    .bind(grp)
                    .bind(topic)
                    .bind(member)
                    .execute($wexpr)
                    .await?;
                    Ok(())
                })
            }

            fn bus_renew<'a>(
                &'a self,
                grp: &'a str,
                topic: &'a str,
                member: &'a str,
                until_us: i64,
            ) -> $crate::store::StoreFuture<'a, Vec<i64>> {
                let $w = self;
                Box::pin(async move {
                    Ok(sqlx::query_scalar(
                        "UPDATE bus_partitions SET lease_until_us = $1 \
                         WHERE grp = $2 AND topic = $3 AND owner = $4 RETURNING part",
                    )
                    .bind(until_us)
                    .bind(grp)
                    .bind(topic)
                    .bind(member)
                    .fetch_all($wexpr)
                    .await?)
                })
            }

            fn bus_acquire<'a>(
                &'a self,
                grp: &'a str,
                topic: &'a str,
                part: i64,
                member: &'a str,
                now_us: i64,
                until_us: i64,
            ) -> $crate::store::StoreFuture<'a, Option<$crate::store::bus::Position>> {
                let $w = self;
                Box::pin(async move {
                    let at: Option<(i64, i64)> = sqlx::query_as(
                        "UPDATE bus_partitions SET owner = $1, lease_until_us = $2 \
                         WHERE grp = $3 AND topic = $4 AND part = $5 \
                         AND (owner IS NULL OR owner = $1 OR lease_until_us < $6) \
                         RETURNING xid, seq",
                    )
                    .bind(member)
                    .bind(until_us)
                    .bind(grp)
                    .bind(topic)
                    .bind(part)
                    .bind(now_us)
                    .fetch_optional($wexpr)
                    .await?;
                    Ok(at.map(|(xid, seq)| $crate::store::bus::Position { xid, seq }))
                })
            }

            fn bus_release<'a>(
                &'a self,
                grp: &'a str,
                topic: &'a str,
                part: i64,
                member: &'a str,
            ) -> $crate::store::StoreFuture<'a, ()> {
                let $w = self;
                Box::pin(async move {
                    sqlx::query(
                        "UPDATE bus_partitions SET owner = NULL, lease_until_us = 0 \
                         WHERE grp = $1 AND topic = $2 AND part = $3 AND owner = $4",
                    )
                    .bind(grp)
                    .bind(topic)
                    .bind(part)
                    .bind(member)
                    .execute($wexpr)
                    .await?;
                    Ok(())
                })
            }

            fn bus_read<'a>(
                &'a self,
                topic: &'a str,
                part: i64,
                after: $crate::store::bus::Position,
                max_rows: i64,
            ) -> $crate::store::StoreFuture<'a, Vec<$crate::store::bus::LogRow>> {
                let $r = self;
                Box::pin(async move {
                    let rows: Vec<(i64, i64, i64, i64, i64, Vec<u8>)> = sqlx::query_as(
                        <$db as $crate::store::bus::BusDialect>::READ,
                    )
                    .bind(topic)
                    .bind(part)
                    .bind(after.xid)
                    .bind(after.seq)
                    .bind(max_rows)
                    .fetch_all($rexpr)
                    .await?;
                    Ok(rows
                        .into_iter()
                        .map(|(xid, seq, part, items, created_us, payload)| {
                            $crate::store::bus::LogRow {
                                xid,
                                seq,
                                part,
                                items,
                                created_us,
                                payload,
                            }
                        })
                        .collect())
                })
            }

            fn bus_commit<'a>(
                &'a self,
                cp: &'a $crate::store::bus::Checkpoint,
            ) -> $crate::store::StoreFuture<'a, ()> {
                let $w = self;
                Box::pin(async move {
                    let mut tx = $wexpr.begin().await?;
                    $crate::store::bus::commit_checkpoint::<$db>(&mut *tx, cp).await?;
                    tx.commit().await?;
                    Ok(())
                })
            }

            fn bus_dead_letter<'a>(
                &'a self,
                cp: &'a $crate::store::bus::Checkpoint,
                row: &'a $crate::store::bus::LogRow,
                error: &'a str,
                attempts: i64,
                now_us: i64,
            ) -> $crate::store::StoreFuture<'a, ()> {
                let $w = self;
                Box::pin(async move {
                    let mut tx = $wexpr.begin().await?;
                    match cp {
                        $crate::store::bus::Checkpoint::Cursor {
                            grp, topic, part, ..
                        } => {
                            // The cursor moves past the row with nothing handled.
                            let mut skip = cp.clone();
                            if let $crate::store::bus::Checkpoint::Cursor { items, .. } = &mut skip {
                                *items = 0;
                            }
                            $crate::store::bus::commit_checkpoint::<$db>(&mut *tx, &skip).await?;
                            sqlx::query(
                                "INSERT INTO bus_dead_letters (id, grp, topic, part, seq, items, \
                                 payload, error, attempts, created_us) \
                                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                            )
                            .bind(uuid::Uuid::now_v7().to_string())
                            .bind(grp.as_str())
                            .bind(topic.as_str())
                            .bind(*part)
                            .bind(row.seq)
                            .bind(row.items)
                            .bind(row.payload.as_slice())
                            .bind(error)
                            .bind(attempts)
                            .bind(now_us)
                            .execute(&mut *tx)
                            .await?;
                        }
                        $crate::store::bus::Checkpoint::Replay { id, owner, .. } => {
                            let kept: Option<String> = sqlx::query_scalar(
                                "UPDATE bus_dead_letters SET error = $1, \
                                 attempts = attempts + $2, replay_requested_us = NULL, \
                                 claimed_by = NULL, claimed_until_us = 0 \
                                 WHERE id = $3 AND claimed_by = $4 RETURNING id",
                            )
                            .bind(error)
                            .bind(attempts)
                            .bind(id.as_str())
                            .bind(owner.as_str())
                            .fetch_optional(&mut *tx)
                            .await?;
                            if kept.is_none() {
                                return Err($crate::store::StoreError::Fenced(format!(
                                    "dead letter {id} is no longer claimed by {owner}"
                                )));
                            }
                        }
                    }
                    tx.commit().await?;
                    Ok(())
                })
            }

            fn bus_publish<'a>(
                &'a self,
                rows: &'a [$crate::bus::log::OutboxRow],
                now_us: i64,
            ) -> $crate::store::StoreFuture<'a, ()> {
                let $w = self;
                Box::pin(async move {
                    let mut tx = $wexpr.begin().await?;
                    $crate::store::bus::append::<$db>(&mut *tx, rows, now_us).await?;
                    tx.commit().await?;
                    Ok(())
                })
            }

            fn bus_positions(
                &self,
                now_us: i64,
                member_ttl_us: i64,
            ) -> $crate::store::StoreFuture<'_, Vec<$crate::store::bus::GroupPosition>> {
                let $r = self;
                Box::pin(async move {
                    use std::collections::BTreeMap;
                    let mut out: BTreeMap<(String, String), $crate::store::bus::GroupPosition> =
                        BTreeMap::new();
                    // One statement, so the group's counters and the topic's are of one
                    // snapshot.
                    type Row = (String, String, i64, i64, i64, i64, i64, i64);
                    let groups: Vec<Row> = sqlx::query_as(
                        "SELECT p.grp, p.topic, CAST(coalesce(sum(p.handled), 0) AS BIGINT), \
                         CAST(coalesce(sum(CASE WHEN p.owner IS NOT NULL \
                         AND p.lease_until_us > $1 THEN 1 ELSE 0 END), 0) AS BIGINT), \
                         CAST(coalesce(sum(p.passed_rows), 0) AS BIGINT), \
                         CAST(coalesce(sum(p.passed_items), 0) AS BIGINT), \
                         CAST((SELECT coalesce(sum(c.log_rows), 0) FROM bus_counts c \
                               WHERE c.topic = p.topic) AS BIGINT), \
                         CAST((SELECT coalesce(sum(c.log_items), 0) FROM bus_counts c \
                               WHERE c.topic = p.topic) AS BIGINT) \
                         FROM bus_partitions p GROUP BY p.grp, p.topic",
                    )
                    .bind(now_us)
                    .fetch_all($rexpr)
                    .await?;
                    for (grp, topic, handled, owned, passed_rows, passed_items, rows, items) in
                        groups
                    {
                        out.insert(
                            (grp.clone(), topic.clone()),
                            $crate::store::bus::GroupPosition {
                                group: grp,
                                topic,
                                handled,
                                owned_partitions: owned,
                                lag_rows: (rows - passed_rows).max(0),
                                lag_items: (items - passed_items).max(0),
                                ..Default::default()
                            },
                        );
                    }
                    let members: Vec<(String, String, i64)> = sqlx::query_as(
                        "SELECT grp, topic, count(*) FROM bus_members WHERE seen_us > $1 \
                         GROUP BY grp, topic",
                    )
                    .bind(now_us - member_ttl_us)
                    .fetch_all($rexpr)
                    .await?;
                    for (grp, topic, n) in members {
                        if let Some(p) = out.get_mut(&(grp, topic)) {
                            p.live_members = n;
                        }
                    }
                    let dead: Vec<(String, String, i64)> = sqlx::query_as(
                        "SELECT grp, topic, count(*) FROM bus_dead_letters GROUP BY grp, topic",
                    )
                    .fetch_all($rexpr)
                    .await?;
                    for (grp, topic, n) in dead {
                        if let Some(p) = out.get_mut(&(grp, topic)) {
                            p.dead_letters = n;
                        }
                    }
                    Ok(out.into_values().collect())
                })
            }

            fn bus_trim<'a>(&'a self, topic: &'a str) -> $crate::store::StoreFuture<'a, u64> {
                let $w = self;
                Box::pin(async move {
                    let mut deleted = 0u64;
                    for part in 0..$crate::bus::log::PARTITIONS {
                        let mut tx = $wexpr.begin().await?;
                        // Registering a group locks these counts too: a group registered meanwhile
                        // either sees this trim's count or has its cursor seen by it.
                        sqlx::query(
                            "UPDATE bus_trimmed SET log_rows = log_rows \
                             WHERE topic = $1 AND part = $2",
                        )
                        .bind(topic)
                        .bind(part)
                        .execute(&mut *tx)
                        .await?;
                        // Rows at or before every group's cursor: all committed (a cursor is
                        // below the horizon it was read under) and passed by every group. No
                        // group on the topic: the subquery is empty and nothing is deleted.
                        let items: Vec<i64> = sqlx::query_scalar(
                            "DELETE FROM bus_log WHERE topic = $1 AND part = $2 AND (xid, seq) <= \
                             (SELECT xid, seq FROM bus_partitions WHERE topic = $3 AND part = $4 \
                              ORDER BY xid, seq LIMIT 1) \
                             RETURNING items",
                        )
                        .bind(topic)
                        .bind(part)
                        .bind(topic)
                        .bind(part)
                        .fetch_all(&mut *tx)
                        .await?;
                        if !items.is_empty() {
                            sqlx::query(
                                "UPDATE bus_trimmed SET log_rows = log_rows + $1, \
                                 log_items = log_items + $2 WHERE topic = $3 AND part = $4",
                            )
                            .bind(items.len() as i64)
                            .bind(items.iter().sum::<i64>())
                            .bind(topic)
                            .bind(part)
                            .execute(&mut *tx)
                            .await?;
                        }
                        tx.commit().await?;
                        deleted += items.len() as u64;
                    }
                    // The appended counters' shards (one per connection that appended) are
                    // folded into shard 0, so that counting them stays cheap. A shard whose
                    // connection is appending right now is waited for and folded whole; its next
                    // append starts a new one.
                    let mut tx = $wexpr.begin().await?;
                    let shards: Vec<(i64, i64)> = sqlx::query_as(
                        "DELETE FROM bus_counts WHERE topic = $1 AND shard <> 0 \
                         RETURNING log_rows, log_items",
                    )
                    .bind(topic)
                    .fetch_all(&mut *tx)
                    .await?;
                    if !shards.is_empty() {
                        sqlx::query(
                            "INSERT INTO bus_counts (topic, shard, log_rows, log_items) \
                             VALUES ($1, 0, $2, $3) ON CONFLICT (topic, shard) DO UPDATE SET \
                             log_rows = bus_counts.log_rows + excluded.log_rows, \
                             log_items = bus_counts.log_items + excluded.log_items",
                        )
                        .bind(topic)
                        .bind(shards.iter().map(|s| s.0).sum::<i64>())
                        .bind(shards.iter().map(|s| s.1).sum::<i64>())
                        .execute(&mut *tx)
                        .await?;
                    }
                    tx.commit().await?;
                    Ok(deleted)
                })
            }

            fn bus_dead_letters<'a>(
                &'a self,
                grp: Option<&'a str>,
                after: Option<&'a str>,
                limit: i64,
            ) -> $crate::store::StoreFuture<'a, Vec<$crate::store::bus::DeadLetter>> {
                let $r = self;
                Box::pin(async move {
                    let rows: Vec<_> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "SELECT {} FROM bus_dead_letters \
                         WHERE ($1 IS NULL OR grp = $2) AND ($3 IS NULL OR id > $4) \
                          ORDER BY id LIMIT $5",
                        DEAD_LETTER_COLUMNS
                    )))
                    .bind(grp)
                    .bind(grp)
                    .bind(after)
                    .bind(after)
                    .bind(limit)
                    .fetch_all($rexpr)
                    .await?;
                    Ok(rows.into_iter().map($crate::store::bus::dead_letter_of).collect())
                })
            }

            fn bus_dead_letter_get<'a>(
                &'a self,
                id: &'a str,
            ) -> $crate::store::StoreFuture<'a, Option<($crate::store::bus::DeadLetter, Vec<u8>)>>
            {
                let $r = self;
                Box::pin(async move {
                    // One read: the record and its payload together.
                    type WithPayload =
                        (String, String, String, i64, i64, i64, String, i64, i64, Option<i64>, Vec<u8>);
                    let row: Option<WithPayload> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "SELECT {}, payload FROM bus_dead_letters WHERE id = $1",
                        DEAD_LETTER_COLUMNS
                    )))
                    .bind(id)
                    .fetch_optional($rexpr)
                    .await?;
                    Ok(row.map(|(a, b, c, d, e, f, g, h, i, j, payload)| {
                        (
                            $crate::store::bus::dead_letter_of((a, b, c, d, e, f, g, h, i, j)),
                            payload,
                        )
                    }))
                })
            }

            fn bus_request_replay<'a>(
                &'a self,
                id: &'a str,
                now_us: i64,
            ) -> $crate::store::StoreFuture<'a, bool> {
                let $w = self;
                Box::pin(async move {
                    let hit: Option<String> = sqlx::query_scalar(
                        "UPDATE bus_dead_letters SET replay_requested_us = $1 \
                         WHERE id = $2 RETURNING id",
                    )
                    .bind(now_us)
                    .bind(id)
                    .fetch_optional($wexpr)
                    .await?;
                    Ok(hit.is_some())
                })
            }

            fn bus_discard<'a>(&'a self, id: &'a str) -> $crate::store::StoreFuture<'a, bool> {
                let $w = self;
                Box::pin(async move {
                    let hit: Option<String> =
                        sqlx::query_scalar("DELETE FROM bus_dead_letters WHERE id = $1 RETURNING id")
                            .bind(id)
                            .fetch_optional($wexpr)
                            .await?;
                    Ok(hit.is_some())
                })
            }

            fn bus_claim_replays<'a>(
                &'a self,
                grp: &'a str,
                topic: &'a str,
                member: &'a str,
                now_us: i64,
                until_us: i64,
                limit: i64,
            ) -> $crate::store::StoreFuture<
                'a,
                Vec<($crate::store::bus::DeadLetter, $crate::store::bus::LogRow)>,
            > {
                let $w = self;
                Box::pin(async move {
                    let ids: Vec<String> = sqlx::query_scalar(
                        "UPDATE bus_dead_letters SET claimed_by = $1, claimed_until_us = $2 \
                         WHERE id IN (SELECT id FROM bus_dead_letters WHERE grp = $3 \
                         AND topic = $4 AND replay_requested_us IS NOT NULL \
                         AND claimed_until_us < $5 ORDER BY id LIMIT $6) RETURNING id",
                    )
                    .bind(member)
                    .bind(until_us)
                    .bind(grp)
                    .bind(topic)
                    .bind(now_us)
                    .bind(limit)
                    .fetch_all($wexpr)
                    .await?;
                    let mut out = Vec::with_capacity(ids.len());
                    for id in ids {
                        if let Some((d, payload)) = self.bus_dead_letter_get(&id).await? {
                            let row = $crate::store::bus::LogRow {
                                xid: 0,
                                seq: d.seq,
                                part: d.partition,
                                items: d.items,
                                created_us: d.created_us,
                                payload,
                            };
                            out.push((d, row));
                        }
                    }
                    Ok(out)
                })
            }
        }
    };
}

impl_bus_store!(
    super::sqlite::SqliteStore,
    db = sqlx::Sqlite,
    write = |s| s.writer(),
    read = |s| s.reader()
);
impl_bus_store!(
    super::postgres::PgStore,
    db = sqlx::Postgres,
    write = |s| s.pool(),
    read = |s| s.pool()
);
