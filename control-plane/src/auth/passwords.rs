//! Password hashing with a bounded cost.
//!
//! Argon2id is deliberately expensive: one check takes ~19 MiB and tens of milliseconds of a
//! core. Unbounded, 128 concurrent wrong logins took a process from 19 MiB to 7 GiB. Here at most
//! `max_concurrent` hashes run at once (memory ≤ max_concurrent × 19 MiB), at most `max_queued`
//! requests wait for a turn, and none waits longer than [`MAX_WAIT`]: beyond that the caller is
//! told the server is busy (503 with `Retry-After`) instead of being queued without bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};
use tokio::sync::Semaphore;

use super::AuthError;

/// Longest a request waits for a hashing slot before it is refused as busy.
pub const MAX_WAIT: Duration = Duration::from_secs(10);

/// The bounded Argon2 worker pool's gate. Cheap to share (`Arc` inside).
#[derive(Debug, Clone)]
pub struct Passwords(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    permits: Semaphore,
    queued: AtomicUsize,
    max_queued: usize,
    /// Requests refused because every slot and queue place was taken.
    busy: AtomicU64,
}

/// Every hashing slot is taken and the queue is full (or the wait was too long).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many password checks in progress; retry shortly")]
pub struct Busy;

impl Passwords {
    /// `max_concurrent` 0 means one per CPU.
    pub fn new(max_concurrent: usize, max_queued: usize) -> Self {
        let n = if max_concurrent == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            max_concurrent
        };
        Passwords(Arc::new(Inner {
            permits: Semaphore::new(n),
            queued: AtomicUsize::new(0),
            max_queued,
            busy: AtomicU64::new(0),
        }))
    }

    /// Requests refused as busy so far (for `/metrics`).
    pub fn busy_total(&self) -> u64 {
        self.0.busy.load(Ordering::Relaxed)
    }

    /// Runs `f` on the blocking pool once a slot is free.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        let inner = &self.0;
        let permit = match inner.permits.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                // Count ourselves in the queue first, so the bound holds under a race.
                if inner.queued.fetch_add(1, Ordering::AcqRel) >= inner.max_queued {
                    inner.queued.fetch_sub(1, Ordering::AcqRel);
                    inner.busy.fetch_add(1, Ordering::Relaxed);
                    return Err(Busy);
                }
                let got = tokio::time::timeout(MAX_WAIT, inner.permits.acquire()).await;
                inner.queued.fetch_sub(1, Ordering::AcqRel);
                match got {
                    Ok(Ok(p)) => p,
                    _ => {
                        inner.busy.fetch_add(1, Ordering::Relaxed);
                        return Err(Busy);
                    }
                }
            }
        };
        let out = tokio::task::spawn_blocking(f).await;
        drop(permit);
        out.map_err(|_| Busy)
    }

    /// Hashes a password with Argon2id.
    pub async fn hash(&self, password: String) -> Result<String, AuthError> {
        self.run(move || {
            Argon2::default()
                .hash_password(password.as_bytes())
                .map(|h: PasswordHash| h.to_string())
                .map_err(|e| AuthError::Hash(e.to_string()))
        })
        .await
        .map_err(|_| AuthError::Busy)?
    }

    /// Checks a password against a stored PHC hash. A malformed hash is a mismatch, never an
    /// error the caller could tell apart.
    pub async fn verify(&self, password: String, hash: String) -> Result<bool, Busy> {
        self.run(move || {
            PasswordHash::new(&hash)
                .map(|h| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &h)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn argon2_hash_verifies() {
        let p = Passwords::new(1, 4);
        let h = p.hash("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(p.verify("correct horse".into(), h.clone()).await.unwrap());
        assert!(!p.verify("wrong".into(), h).await.unwrap());
        assert!(!p.verify("x".into(), "not a hash".into()).await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_the_slots_run_and_the_queue_is_bounded() {
        let p = Passwords::new(1, 2);
        let h = p.hash("pw".into()).await.unwrap();
        // Take the only slot, so every check must queue.
        let slot = p.0.permits.acquire().await.unwrap();
        let queued: Vec<_> = (0..2)
            .map(|_| {
                let (p, h) = (p.clone(), h.clone());
                tokio::spawn(async move { p.verify("pw".into(), h).await })
            })
            .collect();
        while p.0.queued.load(Ordering::Acquire) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The queue is full: the next one is refused at once, without hashing.
        assert_eq!(p.verify("pw".into(), h.clone()).await, Err(Busy));
        assert_eq!(p.busy_total(), 1);
        drop(slot);
        for t in queued {
            assert_eq!(t.await.unwrap(), Ok(true), "a queued check completes");
        }
        assert_eq!(p.0.queued.load(Ordering::Acquire), 0);
    }
}
