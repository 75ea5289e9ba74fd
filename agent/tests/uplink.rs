//! The uplink against a small control plane written here: quinn + the hais-svid CA, speaking
//! `hais_shared::wire`, committing events to a Vec (deduplicated by event id, as the real store
//! is) and acking only after that. It can be stopped and started again on the same port.
//!
//! Shown: enrollment (and a reused token refused), every event delivered exactly once across a
//! server restart, the spool draining oldest first after an outage, SVID renewal in the
//! middle of a stream losing nothing, and a certificate the server refuses at the handshake
//! not making the agent reconnect in a tight loop.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hais_agent::status::{AgentStatus, ConnectionState};
use hais_agent::uplink::SharedSpool;
use hais_agent::uplink::client::{ClientError, Transport};
use hais_agent::uplink::quic::{Uplink, UplinkOptions};
use hais_agent::uplink::spool::{Spool, SpoolOptions};
use hais_shared::event::{Fingerprint, FingerprintEvent, Flow, Transport as L4};
use hais_shared::fingerprint::Method;
use hais_shared::spiffe::SpiffeId;
use hais_shared::wire::{self, ErrorCode, Request, Response, request, response};
use hais_svid::{CertificateAuthority, JoinToken, Svid};
use quinn::crypto::rustls::{HandshakeData, QuicServerConfig};

const TD: &str = "hais.local";

/// What the test control plane has committed.
#[derive(Default)]
struct Store {
    /// Event ids in commit order, each once.
    committed: Vec<Vec<u8>>,
    /// The committed events themselves.
    events: Vec<wire::Event>,
    seen: HashSet<Vec<u8>>,
    duplicates: u64,
    heartbeats: u64,
    renewals: u64,
    /// Distinct client certificates the uplink saw (a renewal brings a new one).
    client_certs: HashSet<Vec<u8>>,
    tokens: HashSet<String>,
}

struct ServerShared {
    ca: CertificateAuthority,
    store: Mutex<Store>,
    /// TTL of the SVIDs it signs.
    agent_ttl: Duration,
    /// Connection attempts that reached the endpoint.
    attempts: std::sync::atomic::AtomicU64,
}

struct TestServer {
    shared: Arc<ServerShared>,
    addr: SocketAddr,
    endpoint: Option<quinn::Endpoint>,
}

impl TestServer {
    fn new(agent_ttl: Duration) -> TestServer {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let shared = Arc::new(ServerShared {
            ca: CertificateAuthority::generate(TD).unwrap(),
            store: Mutex::new(Store::default()),
            agent_ttl,
            attempts: std::sync::atomic::AtomicU64::new(0),
        });
        // Reserve a port: bind, note it, release it; start() binds it again.
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        drop(sock);
        TestServer {
            shared,
            addr,
            endpoint: None,
        }
    }

    fn token(&self) -> JoinToken {
        let t = JoinToken::generate(self.shared.ca.hash());
        self.shared
            .store
            .lock()
            .unwrap()
            .tokens
            .insert(t.credential());
        t
    }

    fn server(&self) -> String {
        self.addr.to_string()
    }

    /// Starts serving (again) on the same port. Must run inside a tokio runtime.
    fn start(&mut self) {
        let id = SpiffeId::control_plane(TD).unwrap();
        let svid = self
            .shared
            .ca
            .issue(&id, &["localhost".into()], Duration::from_secs(3600))
            .unwrap();
        let tls = hais_svid::server_config(&svid, &self.shared.ca.bundle()).unwrap();
        let cfg =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).unwrap()));
        let deadline = Instant::now() + Duration::from_secs(5);
        let endpoint = loop {
            match quinn::Endpoint::server(cfg.clone(), self.addr) {
                Ok(e) => break e,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("rebinding {}: {e}", self.addr);
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("bind {}: {e}", self.addr),
            }
        };
        let ep = endpoint.clone();
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                tokio::spawn(serve_connection(Arc::clone(&shared), incoming));
            }
        });
        self.endpoint = Some(endpoint);
    }

    /// Stops abruptly: connections are closed and nothing in progress is answered.
    async fn stop(&mut self) {
        if let Some(ep) = self.endpoint.take() {
            ep.close(0u32.into(), b"restart");
            let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
        }
    }

    fn committed(&self) -> Vec<Vec<u8>> {
        self.shared.store.lock().unwrap().committed.clone()
    }
}

async fn serve_connection(shared: Arc<ServerShared>, incoming: quinn::Incoming) {
    shared
        .attempts
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let Ok(conn) = incoming.await else { return };
    let alpn = conn
        .handshake_data()
        .and_then(|h| h.downcast::<HandshakeData>().ok())
        .and_then(|h| h.protocol);
    let peer = if alpn.as_deref() == Some(wire::ALPN_UPLINK) {
        let certs = conn.peer_identity().and_then(|i| {
            i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        });
        let Some(certs) = certs else {
            conn.close(1u32.into(), b"certificate required");
            return;
        };
        let leaf = certs[0].to_vec();
        let id = hais_svid::spiffe_id_of(&leaf).unwrap();
        shared.store.lock().unwrap().client_certs.insert(leaf);
        Some(id)
    } else {
        None
    };
    while let Ok((send, recv)) = conn.accept_bi().await {
        tokio::spawn(serve_stream(Arc::clone(&shared), peer.clone(), send, recv));
    }
}

async fn serve_stream(
    shared: Arc<ServerShared>,
    peer: Option<SpiffeId>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let Ok(bytes) = recv.read_to_end(wire::MAX_MESSAGE_LEN).await else {
        return;
    };
    let req: Request = wire::decode(&bytes).unwrap();
    let body = match (req.body.unwrap(), &peer) {
        (request::Body::Batch(b), Some(_)) => {
            // "Commit", then ack: the store is the Vec.
            let mut st = shared.store.lock().unwrap();
            let mut stored = 0;
            let mut duplicates = 0;
            for e in &b.events {
                if st.seen.insert(e.id.clone()) {
                    st.committed.push(e.id.clone());
                    st.events.push(e.clone());
                    stored += 1;
                } else {
                    duplicates += 1;
                }
            }
            st.duplicates += u64::from(duplicates);
            response::Body::Ack(wire::BatchAck {
                seq: b.seq,
                stored,
                duplicates,
                rejected: Vec::new(),
            })
        }
        (request::Body::Heartbeat(_), Some(_)) => {
            shared.store.lock().unwrap().heartbeats += 1;
            response::Body::HeartbeatAck(wire::HeartbeatAck {
                server_time_unix_ms: hais_agent::status::unix_ms(),
            })
        }
        (request::Body::Renew(r), Some(id)) => {
            shared.store.lock().unwrap().renewals += 1;
            svid_response(&shared, &r.csr_der, id)
        }
        (request::Body::Enroll(e), None) => {
            if !shared.store.lock().unwrap().tokens.remove(&e.token) {
                let resp = Response::error(ErrorCode::Unauthorized, "unknown or used token");
                let _ = send.write_all(&wire::encode(&resp)).await;
                let _ = send.finish();
                return;
            }
            let id = SpiffeId::agent(TD, &format!("agent{}", rand_suffix())).unwrap();
            svid_response(&shared, &e.csr_der, &id)
        }
        _ => panic!("request on the wrong ALPN"),
    };
    let _ = send.write_all(&wire::encode(&Response::new(body))).await;
    let _ = send.finish();
    // Keep the stream until the peer has read the answer.
    let _ = send.stopped().await;
}

fn rand_suffix() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn svid_response(shared: &ServerShared, csr: &[u8], id: &SpiffeId) -> response::Body {
    let chain = shared.ca.sign_csr(csr, id, shared.agent_ttl).unwrap();
    response::Body::Svid(wire::SvidResponse {
        spiffe_id: id.to_string(),
        svid_chain_der: chain.iter().map(|c| c.to_vec()).collect(),
        bundle_der: shared
            .ca
            .bundle()
            .certs
            .iter()
            .map(|c| c.to_vec())
            .collect(),
        agent_id: id.agent_id().unwrap().to_string(),
    })
}

fn event(i: u32) -> FingerprintEvent {
    let mut e = FingerprintEvent::new(
        "agent-under-test",
        "host-1",
        Flow {
            src_ip: "10.0.0.2".parse().unwrap(),
            src_port: (i % 60000) as u16 + 1,
            dst_ip: "10.0.0.3".parse().unwrap(),
            dst_port: 443,
            transport: L4::Tcp,
        },
    );
    e.fingerprints.push(Fingerprint {
        method: Method::Ja4,
        value: "t13d1516h2_8daaf6152771_02713d6af862".into(),
    });
    e
}

struct Agent {
    spool: SharedSpool,
    status: Arc<AgentStatus>,
    uplink: Uplink,
    /// Ids appended, in order.
    appended: Vec<Vec<u8>>,
    next: u32,
}

impl Agent {
    fn start(server: &str, dir: &Path, max_in_flight: usize) -> Agent {
        Agent::start_with(server, dir, |o| o.max_in_flight = max_in_flight)
    }

    /// [`Agent::start`] with the test's options adjusted by `tune`.
    fn start_with(server: &str, dir: &Path, tune: impl FnOnce(&mut UplinkOptions)) -> Agent {
        let (svid, bundle) = Svid::load(dir).unwrap();
        let spool = Spool::open(SpoolOptions::new(dir.join("spool"), 64 << 20)).unwrap();
        let spool: SharedSpool = Arc::new(Mutex::new(spool));
        let status = Arc::new(AgentStatus::new(Vec::new(), Some(Arc::clone(&spool))));
        let mut opts = UplinkOptions::new(server, dir);
        opts.batch_events = 250;
        opts.heartbeat_interval = Duration::from_millis(300);
        opts.backoff_min = Duration::from_millis(50);
        opts.backoff_max = Duration::from_millis(500);
        opts.transport = Transport {
            idle_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
        };
        tune(&mut opts);
        let uplink =
            Uplink::start(opts, svid, bundle, Arc::clone(&spool), Arc::clone(&status)).unwrap();
        Agent {
            spool,
            status,
            uplink,
            appended: Vec::new(),
            next: 0,
        }
    }

    /// Appends `n` new events, as the capture side does, in chunks of 100.
    fn produce(&mut self, n: u32) {
        let waker = self.uplink.waker();
        let mut chunk = Vec::new();
        for _ in 0..n {
            let ev = event(self.next);
            self.next += 1;
            self.appended.push(ev.id.as_bytes().to_vec());
            chunk.push(wire::encode(&wire::Event::from(&ev)));
            if chunk.len() == 100 {
                self.spool.lock().unwrap().append(&chunk).unwrap();
                waker.notify_one();
                chunk.clear();
            }
        }
        if !chunk.is_empty() {
            self.spool.lock().unwrap().append(&chunk).unwrap();
            waker.notify_one();
        }
    }

    fn depth(&self) -> u64 {
        self.spool.lock().unwrap().depth()
    }
}

async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn enroll(server: &TestServer, dir: &Path) -> Svid {
    let (svid, bundle) = hais_agent::uplink::enroll::enroll(
        &server.server(),
        &server.token(),
        "host-1",
        &Transport::default(),
    )
    .await
    .unwrap();
    svid.save(&bundle, dir).unwrap();
    svid
}

fn assert_exactly_once(server: &TestServer, agent: &Agent) {
    let committed = server.committed();
    let unique: HashSet<&Vec<u8>> = committed.iter().collect();
    assert_eq!(unique.len(), committed.len(), "the test store deduplicates");
    let want: HashSet<&Vec<u8>> = agent.appended.iter().collect();
    assert_eq!(unique, want, "every appended event is stored, nothing else");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_pins_the_ca_and_tokens_are_single_use() {
    let mut server = TestServer::new(Duration::from_secs(3600));
    server.start();
    let dir = tempfile::tempdir().unwrap();
    let token = server.token();
    let t = Transport::default();
    let (svid, _) = hais_agent::uplink::enroll::enroll(&server.server(), &token, "h", &t)
        .await
        .unwrap();
    assert_eq!(svid.spiffe_id.trust_domain(), TD);
    assert!(svid.spiffe_id.agent_id().is_some());
    let again = hais_agent::uplink::enroll::enroll(&server.server(), &token, "h", &t).await;
    assert!(
        matches!(
            &again,
            Err(ClientError::Refused {
                code: ErrorCode::Unauthorized,
                ..
            })
        ),
        "{again:?}"
    );
    // A token pinning another CA: the agent refuses the server itself.
    let other = CertificateAuthority::generate(TD).unwrap();
    let mut foreign = server.token();
    foreign.ca_hash = other.hash();
    let e = hais_agent::uplink::enroll::enroll(&server.server(), &foreign, "h", &t)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("CA"), "{e}");
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_stored_exactly_once_across_a_server_restart() {
    let mut server = TestServer::new(Duration::from_secs(3600));
    server.start();
    let dir = tempfile::tempdir().unwrap();
    enroll(&server, dir.path()).await;
    let mut agent = Agent::start(&server.server(), dir.path(), 8);

    for _ in 0..10 {
        agent.produce(1000);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Restart while batches are in flight: some are committed without their ack reaching
    // the agent, so they come again and the store sees duplicates.
    server.stop().await;
    agent.produce(5000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.start();
    for _ in 0..5 {
        agent.produce(1000);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for("the spool to drain", Duration::from_secs(60), || {
        agent.depth() == 0 && server.committed().len() == 20_000
    })
    .await;
    assert_exactly_once(&server, &agent);
    let st = agent.status.uplink();
    assert!(st.connects >= 2, "{st:?}");
    assert_eq!(st.events_stored, 20_000, "{st:?}");
    wait_for("a heartbeat", Duration::from_secs(5), || {
        server.shared.store.lock().unwrap().heartbeats > 0
    })
    .await;
    assert!(agent.status.uplink().clock_skew_ms.unwrap().abs() < 1000);
    let stats = agent.spool.lock().unwrap().stats();
    assert_eq!(stats.dropped, 0);
    assert_eq!(stats.acked, 20_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spool_drains_oldest_first_after_an_outage() {
    let mut server = TestServer::new(Duration::from_secs(3600));
    server.start();
    let dir = tempfile::tempdir().unwrap();
    enroll(&server, dir.path()).await;
    server.stop().await;

    // One batch in flight at a time, so commit order is send order.
    let mut agent = Agent::start(&server.server(), dir.path(), 1);
    agent.produce(5000);
    wait_for("the uplink to back off", Duration::from_secs(10), || {
        agent.status.uplink().state == ConnectionState::Backoff
    })
    .await;
    assert_eq!(agent.depth(), 5000, "nothing leaves the spool while down");
    assert!(agent.status.uplink().last_error.is_some());

    server.start();
    wait_for("the spool to drain", Duration::from_secs(30), || {
        agent.depth() == 0
    })
    .await;
    assert_eq!(
        server.committed(),
        agent.appended,
        "oldest first, each once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_in_the_middle_of_a_stream_loses_nothing() {
    // A 10 s TTL is backdated 2 s (a fifth), so the half-life comes 4 s after issuance, in
    // the middle of the 5 s stream.
    let mut server = TestServer::new(Duration::from_secs(10));
    server.start();
    let dir = tempfile::tempdir().unwrap();
    let first = enroll(&server, dir.path()).await;
    let mut agent = Agent::start(&server.server(), dir.path(), 8);

    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        agent.produce(200);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let total = agent.appended.len();
    wait_for("the spool to drain", Duration::from_secs(30), || {
        agent.depth() == 0 && server.committed().len() == total
    })
    .await;
    assert_exactly_once(&server, &agent);

    let st = agent.status.uplink();
    assert!(st.renewals >= 1, "{st:?}");
    let store = server.shared.store.lock().unwrap();
    assert!(store.renewals >= 1);
    assert!(
        store.client_certs.len() >= 2,
        "reconnected with the new SVID"
    );
    drop(store);
    // The renewed SVID is on disk, same identity, later expiry.
    let (now, _) = Svid::load(dir.path()).unwrap();
    assert_eq!(now.spiffe_id, first.spiffe_id);
    assert!(now.not_after > first.not_after);
    assert_eq!(st.svid_expiry_unix, Some(now.not_after.unix_timestamp()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_refused_at_the_handshake_backs_off_instead_of_looping() {
    let mut server = TestServer::new(Duration::from_secs(3600));
    server.start();
    let dir = tempfile::tempdir().unwrap();
    // The agent trusts the server, but its SVID comes from another CA: the server's TLS layer
    // refuses it after the agent's side of the handshake has completed.
    let other = CertificateAuthority::generate(TD).unwrap();
    let id = SpiffeId::agent(TD, "stranger").unwrap();
    let (key, csr) = hais_svid::generate_csr().unwrap();
    let chain = other
        .sign_csr(&csr, &id, Duration::from_secs(3600))
        .unwrap();
    let svid = Svid::from_der(chain.iter().map(|c| c.to_vec()).collect(), key).unwrap();
    svid.save(&server.shared.ca.bundle(), dir.path()).unwrap();
    let window = Duration::from_secs(10);
    let agent = Agent::start_with(&server.server(), dir.path(), |o| {
        o.backoff_min = Duration::from_millis(200);
        o.backoff_max = Duration::from_secs(4);
    });
    let started = Instant::now();
    wait_for("a refused attempt", Duration::from_secs(10), || {
        agent.status.uplink().problem.is_some()
    })
    .await;
    let st = agent.status.uplink();
    assert!(st.problem.as_deref().unwrap().contains("refused"), "{st:?}");
    assert!(st.fix.is_some(), "{st:?}");
    tokio::time::sleep(window.saturating_sub(started.elapsed())).await;
    let attempts = server
        .shared
        .attempts
        .load(std::sync::atomic::Ordering::Relaxed);
    // With the backoff starting over at every completed handshake this was one attempt per
    // 100-200 ms (50+ in 10 s); growing to the 4 s cap, the delays' floors alone add up to
    // about 9 s by the 8th attempt.
    assert!(
        (1..=10).contains(&attempts),
        "{attempts} connection attempts in {window:?}"
    );
    assert_eq!(server.committed().len(), 0);
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_hais-agent")
}

fn can_capture() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        })
        .is_some_and(|c| c & (1 << 13) != 0)
}

/// Runs the binary off the async threads and returns (exit code, stdout, stderr).
async fn agent_cmd(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let o = std::process::Command::new(bin())
            .args(&args)
            .env_remove("HAIS_CONFIG")
            .env_remove("HAIS_SERVER")
            .env_remove("HAIS_STATE_DIR")
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// `enroll`, `run` streaming a live TCP flow on `lo`, `status` and `doctor`, as an operator
/// runs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_enroll_run_status_doctor() {
    use std::os::unix::fs::PermissionsExt;
    let mut server = TestServer::new(Duration::from_secs(3600));
    server.start();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let sd = state.display().to_string();
    let token = server.token().to_string();

    let (code, out, err) = agent_cmd(
        [
            "enroll",
            "--server",
            &server.server(),
            "--token",
            &token,
            "--state-dir",
            &sd,
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.trim().starts_with("spiffe://hais.local/hais/agent/"),
        "{out}"
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("svid.key")), 0o600);

    // Enrolling twice needs --force; a malformed token is a data error.
    let (code, _, err) = agent_cmd(
        [
            "enroll",
            "--server",
            &server.server(),
            "--token",
            &token,
            "--state-dir",
            &sd,
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(code, 73, "{err}");
    assert!(err.contains("--force"), "{err}");
    let (code, _, _) = agent_cmd(
        [
            "enroll",
            "--server",
            &server.server(),
            "--token",
            "nope",
            "--state-dir",
            &sd,
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(code, 65);

    let (code, _, err) = agent_cmd(["status", "--state-dir", &sd].map(String::from).to_vec()).await;
    assert_eq!(code, 69, "no agent runs yet: {err}");

    if !can_capture() {
        eprintln!("skipping the live part: no CAP_NET_RAW");
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut child = std::process::Command::new(bin())
        .args([
            "run",
            "-i",
            "lo",
            "--bpf",
            &format!("tcp port {port}"),
            "--idle-timeout",
            "1",
        ])
        .args(["--state-dir", &sd, "-q"])
        .env_remove("HAIS_CONFIG")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let sock = state.join("agent.sock");
    wait_for("the status socket", Duration::from_secs(10), || {
        sock.exists()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..3 {
        let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (a, _) = listener.accept().unwrap();
        drop(c);
        drop(a);
    }
    let ours = |e: &wire::Event| {
        e.flow
            .as_ref()
            .is_some_and(|f| f.dst_port == u32::from(port))
    };
    wait_for(
        "the flows' events to be committed",
        Duration::from_secs(20),
        || {
            server
                .shared
                .store
                .lock()
                .unwrap()
                .events
                .iter()
                .filter(|e| ours(e))
                .count()
                >= 3
        },
    )
    .await;
    {
        let store = server.shared.store.lock().unwrap();
        let ev = store.events.iter().find(|e| ours(e)).unwrap();
        assert!(ev.agent_id.starts_with("agent"), "{ev:?}");
        assert!(
            ev.fingerprints
                .iter()
                .any(|f| f.method == wire::Method::Ja4t as i32),
            "a SYN gives JA4T: {ev:?}"
        );
    }

    let (code, out, err) = agent_cmd(
        ["status", "--json", "--state-dir", &sd]
            .map(String::from)
            .to_vec(),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["uplink"]["state"], "connected", "{v}");
    assert_eq!(v["interfaces"][0]["name"], "lo", "{v}");
    assert!(v["uplink"]["events_stored"].as_u64().unwrap() >= 3, "{v}");
    let (code, out, _) = agent_cmd(["status", "--state-dir", &sd].map(String::from).to_vec()).await;
    assert_eq!(code, 0);
    assert!(out.contains("uplink:    connected"), "{out}");

    let (code, out, err) = agent_cmd(
        ["doctor", "--json", "--state-dir", &sd]
            .map(String::from)
            .to_vec(),
    )
    .await;
    let checks: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let outcome = |name: &str| {
        checks
            .as_array()
            .and_then(|a| a.iter().find(|c| c["check"] == name))
            .map(|c| c["outcome"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    // Attribution (sock_diag and the eBPF tracer, tried for real) too, where eBPF can load.
    let ebpf = std::env::var_os("HAIS_SKIP_EBPF_TESTS").is_none();
    let checked = ["identity", "server", "clock", "agent", "state dir"];
    for name in checked.into_iter().chain(ebpf.then_some("attribution")) {
        assert_eq!(outcome(name), "ok", "{name}: {out}\n{err}");
    }
    assert_eq!(code, 0, "{out}");

    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(!sock.exists(), "the socket is removed at exit");
}
