//! The agents' QUIC endpoint: enrollment (`hais-enroll/1`) and the mutual-TLS uplink
//! (`hais-uplink/1`) on one UDP port (`ja4.uplink_bind`, default 0.0.0.0:3001). The protocol is
//! `hais_shared::wire`: one request and one response per bidirectional stream, delimited by the
//! stream's end.
//!
//! # Authentication
//! The server presents an SVID for `spiffe://<td>/hais/control-plane`, issued by the built-in CA
//! at start and re-issued at half-life (the endpoint's server configuration is swapped; live
//! connections keep theirs). Client certificates are optional at the TLS layer, because
//! enrollment has none, but one that is sent must chain to the CA and be valid now — a
//! certificate from another CA or an expired SVID fails the handshake. After the handshake an
//! uplink connection must carry an agent SPIFFE ID of our trust domain, enrolled here and not
//! revoked, or it is closed with an application error code ([`close`]). Every request re-checks
//! the revocation set, and a revocation closes the agent's live connections at once.
//!
//! # Bounds
//! A connection may have `ja4.uplink_max_streams` requests in flight (QUIC stream credit, so an
//! agent pipelining batches simply waits); at most `ja4.uplink_max_connections` agent
//! connections and handshakes in progress are open, and apart from them at most
//! `ja4.enroll_max_connections` enrollment connections (counted once the handshake says which
//! ALPN; the one beyond is closed with [`close::BUSY`]), so unauthenticated peers holding
//! enrollment connections cannot lock enrolled agents out; at most [`MAX_IN_FLIGHT`] agent requests are read or processed at once across all of
//! them (a waiting stream is back-pressured by QUIC flow control), and enrollments have their own
//! [`MAX_ENROLL_IN_FLIGHT`] so unauthenticated peers cannot starve agents; a request is at most
//! `wire::MAX_MESSAGE_LEN` bytes ([`MAX_ENROLL_MESSAGE_LEN`] for enrollment) and must arrive
//! within `ja4.uplink_request_timeout` (30 s); an enrollment connection lives at most
//! [`ENROLL_LIFETIME`], idle or not.
//!
//! # Expired SVIDs
//! An agent cut off for longer than its SVID's lifetime cannot pass the TLS layer with it. It
//! connects with `hais-enroll/1` instead and sends a `RecoverRequest`; the connection's TLS
//! exporter value ([`wire::RECOVER_EXPORTER_LABEL`]) is computed here at the handshake and
//! the agent's signature must cover it (`spire::recover` does every check). Such a connection
//! can only ever obtain a new SVID, never deliver events.
//!
//! # Delivery
//! A batch is answered only after the store committed it. Invalid events (malformed, failing the
//! shared validation, or naming another agent than the certificate's) are rejected one by one in
//! the ack; the rest are stored. A store failure is answered `Unavailable`, and the agent sends
//! the batch again (event ids make that harmless).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hais_shared::event::FingerprintEvent;
use hais_shared::spiffe::SpiffeId;
use hais_shared::wire::{
    self, ALPN_ENROLL, ALPN_UPLINK, ErrorCode, PROTOCOL_VERSION, Request, Response, request,
    response,
};
use quinn::crypto::rustls::{HandshakeData, QuicServerConfig};
use quinn::{Connection, Endpoint, Incoming, ReadToEndError, RecvStream, SendStream, VarInt};
use tokio::sync::{Semaphore, broadcast, watch};
use tokio::task::JoinHandle;

use super::{admit_event, store_events};
use crate::services::identity::Identity;
use crate::services::spire::{self, Spire, SpireError};
use crate::services::stopped;
use crate::state::AppState;
use crate::store::spire::NewAgent;

pub use hais_shared::wire::close;

/// Agents' requests read or processed at once across all connections.
pub const MAX_IN_FLIGHT: usize = 256;
/// Enrollment requests read or processed at once: a separate, small pool, so unauthenticated
/// peers holding streams open cannot starve enrolled agents.
pub const MAX_ENROLL_IN_FLIGHT: usize = 16;
/// Largest enrollment request (a token and a CSR are well under 2 KB).
pub const MAX_ENROLL_MESSAGE_LEN: usize = 64 * 1024;
/// An enrollment needs one exchange; its connection is closed after this long.
pub const ENROLL_LIFETIME: Duration = Duration::from_secs(30);
/// The TLS handshake must finish within this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection without packets for this long is dropped (agents send keep-alives).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long shutdown waits for requests in flight to be answered.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// Retry delay after a failed server-certificate renewal.
const ROTATE_RETRY: Duration = Duration::from_secs(60);
/// Shortest interval between server-certificate renewals.
const MIN_ROTATE: Duration = Duration::from_secs(10);

/// Why the uplink could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UplinkError {
    #[error(
        "binding the QUIC uplink on UDP {addr} failed (ja4.uplink_bind; `off` disables it): {source}"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the uplink's TLS configuration: {0}")]
    Tls(String),
    #[error(transparent)]
    Spire(#[from] SpireError),
}

/// A running uplink.
#[derive(Debug)]
pub struct Uplink {
    /// The bound UDP address (the real port when the configured one was 0).
    pub local_addr: SocketAddr,
    /// The accept loop; it ends at shutdown after draining requests in flight.
    pub task: JoinHandle<()>,
}

/// What every connection task shares.
#[derive(Debug)]
struct Shared {
    state: AppState,
    spire: Arc<Spire>,
    /// Resolves the workload identities of the events agents send (the identity service's handle).
    identity: Arc<Identity>,
    in_flight: Semaphore,
    enroll_in_flight: Semaphore,
    /// Agent connections and handshakes in progress (`ja4.uplink_max_connections`).
    agent_slots: AtomicU64,
    /// Enrollment connections (`ja4.enroll_max_connections`).
    enroll_slots: AtomicU64,
}

/// Who is at the other end of a connection.
#[derive(Debug)]
enum Peer {
    /// `hais-enroll/1`: anyone holding a join token.
    Enrolling,
    /// `hais-uplink/1`: an authenticated, enrolled agent.
    Agent { id: SpiffeId, agent_id: String },
}

#[derive(Debug)]
struct Session {
    peer: Peer,
    remote: SocketAddr,
    /// The connection's TLS exporter value a `RecoverRequest` must be signed over (enrollment
    /// connections only).
    binding: Option<[u8; wire::RECOVER_BINDING_LEN]>,
}

/// Binds the endpoint and starts accepting. The server SVID is issued here by `spire`.
pub fn start(
    state: AppState,
    spire: Arc<Spire>,
    identity: Arc<Identity>,
    bind: SocketAddr,
    shutdown: watch::Receiver<bool>,
) -> Result<Uplink, UplinkError> {
    // Belt and braces: every config here names ring explicitly, but a process-wide default
    // keeps any other rustls user from panicking on an ambiguous provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (config, renew_at) = server_config(&state, &spire)?;
    let endpoint = Endpoint::server(config, bind)
        .map_err(|source| UplinkError::Bind { addr: bind, source })?;
    let local_addr = endpoint
        .local_addr()
        .map_err(|source| UplinkError::Bind { addr: bind, source })?;
    tracing::info!(%local_addr, "QUIC uplink listening (hais-uplink/1, hais-enroll/1)");
    let shared = Arc::new(Shared {
        state,
        spire,
        identity,
        in_flight: Semaphore::new(MAX_IN_FLIGHT),
        enroll_in_flight: Semaphore::new(MAX_ENROLL_IN_FLIGHT),
        agent_slots: AtomicU64::new(0),
        enroll_slots: AtomicU64::new(0),
    });
    let task = tokio::spawn(accept_loop(shared, endpoint, renew_at, shutdown));
    Ok(Uplink { local_addr, task })
}

/// A server configuration with a freshly issued SVID, and when to renew it.
fn server_config(
    state: &AppState,
    spire: &Spire,
) -> Result<(quinn::ServerConfig, tokio::time::Instant), UplinkError> {
    let svid = spire
        .authority
        .issue_server(&spire.config.server_dns_names)?;
    // Client chains may lead to the built-in CA or to the external SPIRE's bundle; which one
    // a given agent's chain must lead to is checked after the handshake (`authenticate`).
    let mut trusted = spire.authority.bundle();
    if let Some(ext) = spire.external.as_ref().and_then(|e| e.bundle()) {
        trusted = trusted.merged(&ext);
    }
    let tls = hais_svid::server_config(&svid, &trusted).map_err(SpireError::from)?;
    let quic = QuicServerConfig::try_from(tls).map_err(|e| UplinkError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(state.config.ja4.uplink_max_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .max_idle_timeout(Some(IDLE_TIMEOUT.try_into().map_err(
            |e: quinn::VarIntBoundsExceeded| UplinkError::Tls(e.to_string()),
        )?));
    config.transport_config(Arc::new(transport));
    // Renew at half the remaining life (the SVID is backdated, so its own half-life would come
    // too early for short TTLs), never more often than every MIN_ROTATE.
    let remaining: Duration = (svid.not_after - time::OffsetDateTime::now_utc())
        .try_into()
        .unwrap_or(Duration::ZERO);
    let until_renewal = (remaining / 2).max(MIN_ROTATE);
    Ok((config, tokio::time::Instant::now() + until_renewal))
}

async fn accept_loop(
    shared: Arc<Shared>,
    endpoint: Endpoint,
    mut renew_at: tokio::time::Instant,
    mut shutdown: watch::Receiver<bool>,
) {
    let for_connections = shutdown.clone();
    let mut external_bundle = shared.spire.external.as_ref().map(|e| e.subscribe());
    loop {
        tokio::select! {
            () = stopped(&mut shutdown) => break,
            // SPIRE's bundle changed (a CA rotation): trust the new one from now on.
            Ok(()) = async {
                match external_bundle.as_mut() {
                    Some(rx) => rx.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                tracing::info!("external SPIRE bundle changed; reloading the uplink's trust");
                renew_at = tokio::time::Instant::now();
            }
            _ = tokio::time::sleep_until(renew_at) => {
                match server_config(&shared.state, &shared.spire) {
                    Ok((config, next)) => {
                        endpoint.set_server_config(Some(config));
                        renew_at = next;
                        tracing::info!("uplink server SVID renewed");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "renewing the uplink's server SVID failed; retrying");
                        renew_at = tokio::time::Instant::now() + ROTATE_RETRY;
                    }
                }
            }
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => admit(&shared, incoming, for_connections.clone()),
                None => break,
            },
        }
    }
    // Refuse new connections, let requests in flight be answered, then close everything.
    endpoint.set_server_config(None);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        let _ = shared.in_flight.acquire_many(MAX_IN_FLIGHT as u32).await;
        let _ = shared
            .enroll_in_flight
            .acquire_many(MAX_ENROLL_IN_FLIGHT as u32)
            .await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!("uplink requests still in flight at shutdown; agents will resend them");
    }
    shared.in_flight.close();
    shared.enroll_in_flight.close();
    endpoint.close(VarInt::from_u32(close::SHUTDOWN), b"shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}

/// Puts an agent of the external SPIRE into the fleet at its first connection (it has no
/// enrollment), and records the SVID it connected with. Refused when its agent id is taken by
/// an agent with another SPIFFE ID (e.g. of the built-in trust domain).
async fn register_external(
    shared: &Shared,
    id: &SpiffeId,
    agent_id: &str,
    leaf: &[u8],
) -> Result<(), (u32, String)> {
    let unavailable = |e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, "registering an external SPIRE agent failed");
        (close::UNAVAILABLE, "control plane unavailable".to_owned())
    };
    let (svid_serial, svid_expires_us) =
        spire::leaf_facts(leaf).map_err(|e| (close::UNAUTHORIZED, e.to_string()))?;
    let store = &shared.state.store;
    let new = NewAgent {
        id: agent_id.to_owned(),
        spiffe_id: id.to_string(),
        hostname: String::new(),
        agent_version: String::new(),
        enrolled_us: crate::store::now_us(),
        svid_serial,
        svid_expires_us,
    };
    match store.register_external_agent(&new).await {
        Ok(Some(a)) if a.spiffe_id == new.spiffe_id => {
            if a.enrolled_us == new.enrolled_us {
                tracing::info!(spiffe_id = %id, "external SPIRE agent registered");
            } else if a.svid_serial != new.svid_serial {
                // Rotated by SPIRE since the last connection.
                store
                    .renew_agent_svid(agent_id, &new.svid_serial, new.svid_expires_us)
                    .await
                    .map_err(|e| unavailable(&e))?;
            }
            Ok(())
        }
        Ok(Some(a)) => Err((
            close::UNAUTHORIZED,
            format!("agent id {agent_id} is already taken by {}", a.spiffe_id),
        )),
        Ok(None) => Err((
            close::UNAUTHORIZED,
            format!("{id} is already registered under another agent id"),
        )),
        Err(e) => Err(unavailable(&e)),
    }
}

/// A connection's place in one of the two budgets, and in the active-connection gauge; given
/// back when the connection task ends.
struct Slot {
    shared: Arc<Shared>,
    enrolling: bool,
}

impl Slot {
    fn pool(&self) -> &AtomicU64 {
        if self.enrolling {
            &self.shared.enroll_slots
        } else {
            &self.shared.agent_slots
        }
    }

    /// Moves the connection from the agents' budget to the enrollment budget (its ALPN is
    /// `hais-enroll/1`); false, leaving it nowhere to count, when that budget is full.
    fn move_to_enrollment(&mut self) -> bool {
        let taken = self.shared.enroll_slots.fetch_add(1, Ordering::Relaxed);
        self.shared.agent_slots.fetch_sub(1, Ordering::Relaxed);
        self.enrolling = true;
        taken < self.shared.state.config.ja4.enroll_max_connections as u64
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pool().fetch_sub(1, Ordering::Relaxed);
        self.shared
            .state
            .metrics
            .uplink
            .connections_active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

fn admit(shared: &Arc<Shared>, incoming: Incoming, shutdown: watch::Receiver<bool>) {
    let m = &shared.state.metrics.uplink;
    m.connections_active.fetch_add(1, Ordering::Relaxed);
    let taken = shared.agent_slots.fetch_add(1, Ordering::Relaxed);
    let slot = Slot {
        shared: shared.clone(),
        enrolling: false,
    };
    if taken >= shared.state.config.ja4.uplink_max_connections as u64 {
        m.connections_refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(remote = %incoming.remote_address(), "uplink connection refused: ja4.uplink_max_connections reached");
        incoming.refuse();
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        serve_connection(shared, incoming, slot, shutdown).await;
    });
}

/// Closes `conn` with `code` and counts the refusal.
fn refuse(shared: &Shared, conn: &Connection, code: u32, reason: &str) {
    shared
        .state
        .metrics
        .uplink
        .connections_refused
        .fetch_add(1, Ordering::Relaxed);
    tracing::warn!(remote = %conn.remote_address(), code, reason, "uplink connection refused");
    conn.close(VarInt::from_u32(code), reason.as_bytes());
}

async fn serve_connection(
    shared: Arc<Shared>,
    incoming: Incoming,
    mut slot: Slot,
    mut shutdown: watch::Receiver<bool>,
) {
    let remote = incoming.remote_address();
    let refused = &shared.state.metrics.uplink.connections_refused;
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%remote, error = %e, "uplink connection failed before the handshake");
            return;
        }
    };
    let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            // Foreign CA, expired SVID, wrong ALPN...: the TLS layer said no.
            refused.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%remote, error = %e, "uplink handshake refused");
            return;
        }
        Err(_) => {
            refused.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%remote, "uplink handshake timed out");
            return;
        }
    };
    // Subscribed before the revocation check, so a revocation in between is not missed.
    let mut revoked = shared.spire.revocations.subscribe();
    let alpn = conn
        .handshake_data()
        .and_then(|h| h.downcast::<HandshakeData>().ok())
        .and_then(|h| h.protocol);
    let mut binding = None;
    let peer = match alpn.as_deref() {
        Some(ALPN_ENROLL) => {
            if !slot.move_to_enrollment() {
                return refuse(
                    &shared,
                    &conn,
                    close::BUSY,
                    "too many enrollment connections (ja4.enroll_max_connections); retry later",
                );
            }
            let mut b = [0u8; wire::RECOVER_BINDING_LEN];
            if conn
                .export_keying_material(&mut b, wire::RECOVER_EXPORTER_LABEL, b"")
                .is_ok()
            {
                binding = Some(b);
            }
            Peer::Enrolling
        }
        Some(ALPN_UPLINK) => match authenticate(&shared, &conn).await {
            Ok(peer) => peer,
            Err((code, reason)) => return refuse(&shared, &conn, code, &reason),
        },
        _ => {
            return refuse(
                &shared,
                &conn,
                close::PROTOCOL,
                "unknown application protocol",
            );
        }
    };
    shared
        .state
        .metrics
        .uplink
        .connections
        .fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%remote, ?peer, "uplink connection established");
    let deadline = match peer {
        Peer::Enrolling => Some(tokio::time::Instant::now() + ENROLL_LIFETIME),
        Peer::Agent { .. } => None,
    };
    let session = Arc::new(Session {
        peer,
        remote,
        binding,
    });
    loop {
        tokio::select! {
            stream = conn.accept_bi() => match stream {
                Ok((send, recv)) => {
                    tokio::spawn(serve_stream(shared.clone(), session.clone(), send, recv));
                }
                Err(e) => {
                    tracing::debug!(%remote, error = %e, "uplink connection ended");
                    return;
                }
            },
            r = revoked.recv(), if matches!(session.peer, Peer::Agent { .. }) => {
                let Peer::Agent { agent_id, .. } = &session.peer else { unreachable!() };
                let hit = match r {
                    Ok(id) => id == *agent_id,
                    // Missed notices: ask the set itself.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        shared.spire.revocations.is_revoked(agent_id)
                    }
                    Err(broadcast::error::RecvError::Closed) => false,
                };
                if hit {
                    tracing::warn!(%remote, %agent_id, "closing a revoked agent's connection");
                    conn.close(VarInt::from_u32(close::REVOKED), b"agent revoked");
                    return;
                }
            }
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => {
                conn.close(VarInt::from_u32(close::PROTOCOL), b"enrollment takes one exchange");
                return;
            }
            // The endpoint closes every connection at the end of the drain.
            () = stopped(&mut shutdown) => {
                conn.closed().await;
                return;
            }
        }
    }
}

/// The agent behind an uplink connection, or the close code and reason to refuse it with.
async fn authenticate(shared: &Shared, conn: &Connection) -> Result<Peer, (u32, String)> {
    let unauthorized = |why: String| (close::UNAUTHORIZED, why);
    let id = match hais_svid::peer_spiffe_id(conn.peer_identity()) {
        Ok(Some(id)) => id,
        Ok(None) => {
            return Err(unauthorized(
                "the uplink requires a client certificate (an agent SVID)".into(),
            ));
        }
        Err(e) => return Err(unauthorized(format!("client certificate: {e}"))),
    };
    let spire = &shared.spire;
    let Some(agent_id) = id.agent_id().map(str::to_owned) else {
        return Err(unauthorized(format!(
            "{id} is not an agent ID (/hais/agent/<id>)"
        )));
    };
    // The chain must lead to the bundle of the trust domain the SVID names (SPIFFE): the TLS
    // layer accepted it against the union of every trusted CA.
    let external = spire
        .external
        .as_ref()
        .filter(|e| e.trust_domain == id.trust_domain());
    let own_bundle = if id.trust_domain() == spire.authority.trust_domain() {
        spire.authority.bundle()
    } else if let Some(b) = external.and_then(|e| e.bundle()) {
        b
    } else {
        return Err(unauthorized(format!(
            "{id} is not an agent of a trust domain this control plane trusts"
        )));
    };
    let chain = match hais_svid::peer_certificates(conn.peer_identity()) {
        Ok(Some(chain)) => chain,
        _ => return Err(unauthorized("client certificate chain unavailable".into())),
    };
    if let Err(e) = hais_svid::verify_chain(&own_bundle, &chain) {
        return Err(unauthorized(format!("{id}: {e}")));
    }
    if external.is_some() {
        register_external(shared, &id, &agent_id, &chain[0]).await?;
    }
    if shared.spire.revocations.is_revoked(&agent_id) {
        return Err((close::REVOKED, "agent revoked".into()));
    }
    match shared.state.store.get_agent(&agent_id).await {
        Ok(Some(a)) if a.revoked_us.is_some() => {
            shared.spire.revocations.insert(&agent_id);
            Err((close::REVOKED, "agent revoked".into()))
        }
        Ok(Some(a)) if a.spiffe_id == id.as_str() => Ok(Peer::Agent { id, agent_id }),
        Ok(_) => Err(unauthorized(format!("{id} is not enrolled here"))),
        Err(e) => {
            tracing::warn!(error = %e, "checking an agent failed");
            Err((close::UNAVAILABLE, "control plane unavailable".into()))
        }
    }
}

async fn serve_stream(
    shared: Arc<Shared>,
    session: Arc<Session>,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let (pool, limit) = match session.peer {
        Peer::Enrolling => (&shared.enroll_in_flight, MAX_ENROLL_MESSAGE_LEN),
        Peer::Agent { .. } => (&shared.in_flight, wire::MAX_MESSAGE_LEN),
    };
    // Closed only at shutdown, after the drain: then nothing is answered.
    let Ok(_permit) = pool.acquire().await else {
        return;
    };
    let timeout = shared.state.config.ja4.uplink_request_timeout.0;
    let read = tokio::time::timeout(timeout, recv.read_to_end(limit));
    let resp = match read.await {
        Ok(Ok(bytes)) => respond(&shared, &session, &bytes).await,
        Ok(Err(ReadToEndError::TooLong)) => Response::error(
            ErrorCode::BadRequest,
            format!("request exceeds {limit} bytes"),
        ),
        Ok(Err(e)) => {
            // Reset or connection lost: nobody to answer.
            tracing::debug!(remote = %session.remote, error = %e, "uplink request not read");
            return;
        }
        Err(_) => Response::error(
            ErrorCode::BadRequest,
            format!("request not complete within {} s", timeout.as_secs()),
        ),
    };
    if let Some(response::Body::Error(e)) = &resp.body {
        shared
            .state
            .metrics
            .uplink
            .errors
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(remote = %session.remote, code = e.code, message = %e.message, "uplink request refused");
    }
    if send.write_all(&wire::encode(&resp)).await.is_ok() {
        let _ = send.finish();
    }
}

/// Answers one request.
async fn respond(shared: &Shared, session: &Session, bytes: &[u8]) -> Response {
    let req: Request = match wire::decode(bytes) {
        Ok(r) => r,
        Err(e) => return Response::error(ErrorCode::BadRequest, e.to_string()),
    };
    if req.version > PROTOCOL_VERSION {
        return Response::error(
            ErrorCode::UnsupportedVersion,
            format!(
                "protocol version {} is newer than this control plane's {PROTOCOL_VERSION}",
                req.version
            ),
        );
    }
    let Some(body) = req.body else {
        return Response::error(ErrorCode::BadRequest, "request has no body");
    };
    let (state, spire, m) = (&shared.state, &shared.spire, &shared.state.metrics.uplink);
    let answer = match (&session.peer, body) {
        (Peer::Enrolling, request::Body::Enroll(e)) => {
            spire::enroll(state, spire, e).await.map(|svid| {
                m.enrollments.fetch_add(1, Ordering::Relaxed);
                response::Body::Svid(svid)
            })
        }
        (Peer::Enrolling, request::Body::Recover(r)) => {
            let Some(binding) = &session.binding else {
                return Response::error(
                    ErrorCode::Unavailable,
                    "this connection has no TLS exporter value to bind the proof to",
                );
            };
            spire::recover(state, spire, r, binding).await.map(|svid| {
                m.renewals.fetch_add(1, Ordering::Relaxed);
                response::Body::Svid(svid)
            })
        }
        (Peer::Enrolling, _) => {
            return Response::error(
                ErrorCode::Unauthorized,
                "only enrollment or an expired SVID's renewal is possible without an SVID; use hais-uplink/1 with one",
            );
        }
        (Peer::Agent { .. }, request::Body::Enroll(_) | request::Body::Recover(_)) => {
            return Response::error(
                ErrorCode::BadRequest,
                "already authenticated: enrollment and expired-SVID renewal use hais-enroll/1; renew with RenewRequest",
            );
        }
        (Peer::Agent { agent_id, .. }, _) if spire.revocations.is_revoked(agent_id) => {
            Err(SpireError::Revoked(agent_id.clone()))
        }
        (Peer::Agent { agent_id, .. }, request::Body::Batch(b)) => {
            return batch(state, &shared.identity, agent_id, b).await;
        }
        (Peer::Agent { agent_id, .. }, request::Body::Heartbeat(h)) => {
            spire::heartbeat(state, agent_id, h, session.remote)
                .await
                .map(|ack| {
                    m.heartbeats.fetch_add(1, Ordering::Relaxed);
                    response::Body::HeartbeatAck(ack)
                })
        }
        (Peer::Agent { id, .. }, request::Body::Renew(_))
            if id.trust_domain() != spire.authority.trust_domain() =>
        {
            return Response::error(
                ErrorCode::BadRequest,
                format!("{id} comes from an external SPIRE, which renews it; this CA does not"),
            );
        }
        (Peer::Agent { id, .. }, request::Body::Renew(r)) => {
            spire::renew(state, spire, id, &r.csr_der)
                .await
                .map(|svid| {
                    m.renewals.fetch_add(1, Ordering::Relaxed);
                    response::Body::Svid(svid)
                })
        }
    };
    match answer {
        Ok(body) => Response::new(body),
        Err(e) => {
            if matches!(e.wire_code(), ErrorCode::Unavailable) {
                tracing::warn!(error = %e, "uplink request failed");
            }
            Response::error(e.wire_code(), e.to_string())
        }
    }
}

/// Checks each event, stores the valid ones, and acknowledges after the commit.
async fn batch(
    state: &AppState,
    identity: &Identity,
    agent_id: &str,
    b: wire::EventBatch,
) -> Response {
    let m = &state.metrics.uplink;
    let n = b.events.len();
    if n > wire::MAX_EVENTS_PER_BATCH {
        return Response::error(
            ErrorCode::BadRequest,
            format!(
                "a batch holds at most {} events, got {n}",
                wire::MAX_EVENTS_PER_BATCH
            ),
        );
    }
    m.events.fetch_add(n as u64, Ordering::Relaxed);
    let mut rejected = Vec::new();
    let mut valid = Vec::with_capacity(n);
    for (i, ev) in b.events.into_iter().enumerate() {
        let checked = FingerprintEvent::try_from(ev)
            .map_err(|e| e.to_string())
            .and_then(|mut e| admit_event(&mut e, Some(agent_id)).map(|()| e));
        match checked {
            Ok(e) => valid.push(e),
            Err(reason) => rejected.push(wire::RejectedEvent {
                index: i as u32,
                reason,
            }),
        }
    }
    m.events_rejected
        .fetch_add(rejected.len() as u64, Ordering::Relaxed);
    let (stored, duplicates) = if valid.is_empty() {
        (0, 0)
    } else {
        match store_events(state, identity, &mut valid).await {
            Ok(out) => (out.stored.len(), out.duplicates),
            Err(e) => {
                tracing::warn!(error = %e, agent_id, events = valid.len(), "storing an uplink batch failed");
                return Response::error(
                    ErrorCode::Unavailable,
                    "storing the batch failed; send it again later",
                );
            }
        }
    };
    m.batches.fetch_add(1, Ordering::Relaxed);
    Response::new(response::Body::Ack(wire::BatchAck {
        seq: b.seq,
        stored: stored as u32,
        duplicates: duplicates as u32,
        rejected,
    }))
}
