//! A SPIFFE Workload API server speaking the real protocol (gRPC over a Unix socket), as a SPIRE
//! agent does: the X.509 half, with rotation. For tests of this crate and of the HaIS agent end
//! to end, where no SPIRE is installed (feature `testing`; never in the agent binary).

use std::path::{Path, PathBuf};
use std::pin::Pin;

use hais_shared::spiffe::SpiffeId;
use hais_svid::{Bundle, Svid};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tokio_stream::wrappers::{UnixListenerStream, WatchStream};
use tonic::{Request, Response, Status};

#[allow(missing_debug_implementations, clippy::all)]
mod pb {
    tonic::include_proto!("_");
}
use pb::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};

type SvidStream = Pin<Box<dyn Stream<Item = Result<pb::X509svidResponse, Status>> + Send>>;

/// What the server hands out: one SVID, its trust domain's bundle, and federated bundles.
#[derive(Debug, Clone)]
pub struct Issued {
    pub svid: Svid,
    pub bundle: Bundle,
    /// (trust domain, bundle) of each federated domain.
    pub federated: Vec<(String, Bundle)>,
}

impl Issued {
    fn response(&self) -> pb::X509svidResponse {
        let der = |b: &Bundle| b.certs.iter().flat_map(|c| c.to_vec()).collect::<Vec<u8>>();
        pb::X509svidResponse {
            svids: vec![pb::X509svid {
                spiffe_id: self.svid.spiffe_id.to_string(),
                x509_svid: self.svid.chain.iter().flat_map(|c| c.to_vec()).collect(),
                x509_svid_key: self.svid.key_pkcs8.clone(),
                bundle: der(&self.bundle),
                hint: String::new(),
            }],
            crl: vec![],
            federated_bundles: self
                .federated
                .iter()
                .map(|(td, b)| {
                    let id = SpiffeId::new(td, "").map_or_else(|_| td.clone(), |i| i.to_string());
                    (id, der(b))
                })
                .collect(),
        }
    }
}

struct Api {
    current: watch::Receiver<pb::X509svidResponse>,
    calls: watch::Sender<u64>,
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
        self.calls.send_modify(|n| *n += 1);
        let stream = WatchStream::new(self.current.clone());
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(
            stream, Ok,
        ))))
    }
}

/// A running Workload API server. Stops when dropped.
#[derive(Debug)]
pub struct WorkloadApiServer {
    pub socket: PathBuf,
    current: watch::Sender<pb::X509svidResponse>,
    calls: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl WorkloadApiServer {
    /// Serves `first` on a new Unix socket at `socket` (on the current tokio runtime).
    pub fn start(socket: &Path, first: &Issued) -> std::io::Result<WorkloadApiServer> {
        let _ = std::fs::remove_file(socket);
        let uds = tokio::net::UnixListener::bind(socket)?;
        let (current, rx) = watch::channel(first.response());
        let (calls_tx, calls) = watch::channel(0);
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(SpiffeWorkloadApiServer::new(Api {
                    current: rx,
                    calls: calls_tx,
                }))
                .serve_with_incoming(UnixListenerStream::new(uds))
                .await;
        });
        Ok(WorkloadApiServer {
            socket: socket.to_owned(),
            current,
            calls,
            task,
        })
    }

    /// Rotates: every open stream receives `next`.
    pub fn rotate(&self, next: &Issued) {
        let _ = self.current.send(next.response());
    }

    /// How many FetchX509SVID streams were opened with the security header (clients that
    /// forget it are refused and not counted).
    pub fn calls(&self) -> u64 {
        *self.calls.borrow()
    }
}

impl Drop for WorkloadApiServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}
