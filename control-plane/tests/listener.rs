//! The HTTP(S) listener over real sockets on 127.0.0.1: idle, partial-header and slow-body
//! connections are closed or answered by the server after their timeouts; the connection cap
//! keeps `/health` answered under idle and slow-body floods, and pauses accepting (never cutting
//! a request being answered) when every connection is busy; graceful shutdown lets a request
//! finish; the real binary at 1,024 open files survives 1,100 idle connections (the issue's
//! attack). HTTPS with the real `curl` and `openssl`: HTTP/2 and HTTP/1.1 by ALPN, TLS 1.2 and
//! 1.3, HSTS, plain HTTP on the TLS port answered with a JSON error, the 308 redirect listener,
//! certificate reload (a broken replacement ignored), and a key readable by others refused.
//!
//! Nothing asserts how long anything took: tests wait for conditions with generous deadlines.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Backend, Isolation};
use hais_control_plane::config::HumanDuration;
use hais_control_plane::server::ConnMetrics;
use hais_control_plane::{App, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Long enough for anything on a loaded 2-core machine; only reached when a test fails.
const PATIENCE: Duration = Duration::from_secs(90);

/// A control plane serving on a loopback port.
struct Served {
    addr: SocketAddr,
    redirect: Option<SocketAddr>,
    metrics: Arc<ConnMetrics>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    iso: Isolation,
}

impl Served {
    async fn start(tag: &str, tweak: impl FnOnce(&mut Config, &Path)) -> Served {
        let iso = Isolation::new(Backend::Sqlite, tag).await;
        let mut config = iso.config();
        tweak(&mut config, &iso.dir);
        let app = App::start(config).await.expect("control plane starts");
        let metrics = app.state.metrics.http_connections.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let redirect = if app.tls_enabled() {
            Some(TcpListener::bind("127.0.0.1:0").await.unwrap())
        } else {
            None
        };
        let redirect_addr = redirect.as_ref().map(|l| l.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.serve_with_redirect(listener, redirect, async {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
        });
        Served {
            addr,
            redirect: redirect_addr,
            metrics,
            stop: Some(stop),
            task,
            iso,
        }
    }

    async fn finish(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("serve returns after the stop signal")
            .unwrap();
        self.iso.cleanup().await;
    }
}

/// Polls `cond` until it holds (panics with `what` after [`PATIENCE`]).
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the server closes `s` (EOF or reset), answering whatever it sends first.
async fn closed_by_server(s: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the server did not close {what}"),
        }
    }
}

/// Reads one HTTP/1.1 response (head + content-length body) and returns its status.
async fn read_response(s: &mut TcpStream) -> (u16, String) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&data).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if data.len() >= end + 4 + len {
                let status = text[9..12].parse().unwrap();
                return (status, text);
            }
        }
        let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(n > 0, "connection closed before a full response: {text:?}");
        data.extend_from_slice(&buf[..n]);
    }
}

/// `GET /health` on a new connection.
async fn health(addr: SocketAddr) -> u16 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    read_response(&mut s).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    // Header timeout far away: only the idle timeout can close these.
    let srv = Served::start("idle", |c, _| {
        c.http.idle_timeout = HumanDuration::from_secs(1);
        c.http.header_read_timeout = HumanDuration::from_secs(600);
    })
    .await;
    // Connected and silent: hyper has not even seen which protocol it speaks.
    let mut silent = TcpStream::connect(srv.addr).await.unwrap();
    // Keep-alive after one answered request.
    let mut kept = TcpStream::connect(srv.addr).await.unwrap();
    kept.write_all(b"GET /health HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut kept).await.0, 200);
    // An HTTP/2 (h2c) connection: preface and SETTINGS, then no request.
    let mut h2 = TcpStream::connect(srv.addr).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    closed_by_server(&mut silent, "a silent connection").await;
    closed_by_server(&mut kept, "an idle keep-alive connection").await;
    closed_by_server(&mut h2, "an idle HTTP/2 connection").await;
    wait_until("timeouts counted", || {
        srv.metrics.timed_out.load(Ordering::Relaxed) >= 3
    })
    .await;
    srv.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_request_head_is_closed_after_the_header_timeout() {
    // Idle timeout far away: only the header-read timeout can close this one.
    let srv = Served::start("slowloris", |c, _| {
        c.http.idle_timeout = HumanDuration::from_secs(600);
        c.http.header_read_timeout = HumanDuration::from_secs(1);
    })
    .await;
    let mut slow = TcpStream::connect(srv.addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nhost: t\r\nx-slow: ")
        .await
        .unwrap();
    closed_by_server(
        &mut slow,
        "a connection that never finished its request head",
    )
    .await;
    // A complete request is still answered, over HTTP/1.1 and over cleartext HTTP/2 (h2c).
    assert_eq!(health(srv.addr).await, 200);
    let (ok, out, err) = curl(&[
        "--http2-prior-knowledge",
        "-w",
        " version=%{http_version}",
        &format!("http://127.0.0.1:{}/health", srv.addr.port()),
    ])
    .await;
    assert!(ok && out.ends_with("version=2"), "{out}{err}");
    srv.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_flood_over_the_cap_does_not_stop_health_checks() {
    const CAP: usize = 50;
    let srv = Served::start("cap", |c, _| {
        c.http.max_connections = CAP;
        c.http.idle_timeout = HumanDuration::from_secs(600);
        c.http.header_read_timeout = HumanDuration::from_secs(600);
    })
    .await;
    let open = |m: &ConnMetrics| m.open.load(Ordering::Relaxed) as usize;
    let mut first = Vec::new();
    for _ in 0..CAP {
        first.push(TcpStream::connect(srv.addr).await.unwrap());
    }
    wait_until("the cap's worth of idle connections open", || {
        open(&srv.metrics) == CAP
    })
    .await;
    // Twice the cap more: the oldest idle ones make room, the count never exceeds the cap.
    let mut flood = Vec::new();
    for _ in 0..2 * CAP {
        flood.push(TcpStream::connect(srv.addr).await.unwrap());
    }
    for _ in 0..5 {
        assert_eq!(
            health(srv.addr).await,
            200,
            "health answered under the flood"
        );
    }
    wait_until("the flood accepted", || {
        srv.metrics.accepted.load(Ordering::Relaxed) as usize >= 3 * CAP + 5
    })
    .await;
    assert!(
        open(&srv.metrics) <= CAP,
        "open {} > cap",
        open(&srv.metrics)
    );
    assert!(srv.metrics.evicted.load(Ordering::Relaxed) as usize >= 2 * CAP);
    // The first (oldest) connections were the ones closed.
    for (i, s) in first.iter_mut().enumerate() {
        closed_by_server(s, &format!("old idle connection {i}")).await;
    }
    srv.finish().await;
}

/// Starts `POST /api/auth/login` with a body that is not complete: the request is in flight,
/// still receiving its body, until `finish_request` sends the rest.
async fn request_in_flight(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"POST /api/auth/login HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{",
    )
    .await
    .unwrap();
    s
}

async fn finish_request(s: &mut TcpStream) -> u16 {
    s.write_all(b"}").await.unwrap();
    read_response(s).await.0
}

/// An upstream service that reads each request head and answers `200 {}` only when the test
/// adds a permit to the returned semaphore: the gateway's proxied requests stay in flight,
/// fully received, for as long as the test wants.
async fn held_upstream() -> (SocketAddr, Arc<tokio::sync::Semaphore>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let g = g.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                g.acquire().await.unwrap().forget();
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                    .await;
            });
        }
    });
    (addr, gate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cap_of_requests_being_answered_pauses_accepting_and_cuts_none() {
    const CAP: usize = 4;
    let (upstream, gate) = held_upstream().await;
    // A split-mode gateway whose ja4 upstream holds every request until released.
    let srv = Served::start("busy", |c, _| {
        c.service = hais_control_plane::ServiceName::Gateway;
        c.upstreams
            .insert("ja4".into(), format!("http://{upstream}"));
        c.http.max_connections = CAP;
        c.http.idle_timeout = HumanDuration::from_secs(600);
    })
    .await;
    let mut busy = Vec::new();
    for _ in 0..CAP {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET /api/ja4/status HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .unwrap();
        busy.push(s);
    }
    wait_until("every connection has a request in flight", || {
        srv.metrics.requests_in_flight.load(Ordering::Relaxed) as usize == CAP
    })
    .await;
    // Nothing idle to close: the health check waits in the backlog…
    let waiting = tokio::spawn(health(srv.addr));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "accepted beyond the cap");
    // …until one request is answered, making its connection idle (and so closable).
    gate.add_permits(1);
    assert_eq!(
        tokio::time::timeout(PATIENCE, waiting)
            .await
            .unwrap()
            .unwrap(),
        200,
        "health answered once a connection was idle"
    );
    // None was cut: each is answered once released (the first one's answer is waiting in
    // its socket even if its connection was then closed to make room).
    gate.add_permits(CAP);
    for s in &mut busy {
        assert_eq!(read_response(s).await.0, 200);
    }
    assert_eq!(srv.metrics.requests_in_flight.load(Ordering::Relaxed), 0);
    srv.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_flood_over_the_cap_does_not_stop_health_checks() {
    const CAP: usize = 4;
    let srv = Served::start("slowbody", |c, _| {
        c.http.max_connections = CAP;
        c.http.idle_timeout = HumanDuration::from_secs(600);
        c.http.request_body_timeout = HumanDuration::from_secs(600);
    })
    .await;
    let mut slow = Vec::new();
    for _ in 0..CAP {
        slow.push(request_in_flight(srv.addr).await);
    }
    wait_until("every connection is receiving a body", || {
        srv.metrics.requests_in_flight.load(Ordering::Relaxed) as usize == CAP
    })
    .await;
    assert_eq!(health(srv.addr).await, 200);
    // The oldest slow body made room; the others still complete normally.
    closed_by_server(&mut slow[0], "the oldest slow-body connection").await;
    for s in &mut slow[1..] {
        assert!((400..500).contains(&finish_request(s).await));
    }
    srv.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_never_completes_is_answered_after_the_body_timeout() {
    let srv = Served::start("bodytimeout", |c, _| {
        c.http.idle_timeout = HumanDuration::from_secs(600);
        c.http.request_body_timeout = HumanDuration::from_secs(1);
    })
    .await;
    let mut s = request_in_flight(srv.addr).await;
    let (status, text) = read_response(&mut s).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("request_body_timeout"), "{text}");
    srv.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_request_in_flight_finish() {
    let mut srv = Served::start("graceful", |_, _| {}).await;
    let mut s = request_in_flight(srv.addr).await;
    let mut idle = TcpStream::connect(srv.addr).await.unwrap();
    wait_until("both connections open, one request in flight", || {
        srv.metrics.open.load(Ordering::Relaxed) == 2
            && srv.metrics.requests_in_flight.load(Ordering::Relaxed) == 1
    })
    .await;
    let _ = srv.stop.take().unwrap().send(());
    // Idle connections go at once; new ones are refused once the listener is closed.
    closed_by_server(&mut idle, "an idle connection at shutdown").await;
    // The request in flight is answered, then its connection closes.
    let (status, head) = {
        s.write_all(b"}").await.unwrap();
        read_response(&mut s).await
    };
    assert!((400..500).contains(&status), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    tokio::time::timeout(PATIENCE, srv.task)
        .await
        .expect("serve returns once the last connection is gone")
        .unwrap();
    srv.iso.cleanup().await;
}

/// The attack on the real binary: at an open-file limit of 1,024, 1,100 idle
/// connections made every `/health` time out ("accept error: Too many open files"). Now the
/// cap is lowered to fit the limit, the oldest idle connections make room, and SIGTERM still
/// stops the process cleanly with all of them open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_at_1024_open_files_survives_1100_idle_connections() {
    // This test's own 1,100 client sockets.
    hais_control_plane::server::raise_nofile_limit().unwrap();
    let iso = Isolation::new(Backend::Sqlite, "nofile").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let log_path = iso.dir.join("cp.log");
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", "ulimit -n 1024 && exec \"$@\"", "sh"])
        .arg(env!("CARGO_BIN_EXE_hais-control-plane"))
        .args(["--listen", &addr.to_string()])
        .env("HAIS_DATA_DIR", &iso.dir)
        .env("HAIS_ADMIN_PASSWORD", common::ADMIN_PASSWORD)
        .env("HAIS_JA4_UPLINK_BIND", "off")
        // Only the cap can help: nothing times out during the test.
        .env("HAIS_HTTP_IDLE_TIMEOUT", "10m")
        .env("HAIS_HTTP_HEADER_READ_TIMEOUT", "10m")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(mut s) = TcpStream::connect(addr).await
            && s.write_all(b"GET /health HTTP/1.1\r\nhost: t\r\n\r\n")
                .await
                .is_ok()
            && read_response(&mut s).await.0 == 200
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the binary never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut idle = Vec::new();
    for _ in 0..1100 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    for _ in 0..5 {
        assert_eq!(
            health(addr).await,
            200,
            "health answered under 1,100 idle connections"
        );
    }
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let (status, metrics) = read_response(&mut s).await;
    assert_eq!(status, 200);
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics"))
    };
    assert!(value("hais_http_connections_open ") <= 1024 - 256);
    assert!(value("hais_http_connections_total{event=\"evicted_idle\"} ") > 0);
    assert_eq!(value("hais_http_accept_errors_total "), 0);
    let st = Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("stops on SIGTERM with the connections open")
        .unwrap();
    assert!(status.success(), "exit {status}");
    drop(idle);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(log.contains("http.max_connections lowered"), "{log}");
    iso.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// HTTPS

/// Makes a self-signed certificate for 127.0.0.1/localhost with `openssl req`, key mode 0600.
fn make_cert(dir: &Path, name: &str, cn: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", &format!("/CN={cn}")])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    (cert, key)
}

/// Puts `src` in place of `dst` atomically (as certificate managers do).
fn replace(src: &Path, dst: &Path) {
    let tmp = dst.with_extension("tmp");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, dst).unwrap();
}

/// Runs the real curl; returns whether it succeeded, its stdout and its stderr.
async fn curl(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "60"])
        .args(args)
        .output()
        .await
        .expect("curl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `openssl s_client` output (handshake summary + the served certificate's subject).
async fn s_client(addr: SocketAddr, extra: &[&str]) -> String {
    let out = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
        ])
        .args(extra)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("openssl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn served_subject(addr: SocketAddr) -> String {
    s_client(addr, &[])
        .await
        .lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_http2_hsts_redirect_and_certificate_reload() {
    let mut files = None;
    let srv = Served::start("tls", |c, dir| {
        let (cert, key) = make_cert(dir, "served", "hais-first");
        c.tls.cert_file = Some(cert.clone());
        c.tls.key_file = Some(key.clone());
        c.tls.reload_interval = HumanDuration::from_secs(1);
        files = Some((cert, key));
    })
    .await;
    let (cert, key) = files.unwrap();
    let dir = srv.iso.dir.clone();
    let addr = srv.addr;
    let base = format!("https://localhost:{}", addr.port());
    let resolve = format!("localhost:{}:127.0.0.1", addr.port());
    let first_ca = dir.join("first-ca.pem");
    std::fs::copy(&cert, &first_ca).unwrap();
    let cafile = first_ca.to_str().unwrap();

    // HTTP/2 by ALPN, HSTS on the response.
    let (ok, out, err) = curl(&[
        "--cacert",
        cafile,
        "--resolve",
        &resolve,
        "--http2",
        "-D",
        "-",
        "-w",
        "\nversion=%{http_version}",
        &format!("{base}/health"),
    ])
    .await;
    assert!(ok && out.contains("version=2"), "{out}{err}");
    assert!(out.starts_with("HTTP/2 200"), "{out}{err}");
    assert!(
        out.to_ascii_lowercase()
            .contains("strict-transport-security: max-age=31536000"),
        "{out}"
    );
    // HTTP/1.1 when asked, HSTS too; API errors still JSON.
    let (ok, out, err) = curl(&[
        "--cacert",
        cafile,
        "--resolve",
        &resolve,
        "--http1.1",
        "-D",
        "-",
        "-w",
        "\nversion=%{http_version}",
        &format!("{base}/api/nowhere"),
    ])
    .await;
    assert!(ok && out.contains("version=1.1"), "{out}{err}");
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("strict-transport-security"),
        "{out}"
    );
    assert!(out.contains("\"code\":\"not_found\""), "{out}");

    // openssl: ALPN h2 over TLS 1.3; TLS 1.2 with http/1.1.
    let tls13 = s_client(addr, &["-alpn", "h2,http/1.1"]).await;
    assert!(tls13.contains("ALPN protocol: h2"), "{tls13}");
    assert!(tls13.contains("TLSv1.3"), "{tls13}");
    let tls12 = s_client(addr, &["-tls1_2", "-alpn", "http/1.1"]).await;
    assert!(tls12.contains("Protocol  : TLSv1.2"), "{tls12}");
    assert!(tls12.contains("ALPN protocol: http/1.1"), "{tls12}");

    // Plain HTTP on the TLS port: a clear 400 JSON answer, not a hang or garbage.
    let (_, out, err) = curl(&["-i", &format!("http://127.0.0.1:{}/health", addr.port())]).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}{err}");
    assert!(out.contains("\"code\":\"https_required\""), "{out}");

    // The redirect listener: 308 to the same path and query on the HTTPS port.
    let r = srv.redirect.unwrap();
    let (ok, out, err) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        &format!("http://localhost:{}/api/ja4/fingerprints?limit=1", r.port()),
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(
        out,
        format!(
            "308 https://localhost:{}/api/ja4/fingerprints?limit=1",
            addr.port()
        )
    );
    // Following it lands on the API.
    let (ok, out, err) = curl(&[
        "-L",
        "--cacert",
        cafile,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://localhost:{}/health", r.port()),
    ])
    .await;
    assert!(ok && out == "200", "{out}{err}");

    // Reload: a new certificate replaces the old one for the next handshakes.
    assert!(served_subject(addr).await.contains("hais-first"));
    let (cert2, key2) = make_cert(&dir, "second", "hais-second");
    replace(&key2, &key);
    replace(&cert2, &cert);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let subject = served_subject(addr).await;
        if subject.contains("hais-second") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reloaded: {subject}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, _, err) = curl(&[
        "--cacert",
        cert2.to_str().unwrap(),
        "--resolve",
        &resolve,
        &format!("{base}/health"),
    ])
    .await;
    assert!(ok, "the new certificate verifies: {err}");

    // A broken replacement (a certificate whose key is not in the key file) is refused and
    // the second pair stays in service; so is garbage.
    let failures = srv.metrics.tls_reload_failures.load(Ordering::Relaxed);
    let (cert3, _) = make_cert(&dir, "third", "hais-third");
    replace(&cert3, &cert);
    wait_until("the mismatched pair looked at", || {
        srv.metrics.tls_reload_failures.load(Ordering::Relaxed) > failures
    })
    .await;
    assert!(served_subject(addr).await.contains("hais-second"));
    std::fs::write(&cert, "not a certificate").unwrap();
    wait_until("the garbage looked at", || {
        srv.metrics.tls_reload_failures.load(Ordering::Relaxed) > failures + 1
    })
    .await;
    assert!(served_subject(addr).await.contains("hais-second"));
    assert_eq!(srv.metrics.tls_reloads.load(Ordering::Relaxed), 1);
    srv.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_others_can_read_is_refused_at_start() {
    let iso = Isolation::new(Backend::Sqlite, "tlsperm").await;
    let (cert, key) = make_cert(&iso.dir, "k", "hais-perm");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut config = iso.config();
    config.tls.cert_file = Some(cert);
    config.tls.key_file = Some(key.clone());
    let e = App::start(config.clone()).await.unwrap_err().to_string();
    assert!(
        e.contains("read by other users") && e.contains("chmod 600"),
        "{e}"
    );
    // Group-readable is only a warning (a certificate manager's group).
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let app = App::start(config).await.expect("starts with a 0640 key");
    assert!(app.tls_enabled());
    app.shutdown().await;
    iso.cleanup().await;
}
