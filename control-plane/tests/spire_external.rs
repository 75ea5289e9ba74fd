//! An external SPIRE deployment (`[spire.external]`): agents with SVIDs from SPIRE stream
//! without enrolling, each chain is checked against the bundle of the trust domain its SVID
//! names, SPIRE's CA rotation is followed from the bundle file (and the uplink's server SVID
//! renewed with it, without disturbing connections already open), the SPIRE server's health
//! is reported, and a SPIFFE bundle endpoint is fetched over TLS. Real QUIC sockets on 127.0.0.1,
//! a real HTTP health endpoint and a real TLS bundle endpoint served by the test.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use common::quic::*;
use common::{Backend, TestApp};
use hais_control_plane::config::{ExternalSpireConfig, HumanDuration};
use hais_control_plane::services::ja4::uplink::close;
use hais_control_plane::services::spire::external::External;
use hais_shared::spiffe::SpiffeId;
use hais_shared::wire::{self, ErrorCode, Request, request};
use hais_svid::{Bundle, CertificateAuthority, Svid};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SPIRE_TD: &str = "prod.example";

fn svid_from(ca: &CertificateAuthority, id: &SpiffeId) -> Svid {
    let (key, csr) = hais_svid::generate_csr().unwrap();
    let chain = ca.sign_csr(&csr, id, Duration::from_secs(3600)).unwrap();
    Svid::from_der(chain.into_iter().map(|c| c.to_vec()).collect(), key).unwrap()
}

/// A SPIRE-issued agent identity, shaped like `common::quic::Enrolled` so the same client
/// helpers drive it; `bundle` is the control plane's CA, which the agent checks the server by.
fn spire_agent(ca: &CertificateAuthority, id: &SpiffeId, cp_bundle: &Bundle) -> Enrolled {
    Enrolled {
        svid: svid_from(ca, id),
        bundle: cp_bundle.clone(),
        agent_id: id.agent_id().unwrap_or("-").to_owned(),
    }
}

/// A SPIFFE bundle document (JWKS) holding `cas`.
fn jwks(cas: &[&CertificateAuthority]) -> String {
    use base64::Engine;
    let keys: Vec<serde_json::Value> = cas
        .iter()
        .map(|ca| {
            serde_json::json!({
                "use": "x509-svid",
                "kty": "EC",
                "crv": "P-256",
                "x5c": [base64::engine::general_purpose::STANDARD.encode(ca.cert_der())],
            })
        })
        .collect();
    serde_json::json!({ "keys": keys, "spiffe_sequence": 1 }).to_string()
}

/// A plain HTTP endpoint answering 200 or 503 as `healthy` says, like SPIRE's `/ready`.
async fn health_server(healthy: Arc<AtomicBool>) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let healthy = healthy.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let (code, body) = if healthy.load(Ordering::SeqCst) {
                    ("200 OK", "{}")
                } else {
                    ("503 Service Unavailable", "{\"status\":\"not ready\"}")
                };
                let resp = format!(
                    "HTTP/1.1 {code}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

async fn wait_for<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn external_spire(backend: Backend) {
    let iso = common::Isolation::new(backend, "spireext").await;
    let spire_ca = CertificateAuthority::generate(SPIRE_TD).unwrap();
    // A second CA in SPIRE's bundle that names the built-in trust domain (a compromised or
    // misconfigured upstream): its certificates pass the TLS layer, which trusts every CA at
    // once, and must still be refused for the built-in domain.
    let rogue_ca = CertificateAuthority::generate("hais.local").unwrap();
    let bundle_file = iso.dir.join("spire-bundle.pem");
    std::fs::write(&bundle_file, spire_ca.cert_pem() + &rogue_ca.cert_pem()).unwrap();
    let healthy = Arc::new(AtomicBool::new(true));
    let health = health_server(healthy.clone()).await;
    let mut config = iso.config();
    config.spire.external = ExternalSpireConfig {
        trust_domain: Some(SPIRE_TD.into()),
        bundle_file: Some(bundle_file.clone()),
        refresh: Some(HumanDuration::from_secs(1)),
        health_url: Some(format!("http://{health}/ready")),
        ..ExternalSpireConfig::default()
    };
    let t = TestApp::start_with(iso, config).await;
    let addr = t.app.as_ref().unwrap().uplink_addr.unwrap();
    let cp_bundle = Bundle::from_pem(&get_text(&t, "/api/spire/bundle").await).unwrap();

    // An agent whose SVID SPIRE issued streams at once, with no join token.
    let node1_id = SpiffeId::agent(SPIRE_TD, "node-1").unwrap();
    let node1 = spire_agent(&spire_ca, &node1_id, &cp_bundle);
    let conn = uplink(addr, &node1).await.expect("SPIRE agent accepted");
    let events: Vec<wire::Event> = (0..3).map(|_| wire_event("node-1")).collect();
    let a = ack(call(&conn, &batch_req(1, events)).await.unwrap());
    assert_eq!((a.stored, a.duplicates, a.rejected.len()), (3, 0, 0));
    // It is in the fleet, with the SVID it connected with.
    let (s, v) = t
        .call("GET", "/api/spire/agents/node-1", Some(&t.admin), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["spiffe_id"], node1_id.as_str());
    assert_eq!(
        v["svid_expires_us"].as_i64().unwrap() / 1_000_000,
        node1.svid.not_after.unix_timestamp()
    );
    // SPIRE renews its SVIDs, not this CA.
    let renew = Request::new(request::Body::Renew(wire::RenewRequest {
        csr_der: hais_svid::generate_csr().unwrap().1,
    }));
    let e = wire_error(call(&conn, &renew).await.unwrap());
    assert_eq!(e.code, ErrorCode::BadRequest as i32, "{e:?}");
    assert!(e.message.contains("SPIRE"), "{e:?}");
    conn.close(0u32.into(), b"done");

    // Refused: a SPIRE workload that is not an agent; a chain from a CA of SPIRE's bundle
    // naming the built-in trust domain; a chain from an unknown CA naming SPIRE's domain.
    let workload = spire_agent(
        &spire_ca,
        &SpiffeId::new(SPIRE_TD, "/ns/payments/sa/api").unwrap(),
        &cp_bundle,
    );
    let tls = |a: &Enrolled| {
        hais_svid::uplink_client_config(&a.svid, &a.bundle, &control_plane_id()).unwrap()
    };
    assert_eq!(
        refused(addr, tls(&workload)).await,
        Some(close::UNAUTHORIZED.into())
    );
    let forged = spire_agent(
        &rogue_ca,
        &SpiffeId::agent("hais.local", "forged").unwrap(),
        &cp_bundle,
    );
    assert_eq!(
        refused(addr, tls(&forged)).await,
        Some(close::UNAUTHORIZED.into())
    );
    let stranger_ca = CertificateAuthority::generate(SPIRE_TD).unwrap();
    let stranger = spire_agent(&stranger_ca, &node1_id, &cp_bundle);
    refused(addr, tls(&stranger)).await;

    // The status API and metrics: bundle, authorities, healthy server.
    let (s, v) = t
        .call("GET", "/api/spire/external", Some(&t.admin), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["trust_domain"], SPIRE_TD);
    assert_eq!(v["authorities"].as_array().unwrap().len(), 2);
    wait_for("health checked", || async {
        let (_, v) = t
            .call("GET", "/api/spire/external", Some(&t.admin), None)
            .await;
        v["health"]["healthy"] == true
    })
    .await;
    assert!(
        get_text(&t, "/metrics")
            .await
            .contains("hais_spire_external_healthy 1")
    );
    healthy.store(false, Ordering::SeqCst);
    wait_for("unhealthy seen", || async {
        let (_, v) = t
            .call("GET", "/api/spire/external", Some(&t.admin), None)
            .await;
        v["health"]["healthy"] == false && v["health"]["status_code"] == 503
    })
    .await;
    assert!(
        get_text(&t, "/metrics")
            .await
            .contains("hais_spire_external_healthy 0")
    );

    // An agent of the built-in CA, connected before the rotation below.
    let builtin = enroll(addr, &t.join_token().await).await;
    let before = uplink(addr, &builtin)
        .await
        .expect("built-in agent accepted");
    let server_svid_before = server_leaf(&before);

    // SPIRE rotates its CA: the new bundle (JWKS this time) is picked up from the file, and
    // agents of the new CA get in, those of the old one no longer do.
    let new_ca = CertificateAuthority::generate(SPIRE_TD).unwrap();
    std::fs::write(&bundle_file, jwks(&[&new_ca])).unwrap();
    let node2 = spire_agent(
        &new_ca,
        &SpiffeId::agent(SPIRE_TD, "node-2").unwrap(),
        &cp_bundle,
    );
    wait_for("rotated bundle trusted", || async {
        match uplink(addr, &node2).await {
            Ok(c) => {
                let ok = call(&c, &heartbeat_req()).await.is_ok();
                c.close(0u32.into(), b"done");
                ok
            }
            Err(_) => false,
        }
    })
    .await;
    refused(addr, tls(&node1)).await;
    // The uplink's server config was rebuilt for the new trust, with a freshly issued server
    // SVID: new handshakes see the new certificate, which agents still verify by the built-in
    // bundle they had; the connection opened before goes on.
    let after = uplink(addr, &builtin)
        .await
        .expect("built-in agent accepted after");
    let server_svid_after = server_leaf(&after);
    assert_ne!(server_svid_after, server_svid_before, "server SVID renewed");
    assert_eq!(server_leaf(&before), server_svid_before);
    for conn in [&before, &after] {
        call(conn, &heartbeat_req())
            .await
            .expect("heartbeat on connections from before and after the renewal");
    }
    before.close(0u32.into(), b"done");
    after.close(0u32.into(), b"done");

    // Revocation applies to SPIRE agents like any other.
    let (s, v) = t
        .call(
            "POST",
            "/api/spire/agents/node-2/revoke",
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        refused(addr, tls(&node2)).await,
        Some(close::REVOKED.into())
    );
    t.finish().await;
}

/// The leaf certificate the server presented on `conn` (DER).
fn server_leaf(conn: &quinn::Connection) -> Vec<u8> {
    let certs = conn
        .peer_identity()
        .expect("the server presented certificates")
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .expect("rustls certificates");
    certs[0].to_vec()
}

/// GET of a text body that must succeed.
async fn get_text(t: &TestApp, uri: &str) -> String {
    let (s, body) = t.get_text(uri, Some(&t.admin)).await;
    assert_eq!(s, StatusCode::OK, "{uri}: {body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_spire_sqlite() {
    external_spire(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_spire_postgres() {
    external_spire(Backend::Postgres).await
}

/// A SPIFFE bundle endpoint over TLS (https_web profile, with the endpoint's CA given), served
/// by the test: the bundle is fetched, a CA that does not sign the endpoint's certificate is
/// refused, and a bundle for another trust domain is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_endpoint_over_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let web_ca = CertificateAuthority::generate("web.example").unwrap();
    let server = web_ca
        .issue(
            &SpiffeId::new("web.example", "/bundle-endpoint").unwrap(),
            &["localhost".into()],
            Duration::from_secs(3600),
        )
        .unwrap();
    let spire_ca = CertificateAuthority::generate(SPIRE_TD).unwrap();
    let body = Arc::new(std::sync::Mutex::new(jwks(&[&spire_ca])));
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        server.chain.clone(),
        rustls::pki_types::PrivateKeyDer::Pkcs8(server.key_pkcs8.clone().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let served = body.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (acceptor, served) = (acceptor.clone(), served.clone());
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(s).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = served.lock().unwrap().clone();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    let dir = std::env::temp_dir().join(format!("hais-bundle-ep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let web_ca_file = dir.join("web-ca.pem");
    std::fs::write(&web_ca_file, web_ca.cert_pem()).unwrap();
    let config = |ca: &std::path::Path| ExternalSpireConfig {
        trust_domain: Some(SPIRE_TD.into()),
        bundle_endpoint: Some(format!("https://localhost:{port}/bundle")),
        bundle_endpoint_ca: Some(ca.to_owned()),
        ..ExternalSpireConfig::default()
    };

    let ext = External::load(&config(&web_ca_file))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ext.bundle(), Some(spire_ca.bundle()));
    assert!(ext.status().bundle_error.is_none());

    // Served a bundle of another trust domain: refused, the previous one kept.
    *body.lock().unwrap() = jwks(&[&web_ca]);
    let e = ext.reload().await.unwrap_err();
    assert!(e.to_string().contains("web.example"), "{e}");
    assert_eq!(ext.bundle(), Some(spire_ca.bundle()));
    assert!(ext.status().bundle_error.is_some());

    // The endpoint's certificate does not chain to the configured CA: not loaded (the
    // endpoint may be down at start, so this is not fatal; the refresher retries).
    let other = dir.join("other-ca.pem");
    std::fs::write(
        &other,
        CertificateAuthority::generate("other.example")
            .unwrap()
            .cert_pem(),
    )
    .unwrap();
    let ext = External::load(&config(&other)).await.unwrap().unwrap();
    assert_eq!(ext.bundle(), None);
    assert!(ext.status().bundle_error.unwrap().contains("localhost"));
    let _ = std::fs::remove_dir_all(&dir);
}
