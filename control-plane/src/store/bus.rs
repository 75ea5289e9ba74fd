//! Storage of the durable bus (migration `0006_bus`): the log, consumer groups' cursors and
//! leases, members, and dead letters. See [`crate::bus::durable`] for how they are used and
//! docs/ARCHITECTURE.md for why the database is the log.
//!
//! One SQL text for both backends, like [`super::spire`]. Appending ([`append`]) and committing a
//! consumer's progress ([`commit_checkpoint`]) are generic over the backend so that they run
//! inside someone else's transaction: ingest appends its new events in its own transaction,
//! and a service commits its effects and its cursor together.

use serde::{Deserialize, Serialize};
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, QueryBuilder, Type};

use super::{StoreError, StoreFuture};
use crate::bus::log::OutboxRow;

/// One stored row of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRow {
    pub seq: i64,
    pub part: i64,
    pub items: i64,
    pub created_us: i64,
    pub payload: Vec<u8>,
}

/// What a consumer has done and must record, atomically with the effects of doing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkpoint {
    /// Rows `(from_seq, to_seq]` of one partition, handled by `owner`: moves the cursor, only if
    /// it is still at `from_seq` and `owner` still holds the partition (fencing: a member whose
    /// lease was taken over cannot commit twice what its successor also handles).
    Cursor {
        grp: String,
        topic: String,
        part: i64,
        from_seq: i64,
        to_seq: i64,
        owner: String,
        items: i64,
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
    /// Position in the topic's log.
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GroupPosition {
    pub group: String,
    pub topic: String,
    /// Items whose effects the group committed, since it was created.
    pub handled: i64,
    /// Log rows not yet committed by the group.
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

/// Appends `rows` to the log inside the caller's transaction. Topics are taken in name order so
/// two transactions appending to the same topics cannot deadlock on their heads.
pub(crate) async fn append<DB>(
    conn: &mut DB::Connection,
    rows: &[OutboxRow],
    now_us: i64,
) -> Result<(), StoreError>
where
    DB: Database,
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
        // The head row's lock, held until commit, orders appends of a topic by commit.
        let end: i64 = sqlx::query_scalar(
            "INSERT INTO bus_heads (topic, next_seq) VALUES ($1, $2) ON CONFLICT (topic) \
             DO UPDATE SET next_seq = bus_heads.next_seq + excluded.next_seq RETURNING next_seq",
        )
        .bind(topic)
        .bind(n)
        .fetch_one(&mut *conn)
        .await?;
        let first = end - n + 1;
        for (c, chunk) in mine.chunks(200).enumerate() {
            let base = first + (c * 200) as i64;
            let mut qb = QueryBuilder::<DB>::new(
                "INSERT INTO bus_log (topic, seq, part, items, created_us, payload) ",
            );
            qb.push_values(chunk.iter().enumerate(), |mut b, (i, r)| {
                b.push_bind(topic)
                    .push_bind(base + i as i64)
                    .push_bind(r.part)
                    .push_bind(r.items)
                    .push_bind(now_us)
                    .push_bind(r.payload.as_slice());
            });
            qb.build().execute(&mut *conn).await?;
        }
    }
    Ok(())
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
            from_seq,
            to_seq,
            owner,
            items,
        } => {
            let moved: Option<i64> = sqlx::query_scalar(
                "UPDATE bus_partitions SET seq = $1, handled = handled + $2 \
                 WHERE grp = $3 AND topic = $4 AND part = $5 AND seq = $6 AND owner = $7 \
                 RETURNING seq",
            )
            .bind(*to_seq)
            .bind(*items)
            .bind(grp.as_str())
            .bind(topic.as_str())
            .bind(*part)
            .bind(*from_seq)
            .bind(owner.as_str())
            .fetch_optional(&mut *conn)
            .await?;
            if moved.is_none() {
                return Err(StoreError::Fenced(format!(
                    "{grp}/{topic} partition {part} is no longer at {from_seq} for {owner}"
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
    /// Creates a group's partitions (cursor at the start of what the log holds) if new.
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
    ) -> StoreFuture<'a, Option<i64>>;
    /// Gives a partition back.
    fn bus_release<'a>(
        &'a self,
        grp: &'a str,
        topic: &'a str,
        part: i64,
        member: &'a str,
    ) -> StoreFuture<'a, ()>;
    /// Up to `max_rows` rows of a partition after `after_seq`, in order.
    fn bus_read<'a>(
        &'a self,
        topic: &'a str,
        part: i64,
        after_seq: i64,
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
    /// Every group's position (for status and metrics).
    fn bus_positions(&self, now_us: i64, member_ttl_us: i64)
    -> StoreFuture<'_, Vec<GroupPosition>>;
    /// Deletes rows of `topic` that every group has committed; returns how many.
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
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO bus_partitions (grp, topic, part) ",
                    );
                    qb.push_values(0..$crate::bus::log::PARTITIONS, |mut b, p| {
                        b.push_bind(grp).push_bind(topic).push_bind(p);
                    });
                    qb.push(" ON CONFLICT (grp, topic, part) DO NOTHING");
                    qb.build().execute($wexpr).await?;
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
            ) -> $crate::store::StoreFuture<'a, Option<i64>> {
                let $w = self;
                Box::pin(async move {
                    Ok(sqlx::query_scalar(
                        "UPDATE bus_partitions SET owner = $1, lease_until_us = $2 \
                         WHERE grp = $3 AND topic = $4 AND part = $5 \
                         AND (owner IS NULL OR owner = $1 OR lease_until_us < $6) RETURNING seq",
                    )
                    .bind(member)
                    .bind(until_us)
                    .bind(grp)
                    .bind(topic)
                    .bind(part)
                    .bind(now_us)
                    .fetch_optional($wexpr)
                    .await?)
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
                after_seq: i64,
                max_rows: i64,
            ) -> $crate::store::StoreFuture<'a, Vec<$crate::store::bus::LogRow>> {
                let $r = self;
                Box::pin(async move {
                    let rows: Vec<(i64, i64, i64, i64, Vec<u8>)> = sqlx::query_as(
                        "SELECT seq, part, items, created_us, payload FROM bus_log \
                         WHERE topic = $1 AND part = $2 AND seq > $3 ORDER BY seq LIMIT $4",
                    )
                    .bind(topic)
                    .bind(part)
                    .bind(after_seq)
                    .bind(max_rows)
                    .fetch_all($rexpr)
                    .await?;
                    Ok(rows
                        .into_iter()
                        .map(|(seq, part, items, created_us, payload)| {
                            $crate::store::bus::LogRow {
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
                    let groups: Vec<(String, String, i64, i64)> = sqlx::query_as(
                        "SELECT grp, topic, CAST(coalesce(sum(handled), 0) AS BIGINT), \
                         CAST(coalesce(sum(CASE WHEN owner IS NOT NULL AND lease_until_us > $1 \
                         THEN 1 ELSE 0 END), 0) AS BIGINT) \
                         FROM bus_partitions GROUP BY grp, topic",
                    )
                    .bind(now_us)
                    .fetch_all($rexpr)
                    .await?;
                    for (grp, topic, handled, owned) in groups {
                        out.insert(
                            (grp.clone(), topic.clone()),
                            $crate::store::bus::GroupPosition {
                                group: grp,
                                topic,
                                handled,
                                owned_partitions: owned,
                                ..Default::default()
                            },
                        );
                    }
                    let lags: Vec<(String, String, i64, i64)> = sqlx::query_as(
                        "SELECT c.grp, c.topic, count(l.seq), \
                         CAST(coalesce(sum(l.items), 0) AS BIGINT) \
                         FROM bus_partitions c JOIN bus_log l \
                         ON l.topic = c.topic AND l.part = c.part AND l.seq > c.seq \
                         GROUP BY c.grp, c.topic",
                    )
                    .fetch_all($rexpr)
                    .await?;
                    for (grp, topic, rows, items) in lags {
                        if let Some(p) = out.get_mut(&(grp, topic)) {
                            p.lag_rows = rows;
                            p.lag_items = items;
                        }
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
                        // No group on the topic: min() is NULL and nothing is deleted.
                        let n: Vec<i64> = sqlx::query_scalar(
                            "DELETE FROM bus_log WHERE topic = $1 AND part = $2 AND seq <= \
                             (SELECT min(seq) FROM bus_partitions WHERE topic = $3 AND part = $4) \
                             RETURNING seq",
                        )
                        .bind(topic)
                        .bind(part)
                        .bind(topic)
                        .bind(part)
                        .fetch_all($wexpr)
                        .await?;
                        deleted += n.len() as u64;
                    }
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
