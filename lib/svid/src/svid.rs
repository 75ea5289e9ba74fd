//! An identity ([`Svid`]), the CAs to trust ([`Bundle`]), and their files in a state directory.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use hais_shared::spiffe::SpiffeId;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::{SvidError, pem};

/// File names inside a state directory.
const SVID_FILE: &str = "svid.pem";
const KEY_FILE: &str = "svid.key";
const BUNDLE_FILE: &str = "bundle.pem";

/// An X.509-SVID: a leaf certificate naming one SPIFFE ID (plus any intermediates) and its key.
#[derive(Clone)]
pub struct Svid {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key, PKCS#8 DER.
    pub key_pkcs8: Vec<u8>,
    pub spiffe_id: SpiffeId,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

// The key must never reach a log line.
impl std::fmt::Debug for Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Svid")
            .field("spiffe_id", &self.spiffe_id.as_str())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// Parsed facts of a certificate that callers need.
pub(crate) struct CertFacts {
    pub spiffe_id: Option<SpiffeId>,
    /// The subject public key as raw bytes (the BIT STRING's content).
    pub public_key: Vec<u8>,
    pub is_ca: bool,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

pub(crate) fn cert_facts(der: &[u8]) -> Result<CertFacts, SvidError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| SvidError::BadCertificate(e.to_string()))?;
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(u) = name {
                uris.push(*u);
            }
        }
    }
    let spiffe_id = match uris.as_slice() {
        [] => None,
        [one] => Some(SpiffeId::parse(one)?),
        _ => return Err(SvidError::SeveralUris),
    };
    let ts = |t: x509_parser::time::ASN1Time| {
        OffsetDateTime::from_unix_timestamp(t.timestamp())
            .map_err(|e| SvidError::BadCertificate(e.to_string()))
    };
    Ok(CertFacts {
        spiffe_id,
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        is_ca: cert.is_ca(),
        not_before: ts(cert.validity().not_before)?,
        not_after: ts(cert.validity().not_after)?,
    })
}

/// The SPIFFE ID a certificate names in its single URI SAN.
pub fn spiffe_id_of(cert_der: &[u8]) -> Result<SpiffeId, SvidError> {
    cert_facts(cert_der)?.spiffe_id.ok_or(SvidError::NoSpiffeId)
}

/// A certificate's validity period, `(not_before, not_after)`.
pub fn validity_of(cert_der: &[u8]) -> Result<(OffsetDateTime, OffsetDateTime), SvidError> {
    let f = cert_facts(cert_der)?;
    Ok((f.not_before, f.not_after))
}

/// SHA-256 of a CA certificate's DER: the pin a join token carries.
pub fn ca_hash(ca_der: &[u8]) -> [u8; 32] {
    Sha256::digest(ca_der).into()
}

/// A fresh ECDSA P-256 key (PKCS#8 DER) and a CSR for it (DER). The key never leaves the agent;
/// the CSR's subject is a placeholder because the CA, not the requester, decides the SPIFFE ID.
pub fn generate_csr() -> Result<(Vec<u8>, Vec<u8>), SvidError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "hais-agent");
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_der(), csr.der().to_vec()))
}

impl Svid {
    /// Builds an SVID from DER, checking that the leaf is not a CA, names exactly one SPIFFE ID,
    /// and that the key is usable.
    pub fn from_der(chain: Vec<Vec<u8>>, key_pkcs8: Vec<u8>) -> Result<Svid, SvidError> {
        let leaf = chain
            .first()
            .ok_or_else(|| SvidError::BadCertificate("empty chain".into()))?;
        let facts = cert_facts(leaf)?;
        if facts.is_ca {
            return Err(SvidError::SvidIsCa);
        }
        let spiffe_id = facts.spiffe_id.ok_or(SvidError::NoSpiffeId)?;
        let key = rcgen::KeyPair::try_from(key_pkcs8.as_slice())
            .map_err(|e| SvidError::BadKey(e.to_string()))?;
        // A mismatched pair would only fail later, at a TLS handshake, far from the cause.
        if key.public_key_raw() != facts.public_key.as_slice() {
            return Err(SvidError::BadKey(
                "the private key does not belong to the certificate".into(),
            ));
        }
        Ok(Svid {
            chain: chain.into_iter().map(CertificateDer::from).collect(),
            key_pkcs8,
            spiffe_id,
            not_before: facts.not_before,
            not_after: facts.not_after,
        })
    }

    /// When to renew: half way through the validity period, as SPIRE agents do, so that a
    /// control plane down for less than half a TTL never lets an SVID expire.
    pub fn renew_at(&self) -> OffsetDateTime {
        self.not_before + (self.not_after - self.not_before) / 2
    }

    /// Reads `svid.pem`, `svid.key` and `bundle.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<(Svid, Bundle), SvidError> {
        let chain = read_certs(&dir.join(SVID_FILE))?;
        let key_path = dir.join(KEY_FILE);
        let key_pem = fs::read(&key_path).map_err(|e| SvidError::io(&key_path, e))?;
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(&key_pem).map_err(|e| {
            SvidError::Pem {
                what: key_path.display().to_string(),
                why: e.to_string(),
            }
        })?;
        let svid = Svid::from_der(
            chain.into_iter().map(|c| c.to_vec()).collect(),
            key.secret_pkcs8_der().to_vec(),
        )?;
        let bundle = Bundle {
            certs: read_certs(&dir.join(BUNDLE_FILE))?,
        };
        Ok((svid, bundle))
    }

    /// Writes the SVID, its key and `bundle` into `dir` (created 0700). Every file is written
    /// to a temporary name with mode 0600 and renamed, so a crash never leaves a half-written
    /// identity and the key is never readable by others, not even for an instant.
    pub fn save(&self, bundle: &Bundle, dir: &Path) -> Result<(), SvidError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| SvidError::io(dir, e))?;
        let chain_pem: String = self
            .chain
            .iter()
            .map(|c| pem::encode("CERTIFICATE", c))
            .collect();
        // Key and certificate are renamed in that order; a crash in between leaves a key
        // that does not match the old certificate, which load() reports, and re-enrollment
        // or the next renewal repairs.
        write_private(dir, KEY_FILE, &pem::encode("PRIVATE KEY", &self.key_pkcs8))?;
        write_private(dir, SVID_FILE, &chain_pem)?;
        write_private(dir, BUNDLE_FILE, &bundle.to_pem())?;
        Ok(())
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, SvidError> {
    let bytes = fs::read(path).map_err(|e| SvidError::io(path, e))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SvidError::Pem {
            what: path.display().to_string(),
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(SvidError::Pem {
            what: path.display().to_string(),
            why: "no certificate".into(),
        });
    }
    Ok(certs)
}

fn write_private(dir: &Path, name: &str, contents: &str) -> Result<(), SvidError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let dst = dir.join(name);
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| SvidError::io(&tmp, e))?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| SvidError::io(&tmp, e))?;
    fs::rename(&tmp, &dst).map_err(|e| SvidError::io(&dst, e))
}

/// The CA certificates a peer's chain must lead to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub certs: Vec<CertificateDer<'static>>,
}

impl Bundle {
    /// A bundle from DER certificates, each checked to parse.
    pub fn from_der(certs: Vec<Vec<u8>>) -> Result<Bundle, SvidError> {
        if certs.is_empty() {
            return Err(SvidError::BadCertificate("empty trust bundle".into()));
        }
        for c in &certs {
            cert_facts(c)?;
        }
        Ok(Bundle {
            certs: certs.into_iter().map(CertificateDer::from).collect(),
        })
    }

    /// PEM text, one block per CA.
    pub fn to_pem(&self) -> String {
        self.certs
            .iter()
            .map(|c| pem::encode("CERTIFICATE", c))
            .collect()
    }

    /// Parses PEM text holding one or more CA certificates.
    pub fn from_pem(text: &str) -> Result<Bundle, SvidError> {
        let certs = CertificateDer::pem_slice_iter(text.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SvidError::Pem {
                what: "trust bundle".into(),
                why: e.to_string(),
            })?;
        Bundle::from_der(certs.into_iter().map(|c| c.to_vec()).collect())
    }

    /// Parses a SPIFFE bundle in its JWKS form (what a SPIFFE bundle endpoint serves and
    /// `spire-server bundle show -format spiffe` prints): the `x5c` certificate of every key
    /// whose `use` is `x509-svid`. JWT authorities are ignored (HaIS authenticates with X.509).
    pub fn from_spiffe_jwks(text: &str) -> Result<Bundle, SvidError> {
        use base64::Engine;
        let bad = |why: String| SvidError::Pem {
            what: "SPIFFE bundle (JWKS)".into(),
            why,
        };
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let keys = v
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or_else(|| bad("no \"keys\" array".into()))?;
        let mut certs = Vec::new();
        for k in keys {
            if k.get("use").and_then(|u| u.as_str()) != Some("x509-svid") {
                continue;
            }
            let x5c = k
                .get("x5c")
                .and_then(|x| x.as_array())
                .and_then(|x| x.first())
                .and_then(|c| c.as_str())
                .ok_or_else(|| bad("an x509-svid key has no x5c certificate".into()))?;
            let der = base64::engine::general_purpose::STANDARD
                .decode(x5c)
                .map_err(|e| bad(format!("x5c: {e}")))?;
            certs.push(der);
        }
        Bundle::from_der(certs)
    }

    /// Parses a bundle file in either form: PEM certificates or SPIFFE JWKS.
    pub fn from_file_text(text: &str) -> Result<Bundle, SvidError> {
        if text.trim_start().starts_with('{') {
            Bundle::from_spiffe_jwks(text)
        } else {
            Bundle::from_pem(text)
        }
    }

    /// The trust domain its CAs name (SPIRE and the built-in CA put `spiffe://<td>` in their
    /// CA certificates), if any does.
    pub fn trust_domain(&self) -> Option<String> {
        self.certs.iter().find_map(|c| {
            cert_facts(c)
                .ok()
                .and_then(|f| f.spiffe_id)
                .map(|id| id.trust_domain().to_owned())
        })
    }

    /// This bundle with `other`'s CAs added (trusting the built-in CA and SPIRE's at once).
    pub fn merged(&self, other: &Bundle) -> Bundle {
        let mut certs = self.certs.clone();
        for c in &other.certs {
            if !certs.contains(c) {
                certs.push(c.clone());
            }
        }
        Bundle { certs }
    }

    pub(crate) fn root_store(&self) -> Result<rustls::RootCertStore, SvidError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in &self.certs {
            roots
                .add(c.clone())
                .map_err(|e| SvidError::Tls(format!("trust bundle: {e}")))?;
        }
        Ok(roots)
    }
}
