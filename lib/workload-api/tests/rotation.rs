//! The Workload API client against a Workload API server running in the test, speaking the
//! SPIFFE protocol over a Unix socket, as a SPIRE agent does: first SVID, then a rotation, and
//! federated bundles.

use std::time::Duration;

use hais_shared::spiffe::SpiffeId;
use hais_svid::{CertificateAuthority, Svid, generate_csr};
use hais_workload_api::SpireSource;
use hais_workload_api::testing::{Issued, WorkloadApiServer};

fn issue(ca: &CertificateAuthority, id: &SpiffeId) -> Svid {
    let (key, csr) = generate_csr().unwrap();
    let chain = ca.sign_csr(&csr, id, Duration::from_secs(3600)).unwrap();
    Svid::from_der(chain.iter().map(|c| c.to_vec()).collect(), key).unwrap()
}

#[tokio::test]
async fn takes_the_svid_from_the_workload_api_and_follows_rotation() {
    let ca = CertificateAuthority::generate("prod.example").unwrap();
    let cp_ca = CertificateAuthority::generate("hais.local").unwrap();
    let id = SpiffeId::new("prod.example", "/hais/agent/node-1").unwrap();
    let first = issue(&ca, &id);
    let dir = std::env::temp_dir().join(format!("hais-wl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let server = WorkloadApiServer::start(
        &dir.join("agent.sock"),
        &Issued {
            svid: first.clone(),
            bundle: ca.bundle(),
            federated: vec![],
        },
    )
    .unwrap();

    let mut src = SpireSource::connect(&server.socket, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        server.calls(),
        1,
        "the client sent workload.spiffe.io: true"
    );
    let (svid, bundle) = src.current().unwrap();
    assert_eq!(svid.spiffe_id, id);
    assert_eq!(svid.chain, first.chain);
    assert_eq!(bundle, ca.bundle());
    assert_eq!(src.bundle_for("prod.example").unwrap(), Some(ca.bundle()));
    assert_eq!(src.bundle_for("hais.local").unwrap(), None);

    // SPIRE rotates the SVID and starts federating with hais.local: the source follows.
    let second = issue(&ca, &id);
    server.rotate(&Issued {
        svid: second.clone(),
        bundle: ca.bundle(),
        federated: vec![("hais.local".into(), cp_ca.bundle())],
    });
    tokio::time::timeout(Duration::from_secs(10), src.changed())
        .await
        .expect("rotation arrives")
        .unwrap();
    let (svid, _) = src.current().unwrap();
    assert_eq!(svid.chain, second.chain);
    assert_ne!(svid.chain, first.chain);
    assert_eq!(svid.key_pkcs8, second.key_pkcs8);
    assert_eq!(src.bundle_for("hais.local").unwrap(), Some(cp_ca.bundle()));

    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_missing_socket_is_a_clear_error() {
    let err = SpireSource::connect(
        std::path::Path::new("/nonexistent/hais/agent.sock"),
        Duration::from_secs(1),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/hais/agent.sock"),
        "{err}"
    );
}
