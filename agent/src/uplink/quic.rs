//! The uplink: spool → control plane over QUIC with mutual TLS.
//!
//! It runs on its own thread with a single-threaded tokio runtime, so capture threads never
//! wait on it; they append to the spool and ring [`Uplink::waker`].
//!
//! One connection at a time. On it:
//! * up to `max_in_flight` [`wire::EventBatch`]es, each on its own bidirectional stream; a
//!   batch leaves the spool only when its [`wire::BatchAck`] arrives (the control plane sends
//!   it after committing). Events the ack lists as rejected are logged and not sent again.
//! * a [`wire::Heartbeat`] every `heartbeat_interval`; the answer's server time gives the
//!   clock skew.
//! * renewal at the SVID's half-life: a [`wire::RenewRequest`] with a CSR for a new key; the
//!   new SVID is saved to the state directory, the batches in flight are allowed to finish,
//!   and the agent reconnects with the new certificate. Nothing is lost: whatever was not
//!   acknowledged stays in the spool and is sent again.
//!
//! When the connection fails, the spool is rewound to its oldest unacknowledged event and the
//! agent reconnects after an exponential backoff with jitter (200 ms doubling, capped at 30 s),
//! so a fleet does not reconnect in lockstep after a control-plane restart. The backoff starts
//! over only once the control plane has *accepted* the agent (a heartbeat or a batch
//! answered), not when the agent's side of the handshake completes: with TLS 1.3 the client
//! finishes before the server has judged its certificate, so a refused certificate would
//! otherwise mean reconnecting in a tight loop. Refusals that retrying cannot fix (not
//! authorized, revoked) wait at least half the cap.
//!
//! An SVID that expired while the control plane was unreachable (an outage longer than its
//! lifetime) is renewed before connecting: [`super::enroll::recover`] proves possession of its
//! key over `hais-enroll/1`, the new SVID is saved (atomic, 0600), and the uplink connects with
//! it; the spool, kept all along, goes out then. Why the agent cannot connect, and what to do,
//! is in the status report (`problem`, `fix`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hais_shared::spiffe::SpiffeId;
use hais_shared::wire::{self, ErrorCode, request, response};
use hais_svid::{Bundle, Svid};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::sleep;

use super::SharedSpool;
use super::client::{self, ClientError, Conn, Transport};
use super::spire::{Identity, SpireLink, SpireOptions};
use super::spool::BatchId;
use crate::status::{AgentStatus, ConnectionState, unix_ms};

/// How the uplink behaves.
#[derive(Debug, Clone)]
pub struct UplinkOptions {
    /// `HOST:PORT` of the control plane.
    pub server: String,
    /// Where renewed SVIDs are saved.
    pub state_dir: PathBuf,
    pub max_in_flight: usize,
    pub batch_events: usize,
    pub heartbeat_interval: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub transport: Transport,
    /// Longest wait for batches in flight at shutdown and before switching to a renewed SVID.
    pub drain_timeout: Duration,
    /// Host name reported in heartbeats.
    pub hostname: String,
}

impl UplinkOptions {
    pub fn new(server: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        UplinkOptions {
            server: server.into(),
            state_dir: state_dir.into(),
            max_in_flight: 8,
            batch_events: 1000,
            heartbeat_interval: Duration::from_secs(10),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            transport: Transport::default(),
            drain_timeout: Duration::from_secs(5),
            hostname: super::events::hostname(),
        }
    }
}

/// The running uplink.
#[derive(Debug)]
pub struct Uplink {
    /// The agent's SPIFFE ID when the uplink started (with SPIRE, whatever SPIRE issued).
    pub spiffe_id: SpiffeId,
    thread: Option<JoinHandle<()>>,
    stop: Arc<Stop>,
    waker: Arc<Notify>,
}

#[derive(Debug, Default)]
struct Stop {
    flag: AtomicBool,
    notify: Notify,
}

impl Stop {
    fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }
}

impl Uplink {
    /// Starts the uplink thread with the identity enrolled with the control plane's CA (it
    /// renews that SVID itself, over the uplink).
    pub fn start(
        opts: UplinkOptions,
        svid: Svid,
        bundle: Bundle,
        spool: SharedSpool,
        status: Arc<AgentStatus>,
    ) -> std::io::Result<Uplink> {
        let expected_server = SpiffeId::control_plane(svid.spiffe_id.trust_domain())
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let identity = Identity {
            svid,
            server_trust: bundle,
            expected_server,
        };
        Self::launch(opts, Source::Enrolled(identity), spool, status).map_err(std::io::Error::other)
    }

    /// Starts the uplink thread with the identity a SPIRE agent gives (and rotates). Fails,
    /// saying why, when no usable SVID arrives within the connect timeout.
    pub fn start_with_spire(
        opts: UplinkOptions,
        spire: SpireOptions,
        spool: SharedSpool,
        status: Arc<AgentStatus>,
    ) -> Result<Uplink, String> {
        Self::launch(opts, Source::Spire(spire), spool, status)
    }

    fn launch(
        opts: UplinkOptions,
        source: Source,
        spool: SharedSpool,
        status: Arc<AgentStatus>,
    ) -> Result<Uplink, String> {
        let stop = Arc::new(Stop::default());
        let waker = Arc::new(Notify::new());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (task_stop, task_waker) = (Arc::clone(&stop), Arc::clone(&waker));
        let thread = std::thread::Builder::new()
            .name("uplink".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                rt.block_on(async move {
                    // The SPIRE source lives on this runtime: it streams rotations into it.
                    let (identity, spire) = match source {
                        Source::Enrolled(identity) => (identity, None),
                        Source::Spire(o) => match SpireLink::connect(o).await {
                            Ok(link) => match link.identity() {
                                Ok(identity) => (identity, Some(link)),
                                Err(e) => return drop(ready_tx.send(Err(e))),
                            },
                            Err(e) => return drop(ready_tx.send(Err(e))),
                        },
                    };
                    let mut task = Task {
                        svid: identity.svid,
                        bundle: identity.server_trust,
                        expected_server: identity.expected_server,
                        spire,
                        opts,
                        spool,
                        status,
                        stop: task_stop,
                        waker: task_waker,
                        accepted: false,
                    };
                    task.publish_identity();
                    let _ = ready_tx.send(Ok(task.svid.spiffe_id.clone()));
                    task.run().await;
                });
            })
            .map_err(|e| format!("starting the uplink thread: {e}"))?;
        match ready_rx.recv() {
            Ok(Ok(spiffe_id)) => Ok(Uplink {
                spiffe_id,
                thread: Some(thread),
                stop,
                waker,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err("the uplink thread ended during start-up".into())
            }
        }
    }

    /// Rung after every append, so a waiting uplink sends at once.
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.waker)
    }

    /// Stops sending, lets batches in flight finish (up to the drain timeout), closes the
    /// connection and waits for the thread. Unsent events stay in the spool for the next run.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.flag.store(true, Ordering::SeqCst);
        self.stop.notify.notify_waiters();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Uplink {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Where the uplink's identity comes from.
enum Source {
    Enrolled(Identity),
    Spire(SpireOptions),
}

/// Resolves on SPIRE's next rotation; never without SPIRE.
async fn spire_changed(link: &mut Option<SpireLink>) -> Result<(), String> {
    match link {
        Some(l) => l.changed().await,
        None => std::future::pending().await,
    }
}

/// How one connection ended.
enum End {
    Shutdown,
    /// A new SVID is in place: reconnect at once.
    Renewed,
    Failed(ClientError),
}

/// What a request task hands back.
enum Done {
    Batch(BatchId, u64, Result<response::Body, ClientError>),
    Heartbeat(i64, Instant, Result<response::Body, ClientError>),
    Renew(Vec<u8>, Result<response::Body, ClientError>),
}

struct Task {
    opts: UplinkOptions,
    svid: Svid,
    /// The CAs the server's chain must lead to.
    bundle: Bundle,
    expected_server: SpiffeId,
    /// Set when SPIRE provides the identity (then the control plane does not renew it).
    spire: Option<SpireLink>,
    spool: SharedSpool,
    status: Arc<AgentStatus>,
    stop: Arc<Stop>,
    waker: Arc<Notify>,
    /// Set when the control plane answered a heartbeat or a batch on the current connection:
    /// only then does the backoff start over.
    accepted: bool,
}

/// Exponential backoff with jitter: each delay is drawn between half and all of a ceiling that
/// doubles per failure up to `max`, and returns to `min` only on [`Backoff::reset`].
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    fn reset(&mut self) {
        self.next = self.min;
    }

    /// The wait after a failed connection: the backoff starts over only if the control plane
    /// had accepted the agent on it (`accepted`), and a failure that retrying cannot fix
    /// (`!transient`: not authorized, revoked, bad identity) waits at least half the cap.
    fn after_failure(&mut self, accepted: bool, transient: bool) -> Duration {
        if accepted {
            self.reset();
        }
        let delay = self.delay();
        if transient {
            delay
        } else {
            delay.max(self.max / 2)
        }
    }

    fn delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(self.max);
        let ms = ceiling.as_millis().max(1) as u64;
        Duration::from_millis(rand::random_range(ms / 2..=ms))
    }
}

impl Task {
    fn set_state(&self, state: ConnectionState, error: Option<String>) {
        self.status.update_uplink(|u| {
            if u.state != state {
                u.since_unix_ms = unix_ms();
            }
            u.state = state;
            if error.is_some() {
                u.last_error = error;
            }
        });
    }

    fn publish_identity(&self) {
        let svid = &self.svid;
        let server = self.opts.server.clone();
        self.status.update_uplink(|u| {
            u.server = Some(server);
            u.spiffe_id = Some(svid.spiffe_id.to_string());
            u.svid_expiry_unix = Some(svid.not_after.unix_timestamp());
            u.svid_renew_at_unix = Some(svid.renew_at().unix_timestamp());
        });
    }

    /// Takes SPIRE's current identity; true when the SVID or the server's trust changed.
    fn refresh_spire(&mut self) -> bool {
        let Some(link) = &self.spire else {
            return false;
        };
        match link.identity() {
            Ok(id) => {
                let changed = id.svid.chain != self.svid.chain
                    || id.server_trust != self.bundle
                    || id.expected_server != self.expected_server;
                if id.svid.spiffe_id != self.svid.spiffe_id {
                    // Events carry the agent id of the start; the control plane would refuse
                    // them under another ID. A restart picks the new one up.
                    tracing::error!(
                        old = %self.svid.spiffe_id,
                        new = %id.svid.spiffe_id,
                        "SPIRE changed this agent's SPIFFE ID; restart the agent to use it"
                    );
                    return false;
                }
                if changed {
                    tracing::info!(
                        spiffe_id = %id.svid.spiffe_id,
                        not_after = %id.svid.not_after,
                        "SPIRE rotated the identity"
                    );
                    self.svid = id.svid;
                    self.bundle = id.server_trust;
                    self.expected_server = id.expected_server;
                    self.publish_identity();
                    self.status.update_uplink(|u| u.renewals += 1);
                }
                changed
            }
            Err(e) => {
                tracing::warn!(error = %e, "SPIRE's identity is unusable; keeping the previous one");
                false
            }
        }
    }

    fn with_spool<T>(&self, f: impl FnOnce(&mut super::spool::Spool) -> T) -> T {
        let mut s = self.spool.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s)
    }

    /// Records why the agent cannot deliver, and what to do, for `status` and `doctor`.
    fn set_problem(&self, problem: Option<(String, String)>) {
        self.status.update_uplink(|u| match problem {
            Some((p, f)) => {
                u.problem = Some(p);
                u.fix = Some(f);
            }
            None => {
                u.problem = None;
                u.fix = None;
            }
        });
    }

    /// The control plane answered on this connection: it accepted the agent.
    fn mark_accepted(&mut self) {
        if !self.accepted {
            self.accepted = true;
            self.set_problem(None);
        }
    }

    /// Renews the expired SVID (see [`super::enroll::recover`]) and saves it.
    async fn recover(&mut self) -> Result<(), ClientError> {
        tracing::warn!(
            spiffe_id = %self.svid.spiffe_id,
            expired_at = %self.svid.not_after,
            "the SVID has expired; asking the control plane to renew it"
        );
        let recover = super::enroll::recover(
            &self.opts.server,
            &self.svid,
            &self.bundle,
            &self.expected_server,
            &self.opts.transport,
        );
        let (svid, bundle) = tokio::select! {
            r = recover => r?,
            _ = self.stop.wait() => return Err(ClientError::Connect {
                server: self.opts.server.clone(),
                why: "agent stopping".into(),
            }),
        };
        svid.save(&bundle, &self.opts.state_dir)?;
        tracing::info!(
            spiffe_id = %svid.spiffe_id,
            not_after = %svid.not_after,
            "expired SVID renewed; connecting with the new one"
        );
        self.svid = svid;
        self.bundle = bundle;
        self.publish_identity();
        self.status.update_uplink(|u| u.renewals += 1);
        Ok(())
    }

    async fn run(&mut self) {
        let mut backoff = Backoff::new(self.opts.backoff_min, self.opts.backoff_max);
        while !self.stop.is_set() {
            self.set_state(ConnectionState::Connecting, None);
            self.accepted = false;
            // An SVID that expired during an outage: renewed first, proven by its key.
            if self.spire.is_none()
                && svid_expired(&self.svid)
                && let Err(e) = self.recover().await
            {
                let problem = diagnose_recovery(&e, &self.svid);
                self.set_problem(Some(problem));
                if !self.wait_after_failure(&mut backoff, &e).await {
                    break;
                }
                continue;
            }
            let end = match self.connect().await {
                Ok(conn) => {
                    self.status.update_uplink(|u| u.connects += 1);
                    self.set_state(ConnectionState::Connected, None);
                    tracing::info!(server = %self.opts.server, addr = %conn.addr, "uplink connected");
                    let end = self.serve(&conn.conn).await;
                    let reason = match &end {
                        End::Shutdown => "agent stopping",
                        End::Renewed => "SVID renewed",
                        End::Failed(_) => "error",
                    };
                    conn.close(reason).await;
                    end
                }
                Err(e) => End::Failed(e),
            };
            // Whatever was in flight and not acknowledged goes out again, oldest first.
            self.with_spool(|s| s.rewind());
            match end {
                End::Shutdown => break,
                End::Renewed => continue,
                End::Failed(e) => {
                    if !self.accepted {
                        self.set_problem(Some(diagnose(&e, &self.opts.server)));
                    }
                    if !self.wait_after_failure(&mut backoff, &e).await {
                        break;
                    }
                }
            }
        }
        self.set_state(ConnectionState::Stopped, None);
        self.with_spool(|s| {
            if let Err(e) = s.sync() {
                tracing::warn!(error = %e, "syncing the spool");
            }
        });
    }

    /// Waits the backoff's next delay after `e` (at least half the cap when retrying cannot
    /// help). False when the agent is stopping.
    async fn wait_after_failure(&self, backoff: &mut Backoff, e: &ClientError) -> bool {
        let delay = backoff.after_failure(self.accepted, e.is_transient());
        tracing::warn!(
            server = %self.opts.server,
            error = %e,
            retry_in_ms = delay.as_millis() as u64,
            "uplink unavailable; events stay in the spool"
        );
        self.set_state(ConnectionState::Backoff, Some(e.to_string()));
        tokio::select! {
            _ = sleep(delay) => true,
            _ = self.stop.wait() => false,
        }
    }

    async fn connect(&mut self) -> Result<Conn, ClientError> {
        // After a rotation missed while disconnected.
        self.refresh_spire();
        let tls = hais_svid::uplink_client_config(&self.svid, &self.bundle, &self.expected_server)?;
        let connect = client::connect(&self.opts.server, tls, &self.opts.transport);
        tokio::select! {
            r = connect => r,
            _ = self.stop.wait() => Err(ClientError::Connect {
                server: self.opts.server.clone(),
                why: "agent stopping".into(),
            }),
        }
    }

    /// Runs one connection until it fails, the agent stops or the SVID was renewed.
    async fn serve(&mut self, conn: &quinn::Connection) -> End {
        let timeout = self.opts.transport.request_timeout;
        let mut tasks: JoinSet<Done> = JoinSet::new();
        let mut in_flight = 0usize;
        let mut seq = 0u64;
        let mut heartbeat = tokio::time::interval(self.opts.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeat_out = false;
        let mut renewing = false;
        // Set when the connection must end once the batches in flight are answered.
        let mut draining: Option<(End, tokio::time::Instant)> = None;
        let renew_in = renew_delay(&self.svid);
        let renew_timer = sleep(renew_in);
        tokio::pin!(renew_timer);
        let mut watch_spire = self.spire.is_some();

        loop {
            // While stopping, what is spooled keeps going out until the drain deadline; while
            // switching to a renewed SVID, nothing new goes out on the old connection.
            let sending = !matches!(draining, Some((End::Renewed, _)));
            let mut spool_empty = false;
            if sending {
                while in_flight < self.opts.max_in_flight {
                    let batch = self.with_spool(|s| s.next_batch(self.opts.batch_events));
                    let batch = match batch {
                        Ok(Some(b)) => b,
                        Ok(None) => {
                            spool_empty = true;
                            break;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "reading the spool");
                            break;
                        }
                    };
                    seq += 1;
                    // Spool records are encoded events already: no decode/encode per event.
                    let bytes = client::encode_batch_request(seq, &batch.records);
                    let (c, id, s) = (conn.clone(), batch.id, seq);
                    tasks.spawn(async move {
                        Done::Batch(id, s, client::exchange_encoded(&c, bytes, timeout).await)
                    });
                    in_flight += 1;
                }
            }
            if let Some((end, deadline)) = &draining {
                let idle = in_flight == 0 && (spool_empty || !sending);
                if idle || tokio::time::Instant::now() >= *deadline {
                    if matches!(end, End::Shutdown) {
                        tracing::info!(in_flight, "uplink stopping");
                    }
                    return draining.take().expect("checked").0;
                }
            }
            let drain_deadline = draining.as_ref().map(|(_, d)| *d);
            tokio::select! {
                _ = self.stop.wait(), if draining.is_none() => {
                    draining = Some((End::Shutdown, tokio::time::Instant::now() + self.opts.drain_timeout));
                }
                _ = tokio::time::sleep_until(drain_deadline.unwrap_or_else(tokio::time::Instant::now)), if drain_deadline.is_some() => {}
                Some(done) = tasks.join_next() => {
                    let Ok(done) = done else { continue };
                    match done {
                        Done::Batch(id, s, res) => {
                            in_flight -= 1;
                            if let Err(e) = self.on_batch(id, s, res) {
                                return End::Failed(e);
                            }
                        }
                        Done::Heartbeat(sent_at, started, res) => {
                            heartbeat_out = false;
                            self.on_heartbeat(sent_at, started, res);
                        }
                        Done::Renew(key, res) => {
                            renewing = false;
                            match self.on_renew(key, res) {
                                Ok(()) => {
                                    if draining.is_none() {
                                        draining = Some((End::Renewed, tokio::time::Instant::now() + self.opts.drain_timeout));
                                    }
                                }
                                Err(e) => {
                                    let retry = renew_retry(&self.svid);
                                    tracing::warn!(error = %e, retry_in_s = retry.as_secs(), "SVID renewal failed");
                                    renew_timer.as_mut().reset(tokio::time::Instant::now() + retry);
                                }
                            }
                        }
                    }
                }
                _ = self.waker.notified(), if sending && in_flight < self.opts.max_in_flight => {}
                _ = heartbeat.tick(), if !heartbeat_out => {
                    let hb = self.status.heartbeat(&self.opts.hostname);
                    let sent_at = hb.sent_at_unix_ms;
                    let c = conn.clone();
                    tasks.spawn(async move {
                        let started = Instant::now();
                        let res = client::exchange(&c, request::Body::Heartbeat(hb), timeout).await;
                        Done::Heartbeat(sent_at, started, res)
                    });
                    heartbeat_out = true;
                }
                r = spire_changed(&mut self.spire), if watch_spire && draining.is_none() => {
                    match r {
                        Ok(()) => {
                            if self.refresh_spire() {
                                // Reconnect with the new SVID once the batches in flight are
                                // answered, as after a renewal.
                                draining = Some((End::Renewed, tokio::time::Instant::now() + self.opts.drain_timeout));
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "lost the SPIRE Workload API stream; rotations will be picked up at reconnect");
                            watch_spire = false;
                        }
                    }
                }
                _ = &mut renew_timer, if !renewing && draining.is_none() && self.spire.is_none() => {
                    match hais_svid::generate_csr() {
                        Ok((key, csr)) => {
                            tracing::info!(spiffe_id = %self.svid.spiffe_id, "renewing the SVID");
                            let c = conn.clone();
                            tasks.spawn(async move {
                                let body = request::Body::Renew(wire::RenewRequest { csr_der: csr });
                                Done::Renew(key, client::exchange(&c, body, timeout).await)
                            });
                            renewing = true;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "generating a key for renewal");
                            renew_timer.as_mut().reset(tokio::time::Instant::now() + renew_retry(&self.svid));
                        }
                    }
                }
                e = conn.closed() => return End::Failed(e.into()),
            }
        }
    }

    /// Acks the batch in the spool. A failure that means the batch was not committed ends the
    /// connection (the batch is resent after reconnecting).
    fn on_batch(
        &mut self,
        id: BatchId,
        seq: u64,
        res: Result<response::Body, ClientError>,
    ) -> Result<(), ClientError> {
        let ack = match res {
            Ok(response::Body::Ack(ack)) => ack,
            Ok(_) => return Err(ClientError::Protocol("expected a batch ack".into())),
            Err(ClientError::Refused {
                code: ErrorCode::BadRequest,
                message,
            }) => {
                // The control plane will never take this batch as it is: resending it forever
                // would block the spool, so it is dropped, loudly.
                tracing::error!(
                    events = id.count,
                    reason = %message,
                    "control plane refused a whole batch as malformed; dropping it"
                );
                self.with_spool(|s| s.ack(&id));
                self.status
                    .update_uplink(|u| u.events_rejected += u64::from(id.count));
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if ack.seq != seq {
            return Err(ClientError::Protocol(format!(
                "ack for batch {} on the stream of batch {seq}",
                ack.seq
            )));
        }
        for r in ack.rejected.iter().take(10) {
            tracing::warn!(index = r.index, reason = %r.reason, "event rejected by the control plane");
        }
        if ack.rejected.len() > 10 {
            tracing::warn!(
                more = ack.rejected.len() - 10,
                "more events of the batch rejected"
            );
        }
        self.mark_accepted();
        self.with_spool(|s| s.ack(&id));
        self.status.update_uplink(|u| {
            u.batches_acked += 1;
            u.events_stored += u64::from(ack.stored);
            u.events_duplicate += u64::from(ack.duplicates);
            u.events_rejected += ack.rejected.len() as u64;
            u.last_ack_unix_ms = Some(unix_ms());
        });
        Ok(())
    }

    fn on_heartbeat(
        &mut self,
        sent_at: i64,
        started: Instant,
        res: Result<response::Body, ClientError>,
    ) {
        match res {
            Ok(response::Body::HeartbeatAck(a)) => {
                self.mark_accepted();
                let skew = clock_skew_ms(sent_at, started.elapsed(), a.server_time_unix_ms);
                if skew.abs() > 5_000 {
                    tracing::warn!(
                        skew_ms = skew,
                        "clock differs from the control plane's by more than 5 s (check NTP)"
                    );
                }
                self.status.update_uplink(|u| u.clock_skew_ms = Some(skew));
            }
            Ok(_) => tracing::warn!("unexpected answer to a heartbeat"),
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }

    fn on_renew(
        &mut self,
        key: Vec<u8>,
        res: Result<response::Body, ClientError>,
    ) -> Result<(), ClientError> {
        let resp = match res? {
            response::Body::Svid(s) => s,
            _ => return Err(ClientError::Protocol("expected an SVID".into())),
        };
        let (svid, bundle) = super::enroll::svid_from_response(resp, key)?;
        if svid.spiffe_id != self.svid.spiffe_id {
            return Err(ClientError::Protocol(format!(
                "renewal returned {} for {}",
                svid.spiffe_id, self.svid.spiffe_id
            )));
        }
        svid.save(&bundle, &self.opts.state_dir)?;
        tracing::info!(
            spiffe_id = %svid.spiffe_id,
            not_after = %svid.not_after,
            "SVID renewed; reconnecting with it"
        );
        self.svid = svid;
        self.bundle = bundle;
        self.publish_identity();
        self.status.update_uplink(|u| u.renewals += 1);
        Ok(())
    }
}

/// Whether the SVID has expired by this host's clock (then the uplink's TLS would be refused).
fn svid_expired(svid: &Svid) -> bool {
    svid.not_after <= time::OffsetDateTime::now_utc()
}

/// Fix for an identity the control plane will not take back.
const REENROLL: &str = "create a join token (`hais-control-plane token create`) and run \
    `hais-agent enroll --force --server HOST:PORT --token TOKEN`, then restart the agent";

/// Why a connection failed, and what to do, in an operator's words.
fn diagnose(e: &ClientError, server: &str) -> (String, String) {
    use quinn::ConnectionError as C;
    match e {
        ClientError::Connection(C::ApplicationClosed(c))
            if u64::from(c.error_code) == u64::from(wire::close::REVOKED) =>
        {
            (
                "this agent was revoked by the control plane".into(),
                REENROLL.into(),
            )
        }
        ClientError::Refused {
            code: ErrorCode::Revoked,
            ..
        } => (
            "this agent was revoked by the control plane".into(),
            REENROLL.into(),
        ),
        ClientError::Connection(C::ApplicationClosed(c))
            if u64::from(c.error_code) == u64::from(wire::close::UNAUTHORIZED) =>
        {
            (
                format!(
                    "the control plane refused this agent's SVID: {}",
                    String::from_utf8_lossy(&c.reason)
                ),
                REENROLL.into(),
            )
        }
        ClientError::Connection(C::ConnectionClosed(_)) => (
            format!(
                "the control plane refused the TLS handshake (the agent's certificate was not accepted): {e}"
            ),
            format!(
                "check the clock (NTP) and that this agent was enrolled with the control plane at {server}; \
                 if it was re-installed or its CA changed: {REENROLL}"
            ),
        ),
        _ if !e.is_transient() => (format!("cannot connect: {e}"), REENROLL.into()),
        _ => (
            format!("control plane unreachable: {e}"),
            format!(
                "nothing to do if it is down for maintenance (events wait in the spool); \
                 else check that it runs and that UDP to {server} is open"
            ),
        ),
    }
}

/// Why renewing an expired SVID failed, and what to do.
fn diagnose_recovery(e: &ClientError, svid: &Svid) -> (String, String) {
    let expired = format!("the SVID expired at {}", svid.not_after);
    match e {
        ClientError::Refused {
            code: ErrorCode::Revoked,
            ..
        } => (
            format!("{expired} and this agent was revoked"),
            REENROLL.into(),
        ),
        ClientError::Refused { message, .. } if !e.is_transient() => (
            format!("{expired} and the control plane refused to renew it: {message}"),
            REENROLL.into(),
        ),
        ClientError::Svid(_) | ClientError::Tls(_) => (
            format!("{expired} and it cannot be renewed: {e}"),
            REENROLL.into(),
        ),
        _ => (
            format!("{expired}; renewing it needs the control plane, which is unreachable ({e})"),
            "nothing to do: once the control plane is back the agent renews the expired SVID by \
             itself (within its spire.expired_renewal_grace, 7 days by default) and delivers \
             the spool; past that grace it must be enrolled again"
                .into(),
        ),
    }
}

/// Time until the SVID's half-life (zero when already past).
fn renew_delay(svid: &Svid) -> Duration {
    let now = time::OffsetDateTime::now_utc();
    Duration::try_from(svid.renew_at() - now).unwrap_or(Duration::ZERO)
}

/// After a failed renewal: a tenth of the remaining lifetime, between 1 s and 30 s.
fn renew_retry(svid: &Svid) -> Duration {
    let left = Duration::try_from(svid.not_after - time::OffsetDateTime::now_utc())
        .unwrap_or(Duration::ZERO);
    (left / 10).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// Server clock minus ours, assuming the request and the answer took equal time.
pub fn clock_skew_ms(sent_at_ms: i64, rtt: Duration, server_ms: i64) -> i64 {
    server_ms - (sent_at_ms + rtt.as_millis() as i64 / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            let ceiling = b.next;
            let d = b.delay();
            assert!(d <= ceiling && d >= ceiling / 2, "{d:?} vs {ceiling:?}");
            ceilings.push(ceiling);
        }
        assert_eq!(ceilings[0], Duration::from_millis(200));
        assert_eq!(ceilings[1], Duration::from_millis(400));
        assert_eq!(*ceilings.last().unwrap(), Duration::from_secs(30));
        b.reset();
        assert!(b.delay() <= Duration::from_millis(200));
    }

    #[test]
    fn only_an_accepted_connection_resets_the_backoff() {
        let (min, max) = (Duration::from_millis(200), Duration::from_secs(30));
        let mut b = Backoff::new(min, max);
        // Refused handshakes (the agent's side completed, the server said no): the delays
        // grow to the cap instead of starting over at each attempt.
        let mut total = Duration::ZERO;
        for _ in 0..20 {
            total += b.after_failure(false, true);
        }
        assert_eq!(b.next, max);
        // At most 20 attempts take at least the sum of half of each ceiling (100 ms, 200 ms,
        // ... then 15 s): a tight loop would be 20 attempts in a few milliseconds.
        assert!(total >= Duration::from_secs(150), "{total:?}");
        // A connection the control plane accepted (a heartbeat answered), then lost.
        assert!(b.after_failure(true, true) <= min);
        assert_eq!(b.next, min * 2);
    }

    #[test]
    fn refusals_retrying_cannot_fix_wait_at_least_half_the_cap() {
        let (min, max) = (Duration::from_millis(200), Duration::from_secs(30));
        let mut b = Backoff::new(min, max);
        for _ in 0..5 {
            let d = b.after_failure(false, false);
            assert!(d >= max / 2 && d <= max, "{d:?}");
        }
        // Even right after an accepted connection.
        let d = b.after_failure(true, false);
        assert!(d >= max / 2, "{d:?}");
    }

    #[test]
    fn diagnoses_name_the_cause_and_the_fix() {
        let svid = {
            let ca = hais_svid::CertificateAuthority::generate("hais.local").unwrap();
            let id = SpiffeId::agent("hais.local", "a1").unwrap();
            ca.issue(&id, &[], Duration::from_secs(60)).unwrap()
        };
        let refused = ClientError::Refused {
            code: ErrorCode::Unauthorized,
            message: "the SVID expired at X, longer ago than spire.expired_renewal_grace".into(),
        };
        let (p, f) = diagnose_recovery(&refused, &svid);
        assert!(
            p.contains("expired at") && p.contains("refused to renew"),
            "{p}"
        );
        assert!(f.contains("hais-agent enroll --force"), "{f}");
        let down = ClientError::Timeout(Duration::from_secs(1));
        let (p, f) = diagnose_recovery(&down, &svid);
        assert!(p.contains("unreachable"), "{p}");
        assert!(f.contains("by itself"), "{f}");
        let revoked = ClientError::Refused {
            code: ErrorCode::Revoked,
            message: String::new(),
        };
        assert!(diagnose(&revoked, "cp:3001").0.contains("revoked"));
        let (p, f) = diagnose(&down, "cp:3001");
        assert!(
            p.contains("unreachable") && f.contains("cp:3001"),
            "{p} / {f}"
        );
    }

    #[test]
    fn skew_accounts_for_half_the_round_trip() {
        assert_eq!(clock_skew_ms(1_000, Duration::from_millis(100), 1_050), 0);
        assert_eq!(clock_skew_ms(1_000, Duration::from_millis(0), 3_000), 2_000);
        assert_eq!(
            clock_skew_ms(5_000, Duration::from_millis(20), 1_000),
            -4_010
        );
    }
}
