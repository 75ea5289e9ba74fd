//! Whether a correctly signed token is still good: its session not logged out, its user not
//! disabled, deleted or given another role, its service token not revoked.
//!
//! A signature proves who issued a token, not that it may still be used; this check is what lets
//! an admin shut a compromised account out at once. The answer is read from the store and kept
//! for [`TTL`], so a busy client costs one small query per token every couple of seconds. A
//! change made by this process clears the cache at once; other processes sharing the database
//! see it within [`TTL`]. The cache only ever holds tokens with a valid signature, and is
//! cleared whole if it grows past [`MAX_ENTRIES`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::{Store, StoreError};

use super::{Claims, Role};

/// How long an answer is reused.
pub const TTL: Duration = Duration::from_secs(2);
/// Entries kept at most.
pub const MAX_ENTRIES: usize = 50_000;

/// Why a correctly signed token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Dead {
    #[error("this session was logged out or ended by an account change; log in again")]
    SessionEnded,
    #[error("the account is disabled")]
    Disabled,
    #[error("the account no longer exists")]
    NoUser,
    #[error("this service token was revoked")]
    Revoked,
    #[error("this service token is not known to this installation; mint a new one")]
    UnknownServiceToken,
    #[error("this token predates session tracking; log in again")]
    NoSession,
}

/// A cached answer and when it was read.
type Answer = (Result<(), Dead>, Instant);

/// The per-process cache of token liveness.
#[derive(Debug, Default)]
pub struct Liveness {
    cache: Mutex<HashMap<String, Answer>>,
}

impl Liveness {
    /// Drops every cached answer (after a change made by this process).
    pub fn invalidate(&self) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Checks `claims` (already verified: signature, issuer, expiry).
    pub async fn check(
        &self,
        store: &dyn Store,
        claims: &Claims,
    ) -> Result<Result<(), Dead>, StoreError> {
        let key = match (claims.role, &claims.sid, &claims.jti) {
            (Role::Service, _, Some(jti)) => format!("t:{jti}"),
            // Control-plane processes call each other with short-lived tokens they mint
            // themselves (no jti); an admin can only mint agent subjects, which carry one.
            (Role::Service, _, None) if is_control_plane(&claims.sub) => return Ok(Ok(())),
            (Role::Service, _, None) => return Ok(Err(Dead::UnknownServiceToken)),
            (_, Some(sid), _) => format!("s:{sid}"),
            (_, None, _) => return Ok(Err(Dead::NoSession)),
        };
        let now = Instant::now();
        if let Some((answer, at)) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            && now.duration_since(*at) < TTL
        {
            return Ok(answer.clone());
        }
        let answer = match (claims.role, &claims.sid, &claims.jti) {
            (Role::Service, _, Some(jti)) => match store.get_service_token(jti).await? {
                None => Err(Dead::UnknownServiceToken),
                Some(t) if t.subject != claims.sub => Err(Dead::UnknownServiceToken),
                Some(t) if t.revoked_us.is_some() => Err(Dead::Revoked),
                Some(_) => Ok(()),
            },
            (role, Some(sid), _) => match store.session_state(sid).await? {
                None => Err(Dead::NoUser),
                Some(s) if s.username != claims.sub => Err(Dead::SessionEnded),
                Some(s) if s.revoked_us.is_some() => Err(Dead::SessionEnded),
                Some(s) if s.user_disabled_us.is_some() => Err(Dead::Disabled),
                Some(s) if s.role != role.as_str() => Err(Dead::SessionEnded),
                Some(_) => Ok(()),
            },
            _ => unreachable!("handled above"),
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_ENTRIES {
            cache.clear();
        }
        cache.insert(key, (answer.clone(), now));
        Ok(answer)
    }
}

/// Whether a service subject names a control-plane process (`…/hais/control-plane/<service>`).
fn is_control_plane(sub: &str) -> bool {
    hais_shared::spiffe::SpiffeId::parse(sub)
        .is_ok_and(|id| id.path().starts_with("/hais/control-plane/"))
}
