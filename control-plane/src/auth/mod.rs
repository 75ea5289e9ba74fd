//! Authentication and authorisation.
//!
//! * Users have one role: `admin` (everything), `analyst` (read and annotate), `viewer` (read).
//!   Passwords are hashed with Argon2id; hashing runs on the blocking pool because it is
//!   deliberately slow.
//! * `POST /api/auth/login` returns a short-lived HS256 JWT access token and a refresh token. The
//!   refresh token is random, stored only as a SHA-256 hash, single use and rotated on refresh, so
//!   a stolen one works at most once and can be revoked by deleting rows.
//! * Services (and agents, until they authenticate with SVIDs) carry *service tokens*: JWTs with
//!   role `service` and a SPIFFE-style subject. Split processes share the signing secret through
//!   the database (or `HAIS_JWT_SECRET`), so any process can mint and check them.

pub mod routes;

use std::sync::Arc;
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{Store, StoreError, UserRecord};

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

    /// Signs a token for `sub` with `role`, valid for `ttl`.
    pub fn issue(&self, sub: &str, role: Role, ttl: Duration) -> Result<String, AuthError> {
        let now = unix_now();
        let claims = Claims {
            sub: sub.to_owned(),
            role,
            iss: ISSUER.to_owned(),
            iat: now,
            exp: now + ttl.as_secs().max(1),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Invalid(e.to_string()))
    }

    /// A service token for `service` (a control-plane service name or an agent id).
    pub fn issue_service(&self, subject: &str, ttl: Option<Duration>) -> Result<String, AuthError> {
        self.issue(subject, Role::Service, ttl.unwrap_or(self.service_ttl))
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

/// Hashes a password with Argon2id (on the blocking pool).
pub async fn hash_password(password: String) -> Result<String, AuthError> {
    tokio::task::spawn_blocking(move || {
        let h: PasswordHash = Argon2::default()
            .hash_password(password.as_bytes())
            .map_err(|e| AuthError::Hash(e.to_string()))?;
        Ok(h.to_string())
    })
    .await
    .map_err(|e| AuthError::Hash(e.to_string()))?
}

/// Checks a password against a stored PHC hash (on the blocking pool). Any malformed hash is a
/// mismatch, never an error the caller could distinguish.
pub async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// Creates the `admin` user when there are no users at all. Uses `password` if given, otherwise
/// generates one and prints it once on stderr (it is never stored or logged in clear).
/// Returns the generated password, if one was generated.
pub async fn bootstrap_admin(
    store: &dyn Store,
    password: Option<&str>,
) -> Result<Option<String>, AuthError> {
    if store.count_users().await? > 0 {
        return Ok(None);
    }
    let (pw, generated) = match password {
        Some(p) => (p.to_owned(), false),
        None => (random_token(18), true),
    };
    let user = UserRecord {
        username: "admin".into(),
        password_hash: hash_password(pw.clone()).await?,
        role: Role::Admin.as_str().into(),
    };
    match store.create_user(&user).await {
        Ok(()) => {}
        // Another process sharing the database bootstrapped first.
        Err(StoreError::Conflict(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    if generated {
        eprintln!(
            "\n  HaIS first start: created user `admin` with one-time password: {pw}\n  \
             It is shown only now. Set HAIS_ADMIN_PASSWORD before the first start to choose it.\n"
        );
        tracing::warn!("created user admin with a generated password (printed on stderr once)");
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
        match state.auth.verify(token) {
            Ok(c) => Ok(Caller(c)),
            Err(AuthError::Expired) => Err(ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "token_expired",
                "access token expired; refresh it via POST /api/auth/refresh",
            )),
            Err(_) => Err(ApiError::unauthorized("invalid token")),
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
        let t = k
            .issue("alice", Role::Analyst, Duration::from_secs(60))
            .unwrap();
        let c = k.verify(&t).unwrap();
        assert_eq!((c.sub.as_str(), c.role), ("alice", Role::Analyst));
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
        };
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &k.encoding).unwrap();
        assert!(matches!(k.verify(&t), Err(AuthError::Expired)));
    }

    #[tokio::test]
    async fn argon2_hash_verifies() {
        let h = hash_password("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse".into(), h.clone()).await);
        assert!(!verify_password("wrong".into(), h).await);
        assert!(!verify_password("x".into(), "not a hash".into()).await);
    }
}
