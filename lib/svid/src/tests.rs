use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use hais_shared::spiffe::SpiffeId;
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ServerConnection};

use super::*;

const HOUR: Duration = Duration::from_secs(3600);

fn agent_svid(ca: &CertificateAuthority, id: &str, ttl: Duration) -> Svid {
    let (key, csr) = generate_csr().unwrap();
    let spiffe = SpiffeId::agent(ca.trust_domain(), id).unwrap();
    let chain = ca.sign_csr(&csr, &spiffe, ttl).unwrap();
    Svid::from_der(chain.into_iter().map(|c| c.to_vec()).collect(), key).unwrap()
}

fn server_svid(ca: &CertificateAuthority) -> Svid {
    ca.issue(
        &SpiffeId::control_plane(ca.trust_domain()).unwrap(),
        &["localhost".into()],
        HOUR,
    )
    .unwrap()
}

/// Runs a TLS handshake in memory. Returns the server connection on success, or the first
/// error either side raised.
fn handshake(
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
) -> Result<ServerConnection, rustls::Error> {
    let mut c = ClientConnection::new(client, ServerName::try_from(SERVER_NAME).unwrap())?;
    let mut s = ServerConnection::new(server)?;
    for _ in 0..20 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
        }
        s.process_new_packets()?;
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
        }
        c.process_new_packets()?;
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok(s);
        }
    }
    panic!("handshake did not finish");
}

#[test]
fn ca_signs_csrs_into_svids_naming_the_requested_id_only() {
    let ca = CertificateAuthority::generate("hais.local").unwrap();
    let svid = agent_svid(&ca, "a1", HOUR);
    assert_eq!(svid.spiffe_id.as_str(), "spiffe://hais.local/hais/agent/a1");
    assert!(svid.renew_at() > svid.not_before && svid.renew_at() < svid.not_after);
    // An identity outside the CA's trust domain is refused.
    let (_, csr) = generate_csr().unwrap();
    let other = SpiffeId::agent("other.td", "x").unwrap();
    assert!(matches!(
        ca.sign_csr(&csr, &other, HOUR),
        Err(SvidError::BadCsr(_))
    ));
    // A tampered CSR fails its signature check.
    let mut bad = csr.clone();
    let n = bad.len();
    bad[n - 5] ^= 0xff;
    let id = SpiffeId::agent("hais.local", "x").unwrap();
    assert!(ca.sign_csr(&bad, &id, HOUR).is_err());
    assert!(ca.sign_csr(b"garbage", &id, HOUR).is_err());
}

#[test]
fn ca_survives_a_pem_round_trip() {
    let ca = CertificateAuthority::generate("prod.example").unwrap();
    let back = CertificateAuthority::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
    assert_eq!(back.trust_domain(), "prod.example");
    assert_eq!(back.hash(), ca.hash());
    // Leaves signed by the reloaded CA verify against the original bundle.
    let svid = agent_svid(&back, "a", HOUR);
    let server = server_svid(&ca);
    let cfg = server_config(&server, &ca.bundle()).unwrap();
    let client = uplink_client_config(
        &svid,
        &ca.bundle(),
        &SpiffeId::control_plane("prod.example").unwrap(),
    )
    .unwrap();
    handshake(client, cfg).unwrap();
    assert!(CertificateAuthority::from_pem("junk", &ca.key_pem()).is_err());
    assert!(CertificateAuthority::generate("Bad TD").is_err());
}

#[test]
fn svid_files_round_trip_with_private_modes() {
    let ca = CertificateAuthority::generate("hais.local").unwrap();
    let svid = agent_svid(&ca, "a1", HOUR);
    let dir = std::env::temp_dir().join(format!("hais-svid-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    svid.save(&ca.bundle(), &dir).unwrap();
    for f in ["svid.pem", "svid.key", "bundle.pem"] {
        let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let (back, bundle) = Svid::load(&dir).unwrap();
    assert_eq!(back.spiffe_id, svid.spiffe_id);
    assert_eq!(back.key_pkcs8, svid.key_pkcs8);
    assert_eq!(bundle, ca.bundle());
    std::fs::write(dir.join("svid.pem"), "not pem").unwrap();
    assert!(Svid::load(&dir).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn svids_must_be_leaves_with_one_spiffe_id() {
    let ca = CertificateAuthority::generate("hais.local").unwrap();
    let (key, _) = generate_csr().unwrap();
    assert!(matches!(
        Svid::from_der(vec![ca.cert_der().to_vec()], key),
        Err(SvidError::SvidIsCa)
    ));
    assert!(spiffe_id_of(b"\x30\x03\x02\x01\x00").is_err());
    // A key that is not the certificate's is refused.
    let svid = agent_svid(&ca, "a1", HOUR);
    let (other_key, _) = generate_csr().unwrap();
    let chain = svid.chain.iter().map(|c| c.to_vec()).collect();
    assert!(matches!(
        Svid::from_der(chain, other_key),
        Err(SvidError::BadKey(_))
    ));
    assert!(Bundle::from_der(vec![]).is_err());
    assert_eq!(
        Bundle::from_pem(&ca.bundle().to_pem()).unwrap(),
        ca.bundle()
    );
}

#[test]
fn join_tokens_round_trip_and_refuse_bad_shapes() {
    let t = JoinToken::generate([7; 32]);
    let s = t.to_string();
    assert!(s.starts_with("hais1."));
    assert_eq!(JoinToken::parse(&s).unwrap(), t);
    let cred = t.credential();
    assert_eq!(
        split_credential(&cred),
        Some((t.id.as_str(), t.secret.as_str()))
    );
    assert!(
        !format!("{t:?}").contains(&t.secret),
        "Debug hides the secret"
    );
    for bad in [
        "",
        "hais1",
        "hais2.0011223344556677.00112233445566778899aabbccddeeff.00",
        &s.replace("hais1", "hais2"),
        &s[..s.len() - 1],
        &format!("{s}.x"),
        &s.to_uppercase(),
    ] {
        assert!(JoinToken::parse(bad).is_err(), "{bad}");
    }
    assert_eq!(split_credential("zz.yy"), None);
}

#[test]
fn uplink_accepts_only_the_expected_server_id() {
    let ca = CertificateAuthority::generate("hais.local").unwrap();
    let server = server_config(&server_svid(&ca), &ca.bundle()).unwrap();
    let svid = agent_svid(&ca, "a1", HOUR);
    let good = SpiffeId::control_plane("hais.local").unwrap();
    let s = handshake(
        uplink_client_config(&svid, &ca.bundle(), &good).unwrap(),
        server.clone(),
    )
    .unwrap();
    // The server sees the agent's SPIFFE ID.
    let certs = s.peer_certificates().unwrap().to_vec();
    let id = peer_spiffe_id(Some(Box::new(certs))).unwrap().unwrap();
    assert_eq!(id.agent_id(), Some("a1"));
    assert_eq!(s.alpn_protocol(), Some(hais_shared::wire::ALPN_UPLINK));
    // Expecting another identity fails the handshake.
    let wrong = SpiffeId::new("hais.local", "/not/the/server").unwrap();
    let err = handshake(
        uplink_client_config(&svid, &ca.bundle(), &wrong).unwrap(),
        server,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("expected spiffe://hais.local/not/the/server"),
        "{err}"
    );
}

#[test]
fn server_refuses_client_certs_from_another_ca_and_expired_ones() {
    let ca = CertificateAuthority::generate("hais.local").unwrap();
    let rogue = CertificateAuthority::generate("hais.local").unwrap();
    let server = server_config(&server_svid(&ca), &ca.bundle()).unwrap();
    let cp = SpiffeId::control_plane("hais.local").unwrap();
    let foreign = agent_svid(&rogue, "a1", HOUR);
    assert!(
        handshake(
            uplink_client_config(&foreign, &ca.bundle(), &cp).unwrap(),
            server.clone()
        )
        .is_err()
    );
    let expired = agent_svid(&ca, "a2", Duration::ZERO);
    std::thread::sleep(Duration::from_millis(1100));
    assert!(
        handshake(
            uplink_client_config(&expired, &ca.bundle(), &cp).unwrap(),
            server
        )
        .is_err()
    );
}

#[test]
fn enrollment_trusts_only_the_pinned_ca() {
    let ca = CertificateAuthority::generate("hais.local").unwrap();
    let server = server_config(&server_svid(&ca), &ca.bundle()).unwrap();
    let s = handshake(enroll_client_config(ca.hash()).unwrap(), server.clone()).unwrap();
    assert!(
        s.peer_certificates().is_none(),
        "no client certificate at enrollment"
    );
    assert_eq!(peer_spiffe_id(None).unwrap(), None);
    // A man in the middle with its own CA (same trust domain, same SPIFFE ID) is refused.
    let mitm = CertificateAuthority::generate("hais.local").unwrap();
    let err = handshake(enroll_client_config(ca.hash()).unwrap(), {
        server_config(&server_svid(&mitm), &mitm.bundle()).unwrap()
    })
    .unwrap_err();
    assert!(err.to_string().contains("CA hash"), "{err}");
    // A server of the right CA but with an agent's identity is refused too.
    let impostor = agent_svid(&ca, "evil", HOUR);
    assert!(
        handshake(
            enroll_client_config(ca.hash()).unwrap(),
            server_config(&impostor, &ca.bundle()).unwrap()
        )
        .is_err()
    );
}

#[test]
fn spiffe_jwks_bundles_parse_and_merge() {
    use base64::Engine;
    let a = CertificateAuthority::generate("prod.example").unwrap();
    let b = CertificateAuthority::generate("hais.local").unwrap();
    let x5c = base64::engine::general_purpose::STANDARD.encode(a.cert_der());
    let jwks = format!(
        r#"{{"keys":[{{"use":"x509-svid","kty":"EC","crv":"P-256","x":"x","y":"y","x5c":["{x5c}"]}},
            {{"use":"jwt-svid","kty":"EC","kid":"k1","crv":"P-256","x":"x","y":"y"}}],
            "spiffe_sequence":3,"spiffe_refresh_hint":300}}"#
    );
    let spire = Bundle::from_file_text(&jwks).unwrap();
    assert_eq!(spire, a.bundle());
    assert_eq!(
        Bundle::from_file_text(&a.bundle().to_pem()).unwrap(),
        a.bundle()
    );
    let both = b.bundle().merged(&spire);
    assert_eq!(both.certs.len(), 2);
    assert_eq!(
        both.merged(&spire).certs.len(),
        2,
        "merging twice adds nothing"
    );
    // An agent with a SPIRE-issued SVID is accepted by a server trusting both CAs.
    let server = server_config(&server_svid(&b), &both).unwrap();
    let agent = agent_svid(&a, "n1", HOUR);
    let s = handshake(
        uplink_client_config(
            &agent,
            &both,
            &SpiffeId::control_plane("hais.local").unwrap(),
        )
        .unwrap(),
        server,
    )
    .unwrap();
    assert!(s.peer_certificates().is_some());
    for bad in [
        "{}",
        r#"{"keys":[{"use":"x509-svid"}]}"#,
        r#"{"keys":[]}"#,
        "{bad",
    ] {
        assert!(Bundle::from_spiffe_jwks(bad).is_err(), "{bad}");
    }
}

#[test]
fn chains_are_checked_against_the_bundle_of_their_own_trust_domain() {
    let builtin = CertificateAuthority::generate("hais.local").unwrap();
    let spire = CertificateAuthority::generate("prod.example").unwrap();
    let svid = agent_svid(&spire, "node-1", HOUR);
    let chain: Vec<CertificateDer<'static>> = svid.chain.clone();
    verify_chain(&spire.bundle(), &chain).unwrap();
    verify_chain(&spire.bundle().merged(&builtin.bundle()), &chain).unwrap();
    let err = verify_chain(&builtin.bundle(), &chain).unwrap_err();
    assert!(err.to_string().contains("does not lead"), "{err}");
    assert!(verify_chain(&spire.bundle(), &[]).is_err());
    // The trust domain a bundle's CAs name.
    assert_eq!(
        spire.bundle().trust_domain().as_deref(),
        Some("prod.example")
    );
    // The chain a QUIC connection reports.
    let identity: Box<dyn std::any::Any> = Box::new(chain.clone());
    assert_eq!(peer_certificates(Some(identity)).unwrap(), Some(chain));
    assert_eq!(peer_certificates(None).unwrap(), None);
    assert!(peer_certificates(Some(Box::new(3u8))).is_err());
}

#[test]
fn possession_signatures_verify_only_with_the_signing_svids_key() {
    let ca = CertificateAuthority::generate("hais.local").unwrap();
    let a = agent_svid(&ca, "a", HOUR);
    let b = agent_svid(&ca, "b", HOUR);
    let sig = a.sign(b"bound message").unwrap();
    verify_signature(&a.chain[0], b"bound message", &sig).unwrap();
    assert!(matches!(
        verify_signature(&a.chain[0], b"another message", &sig),
        Err(SvidError::BadSignature)
    ));
    assert!(matches!(
        verify_signature(&b.chain[0], b"bound message", &sig),
        Err(SvidError::BadSignature)
    ));
}

#[test]
fn an_expired_chain_verifies_as_of_its_expiry_only() {
    let ca = CertificateAuthority::generate("hais.local").unwrap();
    let short = agent_svid(&ca, "a", Duration::from_secs(1));
    std::thread::sleep(Duration::from_millis(2100));
    let bundle = ca.bundle();
    assert!(verify_chain(&bundle, &short.chain).is_err(), "expired now");
    let at =
        UnixTime::since_unix_epoch(Duration::from_secs(short.not_after.unix_timestamp() as u64));
    verify_chain_at(&bundle, &short.chain, at).unwrap();
    // Another CA's certificate does not verify at any time.
    let other = CertificateAuthority::generate("hais.local").unwrap();
    assert!(verify_chain_at(&other.bundle(), &short.chain, at).is_err());
    // Short lifetimes are backdated less, so their half-life lies ahead.
    let fresh = agent_svid(&ca, "b", Duration::from_secs(20));
    assert!(fresh.renew_at() > time::OffsetDateTime::now_utc());
}
