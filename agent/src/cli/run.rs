//! `hais-agent run`: live capture on one or more interfaces.
//!
//! One thread per interface, each with its own [`Engine`]: flows never span interfaces (the
//! same 5-tuple on two interfaces is two conversations, or one seen twice, and merging them
//! would corrupt both), and separate engines need no locking on the per-packet path. Each
//! thread formats its finished streams and hands them to the main thread, which alone
//! writes the output, so records never interleave mid-line. The channel is bounded: if the
//! output can't keep up, capture threads wait and the kernel counts the drops, which are
//! reported, instead of memory growing without bound.
//!
//! Shutdown (SIGINT or SIGTERM) sets a flag the capture threads see within one read timeout;
//! each then finishes every flow it holds, so nothing seen is lost, and the main thread
//! prints the summary and exits 0. A second signal exits at once with status 1, for a
//! shutdown that hangs.
//!
//! When the agent is enrolled (an SVID in the state directory) and knows its server, each
//! finished stream with a fingerprint also becomes an event: the capture thread encodes it,
//! the main thread appends it to the on-disk spool (and fsyncs every 100 ms), and the uplink
//! thread sends it. Capture therefore waits on the disk at worst, never on the network.
//! Records are then printed only when an output is asked for explicitly (`-o`,
//! `HAIS_OUTPUT`, or a file in the config). The status socket (`hais-agent status`) is served
//! whenever the state directory is usable.
//!
//! Workload attribution (on Linux, when events are streamed or `--with-workload` is given):
//! each capture thread spots the first packet of every flow (a client's SYN, a UDP flow's
//! first datagram) and notifies the one shared [`Attributor`], whose thread looks the socket's
//! owner up while the process is still alive; the answer is taken when the stream's record
//! and event are built (see [`crate::attribution`]). Capture never waits for it: the request
//! queue drops rather than blocks, and a report whose answer is not in yet is held back a few
//! milliseconds by the capture thread, not waited for.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use tokio::sync::Notify;

use hais_shared::event::Workload;

use crate::attribution::{self, Attributor, Holdback, Notifier};
use crate::capture::live::{self, CaptureStats, LiveCapture, LiveError, LiveOptions};
use crate::config::{AgentConfig, OutputFormat};
use crate::engine::{Engine, EngineConfig, Stats, StreamReport};
use crate::output::{Value, write_json_line, write_yaml_list_item};
use crate::state::{StateDir, StateLock};
use crate::status::{AgentStatus, InterfaceCounters, StatusServer};
use crate::uplink::SharedSpool;
use crate::uplink::events::{self, EventSource};
use crate::uplink::quic::{Uplink, UplinkOptions};
use crate::uplink::spire::SpireOptions;
use crate::uplink::spool::{Spool, SpoolOptions};

#[derive(Debug, Args)]
#[command(after_help = "\
Settings come from built-in defaults, then --config FILE (TOML), then HAIS_* environment \
variables (HAIS_INTERFACES, HAIS_BPF, HAIS_IDLE_TIMEOUT, HAIS_STATS_INTERVAL, HAIS_OUTPUT, \
HAIS_FORMAT, HAIS_SERVER, HAIS_STATE_DIR, ...; see README), then these flags.\n\
Once enrolled (`hais-agent enroll`), events are streamed to the control plane through an \
on-disk spool in the state directory; records are then printed only with -o.\n\
Needs CAP_NET_RAW (CAP_NET_ADMIN on some setups), not root: \
setcap cap_net_raw,cap_net_admin=eip /usr/bin/hais-agent\n\
Exit codes: 0 stopped by SIGINT/SIGTERM, 2 bad filter, 66 config file missing, \
69 unknown or unusable interface, 74 I/O error, 75 another agent uses the state directory, \
77 missing capability, 78 bad configuration (including a server without enrollment).")]
pub struct RunArgs {
    /// Configuration file (TOML).
    #[arg(short = 'c', long, value_name = "FILE", env = "HAIS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Interface to capture on; repeat for several. Default: `any`.
    #[arg(short = 'i', long = "interface", value_name = "IF")]
    pub interfaces: Vec<String>,
    /// Capture filter (libpcap syntax), replacing the default, which keeps all TCP and UDP
    /// (JA4SSH counts every SSH packet; reassembly needs every handshake segment).
    #[arg(long, value_name = "EXPR")]
    pub bpf: Option<String>,
    /// Append records to FILE (`-`: standard output, the default).
    #[arg(short = 'o', long, value_name = "FILE|-")]
    pub output: Option<String>,
    /// JSON Lines: one JSON object per stream per line.
    #[arg(short = 'j', long, conflicts_with = "yaml")]
    pub json: bool,
    /// YAML list items, one per stream (the default).
    #[arg(long)]
    pub yaml: bool,
    /// Also print the raw (unhashed) strings: ja4_r, ja4s_r, ja4x_r, ja4h_r.
    #[arg(short = 'r', long)]
    pub with_raw: bool,
    /// Add each flow's `workload` (pid, process, uid, user, exe, cgroup, container, pod) to
    /// printed records. Off by default so records stay diffable with the reference tool's.
    #[arg(long)]
    pub with_workload: bool,
    /// A flow idle this many seconds is finished and its record written. Default 30.
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<u64>,
    /// Read and log kernel/interface drop counters every SECS seconds. Default 10.
    #[arg(long, value_name = "SECS")]
    pub stats_interval: Option<u64>,
    /// Most flows tracked at once per interface. Default 65536.
    #[arg(long, value_name = "N")]
    pub max_flows: Option<usize>,
    /// Put the interfaces in promiscuous mode.
    #[arg(long)]
    pub promiscuous: bool,
    /// No startup line and no summary on standard error.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Control plane to stream events to (UDP HOST:PORT). Default: the one saved by
    /// `hais-agent enroll`.
    #[arg(long, value_name = "HOST:PORT")]
    pub server: Option<String>,
    /// State directory: identity, spool, status socket. Default /var/lib/hais-agent.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// How often idle flows are swept when packets don't do it (packets sweep by themselves,
/// at most once a second of packet time).
const SWEEP_EVERY: Duration = Duration::from_millis(500);

/// With no packet queued, a capture thread waits in `poll` on the capture descriptor, which
/// wakes it as soon as the kernel hands a block of packets over (when full, or `block_timeout_ms`
/// after its first packet): one wake-up per block, none in between (each is a context switch,
/// which on a VM is most of the agent's idle CPU). The wait is bounded by the second constant
/// so that sweeps and shutdown are noticed on a quiet interface (20 wake-ups a second), and by
/// `attribution.max_latency_ms` (at least the first) while streams wait for their attribution
/// or their hand-over.
const IDLE_WAIT_MIN: Duration = Duration::from_millis(1);
const IDLE_WAIT_MAX: Duration = Duration::from_millis(50);

/// Most packets handled per read before the loop checks the clock and the shutdown flag.
const BATCH: usize = 1024;

/// Formatted batches in flight between the capture threads and the writer.
const CHANNEL_BATCHES: usize = 256;

/// How often the main thread makes the spool durable (see the spool's fsync policy).
const SPOOL_SYNC_EVERY: Duration = Duration::from_millis(100);

/// Longest a finished stream waits for its attribution (see [`Holdback`]) when the attributor
/// was not asked about it: far above the attributor's usual answer time (well under a
/// millisecond, plus its batch window under load), far below anything a reader of the records
/// would notice.
const HOLDBACK_WAIT: Duration = Duration::from_millis(200);
/// Longest it waits while the attributor is resolving it: the first flow of a process whose
/// executable is large is answered once the executable is hashed (tens of milliseconds for
/// 100 MB, more on a loaded host or an unoptimised build).
const HOLDBACK_RESOLVING_WAIT: Duration = Duration::from_secs(3);

/// A capture thread hands its finished records and events over at most this often (or once
/// [`HANDOVER_EVENTS`] have gathered). With attribution the kernel hands packets over every
/// 10 ms and streams trickle out of the hold-back one by one; handing each trickle over would
/// wake the main and uplink threads a hundred times a second, which cost more CPU than
/// attribution. 100 ms, as the kernel's own hand-over without attribution.
const HANDOVER_EVERY: Duration = Duration::from_millis(100);
const HANDOVER_EVENTS: usize = 512;

/// Most finished streams held back per capture thread; beyond, they go out unattributed.
const HOLDBACK_MAX: usize = 4096;

/// What a capture thread hands the main thread for one set of finished streams.
#[derive(Debug, Default)]
struct Finished {
    /// Records formatted for the output, when records are printed.
    text: Option<String>,
    /// Encoded events for the spool, when streaming.
    events: Vec<Vec<u8>>,
}

/// The streaming side of a run, when the agent is enrolled.
struct Streaming {
    spool: SharedSpool,
    uplink: Uplink,
    waker: Arc<Notify>,
    source: EventSource,
}

pub fn run(args: RunArgs) -> i32 {
    match run_inner(&args) {
        Ok(()) => 0,
        Err((code, msg)) => {
            eprintln!("hais-agent run: {msg}");
            code
        }
    }
}

type Failure = (i32, String);

fn config_from(args: &RunArgs) -> Result<AgentConfig, Failure> {
    let mut cfg =
        AgentConfig::load(args.config.as_deref()).map_err(|e| (e.exit_code(), e.to_string()))?;
    if !args.interfaces.is_empty() {
        cfg.capture.interfaces = args.interfaces.clone();
    }
    if let Some(b) = &args.bpf {
        cfg.capture.bpf = b.clone();
    }
    if let Some(o) = &args.output {
        cfg.output.path = o.clone();
    }
    if args.json {
        cfg.output.format = OutputFormat::Json;
    }
    if args.yaml {
        cfg.output.format = OutputFormat::Yaml;
    }
    if args.with_raw {
        cfg.output.with_raw = true;
    }
    if args.with_workload {
        cfg.output.with_workload = true;
    }
    if let Some(t) = args.idle_timeout {
        cfg.flows.idle_timeout_secs = t;
    }
    if let Some(s) = args.stats_interval {
        cfg.capture.stats_interval_secs = s;
    }
    if let Some(m) = args.max_flows {
        cfg.flows.max_flows = m;
    }
    if args.promiscuous {
        cfg.capture.promiscuous = true;
    }
    if let Some(s) = &args.server {
        cfg.uplink.server = s.clone();
    }
    if let Some(d) = &args.state_dir {
        cfg.state_dir = d.clone();
    }
    cfg.validate().map_err(|e| (e.exit_code(), e.to_string()))?;
    Ok(cfg)
}

fn run_inner(args: &RunArgs) -> Result<(), Failure> {
    let cfg = config_from(args)?;
    let live_err = |e: LiveError| (e.exit_code(), e.to_string());
    let interfaces = cfg.interfaces();
    // Cheap checks first, in the order an operator fixes things: a typo in the interface
    // name, then privileges.
    live::check_interfaces(&interfaces).map_err(live_err)?;
    live::check_capabilities(&interfaces[0]).map_err(live_err)?;
    if interfaces.len() > 1 && interfaces.iter().any(|i| i == "any") {
        tracing::warn!("`any` with other interfaces sees their packets twice");
    }

    // Registered before anything is opened, so a signal during startup still shuts down
    // cleanly rather than killing the process with the default action.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&stop))
            .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&stop)))
            .map_err(|e| (71, format!("installing signal handlers: {e}")))?;
    }

    let state = StateDir::new(&cfg.state_dir);
    let plan = plan_streaming(&cfg, &state)?;
    // Attribution is only worth its CPU when someone reads it: the events, or the records
    // with `--with-workload`.
    let attributor = if plan.is_some() || cfg.output.with_workload {
        attribution::start(&cfg.attribution)
    } else {
        None
    };
    let mut opts = LiveOptions {
        bpf: cfg.capture.bpf.clone(),
        snaplen: cfg.capture.snaplen as i32,
        buffer_bytes: (cfg.capture.buffer_mib as i32) << 20,
        promiscuous: cfg.capture.promiscuous,
        ..LiveOptions::default()
    };
    // A first packet read late may find its process gone: with attribution on, the kernel
    // hands packets over sooner (see `attribution.max_latency_ms`).
    let latency = Duration::from_millis(cfg.attribution.max_latency_ms);
    let idle_wait_max = if attributor.is_some() {
        opts.block_timeout_ms = opts
            .block_timeout_ms
            .min(cfg.attribution.max_latency_ms as i32);
        IDLE_WAIT_MAX.min(latency).max(IDLE_WAIT_MIN)
    } else {
        IDLE_WAIT_MAX
    };
    let mut captures = Vec::with_capacity(interfaces.len());
    for name in &interfaces {
        captures.push(LiveCapture::open(name, &opts).map_err(live_err)?);
    }
    let counters: Vec<Arc<InterfaceCounters>> = interfaces
        .iter()
        .map(|i| Arc::new(InterfaceCounters::new(i)))
        .collect();
    // Holding the lock keeps a second agent off this spool and socket.
    let lock = match &plan {
        Some(_) => Some(
            state
                .ensure()
                .and_then(|()| state.lock())
                .map_err(|e| (e.exit_code(), e.to_string()))?,
        ),
        None => try_lock_quietly(&state),
    };
    let spool = match &plan {
        Some(_) => Some(open_spool(&cfg, &state)?),
        None => None,
    };
    let status = Arc::new(AgentStatus::new(counters.clone(), spool.clone()));
    if let Some(a) = &attributor {
        let _ = status.attribution.set(Arc::clone(a));
    }
    let _status_server = lock
        .as_ref()
        .and_then(|_| match StatusServer::start(&state.socket_path(), Arc::clone(&status)) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, path = %state.socket_path().display(), "no status socket");
                None
            }
        });
    // Validated as an address by the configuration.
    if let Ok(addr) = cfg.metrics.listen.parse() {
        match crate::metrics::start(addr, Arc::clone(&status)) {
            Ok(bound) => tracing::info!(address = %bound, "metrics on /metrics, /health, /ready"),
            // Monitoring is not worth stopping capture for: say so loudly and go on.
            Err(e) => tracing::error!(error = %e, address = %addr, "metrics endpoint not started"),
        }
    }
    let streaming = match (plan, spool) {
        (Some(p), Some(spool)) => Some(start_uplink(&cfg, &state, p, spool, &status)?),
        _ => None,
    };
    let print = streaming.is_none()
        || args.output.is_some()
        || std::env::var_os("HAIS_OUTPUT").is_some()
        || cfg.output.path != "-";
    let mut out = if print {
        Some(open_output(&cfg.output.path).map_err(|e| (74, format!("{}: {e}", cfg.output.path)))?)
    } else {
        None
    };

    let engine_cfg = EngineConfig {
        with_raw: cfg.output.with_raw,
        ssh_window: cfg.flows.ssh_window as usize,
        max_flows: cfg.flows.max_flows,
        idle_timeout_us: cfg.flows.idle_timeout_secs.saturating_mul(1_000_000),
        ..EngineConfig::default()
    };
    let json = cfg.output.format == OutputFormat::Json;
    let stats_every = Duration::from_secs(cfg.capture.stats_interval_secs);
    let (tx, rx) = sync_channel::<Finished>(CHANNEL_BATCHES);
    let mut workers = Vec::with_capacity(captures.len());
    for (cap, counters) in captures.into_iter().zip(&counters) {
        let worker = Worker {
            engine: Engine::new(engine_cfg.clone()),
            name: cap.name().to_string(),
            cap,
            stop: Arc::clone(&stop),
            tx: tx.clone(),
            json,
            print,
            events: streaming.as_ref().map(|s| s.source.clone()),
            counters: Arc::clone(counters),
            status: Arc::clone(&status),
            stats_every,
            notifier: attributor.as_ref().map(|a| {
                Notifier::new(
                    Arc::clone(a),
                    cfg.attribution.notified_flows,
                    engine_cfg.idle_timeout_us,
                )
            }),
            attributor: attributor.clone(),
            holdback: Holdback::new(HOLDBACK_MAX, HOLDBACK_WAIT, HOLDBACK_RESOLVING_WAIT),
            with_workload: cfg.output.with_workload,
            idle_wait_max,
            pending: Finished::default(),
            pending_since: None,
        };
        let handle = std::thread::Builder::new()
            .name(format!("capture-{}", worker.name))
            .spawn(move || worker.run())
            .map_err(|e| (71, format!("starting capture thread: {e}")))?;
        workers.push(handle);
    }
    drop(tx);
    if !args.quiet {
        let filter = if cfg.capture.bpf.is_empty() {
            "none".to_string()
        } else {
            format!("{:?}", cfg.capture.bpf)
        };
        let to = match &streaming {
            Some(_) => format!(
                "; streaming to {}",
                status.uplink().server.unwrap_or_default()
            ),
            None => String::new(),
        };
        let attr = if attributor.is_some() {
            "; workload attribution on"
        } else {
            ""
        };
        eprintln!(
            "hais-agent run: capturing on {} (filter: {filter}, idle timeout {} s{to}{attr}); SIGINT or SIGTERM stops",
            interfaces.join(", "),
            cfg.flows.idle_timeout_secs
        );
    }

    let write_error = consume(&rx, out.as_mut(), streaming.as_ref(), &status, &stop);

    let mut total = Stats::default();
    let mut drops = CaptureStats::default();
    let mut failure: Option<Failure> = None;
    for (name, handle) in interfaces.iter().zip(workers) {
        match handle.join() {
            Ok(done) => {
                merge_stats(&mut total, &done.stats);
                drops.received += done.drops.received;
                drops.dropped += done.drops.dropped;
                drops.if_dropped += done.drops.if_dropped;
                if let Some(e) = done.error {
                    failure.get_or_insert((e.exit_code(), e.to_string()));
                }
            }
            Err(_) => {
                failure.get_or_insert((70, format!("{name}: capture thread panicked")));
            }
        }
    }
    if let Some(e) = write_error {
        failure = Some((74, format!("writing {}: {e}", cfg.output.path)));
    }
    if let Some(s) = streaming {
        // Lets batches in flight (and what is spooled, while connected) go out for a few
        // seconds; the rest waits in the spool for the next start.
        s.uplink.stop();
        let mut spool = s.spool.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = spool.sync() {
            failure.get_or_insert((74, e.to_string()));
        }
        if !args.quiet {
            let st = spool.stats();
            eprintln!(
                "hais-agent run: spool: {} events waiting, {} dropped (spool full), {} sent and acknowledged this run",
                st.depth, st.dropped, st.acked
            );
        }
    }
    drop(lock);
    if !args.quiet {
        print_summary(&total, &drops);
        if let Some(a) = &attributor {
            print_attribution_summary(&a.stats());
        }
    }
    match failure {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

/// Appends rather than truncates: an agent restarted by its supervisor must not wipe the
/// records of its previous run.
fn open_output(path: &str) -> std::io::Result<Box<dyn Write>> {
    if path == "-" {
        return Ok(Box::new(std::io::stdout().lock()));
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    Ok(Box::new(f))
}

/// Where the events go, when they go anywhere: `Some(server)` when the agent is enrolled.
/// A server configured for an agent that is not enrolled is an error, not a silent fallback
/// to printing.
fn plan_streaming(cfg: &AgentConfig, state: &StateDir) -> Result<Option<String>, Failure> {
    if cfg.spire.enabled() {
        // SPIRE is the identity: no enrollment, but the server must be named.
        return Some(cfg.uplink.server.clone())
            .filter(|s| !s.is_empty())
            .or_else(|| state.load_server())
            .map(Some)
            .ok_or((
                78,
                "spire.workload_api_socket is set but no server is known: pass --server \
                 HOST:PORT (or set uplink.server)"
                    .to_string(),
            ));
    }
    let enrolled = state.is_enrolled();
    let server = Some(cfg.uplink.server.clone())
        .filter(|s| !s.is_empty())
        .or_else(|| enrolled.then(|| state.load_server()).flatten());
    match (enrolled, server) {
        (true, Some(s)) => Ok(Some(s)),
        (true, None) => Err((
            78,
            format!(
                "enrolled in {} but no server is known: pass --server HOST:PORT (or set uplink.server)",
                state.path().display()
            ),
        )),
        (false, Some(s)) => Err((
            78,
            format!(
                "not enrolled (no SVID in {}): run `hais-agent enroll --server {s} --token TOKEN` first",
                state.path().display()
            ),
        )),
        (false, None) => Ok(None),
    }
}

/// Without streaming the state directory is optional (a plain `run` as an unprivileged user
/// must keep working): its lock, and so the status socket, only when it is usable.
fn try_lock_quietly(state: &StateDir) -> Option<StateLock> {
    if !state.path().is_dir() {
        return None;
    }
    match state.lock() {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::info!(error = %e, "state directory unusable; no status socket");
            None
        }
    }
}

fn open_spool(cfg: &AgentConfig, state: &StateDir) -> Result<SharedSpool, Failure> {
    let opts = SpoolOptions::new(state.spool_dir(), cfg.spool.max_bytes);
    let spool = Spool::open(opts).map_err(|e| (74, format!("opening the spool: {e}")))?;
    let st = spool.stats();
    if st.depth > 0 || st.torn_records > 0 {
        tracing::info!(
            waiting = st.depth,
            torn = st.torn_records,
            "spool holds events from an earlier run"
        );
    }
    Ok(Arc::new(Mutex::new(spool)))
}

fn start_uplink(
    cfg: &AgentConfig,
    state: &StateDir,
    server: String,
    spool: SharedSpool,
    status: &Arc<AgentStatus>,
) -> Result<Streaming, Failure> {
    let mut opts = UplinkOptions::new(server, state.path());
    opts.max_in_flight = cfg.uplink.max_in_flight;
    opts.batch_events = cfg.uplink.batch_events;
    opts.heartbeat_interval = Duration::from_secs(cfg.uplink.heartbeat_interval_secs);
    let host = opts.hostname.clone();
    let spire = SpireOptions::from_config(&cfg.spire).map_err(|e| (78, e))?;
    let uplink = if let Some(spire) = spire {
        tracing::info!(socket = %spire.socket.display(), "taking the agent's identity from SPIRE");
        Uplink::start_with_spire(opts, spire, Arc::clone(&spool), Arc::clone(status))
            .map_err(|e| (69, format!("SPIRE: {e}")))?
    } else {
        let (svid, bundle) = enrolled_identity(state)?;
        Uplink::start(opts, svid, bundle, Arc::clone(&spool), Arc::clone(status))
            .map_err(|e| (71, format!("starting the uplink thread: {e}")))?
    };
    let agent_id = uplink
        .spiffe_id
        .agent_id()
        .ok_or((
            78,
            format!("{} is not an agent SPIFFE ID", uplink.spiffe_id),
        ))?
        .to_string();
    let source = EventSource { agent_id, host };
    Ok(Streaming {
        waker: uplink.waker(),
        spool,
        uplink,
        source,
    })
}

/// The SVID `hais-agent enroll` saved. An expired one is kept: the uplink asks the control
/// plane to renew it (an outage longer than the SVID's lifetime must not strand the agent), and
/// says so in the status report if it cannot. An unreadable or corrupted one cannot be
/// renewed: the agent stops with exit code 78 (which the systemd unit does not restart) and says
/// to enroll again.
fn enrolled_identity(state: &StateDir) -> Result<(hais_svid::Svid, hais_svid::Bundle), Failure> {
    let (svid, bundle) = state
        .load_identity()
        .map_err(|e| (e.exit_code(), e.to_string()))?
        .ok_or((78, "identity vanished from the state directory".to_string()))?;
    if svid.not_after <= time::OffsetDateTime::now_utc() {
        tracing::warn!(
            state_dir = %state.path().display(),
            expired_at = %svid.not_after,
            "the SVID has expired; the uplink will ask the control plane to renew it (if that is refused, enroll again with `hais-agent enroll --force`)"
        );
    }
    Ok((svid, bundle))
}

/// The main thread's loop: writes records as they come, flushing each so a reader (`tail -f`,
/// a log shipper) sees a stream as soon as it finishes, appends events to the spool and wakes
/// the uplink, and syncs the spool on its timer. On a write error the capture is stopped and
/// the rest of the channel drained, so the threads can finish; returns that error. A spool
/// error only loses those events (counted and logged): the records are still printed.
fn consume(
    rx: &Receiver<Finished>,
    mut out: Option<&mut Box<dyn Write>>,
    streaming: Option<&Streaming>,
    status: &AgentStatus,
    stop: &AtomicBool,
) -> Option<std::io::Error> {
    let mut error = None;
    let mut last_sync = Instant::now();
    loop {
        let batch = match rx.recv_timeout(SPOOL_SYNC_EVERY) {
            Ok(b) => Some(b),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if let Some(b) = batch {
            if let (Some(text), Some(o)) = (&b.text, out.as_mut())
                && error.is_none()
                && let Err(e) = o.write_all(text.as_bytes()).and_then(|()| o.flush())
            {
                tracing::error!(error = %e, "writing records failed; stopping capture");
                stop.store(true, Ordering::SeqCst);
                error = Some(e);
            }
            if let Some(s) = streaming
                && !b.events.is_empty()
            {
                let res = s
                    .spool
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .append(&b.events);
                match res {
                    Ok(()) => s.waker.notify_one(),
                    Err(e) => {
                        status
                            .spool_errors
                            .fetch_add(b.events.len() as u64, Ordering::Relaxed);
                        tracing::error!(error = %e, events = b.events.len(), "spool write failed; events lost");
                    }
                }
            }
        }
        if let Some(s) = streaming
            && last_sync.elapsed() >= SPOOL_SYNC_EVERY
        {
            last_sync = Instant::now();
            let mut spool = s.spool.lock().unwrap_or_else(|p| p.into_inner());
            if spool.needs_sync()
                && let Err(e) = spool.sync()
            {
                tracing::warn!(error = %e, "syncing the spool");
            }
        }
    }
    if error.is_none()
        && let Some(o) = out
        && let Err(e) = o.flush()
    {
        error = Some(e);
    }
    error
}

/// One interface's capture loop and its engine.
struct Worker {
    cap: LiveCapture,
    engine: Engine,
    name: String,
    stop: Arc<AtomicBool>,
    tx: SyncSender<Finished>,
    json: bool,
    /// Format records for the output.
    print: bool,
    /// Turn finished streams into events (when streaming).
    events: Option<EventSource>,
    counters: Arc<InterfaceCounters>,
    status: Arc<AgentStatus>,
    stats_every: Duration,
    /// Spots first packets and asks for their attribution (when attribution runs).
    notifier: Option<Notifier>,
    attributor: Option<Arc<Attributor>>,
    /// Finished streams waiting for their attribution.
    holdback: Holdback<StreamReport>,
    /// Add the workload to printed records.
    with_workload: bool,
    /// The longest pause on a quiet interface (shorter while attribution runs).
    idle_wait_max: Duration,
    /// What is gathered for the next hand-over, and since when (see [`HANDOVER_EVERY`]).
    pending: Finished,
    pending_since: Option<Instant>,
}

/// What a capture thread hands back at the end.
struct WorkerDone {
    stats: Stats,
    drops: CaptureStats,
    error: Option<LiveError>,
}

impl Worker {
    fn run(mut self) -> WorkerDone {
        let link = self.cap.link_type();
        let mut last_sweep = Instant::now();
        let mut last_stats = Instant::now();
        let mut error = None;
        while !self.stop.load(Ordering::Relaxed) {
            let engine = &mut self.engine;
            let notifier = &mut self.notifier;
            match self.cap.dispatch(BATCH, |p| {
                // Before the engine, so the request is queued as early as possible.
                if let Some(n) = notifier {
                    n.on_frame(p.ts_us, link, p.data);
                }
                engine.on_frame(p.ts_us, link, p.data);
            }) {
                Ok(0) => {
                    // Until the kernel hands packets over; streams held back for their
                    // attribution or gathered for a hand-over need a look sooner.
                    let wait = if self.holdback.is_empty() && self.pending_since.is_none() {
                        IDLE_WAIT_MAX
                    } else {
                        self.idle_wait_max
                    };
                    if let Err(e) = self.cap.wait(wait) {
                        tracing::error!(interface = %self.name, error = %e, "capture stopped");
                        error = Some(e);
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(interface = %self.name, error = %e, "capture stopped");
                    error = Some(e);
                    break;
                }
            }
            let now = Instant::now();
            if now.duration_since(last_sweep) >= SWEEP_EVERY {
                last_sweep = now;
                // Packet times are the kernel's wall clock, so the sweep uses it too.
                self.engine.expire_idle(wall_clock_us());
                self.publish();
            }
            let finished = self.engine.take_finished();
            if !finished.is_empty() || !self.holdback.is_empty() || self.pending_since.is_some() {
                self.send(finished, false);
            }
            if now.duration_since(last_stats) >= self.stats_every {
                last_stats = now;
                self.log_stats();
            }
        }
        let finished = self.engine.finish();
        self.send(finished, false);
        // Streams of flows that began just before shutdown may still be resolving.
        let deadline = Instant::now() + HOLDBACK_WAIT;
        while !self.holdback.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
            self.send(Vec::new(), false);
        }
        self.send(Vec::new(), true);
        self.log_stats();
        self.publish();
        WorkerDone {
            stats: self.engine.stats().clone(),
            drops: self.cap.totals(),
            error,
        }
    }

    /// Turns finished streams into records and events and hands them to the main thread.
    /// With attribution, each stream first gets its flow's workload; those whose answer is
    /// not in yet wait in the hold-back (released here on a later call, or all of them when
    /// `force`).
    fn send(&mut self, reports: Vec<StreamReport>, force: bool) {
        let ready = match &self.attributor {
            Some(att) => {
                let now = Instant::now();
                let mut out = Vec::with_capacity(reports.len());
                let mut ready = Vec::with_capacity(reports.len());
                for r in reports {
                    match events::report_key(&r) {
                        Some(k) => self.holdback.offer(att, k, r, now, &mut out),
                        None => ready.push((r, None)),
                    }
                }
                self.holdback.poll(att, now, force, &mut out);
                ready.extend(out.into_iter().map(|(r, a)| (r, events::workload_of(&a))));
                ready
            }
            None => reports.into_iter().map(|r| (r, None)).collect(),
        };
        if !ready.is_empty() {
            self.gather(ready);
        }
        let due = self.pending_since.is_some_and(|t| {
            force || t.elapsed() >= HANDOVER_EVERY || self.pending.events.len() >= HANDOVER_EVENTS
        });
        if due {
            self.pending_since = None;
            // The receiver only goes away after every worker has ended.
            let _ = self.tx.send(std::mem::take(&mut self.pending));
        }
    }

    /// Adds streams, with their workloads, to what the next hand-over carries.
    fn gather(&mut self, ready: Vec<(StreamReport, Option<Workload>)>) {
        let batch = &mut self.pending;
        let before = batch.events.len();
        if let Some(src) = &self.events {
            for (r, w) in &ready {
                match events::to_event_with(r, src, w.clone()) {
                    Ok(ev) => batch.events.push(events::encode(&ev)),
                    Err(skip) => {
                        if let events::Skip::Invalid(why) = &skip {
                            tracing::debug!(stream = r.stream, %why, "stream not sent");
                        }
                        self.status.events_skipped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            self.counters
                .events
                .fetch_add((batch.events.len() - before) as u64, Ordering::Relaxed);
        }
        if self.print {
            let text = format_batch(
                ready,
                &self.name,
                self.json,
                self.with_workload,
                wall_clock_us(),
            );
            batch.text.get_or_insert_with(String::new).push_str(&text);
        }
        if batch.events.len() > before || batch.text.is_some() {
            self.pending_since.get_or_insert_with(Instant::now);
        }
    }

    /// Copies the engine's and libpcap's counters where `status` and heartbeats read them.
    fn publish(&self) {
        let s = self.engine.stats();
        let d = self.cap.totals();
        let c = &self.counters;
        let set = |a: &std::sync::atomic::AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        set(&c.packets, s.packets);
        set(&c.bytes, s.bytes);
        set(&c.parse_errors, s.error_total());
        set(&c.streams, s.streams_reported);
        set(&c.live_flows, self.engine.live_flows() as u64);
        set(&c.kernel_dropped, d.dropped);
        set(&c.interface_dropped, d.if_dropped);
    }

    fn log_stats(&mut self) {
        let before = self.cap.totals();
        match self.cap.stats() {
            Ok(now) => {
                let s = self.engine.stats();
                tracing::info!(
                    interface = %self.name,
                    received = now.received,
                    kernel_dropped = now.dropped,
                    interface_dropped = now.if_dropped,
                    packets = s.packets,
                    bytes = s.bytes,
                    live_flows = self.engine.live_flows(),
                    streams = s.streams_reported,
                    errors = s.error_total(),
                    "capture statistics"
                );
                let new_drops = (
                    now.dropped - before.dropped,
                    now.if_dropped - before.if_dropped,
                );
                if new_drops != (0, 0) {
                    tracing::warn!(
                        interface = %self.name,
                        kernel_dropped = new_drops.0,
                        interface_dropped = new_drops.1,
                        kernel_dropped_total = now.dropped,
                        interface_dropped_total = now.if_dropped,
                        "packets dropped since the last report (fingerprints of those flows may be missing)"
                    );
                }
            }
            Err(e) => tracing::warn!(interface = %self.name, error = %e, "no capture statistics"),
        }
    }
}

/// Each record as `read` prints it, plus where (`interface`) and when (`ts`, the time the
/// stream was reported, ISO-8601 UTC) it was seen: a live agent's output has no capture
/// file to say either. With `with_workload`, the flow's `workload` comes last, so the rest of
/// the line is the same with or without it.
fn format_batch(
    reports: Vec<(StreamReport, Option<Workload>)>,
    interface: &str,
    json: bool,
    with_workload: bool,
    now_us: u64,
) -> String {
    let ts = iso8601_utc(now_us);
    let mut text = String::with_capacity(512 * reports.len());
    for (r, w) in reports {
        let mut record = r.record;
        record.push("interface", interface);
        record.push("ts", ts.clone());
        if with_workload {
            record.push("workload", attribution::workload_record(w.as_ref()));
        }
        let v = Value::Map(record);
        if json {
            write_json_line(&mut text, &v);
        } else {
            write_yaml_list_item(&mut text, &v);
        }
    }
    text
}

fn wall_clock_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` for microseconds since the epoch.
fn iso8601_utc(us: u64) -> String {
    let secs = us / 1_000_000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let sod = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        us % 1_000_000
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm), so a
/// timestamp needs no date-time crate.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn merge_stats(total: &mut Stats, s: &Stats) {
    total.packets += s.packets;
    total.bytes += s.bytes;
    total.tcp_packets += s.tcp_packets;
    total.udp_packets += s.udp_packets;
    total.flows += s.flows;
    total.flows_evicted += s.flows_evicted;
    total.streams_reported += s.streams_reported;
    for (k, v) in &s.errors {
        *total.errors.entry(k.clone()).or_insert(0) += v;
    }
}

/// One line on how attribution went, for the operator judging whether it works here.
fn print_attribution_summary(s: &attribution::AttributorStats) {
    let pct = |n: u64| {
        if s.requests == 0 {
            0.0
        } else {
            100.0 * n as f64 / s.requests as f64
        }
    };
    let per_flow_us = if s.requests == 0 {
        0.0
    } else {
        s.busy_ns as f64 / s.requests as f64 / 1000.0
    };
    eprintln!(
        "hais-agent run: attribution: {} flows, {} attributed ({:.1}%), {} process gone, \
         {} not local, {} dropped (queue full), {} errors; {:.1} µs per flow; eBPF tracer {}",
        s.requests,
        s.attributed,
        pct(s.attributed),
        s.process_gone,
        s.not_local,
        s.dropped,
        s.errors,
        per_flow_us,
        if s.ebpf {
            format!("on ({} flows from its records)", s.ebpf_hits)
        } else {
            "off".to_owned()
        }
    );
}

fn print_summary(stats: &Stats, drops: &CaptureStats) {
    let mut line = format!(
        "hais-agent run: {} packets, {} bytes, {} flows, {} streams with fingerprints, \
         {} dropped by the kernel, {} dropped by interfaces, {} errors",
        stats.packets,
        stats.bytes,
        stats.flows,
        stats.streams_reported,
        drops.dropped,
        drops.if_dropped,
        stats.error_total()
    );
    if !stats.errors.is_empty() {
        let kinds: Vec<String> = stats
            .errors
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        line.push_str(&format!(" ({})", kinds.join(", ")));
    }
    eprintln!("{line}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Proto;
    use crate::output::Map;

    #[test]
    fn iso8601_dates() {
        assert_eq!(iso8601_utc(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            iso8601_utc(1_700_000_000_123_456),
            "2023-11-14T22:13:20.123456Z"
        );
        assert_eq!(
            iso8601_utc(951_782_400_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
        assert_eq!(
            iso8601_utc(4_107_542_399_000_000),
            "2100-02-28T23:59:59.000000Z"
        );
        assert_eq!(
            iso8601_utc(4_107_542_400_000_000),
            "2100-03-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn records_keep_read_layout_and_gain_interface_and_ts() {
        let mut record = Map::new();
        record.push("stream", 0u64);
        record.push("ja4", "t13d1516h2_8daaf6152771_02713d6af862");
        let r = StreamReport {
            proto: Proto::Tcp,
            stream: 0,
            record,
            ja4_stable: None,
        };
        let text = format_batch(vec![(r.clone(), None)], "eth0", true, false, 0);
        assert_eq!(
            text,
            "{\"stream\":0,\"ja4\":\"t13d1516h2_8daaf6152771_02713d6af862\",\
             \"interface\":\"eth0\",\"ts\":\"1970-01-01T00:00:00.000000Z\"}\n"
        );
        let yaml = format_batch(vec![(r.clone(), None)], "eth0", false, false, 0);
        assert!(yaml.starts_with("- stream: 0\n"), "{yaml}");
        assert!(yaml.contains("  interface: eth0\n"), "{yaml}");
        // `--with-workload` appends the workload object, leaving the rest as it was.
        let w = Workload {
            pid: Some(7),
            uid: Some(65534),
            user: Some("nobody".into()),
            ..Workload::default()
        };
        let with = format_batch(vec![(r.clone(), Some(w))], "eth0", true, true, 0);
        assert_eq!(
            with,
            text.trim_end().trim_end_matches('}').to_string()
                + ",\"workload\":{\"pid\":7,\"uid\":65534,\"user\":\"nobody\"}}\n"
        );
        let unknown = format_batch(vec![(r, None)], "eth0", true, true, 0);
        assert!(
            unknown.ends_with(",\"workload\":{\"unattributed\":\"unknown\"}}\n"),
            "{unknown}"
        );
    }
}
