//! The control plane's built-in SPIFFE certificate authority.

use std::time::Duration;

use hais_shared::spiffe::SpiffeId;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use time::OffsetDateTime;

use crate::svid::{Bundle, Svid, ca_hash, cert_facts};
use crate::{SvidError, pem};

/// How long the CA itself is valid. Rotating a CA means re-enrolling every agent, so it is long;
/// the leaves it signs are short-lived instead.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Leaves start this much in the past so that an agent whose clock runs a little behind still
/// accepts a fresh SVID.
const BACKDATE: Duration = Duration::from_secs(60);

/// A SPIFFE CA: a self-signed certificate naming `spiffe://<trust domain>` and its key.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    trust_domain: String,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("hash", &hex::encode(self.hash()))
            .finish_non_exhaustive()
    }
}

fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    rand::fill(&mut b[..]);
    b[0] &= 0x7f; // positive INTEGER
    b[0] |= 0x01; // and no leading zero byte to strip
    SerialNumber::from_slice(&b)
}

impl CertificateAuthority {
    /// A new CA for `trust_domain` with a fresh ECDSA P-256 key.
    pub fn generate(trust_domain: &str) -> Result<Self, SvidError> {
        hais_shared::spiffe::validate_trust_domain(trust_domain)?;
        let td_id = SpiffeId::new(trust_domain, "")?;
        let key = KeyPair::generate()?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "HaIS");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("HaIS SPIFFE CA {trust_domain}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![SanType::URI(td_id.as_str().try_into()?)];
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        Ok(CertificateAuthority {
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
            trust_domain: trust_domain.to_owned(),
        })
    }

    /// Loads a CA saved with [`cert_pem`](Self::cert_pem) and [`key_pem`](Self::key_pem).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, SvidError> {
        let pem_err = |why: String| SvidError::Pem {
            what: "CA certificate".into(),
            why,
        };
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| pem_err(e.to_string()))?;
        let facts = cert_facts(&cert_der)?;
        if !facts.is_ca {
            return Err(pem_err("not a CA certificate".into()));
        }
        let trust_domain = facts
            .spiffe_id
            .ok_or(SvidError::NoSpiffeId)?
            .trust_domain()
            .to_owned();
        let key = KeyPair::from_pem(key_pem).map_err(|e| SvidError::BadKey(e.to_string()))?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(CertificateAuthority {
            issuer,
            cert_der,
            trust_domain,
        })
    }

    pub fn cert_pem(&self) -> String {
        pem::encode("CERTIFICATE", &self.cert_der)
    }

    /// The CA key as PKCS#8 PEM. Whoever holds it can mint any identity of the trust domain.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The bundle agents must trust: this CA alone.
    pub fn bundle(&self) -> Bundle {
        Bundle {
            certs: vec![self.cert_der.clone()],
        }
    }

    /// The pin carried by join tokens.
    pub fn hash(&self) -> [u8; 32] {
        ca_hash(&self.cert_der)
    }

    /// Signs the CSR's public key into an SVID for `id`, valid for `ttl`. Only the key is taken
    /// from the CSR (after its self-signature is checked); subject and SANs come from the CA,
    /// so a requester cannot ask for another identity.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        id: &SpiffeId,
        ttl: Duration,
    ) -> Result<Vec<CertificateDer<'static>>, SvidError> {
        let csr = CertificateSigningRequestParams::from_der(&csr_der.into())
            .map_err(|e| SvidError::BadCsr(e.to_string()))?;
        let leaf = self.leaf_params(id, &[], ttl)?;
        let cert = leaf.signed_by(&csr.public_key, &self.issuer)?;
        Ok(vec![cert.der().clone()])
    }

    /// Issues a key and SVID for `id` (the control plane's own identity), with extra DNS names
    /// for clients that also check host names.
    pub fn issue(
        &self,
        id: &SpiffeId,
        dns_names: &[String],
        ttl: Duration,
    ) -> Result<Svid, SvidError> {
        let key = KeyPair::generate()?;
        let leaf = self.leaf_params(id, dns_names, ttl)?;
        let cert = leaf.signed_by(&key, &self.issuer)?;
        Svid::from_der(vec![cert.der().to_vec()], key.serialize_der())
    }

    fn leaf_params(
        &self,
        id: &SpiffeId,
        dns_names: &[String],
        ttl: Duration,
    ) -> Result<CertificateParams, SvidError> {
        if id.trust_domain() != self.trust_domain {
            return Err(SvidError::BadCsr(format!(
                "{id} is not in trust domain {}",
                self.trust_domain
            )));
        }
        let now = OffsetDateTime::now_utc();
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::OrganizationName, "HaIS");
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyAgreement,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.subject_alt_names = vec![SanType::URI(id.as_str().try_into()?)];
        for d in dns_names {
            p.subject_alt_names
                .push(SanType::DnsName(d.as_str().try_into()?));
        }
        p.use_authority_key_identifier_extension = true;
        // A fifth of a short lifetime at most, so its half-life stays in the future.
        p.not_before = now - BACKDATE.min(ttl / 5);
        p.not_after = now + ttl;
        p.serial_number = Some(random_serial());
        Ok(p)
    }
}
