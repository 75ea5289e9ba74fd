//! The attribution worker: resolves flows on its own thread and keeps the answers in a bounded
//! cache until the flow's event is built.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{
    Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError, sync_channel,
};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::ebpf::{ConnectTracer, Connector};
use crate::metadata::Metadata;
use crate::procfs::{Holder, ProcScanner};
use crate::sockdiag::{SockDiag, SocketOwner, wildcard_for};
use crate::{Attribution, Direction, FlowKey, Proto};

/// Sizes and timings of the worker.
#[derive(Debug, Clone)]
pub struct AttributorConfig {
    /// Flows waiting to be resolved; beyond this new flows are marked
    /// [`Attribution::Dropped`] instead of blocking capture.
    pub queue: usize,
    /// Resolved flows kept until taken; the oldest are forgotten beyond this.
    pub cache: usize,
    /// An inbound connection still in the accept queue has no owner yet; it is asked again
    /// after this delay (once) before falling back to the listener.
    pub accept_retry: Duration,
    /// How long the worker waits after a flow arrives for more to batch with it. Resolving a
    /// batch costs about one `/proc` pass however many flows it holds, so this trades a few
    /// milliseconds of latency (short against any process's lifetime) for CPU at high rates.
    pub batch_window: Duration,
    /// Batching starts above this many new flows per second.
    pub batch_above_rate: f64,
    /// Record outbound TCP connections in the kernel as they are made (the eBPF
    /// [`ConnectTracer`]), so that they need no `/proc` search. Falls back to `/proc` alone,
    /// with a warning, where the tracer cannot load.
    pub ebpf: bool,
}

impl Default for AttributorConfig {
    fn default() -> Self {
        AttributorConfig {
            queue: 4096,
            cache: 65536,
            accept_retry: Duration::from_millis(2),
            batch_window: Duration::from_millis(10),
            batch_above_rate: 200.0,
            ebpf: true,
        }
    }
}

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttributorStats {
    pub requests: u64,
    pub attributed: u64,
    pub process_gone: u64,
    pub not_local: u64,
    pub dropped: u64,
    pub errors: u64,
    /// Time the worker spent resolving, in nanoseconds (cost per flow = busy / requests).
    pub busy_ns: u64,
    /// Event-time lookups ([`Attributor::take`]) that found the flow resolved.
    pub cache_hits: u64,
    /// Event-time lookups that found nothing (flow never notified, or evicted).
    pub cache_misses: u64,
    /// Socket owners found among recently seen processes, without scanning `/proc`.
    pub hot_pid_hits: u64,
    /// Socket owners found among the processes created since the previous pass.
    pub new_pid_hits: u64,
    /// Socket owners that needed a scan of every process.
    pub full_scans: u64,
    /// Descriptors probed in `/proc/<pid>/fd` (one `stat` each, the main cost of resolving).
    pub fd_probes: u64,
    /// `/proc/<pid>/fd` directories listed (one `getdents` pass over a descriptor table each).
    pub fd_dirs_read: u64,
    /// Batches resolved.
    pub batches: u64,
    /// Whether the eBPF connect tracer runs.
    pub ebpf: bool,
    /// Flows whose opener the eBPF tracer had recorded (no `/proc` search needed).
    pub ebpf_hits: u64,
    /// Of those, flows whose process had exited (or whose pid was reused) before its facts
    /// could be read: attributed with what the kernel recorded (pid, name, uid, cgroup).
    pub ebpf_exited: u64,
    /// Connection records taken from the tracer's kernel queue (asked about or not).
    pub ebpf_records: u64,
    /// Runs of the tracer's kernel program and the time they took, in ns (counted only while
    /// `kernel.bpf_stats_enabled` is 1; read at most once a second). This CPU is spent in the
    /// connecting processes and softirqs, not in the agent.
    pub ebpf_prog_runs: u64,
    pub ebpf_prog_ns: u64,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    attributed: AtomicU64,
    process_gone: AtomicU64,
    not_local: AtomicU64,
    dropped: AtomicU64,
    errors: AtomicU64,
    busy_ns: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    hot_pid_hits: AtomicU64,
    new_pid_hits: AtomicU64,
    full_scans: AtomicU64,
    fd_probes: AtomicU64,
    fd_dirs_read: AtomicU64,
    batches: AtomicU64,
    ebpf: std::sync::atomic::AtomicBool,
    ebpf_hits: AtomicU64,
    ebpf_exited: AtomicU64,
    ebpf_records: AtomicU64,
    ebpf_prog_runs: AtomicU64,
    ebpf_prog_ns: AtomicU64,
}

#[derive(Debug)]
struct Cache {
    map: HashMap<FlowKey, Attribution>,
    order: VecDeque<FlowKey>,
    cap: usize,
    /// Flows handed to the worker and not answered yet (at most the queue's capacity plus the
    /// batch being resolved).
    asked: HashSet<FlowKey>,
}

impl Cache {
    fn insert(&mut self, key: FlowKey, a: Attribution) {
        if self.map.insert(key, a).is_none() {
            self.order.push_back(key);
            while self.map.len() > self.cap {
                match self.order.pop_front() {
                    Some(old) => {
                        self.map.remove(&old);
                    }
                    None => break,
                }
            }
        }
    }
}

#[derive(Debug)]
struct Shared {
    cache: Mutex<Cache>,
    n: Counters,
}

/// Handle to the attribution worker. Cheap to share behind an `Arc`; every method is
/// non-blocking apart from a short cache lock.
#[derive(Debug)]
pub struct Attributor {
    tx: Option<SyncSender<FlowKey>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Attributor {
    /// Starts the worker. Fails when netlink sock_diag is unavailable (not Linux, or a sandbox
    /// that forbids netlink sockets).
    pub fn start(cfg: AttributorConfig) -> io::Result<Attributor> {
        let sd = SockDiag::open()?;
        let tracer = if cfg.ebpf {
            ConnectTracer::start()
                .inspect_err(|e| {
                    tracing::warn!(
                        error = %e,
                        "eBPF connect tracer unavailable; attributing through /proc alone \
                         (costlier, and blind to processes that exit at once)"
                    )
                })
                .ok()
        } else {
            None
        };
        let (tx, rx) = sync_channel(cfg.queue);
        let shared = Arc::new(Shared {
            cache: Mutex::new(Cache {
                map: HashMap::new(),
                order: VecDeque::new(),
                cap: cfg.cache.max(1),
                asked: HashSet::new(),
            }),
            n: Counters::default(),
        });
        shared.n.ebpf.store(tracer.is_some(), Ordering::Relaxed);
        let s = shared.clone();
        let resolver = Resolver::new(sd, tracer, cfg.accept_retry);
        let thread = std::thread::Builder::new()
            .name("hais-attribute".into())
            .spawn(move || worker(resolver, rx, s, cfg))?;
        Ok(Attributor {
            tx: Some(tx),
            shared,
            thread: Some(thread),
        })
    }

    /// Asks for `key` to be resolved. Call it when the flow's first packet is seen, while the
    /// process is still alive. Never blocks.
    pub fn notify(&self, key: FlowKey) {
        let Some(tx) = &self.tx else { return };
        // Marked before it is sent, so the worker's answer always comes after the mark.
        self.lock().asked.insert(key);
        match tx.try_send(key) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.shared.n.dropped.fetch_add(1, Ordering::Relaxed);
                let mut cache = self.lock();
                cache.asked.remove(&key);
                cache.insert(key, Attribution::Dropped);
            }
            Err(TrySendError::Disconnected(_)) => {
                self.lock().asked.remove(&key);
            }
        }
    }

    /// Whether the worker was asked about `key` and is still working on it: its answer is
    /// coming, however long resolving takes (a large executable to hash, a busy `/proc`).
    pub fn resolving(&self, key: &FlowKey) -> bool {
        self.lock().asked.contains(key)
    }

    /// The answer for `key` so far, removing it from the cache (each flow's event takes its
    /// attribution once).
    pub fn take(&self, key: &FlowKey) -> Attribution {
        let got = self.lock().map.remove(key);
        match got {
            Some(a) => {
                self.shared.n.cache_hits.fetch_add(1, Ordering::Relaxed);
                a
            }
            None => {
                self.shared.n.cache_misses.fetch_add(1, Ordering::Relaxed);
                Attribution::Unknown
            }
        }
    }

    /// The answer for `key` so far, leaving it in the cache.
    pub fn peek(&self, key: &FlowKey) -> Attribution {
        self.lock()
            .map
            .get(key)
            .cloned()
            .unwrap_or(Attribution::Unknown)
    }

    pub fn stats(&self) -> AttributorStats {
        let n = &self.shared.n;
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        AttributorStats {
            requests: g(&n.requests),
            attributed: g(&n.attributed),
            process_gone: g(&n.process_gone),
            not_local: g(&n.not_local),
            dropped: g(&n.dropped),
            errors: g(&n.errors),
            busy_ns: g(&n.busy_ns),
            cache_hits: g(&n.cache_hits),
            cache_misses: g(&n.cache_misses),
            hot_pid_hits: g(&n.hot_pid_hits),
            new_pid_hits: g(&n.new_pid_hits),
            full_scans: g(&n.full_scans),
            fd_probes: g(&n.fd_probes),
            fd_dirs_read: g(&n.fd_dirs_read),
            batches: g(&n.batches),
            ebpf: n.ebpf.load(Ordering::Relaxed),
            ebpf_hits: g(&n.ebpf_hits),
            ebpf_exited: g(&n.ebpf_exited),
            ebpf_records: g(&n.ebpf_records),
            ebpf_prog_runs: g(&n.ebpf_prog_runs),
            ebpf_prog_ns: g(&n.ebpf_prog_ns),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic while holding the lock leaves a consistent map; keep using it.
        self.shared
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Attributor {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How often an idle worker empties the eBPF tracer's queue.
const TRACER_DRAIN_EVERY: Duration = Duration::from_millis(100);

/// Most flows resolved in one batch.
const MAX_BATCH: usize = 256;

/// How long the facts of a process are reused before being read again (a process may change
/// uid or exec another program; this bounds how long an event can carry the old facts).
const INFO_TTL: Duration = Duration::from_secs(5);
/// Processes whose facts are kept.
const INFO_CACHE: usize = 4096;

/// Facts of recently seen processes, keyed by pid and start time so that a reused pid is never
/// given another process's facts. The start time comes with the holder (read once when the
/// scanner started tracking the process), so a cached answer costs no read of `/proc`.
#[derive(Debug, Default)]
pub struct InfoCache {
    map: HashMap<u32, (u64, Instant, Arc<crate::ProcessInfo>)>,
}

impl InfoCache {
    fn get(
        &mut self,
        procs: &mut ProcScanner,
        meta: &mut Metadata,
        holder: Holder,
    ) -> Option<Arc<crate::ProcessInfo>> {
        let Holder { pid, start } = holder;
        if let Some((s, at, info)) = self.map.get(&pid)
            && *s == start
            && at.elapsed() < INFO_TTL
        {
            return Some(info.clone());
        }
        let mut info = procs.process_info(pid)?;
        meta.enrich(&mut info);
        let info = Arc::new(info);
        if self.map.len() >= INFO_CACHE {
            self.map.retain(|_, (_, at, _)| at.elapsed() < INFO_TTL);
            if self.map.len() >= INFO_CACHE {
                self.map.clear();
            }
        }
        self.map.insert(pid, (start, Instant::now(), info.clone()));
        Some(info)
    }
}

fn worker(mut r: Resolver, rx: Receiver<FlowKey>, shared: Arc<Shared>, cfg: AttributorConfig) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut last_batch = Instant::now();
    let mut last_cost = Instant::now();
    let mut rate = 0.0f64; // flows per second, smoothed
    let mut open = true;
    while open {
        batch.clear();
        if rate >= cfg.batch_above_rate {
            // At high rates, let flows gather for a window: one pass over a busy process's
            // descriptors then serves them all. One sleep for the whole window, without parking
            // on the queue: waking up for each arriving flow (and having the capture thread
            // wake this one) would cost a context switch each, as much as resolving a flow.
            std::thread::sleep(cfg.batch_window);
            open = drain(&rx, &mut batch);
            if batch.is_empty() {
                rate = 0.0;
                continue;
            }
        } else {
            // At low rates CPU does not matter and waiting would only risk missing a
            // short-lived process: resolve as soon as a flow arrives.
            // With the eBPF tracer, wake up now and then to empty its queue, so that records
            // of connections nobody asks about (outside the capture filter) never pile up.
            match rx.recv_timeout(TRACER_DRAIN_EVERY) {
                Ok(first) => batch.push(first),
                Err(RecvTimeoutError::Timeout) => {
                    r.drain_tracer();
                    shared
                        .n
                        .ebpf_records
                        .store(r.ebpf_records(), Ordering::Relaxed);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
            open = drain(&rx, &mut batch);
        }
        let t0 = Instant::now();
        let since = t0.duration_since(last_batch).as_secs_f64().max(1e-6);
        rate = 0.8 * rate + 0.2 * (batch.len() as f64 / since);
        last_batch = t0;
        let n = &shared.n;
        n.requests.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let results = match r.resolve_batch(&batch) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "sock_diag lookup failed");
                n.errors.fetch_add(batch.len() as u64, Ordering::Relaxed);
                batch.iter().map(|&k| (k, Attribution::Unknown)).collect()
            }
        };
        let mut cache = shared
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (key, a) in results {
            let counter = match &a {
                Attribution::Process { .. } => &n.attributed,
                Attribution::SocketOnly { .. } => &n.process_gone,
                Attribution::NotLocal => &n.not_local,
                _ => &n.errors,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            cache.insert(key, a);
        }
        for key in &batch {
            cache.asked.remove(key);
        }
        drop(cache);
        let procs = &r.procs;
        n.hot_pid_hits
            .store(procs.counters.hot_hits, Ordering::Relaxed);
        n.new_pid_hits
            .store(procs.counters.new_pid_hits, Ordering::Relaxed);
        n.full_scans
            .store(procs.counters.full_scans, Ordering::Relaxed);
        n.fd_probes
            .store(procs.counters.fd_probes, Ordering::Relaxed);
        n.fd_dirs_read
            .store(procs.counters.fd_dirs_read, Ordering::Relaxed);
        n.batches.fetch_add(1, Ordering::Relaxed);
        n.ebpf_hits.store(r.ebpf_hits, Ordering::Relaxed);
        n.ebpf_exited.store(r.ebpf_exited, Ordering::Relaxed);
        n.ebpf_records.store(r.ebpf_records(), Ordering::Relaxed);
        if last_cost.elapsed() >= Duration::from_secs(1) {
            last_cost = Instant::now();
            if let Some(Ok((runs, ns))) = r.tracer.as_ref().map(ConnectTracer::program_cost) {
                n.ebpf_prog_runs.store(runs, Ordering::Relaxed);
                n.ebpf_prog_ns.store(ns, Ordering::Relaxed);
            }
        }
        n.busy_ns
            .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

/// Moves what is queued into `batch`, up to [`MAX_BATCH`]. `false` once the queue is closed
/// (the [`Attributor`] dropped) and empty.
fn drain(rx: &Receiver<FlowKey>, batch: &mut Vec<FlowKey>) -> bool {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(k) => batch.push(k),
            Err(TryRecvError::Empty) => return true,
            Err(TryRecvError::Disconnected) => return false,
        }
    }
    true
}

/// The sockets `query(key)` names for the flows `keys[i]`, `i` in `at`, looked up in one round
/// trip (none when `at` is empty), each with its index.
fn find_at(
    sd: &mut SockDiag,
    keys: &[FlowKey],
    at: Vec<usize>,
    query: impl Fn(&FlowKey) -> (Proto, SocketAddr, SocketAddr),
) -> io::Result<impl Iterator<Item = (usize, Option<SocketOwner>)>> {
    let queries: Vec<_> = at.iter().map(|&i| query(&keys[i])).collect();
    Ok(at.into_iter().zip(sd.find_many(&queries)?))
}

/// Everything resolving needs, owned by the worker thread.
#[derive(Debug)]
pub struct Resolver {
    sd: SockDiag,
    pub procs: ProcScanner,
    meta: Metadata,
    infos: InfoCache,
    tracer: Option<ConnectTracer>,
    cgroups: crate::cgroup::CgroupIds,
    accept_retry: Duration,
    /// See [`AttributorStats::ebpf_hits`] and [`AttributorStats::ebpf_exited`].
    pub ebpf_hits: u64,
    pub ebpf_exited: u64,
}

impl Resolver {
    /// A resolver using `tracer` first when there is one, then `/proc`; `accept_retry` as in
    /// [`AttributorConfig::accept_retry`].
    pub fn new(sd: SockDiag, tracer: Option<ConnectTracer>, accept_retry: Duration) -> Resolver {
        Resolver {
            sd,
            procs: ProcScanner::default(),
            meta: Metadata::default(),
            infos: InfoCache::default(),
            tracer,
            cgroups: crate::cgroup::CgroupIds::default(),
            accept_retry,
            ebpf_hits: 0,
            ebpf_exited: 0,
        }
    }

    /// Moves the eBPF tracer's new records into memory (nothing without a tracer).
    pub fn drain_tracer(&mut self) {
        if let Some(Err(e)) = self.tracer.as_mut().map(ConnectTracer::drain) {
            tracing::debug!(error = %e, "eBPF tracer drain failed");
        }
    }

    /// Records taken from the tracer so far.
    pub fn ebpf_records(&self) -> u64 {
        self.tracer.as_ref().map_or(0, |t| t.stats().drained)
    }

    /// Resolves several flows: those the eBPF tracer recorded from its records, the others
    /// sharing one search of `/proc`.
    pub fn resolve_batch(&mut self, keys: &[FlowKey]) -> io::Result<Vec<(FlowKey, Attribution)>> {
        let mut out = Vec::with_capacity(keys.len());
        let mut rest = Vec::new();
        self.drain_tracer();
        match self.tracer.as_mut() {
            Some(t) => {
                let mut opened = Vec::new();
                for &k in keys {
                    match k.proto {
                        Proto::Tcp => match t.take(k.src, k.dst) {
                            Some(c) => opened.push((k, c)),
                            None => rest.push(k),
                        },
                        Proto::Udp => rest.push(k),
                    }
                }
                out.extend(self.by_connector(opened));
            }
            None => rest.extend_from_slice(keys),
        }
        if !rest.is_empty() {
            out.extend(resolve_by_proc(
                &mut self.sd,
                &mut self.procs,
                &mut self.meta,
                &mut self.infos,
                &rest,
                self.accept_retry,
            )?);
        }
        Ok(out)
    }

    /// Attributions of flows whose opener the tracer recorded. The process's facts are read
    /// from `/proc` (once per process per batch to check it is still the one that connected,
    /// then from the cache); when it has exited, or its pid now names a process started after
    /// the connection, the flow keeps what the kernel recorded: pid, name, uid, and the cgroup
    /// (with its container and pod) when the cgroup still exists.
    fn by_connector(&mut self, opened: Vec<(FlowKey, Connector)>) -> Vec<(FlowKey, Attribution)> {
        let mut alive: HashMap<u32, Option<Holder>> = HashMap::new();
        let mut out = Vec::with_capacity(opened.len());
        for (key, c) in opened {
            self.ebpf_hits += 1;
            let holder = *alive.entry(c.tgid).or_insert_with(|| {
                let (_, start) = self.procs.stat(c.tgid)?;
                // Start times are whole clock ticks (10 ms), rounded down.
                (start.saturating_mul(10_000_000) <= c.boot_ns)
                    .then_some(Holder { pid: c.tgid, start })
            });
            let info = holder.and_then(|h| self.infos.get(&mut self.procs, &mut self.meta, h));
            let process = info.unwrap_or_else(|| {
                self.ebpf_exited += 1;
                let cgroup = self.cgroups.path(c.cgroup_id);
                let mut p = crate::ProcessInfo {
                    pid: c.tgid,
                    name: c.name(),
                    uid: c.uid,
                    user: self.procs.user_name(c.uid),
                    container: cgroup.as_deref().and_then(crate::cgroup::container_of),
                    pod_uid: cgroup.as_deref().and_then(crate::cgroup::pod_uid_of),
                    cgroup,
                    ..crate::ProcessInfo::default()
                };
                self.meta.enrich(&mut p);
                Arc::new(p)
            });
            out.push((
                key,
                Attribution::Process {
                    direction: Direction::Outbound,
                    process,
                },
            ));
        }
        out
    }
}

/// Resolves flows through sock_diag and `/proc`, sharing the scan of `/proc` between them.
fn resolve_by_proc(
    sd: &mut SockDiag,
    procs: &mut ProcScanner,
    meta: &mut Metadata,
    infos: &mut InfoCache,
    keys: &[FlowKey],
    accept_retry: Duration,
) -> io::Result<Vec<(FlowKey, Attribution)>> {
    // 1. The socket behind each flow, as initiator first, then as responder.
    let inbound = |k: &FlowKey| (k.proto, k.dst, k.src);
    let outbound: Vec<_> = keys.iter().map(|k| (k.proto, k.src, k.dst)).collect();
    let mut owners: Vec<Option<(SocketOwner, Direction)>> = sd
        .find_many(&outbound)?
        .into_iter()
        .map(|o| o.map(|o| (o, Direction::Outbound)))
        .collect();
    // An initiator's socket with no file left (its process closed it or exited: FIN_WAIT,
    // TIME_WAIT) names no process; the other end, when it is local, may.
    let fileless_out: Vec<Option<SocketOwner>> = owners
        .iter()
        .map(|f| f.and_then(|(o, _)| (o.inode == 0).then_some(o)))
        .collect();
    let missing: Vec<usize> = (0..keys.len())
        .filter(|&i| owners[i].is_none() || fileless_out[i].is_some())
        .collect();
    for (i, o) in find_at(sd, keys, missing, inbound)? {
        owners[i] = o.map(|o| (o, Direction::Inbound));
    }
    // An inbound TCP connection with no socket file yet is waiting in the listener's accept
    // queue: give the server a moment to accept it, then look again. One that has none any
    // more is over (TIME_WAIT): no point waiting. Either way, what is still without a file is
    // attributed to the listening socket, all in batched lookups.
    let orphan = |i: usize, owners: &[Option<(SocketOwner, Direction)>]| {
        keys[i].proto == Proto::Tcp
            && matches!(owners[i], Some((o, Direction::Inbound)) if o.inode == 0)
    };
    let waiting: Vec<usize> = (0..keys.len())
        .filter(|&i| orphan(i, &owners) && owners[i].is_some_and(|(o, _)| o.in_accept_queue()))
        .collect();
    if !waiting.is_empty() {
        std::thread::sleep(accept_retry);
        for (i, o) in find_at(sd, keys, waiting, inbound)? {
            if let Some(o) = o.filter(|o| o.inode != 0) {
                owners[i] = Some((o, Direction::Inbound));
            }
        }
    }
    let orphans: Vec<usize> = (0..keys.len()).filter(|&i| orphan(i, &owners)).collect();
    let listener = |k: &FlowKey| (k.proto, k.dst, wildcard_for(k.dst));
    for (i, l) in find_at(sd, keys, orphans, listener)? {
        if let Some(l) = l {
            owners[i] = Some((l, Direction::Inbound));
        }
    }
    // Neither end has a file: the initiator's socket, for its uid.
    for (found, out) in owners.iter_mut().zip(fileless_out) {
        if let Some(out) = out
            && found.is_none_or(|(o, _)| o.inode == 0)
        {
            *found = Some((out, Direction::Outbound));
        }
    }
    // 2. Their processes, in one pass. A socket no recently seen process holds is asked about
    // again before every process is scanned for it: if it has closed meanwhile, nobody holds it.
    let sockets: HashMap<u32, (Proto, SocketAddr, SocketAddr)> = keys
        .iter()
        .zip(&owners)
        .filter_map(|(k, f)| f.map(|(o, _)| (o.inode, (k.proto, o.local, o.remote))))
        .collect();
    let inodes: Vec<u32> = sockets.keys().copied().collect();
    let pids = procs.holders(&inodes, |want| {
        let asked: Vec<u32> = want
            .iter()
            .copied()
            .filter(|i| sockets.contains_key(i))
            .collect();
        let queries: Vec<_> = asked.iter().map(|i| sockets[i]).collect();
        // On an error, search on anyway.
        if let Ok(now) = sd.find_many(&queries) {
            for (ino, o) in asked.iter().zip(now) {
                if o.is_none_or(|o| o.inode != *ino) {
                    want.remove(ino);
                }
            }
        }
    });
    // 3. Facts, once per process (and reused across batches while fresh).
    let mut out = Vec::with_capacity(keys.len());
    for (&key, found) in keys.iter().zip(owners) {
        let Some((owner, direction)) = found else {
            out.push((key, Attribution::NotLocal));
            continue;
        };
        let info = pids
            .get(&owner.inode)
            .and_then(|&holder| infos.get(procs, meta, holder));
        out.push((
            key,
            match info {
                Some(process) => Attribution::Process { direction, process },
                None => Attribution::SocketOnly {
                    direction,
                    uid: owner.uid,
                },
            },
        ));
    }
    Ok(out)
}
