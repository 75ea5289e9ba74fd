//! Enrollment and renewal: what the uplink does with `EnrollRequest` and `RenewRequest`.
//!
//! Enrollment signs first and consumes the token second, in that order on purpose: a malformed
//! CSR is refused without burning the token, and the token is consumed in the same transaction
//! that inserts the agent, so a refused token leaves nothing behind (the signed certificate is
//! simply dropped).

use hais_shared::spiffe::SpiffeId;
use hais_shared::wire;
use hais_svid::split_credential;

use super::{Spire, SpireError};
use crate::auth::token_hash;
use crate::bus::{BusMessage, topics};
use crate::state::AppState;
use crate::store::now_us;
use crate::store::spire::{NewAgent, TokenRefusal};

/// Longest host name / agent version accepted at enrollment.
const MAX_HOSTNAME_LEN: usize = 253;
const MAX_VERSION_LEN: usize = 64;

fn printable(field: &str, v: &str, max: usize) -> Result<(), SpireError> {
    if v.len() > max || v.chars().any(char::is_control) {
        return Err(SpireError::BadRequest(format!(
            "{field} must be at most {max} bytes without control characters"
        )));
    }
    Ok(())
}

/// Enrolls a new agent: checks and consumes the join token, signs the CSR for
/// `spiffe://<td>/hais/agent/<new UUIDv7>`, records the agent and announces it.
pub async fn enroll(
    state: &AppState,
    spire: &Spire,
    req: wire::EnrollRequest,
) -> Result<wire::SvidResponse, SpireError> {
    let (token_id, secret) = split_credential(&req.token).ok_or(TokenRefusal::Unknown)?;
    printable("hostname", &req.hostname, MAX_HOSTNAME_LEN)?;
    printable("agent_version", &req.agent_version, MAX_VERSION_LEN)?;
    let agent_id = uuid::Uuid::now_v7().to_string();
    let id = spire.authority.agent_id(&agent_id)?;
    let issued = spire.authority.sign(&req.csr_der, &id)?;
    let agent = NewAgent {
        id: agent_id.clone(),
        spiffe_id: id.to_string(),
        hostname: req.hostname.clone(),
        agent_version: req.agent_version.clone(),
        enrolled_us: now_us(),
        svid_serial: issued.serial.clone(),
        svid_expires_us: issued.not_after_us,
    };
    if let Err(refusal) = state
        .store
        .enroll_agent(token_id, &token_hash(secret), &agent)
        .await?
    {
        tracing::warn!(token_id, hostname = %req.hostname, %refusal, "enrollment refused");
        return Err(refusal.into());
    }
    tracing::info!(%agent_id, spiffe_id = %id, hostname = %req.hostname, token_id, "agent enrolled");
    state
        .publish(BusMessage::new(
            topics::AGENT_ENROLLED,
            &state.origin(),
            &serde_json::json!({
                "agent_id": agent_id,
                "spiffe_id": id.as_str(),
                "hostname": req.hostname,
                "svid_expires_us": issued.not_after_us,
            }),
        ))
        .await;
    Ok(spire.authority.svid_response(&issued, &agent_id))
}

/// Renews the SVID of an enrolled, unrevoked agent: same SPIFFE ID, the CSR's (new) key.
pub async fn renew(
    state: &AppState,
    spire: &Spire,
    id: &SpiffeId,
    csr_der: &[u8],
) -> Result<wire::SvidResponse, SpireError> {
    let agent_id = id
        .agent_id()
        .ok_or_else(|| SpireError::UnknownAgent(id.to_string()))?;
    let issued = spire.authority.sign(csr_der, id)?;
    if !state
        .store
        .renew_agent_svid(agent_id, &issued.serial, issued.not_after_us)
        .await?
    {
        // Unknown or revoked: tell which, so the agent stops retrying a revoked identity.
        return Err(match state.store.get_agent(agent_id).await? {
            Some(a) if a.revoked_us.is_some() => SpireError::Revoked(agent_id.to_owned()),
            _ => SpireError::UnknownAgent(agent_id.to_owned()),
        });
    }
    tracing::info!(%agent_id, serial = %issued.serial, "SVID renewed");
    Ok(spire.authority.svid_response(&issued, agent_id))
}
