//! Authentication and authorisation.
//!
//! * Users have one role: `admin` (everything), `analyst` (read and annotate), `viewer` (read).
//!   User names are case-insensitive (stored in lower case). Passwords are hashed with
//!   Argon2id on a bounded pool ([`passwords`]); logins are throttled per source and per user
//!   ([`throttle`]).
//! * `POST /api/auth/login` opens a *session* and returns a short-lived HS256 JWT access token
//!   naming it (`sid`) and a refresh token. The refresh token is random, stored only as a SHA-256
//!   hash, single use and rotated on refresh, so a stolen one works at most once.
//! * Services (and agents, until they authenticate with SVIDs) carry *service tokens*: JWTs with
//!   role `service`, a SPIFFE-style subject and a recorded id (`jti`). Split processes share the
//!   signing secret through the database (or `HAIS_JWT_SECRET`), so any process can check them.
//! * A valid signature is not enough: every request's token is checked against the live account
//!   state ([`live`]), so logout, disabling or deleting a user, changing a password or role, and
//!   revoking a service token end the affected tokens at once.

pub mod client_ip;
pub mod live;
pub mod passwords;
pub mod routes;
pub mod throttle;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::http::ApiError;
use crate::state::AppState;
use crate::store::{Store, StoreError, UserRecord, now_us};

/// Issuer claim of every HaIS token.
pub const ISSUER: &str = "hais-control-plane";
/// Settings key of the shared JWT secret.
const JWT_SECRET_KEY: &str = "jwt_secret";

/// A role. Users are admin, analyst or viewer; `Service` is for machine callers only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Analyst,
    Viewer,
    Service,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Analyst => "analyst",
            Role::Viewer => "viewer",
            Role::Service => "service",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        [Role::Admin, Role::Analyst, Role::Viewer, Role::Service]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// Who may do what: the role sets used by handlers.
pub mod allow {
    use super::Role;
    /// Reading fingerprints, statistics and service status.
    pub const READ: &[Role] = &[Role::Admin, Role::Analyst, Role::Viewer, Role::Service];
    /// Annotating (labels).
    pub const ANNOTATE: &[Role] = &[Role::Admin, Role::Analyst];
    /// Writing events (agents and services) — users other than admin may not forge telemetry.
    pub const INGEST: &[Role] = &[Role::Admin, Role::Service];
    /// User management, service tokens, retention.
    pub const ADMIN: &[Role] = &[Role::Admin];
}

/// JWT claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Username, or the service's SPIFFE ID.
    pub sub: String,
    pub role: Role,
    pub iss: String,
    pub iat: u64,
    pub exp: u64,
    /// User tokens: the login session they belong to (ended by logout and account changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// Service tokens minted by an admin: their recorded id (revocable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

impl Claims {
    /// 403 unless the caller holds one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "role {} may not do this; needs one of: {}",
                self.role.as_str(),
                roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    }
}

/// Why authentication failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("too many password checks in progress; retry shortly")]
    Busy,
    #[error("cannot keep the generated admin password: {0}")]
    PasswordFile(String),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Signing keys and lifetimes.
#[derive(Clone)]
pub struct AuthKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub service_ttl: Duration,
}

impl std::fmt::Debug for AuthKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthKeys")
            .field("access_ttl", &self.access_ttl)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `n` random bytes as unpadded base64url.
pub fn random_token(n: usize) -> String {
    use base64::Engine as _;
    let mut b = vec![0u8; n];
    rand::fill(&mut b[..]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// SHA-256 hex of a refresh token: what the database stores instead of the token.
pub fn token_hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

impl AuthKeys {
    pub fn new(secret: &[u8], access: Duration, refresh: Duration, service: Duration) -> Self {
        AuthKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            access_ttl: access,
            refresh_ttl: refresh,
            service_ttl: service,
        }
    }

    /// Uses `configured` if given; otherwise the secret stored in the database, generating it on
    /// the very first start. Every process sharing the database ends up with the same secret.
    pub async fn load(
        store: &dyn Store,
        configured: Option<&str>,
        access: Duration,
        refresh: Duration,
        service: Duration,
    ) -> Result<Self, StoreError> {
        let secret = match configured {
            Some(s) => s.to_owned(),
            None => {
                store
                    .setting_or_init(JWT_SECRET_KEY, &random_token(48))
                    .await?
            }
        };
        Ok(Self::new(secret.as_bytes(), access, refresh, service))
    }

    /// Signs a token for `sub` with `role`, valid for `ttl`, naming a session or a token id.
    fn sign(
        &self,
        sub: &str,
        role: Role,
        ttl: Duration,
        sid: Option<&str>,
        jti: Option<&str>,
    ) -> Result<String, AuthError> {
        let now = unix_now();
        let claims = Claims {
            sub: sub.to_owned(),
            role,
            iss: ISSUER.to_owned(),
            iat: now,
            exp: now + ttl.as_secs().max(1),
            sid: sid.map(str::to_owned),
            jti: jti.map(str::to_owned),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Invalid(e.to_string()))
    }

    /// An access token of a user's login session.
    pub fn issue_access(&self, user: &str, role: Role, session: &str) -> Result<String, AuthError> {
        self.sign(user, role, self.access_ttl, Some(session), None)
    }

    /// A service token for `subject` (a SPIFFE ID). Tokens an admin mints carry their recorded
    /// id (`jti`); control-plane processes mint short-lived ones for each other without.
    pub fn issue_service(
        &self,
        subject: &str,
        ttl: Option<Duration>,
        jti: Option<&str>,
    ) -> Result<String, AuthError> {
        self.sign(
            subject,
            Role::Service,
            ttl.unwrap_or(self.service_ttl),
            None,
            jti,
        )
    }

    /// Checks signature, issuer and expiry (no leeway: "short-lived" means it).
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.set_issuer(&[ISSUER]);
        v.set_required_spec_claims(&["exp", "iss", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            })
    }
}

/// Shortest password accepted anywhere (API and `HAIS_ADMIN_PASSWORD`).
pub const MIN_PASSWORD_LEN: usize = 8;
/// Longest accepted password, in bytes (Argon2 cost grows with input).
pub const MAX_PASSWORD_LEN: usize = 1024;

/// Checks a new password's length; the message says what is accepted.
pub fn check_new_password(pw: &str) -> Result<(), String> {
    if (MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&pw.len()) {
        Ok(())
    } else {
        Err(format!(
            "password must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} bytes long"
        ))
    }
}

/// Canonical form of a user name: names are case-insensitive.
pub fn canonical_username(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// Name of the file, in the data directory, that receives a generated admin password.
pub const ADMIN_PASSWORD_FILE: &str = "admin-password";

/// Creates the `admin` user when there are no users at all. Uses `password` if given (at least
/// [`MIN_PASSWORD_LEN`] bytes), otherwise generates one and writes it to
/// `<data_dir>/admin-password` (mode 0600, never to the log: under systemd stderr is the
/// journal, which other users may read). Returns the generated password, if one was generated.
pub async fn bootstrap_admin(
    store: &dyn Store,
    passwords: &passwords::Passwords,
    password: Option<&str>,
    data_dir: &std::path::Path,
) -> Result<Option<String>, AuthError> {
    if let Some(p) = password {
        check_new_password(p)
            .map_err(|m| AuthError::Config(format!("HAIS_ADMIN_PASSWORD: {m}")))?;
    }
    if store.count_users().await? > 0 {
        return Ok(None);
    }
    let (pw, generated) = match password {
        Some(p) => (p.to_owned(), false),
        None => (random_token(18), true),
    };
    let user = UserRecord {
        username: "admin".into(),
        password_hash: passwords.hash(pw.clone()).await?,
        role: Role::Admin.as_str().into(),
        created_us: now_us(),
        disabled_us: None,
        password_changed_us: None,
    };
    match store.create_user(&user).await {
        Ok(()) => {}
        // Another process sharing the database bootstrapped first.
        Err(StoreError::Conflict(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    if generated {
        let path = data_dir.join(ADMIN_PASSWORD_FILE);
        crate::secure_fs::write_secret(&path, format!("{pw}\n").as_bytes())
            .map_err(|e| AuthError::PasswordFile(format!("{}: {e}", path.display())))?;
        tracing::warn!(
            file = %path.display(),
            "created user admin with a generated password, written to this file (mode 0600); \
             read it, log in, change it, then delete the file"
        );
        Ok(Some(pw))
    } else {
        tracing::info!("created user admin from HAIS_ADMIN_PASSWORD");
        Ok(None)
    }
}

/// The authenticated caller of a request. Rejects with 401 JSON when the bearer token is
/// missing, malformed, forged or expired.
#[derive(Debug, Clone)]
pub struct Caller(pub Claims);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| {
                ApiError::unauthorized("missing Authorization: Bearer <token> header")
            })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("Authorization header must be `Bearer <token>`")
            })?;
        let claims = match state.auth.verify(token) {
            Ok(c) => c,
            Err(AuthError::Expired) => {
                return Err(ApiError::new(
                    axum::http::StatusCode::UNAUTHORIZED,
                    "token_expired",
                    "access token expired; refresh it via POST /api/auth/refresh",
                ));
            }
            Err(_) => return Err(ApiError::unauthorized("invalid token")),
        };
        match state.liveness.check(&*state.store, &claims).await? {
            Ok(()) => Ok(Caller(claims)),
            Err(dead) => Err(ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "token_revoked",
                dead.to_string(),
            )),
        }
    }
}

/// Shared handle type.
pub type SharedKeys = Arc<AuthKeys>;

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> AuthKeys {
        AuthKeys::new(
            b"0123456789abcdef0123456789abcdef",
            Duration::from_secs(60),
            Duration::from_secs(60),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn tokens_round_trip_and_reject_tampering() {
        let k = keys();
        let t = k.issue_access("alice", Role::Analyst, "s1").unwrap();
        let c = k.verify(&t).unwrap();
        assert_eq!((c.sub.as_str(), c.role), ("alice", Role::Analyst));
        assert_eq!(c.sid.as_deref(), Some("s1"));
        let other = AuthKeys::new(
            b"another-secret-another-secret-xx",
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        assert!(matches!(other.verify(&t), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn expired_tokens_are_told_apart() {
        let k = keys();
        let now = unix_now();
        let claims = Claims {
            sub: "bob".into(),
            role: Role::Viewer,
            iss: ISSUER.into(),
            iat: now - 100,
            exp: now - 10,
            sid: None,
            jti: None,
        };
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &k.encoding).unwrap();
        assert!(matches!(k.verify(&t), Err(AuthError::Expired)));
    }
}
