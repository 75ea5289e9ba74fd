//! The attribution worker: resolves flows on its own thread and keeps the answers in a bounded
//! cache until the flow's event is built.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::metadata::Metadata;
use crate::procfs::ProcScanner;
use crate::sockdiag::{SockDiag, wildcard_for};
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
}

impl Default for AttributorConfig {
    fn default() -> Self {
        AttributorConfig {
            queue: 4096,
            cache: 65536,
            accept_retry: Duration::from_millis(2),
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
    /// Lookups answered from the cache (the flow had been resolved before).
    pub cache_hits: u64,
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
}

#[derive(Debug)]
struct Cache {
    map: HashMap<FlowKey, Attribution>,
    order: VecDeque<FlowKey>,
    cap: usize,
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
        let (tx, rx) = sync_channel(cfg.queue);
        let shared = Arc::new(Shared {
            cache: Mutex::new(Cache {
                map: HashMap::new(),
                order: VecDeque::new(),
                cap: cfg.cache.max(1),
            }),
            n: Counters::default(),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("hais-attribute".into())
            .spawn(move || worker(sd, rx, s, cfg))?;
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
        match tx.try_send(key) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.shared.n.dropped.fetch_add(1, Ordering::Relaxed);
                self.lock().insert(key, Attribution::Dropped);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
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
            None => Attribution::Unknown,
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

fn worker(mut sd: SockDiag, rx: Receiver<FlowKey>, shared: Arc<Shared>, cfg: AttributorConfig) {
    let mut procs = ProcScanner::default();
    let mut meta = Metadata::default();
    while let Ok(key) = rx.recv() {
        let t0 = Instant::now();
        let n = &shared.n;
        n.requests.fetch_add(1, Ordering::Relaxed);
        let a = match resolve(&mut sd, &mut procs, &mut meta, key, cfg.accept_retry) {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "sock_diag lookup failed");
                n.errors.fetch_add(1, Ordering::Relaxed);
                Attribution::Unknown
            }
        };
        let counter = match &a {
            Attribution::Process { .. } => &n.attributed,
            Attribution::SocketOnly { .. } => &n.process_gone,
            Attribution::NotLocal => &n.not_local,
            _ => &n.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        shared
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, a);
        n.busy_ns
            .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

/// Resolves one flow (see the crate documentation for the steps).
pub fn resolve(
    sd: &mut SockDiag,
    procs: &mut ProcScanner,
    meta: &mut Metadata,
    key: FlowKey,
    accept_retry: Duration,
) -> io::Result<Attribution> {
    let (mut owner, direction) = match sd.find(key.proto, key.src, key.dst)? {
        Some(o) => (o, Direction::Outbound),
        None => match sd.find(key.proto, key.dst, key.src)? {
            Some(o) => (o, Direction::Inbound),
            None => return Ok(Attribution::NotLocal),
        },
    };
    if owner.inode == 0 && direction == Direction::Inbound && key.proto == Proto::Tcp {
        // Not accepted yet: give the server a moment, then use its listening socket.
        std::thread::sleep(accept_retry);
        if let Some(o) = sd.find(key.proto, key.dst, key.src)?
            && o.inode != 0
        {
            owner = o;
        } else if let Some(l) = sd.find(key.proto, key.dst, wildcard_for(key.dst))? {
            owner = l;
        }
    }
    if owner.inode != 0
        && let Some(pid) = procs.pid_of_inode(owner.inode)
        && let Some(mut info) = procs.process_info(pid)
    {
        meta.enrich(&mut info);
        return Ok(Attribution::Process {
            direction,
            process: Arc::new(info),
        });
    }
    Ok(Attribution::SocketOnly {
        direction,
        uid: owner.uid,
    })
}
