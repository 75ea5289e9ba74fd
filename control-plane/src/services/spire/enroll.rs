//! Enrollment and renewal: what the uplink does with `EnrollRequest`, `RenewRequest` and
//! `RecoverRequest` (the renewal of an SVID that expired during an outage).
//!
//! Enrollment signs first and consumes the token second, in that order on purpose: a malformed
//! CSR is refused without burning the token, and the token is consumed in the same transaction
//! that inserts the agent, so a refused token leaves nothing behind (the signed certificate is
//! simply dropped).

use hais_shared::spiffe::SpiffeId;
use hais_shared::wire;
use hais_svid::{CertificateDer, UnixTime, split_credential};

use super::{Spire, SpireError};
use crate::auth::token_hash;
use crate::bus::topics::{AgentEnrolled, AgentEnrollment};
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
        .publish::<AgentEnrolled>(&AgentEnrollment {
            agent_id: agent_id.clone(),
            spiffe_id: id.to_string(),
            hostname: req.hostname.clone(),
            svid_expires_us: issued.not_after_us,
        })
        .await;
    Ok(spire.authority.svid_response(&issued, &agent_id))
}

/// Renews an SVID that expired while its agent could not reach the control plane, so an
/// outage longer than `spire.svid_ttl` strands nobody. The expired SVID is the credential, so
/// every property that made it one is checked again, and one more: that it is recent.
///
/// * the grace (`spire.expired_renewal_grace`) is on, and the leaf expired at most that long ago;
/// * the chain leads to this CA, checked as of the leaf's expiry;
/// * the leaf names an agent of this trust domain that is enrolled, with that SPIFFE ID, and not
///   revoked;
/// * its serial is the one recorded for the agent, so a superseded SVID (renewed since, maybe
///   leaked since) cannot be used; the new serial replaces it in one conditional UPDATE;
/// * the agent proved it holds the leaf's key: `signature` verifies with the leaf's public key
///   over [`wire::recover_signed_message`] of this connection's TLS exporter value (`binding`)
///   and the CSR, so a request cannot be replayed on another connection or for another key.
///
/// Only a new SVID is handed out; events still need the uplink with it.
pub async fn recover(
    state: &AppState,
    spire: &Spire,
    req: wire::RecoverRequest,
    binding: &[u8],
) -> Result<wire::SvidResponse, SpireError> {
    let refused = |why: String| SpireError::RecoveryRefused(why);
    let grace = spire.config.expired_renewal_grace;
    if grace.is_off() {
        return Err(refused(
            "disabled on this control plane (spire.expired_renewal_grace = 0)".into(),
        ));
    }
    let chain: Vec<CertificateDer<'static>> = req
        .svid_chain_der
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let leaf = chain
        .first()
        .ok_or_else(|| SpireError::BadRequest("no SVID in the request".into()))?;
    let bad = |e: hais_svid::SvidError| refused(format!("the SVID: {e}"));
    let id = hais_svid::spiffe_id_of(leaf).map_err(bad)?;
    let (_, expired_at) = hais_svid::validity_of(leaf).map_err(bad)?;
    let agent_id = id
        .agent_id()
        .filter(|_| id.trust_domain() == spire.authority.trust_domain())
        .ok_or_else(|| refused(format!("{id} is not an agent of this trust domain")))?
        .to_owned();
    let now = time::OffsetDateTime::now_utc();
    if now - expired_at > grace.0 {
        return Err(refused(format!(
            "the SVID expired at {expired_at}, longer ago than spire.expired_renewal_grace ({} s)",
            grace.0.as_secs()
        )));
    }
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(expired_at.unix_timestamp()).unwrap_or(0),
    ));
    hais_svid::verify_chain_at(&spire.authority.bundle(), &chain, at)
        .map_err(|e| refused(format!("{id}: {e}")))?;
    hais_svid::verify_signature(
        leaf,
        &wire::recover_signed_message(binding, &req.csr_der),
        &req.signature,
    )
    .map_err(|e| refused(format!("proof of possession of the key: {e}")))?;
    let (old_serial, _) = super::leaf_facts(leaf)?;
    if spire.revocations.is_revoked(&agent_id) {
        return Err(SpireError::Revoked(agent_id));
    }
    let agent = match state.store.get_agent(&agent_id).await? {
        Some(a) if a.revoked_us.is_some() => return Err(SpireError::Revoked(agent_id)),
        Some(a) if a.spiffe_id == id.as_str() => a,
        _ => return Err(SpireError::UnknownAgent(agent_id)),
    };
    if agent.svid_serial != old_serial {
        return Err(refused(format!(
            "{id}: this SVID (serial {old_serial}) is not the agent's latest"
        )));
    }
    let issued = spire.authority.sign(&req.csr_der, &id)?;
    if !state
        .store
        .replace_agent_svid(&agent_id, &old_serial, &issued.serial, issued.not_after_us)
        .await?
    {
        // Revoked or renewed in between.
        return Err(refused(format!(
            "{id}: the agent was revoked or its SVID renewed meanwhile"
        )));
    }
    tracing::info!(%agent_id, %old_serial, serial = %issued.serial, %expired_at, "expired SVID renewed");
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
