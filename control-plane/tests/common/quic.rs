//! A tiny agent-side client for the QUIC endpoint, built from quinn, hais-svid and hais-shared
//! only, so the control plane's side of the protocol is pinned independently of the agent crate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hais_control_plane::store::now_us;
use hais_shared::fingerprint::Method;
use hais_shared::spiffe::SpiffeId;
use hais_shared::wire::{self, Request, Response, request, response};
use hais_svid::{Bundle, JoinToken, Svid};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Connection, ConnectionError, Endpoint};

use super::event;

pub const JA4: &str = "t13d1516h2_8daaf6152771_e5627efa2ab1";

/// Why a request got no wire response.
#[derive(Debug)]
pub enum CallError {
    /// The connection was closed or refused (TLS alert, application close...).
    Connection(ConnectionError),
    Other(String),
}

pub fn client_endpoint() -> Endpoint {
    Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap()
}

pub async fn connect(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Connection, ConnectionError> {
    let quic = QuicClientConfig::try_from(tls).unwrap();
    let endpoint = client_endpoint();
    endpoint
        .connect_with(
            quinn::ClientConfig::new(Arc::new(quic)),
            addr,
            hais_svid::SERVER_NAME,
        )
        .unwrap()
        .await
}

/// One request on its own bidirectional stream, as the protocol says.
pub async fn call(conn: &Connection, req: &Request) -> Result<Response, CallError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(CallError::Connection)?;
    let io = |e: &dyn std::fmt::Display| CallError::Other(e.to_string());
    let done = async {
        send.write_all(&wire::encode(req))
            .await
            .map_err(|e| io(&e))?;
        send.finish().map_err(|e| io(&e))?;
        recv.read_to_end(wire::MAX_MESSAGE_LEN)
            .await
            .map_err(|e| io(&e))
    };
    match tokio::time::timeout(Duration::from_secs(10), done).await {
        Ok(Ok(bytes)) => Ok(wire::decode(&bytes).map_err(|e| io(&e))?),
        Ok(Err(e)) => Err(conn.close_reason().map_or(e, CallError::Connection)),
        Err(_) => Err(CallError::Other("timed out".into())),
    }
}

pub fn body(r: Response) -> response::Body {
    r.body.expect("response without body")
}

pub fn wire_error(r: Response) -> wire::Error {
    match body(r) {
        response::Body::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// An enrolled identity.
pub struct Enrolled {
    pub svid: Svid,
    pub bundle: Bundle,
    pub agent_id: String,
}

/// A fresh key and the enrollment request for it.
pub fn enroll_request(t: &JoinToken) -> (Vec<u8>, Request) {
    let (key, csr) = hais_svid::generate_csr().unwrap();
    let req = Request::new(request::Body::Enroll(wire::EnrollRequest {
        token: t.credential(),
        csr_der: csr,
        hostname: "test-host".into(),
        agent_version: "0.0.0-test".into(),
    }));
    (key, req)
}

/// Enrolls over `hais-enroll/1`; returns the key and whatever came back.
pub async fn enroll_raw(addr: SocketAddr, token: &str) -> Result<(Vec<u8>, Response), CallError> {
    let t = JoinToken::parse(token).unwrap();
    let conn = connect(addr, hais_svid::enroll_client_config(t.ca_hash).unwrap())
        .await
        .map_err(CallError::Connection)?;
    let (key, req) = enroll_request(&t);
    let resp = call(&conn, &req).await;
    conn.close(0u32.into(), b"done");
    resp.map(|r| (key, r))
}

pub async fn enroll(addr: SocketAddr, token: &str) -> Enrolled {
    let (key, resp) = enroll_raw(addr, token).await.expect("enrollment answer");
    let svid = match body(resp) {
        response::Body::Svid(s) => s,
        other => panic!("enrollment failed: {other:?}"),
    };
    let bundle = Bundle::from_der(svid.bundle_der.clone()).unwrap();
    let parsed = Svid::from_der(svid.svid_chain_der.clone(), key).unwrap();
    assert_eq!(parsed.spiffe_id.as_str(), svid.spiffe_id);
    assert_eq!(parsed.spiffe_id.agent_id(), Some(svid.agent_id.as_str()));
    Enrolled {
        svid: parsed,
        bundle,
        agent_id: svid.agent_id,
    }
}

pub fn control_plane_id() -> SpiffeId {
    SpiffeId::control_plane("hais.local").unwrap()
}

pub async fn uplink(addr: SocketAddr, a: &Enrolled) -> Result<Connection, ConnectionError> {
    connect(
        addr,
        hais_svid::uplink_client_config(&a.svid, &a.bundle, &control_plane_id()).unwrap(),
    )
    .await
}

/// The connection is refused: either at connect, or its first request fails at connection
/// level. Returns the application close code, if the server closed it with one.
pub async fn refused(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Option<u64> {
    let conn = match connect(addr, tls).await {
        Err(e) => return app_code(&e),
        Ok(c) => c,
    };
    match call(&conn, &heartbeat_req()).await {
        Ok(r) => panic!("expected the connection to be refused, got {r:?}"),
        Err(CallError::Connection(e)) => app_code(&e),
        Err(CallError::Other(e)) => {
            let reason = tokio::time::timeout(Duration::from_secs(5), conn.closed())
                .await
                .unwrap_or_else(|_| panic!("connection still open after {e}"));
            app_code(&reason)
        }
    }
}

pub fn app_code(e: &ConnectionError) -> Option<u64> {
    match e {
        ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
        _ => None,
    }
}

pub fn heartbeat_req() -> Request {
    Request::new(request::Body::Heartbeat(wire::Heartbeat {
        version: "0.0.0-test".into(),
        uptime_s: 42,
        interfaces: vec!["lo".into(), "eth0".into()],
        packets: 1000,
        bytes: 100_000,
        drops: 3,
        parse_errors: 1,
        spool_depth: 7,
        spool_dropped: 0,
        svid_expiry_unix: 2_000_000_000,
        sent_at_unix_ms: now_us() / 1000,
        hostname: "test-host".into(),
        ..Default::default()
    }))
}

pub fn batch_req(seq: u64, events: Vec<wire::Event>) -> Request {
    Request::new(request::Body::Batch(wire::EventBatch { seq, events }))
}

pub fn wire_event(agent_id: &str) -> wire::Event {
    wire::Event::from(&event(
        agent_id,
        "test-host",
        Some("example.com"),
        &[(Method::Ja4, JA4)],
        0,
    ))
}

pub fn ack(r: Response) -> wire::BatchAck {
    match body(r) {
        response::Body::Ack(a) => a,
        other => panic!("expected an ack, got {other:?}"),
    }
}

/// Asks for the renewal of the expired SVID `chain` over `hais-enroll/1`, the server checked
/// against `bundle`. `sign` gets this connection's TLS exporter value and the CSR and returns
/// the proof of possession (normally the old SVID's signature over
/// `wire::recover_signed_message` of both). Returns the new key and the answer.
pub async fn recover_raw(
    addr: SocketAddr,
    bundle: &Bundle,
    chain: &[Vec<u8>],
    sign: impl FnOnce(&[u8], &[u8]) -> Vec<u8>,
) -> Result<(Vec<u8>, Response), CallError> {
    let tls = hais_svid::recover_client_config(bundle, &control_plane_id()).unwrap();
    let conn = connect(addr, tls).await.map_err(CallError::Connection)?;
    let mut binding = [0u8; wire::RECOVER_BINDING_LEN];
    conn.export_keying_material(&mut binding, wire::RECOVER_EXPORTER_LABEL, b"")
        .unwrap();
    let (key, csr) = hais_svid::generate_csr().unwrap();
    let signature = sign(&binding, &csr);
    let req = Request::new(request::Body::Recover(wire::RecoverRequest {
        svid_chain_der: chain.to_vec(),
        csr_der: csr,
        signature,
    }));
    let resp = call(&conn, &req).await;
    conn.close(0u32.into(), b"done");
    resp.map(|r| (key, r))
}

/// [`recover_raw`] with the genuine proof: `svid` signs for itself.
pub async fn recover(
    addr: SocketAddr,
    bundle: &Bundle,
    svid: &Svid,
) -> Result<(Vec<u8>, Response), CallError> {
    let chain: Vec<Vec<u8>> = svid.chain.iter().map(|c| c.to_vec()).collect();
    recover_raw(addr, bundle, &chain, |binding, csr| {
        svid.sign(&wire::recover_signed_message(binding, csr))
            .unwrap()
    })
    .await
}
