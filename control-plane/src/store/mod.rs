//! Storage behind one interface, [`Store`], with an embedded SQLite implementation (the default)
//! and a PostgreSQL one (production).
//!
//! What is stored:
//! * `events`: one row per fingerprint event, keyed by its UUIDv7 id, so a replayed event is
//!   ignored (at-least-once delivery stores each event once). In PostgreSQL the table is range
//!   partitioned by that id, one partition per UTC day (`partitions.rs`). With it, the search
//!   indexes: one per filter, and `event_fingerprints` (method, value, id), partitioned alike
//!   ([`events`]).
//! * roll-ups, counting only newly stored events, contributed by the services through one
//!   interface ([`rollup::RollupContributor`]): the fingerprint roll-ups ([`fingerprints`]) and
//!   the per-identity ones ([`identity`]). Ingest does not touch them: it commits, with the
//!   events, one `rollup_pending` record of the transaction's pre-aggregated deltas, and the
//!   roll-up stage ([`fold`]) folds those records into the roll-up tables in large merged chunks,
//!   exactly once. Roll-up reads fold what is pending first, so they reflect every acknowledged
//!   ingest; with a PostgreSQL read replica they then run there once it has caught up.
//! * users, refresh tokens, settings (e.g. the JWT secret shared by split processes) and labels.
//!
//! One implementation serves both backends (`shared.rs`, with the SQL of `sql.rs`, `reads.rs`,
//! [`spire`], [`identity`], [`accounts`] and [`labels`] written once); `sqlite.rs` and
//! `postgres.rs` keep only what the engines do differently.
//!
//! Times are stored as integer microseconds since the Unix epoch in both backends: one exact
//! representation for keyset cursors and comparisons, with no time-zone or precision drift
//! between SQLite and PostgreSQL.

pub mod accounts;
pub mod alert;
pub mod bus;
pub mod correlation;
pub mod events;
pub mod expiry;
pub mod fingerprints;
pub mod fold;
pub mod identity;
pub mod labels;
mod partitions;
mod pg_nodelay;
pub mod policy;
pub mod postgres;
mod query;
mod reads;
pub mod rollup;
mod shared;
pub mod spire;
mod sql;
pub mod sqlite;
pub mod templates;
pub mod threat;
pub mod workloads;

use std::future::Future;
use std::pin::Pin;

use hais_shared::event::FingerprintEvent;
use hais_shared::fingerprint::Method;
use serde::{Deserialize, Serialize};

pub use accounts::{AccountStore, UserRecord};
pub use labels::{LabelOutcome, LabelStore};
pub use query::{Cursor, FingerprintQuery, MAX_PAGE_SIZE};

/// A boxed future, so that [`Store`] can be used as `Arc<dyn Store>`.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be reached (connection refused, pool timed out). Retrying may help.
    #[error("database unreachable: {0}")]
    Unavailable(String),
    /// The operation contradicts stored state (e.g. a user that already exists).
    #[error("{0}")]
    Conflict(String),
    /// Applying migrations failed at start-up.
    #[error("migrating the database failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Stored data could not be decoded (a bug or a hand-edited database).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The URL names no supported database.
    #[error("unsupported database URL {0:?}: expected sqlite://… or postgres://…")]
    UnsupportedUrl(String),
    /// A read replica was configured for a database that is not PostgreSQL, or with a URL that
    /// is not PostgreSQL's (SQLite has no replicas; its readers share the file).
    #[error("read replica {0:?}: database_url and database_read_url must both be postgres://…")]
    ReplicaNeedsPostgres(String),
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// A consumer lost the work it was committing (its partition lease was taken over, or its
    /// cursor moved): the transaction was rolled back and someone else does the work.
    #[error("fenced: {0}")]
    Fenced(String),
    /// A group-committed write failed (the cause is logged once by the writer).
    #[error("writing events failed: {0}")]
    Write(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_) => StoreError::Unavailable(e.to_string()),
            other => StoreError::Database(other),
        }
    }
}

/// What an ingest did: which input events were new (by index) and how many were replays.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestOutcome {
    pub stored: Vec<usize>,
    pub duplicates: usize,
}

/// Roll-up delta records (one per ingest transaction) and the events they cover.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RollupBacklog {
    pub groups: u64,
    pub events: u64,
}

/// Where roll-up reads were answered, with a read replica configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaReads {
    pub replica: u64,
    pub primary: u64,
}

/// Store behaviour that is not configuration a user needs (tests and benchmarks change it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Period of the background roll-up worker's checks; `None`: no worker, and nothing is
    /// folded at close (reads still fold first). Tests use `None` to leave deltas pending, as
    /// a crash between ingest and fold would.
    pub rollup_interval: Option<std::time::Duration>,
    /// How long a roll-up read waits for the PostgreSQL read replica to replay the primary's
    /// WAL past the read's fold before it reads the primary instead.
    pub replica_wait: std::time::Duration,
}

/// Default [`StoreOptions::replica_wait`]: replay on a healthy streaming replica takes
/// milliseconds; a replica further behind than this serves no read until it catches up.
pub const REPLICA_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Default period at which the background roll-up worker checks the backlog (see
/// [`fold`] for when it folds).
pub const ROLLUP_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            rollup_interval: Some(ROLLUP_INTERVAL),
            replica_wait: REPLICA_WAIT,
        }
    }
}

/// One fingerprint's roll-up, as search returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FingerprintSummary {
    #[schema(value_type = String, example = "ja4")]
    pub method: Method,
    pub value: String,
    pub part_a: Option<String>,
    pub part_b: Option<String>,
    pub part_c: Option<String>,
    /// First time an event carried this fingerprint (µs since the Unix epoch).
    pub first_seen_us: i64,
    pub last_seen_us: i64,
    /// Number of stored events that carried it.
    pub count: i64,
}

/// One value of a dimension (a host, agent, server name or identity) a fingerprint was seen with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DimEntry {
    pub value: String,
    pub first_seen_us: i64,
    pub last_seen_us: i64,
    pub count: i64,
}

/// A dimension's values (the most frequent [`DETAIL_DIM_LIMIT`]) and how many there are in all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DimList {
    pub total: i64,
    pub top: Vec<DimEntry>,
}

/// How many values of each dimension a fingerprint detail lists.
pub const DETAIL_DIM_LIMIT: i64 = 100;

/// Everything known about one fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FingerprintDetail {
    #[serde(flatten)]
    pub summary: FingerprintSummary,
    pub hosts: DimList,
    pub agents: DimList,
    pub server_names: DimList,
    pub identities: DimList,
    /// Workload keys (`hais_shared::workload`) of the events that carried it.
    pub workloads: DimList,
    pub labels: Vec<String>,
}

/// One row of a top-N answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TopEntry {
    #[schema(value_type = String, example = "ja4")]
    pub method: Method,
    pub value: String,
    /// Events carrying it within the window.
    pub count: i64,
}

/// What one retention pass deleted; also the payload of the live topic `retention.ran`
/// (`bus::topics::RetentionRan`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RetentionOutcome {
    pub events_deleted: u64,
    pub fingerprints_deleted: u64,
    /// PostgreSQL only: whole daily partitions (monthly ones from before the upgrade) detached,
    /// then dropped in the background.
    pub partitions_dropped: u64,
    /// PostgreSQL only: a dropped partition was too large to count cheaply, so
    /// `events_deleted` includes the planner's estimate of its rows.
    pub events_deleted_estimated: bool,
}

/// A page of results with the cursor for the next one (`None` on the last page).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// The storage interface the services use. Implemented by [`sqlite::SqliteStore`] and
/// [`postgres::PgStore`]; object safe so the backend is chosen at run time. The spire service's
/// tables (join tokens, agents) are in the [`spire::SpireStore`] supertrait, the identity
/// service's (registration entries, inventory) in [`identity::IdentityStore`], users, sessions
/// and service tokens in [`accounts::AccountStore`].
pub trait Store:
    spire::SpireStore
    + bus::BusStore
    + events::EventStore
    + expiry::ExpiryStore
    + alert::AlertStore
    + identity::IdentityStore
    + workloads::WorkloadStore
    + correlation::CorrelationStore
    + threat::ThreatStore
    + policy::PolicyStore
    + templates::TemplateStore
    + accounts::AccountStore
    + labels::LabelStore
    + Send
    + Sync
    + std::fmt::Debug
{
    /// Which backend this is (`sqlite` or `postgres`), for logs and `/ready`.
    fn backend(&self) -> &'static str;

    /// Cheap round trip proving the database answers.
    fn ping(&self) -> StoreFuture<'_, ()>;

    /// Stores new events, and their roll-up deltas as one pending record, in one transaction.
    /// Events whose id is already stored are skipped and counted as duplicates (and not rolled
    /// up). Input must be validated already. Roll-up reads afterwards reflect the events.
    fn ingest<'a>(&'a self, events: &'a [FingerprintEvent]) -> StoreFuture<'a, IngestOutcome>;

    /// Folds every roll-up delta record pending now into the roll-up tables. Reads of roll-ups
    /// do this first; the background worker does it periodically.
    fn settle_rollups(&self) -> StoreFuture<'_, ()>;

    /// Folds at most `max_groups` of the oldest pending delta records, in one transaction.
    fn fold_rollups(&self, max_groups: u32) -> StoreFuture<'_, RollupBacklog>;

    /// Delta records not folded yet.
    fn pending_rollups(&self) -> StoreFuture<'_, RollupBacklog>;

    /// Fingerprint roll-ups matching `q`, in (method, value) order, one page at a time.
    fn search<'a>(&'a self, q: &'a FingerprintQuery) -> StoreFuture<'a, Page<FingerprintSummary>>;

    fn detail<'a>(
        &'a self,
        method: Method,
        value: &'a str,
    ) -> StoreFuture<'a, Option<FingerprintDetail>>;

    /// The `limit` fingerprints carried by the most events since `since_us` (hour granularity).
    fn top(
        &self,
        since_us: i64,
        method: Option<Method>,
        limit: u32,
    ) -> StoreFuture<'_, Vec<TopEntry>>;

    /// Deletes events older than `cutoff_us` and roll-ups not seen since then.
    fn retain(&self, cutoff_us: i64) -> StoreFuture<'_, RetentionOutcome>;

    /// With a read replica configured (PostgreSQL): roll-up reads answered so far by the
    /// replica, and by the primary because the replica had not caught up in time or could not
    /// be reached. `None` without a replica.
    fn replica_reads(&self) -> Option<ReplicaReads>;

    /// Number of stored events (tests and benchmarks; may be slow on large tables).
    fn count_events(&self) -> StoreFuture<'_, i64>;

    /// Returns the stored setting, storing `proposed` first if there is none. Lets processes
    /// that share a database agree on one value (the first writer wins).
    fn setting_or_init<'a>(&'a self, key: &'a str, proposed: &'a str) -> StoreFuture<'a, String>;

    /// Stops the roll-up worker (folding what is pending, if there is a worker), then closes the
    /// pool after in-flight queries finish.
    fn close(&self) -> StoreFuture<'_, ()>;
}

/// Opens the store the URL names and applies its migrations. `read_url`: a PostgreSQL read
/// replica for roll-up reads (see [`postgres::PgStore`]).
pub async fn open(
    url: &str,
    read_url: Option<&str>,
    schema: Option<&str>,
    max_connections: u32,
) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    open_replicated(
        url,
        read_url,
        schema,
        max_connections,
        StoreOptions::default(),
    )
    .await
}

/// [`open`] without a replica, with non-default [`StoreOptions`].
pub async fn open_with(
    url: &str,
    schema: Option<&str>,
    max_connections: u32,
    options: StoreOptions,
) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    open_replicated(url, None, schema, max_connections, options).await
}

/// [`open`] with non-default [`StoreOptions`].
pub async fn open_replicated(
    url: &str,
    read_url: Option<&str>,
    schema: Option<&str>,
    max_connections: u32,
    options: StoreOptions,
) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    let is_pg = |u: &str| u.starts_with("postgres:") || u.starts_with("postgresql:");
    if let Some(r) = read_url
        && !(is_pg(url) && is_pg(r))
    {
        return Err(StoreError::ReplicaNeedsPostgres(r.to_owned()));
    }
    if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(
            sqlite::SqliteStore::open(url, max_connections, options).await?,
        ))
    } else if is_pg(url) {
        Ok(std::sync::Arc::new(
            postgres::PgStore::open(url, read_url, schema, max_connections, options).await?,
        ))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_owned()))
    }
}

/// Microseconds since the Unix epoch of an `OffsetDateTime`.
pub fn to_us(t: time::OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1000) as i64
}

/// Now, in microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    to_us(time::OffsetDateTime::now_utc())
}

/// The smallest UUID whose embedded UUIDv7 time is `ms`: the lower bound of every id generated
/// at or after that millisecond. Used for partition bounds and retention.
pub fn uuid_floor_ms(ms: i64) -> uuid::Uuid {
    let ms = ms.clamp(0, (1i64 << 48) - 1) as u64;
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    uuid::Uuid::from_bytes(b)
}

/// The millisecond timestamp embedded in a UUIDv7.
pub fn uuid_ms(id: &uuid::Uuid) -> i64 {
    let b = id.as_bytes();
    let mut ms = [0u8; 8];
    ms[2..].copy_from_slice(&b[..6]);
    u64::from_be_bytes(ms) as i64
}

pub(crate) fn method_from_db(s: &str) -> Result<Method, StoreError> {
    Method::ALL
        .into_iter()
        .find(|m| m.as_str() == s)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown method {s:?} in database")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_floor_orders_with_v7_ids() {
        let id = uuid::Uuid::now_v7();
        let ms = uuid_ms(&id);
        assert!(uuid_floor_ms(ms) <= id);
        assert!(uuid_floor_ms(ms + 1) > id);
        assert_eq!(uuid_ms(&uuid_floor_ms(ms)), ms);
    }
}
