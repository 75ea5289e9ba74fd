//! The CA as the spire service uses it: loaded from (or first written to) the store, signing
//! agents' CSRs and the uplink's own SVID with the configured lifetime.

use std::time::Duration;

use hais_shared::spiffe::SpiffeId;
use hais_shared::wire;
use hais_svid::{Bundle, CertificateAuthority, CertificateDer, Svid};
use serde::{Deserialize, Serialize};

use super::SpireError;
use crate::config::SpireConfig;
use crate::store::Store;

/// Settings key holding the CA (certificate and key, PEM, as JSON).
const CA_SETTING: &str = "spire_ca";

#[derive(Debug, Serialize, Deserialize)]
struct StoredCa {
    cert_pem: String,
    key_pem: String,
}

/// The built-in CA and the lifetime of what it issues.
#[derive(Debug)]
pub struct Authority {
    ca: CertificateAuthority,
    svid_ttl: Duration,
}

/// An SVID just signed for an agent, with the facts the agents table keeps.
#[derive(Debug, Clone)]
pub struct IssuedSvid {
    pub spiffe_id: SpiffeId,
    pub chain: Vec<CertificateDer<'static>>,
    /// Hex serial of the leaf.
    pub serial: String,
    /// Leaf expiry, µs since the Unix epoch.
    pub not_after_us: i64,
}

/// The hex serial and expiry (µs since the epoch) of a leaf certificate: what the agents table
/// keeps of an SVID, whoever issued it.
pub fn leaf_facts(der: &[u8]) -> Result<(String, i64), SpireError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| SpireError::Corrupt(format!("certificate: {e}")))?;
    Ok((
        hex::encode(cert.tbs_certificate.raw_serial()),
        cert.validity().not_after.timestamp() * 1_000_000,
    ))
}

impl Authority {
    /// The stored CA, or a new one stored now. Every process proposes a fresh CA and the
    /// database keeps the first, so concurrent first starts agree on one.
    pub async fn load(store: &dyn Store, config: &SpireConfig) -> Result<Authority, SpireError> {
        let proposed = CertificateAuthority::generate(&config.trust_domain)?;
        let proposed = serde_json::to_string(&StoredCa {
            cert_pem: proposed.cert_pem(),
            key_pem: proposed.key_pem(),
        })
        .map_err(|e| SpireError::Corrupt(e.to_string()))?;
        let stored = store.setting_or_init(CA_SETTING, &proposed).await?;
        let stored: StoredCa =
            serde_json::from_str(&stored).map_err(|e| SpireError::Corrupt(e.to_string()))?;
        let ca = CertificateAuthority::from_pem(&stored.cert_pem, &stored.key_pem)?;
        if ca.trust_domain() != config.trust_domain {
            return Err(SpireError::TrustDomainMismatch {
                stored: ca.trust_domain().to_owned(),
                configured: config.trust_domain.clone(),
            });
        }
        Ok(Authority {
            ca,
            svid_ttl: config.svid_ttl.0,
        })
    }

    pub fn trust_domain(&self) -> &str {
        self.ca.trust_domain()
    }

    /// SHA-256 of the CA certificate: the pin join tokens carry.
    pub fn hash(&self) -> [u8; 32] {
        self.ca.hash()
    }

    pub fn bundle(&self) -> Bundle {
        self.ca.bundle()
    }

    pub fn ca_pem(&self) -> String {
        self.ca.cert_pem()
    }

    pub fn svid_ttl(&self) -> Duration {
        self.svid_ttl
    }

    /// The SPIFFE ID of agent `agent_id` in this trust domain.
    pub fn agent_id(&self, agent_id: &str) -> Result<SpiffeId, SpireError> {
        SpiffeId::agent(self.trust_domain(), agent_id)
            .map_err(|e| SpireError::BadRequest(format!("agent id {agent_id:?}: {e}")))
    }

    /// Signs the CSR's key into an SVID for `id`. Only the key is taken from the CSR.
    pub fn sign(&self, csr_der: &[u8], id: &SpiffeId) -> Result<IssuedSvid, SpireError> {
        let chain = self.ca.sign_csr(csr_der, id, self.svid_ttl)?;
        let leaf = chain
            .first()
            .ok_or_else(|| SpireError::Corrupt("the CA returned an empty chain".into()))?;
        let (serial, not_after_us) = leaf_facts(leaf)?;
        Ok(IssuedSvid {
            spiffe_id: id.clone(),
            serial,
            not_after_us,
            chain,
        })
    }

    /// A key and SVID for the uplink itself (`spiffe://<td>/hais/control-plane`), with
    /// `localhost` and `dns_names` as DNS SANs for clients that check host names.
    pub fn issue_server(&self, dns_names: &[String]) -> Result<Svid, SpireError> {
        let id = SpiffeId::control_plane(self.trust_domain())
            .map_err(|e| SpireError::Corrupt(e.to_string()))?;
        let mut names = vec!["localhost".to_owned()];
        names.extend(dns_names.iter().filter(|n| *n != "localhost").cloned());
        Ok(self.ca.issue(&id, &names, self.svid_ttl)?)
    }

    /// The wire answer to an enrollment or a renewal.
    pub fn svid_response(&self, issued: &IssuedSvid, agent_id: &str) -> wire::SvidResponse {
        wire::SvidResponse {
            spiffe_id: issued.spiffe_id.to_string(),
            svid_chain_der: issued.chain.iter().map(|c| c.to_vec()).collect(),
            bundle_der: self.bundle().certs.iter().map(|c| c.to_vec()).collect(),
            agent_id: agent_id.to_owned(),
        }
    }
}
