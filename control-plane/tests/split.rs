//! Split mode with the real binary: a gateway, the ja4 service and the correlation service in
//! three processes, sharing PostgreSQL and Redis. Checks that the gateway routes and
//! authenticates, that the services see each other's bus messages through Redis (live fan-out
//! and the durable work queue), that inter-service calls use service tokens, and that SIGTERM
//! shuts each process down cleanly. A second test runs spire and ja4 apart: enrollment at the
//! ja4 process's QUIC port with a token from the spire process, revocation crossing over Redis.

mod common;

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use common::{Backend, Isolation, event, free_port, pg_url, redis_url};
use hais_shared::fingerprint::Method;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// Kills the process if the test fails before stopping it.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Proc {
    /// SIGTERM, then wait for a clean exit.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let st = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(st.success());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{} exited with {status}", self.name);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop on SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(name: &'static str, iso: &Isolation, port: u16, extra_env: &[(String, String)]) -> Proc {
    spawn_as(name, name, iso, port, extra_env)
}

/// Like [`spawn`], for a replica: `label` names its log and its `Proc`.
fn spawn_as(
    service: &str,
    label: &'static str,
    iso: &Isolation,
    port: u16,
    extra_env: &[(String, String)],
) -> Proc {
    let log = std::fs::File::create(iso.dir.join(format!("{label}.log"))).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hais-control-plane"));
    cmd.args([
        "--service",
        service,
        "--listen",
        &format!("127.0.0.1:{port}"),
    ])
    .args([
        "--database-url",
        &pg_url(),
        "--redis-url",
        &redis_url(),
        "--log-format",
        "json",
    ])
    .env("HAIS_DATABASE_SCHEMA", iso.schema.as_ref().unwrap())
    .env("HAIS_REDIS_PREFIX", iso.redis_prefix.as_ref().unwrap())
    .env("HAIS_DATA_DIR", &iso.dir)
    .env("HAIS_JA4_UPLINK_BIND", "127.0.0.1:0")
    .env("HAIS_SHUTDOWN_GRACE_SECS", "5")
    .env_remove("HAIS_JWT_SECRET")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(log);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    Proc {
        name: label,
        child: cmd.spawn().unwrap(),
    }
}

type Http = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn call(
    http: &Http,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut b = axum::http::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let body = match body {
        Some(v) => {
            b = b.header("content-type", "application/json");
            Full::new(Bytes::from(serde_json::to_vec(&v).unwrap()))
        }
        None => Full::new(Bytes::new()),
    };
    let resp = http.request(b.body(body).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn wait_healthy(http: &Http, proc: &mut Proc, port: u16, iso: &Isolation) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(st) = proc.child.try_wait().unwrap() {
            let log = std::fs::read_to_string(iso.dir.join(format!("{}.log", proc.name)))
                .unwrap_or_default();
            panic!("{} exited early ({st}):\n{log}", proc.name);
        }
        let url = format!("http://127.0.0.1:{port}/health");
        let req = axum::http::Request::get(&url)
            .body(Full::new(Bytes::new()))
            .unwrap();
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(1), http.request(req)).await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never became healthy",
            proc.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts a gateway on `port` proxying to the given services (`("JA4", port)`; the others point
/// at a closed port), waits for it, and logs in as admin. Returns the process, its URL and an
/// admin token.
async fn start_gateway(
    http: &Http,
    iso: &Isolation,
    port: u16,
    upstreams: &[(&str, u16)],
) -> (Proc, String, String) {
    let mut env: Vec<(String, String)> =
        vec![("HAIS_ADMIN_PASSWORD".into(), "split-admin-pass".into())];
    for s in [
        "JA4",
        "SPIRE",
        "CORRELATION",
        "IDENTITY",
        "POLICY",
        "ALERT",
        "THREAT",
    ] {
        let url = match upstreams.iter().find(|(name, _)| *name == s) {
            Some((_, p)) => format!("http://127.0.0.1:{p}"),
            None => "http://127.0.0.1:9".into(),
        };
        env.push((format!("HAIS_UPSTREAM_{s}"), url));
    }
    let mut gw = spawn("gateway", iso, port, &env);
    wait_healthy(http, &mut gw, port, iso).await;
    let url = format!("http://127.0.0.1:{port}");
    let (s, v) = call(
        http,
        "POST",
        &format!("{url}/api/auth/login"),
        None,
        Some(json!({"username": "admin", "password": "split-admin-pass"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let token = v["access_token"].as_str().unwrap().to_owned();
    (gw, url, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_services_share_events_through_redis() {
    let iso = Isolation::new(Backend::Postgres, "split").await;
    let http: Http = Client::builder(TokioExecutor::new()).build_http();
    let (p_ja4, p_corr, p_gw) = (free_port(), free_port(), free_port());

    // ja4 first: it creates the schema and the shared signing secret.
    let mut ja4 = spawn("ja4", &iso, p_ja4, &[]);
    wait_healthy(&http, &mut ja4, p_ja4, &iso).await;
    let mut corr = spawn("correlation", &iso, p_corr, &[]);
    wait_healthy(&http, &mut corr, p_corr, &iso).await;
    let (gw, gw_url, token) = start_gateway(
        &http,
        &iso,
        p_gw,
        &[("JA4", p_ja4), ("CORRELATION", p_corr)],
    )
    .await;

    // Ingest through the gateway (proxied to the ja4 process).
    let events: Vec<_> = (0..20)
        .map(|i| {
            event(
                "agent-s",
                "split-host",
                Some("split.example"),
                &[(Method::Ja4, "t13d1516h2_8daaf6152771_e5627efa2ab1")],
                -i,
            )
        })
        .collect();
    let (s, v) = call(
        &http,
        "POST",
        &format!("{gw_url}/api/ja4/ingest"),
        Some(&token),
        Some(json!({"events": events})),
    )
    .await;
    assert_eq!(
        (s, v.clone()),
        (200, json!({"stored": 20, "duplicates": 0})),
        "{v}"
    );
    let (s, v) = call(
        &http,
        "GET",
        &format!("{gw_url}/api/ja4/fingerprints?host=split-host"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["items"][0]["count"], 20);
    // Auth is enforced by the service process itself too, and errors pass through as JSON.
    let (s, v) = call(
        &http,
        "GET",
        &format!("http://127.0.0.1:{p_ja4}/api/ja4/fingerprints"),
        None,
        None,
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (s, v) = call(
        &http,
        "GET",
        &format!("{gw_url}/api/ja4/fingerprints?limit=5000"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_request"))
    );

    // The correlation process got the events through Redis: live and via its work queue.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let (s, v) = call(
            &http,
            "GET",
            &format!("{gw_url}/api/correlation/status"),
            Some(&token),
            None,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        if v["bus"]["work_events"] == 20
            && v["bus"]["seen"]["fingerprint.events"].as_u64() >= Some(1)
        {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "correlation never saw the events: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status["status"], "ok");
    assert_eq!(status["bus_backend"], "redis");
    assert!(
        status["bus"]["origins"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o.as_str().unwrap().starts_with("ja4/")),
        "{status}"
    );
    // And the ja4 process saw the correlation process announce itself.
    let (_, v) = call(
        &http,
        "GET",
        &format!("{gw_url}/api/ja4/status"),
        Some(&token),
        None,
    )
    .await;
    assert!(
        v["bus"]["origins"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o.as_str().unwrap().starts_with("correlation/")),
        "{v}"
    );

    // The gateway asks each service for its status with its own service token.
    let (s, v) = call(
        &http,
        "GET",
        &format!("{gw_url}/api/gateway/services"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let by_name = |n: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|x| x["service"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(by_name("ja4")["reachable"], true, "{v}");
    assert_eq!(by_name("correlation")["reachable"], true, "{v}");
    assert_eq!(by_name("spire")["reachable"], false, "{v}");
    // A service that is down gives a 502 JSON through the gateway.
    let (s, v) = call(
        &http,
        "GET",
        &format!("{gw_url}/api/spire/status"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!((s, v["error"]["code"].as_str()), (502, Some("bad_gateway")));

    gw.stop();
    corr.stop();
    ja4.stop();
    iso.cleanup().await;
}

/// Spire and ja4 in separate processes sharing PostgreSQL and Redis: a join token made through
/// the gateway (by the spire process) enrolls an agent at the ja4 process's QUIC port (both use
/// the CA stored in the database), events and heartbeats flow, the fleet view in the spire
/// process shows them, and a revocation there closes the agent's live connection in the ja4
/// process through the bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_spire_enrollment_and_revocation() {
    use common::quic::{self, ack, batch_req, wire_event};
    let iso = Isolation::new(Backend::Postgres, "splitspire").await;
    let http: Http = Client::builder(TokioExecutor::new()).build_http();
    let (p_ja4, p_spire, p_gw, udp) = (free_port(), free_port(), free_port(), free_udp_port());
    let uplink: std::net::SocketAddr = format!("127.0.0.1:{udp}").parse().unwrap();

    let mut ja4 = spawn(
        "ja4",
        &iso,
        p_ja4,
        &[("HAIS_JA4_UPLINK_BIND".into(), uplink.to_string())],
    );
    wait_healthy(&http, &mut ja4, p_ja4, &iso).await;
    let mut spire = spawn("spire", &iso, p_spire, &[]);
    wait_healthy(&http, &mut spire, p_spire, &iso).await;
    let (gw, gw_url, admin) =
        start_gateway(&http, &iso, p_gw, &[("JA4", p_ja4), ("SPIRE", p_spire)]).await;

    let (s, v) = call(
        &http,
        "POST",
        &format!("{gw_url}/api/spire/tokens"),
        Some(&admin),
        Some(json!({"description": "split"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let a = quic::enroll(uplink, v["token"].as_str().unwrap()).await;
    let live = quic::uplink(uplink, &a).await.unwrap();
    let events: Vec<_> = (0..5).map(|_| wire_event(&a.agent_id)).collect();
    let got = ack(quic::call(&live, &batch_req(1, events)).await.unwrap());
    assert_eq!((got.stored, got.duplicates), (5, 0));
    quic::call(&live, &quic::heartbeat_req()).await.unwrap();

    let agent_url = format!("{gw_url}/api/spire/agents/{}", a.agent_id);
    let (s, v) = call(&http, "GET", &agent_url, Some(&admin), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "online", "{v}");
    assert_eq!(v["heartbeat"]["packets"], 1000, "{v}");

    let (s, v) = call(
        &http,
        "POST",
        &format!("{agent_url}/revoke"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("revoked")), "{v}");
    let reason = tokio::time::timeout(Duration::from_secs(8), live.closed())
        .await
        .expect("the ja4 process closes the revoked agent's connection");
    assert_eq!(
        quic::app_code(&reason),
        Some(hais_control_plane::services::ja4::uplink::close::REVOKED.into()),
        "{reason:?}"
    );

    gw.stop();
    spire.stop();
    ja4.stop();
    iso.cleanup().await;
}

/// A gauge or counter of `/metrics` for the correlation consumer, if the process reports it
/// (a scrape that fails, e.g. times out on a loaded machine, is tried again up to 10 times).
async fn consumer_metric(http: &Http, port: u16, name: &str) -> Option<f64> {
    for _ in 0..10 {
        if let Some(v) = scrape_consumer_metric(http, port, name).await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

async fn scrape_consumer_metric(http: &Http, port: u16, name: &str) -> Option<f64> {
    let req = axum::http::Request::get(format!("http://127.0.0.1:{port}/metrics"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), http.request(req))
        .await
        .ok()?
        .ok()?;
    let text = resp.into_body().collect().await.ok()?.to_bytes();
    let prefix = format!("{name}{{group=\"correlation\",topic=\"fingerprint.events\"}} ");
    String::from_utf8_lossy(&text)
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.trim().parse().ok()))
}

/// Events of `identities` distinct workloads, `n` in all.
fn replica_events(
    n: usize,
    identities: usize,
    round: usize,
) -> Vec<hais_shared::event::FingerprintEvent> {
    (0..n)
        .map(|i| {
            let mut e = event(
                "agent-r",
                &format!("host-{}", i % identities),
                None,
                &[(Method::Ja4, "t13d1516h2_8daaf6152771_b186095e22b6")],
                0,
            );
            e.workload.exe = Some(format!("/usr/bin/app{round}"));
            e
        })
        .collect()
}

/// Two correlation replicas in two processes share 100,000 events through the durable bus;
/// one is killed with SIGKILL in the middle. The survivor takes its partitions over and every
/// event's effect (the group's committed count, committed with the cursor) is applied exactly
/// once: not one lost, not one twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_bus_exactly_once_and_survive_a_kill() {
    let iso = Isolation::new(Backend::Postgres, "replicas").await;
    let http: Http = Client::builder(TokioExecutor::new()).build_http();
    let c = iso.config();
    let store =
        hais_control_plane::store::open(&c.database_url(), None, c.database_schema.as_deref(), 4)
            .await
            .unwrap();
    let env = vec![("HAIS_BUS_LEASE_TTL".to_owned(), "5s".to_owned())];
    let (pa, pb) = (free_port(), free_port());
    let mut a = spawn_as("correlation", "correlation-a", &iso, pa, &env);
    let mut b = spawn_as("correlation", "correlation-b", &iso, pb, &env);
    wait_healthy(&http, &mut a, pa, &iso).await;
    wait_healthy(&http, &mut b, pb, &iso).await;

    // Both replicas take a share of the partitions.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pa_parts = consumer_metric(&http, pa, "hais_bus_consumer_partitions").await;
        let pb_parts = consumer_metric(&http, pb, "hais_bus_consumer_partitions").await;
        if let (Some(x), Some(y)) = (pa_parts, pb_parts)
            && x > 0.0
            && y > 0.0
            && x + y == 16.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas never shared the partitions: {pa_parts:?} {pb_parts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let first = replica_events(50_000, 400, 1);
    for chunk in first.chunks(1000) {
        store.ingest(chunk).await.unwrap();
    }
    let position = || async {
        let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1000;
        store
            .bus_positions(now, 5_000_000)
            .await
            .unwrap()
            .into_iter()
            .find(|p| p.group == "correlation")
            .unwrap_or_default()
    };
    // Kill one replica while the group is in the middle of the work.
    let deadline = Instant::now() + Duration::from_secs(120);
    while position().await.handled < 10_000 {
        assert!(
            Instant::now() < deadline,
            "correlation never started: {:?}",
            position().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let handled_by_a = consumer_metric(&http, pa, "hais_bus_consumer_handled_total").await;
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let killed = Instant::now();
    let second = replica_events(50_000, 400, 2);
    for chunk in second.chunks(1000) {
        store.ingest(chunk).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut took_over = None;
    let done = loop {
        if took_over.is_none()
            && consumer_metric(&http, pb, "hais_bus_consumer_partitions").await == Some(16.0)
        {
            took_over = Some(killed.elapsed());
        }
        let p = position().await;
        if p.handled >= 100_000 && p.lag_items == 0 && took_over.is_some() {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "the survivor never finished: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "replica a handled {handled_by_a:?} before SIGKILL; b owned every partition {:?} after it",
        took_over.unwrap()
    );
    assert_eq!(
        done.handled, 100_000,
        "each event's effect exactly once: {done:?}"
    );
    assert_eq!(done.dead_letters, 0);
    assert!(handled_by_a.unwrap_or(0.0) > 0.0, "replica a did its share");
    let handled_by_b = consumer_metric(&http, pb, "hais_bus_consumer_handled_total").await;
    assert!(handled_by_b.unwrap_or(0.0) > 0.0, "replica b did its share");
    b.stop();
    let _ = store.close().await;
    iso.cleanup().await;
}
