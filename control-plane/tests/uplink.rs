//! The agents' QUIC endpoint with real sockets on 127.0.0.1 and the real CA: enrollment with
//! join tokens, the mutual-TLS uplink (batches, heartbeats, renewal), and every way a peer is
//! refused. The client is `common::quic`, built from quinn, hais-svid and hais-shared only, so
//! these tests pin the control plane's side of the protocol independently of the agent crate.
//! Run on SQLite with the in-process bus and on PostgreSQL with Redis, like `api.rs`.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use common::quic::*;
use common::{Backend, TestApp, error_code};
use hais_control_plane::bus::topics::{
    AgentEnrolled, AgentRevoked, AgentStatus, AgentStatusChanged, LiveTopic,
};
use hais_control_plane::services::ja4::uplink::close;
use hais_control_plane::store::spire::JoinTokenRecord;
use hais_control_plane::store::{Store, now_us};
use hais_shared::spiffe::SpiffeId;
use hais_shared::wire::{
    self, ALPN_UPLINK, ErrorCode, PROTOCOL_VERSION, Request, request, response,
};
use hais_svid::{Bundle, CertificateAuthority, JoinToken, Svid};
use serde_json::{Value, json};

// ---------------------------------------------------------------- harness

fn uplink_addr(t: &TestApp) -> SocketAddr {
    t.app.as_ref().unwrap().uplink_addr.expect("uplink running")
}

/// Uplink connections refused so far (the `connections_refused` counter).
fn refusals(t: &TestApp) -> u64 {
    t.app
        .as_ref()
        .unwrap()
        .state
        .metrics
        .uplink
        .connections_refused
        .load(std::sync::atomic::Ordering::Relaxed)
}

fn store(t: &TestApp) -> &dyn Store {
    &*t.app.as_ref().unwrap().state.store
}

/// Waits for a bus message of topic `T` whose payload satisfies `pred`.
async fn wait_bus<T: LiveTopic>(
    rx: &mut tokio::sync::broadcast::Receiver<Arc<hais_control_plane::bus::BusMessage>>,
    pred: impl Fn(&T::Payload) -> bool,
) -> T::Payload {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no {} message", T::NAME))
            .unwrap();
        if let Some(p) = m.decode::<T>() {
            let p = p.unwrap_or_else(|e| panic!("{}: {e}: {}", T::NAME, m.json()));
            if pred(&p) {
                return p;
            }
        }
    }
}

// ---------------------------------------------------------------- scenarios

/// Enrollment, batches (stored, duplicates, per-event rejects), pipelining, heartbeats and the
/// fleet view, renewal, a newer protocol version, metrics, and the token API's checks.
async fn enroll_and_stream(backend: Backend) {
    let iso = common::Isolation::new(backend, "uplink").await;
    let mut config = iso.config();
    config.spire.stale_after = hais_control_plane::config::HumanDuration::from_secs(2);
    let t = TestApp::start_with(iso, config).await;
    let mut bus = t.app.as_ref().unwrap().state.bus.subscribe();
    let addr = uplink_addr(&t);

    // The token API checks its input and its caller.
    let (s, v) = t
        .call(
            "POST",
            "/api/spire/tokens",
            Some(&t.admin),
            Some(json!({"ttl_seconds": 5})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = t
        .call("POST", "/api/spire/tokens", None, Some(json!({})))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let (s, bundle_pem) = t.get_text("/api/spire/bundle", Some(&t.admin)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(bundle_pem.starts_with("-----BEGIN CERTIFICATE-----"));

    let token = t.join_token().await;
    let a = enroll(addr, &token).await;
    assert_eq!(Bundle::from_pem(&bundle_pem).unwrap().certs, a.bundle.certs);
    let enrolled = wait_bus::<AgentEnrolled>(&mut bus, |p| p.agent_id == a.agent_id).await;
    assert_eq!(enrolled.hostname, "test-host");
    assert_eq!(enrolled.spiffe_id, a.svid.spiffe_id.as_str());

    let conn = uplink(addr, &a).await.expect("uplink handshake");

    // A batch: three good events, one naming another agent, one malformed on the wire.
    let mut events: Vec<wire::Event> = (0..3).map(|_| wire_event(&a.agent_id)).collect();
    events.push(wire_event("someone-else"));
    let mut bad = wire_event(&a.agent_id);
    bad.id = vec![1, 2, 3];
    events.push(bad);
    let first = ack(call(&conn, &batch_req(7, events.clone())).await.unwrap());
    assert_eq!((first.seq, first.stored, first.duplicates), (7, 3, 0));
    let rejected: Vec<u32> = first.rejected.iter().map(|r| r.index).collect();
    assert_eq!(rejected, [3, 4], "{:?}", first.rejected);
    assert!(first.rejected[0].reason.contains("someone-else"));
    // Redelivery (the agent never saw the ack): nothing stored twice.
    let again = ack(call(&conn, &batch_req(8, events)).await.unwrap());
    assert_eq!(
        (again.stored, again.duplicates, again.rejected.len()),
        (0, 3, 2)
    );
    assert_eq!(store(&t).count_events().await.unwrap(), 3);

    // Pipelining: many batches in flight on one connection, acks matched by seq.
    let calls = (100..116u64).map(|seq| {
        let conn = conn.clone();
        let events: Vec<_> = (0..50).map(|_| wire_event(&a.agent_id)).collect();
        async move {
            (
                seq,
                ack(call(&conn, &batch_req(seq, events)).await.unwrap()),
            )
        }
    });
    for (seq, got) in futures_join_all(calls).await {
        assert_eq!((got.seq, got.stored), (seq, 50));
    }
    assert_eq!(store(&t).count_events().await.unwrap(), 3 + 16 * 50);
    let (_, found) = t
        .call(
            "GET",
            &format!("/api/ja4/fingerprints?agent={}", a.agent_id),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(found["items"][0]["count"], 3 + 16 * 50, "{found}");

    // A newer protocol version is answered, not guessed at.
    let mut newer = heartbeat_req();
    newer.version = PROTOCOL_VERSION + 1;
    let e = wire_error(call(&conn, &newer).await.unwrap());
    assert_eq!(e.code, ErrorCode::UnsupportedVersion as i32, "{e:?}");
    // Enrollment is not an uplink request.
    let e = wire_error(
        call(
            &conn,
            &Request::new(request::Body::Enroll(wire::EnrollRequest::default())),
        )
        .await
        .unwrap(),
    );
    assert_eq!(e.code, ErrorCode::BadRequest as i32);

    // Heartbeat → fleet view online with the figures; stale once heartbeats stop.
    match body(call(&conn, &heartbeat_req()).await.unwrap()) {
        response::Body::HeartbeatAck(h) => {
            assert!((h.server_time_unix_ms - now_us() / 1000).abs() < 5_000)
        }
        other => panic!("{other:?}"),
    }
    let (s, v) = t
        .call(
            "GET",
            &format!("/api/spire/agents/{}", a.agent_id),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "online", "{v}");
    assert_eq!(v["spiffe_id"], a.svid.spiffe_id.as_str());
    assert_eq!(v["heartbeat"]["packets"], 1000);
    assert_eq!(v["heartbeat"]["interfaces"], json!(["lo", "eth0"]));
    assert_eq!(v["heartbeat"]["spool_depth"], 7);
    assert!(v["svid_expires_us"].as_i64().unwrap() > now_us());
    let serial = v["svid_serial"].as_str().unwrap().to_owned();
    wait_bus::<AgentStatusChanged>(&mut bus, |p| {
        p.agent_id == a.agent_id && p.status == AgentStatus::Stale
    })
    .await;
    let (_, list) = t
        .call("GET", "/api/spire/agents", Some(&t.admin), None)
        .await;
    assert_eq!(list["items"][0]["status"], "stale", "{list}");
    assert_eq!(list["next_cursor"], Value::Null);

    // Renewal: same identity, new key, new serial recorded.
    let (key, csr) = hais_svid::generate_csr().unwrap();
    let renewed = match body(
        call(
            &conn,
            &Request::new(request::Body::Renew(wire::RenewRequest { csr_der: csr })),
        )
        .await
        .unwrap(),
    ) {
        response::Body::Svid(s) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!(renewed.spiffe_id, a.svid.spiffe_id.as_str());
    assert_eq!(renewed.agent_id, a.agent_id);
    let renewed_svid = Svid::from_der(renewed.svid_chain_der, key).unwrap();
    let (_, v) = t
        .call(
            "GET",
            &format!("/api/spire/agents/{}", a.agent_id),
            Some(&t.admin),
            None,
        )
        .await;
    assert_ne!(v["svid_serial"].as_str().unwrap(), serial);
    // The renewed SVID opens a new connection.
    let renewed_agent = Enrolled {
        svid: renewed_svid,
        bundle: a.bundle.clone(),
        agent_id: a.agent_id.clone(),
    };
    let conn2 = uplink(addr, &renewed_agent).await.unwrap();
    ack(call(&conn2, &batch_req(1, vec![wire_event(&a.agent_id)]))
        .await
        .unwrap());

    let (_, text) = t.get_text("/metrics", None).await;
    assert!(text.contains("hais_uplink_batches_total 19"), "{text}");
    assert!(text.contains("hais_uplink_enrollments_total 1"), "{text}");
    assert!(
        text.contains("hais_uplink_events_rejected_total 4"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE hais_uplink_connections_active gauge"),
        "{text}"
    );
    conn.close(0u32.into(), b"bye");
    conn2.close(0u32.into(), b"bye");
    t.finish().await;
}

/// `join_all` without the futures crate: spawn each, await in order.
async fn futures_join_all<F, T>(futs: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// Tokens are single use (also under a race), expire, must be known, and pin the CA.
async fn token_rules(backend: Backend) {
    let t = TestApp::start(backend, "uplinktok").await;
    let addr = uplink_addr(&t);
    let token = t.join_token().await;

    // Five concurrent enrollments with one token: exactly one wins.
    let attempts = (0..5).map(|_| {
        let token = token.clone();
        async move { enroll_raw(addr, &token).await.unwrap().1 }
    });
    let answers = futures_join_all(attempts).await;
    let wins = answers
        .iter()
        .filter(|r| matches!(r.body, Some(response::Body::Svid(_))))
        .count();
    assert_eq!(wins, 1, "{answers:?}");
    for r in answers
        .into_iter()
        .filter(|r| !matches!(r.body, Some(response::Body::Svid(_))))
    {
        let e = wire_error(r);
        assert_eq!(e.code, ErrorCode::Unauthorized as i32, "{e:?}");
        assert!(e.message.contains("already used"), "{e:?}");
    }
    // Reused later: refused.
    let e = wire_error(enroll_raw(addr, &token).await.unwrap().1);
    assert_eq!(e.code, ErrorCode::Unauthorized as i32);

    // Expired.
    let ca_hash = JoinToken::parse(&token).unwrap().ca_hash;
    let expired = JoinToken::generate(ca_hash);
    store(&t)
        .create_join_token(&JoinTokenRecord {
            id: expired.id.clone(),
            secret_hash: hais_control_plane::auth::token_hash(&expired.secret),
            description: None,
            created_by: "test".into(),
            created_us: now_us() - 120_000_000,
            expires_us: now_us() - 60_000_000,
        })
        .await
        .unwrap();
    let e = wire_error(enroll_raw(addr, &expired.to_string()).await.unwrap().1);
    assert_eq!(e.code, ErrorCode::Unauthorized as i32);
    assert!(e.message.contains("expired"), "{e:?}");

    // Unknown, or a known id with the wrong secret: the same answer, which says nothing more.
    let unknown = JoinToken::generate(ca_hash);
    let e = wire_error(enroll_raw(addr, &unknown.to_string()).await.unwrap().1);
    assert_eq!(e.message, "unknown join token");
    let mut wrong_secret = JoinToken::parse(&t.join_token().await).unwrap();
    wrong_secret.secret = "0".repeat(32);
    let e = wire_error(enroll_raw(addr, &wrong_secret.to_string()).await.unwrap().1);
    assert_eq!(e.message, "unknown join token");

    // A token pinning another CA: the agent refuses the server (no man in the middle).
    let other_ca = CertificateAuthority::generate("hais.local").unwrap();
    let mut pinned_elsewhere = JoinToken::parse(&t.join_token().await).unwrap();
    pinned_elsewhere.ca_hash = other_ca.hash();
    match enroll_raw(addr, &pinned_elsewhere.to_string()).await {
        Err(CallError::Connection(_)) => {}
        other => panic!("enrollment against an unpinned CA must fail: {other:?}"),
    }
    // ... and that token is still unused: a bad CSR does not burn it either.
    let good = JoinToken::parse(&t.join_token().await).unwrap();
    let conn = connect(addr, hais_svid::enroll_client_config(good.ca_hash).unwrap())
        .await
        .unwrap();
    let e = wire_error(
        call(
            &conn,
            &Request::new(request::Body::Enroll(wire::EnrollRequest {
                token: good.credential(),
                csr_der: vec![0x30, 0x03, 0x02, 0x01, 0x00],
                hostname: "h".into(),
                agent_version: "v".into(),
            })),
        )
        .await
        .unwrap(),
    );
    assert_eq!(e.code, ErrorCode::BadRequest as i32, "{e:?}");
    enroll(addr, &good.to_string()).await;
    t.finish().await;
}

/// The stored CA, as a test with database access can read it (to mint expiring SVIDs).
async fn stored_ca(t: &TestApp) -> CertificateAuthority {
    let json = store(t)
        .setting_or_init("spire_ca", "unused")
        .await
        .unwrap();
    let v: Value = serde_json::from_str(&json).unwrap();
    CertificateAuthority::from_pem(
        v["cert_pem"].as_str().unwrap(),
        v["key_pem"].as_str().unwrap(),
    )
    .unwrap()
}

/// Foreign CA, expired SVID, no certificate, a non-agent identity: all refused.
async fn bad_identities_refused(backend: Backend) {
    let t = TestApp::start(backend, "uplinkbad").await;
    let addr = uplink_addr(&t);
    let a = enroll(addr, &t.join_token().await).await;
    let server = control_plane_id();
    // How the uplink answers a connection presenting `svid`.
    let answer = |svid: &Svid| {
        refused(
            addr,
            hais_svid::uplink_client_config(svid, &a.bundle, &server).unwrap(),
        )
    };
    let hour = Duration::from_secs(3600);

    // Another CA's SVID for the very same agent id: the handshake fails (TLS alert, no app code).
    let other_ca = CertificateAuthority::generate("hais.local").unwrap();
    let foreign = other_ca.issue(&a.svid.spiffe_id, &[], hour).unwrap();
    assert_eq!(answer(&foreign).await, None, "refused by TLS, not after it");

    // An SVID of the right CA that has expired.
    let ca = stored_ca(&t).await;
    let (key, csr) = hais_svid::generate_csr().unwrap();
    let chain = ca
        .sign_csr(&csr, &a.svid.spiffe_id, Duration::from_secs(1))
        .unwrap();
    let short = Svid::from_der(chain.iter().map(|c| c.to_vec()).collect(), key).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        answer(&short).await,
        None,
        "an expired SVID is refused by TLS"
    );

    // No client certificate on the uplink ALPN.
    let mut anonymous = (*hais_svid::enroll_client_config(ca.hash()).unwrap()).clone();
    anonymous.alpn_protocols = vec![ALPN_UPLINK.to_vec()];
    let code = refused(addr, Arc::new(anonymous)).await;
    assert_eq!(code, Some(close::UNAUTHORIZED.into()));

    // A valid SVID of the trust domain that is not an agent's.
    let workload = SpiffeId::new("hais.local", "/some/workload").unwrap();
    let not_agent = ca.issue(&workload, &[], hour).unwrap();
    assert_eq!(answer(&not_agent).await, Some(close::UNAUTHORIZED.into()));

    // A valid agent SVID for an agent this control plane never enrolled.
    let never = SpiffeId::agent("hais.local", &uuid::Uuid::now_v7().to_string()).unwrap();
    let ghost = ca.issue(&never, &[], hour).unwrap();
    assert_eq!(answer(&ghost).await, Some(close::UNAUTHORIZED.into()));

    // The genuine one still works.
    let conn = uplink(addr, &a).await.unwrap();
    ack(call(&conn, &batch_req(1, vec![wire_event(&a.agent_id)]))
        .await
        .unwrap());
    let refused_so_far = refusals(&t);
    assert!(refused_so_far >= 5, "{refused_so_far}");
    t.finish().await;
}

/// Revocation closes the live connection and refuses new ones; the fleet shows it.
async fn revocation(backend: Backend) {
    let t = TestApp::start(backend, "uplinkrev").await;
    let mut bus = t.app.as_ref().unwrap().state.bus.subscribe();
    let addr = uplink_addr(&t);
    let a = enroll(addr, &t.join_token().await).await;
    let other = enroll(addr, &t.join_token().await).await;
    let live = uplink(addr, &a).await.unwrap();
    let bystander = uplink(addr, &other).await.unwrap();
    ack(call(&live, &batch_req(1, vec![wire_event(&a.agent_id)]))
        .await
        .unwrap());

    // Only admins revoke.
    let viewer = {
        let (s, _) = t
            .call(
                "POST",
                "/api/auth/users",
                Some(&t.admin),
                Some(json!({"username": "v", "password": "viewer-password", "role": "viewer"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
        t.login("v", "viewer-password").await
    };
    let path = format!("/api/spire/agents/{}/revoke", a.agent_id);
    let (s, v) = t.call("POST", &path, Some(&viewer), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(error_code(&v), "forbidden");

    let (s, v) = t.call("POST", &path, Some(&t.admin), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "revoked");
    assert!(v["revoked_us"].as_i64().is_some());
    let revoked = wait_bus::<AgentRevoked>(&mut bus, |p| p.agent_id == a.agent_id).await;
    assert_eq!(revoked.by, "admin");
    // Revoking again is harmless.
    let (s, _) = t.call("POST", &path, Some(&t.admin), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = t
        .call(
            "POST",
            &format!("/api/spire/agents/{}/revoke", uuid::Uuid::now_v7()),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // The live connection is closed with the revoked code.
    let reason = tokio::time::timeout(Duration::from_secs(5), live.closed())
        .await
        .expect("live connection closed");
    assert_eq!(app_code(&reason), Some(close::REVOKED.into()), "{reason:?}");
    // A new connection is refused.
    let code = refused(
        addr,
        hais_svid::uplink_client_config(&a.svid, &a.bundle, &control_plane_id()).unwrap(),
    )
    .await;
    assert_eq!(code, Some(close::REVOKED.into()));
    // Other agents are untouched.
    ack(
        call(&bystander, &batch_req(2, vec![wire_event(&other.agent_id)]))
            .await
            .unwrap(),
    );
    t.finish().await;
}

/// `hais-control-plane token create` prints a token (last word) that enrolls against the
/// running server sharing its database.
async fn token_cli(backend: Backend) {
    let t = TestApp::start(backend, "uplinkcli").await;
    let addr = uplink_addr(&t);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hais-control-plane"));
    cmd.args([
        "token",
        "create",
        "--ttl",
        "10m",
        "--description",
        "cli test",
    ])
    .env("HAIS_LOG_FILTER", "warn")
    .env_remove("RUST_LOG");
    match backend {
        Backend::Sqlite => {
            cmd.arg("--data-dir").arg(&t.iso.dir);
        }
        Backend::Postgres => {
            cmd.args(["--database-url", &common::pg_url()])
                .env("HAIS_DATABASE_SCHEMA", t.iso.schema.as_ref().unwrap());
        }
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = stdout.split_whitespace().last().unwrap();
    assert!(token.starts_with("hais1."), "{stdout}");
    let a = enroll(addr, token).await;
    let conn = uplink(addr, &a).await.unwrap();
    ack(call(&conn, &batch_req(1, vec![wire_event(&a.agent_id)]))
        .await
        .unwrap());
    // A bad --ttl is refused with a message.
    let bad = Command::new(env!("CARGO_BIN_EXE_hais-control-plane"))
        .args(["token", "create", "--ttl", "90d", "--data-dir"])
        .arg(&t.iso.dir)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("30d"));
    t.finish().await;
}

/// Throughput of one uplink connection (`cargo test --release -p hais-control-plane --test
/// uplink -- --ignored --nocapture`): batches of 1,000 events, 16 in flight, until 200,000 events
/// are acknowledged. Prints events/s; asserts only that everything was stored.
async fn throughput(backend: Backend) {
    const BATCH: usize = 1000;
    const BATCHES: u64 = 200;
    const IN_FLIGHT: usize = 16;
    let t = TestApp::start(backend, "uplinkperf").await;
    let addr = uplink_addr(&t);
    let a = enroll(addr, &t.join_token().await).await;
    let conn = uplink(addr, &a).await.unwrap();
    let batches: Vec<Request> = (0..BATCHES)
        .map(|seq| batch_req(seq, (0..BATCH).map(|_| wire_event(&a.agent_id)).collect()))
        .collect();
    let started = std::time::Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut handles = Vec::new();
    for req in batches {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let conn = conn.clone();
        handles.push(tokio::spawn(async move {
            let got = ack(call(&conn, &req).await.unwrap());
            drop(permit);
            got.stored
        }));
    }
    let mut stored = 0u64;
    for h in handles {
        stored += u64::from(h.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(stored, BATCHES * BATCH as u64);
    eprintln!(
        "{backend:?}: {stored} events over one connection in {secs:.2} s = {:.0} events/s",
        stored as f64 / secs
    );
    t.finish().await;
}

/// An uplink connection that answers a heartbeat, retried for a few seconds while the only
/// slot is still taken by a connection being closed.
async fn connect_when_free(addr: SocketAddr, a: &Enrolled) -> quinn::Connection {
    for _ in 0..50 {
        if let Ok(c) = uplink(addr, a).await
            && call(&c, &heartbeat_req()).await.is_ok()
        {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no free uplink slot within 5 s");
}

/// `ja4.uplink_max_connections`: connections beyond it are refused at once (counted), and a
/// slot frees when a connection ends.
async fn connection_limit(backend: Backend) {
    let iso = common::Isolation::new(backend, "uplinklimit").await;
    let mut config = iso.config();
    config.ja4.uplink_max_connections = 1;
    let t = TestApp::start_with(iso, config).await;
    let addr = uplink_addr(&t);
    let a = enroll(addr, &t.join_token().await).await;
    // The enrollment's connection holds the slot until the server has seen it close.
    let first = connect_when_free(addr, &a).await;
    let before = refusals(&t);
    let tls = hais_svid::uplink_client_config(&a.svid, &a.bundle, &control_plane_id()).unwrap();
    assert_eq!(
        refused(addr, tls).await,
        None,
        "refused before the handshake"
    );
    assert_eq!(refusals(&t), before + 1);
    // The first connection still works; once it is gone, a new one gets its slot.
    call(&first, &heartbeat_req()).await.unwrap();
    first.close(0u32.into(), b"bye");
    connect_when_free(addr, &a).await;
    t.finish().await;
}

/// A request not complete within `ja4.uplink_request_timeout` is answered with an error and
/// its stream closed; the connection goes on serving.
async fn slow_request_times_out(backend: Backend) {
    let iso = common::Isolation::new(backend, "uplinkslow").await;
    let mut config = iso.config();
    config.ja4.uplink_request_timeout = "1s".parse().unwrap();
    let t = TestApp::start_with(iso, config).await;
    let addr = uplink_addr(&t);
    let a = enroll(addr, &t.join_token().await).await;
    let conn = connect_when_free(addr, &a).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let whole = wire::encode(&heartbeat_req());
    send.write_all(&whole[..whole.len() / 2]).await.unwrap();
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        recv.read_to_end(wire::MAX_MESSAGE_LEN),
    )
    .await
    .expect("answered before the test's own timeout")
    .unwrap();
    let waited = started.elapsed();
    let e = wire_error(wire::decode(&answer).unwrap());
    assert_eq!(e.code, ErrorCode::BadRequest as i32, "{e:?}");
    assert!(e.message.contains("within 1 s"), "{}", e.message);
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    // The half-sent request did not cost the connection.
    call(&conn, &heartbeat_req()).await.unwrap();
    t.finish().await;
}

/// An enrollment connection held open that the server has admitted (it answered a request).
/// Retried while the enrollment budget is still taken by connections being closed.
async fn hold_enrollment(addr: SocketAddr, ca_hash: [u8; 32]) -> quinn::Connection {
    let bad_enroll = Request::new(request::Body::Enroll(wire::EnrollRequest::default()));
    for _ in 0..100 {
        if let Ok(c) = connect(addr, hais_svid::enroll_client_config(ca_hash).unwrap()).await
            && let Ok(r) = call(&c, &bad_enroll).await
        {
            assert_eq!(wire_error(r).code, ErrorCode::Unauthorized as i32);
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no free enrollment slot within 10 s");
}

/// Issue 11 item 5: enrollment connections have their own budget. Held enrollment connections
/// outnumbering `ja4.uplink_max_connections` used to lock enrolled agents out; now they fill
/// only `ja4.enroll_max_connections`, an agent still connects and delivers, and the enrollment
/// connection beyond the budget is refused with `BUSY`.
async fn enrollment_budget(backend: Backend) {
    let iso = common::Isolation::new(backend, "uplinkenrollcap").await;
    let mut config = iso.config();
    config.ja4.uplink_max_connections = 2;
    config.ja4.enroll_max_connections = 3;
    let t = TestApp::start_with(iso, config).await;
    let addr = uplink_addr(&t);
    let token = t.join_token().await;
    let ca_hash = JoinToken::parse(&token).unwrap().ca_hash;
    let a = enroll(addr, &token).await;
    // More held enrollment connections than the agents' whole budget.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(hold_enrollment(addr, ca_hash).await);
    }
    let before = refusals(&t);
    let over = refused(addr, hais_svid::enroll_client_config(ca_hash).unwrap()).await;
    assert_eq!(
        over,
        Some(close::BUSY.into()),
        "the budget+1-th enrollment connection"
    );
    assert_eq!(refusals(&t), before + 1);
    // The agent is not locked out.
    let conn = connect_when_free(addr, &a).await;
    let got = ack(call(&conn, &batch_req(1, vec![wire_event(&a.agent_id)]))
        .await
        .unwrap());
    assert_eq!(got.stored, 1);
    // The held ones still work, and a slot frees when one closes.
    assert!(call(&held[0], &heartbeat_req()).await.is_ok());
    held.pop().unwrap().close(0u32.into(), b"bye");
    held.push(hold_enrollment(addr, ca_hash).await);
    drop(held);
    t.finish().await;
}

/// An SVID of the stored CA for `a`'s identity, expiring 1 s after issuance, recorded as the
/// agent's current one (as if it had been its last renewal before an outage), returned once
/// it has expired.
async fn expired_svid(t: &TestApp, a: &Enrolled) -> Svid {
    let ca = stored_ca(t).await;
    let (key, csr) = hais_svid::generate_csr().unwrap();
    let chain = ca
        .sign_csr(&csr, &a.svid.spiffe_id, Duration::from_secs(1))
        .unwrap();
    let (serial, expires_us) = hais_control_plane::services::spire::leaf_facts(&chain[0]).unwrap();
    assert!(
        store(t)
            .renew_agent_svid(&a.agent_id, &serial, expires_us)
            .await
            .unwrap()
    );
    let svid = Svid::from_der(chain.iter().map(|c| c.to_vec()).collect(), key).unwrap();
    // Whole seconds: certificate times have no finer resolution.
    while svid.not_after + time::Duration::seconds(1) >= time::OffsetDateTime::now_utc() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    svid
}

/// The error code a recovery was answered with.
fn refusal(r: Result<(Vec<u8>, wire::Response), CallError>) -> (i32, String) {
    let (_, resp) = r.unwrap_or_else(|e| panic!("no answer: {e:?}"));
    let e = wire_error(resp);
    (e.code, e.message)
}

/// Issue 11 item 6: an SVID that expired during an outage is renewed for the agent that proves
/// it holds its key, within the grace; and refused when superseded, signed by another key,
/// signed for another connection, revoked. Only a new SVID comes back: events need the uplink.
async fn expired_svid_renewal(backend: Backend) {
    let t = TestApp::start(backend, "uplinkrecover").await;
    let addr = uplink_addr(&t);
    let a = enroll(addr, &t.join_token().await).await;
    let old = expired_svid(&t, &a).await;
    // The TLS layer refuses it on the uplink...
    let server = control_plane_id();
    let tls = hais_svid::uplink_client_config(&old, &a.bundle, &server).unwrap();
    assert_eq!(refused(addr, tls).await, None, "refused by TLS");

    // ...another key's signature is refused, and so is a proof made for another connection.
    let stranger = enroll(addr, &t.join_token().await).await;
    let chain: Vec<Vec<u8>> = old.chain.iter().map(|c| c.to_vec()).collect();
    let (code, msg) = refusal(
        recover_raw(addr, &a.bundle, &chain, |binding, csr| {
            stranger
                .svid
                .sign(&wire::recover_signed_message(binding, csr))
                .unwrap()
        })
        .await,
    );
    assert_eq!(code, ErrorCode::Unauthorized as i32, "{msg}");
    assert!(msg.contains("possession"), "{msg}");
    let (code, msg) = refusal(
        recover_raw(addr, &a.bundle, &chain, |_, csr| {
            old.sign(&wire::recover_signed_message(&[7; 32], csr))
                .unwrap()
        })
        .await,
    );
    assert_eq!(code, ErrorCode::Unauthorized as i32, "{msg}");
    // A well-formed proof for a certificate of another CA.
    let foreign_ca = CertificateAuthority::generate("hais.local").unwrap();
    let (fkey, fcsr) = hais_svid::generate_csr().unwrap();
    let fchain = foreign_ca
        .sign_csr(&fcsr, &a.svid.spiffe_id, Duration::from_secs(3600))
        .unwrap();
    let foreign = Svid::from_der(fchain.iter().map(|c| c.to_vec()).collect(), fkey).unwrap();
    let (code, msg) = refusal(recover(addr, &a.bundle, &foreign).await);
    assert_eq!(code, ErrorCode::Unauthorized as i32, "{msg}");

    // The genuine proof: a new SVID for the same identity, which works on the uplink.
    let (key, resp) = recover(addr, &a.bundle, &old).await.unwrap();
    let renewed = match body(resp) {
        response::Body::Svid(s) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!(renewed.agent_id, a.agent_id);
    let back = Enrolled {
        svid: Svid::from_der(renewed.svid_chain_der, key).unwrap(),
        bundle: a.bundle.clone(),
        agent_id: a.agent_id.clone(),
    };
    assert_eq!(back.svid.spiffe_id, a.svid.spiffe_id);
    let conn = uplink(addr, &back).await.unwrap();
    let got = ack(call(&conn, &batch_req(1, vec![wire_event(&a.agent_id)]))
        .await
        .unwrap());
    assert_eq!(got.stored, 1);
    let (_, v) = t
        .call(
            "GET",
            &format!("/api/spire/agents/{}", a.agent_id),
            Some(&t.admin),
            None,
        )
        .await;
    let (new_serial, _) =
        hais_control_plane::services::spire::leaf_facts(&back.svid.chain[0]).unwrap();
    assert_eq!(v["svid_serial"], new_serial.as_str(), "{v}");

    // The expired one is superseded now: it cannot be used again (nor by whoever copied it).
    let (code, msg) = refusal(recover(addr, &a.bundle, &old).await);
    assert_eq!(code, ErrorCode::Unauthorized as i32, "{msg}");
    assert!(msg.contains("latest"), "{msg}");

    // An enrollment connection never delivers events.
    let enroll_conn = connect(
        addr,
        hais_svid::enroll_client_config(hais_svid::ca_hash(&a.bundle.certs[0])).unwrap(),
    )
    .await
    .unwrap();
    let e = wire_error(
        call(&enroll_conn, &batch_req(2, vec![wire_event(&a.agent_id)]))
            .await
            .unwrap(),
    );
    assert_eq!(e.code, ErrorCode::Unauthorized as i32, "{e:?}");

    // Revoked: refused as such.
    let expired_again = expired_svid(&t, &a).await;
    let path = format!("/api/spire/agents/{}/revoke", a.agent_id);
    let (s, v) = t.call("POST", &path, Some(&t.admin), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (code, msg) = refusal(recover(addr, &a.bundle, &expired_again).await);
    assert_eq!(code, ErrorCode::Revoked as i32, "{msg}");
    assert_eq!(store(&t).count_events().await.unwrap(), 1);
    t.finish().await;
}

/// `spire.expired_renewal_grace`: an SVID that expired longer ago is refused, and 0 turns
/// the renewal of expired SVIDs off.
async fn expired_svid_renewal_grace(backend: Backend) {
    for (grace, tag) in [(1, "uplinkgrace1"), (0, "uplinkgrace0")] {
        let iso = common::Isolation::new(backend, tag).await;
        let mut config = iso.config();
        config.spire.expired_renewal_grace =
            hais_control_plane::config::Grace(Duration::from_secs(grace));
        let t = TestApp::start_with(iso, config).await;
        let addr = uplink_addr(&t);
        let a = enroll(addr, &t.join_token().await).await;
        let old = expired_svid(&t, &a).await;
        // Older than the grace, whatever the machine's load.
        while time::OffsetDateTime::now_utc() - old.not_after
            <= time::Duration::seconds(grace as i64 + 1)
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (code, msg) = refusal(recover(addr, &a.bundle, &old).await);
        assert_eq!(code, ErrorCode::Unauthorized as i32, "{msg}");
        let want = if grace == 0 { "disabled" } else { "longer ago" };
        assert!(msg.contains(want), "{msg}");
        assert!(msg.contains("enroll"), "says what to do: {msg}");
        t.finish().await;
    }
}

crate::backend_tests!(
    enrollment_budget,
    expired_svid_renewal,
    expired_svid_renewal_grace,
    slow_request_times_out,
    enroll_and_stream,
    token_rules,
    bad_identities_refused,
    revocation,
    connection_limit,
    token_cli,
    #[ignore = "measurement; run with --ignored --nocapture"]
    throughput,
);
