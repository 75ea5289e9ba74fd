//! X.509-SVIDs for HaIS.
//!
//! Agents and the control plane authenticate each other by SPIFFE ID, not by host name: an agent
//! may reach the control plane through any address, and what matters is that the peer holds an
//! SVID for `spiffe://<td>/hais/control-plane` (or, the other way, `…/hais/agent/<id>`) signed by
//! the trust bundle. This crate holds what both sides need for that:
//!
//! * [`CertificateAuthority`] — the control plane's built-in SPIFFE CA (signs agents' CSRs);
//! * [`Svid`] and [`Bundle`] — an identity with its key, and the CAs to trust, with their on-disk
//!   form in an agent's state directory;
//! * [`JoinToken`] — the one-time enrollment token that also pins the CA (as `kubeadm join` does);
//! * [`server_config`], [`enroll_client_config`], [`uplink_client_config`] — rustls
//!   configurations that check SPIFFE IDs, for QUIC (TLS 1.3 only).
//!
//! It has no I/O besides [`Svid::load`]/[`Svid::save`] and no async code.

mod ca;
mod pem;
mod possession;
mod svid;
mod tls;
mod token;

pub use ca::CertificateAuthority;
pub use possession::verify_signature;
pub use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
pub use svid::{Bundle, Svid, ca_hash, generate_csr, spiffe_id_of, validity_of};
pub use tls::{
    SERVER_NAME, enroll_client_config, peer_certificates, peer_spiffe_id, recover_client_config,
    server_config, uplink_client_config, verify_chain, verify_chain_at,
};
pub use token::{JoinToken, split_credential};

/// Why an SVID operation failed. Messages are meant for operators: they say what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SvidError {
    #[error("certificate could not be parsed: {0}")]
    BadCertificate(String),
    #[error("certificate has no SPIFFE ID (exactly one spiffe:// URI SAN is required)")]
    NoSpiffeId,
    #[error("certificate carries more than one URI SAN")]
    SeveralUris,
    #[error("invalid SPIFFE ID: {0}")]
    BadSpiffeId(#[from] hais_shared::spiffe::SpiffeIdError),
    #[error("an SVID must not be a CA certificate")]
    SvidIsCa,
    #[error("private key could not be used: {0}")]
    BadKey(String),
    #[error("certificate signing request refused: {0}")]
    BadCsr(String),
    #[error("join token is malformed: {0}")]
    BadToken(&'static str),
    #[error("bad PEM in {what}: {why}")]
    Pem { what: String, why: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("the signature does not verify with the certificate's public key")]
    BadSignature,
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
}

impl SvidError {
    fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        SvidError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

#[cfg(test)]
mod tests;
