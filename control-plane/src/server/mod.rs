//! The HTTP(S) serving loop: hyper's HTTP/1 + HTTP/2 connection builder serving the axum
//! router, with the bounds `axum::serve` lacks, so that idle or slow peers cannot take the API
//! down by holding file descriptors.
//!
//! * **Connection cap** (`http.max_connections`, lowered to fit `RLIMIT_NOFILE`): shared by
//!   every HTTP listener of the process. When it is reached, a new connection is taken only by
//!   closing the *oldest idle* one (no request in flight: connected and silent, half-way
//!   through a request head, between keep-alive requests, or in a TLS handshake). An idle
//!   flood therefore only churns its own connections, and a client that sends its request at
//!   once — a health check — is still served. With nothing idle, the oldest connection whose
//!   requests are all still *receiving their bodies* goes instead (a slow-body flood is no
//!   better). Only when every connection has a fully received request being answered does
//!   accepting pause (new connections wait in the kernel's backlog) until one finishes:
//!   requests being answered are never cut to make room.
//! * **Request-body timeout** (`http.request_body_timeout`): a body must arrive within it of
//!   its head; a late one fails, which the handlers answer with a 400.
//! * **Header-read timeout** (`http.header_read_timeout`): the TLS handshake, and on HTTP/1
//!   every request head, must arrive within it (hyper starts that timer whenever it waits for a
//!   head, so it also bounds the wait for the next keep-alive request).
//! * **Idle timeout** (`http.idle_timeout`): a connection with no request in flight for that
//!   long is closed, whatever the protocol (also before hyper has seen enough bytes to know
//!   whether it speaks HTTP/1 or HTTP/2).
//! * **HTTP/2**: PINGs every `http.h2_keepalive_interval` (a peer silent 20 s later is
//!   dropped), at most `http.h2_max_concurrent_streams` requests in flight per connection.
//! * **Accept errors** such as EMFILE: the oldest idle connection is closed to free a
//!   descriptor and accepting backs off (100 ms, doubling up to 1 s) instead of spinning.
//! * **Graceful shutdown**: accepting stops, every connection is told to finish (HTTP/1:
//!   close after the response in progress; HTTP/2: GOAWAY), idle ones are closed, and
//!   [`Server::serve`] returns once every connection is gone; the caller bounds that wait.

pub mod redirect;
pub mod tls;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::http::{HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tower::ServiceExt;

use crate::config::HttpConfig;

/// Descriptors kept out of the connection budget for the store's pool, the uplink, upstream
/// connections, certificate reloads and logs.
pub const FD_RESERVE: u64 = 256;

/// How long an HTTP/2 peer has to answer a keep-alive PING.
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The `Strict-Transport-Security` value sent on every response over TLS: one year, this host
/// only (sub-domains may be other services that do not speak HTTPS).
pub const HSTS: &str = "max-age=31536000";

/// Counters of the HTTP listeners, shown on `/metrics`.
#[derive(Debug, Default)]
pub struct ConnMetrics {
    pub open: AtomicU64,
    pub accepted: AtomicU64,
    /// Idle connections closed to make room under the cap (or to free a descriptor).
    pub evicted: AtomicU64,
    /// Connections closed by the idle or header-read timeout.
    pub timed_out: AtomicU64,
    /// Requests whose response is not finished yet, over all connections.
    pub requests_in_flight: AtomicU64,
    pub accept_errors: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    /// Certificate/key pairs swapped in after their files changed.
    pub tls_reloads: AtomicU64,
    /// Changed files that did not load (the previous pair stayed in service).
    pub tls_reload_failures: AtomicU64,
}

impl ConnMetrics {
    /// Appends the counters in the Prometheus text format.
    pub fn render(&self, o: &mut String) {
        use std::fmt::Write as _;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            o,
            "# HELP hais_http_connections_open HTTP(S) connections open.\n# TYPE hais_http_connections_open gauge\nhais_http_connections_open {}",
            g(&self.open)
        );
        let _ = writeln!(
            o,
            "# HELP hais_http_connections_total HTTP(S) connections accepted, and closed early by reason.\n# TYPE hais_http_connections_total counter"
        );
        for (what, v) in [
            ("accepted", &self.accepted),
            ("evicted_idle", &self.evicted),
            ("timed_out", &self.timed_out),
            ("tls_handshake_failed", &self.tls_handshake_failures),
        ] {
            let _ = writeln!(
                o,
                "hais_http_connections_total{{event=\"{what}\"}} {}",
                g(v)
            );
        }
        let _ = writeln!(
            o,
            "# HELP hais_http_requests_in_flight HTTP requests being answered.\n# TYPE hais_http_requests_in_flight gauge\nhais_http_requests_in_flight {}",
            g(&self.requests_in_flight)
        );
        let _ = writeln!(
            o,
            "# HELP hais_tls_reloads_total Certificate reloads after the files changed.\n# TYPE hais_tls_reloads_total counter\nhais_tls_reloads_total{{result=\"ok\"}} {}\nhais_tls_reloads_total{{result=\"failed\"}} {}",
            g(&self.tls_reloads),
            g(&self.tls_reload_failures)
        );
        let _ = writeln!(
            o,
            "# HELP hais_http_accept_errors_total Failed accept() calls (e.g. out of file descriptors).\n# TYPE hais_http_accept_errors_total counter\nhais_http_accept_errors_total {}",
            g(&self.accept_errors)
        );
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (systemd and most shells start services
/// at 1,024, which a few hundred idle clients exhaust). Returns the resulting soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        let before = l.current;
        l.current = l.maximum;
        setrlimit(Resource::Nofile, l)?;
        tracing::info!(
            before = ?before,
            now = ?l.current,
            "raised the open-file limit to the hard limit"
        );
    }
    Ok(l.current.unwrap_or(u64::MAX))
}

/// The connection cap actually applied: the configured one, lowered so that connections plus
/// [`FD_RESERVE`] fit in the soft open-file limit.
pub fn effective_max_connections(configured: usize) -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    let budget = if soft > 2 * FD_RESERVE {
        soft - FD_RESERVE
    } else {
        soft / 2
    };
    let cap = configured
        .min(usize::try_from(budget).unwrap_or(usize::MAX))
        .max(1);
    if cap < configured {
        tracing::warn!(
            configured,
            applied = cap,
            open_file_limit = soft,
            "http.max_connections lowered to fit the open-file limit (raise LimitNOFILE / ulimit -n)"
        );
    }
    cap
}

/// One live connection, as the cap and the timeouts see it.
#[derive(Debug)]
struct Conn {
    id: u64,
    /// Requests handed to the router whose response body has not been sent or dropped yet.
    in_flight: AtomicUsize,
    /// Requests in flight whose body is still arriving: nothing is being done for them yet,
    /// so under the cap such a connection may be closed like an idle one.
    receiving: AtomicUsize,
    /// When `in_flight` last dropped to zero (or the connection was accepted), in ms since
    /// the registry's epoch.
    idle_since_ms: AtomicU64,
    /// Set when the cap closes this connection to make room.
    evict: Notify,
    evicted: AtomicBool,
}

impl Conn {
    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    fn only_receiving(&self) -> bool {
        let n = self.in_flight.load(Ordering::Acquire);
        n > 0 && self.receiving.load(Ordering::Acquire) >= n
    }
}

/// Every live connection of the process's HTTP listeners, oldest first.
#[derive(Debug)]
struct Registry {
    epoch: Instant,
    cap: usize,
    conns: Mutex<BTreeMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    /// Bumped when a connection closes or becomes idle: accept loops waiting for room, and
    /// shutdown waiting for the last connection, look again (a watch wakes every waiter and
    /// loses no change).
    changed: watch::Sender<u64>,
    metrics: Arc<ConnMetrics>,
}

impl Registry {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a new connection can be taken now (room, or an idle one to close for it).
    fn has_room(&self) -> bool {
        let conns = self.lock();
        conns.len() < self.cap
            || conns
                .values()
                .any(|c| c.in_flight.load(Ordering::Acquire) == 0)
    }

    /// Registers a new connection if there is room, closing the oldest idle one when full.
    fn admit(self: &Arc<Self>) -> Option<Arc<Conn>> {
        let mut conns = self.lock();
        if conns.len() >= self.cap && !self.evict_oldest_idle(&mut conns) {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            id,
            in_flight: AtomicUsize::new(0),
            receiving: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(self.now_ms()),
            evict: Notify::new(),
            evicted: AtomicBool::new(false),
        });
        conns.insert(id, conn.clone());
        self.metrics
            .open
            .store(conns.len() as u64, Ordering::Relaxed);
        Some(conn)
    }

    /// Closes the oldest connection without a request in flight or, when there is none, the
    /// oldest whose requests are all still sending their bodies (a slow-body flood must not
    /// hold the cap either). It leaves the registry at once (its socket closes as soon as its
    /// task runs), so the caller may take its place.
    fn evict_oldest_idle(&self, conns: &mut BTreeMap<u64, Arc<Conn>>) -> bool {
        let victim = conns.values().find(|c| c.is_idle());
        let Some(id) = victim
            .or_else(|| conns.values().find(|c| c.only_receiving()))
            .map(|c| c.id)
        else {
            return false;
        };
        if let Some(c) = conns.remove(&id) {
            self.metrics
                .open
                .store(conns.len() as u64, Ordering::Relaxed);
            c.evicted.store(true, Ordering::Release);
            c.evict.notify_one();
            self.metrics.evicted.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(conn = id, "closing the oldest idle connection to make room");
        }
        true
    }

    fn remove(&self, id: u64) {
        let mut conns = self.lock();
        conns.remove(&id);
        self.metrics
            .open
            .store(conns.len() as u64, Ordering::Relaxed);
        drop(conns);
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// Removes a connection from the registry when its task ends, however it ends.
struct Registered {
    conn: Arc<Conn>,
    registry: Arc<Registry>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.remove(self.conn.id);
    }
}

/// One request in flight on a connection; dropped with the response body (sent, or abandoned
/// when the connection broke), which makes the connection idle again.
struct InFlight {
    conn: Arc<Conn>,
    registry: Arc<Registry>,
}

impl InFlight {
    fn enter(conn: &Arc<Conn>, registry: &Arc<Registry>) -> InFlight {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        registry
            .metrics
            .requests_in_flight
            .fetch_add(1, Ordering::Relaxed);
        InFlight {
            conn: conn.clone(),
            registry: registry.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.registry
            .metrics
            .requests_in_flight
            .fetch_sub(1, Ordering::Relaxed);
        self.conn
            .idle_since_ms
            .store(self.registry.now_ms(), Ordering::Release);
        if self.conn.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.registry
                .changed
                .send_modify(|g| *g = g.wrapping_add(1));
        }
    }
}

/// A response body that keeps its request counted as in flight until it is finished.
struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A request body still arriving; counted in [`Conn::receiving`] until it ends (or is
/// dropped), which makes its connection evictable under the cap.
struct Receiving {
    conn: Arc<Conn>,
    registry: Arc<Registry>,
}

impl Receiving {
    fn enter(conn: &Arc<Conn>, registry: &Arc<Registry>) -> Receiving {
        conn.receiving.fetch_add(1, Ordering::AcqRel);
        registry.changed.send_modify(|g| *g = g.wrapping_add(1));
        Receiving {
            conn: conn.clone(),
            registry: registry.clone(),
        }
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.conn.receiving.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a request body was cut short by the server.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within http.request_body_timeout")]
pub struct BodyTimeout;

/// A request body that must arrive within `http.request_body_timeout` of the request head.
struct TimedBody {
    inner: Incoming,
    /// `None` once the body is complete (or failed).
    receiving: Option<(Receiving, Pin<Box<tokio::time::Sleep>>)>,
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let Some((receiving, deadline)) = &mut this.receiving else {
            return polled.map_err(Into::into);
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if this.inner.is_end_stream() {
                    this.receiving = None;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(end) => {
                this.receiving = None;
                Poll::Ready(end.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                if deadline.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                receiving
                    .registry
                    .metrics
                    .timed_out
                    .fetch_add(1, Ordering::Relaxed);
                this.receiving = None;
                Poll::Ready(Some(Err(Box::new(BodyTimeout))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The tower service of one connection: the router, with in-flight accounting and HSTS.
#[derive(Clone)]
struct ConnService {
    router: Router,
    /// The TCP peer, given to handlers as `ConnectInfo` (login throttling keys on it).
    peer: std::net::SocketAddr,
    conn: Arc<Conn>,
    registry: Arc<Registry>,
    hsts: Option<HeaderValue>,
    body_timeout: Duration,
}

impl tower::Service<Request<Incoming>> for ConnService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::enter(&self.conn, &self.registry);
        let body = req.body();
        let receiving = (!body.is_end_stream()).then(|| {
            (
                Receiving::enter(&self.conn, &self.registry),
                Box::pin(tokio::time::sleep(self.body_timeout)),
            )
        });
        let mut req = req.map(|inner| Body::new(TimedBody { inner, receiving }));
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer));
        let router = self.router.clone();
        let hsts = self.hsts.clone();
        Box::pin(async move {
            let Ok(mut resp) = router.oneshot(req).await;
            if let Some(v) = hsts {
                resp.headers_mut()
                    .insert(header::STRICT_TRANSPORT_SECURITY, v);
            }
            Ok(resp.map(|inner| {
                Body::new(TrackedBody {
                    inner,
                    _in_flight: in_flight,
                })
            }))
        })
    }
}

/// The HTTP server of a process: one registry (so one cap) for all of its listeners.
#[derive(Debug, Clone)]
pub struct Server {
    registry: Arc<Registry>,
    config: HttpConfig,
    stop: watch::Receiver<bool>,
}

impl Server {
    /// A server whose listeners stop accepting, and whose connections wind down, when `stop`
    /// turns true. `max_connections` is the cap actually applied (see
    /// [`effective_max_connections`]).
    pub fn new(
        config: HttpConfig,
        max_connections: usize,
        metrics: Arc<ConnMetrics>,
        stop: watch::Receiver<bool>,
    ) -> Server {
        Server {
            registry: Arc::new(Registry {
                epoch: Instant::now(),
                cap: max_connections.max(1),
                conns: Mutex::new(BTreeMap::new()),
                next_id: AtomicU64::new(0),
                changed: watch::channel(0).0,
                metrics,
            }),
            config,
            stop,
        }
    }

    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut b = auto::Builder::new(TokioExecutor::new());
        b.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.config.header_read_timeout.0)
            .keep_alive(true);
        b.http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(self.config.h2_keepalive_interval.0))
            .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
            .max_concurrent_streams(self.config.h2_max_concurrent_streams);
        b
    }

    /// Serves `router` on `listener` (over TLS when `tls` is given, with HSTS on every
    /// response) until the stop signal, then waits for this server's connections to finish.
    pub async fn serve(
        &self,
        listener: TcpListener,
        router: Router,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> io::Result<()> {
        let builder = Arc::new(self.builder());
        let hsts = tls.as_ref().map(|_| HeaderValue::from_static(HSTS));
        let mut stop = self.stop.clone();
        let mut backoff = Duration::ZERO;
        let metrics = self.registry.metrics.clone();
        let mut changes = self.registry.changed.subscribe();
        'accept: loop {
            // Full and nothing idle to close: leave new connections in the backlog until a
            // connection closes or a request finishes.
            loop {
                changes.borrow_and_update();
                if self.registry.has_room() {
                    break;
                }
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = stop.wait_for(|s| *s) => break 'accept,
                }
            }
            let stream = tokio::select! {
                r = listener.accept() => r,
                _ = stop.wait_for(|s| *s) => break,
            };
            let (stream, peer) = match stream {
                Ok((s, peer)) => {
                    backoff = Duration::ZERO;
                    (s, peer)
                }
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS…: free a descriptor if an idle connection holds
                    // one, and wait a little rather than spin on a listener that stays ready.
                    metrics.accept_errors.fetch_add(1, Ordering::Relaxed);
                    let freed = self.registry.evict_oldest_idle(&mut self.registry.lock());
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(100), Duration::from_secs(1));
                    tracing::warn!(error = %e, freed_idle = freed, ?backoff, "accept failed; backing off");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => continue,
                        _ = stop.wait_for(|s| *s) => break,
                    }
                }
            };
            // The idle connection seen above may have started a request meanwhile: then this
            // one waits, accepted, for the next room rather than being reset.
            let conn = loop {
                changes.borrow_and_update();
                if let Some(conn) = self.registry.admit() {
                    break conn;
                }
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = stop.wait_for(|s| *s) => break 'accept,
                }
            };
            metrics.accepted.fetch_add(1, Ordering::Relaxed);
            let _ = stream.set_nodelay(true);
            let task = ConnTask {
                registered: Registered {
                    conn: conn.clone(),
                    registry: self.registry.clone(),
                },
                service: ConnService {
                    router: router.clone(),
                    peer,
                    conn,
                    registry: self.registry.clone(),
                    hsts: hsts.clone(),
                    body_timeout: self.config.request_body_timeout.0,
                },
                builder: builder.clone(),
                config: self.config.clone(),
                stop: self.stop.clone(),
            };
            tokio::spawn(task.run(stream, tls.clone()));
        }
        drop(listener);
        loop {
            changes.borrow_and_update();
            if self.registry.is_empty() {
                break;
            }
            let _ = changes.changed().await;
        }
        Ok(())
    }
}

/// Errors that concern one incoming connection, not the listener: accept again at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// Everything one connection's task owns.
struct ConnTask {
    registered: Registered,
    service: ConnService,
    builder: Arc<auto::Builder<TokioExecutor>>,
    config: HttpConfig,
    stop: watch::Receiver<bool>,
}

/// The answer to plain HTTP on the TLS port: a 400 JSON error, then the connection closes.
const PLAIN_HTTP_ON_TLS: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 97\r\n\r\n{\"error\":{\"code\":\"https_required\",\"message\":\"this port speaks HTTPS: use an https:// URL\"}}\n\n\n\n";

impl ConnTask {
    async fn run(self, stream: TcpStream, tls: Option<tokio_rustls::TlsAcceptor>) {
        let Some(acceptor) = tls else {
            return self.drive(TokioIo::new(stream)).await;
        };
        let conn = self.registered.conn.clone();
        let metrics = self.registered.registry.metrics.clone();
        let handshake = async {
            // A TLS ClientHello starts with a handshake record (0x16); a letter is a plain
            // HTTP request sent to the HTTPS port: tell the client instead of a bare reset.
            let mut first = [0u8; 1];
            let mut stream = stream;
            if stream.peek(&mut first).await? == 1 && first[0].is_ascii_alphabetic() {
                let _ = stream.write_all(PLAIN_HTTP_ON_TLS).await;
                let _ = stream.shutdown().await;
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "plain HTTP on the TLS port",
                ));
            }
            acceptor.accept(stream).await
        };
        let mut stop = self.stop.clone();
        let tls_stream = tokio::select! {
            r = tokio::time::timeout(self.config.header_read_timeout.0, handshake) => match r {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    metrics.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics.timed_out.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("TLS handshake timed out");
                    return;
                }
            },
            _ = conn.evict.notified() => return,
            _ = stop.wait_for(|s| *s) => return,
        };
        self.drive(TokioIo::new(tls_stream)).await
    }

    /// Runs hyper on the connection until it ends, is evicted, idles out, or shutdown ends it.
    async fn drive<I>(self, io: TokioIo<I>)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let conn = self.registered.conn.clone();
        let registry = self.registered.registry.clone();
        let idle_timeout = self.config.idle_timeout.0;
        let http = self
            .builder
            .serve_connection(io, TowerToHyperService::new(self.service));
        tokio::pin!(http);
        let mut stop = self.stop;
        let mut closing = false;
        loop {
            if conn.evicted.load(Ordering::Acquire) {
                return;
            }
            // Never later than the real deadline: a request that ran since only moves it on.
            let idle_ms = registry
                .now_ms()
                .saturating_sub(conn.idle_since_ms.load(Ordering::Acquire));
            let idle = conn.in_flight.load(Ordering::Acquire) == 0;
            let wait = if idle {
                idle_timeout.saturating_sub(Duration::from_millis(idle_ms))
            } else {
                idle_timeout
            };
            if idle && wait.is_zero() {
                registry.metrics.timed_out.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(conn = conn.id, "closing an idle connection");
                return;
            }
            // After the shutdown signal, an idle connection only gets a moment to flush its
            // GOAWAY or last response.
            let wait = if closing {
                wait.min(Duration::from_secs(1))
            } else {
                wait
            };
            tokio::select! {
                r = http.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(conn = conn.id, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = conn.evict.notified() => return,
                _ = stop.wait_for(|s| *s), if !closing => {
                    closing = true;
                    http.as_mut().graceful_shutdown();
                }
                _ = tokio::time::sleep(wait) => {
                    if closing && conn.in_flight.load(Ordering::Acquire) == 0 {
                        return;
                    }
                }
            }
        }
    }
}
