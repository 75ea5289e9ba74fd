//! Join tokens: created by an admin (API or `hais-control-plane token create`), consumed once by
//! an enrollment. The token pins the CA by hash; the database keeps only the secret's SHA-256.

use std::time::Duration;

use hais_svid::JoinToken;

use super::{Authority, SpireError};
use crate::auth::token_hash;
use crate::config::MAX_TOKEN_TTL;
use crate::store::spire::JoinTokenRecord;
use crate::store::{Store, now_us};

/// Longest accepted description.
pub const MAX_DESCRIPTION_LEN: usize = 256;
/// Shortest join-token lifetime (the longest is [`MAX_TOKEN_TTL`]).
pub const MIN_TOKEN_TTL: Duration = Duration::from_secs(60);

/// A token just created. `token` is the only copy of the secret: show it once.
#[derive(Debug, Clone)]
pub struct CreatedToken {
    pub token: String,
    pub id: String,
    pub expires_us: i64,
}

/// Creates and stores a token valid for `ttl` (1 minute to 30 days).
pub async fn issue_token(
    store: &dyn Store,
    authority: &Authority,
    ttl: Duration,
    description: Option<String>,
    created_by: &str,
) -> Result<CreatedToken, SpireError> {
    if !(MIN_TOKEN_TTL..=MAX_TOKEN_TTL).contains(&ttl) {
        return Err(SpireError::BadRequest(
            "a join token's lifetime must be from 1m to 30d".into(),
        ));
    }
    if let Some(d) = &description
        && (d.len() > MAX_DESCRIPTION_LEN || d.chars().any(char::is_control))
    {
        return Err(SpireError::BadRequest(format!(
            "description must be at most {MAX_DESCRIPTION_LEN} bytes without control characters"
        )));
    }
    let token = JoinToken::generate(authority.hash());
    let created_us = now_us();
    let expires_us = created_us.saturating_add(ttl.as_micros().min(i64::MAX as u128) as i64);
    store
        .create_join_token(&JoinTokenRecord {
            id: token.id.clone(),
            secret_hash: token_hash(&token.secret),
            description,
            created_by: created_by.to_owned(),
            created_us,
            expires_us,
        })
        .await?;
    tracing::info!(token_id = %token.id, created_by, expires_us, "join token created");
    Ok(CreatedToken {
        token: token.to_string(),
        id: token.id.clone(),
        expires_us,
    })
}
