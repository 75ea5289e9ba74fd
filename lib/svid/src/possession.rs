//! Proof that a peer holds an SVID's private key, outside a TLS handshake.
//!
//! An agent whose SVID expired cannot authenticate with it at the TLS layer (which refuses an
//! expired certificate), but the control plane may still renew it if the agent proves it holds
//! the key. The agent signs a message the caller builds (bound to the connection and the
//! request, see `hais_shared::wire::recover_signed_message`); the server checks the signature
//! against the expired certificate's public key. Only the keys this crate generates (ECDSA
//! P-256, SHA-256) are accepted.

use rcgen::SigningKey;
use rustls::SignatureScheme;

use crate::SvidError;
use crate::svid::{Svid, cert_facts};

impl Svid {
    /// Signs `message` with the SVID's key (ECDSA P-256 / SHA-256, ASN.1 DER).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SvidError> {
        let key = rcgen::KeyPair::try_from(self.key_pkcs8.as_slice())
            .map_err(|e| SvidError::BadKey(e.to_string()))?;
        if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(SvidError::BadKey("only ECDSA P-256 keys can sign".into()));
        }
        key.sign(message)
            .map_err(|e| SvidError::BadKey(format!("signing: {e}")))
    }
}

/// Checks that `signature` over `message` was made with the key of the certificate `cert_der`
/// (whatever its validity period: the caller decides which certificates it accepts).
pub fn verify_signature(
    cert_der: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), SvidError> {
    let facts = cert_facts(cert_der)?;
    let algs = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .mapping
        .iter()
        .find(|(scheme, _)| *scheme == SignatureScheme::ECDSA_NISTP256_SHA256)
        .map(|(_, algs)| *algs)
        .ok_or_else(|| SvidError::Tls("ECDSA P-256 verification unavailable".into()))?;
    if algs.iter().any(|alg| {
        alg.verify_signature(&facts.public_key, message, signature)
            .is_ok()
    }) {
        Ok(())
    } else {
        Err(SvidError::BadSignature)
    }
}
