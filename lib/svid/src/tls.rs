//! rustls configurations that authenticate peers by SPIFFE ID (TLS 1.3 only, as QUIC needs).
//!
//! Host names play no part: the agent checks that the server's chain leads to the trust bundle
//! (or, at enrollment, to the CA pinned by the join token) and that its leaf names the control
//! plane's SPIFFE ID. The server checks agents' chains at the TLS layer and their SPIFFE IDs
//! after the handshake ([`peer_spiffe_id`]), where it can also consult its revocation list.

use std::any::Any;
use std::sync::Arc;

use hais_shared::spiffe::SpiffeId;
use hais_shared::wire::{ALPN_ENROLL, ALPN_UPLINK};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::SvidError;
use crate::svid::{Bundle, Svid, ca_hash, cert_facts, spiffe_id_of};

/// The server name agents pass to `connect`. Verification ignores it (SPIFFE IDs replace host
/// names); it only has to be a syntactically valid name for the TLS SNI.
pub const SERVER_NAME: &str = "hais-control-plane";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(e: impl std::fmt::Display) -> SvidError {
    SvidError::Tls(e.to_string())
}

fn key_der(svid: &Svid) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(svid.key_pkcs8.clone()))
}

/// The control plane's configuration, serving both ALPNs on one port. Client certificates are
/// optional at the TLS layer (enrollment has none) but, when sent, must chain to `bundle`; the
/// server must refuse an uplink connection without one. The bundle's CAs are appended to the
/// chain it sends so that enrolling agents, which know only the CA's hash, can find the CA.
pub fn server_config(svid: &Svid, bundle: &Bundle) -> Result<Arc<ServerConfig>, SvidError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(bundle.root_store()?),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(tls_err)?;
    let mut chain = svid.chain.clone();
    for ca in &bundle.certs {
        if !chain.contains(ca) {
            chain.push(ca.clone());
        }
    }
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_der(svid))
        .map_err(tls_err)?;
    cfg.alpn_protocols = vec![ALPN_UPLINK.to_vec(), ALPN_ENROLL.to_vec()];
    Ok(Arc::new(cfg))
}

/// The agent's first-contact configuration: no client certificate; the server is trusted only if
/// the chain it sends holds a CA whose SHA-256 is `ca_hash` and its leaf, signed by that CA,
/// names `spiffe://<the CA's trust domain>/hais/control-plane`.
pub fn enroll_client_config(ca_hash: [u8; 32]) -> Result<Arc<ClientConfig>, SvidError> {
    let provider = provider();
    let verifier = SpiffeServerVerifier {
        trust: Trust::Pinned(ca_hash),
        algs: provider.signature_verification_algorithms,
    };
    client_config(provider, verifier, None, ALPN_ENROLL)
}

/// The agent's uplink configuration: presents `svid`, trusts `bundle`, and accepts only a server
/// whose SVID names `expected_server`.
pub fn uplink_client_config(
    svid: &Svid,
    bundle: &Bundle,
    expected_server: &SpiffeId,
) -> Result<Arc<ClientConfig>, SvidError> {
    let provider = provider();
    let verifier = SpiffeServerVerifier {
        trust: Trust::Bundle {
            roots: Arc::new(bundle.root_store()?),
            expected: expected_server.clone(),
        },
        algs: provider.signature_verification_algorithms,
    };
    client_config(provider, verifier, Some(svid), ALPN_UPLINK)
}

/// The configuration of an agent renewing an expired SVID: the enrollment ALPN (the TLS layer
/// would refuse the expired certificate, so none is sent), the server checked against `bundle`
/// and `expected_server` as on the uplink. The old key's possession is proven inside the
/// connection instead (`hais_shared::wire::RecoverRequest`).
pub fn recover_client_config(
    bundle: &Bundle,
    expected_server: &SpiffeId,
) -> Result<Arc<ClientConfig>, SvidError> {
    let provider = provider();
    let verifier = SpiffeServerVerifier {
        trust: Trust::Bundle {
            roots: Arc::new(bundle.root_store()?),
            expected: expected_server.clone(),
        },
        algs: provider.signature_verification_algorithms,
    };
    client_config(provider, verifier, None, ALPN_ENROLL)
}

fn client_config(
    provider: Arc<CryptoProvider>,
    verifier: SpiffeServerVerifier,
    svid: Option<&Svid>,
    alpn: &[u8],
) -> Result<Arc<ClientConfig>, SvidError> {
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut cfg = match svid {
        Some(s) => builder
            .with_client_auth_cert(s.chain.clone(), key_der(s))
            .map_err(tls_err)?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(cfg))
}

/// The certificate chain (leaf first) from the identity a QUIC connection reports
/// (`quinn::Connection::peer_identity`), or `None` when the peer sent no certificate.
pub fn peer_certificates(
    identity: Option<Box<dyn Any>>,
) -> Result<Option<Vec<CertificateDer<'static>>>, SvidError> {
    let Some(identity) = identity else {
        return Ok(None);
    };
    match identity.downcast::<Vec<CertificateDer<'static>>>() {
        Ok(certs) if certs.is_empty() => Ok(None),
        Ok(certs) => Ok(Some(*certs)),
        Err(_) => Err(SvidError::BadCertificate(
            "peer identity is not an X.509 chain".into(),
        )),
    }
}

/// The SPIFFE ID of the peer's leaf certificate, from the identity a QUIC connection reports
/// (`quinn::Connection::peer_identity`), or `None` when the peer sent no certificate.
pub fn peer_spiffe_id(identity: Option<Box<dyn Any>>) -> Result<Option<SpiffeId>, SvidError> {
    match peer_certificates(identity)? {
        Some(chain) => spiffe_id_of(&chain[0]).map(Some),
        None => Ok(None),
    }
}

/// Checks that `chain` (leaf first) leads to one of `bundle`'s CAs, now, as a client
/// certificate. The TLS layer checks a chain against every trusted CA at once; SPIFFE wants
/// an SVID checked against the bundle *of its own trust domain*, so a server trusting several
/// domains calls this with the one the leaf names.
pub fn verify_chain(bundle: &Bundle, chain: &[CertificateDer<'static>]) -> Result<(), SvidError> {
    verify_chain_at(bundle, chain, UnixTime::now())
}

/// [`verify_chain`] as of `at`: renewing an expired SVID checks its chain as of the leaf's
/// expiry (the chain was sound then), and its age separately.
pub fn verify_chain_at(
    bundle: &Bundle,
    chain: &[CertificateDer<'static>],
    at: UnixTime,
) -> Result<(), SvidError> {
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| SvidError::BadCertificate("empty certificate chain".into()))?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(bundle.root_store()?), provider())
            .build()
            .map_err(tls_err)?;
    verifier
        .verify_client_cert(leaf, intermediates, at)
        .map(|_| ())
        .map_err(|e| SvidError::BadCertificate(format!("chain does not lead to the bundle: {e}")))
}

#[derive(Debug)]
enum Trust {
    /// First contact: only the hash of the CA is known.
    Pinned([u8; 32]),
    /// Enrolled: the bundle, and the one server identity to accept.
    Bundle {
        roots: Arc<RootCertStore>,
        expected: SpiffeId,
    },
}

#[derive(Debug)]
struct SpiffeServerVerifier {
    trust: Trust,
    algs: WebPkiSupportedAlgorithms,
}

fn refuse(why: String) -> rustls::Error {
    rustls::Error::General(why)
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned_roots;
        let (roots, expected) = match &self.trust {
            Trust::Pinned(hash) => {
                let ca = intermediates
                    .iter()
                    .find(|c| ca_hash(c) == *hash)
                    .ok_or_else(|| {
                        refuse(
                            "the control plane's CA does not match the join token's CA hash".into(),
                        )
                    })?;
                let td = cert_facts(ca)
                    .ok()
                    .and_then(|f| f.spiffe_id)
                    .ok_or_else(|| refuse("the pinned CA names no trust domain".into()))?;
                let mut roots = RootCertStore::empty();
                roots.add(ca.clone().into_owned())?;
                pinned_roots = roots;
                let expected = SpiffeId::control_plane(td.trust_domain())
                    .map_err(|e| refuse(e.to_string()))?;
                (&pinned_roots, expected)
            }
            Trust::Bundle { roots, expected } => (roots.as_ref(), expected.clone()),
        };
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        let got = spiffe_id_of(end_entity).map_err(|e| refuse(e.to_string()))?;
        if got != expected {
            return Err(refuse(format!(
                "server presented {got}, expected {expected}"
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
