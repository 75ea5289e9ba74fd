//! First contact: trade a join token and a CSR for an X.509-SVID.
//!
//! The agent knows nothing about the control plane but the CA hash inside the join token; the
//! TLS configuration ([`hais_svid::enroll_client_config`]) accepts the server only if its chain
//! holds that CA, so a man in the middle cannot enroll the agent into another deployment. The
//! key is generated here and never leaves the host: only the CSR travels.

use hais_shared::spiffe::SpiffeId;
use hais_shared::wire::{self, EnrollRequest, request, response};
use hais_svid::{Bundle, JoinToken, Svid};

use super::client::{self, ClientError, Transport};

/// Enrolls at `server` with `token`; the caller stores the result.
pub async fn enroll(
    server: &str,
    token: &JoinToken,
    hostname: &str,
    t: &Transport,
) -> Result<(Svid, Bundle), ClientError> {
    let tls = hais_svid::enroll_client_config(token.ca_hash)?;
    let conn = client::connect(server, tls, t).await?;
    let (key, csr) = hais_svid::generate_csr()?;
    let body = request::Body::Enroll(EnrollRequest {
        token: token.credential(),
        csr_der: csr,
        hostname: hostname.to_string(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    });
    let answer = client::exchange(&conn.conn, body, t.request_timeout).await;
    conn.close("enrolled").await;
    let resp = match answer? {
        response::Body::Svid(s) => s,
        _ => return Err(ClientError::Protocol("expected an SVID".into())),
    };
    svid_from_response(resp, key)
}

/// Renews `svid`, which expired while the control plane was unreachable: over `hais-enroll/1`
/// (the TLS layer would refuse the expired certificate), with the server checked against
/// `bundle` and `expected_server` as on the uplink, a CSR for a new key, and a signature by the
/// old key over this connection's TLS exporter value and the CSR (`wire::RecoverRequest`).
/// The caller saves the result.
pub async fn recover(
    server: &str,
    svid: &Svid,
    bundle: &Bundle,
    expected_server: &SpiffeId,
    t: &Transport,
) -> Result<(Svid, Bundle), ClientError> {
    let tls = hais_svid::recover_client_config(bundle, expected_server)?;
    let conn = client::connect(server, tls, t).await?;
    let mut binding = [0u8; wire::RECOVER_BINDING_LEN];
    if conn
        .conn
        .export_keying_material(&mut binding, wire::RECOVER_EXPORTER_LABEL, b"")
        .is_err()
    {
        conn.close("no exporter").await;
        return Err(ClientError::Tls(
            "the connection offers no TLS exporter value to sign".into(),
        ));
    }
    let (key, csr) = hais_svid::generate_csr()?;
    let signature = svid.sign(&wire::recover_signed_message(&binding, &csr))?;
    let body = request::Body::Recover(wire::RecoverRequest {
        svid_chain_der: svid.chain.iter().map(|c| c.to_vec()).collect(),
        csr_der: csr,
        signature,
    });
    let answer = client::exchange(&conn.conn, body, t.request_timeout).await;
    conn.close("renewed").await;
    let resp = match answer? {
        response::Body::Svid(s) => s,
        _ => return Err(ClientError::Protocol("expected an SVID".into())),
    };
    let (new, bundle) = svid_from_response(resp, key)?;
    if new.spiffe_id != svid.spiffe_id {
        return Err(ClientError::Protocol(format!(
            "renewal returned {} for {}",
            new.spiffe_id, svid.spiffe_id
        )));
    }
    Ok((new, bundle))
}

/// Checks an [`wire::SvidResponse`] and pairs it with the key its CSR was made from.
pub fn svid_from_response(
    resp: wire::SvidResponse,
    key_pkcs8: Vec<u8>,
) -> Result<(Svid, Bundle), ClientError> {
    let svid = Svid::from_der(resp.svid_chain_der, key_pkcs8)?;
    let bundle = Bundle::from_der(resp.bundle_der)?;
    if svid.spiffe_id.agent_id().is_none() {
        return Err(ClientError::Protocol(format!(
            "the SVID names {}, not an agent",
            svid.spiffe_id
        )));
    }
    Ok((svid, bundle))
}
