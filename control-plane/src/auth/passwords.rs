//! Password hashing with a bounded cost.
//!
//! Argon2id is deliberately expensive: one check takes ~19 MiB and tens of milliseconds of a
//! core. Unbounded, 128 concurrent wrong logins took a process from 19 MiB to 7 GiB. Here a fixed
//! set of `workers` threads does all hashing, each with one Argon2 memory area it allocates once
//! and reuses (so memory is `workers × 19 MiB`, whatever the load — handing each check to a
//! fresh allocation let glibc keep a freed 19 MiB block per allocator arena, 400-500 MB under a
//! flood). At most `max_queued` checks wait for a worker, none longer than [`MAX_WAIT`]; beyond
//! that the caller is told the server is busy (503 with `Retry-After`) instead of being queued
//! without bound.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};

use super::AuthError;

/// Longest a request waits for a hashing worker before it is refused as busy.
pub const MAX_WAIT: Duration = Duration::from_secs(10);
/// Largest Argon2 memory cost a stored hash may ask for (KiB): a hand-edited or foreign hash
/// must not make a worker allocate without bound.
const MAX_M_COST_KIB: u32 = 256 * 1024;

/// One unit of work for a worker: runs with the worker's memory area.
type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

/// The bounded Argon2 worker pool. Cheap to share (`Arc` inside); the workers stop when the
/// last handle is dropped.
#[derive(Debug, Clone)]
pub struct Passwords(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    queue: SyncSender<(Instant, Job)>,
    /// Requests refused because every worker and queue place was taken, or they waited too long.
    busy: Arc<AtomicU64>,
    /// Jobs waiting for a worker now.
    queued: Arc<AtomicUsize>,
    max_queued: usize,
}

/// Every worker is taken and the queue is full (or the wait was too long).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many password checks in progress; retry shortly")]
pub struct Busy;

impl Passwords {
    /// `workers` 0 means one per CPU.
    pub fn new(workers: usize, max_queued: usize) -> Self {
        let n = if workers == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            workers
        };
        // The channel holds the waiting jobs; a worker holds the one it runs.
        let (tx, rx) = sync_channel::<(Instant, Job)>(max_queued);
        let rx = Arc::new(Mutex::new(rx));
        let busy = Arc::new(AtomicU64::new(0));
        let queued = Arc::new(AtomicUsize::new(0));
        for i in 0..n {
            let (rx, busy, queued) = (rx.clone(), busy.clone(), queued.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("hais-argon2-{i}"))
                .spawn(move || worker(&rx, &busy, &queued));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a password hashing thread");
            }
        }
        Passwords(Arc::new(Inner {
            queue: tx,
            busy,
            queued,
            max_queued,
        }))
    }

    /// Requests refused as busy so far (for `/metrics`).
    pub fn busy_total(&self) -> u64 {
        self.0.busy.load(Ordering::Relaxed)
    }

    /// Checks waiting for a worker now.
    pub fn queued(&self) -> usize {
        self.0.queued.load(Ordering::Relaxed)
    }

    /// Whether a check submitted now would be refused (counted as busy if so): callers answer
    /// busy before doing any other work for a request that could not be checked anyway.
    pub fn saturated(&self) -> bool {
        let full = self.queued() >= self.0.max_queued;
        if full {
            self.0.busy.fetch_add(1, Ordering::Relaxed);
        }
        full
    }

    /// Runs `f` on a worker with its memory area.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<T, Busy> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |mem| {
            let _ = tx.send(f(mem));
        });
        // Counted before it can be taken, so the worker's decrement never comes first.
        self.0.queued.fetch_add(1, Ordering::Relaxed);
        match self.0.queue.try_send((Instant::now(), job)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.0.queued.fetch_sub(1, Ordering::Relaxed);
                self.0.busy.fetch_add(1, Ordering::Relaxed);
                return Err(Busy);
            }
        }
        // A dropped sender means the job waited past MAX_WAIT (counted by the worker).
        rx.await.map_err(|_| Busy)
    }

    /// Hashes a password with Argon2id (default parameters, random salt) into a PHC string.
    pub async fn hash(&self, password: String) -> Result<String, AuthError> {
        self.run(move |mem| hash_with(mem, password.as_bytes()))
            .await
            .map_err(|_| AuthError::Busy)?
    }

    /// Checks a password against a stored PHC hash. A malformed hash is a mismatch, never an
    /// error the caller could tell apart.
    pub async fn verify(&self, password: String, hash: String) -> Result<bool, Busy> {
        self.run(move |mem| verify_with(mem, password.as_bytes(), &hash))
            .await
    }
}

fn worker(rx: &Mutex<Receiver<(Instant, Job)>>, busy: &AtomicU64, queued: &AtomicUsize) {
    // Hashing yields the CPU to everything else in the process (on Linux a nice value is per
    // thread): under a login flood the async workers keep answering /health, refusals and
    // every other request promptly, and only logins wait.
    if let Err(e) = rustix::process::setpriority_process(None, 10) {
        tracing::debug!(error = %e, "could not lower the hashing thread's priority");
    }
    let mut mem: Vec<Block> = Vec::new();
    loop {
        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok((queued_at, job)) = next else {
            return; // every handle dropped
        };
        queued.fetch_sub(1, Ordering::Relaxed);
        if queued_at.elapsed() > MAX_WAIT {
            busy.fetch_add(1, Ordering::Relaxed);
            continue; // dropping the job tells its caller it is busy
        }
        job(&mut mem);
    }
}

/// The worker's memory area, grown to `blocks` (it only grows, up to [`MAX_M_COST_KIB`]).
fn area(mem: &mut Vec<Block>, blocks: usize) -> &mut [Block] {
    if mem.len() < blocks {
        mem.resize(blocks, Block::default());
    }
    &mut mem[..blocks]
}

fn hash_with(mem: &mut Vec<Block>, password: &[u8]) -> Result<String, AuthError> {
    let err = |e: &dyn std::fmt::Display| AuthError::Hash(e.to_string());
    let params = Params::default();
    let mut salt = [0u8; 16];
    rand::fill(&mut salt[..]);
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(password, &salt, &mut out, area(mem, params.block_count()))
        .map_err(|e| err(&e))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| err(&e))?,
        salt: Some(Salt::new(&salt).map_err(|e| err(&e))?),
        hash: Some(Output::new(&out).map_err(|e| err(&e))?),
    };
    Ok(phc.to_string())
}

fn verify_with(mem: &mut Vec<Block>, password: &[u8], hash: &str) -> bool {
    let Ok(h) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&h.salt, &h.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::new(h.algorithm.as_str()) else {
        return false;
    };
    let Ok(params) = Params::try_from(&h) else {
        return false;
    };
    if params.m_cost() > MAX_M_COST_KIB {
        return false;
    }
    let version = match h.version.map(Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let mut out = vec![0u8; expected.len()];
    let computed = Argon2::new(algorithm, version, params.clone()).hash_password_into_with_memory(
        password,
        salt,
        &mut out,
        area(mem, params.block_count()),
    );
    // `Output`'s equality is constant-time.
    computed.is_ok() && Output::new(&out).is_ok_and(|o| &o == expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::PasswordVerifier as _;

    #[tokio::test]
    async fn argon2_hash_verifies() {
        let p = Passwords::new(1, 4);
        let h = p.hash("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(p.verify("correct horse".into(), h.clone()).await.unwrap());
        assert!(!p.verify("wrong".into(), h.clone()).await.unwrap());
        assert!(!p.verify("x".into(), "not a hash".into()).await.unwrap());
        // Interoperates with the argon2 crate's own hashing and checking (hashes stored by
        // earlier versions keep working).
        Argon2::default()
            .verify_password(b"correct horse", &PasswordHash::new(&h).unwrap())
            .unwrap();
        let theirs =
            argon2::password_hash::PasswordHasher::hash_password(&Argon2::default(), b"older hash")
                .unwrap()
                .to_string();
        assert!(p.verify("older hash".into(), theirs.clone()).await.unwrap());
        assert!(!p.verify("other".into(), theirs).await.unwrap());
        // A stored hash asking for absurd memory is a mismatch, not an allocation.
        let greedy = "$argon2id$v=19$m=4194304,t=1,p=1$c29tZXNhbHRzb21lc2FsdA$\
                      AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert!(!p.verify("x".into(), greedy.into()).await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_the_workers_run_and_the_queue_is_bounded() {
        let p = Passwords::new(1, 2);
        let h = p.hash("pw".into()).await.unwrap();
        // Hold the only worker, so every check must queue.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let blocker = {
            let p = p.clone();
            tokio::spawn(async move {
                p.run(move |_| {
                    let _ = started_tx.send(());
                    let _ = held.recv();
                })
                .await
            })
        };
        started.await.unwrap();
        let queued: Vec<_> = (0..2)
            .map(|_| {
                let (p, h) = (p.clone(), h.clone());
                tokio::spawn(async move { p.verify("pw".into(), h).await })
            })
            .collect();
        // Once both sit in the queue, the next one is refused at once, without hashing.
        while p.queued() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(p.verify("pw".into(), h.clone()).await, Err(Busy));
        assert_eq!(p.busy_total(), 1);
        release.send(()).unwrap();
        blocker.await.unwrap().unwrap();
        for t in queued {
            assert_eq!(t.await.unwrap(), Ok(true), "a queued check completes");
        }
    }
}
