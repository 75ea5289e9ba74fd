//! First contact: trade a join token and a CSR for an X.509-SVID.
//!
//! The agent knows nothing about the control plane but the CA hash inside the join token; the
//! TLS configuration ([`hais_svid::enroll_client_config`]) accepts the server only if its chain
//! holds that CA, so a man in the middle cannot enroll the agent into another deployment. The
//! key is generated here and never leaves the host: only the CSR travels.

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
