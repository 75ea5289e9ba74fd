//! Storage of accounts: users, login sessions with their refresh tokens, and service tokens
//! (migrations `0001`, `0005_accounts`).
//!
//! One SQL text serves both backends (`$n` placeholders work in SQLite too), expanded by
//! [`impl_account_store!`] for [`SqliteStore`](super::sqlite::SqliteStore) and
//! [`PgStore`](super::postgres::PgStore), like [`super::spire`].
//!
//! Every change that must end a user's tokens (disable, delete, password or role change, logout
//! everywhere) revokes the user's sessions in the same transaction, so no window exists where the
//! change is stored and the old tokens still pass [`AccountStore::session_state`]. Changes that
//! could leave the installation without an enabled administrator are refused inside the
//! transaction that would make them ([`AccountChange::LastAdmin`]).

use serde::Serialize;

use super::StoreFuture;

/// A stored user.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UserRecord {
    /// Lower case (names are case-insensitive).
    pub username: String,
    pub password_hash: String,
    pub role: String,
    pub created_us: i64,
    pub disabled_us: Option<i64>,
    pub password_changed_us: Option<i64>,
}

/// What an admin may change about a user. `None` fields are left as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserChange {
    pub role: Option<String>,
    pub disabled: Option<bool>,
}

/// Why an account change was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountChange {
    Done,
    NotFound,
    /// It would leave no enabled admin: nobody could manage the installation any more.
    LastAdmin,
}

/// What the per-request check of an access token needs: the session and its user, now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionState {
    pub username: String,
    pub revoked_us: Option<i64>,
    /// The user's current role (a token minted under another role is stale).
    pub role: String,
    pub user_disabled_us: Option<i64>,
}

/// A recorded service token (its secret is the JWT itself, never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct ServiceTokenRecord {
    /// The token's `jti`.
    pub id: String,
    pub subject: String,
    pub created_by: String,
    pub created_us: i64,
    pub expires_us: i64,
    pub revoked_us: Option<i64>,
}

/// Storage of users, sessions and service tokens. A supertrait of [`super::Store`].
pub trait AccountStore: Send + Sync {
    fn count_users(&self) -> StoreFuture<'_, i64>;
    /// The user named exactly `username` (callers lower-case names first).
    fn get_user<'a>(&'a self, username: &'a str) -> StoreFuture<'a, Option<UserRecord>>;
    /// Users in name order after `after`, at most `limit`.
    fn list_users<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: u32,
    ) -> StoreFuture<'a, Vec<UserRecord>>;
    /// Creates a user; [`super::StoreError::Conflict`] if the name is taken.
    fn create_user<'a>(&'a self, user: &'a UserRecord) -> StoreFuture<'a, ()>;
    /// Changes role and/or disabled state; a real change revokes the user's sessions.
    fn update_user<'a>(
        &'a self,
        username: &'a str,
        change: &'a UserChange,
        now_us: i64,
    ) -> StoreFuture<'a, AccountChange>;
    /// Replaces the password hash and revokes every session of the user.
    fn set_password<'a>(
        &'a self,
        username: &'a str,
        password_hash: &'a str,
        now_us: i64,
    ) -> StoreFuture<'a, AccountChange>;
    /// Deletes the user, its sessions and refresh tokens.
    fn delete_user<'a>(&'a self, username: &'a str) -> StoreFuture<'a, AccountChange>;

    /// Opens a login session and stores its first refresh token (by hash).
    fn open_session<'a>(
        &'a self,
        session_id: &'a str,
        username: &'a str,
        refresh_hash: &'a str,
        expires_us: i64,
        now_us: i64,
    ) -> StoreFuture<'a, ()>;
    /// Removes and returns `(username, session id)` of a refresh token (single use) if it has
    /// not expired and its session is live.
    fn take_refresh_token<'a>(
        &'a self,
        token_hash: &'a str,
        now_us: i64,
    ) -> StoreFuture<'a, Option<(String, String)>>;
    /// Stores the next refresh token of a live session. False when the session was revoked
    /// meanwhile.
    fn put_refresh_token<'a>(
        &'a self,
        session_id: &'a str,
        username: &'a str,
        token_hash: &'a str,
        expires_us: i64,
    ) -> StoreFuture<'a, bool>;
    /// Revokes one session (logout). False when unknown.
    fn revoke_session<'a>(&'a self, session_id: &'a str, now_us: i64) -> StoreFuture<'a, bool>;
    /// Revokes every session of a user (logout everywhere); returns how many were live.
    fn revoke_user_sessions<'a>(&'a self, username: &'a str, now_us: i64) -> StoreFuture<'a, u64>;
    fn session_state<'a>(&'a self, session_id: &'a str) -> StoreFuture<'a, Option<SessionState>>;

    fn create_service_token<'a>(&'a self, t: &'a ServiceTokenRecord) -> StoreFuture<'a, ()>;
    /// Service tokens, newest first (ids are UUIDv7), before `before`, at most `limit`.
    fn list_service_tokens<'a>(
        &'a self,
        before: Option<&'a str>,
        limit: u32,
    ) -> StoreFuture<'a, Vec<ServiceTokenRecord>>;
    fn get_service_token<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<ServiceTokenRecord>>;
    /// Revokes a service token; `None` when unknown, else its revocation time.
    fn revoke_service_token<'a>(&'a self, id: &'a str, now_us: i64)
    -> StoreFuture<'a, Option<i64>>;
}

/// Columns of [`UserRecord`] (read with its `FromRow`).
pub(crate) const USER_COLUMNS: &str =
    "username, password_hash, role, created_us, disabled_us, password_changed_us";

/// Columns of [`ServiceTokenRecord`] (read with its `FromRow`).
pub(crate) const SERVICE_TOKEN_COLUMNS: &str =
    "id, subject, created_by, created_us, expires_us, revoked_us";

/// Enabled admins left: checked inside the transaction that could remove the last one.
const ENABLED_ADMINS: &str =
    "SELECT count(*) FROM users WHERE role = 'admin' AND disabled_us IS NULL";

/// Implements [`AccountStore`] for a store type, given its write and read pools.
macro_rules! impl_account_store {
    ($ty:ty, db = $db:ty, write = |$w:ident| $wexpr:expr, read = |$r:ident| $rexpr:expr) => {
        const _: () = {
        /// Revokes a user's live sessions and deletes their refresh tokens, inside `tx`.
        async fn revoke_sessions_in(
            tx: &mut sqlx::Transaction<'_, $db>,
            username: &str,
            now_us: i64,
        ) -> Result<u64, $crate::store::StoreError> {
            let n = sqlx::query(
                "UPDATE sessions SET revoked_us = $1 WHERE username = $2 AND revoked_us IS NULL",
            )
            .bind(now_us)
            .bind(username)
            .execute(&mut **tx)
            .await?
            .rows_affected();
            sqlx::query("DELETE FROM refresh_tokens WHERE username = $1")
                .bind(username)
                .execute(&mut **tx)
                .await?;
            Ok(n)
        }

        impl $crate::store::accounts::AccountStore for $ty {
            fn count_users(&self) -> $crate::store::StoreFuture<'_, i64> {
                let $r = self;
                Box::pin(async move {
                    Ok(sqlx::query_scalar("SELECT count(*) FROM users")
                        .fetch_one($rexpr)
                        .await?)
                })
            }

            fn get_user<'a>(
                &'a self,
                username: &'a str,
            ) -> $crate::store::StoreFuture<'a, Option<$crate::store::accounts::UserRecord>>
            {
                use $crate::store::accounts::{USER_COLUMNS, UserRecord};
                let $r = self;
                Box::pin(async move {
                    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username = $1");
                    Ok(sqlx::query_as::<_, UserRecord>(sqlx::AssertSqlSafe(sql))
                        .bind(username)
                        .fetch_optional($rexpr)
                        .await?)
                })
            }

            fn list_users<'a>(
                &'a self,
                after: Option<&'a str>,
                limit: u32,
            ) -> $crate::store::StoreFuture<'a, Vec<$crate::store::accounts::UserRecord>> {
                use $crate::store::accounts::{USER_COLUMNS, UserRecord};
                let $r = self;
                Box::pin(async move {
                    let sql = format!(
                        "SELECT {USER_COLUMNS} FROM users WHERE username > $1 \
                         ORDER BY username LIMIT $2"
                    );
                    Ok(sqlx::query_as::<_, UserRecord>(sqlx::AssertSqlSafe(sql))
                        .bind(after.unwrap_or(""))
                        .bind(i64::from(limit))
                        .fetch_all($rexpr)
                        .await?)
                })
            }

            fn create_user<'a>(
                &'a self,
                u: &'a $crate::store::accounts::UserRecord,
            ) -> $crate::store::StoreFuture<'a, ()> {
                let $w = self;
                Box::pin(async move {
                    let r = sqlx::query(
                        "INSERT INTO users (username, password_hash, role, created_us, \
                         disabled_us, password_changed_us) VALUES ($1, $2, $3, $4, $5, $6) \
                         ON CONFLICT (username) DO NOTHING",
                    )
                    .bind(&u.username)
                    .bind(&u.password_hash)
                    .bind(&u.role)
                    .bind(u.created_us)
                    .bind(u.disabled_us)
                    .bind(u.password_changed_us)
                    .execute($wexpr)
                    .await?;
                    if r.rows_affected() == 0 {
                        return Err($crate::store::StoreError::Conflict(format!(
                            "user {:?} already exists",
                            u.username
                        )));
                    }
                    Ok(())
                })
            }

            fn update_user<'a>(
                &'a self,
                username: &'a str,
                change: &'a $crate::store::accounts::UserChange,
                now_us: i64,
            ) -> $crate::store::StoreFuture<'a, $crate::store::accounts::AccountChange> {
                use $crate::store::accounts::{AccountChange, ENABLED_ADMINS};
                let $w = self;
                Box::pin(async move {
                    let mut tx = ($wexpr).begin().await?;
                    let before: Option<(String, Option<i64>)> = sqlx::query_as(
                        "SELECT role, disabled_us FROM users WHERE username = $1",
                    )
                    .bind(username)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some((role, disabled_us)) = before else {
                        return Ok(AccountChange::NotFound);
                    };
                    let new_role = change.role.clone().unwrap_or(role.clone());
                    let new_disabled = match change.disabled {
                        None => disabled_us,
                        Some(false) => None,
                        Some(true) => Some(disabled_us.unwrap_or(now_us)),
                    };
                    if new_role == role && new_disabled == disabled_us {
                        return Ok(AccountChange::Done);
                    }
                    sqlx::query(
                        "UPDATE users SET role = $1, disabled_us = $2 WHERE username = $3",
                    )
                    .bind(&new_role)
                    .bind(new_disabled)
                    .bind(username)
                    .execute(&mut *tx)
                    .await?;
                    let admins: i64 = sqlx::query_scalar(ENABLED_ADMINS)
                        .fetch_one(&mut *tx)
                        .await?;
                    if admins == 0 {
                        tx.rollback().await?;
                        return Ok(AccountChange::LastAdmin);
                    }
                    revoke_sessions_in(&mut tx, username, now_us).await?;
                    tx.commit().await?;
                    Ok(AccountChange::Done)
                })
            }

            fn set_password<'a>(
                &'a self,
                username: &'a str,
                password_hash: &'a str,
                now_us: i64,
            ) -> $crate::store::StoreFuture<'a, $crate::store::accounts::AccountChange> {
                use $crate::store::accounts::AccountChange;
                let $w = self;
                Box::pin(async move {
                    let mut tx = ($wexpr).begin().await?;
                    let n = sqlx::query(
                        "UPDATE users SET password_hash = $1, password_changed_us = $2 \
                         WHERE username = $3",
                    )
                    .bind(password_hash)
                    .bind(now_us)
                    .bind(username)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if n == 0 {
                        return Ok(AccountChange::NotFound);
                    }
                    revoke_sessions_in(&mut tx, username, now_us).await?;
                    tx.commit().await?;
                    Ok(AccountChange::Done)
                })
            }

            fn delete_user<'a>(
                &'a self,
                username: &'a str,
            ) -> $crate::store::StoreFuture<'a, $crate::store::accounts::AccountChange> {
                use $crate::store::accounts::{AccountChange, ENABLED_ADMINS};
                let $w = self;
                Box::pin(async move {
                    let mut tx = ($wexpr).begin().await?;
                    sqlx::query("DELETE FROM refresh_tokens WHERE username = $1")
                        .bind(username)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("DELETE FROM sessions WHERE username = $1")
                        .bind(username)
                        .execute(&mut *tx)
                        .await?;
                    let n = sqlx::query("DELETE FROM users WHERE username = $1")
                        .bind(username)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    if n == 0 {
                        tx.rollback().await?;
                        return Ok(AccountChange::NotFound);
                    }
                    let admins: i64 = sqlx::query_scalar(ENABLED_ADMINS)
                        .fetch_one(&mut *tx)
                        .await?;
                    if admins == 0 {
                        tx.rollback().await?;
                        return Ok(AccountChange::LastAdmin);
                    }
                    tx.commit().await?;
                    Ok(AccountChange::Done)
                })
            }

            fn open_session<'a>(
                &'a self,
                session_id: &'a str,
                username: &'a str,
                refresh_hash: &'a str,
                expires_us: i64,
                now_us: i64,
            ) -> $crate::store::StoreFuture<'a, ()> {
                let $w = self;
                Box::pin(async move {
                    let mut tx = ($wexpr).begin().await?;
                    // Housekeeping: what has expired can never be used again.
                    sqlx::query("DELETE FROM refresh_tokens WHERE expires_us < $1")
                        .bind(now_us)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("DELETE FROM sessions WHERE expires_us < $1")
                        .bind(now_us)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(
                        "INSERT INTO sessions (id, username, created_us, expires_us) \
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(session_id)
                    .bind(username)
                    .bind(now_us)
                    .bind(expires_us)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(
                        "INSERT INTO refresh_tokens (token_hash, username, expires_us, session_id) \
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(refresh_hash)
                    .bind(username)
                    .bind(expires_us)
                    .bind(session_id)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(())
                })
            }

            fn take_refresh_token<'a>(
                &'a self,
                token_hash: &'a str,
                now_us: i64,
            ) -> $crate::store::StoreFuture<'a, Option<(String, String)>> {
                let $w = self;
                Box::pin(async move {
                    let mut tx = ($wexpr).begin().await?;
                    let taken: Option<(String, String)> = sqlx::query_as(
                        "DELETE FROM refresh_tokens WHERE token_hash = $1 AND expires_us >= $2 \
                         RETURNING username, session_id",
                    )
                    .bind(token_hash)
                    .bind(now_us)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some((username, sid)) = taken else {
                        return Ok(None);
                    };
                    let live: Option<i64> = sqlx::query_scalar(
                        "SELECT count(*) FROM sessions WHERE id = $1 AND revoked_us IS NULL",
                    )
                    .bind(&sid)
                    .fetch_optional(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok((live.unwrap_or(0) > 0).then_some((username, sid)))
                })
            }

            fn put_refresh_token<'a>(
                &'a self,
                session_id: &'a str,
                username: &'a str,
                token_hash: &'a str,
                expires_us: i64,
            ) -> $crate::store::StoreFuture<'a, bool> {
                let $w = self;
                Box::pin(async move {
                    let mut tx = ($wexpr).begin().await?;
                    let live = sqlx::query(
                        "UPDATE sessions SET expires_us = $1 WHERE id = $2 AND revoked_us IS NULL",
                    )
                    .bind(expires_us)
                    .bind(session_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                        == 1;
                    if !live {
                        tx.rollback().await?;
                        return Ok(false);
                    }
                    sqlx::query(
                        "INSERT INTO refresh_tokens (token_hash, username, expires_us, session_id) \
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(token_hash)
                    .bind(username)
                    .bind(expires_us)
                    .bind(session_id)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(true)
                })
            }

            fn revoke_session<'a>(
                &'a self,
                session_id: &'a str,
                now_us: i64,
            ) -> $crate::store::StoreFuture<'a, bool> {
                let $w = self;
                Box::pin(async move {
                    let mut tx = ($wexpr).begin().await?;
                    let n = sqlx::query(
                        "UPDATE sessions SET revoked_us = coalesce(revoked_us, $1) WHERE id = $2",
                    )
                    .bind(now_us)
                    .bind(session_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    sqlx::query("DELETE FROM refresh_tokens WHERE session_id = $1")
                        .bind(session_id)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(n > 0)
                })
            }

            fn revoke_user_sessions<'a>(
                &'a self,
                username: &'a str,
                now_us: i64,
            ) -> $crate::store::StoreFuture<'a, u64> {
                let $w = self;
                Box::pin(async move {
                    let mut tx = ($wexpr).begin().await?;
                    let n = revoke_sessions_in(&mut tx, username, now_us).await?;
                    tx.commit().await?;
                    Ok(n)
                })
            }

            fn session_state<'a>(
                &'a self,
                session_id: &'a str,
            ) -> $crate::store::StoreFuture<'a, Option<$crate::store::accounts::SessionState>>
            {
                let $r = self;
                Box::pin(async move {
                    let row: Option<(String, Option<i64>, String, Option<i64>)> =
                        sqlx::query_as(
                            "SELECT s.username, s.revoked_us, u.role, u.disabled_us \
                             FROM sessions s JOIN users u ON u.username = s.username \
                             WHERE s.id = $1",
                        )
                        .bind(session_id)
                        .fetch_optional($rexpr)
                        .await?;
                    Ok(row.map(|(username, revoked_us, role, user_disabled_us)| {
                        $crate::store::accounts::SessionState {
                            username,
                            revoked_us,
                            role,
                            user_disabled_us,
                        }
                    }))
                })
            }

            fn create_service_token<'a>(
                &'a self,
                t: &'a $crate::store::accounts::ServiceTokenRecord,
            ) -> $crate::store::StoreFuture<'a, ()> {
                let $w = self;
                Box::pin(async move {
                    sqlx::query(
                        "INSERT INTO service_tokens (id, subject, created_by, created_us, \
                         expires_us, revoked_us) VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(&t.id)
                    .bind(&t.subject)
                    .bind(&t.created_by)
                    .bind(t.created_us)
                    .bind(t.expires_us)
                    .bind(t.revoked_us)
                    .execute($wexpr)
                    .await?;
                    Ok(())
                })
            }

            fn list_service_tokens<'a>(
                &'a self,
                before: Option<&'a str>,
                limit: u32,
            ) -> $crate::store::StoreFuture<
                'a,
                Vec<$crate::store::accounts::ServiceTokenRecord>,
            > {
                use $crate::store::accounts::{SERVICE_TOKEN_COLUMNS, ServiceTokenRecord};
                let $r = self;
                Box::pin(async move {
                    // `~` sorts after every UUID character: "no cursor" = from the newest.
                    let sql = format!(
                        "SELECT {SERVICE_TOKEN_COLUMNS} FROM service_tokens WHERE id < $1 \
                         ORDER BY id DESC LIMIT $2"
                    );
                    Ok(sqlx::query_as::<_, ServiceTokenRecord>(sqlx::AssertSqlSafe(sql))
                        .bind(before.unwrap_or("~"))
                        .bind(i64::from(limit))
                        .fetch_all($rexpr)
                        .await?)
                })
            }

            fn get_service_token<'a>(
                &'a self,
                id: &'a str,
            ) -> $crate::store::StoreFuture<
                'a,
                Option<$crate::store::accounts::ServiceTokenRecord>,
            > {
                use $crate::store::accounts::{SERVICE_TOKEN_COLUMNS, ServiceTokenRecord};
                let $r = self;
                Box::pin(async move {
                    let sql =
                        format!("SELECT {SERVICE_TOKEN_COLUMNS} FROM service_tokens WHERE id = $1");
                    Ok(sqlx::query_as::<_, ServiceTokenRecord>(sqlx::AssertSqlSafe(sql))
                        .bind(id)
                        .fetch_optional($rexpr)
                        .await?)
                })
            }

            fn revoke_service_token<'a>(
                &'a self,
                id: &'a str,
                now_us: i64,
            ) -> $crate::store::StoreFuture<'a, Option<i64>> {
                let $w = self;
                Box::pin(async move {
                    Ok(sqlx::query_scalar(
                        "UPDATE service_tokens SET revoked_us = coalesce(revoked_us, $1) \
                         WHERE id = $2 RETURNING revoked_us",
                    )
                    .bind(now_us)
                    .bind(id)
                    .fetch_optional($wexpr)
                    .await?)
                })
            }
        }
        };
    };
}

impl_account_store!(
    super::sqlite::SqliteStore,
    db = sqlx::Sqlite,
    write = |s| s.writer(),
    read = |s| s.reader()
);
impl_account_store!(
    super::postgres::PgStore,
    db = sqlx::Postgres,
    write = |s| s.writer(),
    read = |s| s.reader()
);
