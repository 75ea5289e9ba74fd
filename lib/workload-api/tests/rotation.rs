//! The Workload API client against a Workload API server running in the test, speaking the
//! SPIFFE protocol over a Unix socket, as a SPIRE agent does: first SVID, then a rotation.

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use hais_shared::spiffe::SpiffeId;
use hais_svid::{CertificateAuthority, Svid, generate_csr};
use hais_workload_api::SpireSource;
use tokio::sync::watch;
use tokio_stream::Stream;
use tokio_stream::wrappers::{UnixListenerStream, WatchStream};
use tonic::{Request, Response, Status};

mod pb {
    tonic::include_proto!("_");
}
use pb::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};

type SvidStream = Pin<Box<dyn Stream<Item = Result<pb::X509svidResponse, Status>> + Send>>;

/// Serves whatever response the watch channel holds, and every later one.
struct Api {
    current: watch::Receiver<pb::X509svidResponse>,
    saw_header: watch::Sender<bool>,
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for Api {
    type FetchX509SVIDStream = SvidStream;

    async fn fetch_x509svid(
        &self,
        req: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        // A real agent refuses calls without this header (a guard against SSRF).
        if req
            .metadata()
            .get("workload.spiffe.io")
            .and_then(|v| v.to_str().ok())
            != Some("true")
        {
            return Err(Status::invalid_argument(
                "missing workload.spiffe.io header",
            ));
        }
        let _ = self.saw_header.send(true);
        let stream = WatchStream::new(self.current.clone());
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(
            stream, Ok,
        ))))
    }
}

fn issue(ca: &CertificateAuthority, id: &SpiffeId) -> (Svid, pb::X509svidResponse) {
    let (key, csr) = generate_csr().unwrap();
    let chain = ca.sign_csr(&csr, id, Duration::from_secs(3600)).unwrap();
    let svid = Svid::from_der(chain.iter().map(|c| c.to_vec()).collect(), key.clone()).unwrap();
    let resp = pb::X509svidResponse {
        svids: vec![pb::X509svid {
            spiffe_id: id.to_string(),
            x509_svid: chain.iter().flat_map(|c| c.to_vec()).collect(),
            x509_svid_key: key,
            bundle: ca.cert_der().to_vec(),
            hint: String::new(),
        }],
        crl: vec![],
        federated_bundles: Default::default(),
    };
    (svid, resp)
}

#[tokio::test]
async fn takes_the_svid_from_the_workload_api_and_follows_rotation() {
    let ca = CertificateAuthority::generate("prod.example").unwrap();
    let id = SpiffeId::new("prod.example", "/hais/agent/node-1").unwrap();
    let (first, resp1) = issue(&ca, &id);
    let (tx, rx) = watch::channel(resp1);
    let (saw_tx, saw_rx) = watch::channel(false);

    let dir = std::env::temp_dir().join(format!("hais-wl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock: PathBuf = dir.join("agent.sock");
    let uds = tokio::net::UnixListener::bind(&sock).unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SpiffeWorkloadApiServer::new(Api {
                current: rx,
                saw_header: saw_tx,
            }))
            .serve_with_incoming(UnixListenerStream::new(uds)),
    );

    let mut src = SpireSource::connect(&sock, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(*saw_rx.borrow(), "the client sent workload.spiffe.io: true");
    let (svid, bundle) = src.current().unwrap();
    assert_eq!(svid.spiffe_id, id);
    assert_eq!(svid.chain, first.chain);
    assert_eq!(bundle, ca.bundle());

    // SPIRE rotates the SVID: the source follows.
    let (second, resp2) = issue(&ca, &id);
    tx.send(resp2).unwrap();
    tokio::time::timeout(Duration::from_secs(10), src.changed())
        .await
        .expect("rotation arrives")
        .unwrap();
    let (svid, _) = src.current().unwrap();
    assert_eq!(svid.chain, second.chain);
    assert_ne!(svid.chain, first.chain);
    assert_eq!(svid.key_pkcs8, second.key_pkcs8);

    server.abort();
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
