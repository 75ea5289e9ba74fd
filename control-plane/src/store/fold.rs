//! The roll-up stage: folds committed roll-up deltas into the roll-up tables, out of the ingest
//! transaction.
//!
//! Ingest stays a lean append: the events, plus one `rollup_pending` record per ingest
//! transaction holding that transaction's roll-up deltas, pre-aggregated in memory
//! ([`super::rollup::Rollups`]) and encoded compactly. Both are committed together, so a record
//! exists exactly when its events were stored, and it only counts events that were new (replays
//! are rejected by the events' primary key before the deltas are computed).
//!
//! A fold takes the oldest pending records (up to [`MAX_FOLD_EVENTS`] events' worth), merges
//! them in memory — a fingerprint seen in a hundred batches becomes one row update — upserts the
//! roll-up tables, and deletes the records it folded, all in one transaction. A crash before the
//! commit leaves the records pending; after it they are gone: each delta is applied exactly once.
//! Folds are serialised (PostgreSQL: a transaction-level advisory lock, so across processes too;
//! SQLite: its single writer connection), and each process also serialises its own folds with a
//! mutex so readers queue instead of holding connections.
//!
//! Who folds: every read of roll-ups (search, detail, top-N, labels, retention) first folds
//! whatever was pending when it started ([`Stage::settle`]), so a read reflects every ingest
//! acknowledged before it began (read-your-writes, as when roll-ups were updated inside the
//! ingest transaction), while ingest never waits for roll-ups. And a background worker, which
//! checks the backlog every `interval` and drains it when ingest has paused (no new record since
//! the last check), when it is worth a full fold ([`MAX_FOLD_EVENTS`]), or when it is
//! [`MAX_LAG`] old. Bigger folds coalesce more, so during an ingest burst the worker leaves the
//! CPU to ingest and folds in full chunks; the price is that a read issued during a burst may
//! first fold up to a chunk's worth of events.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::rollup::{Deltas, Rollups};
use super::{RollupBacklog, StoreError, StoreFuture};

/// Most events one fold transaction covers (bounds its memory and duration).
pub const MAX_FOLD_EVENTS: i64 = 250_000;

/// The background worker folds a backlog at the latest once it is this old.
pub const MAX_LAG: Duration = Duration::from_secs(2);

/// What the roll-up stage needs from a backend.
pub(crate) trait FoldBackend: Send + Sync + std::fmt::Debug + 'static {
    /// The id of the newest pending record, if any.
    fn newest_pending(&self) -> StoreFuture<'_, Option<i64>>;
    /// Pending records and the events they cover.
    fn pending(&self) -> StoreFuture<'_, RollupBacklog>;
    /// One fold transaction over the oldest pending records with id ≤ `upto`: at most
    /// `max_groups` records, and no more than [`MAX_FOLD_EVENTS`] events unless the first record
    /// alone has more. Returns what it folded.
    fn fold_once(&self, upto: i64, max_groups: u32) -> StoreFuture<'_, RollupBacklog>;
}

/// How many of the oldest candidate records `(id, events)` one fold takes: at least one, then
/// as many as fit in [`MAX_FOLD_EVENTS`].
pub(crate) fn take_count(rows: &[(i64, i64)]) -> usize {
    let mut total = 0;
    rows.iter()
        .take_while(|(_, n)| {
            total += n;
            total <= MAX_FOLD_EVENTS
        })
        .count()
        .max(rows.len().min(1))
}

/// Decodes the deleted records `(events, deltas)`; returns them with what they cover.
pub(crate) fn decode_all(
    rows: &[(i64, Vec<u8>)],
) -> Result<(Vec<Deltas>, RollupBacklog), StoreError> {
    let decoded = rows
        .iter()
        .map(|(_, b)| Deltas::decode(b))
        .collect::<Result<Vec<_>, _>>()?;
    let covered = RollupBacklog {
        groups: rows.len() as u64,
        events: rows.iter().map(|(n, _)| *n as u64).sum(),
    };
    Ok((decoded, covered))
}

/// Merges decoded records into one set of deltas (one row write per key).
pub(crate) fn merge_all(decoded: &[Deltas]) -> Rollups<'_> {
    let mut r = Rollups::default();
    for d in decoded {
        r.merge(d);
    }
    r
}

/// The running roll-up stage of one store.
#[derive(Debug)]
pub(crate) struct Stage {
    backend: Arc<dyn FoldBackend>,
    /// Serialises this process's folds.
    lock: Arc<tokio::sync::Mutex<()>>,
    worker: Mutex<Option<(watch::Sender<bool>, JoinHandle<()>)>>,
}

impl Stage {
    /// Starts the stage; with an `interval`, a background worker folds at that period.
    pub(crate) fn start(backend: Arc<dyn FoldBackend>, interval: Option<Duration>) -> Stage {
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        let worker = interval.map(|interval| {
            let (tx, mut rx) = watch::channel(false);
            let (backend, lock) = (backend.clone(), lock.clone());
            let task = tokio::spawn(async move {
                // The backlog at the previous check, and since when there is one.
                let mut last_groups = 0;
                let mut since: Option<tokio::time::Instant> = None;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = rx.changed() => return,
                    }
                    let backlog = match backend.pending().await {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::warn!(error = %e, "reading the roll-up backlog failed");
                            continue;
                        }
                    };
                    if backlog.groups == 0 {
                        (last_groups, since) = (0, None);
                        continue;
                    }
                    let first = *since.get_or_insert_with(tokio::time::Instant::now);
                    let idle = backlog.groups == last_groups;
                    last_groups = backlog.groups;
                    if !(idle
                        || backlog.events >= MAX_FOLD_EVENTS as u64
                        || first.elapsed() >= MAX_LAG)
                    {
                        continue;
                    }
                    match settle(&*backend, &lock, Some(&rx)).await {
                        Ok(()) => (last_groups, since) = (0, None),
                        Err(e) => tracing::warn!(error = %e, "roll-up fold failed; retrying later"),
                    }
                }
            });
            (tx, task)
        });
        Stage {
            backend,
            lock,
            worker: Mutex::new(worker),
        }
    }

    /// Folds every record that was pending when called (read-your-writes for roll-up reads).
    pub(crate) async fn settle(&self) -> Result<(), StoreError> {
        settle(&*self.backend, &self.lock, None).await
    }

    /// Folds at most `max_groups` of the oldest pending records.
    pub(crate) async fn fold(&self, max_groups: u32) -> Result<RollupBacklog, StoreError> {
        let _g = self.lock.lock().await;
        self.backend.fold_once(i64::MAX, max_groups).await
    }

    pub(crate) async fn pending(&self) -> Result<RollupBacklog, StoreError> {
        self.backend.pending().await
    }

    /// Runs `f` while no fold of this process runs (a fold of another process may; PostgreSQL
    /// callers take the advisory lock too).
    pub(crate) async fn exclusive<T>(
        &self,
        f: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let _g = self.lock.lock().await;
        f.await
    }

    /// Stops the worker; with a worker, folds what is left (a clean shutdown leaves nothing
    /// pending). Without one, pending records stay for the next start.
    pub(crate) async fn stop(&self) -> Result<(), StoreError> {
        let worker = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((tx, task)) = worker {
            let _ = tx.send(true);
            let _ = task.await;
            self.settle().await?;
        }
        Ok(())
    }
}

/// Folds, chunk by chunk, every record pending now; stops early when `stop` fires.
async fn settle(
    backend: &dyn FoldBackend,
    lock: &tokio::sync::Mutex<()>,
    stop: Option<&watch::Receiver<bool>>,
) -> Result<(), StoreError> {
    let Some(upto) = backend.newest_pending().await? else {
        return Ok(());
    };
    loop {
        let folded = {
            let _g = lock.lock().await;
            backend.fold_once(upto, u32::MAX).await?
        };
        if folded.groups == 0 || stop.is_some_and(|s| *s.borrow()) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_at_least_one_then_what_fits() {
        assert_eq!(take_count(&[]), 0);
        assert_eq!(take_count(&[(1, MAX_FOLD_EVENTS * 2), (2, 1)]), 1);
        assert_eq!(take_count(&[(1, 10), (2, 20), (3, MAX_FOLD_EVENTS)]), 2);
        assert_eq!(take_count(&[(1, 10), (2, 20)]), 2);
    }
}
