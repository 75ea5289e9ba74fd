//! Storage of the spire service: join tokens and enrolled agents (migration `0003_spire`).
//!
//! The SQL is the same for both backends (`$n` placeholders work in SQLite too, and every column
//! is `text` or a 64-bit integer), so [`impl_spire_store!`] writes the implementation once and
//! expands it for [`SqliteStore`](super::sqlite::SqliteStore) (writes on its single writer
//! connection, reads on the reader pool) and [`PgStore`](super::postgres::PgStore).
//!
//! Token consumption is one conditional `UPDATE … WHERE used_us IS NULL AND expires_us > now` in
//! the transaction that inserts the agent: whichever enrollment updates the row first wins, the
//! other finds it used (PostgreSQL re-evaluates the condition after waiting on the row lock;
//! SQLite serialises writers), so one token enrolls exactly one agent.

use serde::{Deserialize, Serialize};

use super::StoreFuture;

/// A join token as stored: the secret only as its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokenRecord {
    pub id: String,
    pub secret_hash: String,
    pub description: Option<String>,
    /// Who created it: a username, or `cli`.
    pub created_by: String,
    pub created_us: i64,
    pub expires_us: i64,
}

/// Why a join token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// No token with this id, or the secret does not match.
    #[error("unknown join token")]
    Unknown,
    #[error("join token already used")]
    Used,
    #[error("join token expired")]
    Expired,
}

/// An agent being enrolled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAgent {
    pub id: String,
    pub spiffe_id: String,
    pub hostname: String,
    pub agent_version: String,
    pub enrolled_us: i64,
    pub svid_serial: String,
    pub svid_expires_us: i64,
}

/// The last heartbeat of an agent: every field of `wire::Heartbeat`, plus when and from where it
/// was received. Counters are clamped to `i64::MAX` (the databases' integer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeartbeatRecord {
    /// Control-plane clock at receipt (µs since the Unix epoch).
    pub received_us: i64,
    /// Peer address of the connection that carried it.
    pub remote_addr: String,
    pub version: String,
    pub uptime_s: i64,
    pub interfaces: Vec<String>,
    pub packets: i64,
    pub bytes: i64,
    pub drops: i64,
    pub parse_errors: i64,
    pub spool_depth: i64,
    pub spool_dropped: i64,
    /// Expiry of the SVID the agent holds, as it reports it (seconds since the Unix epoch).
    pub svid_expiry_unix: i64,
    /// Agent clock when sent (ms since the Unix epoch); compare with `received_us` for skew.
    pub sent_at_ms: i64,
    pub hostname: String,
}

/// A stored agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentRecord {
    pub id: String,
    pub spiffe_id: String,
    /// Host name given at enrollment.
    pub hostname: String,
    pub agent_version: String,
    /// The join token it enrolled with.
    pub token_id: String,
    pub enrolled_us: i64,
    /// Hex serial of the newest SVID issued to it.
    pub svid_serial: String,
    pub svid_expires_us: i64,
    pub revoked_us: Option<i64>,
    pub heartbeat: Option<HeartbeatRecord>,
}

/// `token_id` of agents registered from an external SPIRE (they enrolled with no join token).
pub const EXTERNAL_TOKEN_ID: &str = "spire-external";

/// Storage of tokens and agents. A supertrait of [`super::Store`], so every store has it.
pub trait SpireStore: Send + Sync {
    fn create_join_token<'a>(&'a self, token: &'a JoinTokenRecord) -> StoreFuture<'a, ()>;

    /// Consumes the token (`id`, with `secret_hash` matching, unused, unexpired at `agent`'s
    /// enrollment time) and inserts `agent`, atomically. `Ok(Err(_))` says why the token was
    /// refused; then nothing was written.
    fn enroll_agent<'a>(
        &'a self,
        token_id: &'a str,
        secret_hash: &'a str,
        agent: &'a NewAgent,
    ) -> StoreFuture<'a, Result<(), TokenRefusal>>;

    /// Registers an agent whose identity comes from an external SPIRE (no join token: its SVID
    /// is its credential) unless one with that id exists. Returns the stored record, which may
    /// be an older one, possibly with another SPIFFE ID: the caller compares.
    fn register_external_agent<'a>(
        &'a self,
        agent: &'a NewAgent,
    ) -> StoreFuture<'a, Option<AgentRecord>>;

    /// Records a renewed SVID. False when the agent is unknown or revoked.
    fn renew_agent_svid<'a>(
        &'a self,
        agent_id: &'a str,
        serial: &'a str,
        expires_us: i64,
    ) -> StoreFuture<'a, bool>;

    /// Records the SVID that replaces `old_serial`, only if that is still the agent's current
    /// SVID and the agent is not revoked (one conditional UPDATE, so of two recoveries with the
    /// same old certificate only one succeeds). False otherwise.
    fn replace_agent_svid<'a>(
        &'a self,
        agent_id: &'a str,
        old_serial: &'a str,
        serial: &'a str,
        expires_us: i64,
    ) -> StoreFuture<'a, bool>;

    /// Stores an agent's latest heartbeat. False when the agent is unknown or revoked.
    fn record_heartbeat<'a>(
        &'a self,
        agent_id: &'a str,
        hb: &'a HeartbeatRecord,
    ) -> StoreFuture<'a, bool>;

    /// Agents in id order (= enrollment order, ids are UUIDv7), after `after`, at most `limit`.
    fn list_agents<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: u32,
    ) -> StoreFuture<'a, Vec<AgentRecord>>;

    fn get_agent<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<AgentRecord>>;

    /// Revokes an agent at `now_us`. `None` when unknown; else its revocation time and whether
    /// this call revoked it (false: it already was).
    fn revoke_agent<'a>(&'a self, id: &'a str, now_us: i64)
    -> StoreFuture<'a, Option<(i64, bool)>>;

    /// Ids of every revoked agent (the uplink's revocation set).
    fn revoked_agents(&self) -> StoreFuture<'_, Vec<String>>;
}

/// Columns of [`AgentRecord`], in the order [`agent_from_row`] reads them.
pub(crate) const AGENT_COLUMNS: &str = "id, spiffe_id, hostname, agent_version, token_id, \
    enrolled_us, svid_serial, svid_expires_us, revoked_us, last_heartbeat_us, last_addr, \
    hb_version, hb_uptime_s, hb_interfaces, hb_packets, hb_bytes, hb_drops, hb_parse_errors, \
    hb_spool_depth, hb_spool_dropped, hb_svid_expiry_unix, hb_sent_at_ms, hb_hostname";

/// Reads one [`AGENT_COLUMNS`] row of either backend.
pub(crate) fn agent_from_row<R>(r: &R) -> Result<AgentRecord, super::StoreError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database>,
{
    let n = |i: usize| -> Result<i64, super::StoreError> {
        Ok(r.try_get::<Option<i64>, _>(i)?.unwrap_or(0))
    };
    let heartbeat = match r.try_get::<Option<i64>, _>(9)? {
        None => None,
        Some(received_us) => {
            let interfaces: Option<String> = r.try_get(13)?;
            Some(HeartbeatRecord {
                received_us,
                remote_addr: r.try_get::<Option<String>, _>(10)?.unwrap_or_default(),
                version: r.try_get::<Option<String>, _>(11)?.unwrap_or_default(),
                uptime_s: n(12)?,
                interfaces: match interfaces {
                    Some(j) => serde_json::from_str(&j)
                        .map_err(|e| super::StoreError::Corrupt(format!("hb_interfaces: {e}")))?,
                    None => Vec::new(),
                },
                packets: n(14)?,
                bytes: n(15)?,
                drops: n(16)?,
                parse_errors: n(17)?,
                spool_depth: n(18)?,
                spool_dropped: n(19)?,
                svid_expiry_unix: n(20)?,
                sent_at_ms: n(21)?,
                hostname: r.try_get::<Option<String>, _>(22)?.unwrap_or_default(),
            })
        }
    };
    Ok(AgentRecord {
        id: r.try_get(0)?,
        spiffe_id: r.try_get(1)?,
        hostname: r.try_get(2)?,
        agent_version: r.try_get(3)?,
        token_id: r.try_get(4)?,
        enrolled_us: r.try_get(5)?,
        svid_serial: r.try_get(6)?,
        svid_expires_us: r.try_get(7)?,
        revoked_us: r.try_get(8)?,
        heartbeat,
    })
}

/// Implements [`SpireStore`] for a store type, given how to reach its write and read pools
/// (`|s| &s.writer`). Expanded once per backend; the SQL is shared.
macro_rules! impl_spire_store {
    ($ty:ty, write = |$w:ident| $wexpr:expr, read = |$r:ident| $rexpr:expr) => {
        impl $crate::store::spire::SpireStore for $ty {
            fn create_join_token<'a>(
                &'a self,
                t: &'a $crate::store::spire::JoinTokenRecord,
            ) -> $crate::store::StoreFuture<'a, ()> {
                let $w = self;
                Box::pin(async move {
                    sqlx::query(
                        "INSERT INTO join_tokens (id, secret_hash, description, created_by, \
                         created_us, expires_us) VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(&t.id)
                    .bind(&t.secret_hash)
                    .bind(&t.description)
                    .bind(&t.created_by)
                    .bind(t.created_us)
                    .bind(t.expires_us)
                    .execute($wexpr)
                    .await?;
                    Ok(())
                })
            }

            fn enroll_agent<'a>(
                &'a self,
                token_id: &'a str,
                secret_hash: &'a str,
                a: &'a $crate::store::spire::NewAgent,
            ) -> $crate::store::StoreFuture<
                'a,
                Result<(), $crate::store::spire::TokenRefusal>,
            > {
                use $crate::store::spire::TokenRefusal;
                let $w = self;
                Box::pin(async move {
                    let mut tx = ($wexpr).begin().await?;
                    let won = sqlx::query(
                        "UPDATE join_tokens SET used_us = $1, agent_id = $2 \
                         WHERE id = $3 AND secret_hash = $4 AND used_us IS NULL \
                         AND expires_us > $1",
                    )
                    .bind(a.enrolled_us)
                    .bind(&a.id)
                    .bind(token_id)
                    .bind(secret_hash)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                        == 1;
                    if !won {
                        // Say why, but only to whoever knows the secret.
                        let row: Option<(Option<i64>, i64)> = sqlx::query_as(
                            "SELECT used_us, expires_us FROM join_tokens \
                             WHERE id = $1 AND secret_hash = $2",
                        )
                        .bind(token_id)
                        .bind(secret_hash)
                        .fetch_optional(&mut *tx)
                        .await?;
                        tx.rollback().await?;
                        return Ok(Err(match row {
                            None => TokenRefusal::Unknown,
                            Some((Some(_), _)) => TokenRefusal::Used,
                            Some((None, _)) => TokenRefusal::Expired,
                        }));
                    }
                    sqlx::query(
                        "INSERT INTO agents (id, spiffe_id, hostname, agent_version, token_id, \
                         enrolled_us, svid_serial, svid_expires_us) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    )
                    .bind(&a.id)
                    .bind(&a.spiffe_id)
                    .bind(&a.hostname)
                    .bind(&a.agent_version)
                    .bind(token_id)
                    .bind(a.enrolled_us)
                    .bind(&a.svid_serial)
                    .bind(a.svid_expires_us)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(Ok(()))
                })
            }

            fn register_external_agent<'a>(
                &'a self,
                a: &'a $crate::store::spire::NewAgent,
            ) -> $crate::store::StoreFuture<'a, Option<$crate::store::spire::AgentRecord>> {
                let $w = self;
                Box::pin(async move {
                    // ON CONFLICT DO NOTHING covers both keys (id, spiffe_id): a SPIFFE ID
                    // already held by another agent row is not taken over either.
                    sqlx::query(
                        "INSERT INTO agents (id, spiffe_id, hostname, agent_version, token_id, \
                         enrolled_us, svid_serial, svid_expires_us) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                    )
                    .bind(&a.id)
                    .bind(&a.spiffe_id)
                    .bind(&a.hostname)
                    .bind(&a.agent_version)
                    .bind($crate::store::spire::EXTERNAL_TOKEN_ID)
                    .bind(a.enrolled_us)
                    .bind(&a.svid_serial)
                    .bind(a.svid_expires_us)
                    .execute($wexpr)
                    .await?;
                    let sql = format!(
                        "SELECT {} FROM agents WHERE id = $1",
                        $crate::store::spire::AGENT_COLUMNS
                    );
                    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(&a.id)
                        .fetch_optional($wexpr)
                        .await?;
                    row.as_ref()
                        .map(|r| $crate::store::spire::agent_from_row(r))
                        .transpose()
                })
            }

            fn renew_agent_svid<'a>(
                &'a self,
                agent_id: &'a str,
                serial: &'a str,
                expires_us: i64,
            ) -> $crate::store::StoreFuture<'a, bool> {
                let $w = self;
                Box::pin(async move {
                    Ok(sqlx::query(
                        "UPDATE agents SET svid_serial = $1, svid_expires_us = $2 \
                         WHERE id = $3 AND revoked_us IS NULL",
                    )
                    .bind(serial)
                    .bind(expires_us)
                    .bind(agent_id)
                    .execute($wexpr)
                    .await?
                    .rows_affected()
                        == 1)
                })
            }

            fn replace_agent_svid<'a>(
                &'a self,
                agent_id: &'a str,
                old_serial: &'a str,
                serial: &'a str,
                expires_us: i64,
            ) -> $crate::store::StoreFuture<'a, bool> {
                let $w = self;
                Box::pin(async move {
                    Ok(sqlx::query(
                        "UPDATE agents SET svid_serial = $1, svid_expires_us = $2 \
                         WHERE id = $3 AND svid_serial = $4 AND revoked_us IS NULL",
                    )
                    .bind(serial)
                    .bind(expires_us)
                    .bind(agent_id)
                    .bind(old_serial)
                    .execute($wexpr)
                    .await?
                    .rows_affected()
                        == 1)
                })
            }

            fn record_heartbeat<'a>(
                &'a self,
                agent_id: &'a str,
                hb: &'a $crate::store::spire::HeartbeatRecord,
            ) -> $crate::store::StoreFuture<'a, bool> {
                let $w = self;
                Box::pin(async move {
                    let interfaces = serde_json::to_string(&hb.interfaces)
                        .map_err(|e| $crate::store::StoreError::Corrupt(e.to_string()))?;
                    Ok(sqlx::query(
                        "UPDATE agents SET last_heartbeat_us = $1, last_addr = $2, \
                         hb_version = $3, hb_uptime_s = $4, hb_interfaces = $5, \
                         hb_packets = $6, hb_bytes = $7, hb_drops = $8, hb_parse_errors = $9, \
                         hb_spool_depth = $10, hb_spool_dropped = $11, \
                         hb_svid_expiry_unix = $12, hb_sent_at_ms = $13, hb_hostname = $14 \
                         WHERE id = $15 AND revoked_us IS NULL",
                    )
                    .bind(hb.received_us)
                    .bind(&hb.remote_addr)
                    .bind(&hb.version)
                    .bind(hb.uptime_s)
                    .bind(interfaces)
                    .bind(hb.packets)
                    .bind(hb.bytes)
                    .bind(hb.drops)
                    .bind(hb.parse_errors)
                    .bind(hb.spool_depth)
                    .bind(hb.spool_dropped)
                    .bind(hb.svid_expiry_unix)
                    .bind(hb.sent_at_ms)
                    .bind(&hb.hostname)
                    .bind(agent_id)
                    .execute($wexpr)
                    .await?
                    .rows_affected()
                        == 1)
                })
            }

            fn list_agents<'a>(
                &'a self,
                after: Option<&'a str>,
                limit: u32,
            ) -> $crate::store::StoreFuture<'a, Vec<$crate::store::spire::AgentRecord>> {
                let $r = self;
                Box::pin(async move {
                    let sql = format!(
                        "SELECT {} FROM agents WHERE id > $1 ORDER BY id LIMIT $2",
                        $crate::store::spire::AGENT_COLUMNS
                    );
                    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(after.unwrap_or(""))
                        .bind(i64::from(limit))
                        .fetch_all($rexpr)
                        .await?;
                    rows.iter()
                        .map(|r| $crate::store::spire::agent_from_row(r))
                        .collect()
                })
            }

            fn get_agent<'a>(
                &'a self,
                id: &'a str,
            ) -> $crate::store::StoreFuture<'a, Option<$crate::store::spire::AgentRecord>> {
                let $r = self;
                Box::pin(async move {
                    let sql = format!(
                        "SELECT {} FROM agents WHERE id = $1",
                        $crate::store::spire::AGENT_COLUMNS
                    );
                    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(id)
                        .fetch_optional($rexpr)
                        .await?;
                    row.as_ref()
                        .map(|r| $crate::store::spire::agent_from_row(r))
                        .transpose()
                })
            }

            fn revoke_agent<'a>(
                &'a self,
                id: &'a str,
                now_us: i64,
            ) -> $crate::store::StoreFuture<'a, Option<(i64, bool)>> {
                let $w = self;
                Box::pin(async move {
                    let newly = sqlx::query(
                        "UPDATE agents SET revoked_us = $1 WHERE id = $2 AND revoked_us IS NULL",
                    )
                    .bind(now_us)
                    .bind(id)
                    .execute($wexpr)
                    .await?
                    .rows_affected()
                        == 1;
                    let at: Option<Option<i64>> =
                        sqlx::query_scalar("SELECT revoked_us FROM agents WHERE id = $1")
                            .bind(id)
                            .fetch_optional($wexpr)
                            .await?;
                    Ok(at.flatten().map(|t| (t, newly)))
                })
            }

            fn revoked_agents(&self) -> $crate::store::StoreFuture<'_, Vec<String>> {
                let $r = self;
                Box::pin(async move {
                    Ok(
                        sqlx::query_scalar("SELECT id FROM agents WHERE revoked_us IS NOT NULL")
                            .fetch_all($rexpr)
                            .await?,
                    )
                })
            }
        }
    };
}

impl_spire_store!(
    super::sqlite::SqliteStore,
    write = |s| s.writer(),
    read = |s| s.reader()
);
impl_spire_store!(
    super::postgres::PgStore,
    write = |s| s.writer(),
    read = |s| s.reader()
);
