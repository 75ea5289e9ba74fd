//! Durable consumers: the members of a consumer group share a topic's partitions, handle each
//! partition's rows in log order, and commit their progress with the effects of their work.
//!
//! ```text
//! coordinator (one per member) every renew_every:
//!    heartbeat → live members n → my share ⌈16/n⌉ → renew my leases, take free or expired
//!    partitions up to my share, give back the excess; trim what every group committed
//! worker (one per owned partition):
//!    read ≤ max_rows readable rows after the cursor, in (xid, seq) order → decode →
//!    handler(batch)
//!      Ok        → commit checkpoint (cursor moves iff still mine and still where I read)
//!      transient → back off, try again (≤ max_attempts)
//!      else      → split the batch into single rows; a row that still fails is moved to the
//!                  dead letters and passed (the partition goes on)
//!    nothing to read → wait for a wake-up (live bus `bus.appended`) or poll_interval
//! replayer (one per member): dead letters whose replay an admin requested → handler
//! ```
//!
//! Guarantees: a row is handled until a member of the group commits it, so nothing is lost when
//! a handler fails, lags or its process dies; a row's effects are committed once, because the
//! checkpoint is committed with them and fenced (a member that lost its lease cannot commit, see
//! [`Checkpoint`]); rows of one partition (one identity) are handled in order, one at a time.
//! Effects outside the database (metrics, caches) are at least once.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::listen::{OnLive, Received};
use super::log::{DurableTopic, PARTITIONS, decode};
use super::topics::BusAppended;
use crate::store::bus::{Checkpoint, GroupPosition, LogRow, Position};
use crate::store::{Store, StoreError};

/// One stored row's items, as a handler sees them.
#[derive(Debug)]
pub struct Delivery<I> {
    pub seq: i64,
    pub created_us: i64,
    pub items: Vec<I>,
}

/// Rows of one partition handed to a handler together.
#[derive(Debug)]
pub struct Batch<T: DurableTopic> {
    pub part: i64,
    pub rows: Vec<Delivery<T::Item>>,
    /// What committing this batch records. A handler whose effects are in the database commits
    /// it in the same transaction ([`crate::store::bus::commit_checkpoint`]) and answers
    /// [`Ack::Committed`].
    pub checkpoint: Checkpoint,
    /// True when the rows are a dead letter being replayed (out of log order).
    pub replay: bool,
}

impl<T: DurableTopic> Batch<T> {
    /// Every item of the batch, in log order.
    pub fn items(&self) -> impl Iterator<Item = &T::Item> {
        self.rows.iter().flat_map(|r| r.items.iter())
    }
}

/// How a handler finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Done; the consumer commits the checkpoint.
    Done,
    /// The handler committed the checkpoint with its effects.
    Committed,
}

/// Why a handler failed, and whether trying again may help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    pub kind: FailureKind,
    pub message: String,
}

/// What a failure means for the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// May pass (database unreachable, a timeout): retried with back-off.
    Transient,
    /// The same input will always fail: the row goes to the dead letters.
    Permanent,
    /// The member lost the partition while working: its successor does the work.
    Fenced,
}

impl HandlerError {
    pub fn transient(message: impl Into<String>) -> Self {
        HandlerError {
            kind: FailureKind::Transient,
            message: message.into(),
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        HandlerError {
            kind: FailureKind::Permanent,
            message: message.into(),
        }
    }
}

impl From<StoreError> for HandlerError {
    fn from(e: StoreError) -> Self {
        let kind = match e {
            StoreError::Fenced(_) => FailureKind::Fenced,
            StoreError::Unavailable(_) | StoreError::Write(_) | StoreError::Database(_) => {
                FailureKind::Transient
            }
            _ => FailureKind::Permanent,
        };
        HandlerError {
            kind,
            message: e.to_string(),
        }
    }
}

/// The future a handler returns.
pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Result<Ack, HandlerError>> + Send + 'a>>;

/// What a consumer group does with a batch.
pub trait Handler<T: DurableTopic>: Send + Sync + 'static {
    fn handle<'a>(&'a self, batch: &'a Batch<T>) -> HandlerFuture<'a>;
}

/// Tuning of a consumer; the defaults suit production ([`crate::config`]'s `[bus]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerOptions {
    /// Rows handed to the handler at once.
    pub max_rows: i64,
    /// Deliveries of a row before it is dead-lettered.
    pub max_attempts: u32,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// How long a partition stays a member's without renewal: a dead member's partitions are
    /// taken over after at most this (plus one `renew_every`).
    pub lease_ttl: Duration,
    pub renew_every: Duration,
    /// How often an idle worker looks for rows without a wake-up (wake-ups can be lost when the
    /// live bus reconnects).
    pub poll_interval: Duration,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        ConsumerOptions {
            max_rows: 64,
            max_attempts: 5,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(10),
            renew_every: Duration::from_secs(2),
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// Counters of one consumer in this process, for `/metrics` and status.
#[derive(Debug, Default)]
pub struct ConsumerMetrics {
    /// Items whose handling was committed.
    pub handled: AtomicU64,
    pub batches: AtomicU64,
    /// Deliveries tried again after a failure.
    pub retries: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub replayed: AtomicU64,
    /// Commits refused because another member took the partition over.
    pub fenced: AtomicU64,
    /// Items being handled right now (read, not yet committed).
    pub pending: AtomicI64,
    pub partitions: AtomicI64,
    /// Handled items per second over the last coordinator period, as f64 bits.
    rate_bits: AtomicU64,
}

impl ConsumerMetrics {
    /// Items handled per second recently.
    pub fn rate(&self) -> f64 {
        f64::from_bits(self.rate_bits.load(Ordering::Relaxed))
    }
}

/// The consumers of this process and their counters, for `/metrics` and status.
#[derive(Debug, Default)]
pub struct ConsumerRegistry {
    list: Mutex<Vec<(String, String, Arc<ConsumerMetrics>)>>,
}

impl ConsumerRegistry {
    /// The counters of `group` on `topic`, created at the first call.
    pub fn register(&self, group: &str, topic: &str) -> Arc<ConsumerMetrics> {
        let mut l = self.list.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, m)) = l.iter().find(|(g, t, _)| g == group && t == topic) {
            return m.clone();
        }
        let m = Arc::new(ConsumerMetrics::default());
        l.push((group.to_owned(), topic.to_owned(), m.clone()));
        m
    }

    /// Every consumer: (group, topic, counters).
    pub fn all(&self) -> Vec<(String, String, Arc<ConsumerMetrics>)> {
        self.list.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// One consumer's state: this process's counters and the group's position in the store.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConsumerStatus {
    pub group: String,
    pub topic: String,
    /// Partitions this process owns.
    pub partitions: i64,
    /// Items handled by this process since it started.
    pub handled: u64,
    /// Items handled per second by this process recently.
    pub handled_per_second: f64,
    /// Items being handled now (read, not committed).
    pub pending: i64,
    pub retries: u64,
    pub dead_lettered: u64,
    pub replayed: u64,
    /// Commits refused because another replica took the partition over.
    pub fenced: u64,
    /// The whole group (every replica), from the store; absent if the store did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_position: Option<GroupPosition>,
}

impl ConsumerRegistry {
    /// Status of every consumer, joined with the groups' positions.
    pub fn status(&self, positions: &[GroupPosition]) -> Vec<ConsumerStatus> {
        self.all()
            .into_iter()
            .map(|(group, topic, m)| {
                let group_position = positions
                    .iter()
                    .find(|p| p.group == group && p.topic == topic)
                    .cloned();
                ConsumerStatus {
                    partitions: m.partitions.load(Ordering::Relaxed),
                    handled: m.handled.load(Ordering::Relaxed),
                    handled_per_second: m.rate(),
                    pending: m.pending.load(Ordering::Relaxed),
                    retries: m.retries.load(Ordering::Relaxed),
                    dead_lettered: m.dead_lettered.load(Ordering::Relaxed),
                    replayed: m.replayed.load(Ordering::Relaxed),
                    fenced: m.fenced.load(Ordering::Relaxed),
                    group,
                    topic,
                    group_position,
                }
            })
            .collect()
    }

    /// Prometheus text for every consumer of this process (nothing when there is none).
    pub fn render(&self, positions: &[GroupPosition]) -> String {
        use std::fmt::Write;
        let status = self.status(positions);
        let mut o = String::new();
        if status.is_empty() {
            return o;
        }
        type Field = fn(&ConsumerStatus) -> Option<f64>;
        let families: [(&str, &str, &str, Field); 10] = [
            (
                "hais_bus_consumer_handled_total",
                "counter",
                "Items whose handling this process committed.",
                |c| Some(c.handled as f64),
            ),
            (
                "hais_bus_consumer_retries_total",
                "counter",
                "Deliveries tried again after a handler failure.",
                |c| Some(c.retries as f64),
            ),
            (
                "hais_bus_consumer_dead_lettered_total",
                "counter",
                "Rows this process moved to the dead letters.",
                |c| Some(c.dead_lettered as f64),
            ),
            (
                "hais_bus_consumer_fenced_total",
                "counter",
                "Commits refused because another replica took the partition over.",
                |c| Some(c.fenced as f64),
            ),
            (
                "hais_bus_consumer_pending",
                "gauge",
                "Items being handled (read, not yet committed).",
                |c| Some(c.pending as f64),
            ),
            (
                "hais_bus_consumer_partitions",
                "gauge",
                "Partitions this process owns.",
                |c| Some(c.partitions as f64),
            ),
            (
                "hais_bus_consumer_handled_per_second",
                "gauge",
                "Items handled per second by this process recently.",
                |c| Some(c.handled_per_second),
            ),
            (
                "hais_bus_group_lag_items",
                "gauge",
                "Items in the log the group (all replicas) has not committed.",
                |c| c.group_position.as_ref().map(|p| p.lag_items as f64),
            ),
            (
                "hais_bus_group_dead_letters",
                "gauge",
                "Dead letters the group holds.",
                |c| c.group_position.as_ref().map(|p| p.dead_letters as f64),
            ),
            (
                "hais_bus_group_live_members",
                "gauge",
                "Replicas of the group alive.",
                |c| c.group_position.as_ref().map(|p| p.live_members as f64),
            ),
        ];
        for (name, kind, help, field) in families {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for c in &status {
                if let Some(v) = field(c) {
                    let _ = writeln!(
                        o,
                        "{name}{{group=\"{}\",topic=\"{}\"}} {v}",
                        c.group, c.topic
                    );
                }
            }
        }
        o
    }
}

/// Wakes idle workers when rows are appended. One counter per topic: a worker notes the value
/// before reading, so an append between its read and its wait is never missed.
#[derive(Debug, Default)]
pub struct Wakeups {
    topics: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Wakeups {
    fn sender(&self, topic: &str) -> watch::Sender<u64> {
        self.topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(topic.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .clone()
    }

    /// A receiver that changes whenever `topic` is poked.
    pub fn receiver(&self, topic: &str) -> watch::Receiver<u64> {
        self.sender(topic).subscribe()
    }

    /// Wakes the workers of `topic`.
    pub fn poke(&self, topic: &str) {
        self.sender(topic).send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Whether a worker of `topic` ever waited in this process.
    fn knows(&self, topic: &str) -> bool {
        self.topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(topic)
    }

    /// Wakes the workers of every topic.
    fn poke_all(&self) {
        let topics: Vec<String> = self
            .topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        for t in topics {
            self.poke(&t);
        }
    }
}

/// The process's wake-up listener (`app.rs` spawns it): pokes topics as `bus.appended` messages
/// arrive on the live bus ([`BusAppended`]).
impl OnLive for Arc<Wakeups> {
    async fn message(&mut self, m: Received<'_>) {
        if let Some(a) = m.payload::<BusAppended>() {
            self.poke(&a.topic);
        } else if self.knows(&m.topic) {
            // A live message under a durable topic's name (ingest publishes its events live too)
            // means rows were appended: wake that topic's workers. Only the name matters here.
            self.poke(&m.topic);
        }
    }

    /// Missed wake-ups: wake everyone, they will find what is there.
    async fn lagged(&mut self, _skipped: u64) {
        self.poke_all();
    }
}

/// One member of a consumer group.
pub struct Consumer<T: DurableTopic> {
    store: Arc<dyn Store>,
    wake: Arc<Wakeups>,
    group: String,
    member: String,
    opts: ConsumerOptions,
    handler: Arc<dyn Handler<T>>,
    metrics: Arc<ConsumerMetrics>,
    _topic: PhantomData<fn() -> T>,
}

impl<T: DurableTopic> std::fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("topic", &T::NAME)
            .field("group", &self.group)
            .field("member", &self.member)
            .finish_non_exhaustive()
    }
}

/// Why a worker stopped handling its partition.
enum Stop {
    /// Asked to (shutdown or rebalance).
    Asked,
    /// Its commit was fenced: another member owns the partition or the cursor moved.
    Fenced,
}

struct Worker {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl<T: DurableTopic> Consumer<T> {
    pub fn new(
        store: Arc<dyn Store>,
        wake: Arc<Wakeups>,
        group: &str,
        member: &str,
        opts: ConsumerOptions,
        handler: Arc<dyn Handler<T>>,
        metrics: Arc<ConsumerMetrics>,
    ) -> Arc<Self> {
        Arc::new(Consumer {
            store,
            wake,
            group: group.to_owned(),
            member: member.to_owned(),
            opts,
            handler,
            metrics,
            _topic: PhantomData,
        })
    }

    /// Runs the member until `shutdown`: then its workers finish their batch, its leases are
    /// given back (so the others take over at once) and it leaves the group.
    pub fn spawn(self: Arc<Self>, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(async move { self.run(shutdown).await })
    }

    fn ttl_us(&self) -> i64 {
        self.opts.lease_ttl.as_micros() as i64
    }

    async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let topic = T::NAME;
        // Registered before anything else, so the log keeps what this group has not read.
        loop {
            match self.store.bus_register(&self.group, topic).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(group = %self.group, topic, error = %e, "registering consumer group failed; retrying");
                    tokio::select! {
                        _ = shutdown.wait_for(|s| *s) => return,
                        _ = tokio::time::sleep(self.opts.renew_every) => {}
                    }
                }
            }
        }
        let replayer = tokio::spawn(self.clone().replay_loop(shutdown.clone()));
        let mut workers: HashMap<i64, Worker> = HashMap::new();
        let mut last = (Instant::now(), self.metrics.handled.load(Ordering::Relaxed));
        let mut ticks: u64 = 0;
        loop {
            if let Err(e) = self.balance(&mut workers).await {
                tracing::warn!(group = %self.group, topic, error = %e, "consumer group upkeep failed");
            }
            ticks += 1;
            // Trimming is idempotent, so every member may do it; rarely is enough.
            if ticks.is_multiple_of(15)
                && let Err(e) = self.store.bus_trim(topic).await
            {
                tracing::warn!(topic, error = %e, "trimming the bus log failed");
            }
            let now = (Instant::now(), self.metrics.handled.load(Ordering::Relaxed));
            let secs = now.0.duration_since(last.0).as_secs_f64();
            if secs > 0.0 {
                let rate = (now.1.saturating_sub(last.1)) as f64 / secs;
                self.metrics
                    .rate_bits
                    .store(rate.to_bits(), Ordering::Relaxed);
            }
            last = now;
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break,
                _ = tokio::time::sleep(self.opts.renew_every) => {}
            }
        }
        for w in workers.values() {
            let _ = w.stop.send(true);
        }
        for (_, w) in workers.drain() {
            let _ = tokio::time::timeout(Duration::from_secs(5), w.task).await;
        }
        let _ = replayer.await;
        if let Err(e) = self.store.bus_leave(&self.group, topic, &self.member).await {
            tracing::warn!(group = %self.group, topic, error = %e, "leaving the consumer group failed; its leases will expire");
        }
        self.metrics.partitions.store(0, Ordering::Relaxed);
    }

    /// One round of membership: heartbeat, renew, take a fair share, give back the excess.
    async fn balance(
        self: &Arc<Self>,
        workers: &mut HashMap<i64, Worker>,
    ) -> Result<(), StoreError> {
        let topic = T::NAME;
        let now = now_us();
        let live = self
            .store
            .bus_heartbeat(&self.group, topic, &self.member, now, self.ttl_us())
            .await?
            .max(1);
        let until = now + self.ttl_us();
        let held = self
            .store
            .bus_renew(&self.group, topic, &self.member, until)
            .await?;
        // Workers that ended (fenced) or whose partition is no longer ours.
        workers.retain(|part, w| {
            let keep = held.contains(part) && !w.task.is_finished();
            if !keep {
                let _ = w.stop.send(true);
            }
            keep
        });
        let share = (PARTITIONS + live - 1) / live;
        let mut mine: Vec<i64> = held.clone();
        // Partitions held in the store but without a worker here (a worker that was fenced):
        // taken again to learn the cursor.
        for &part in &held {
            if !workers.contains_key(&part)
                && let Some(at) = self
                    .store
                    .bus_acquire(&self.group, topic, part, &self.member, now, until)
                    .await?
            {
                workers.insert(part, self.start_worker(part, at));
            }
        }
        if (mine.len() as i64) < share {
            // Start at an offset of our own, so members joining together try different ones.
            let offset = super::log::partition_of(&self.member);
            for i in 0..PARTITIONS {
                if mine.len() as i64 >= share {
                    break;
                }
                let part = (offset + i) % PARTITIONS;
                if mine.contains(&part) {
                    continue;
                }
                if let Some(at) = self
                    .store
                    .bus_acquire(&self.group, topic, part, &self.member, now, until)
                    .await?
                {
                    mine.push(part);
                    workers.insert(part, self.start_worker(part, at));
                }
            }
        } else if (mine.len() as i64) > share {
            mine.sort_unstable();
            for part in mine.split_off(share as usize) {
                if let Some(w) = workers.remove(&part) {
                    let _ = w.stop.send(true);
                    // The worker finishes its batch first; only then may another take over.
                    let _ = tokio::time::timeout(Duration::from_secs(30), w.task).await;
                }
                self.store
                    .bus_release(&self.group, topic, part, &self.member)
                    .await?;
            }
        }
        self.metrics
            .partitions
            .store(workers.len() as i64, Ordering::Relaxed);
        Ok(())
    }

    fn start_worker(self: &Arc<Self>, part: i64, at: Position) -> Worker {
        let (stop, stop_rx) = watch::channel(false);
        let me = self.clone();
        let task = tokio::spawn(async move {
            match me.work(part, at, stop_rx).await {
                Stop::Asked => {}
                Stop::Fenced => {
                    me.metrics.fenced.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(group = %me.group, topic = T::NAME, part, "partition taken over by another member");
                }
            }
        });
        Worker { stop, task }
    }

    /// Handles one partition from `cursor` until stopped or fenced.
    async fn work(&self, part: i64, mut cursor: Position, mut stop: watch::Receiver<bool>) -> Stop {
        let mut wake = self.wake.receiver(T::NAME);
        loop {
            if *stop.borrow() {
                return Stop::Asked;
            }
            wake.borrow_and_update();
            let rows = match self
                .store
                .bus_read(T::NAME, part, cursor, self.opts.max_rows)
                .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(topic = T::NAME, part, error = %e, "reading the bus log failed");
                    if pause(&mut stop, self.opts.retry_max).await {
                        return Stop::Asked;
                    }
                    continue;
                }
            };
            if rows.is_empty() {
                tokio::select! {
                    _ = stop.changed() => {}
                    _ = wake.changed() => {}
                    _ = tokio::time::sleep(self.opts.poll_interval) => {}
                }
                continue;
            }
            match self.handle_rows(part, cursor, rows, &mut stop).await {
                Ok(next) => cursor = next,
                Err(stop) => return stop,
            }
        }
    }

    /// Handles rows after `cursor` (all of them, or it stops); returns the new cursor.
    async fn handle_rows(
        &self,
        part: i64,
        cursor: Position,
        rows: Vec<LogRow>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Position, Stop> {
        let mut cursor = cursor;
        // Undecodable rows can never be handled: they split the rows into runs around them.
        let mut run: Vec<(LogRow, Vec<T::Item>)> = Vec::new();
        for row in rows {
            match decode::<T>(&row.payload) {
                Ok(items) => run.push((row, items)),
                Err(e) => {
                    cursor = self
                        .handle_run(part, cursor, std::mem::take(&mut run), stop)
                        .await?;
                    let cp = self.cursor_checkpoint(part, cursor, std::slice::from_ref(&row), 0);
                    self.dead_letter(&cp, &row, &format!("undecodable: {e}"), 0)
                        .await?;
                    cursor = row.position();
                }
            }
        }
        self.handle_run(part, cursor, run, stop).await
    }

    /// Handles decoded rows as one batch; if that keeps failing, one row at a time, moving a
    /// row that still fails to the dead letters.
    async fn handle_run(
        &self,
        part: i64,
        cursor: Position,
        run: Vec<(LogRow, Vec<T::Item>)>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Position, Stop> {
        let Some(last) = run.last().map(|(r, _)| r.position()) else {
            return Ok(cursor);
        };
        let single = run.len() == 1;
        let (rows, items): (Vec<LogRow>, Vec<Vec<T::Item>>) = run.into_iter().unzip();
        let n: i64 = rows.iter().map(|r| r.items).sum();
        let batch = Batch::<T> {
            part,
            rows: rows
                .iter()
                .zip(items)
                .map(|(r, items)| Delivery {
                    seq: r.seq,
                    created_us: r.created_us,
                    items,
                })
                .collect(),
            checkpoint: self.cursor_checkpoint(part, cursor, &rows, n),
            replay: false,
        };
        let failure = match self.attempt(&batch, stop).await? {
            None => return Ok(last),
            Some(f) => f,
        };
        if single {
            let (error, attempts) = failure;
            self.dead_letter(&batch.checkpoint, &rows[0], &error, attempts)
                .await?;
            return Ok(last);
        }
        // Find the culprit(s): every row on its own, in order.
        let Batch {
            rows: deliveries, ..
        } = batch;
        let mut cursor = cursor;
        for (row, d) in rows.into_iter().zip(deliveries) {
            let one = vec![(row, d.items)];
            cursor = Box::pin(self.handle_run(part, cursor, one, stop)).await?;
        }
        Ok(cursor)
    }

    /// Delivers a batch until it is committed (`None`) or fails for good (`Some(error,
    /// attempts)`).
    async fn attempt(
        &self,
        batch: &Batch<T>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Option<(String, i64)>, Stop> {
        let n = batch.checkpoint.items();
        let mut delay = self.opts.retry_initial;
        let mut attempts: u32 = 0;
        loop {
            attempts += 1;
            self.metrics.pending.fetch_add(n, Ordering::Relaxed);
            let outcome = self.handler.handle(batch).await;
            let outcome = match outcome {
                Ok(Ack::Done) => self
                    .store
                    .bus_commit(&batch.checkpoint)
                    .await
                    .map_err(HandlerError::from),
                Ok(Ack::Committed) => Ok(()),
                Err(e) => Err(e),
            };
            self.metrics.pending.fetch_sub(n, Ordering::Relaxed);
            match outcome {
                Ok(()) => {
                    self.metrics
                        .handled
                        .fetch_add(n.max(0) as u64, Ordering::Relaxed);
                    self.metrics.batches.fetch_add(1, Ordering::Relaxed);
                    if batch.replay {
                        self.metrics.replayed.fetch_add(1, Ordering::Relaxed);
                    }
                    return Ok(None);
                }
                Err(e) if e.kind == FailureKind::Fenced => return Err(Stop::Fenced),
                Err(e) => {
                    if e.kind == FailureKind::Permanent || attempts >= self.opts.max_attempts {
                        tracing::warn!(group = %self.group, topic = T::NAME, part = batch.part,
                            attempts, error = %e, "giving up on a batch");
                        return Ok(Some((e.message, i64::from(attempts))));
                    }
                    self.metrics.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(group = %self.group, topic = T::NAME, attempts, error = %e, "retrying a batch");
                    if pause(stop, delay).await {
                        return Err(Stop::Asked);
                    }
                    delay = (delay * 2).min(self.opts.retry_max);
                }
            }
        }
    }

    async fn dead_letter(
        &self,
        cp: &Checkpoint,
        row: &LogRow,
        error: &str,
        attempts: i64,
    ) -> Result<(), Stop> {
        loop {
            match self
                .store
                .bus_dead_letter(cp, row, error, attempts, now_us())
                .await
            {
                Ok(()) => {
                    self.metrics.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(group = %self.group, topic = T::NAME, seq = row.seq, error, "row moved to the dead letters");
                    return Ok(());
                }
                Err(StoreError::Fenced(_)) => return Err(Stop::Fenced),
                Err(e) => {
                    tracing::warn!(error = %e, "recording a dead letter failed; retrying");
                    tokio::time::sleep(self.opts.retry_max).await;
                }
            }
        }
    }

    /// The checkpoint passing `rows` (non-empty, in log order, right after `from`), `items` of
    /// whose items were handled.
    fn cursor_checkpoint(
        &self,
        part: i64,
        from: Position,
        rows: &[LogRow],
        items: i64,
    ) -> Checkpoint {
        Checkpoint::Cursor {
            grp: self.group.clone(),
            topic: T::NAME.to_owned(),
            part,
            from,
            to: rows.last().map_or(from, LogRow::position),
            owner: self.member.clone(),
            items,
            passed_rows: rows.len() as i64,
            passed_items: rows.iter().map(|r| r.items).sum(),
        }
    }

    /// Replays dead letters an admin asked for, until shutdown.
    async fn replay_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut wake = self.wake.receiver(&replay_topic(&self.group));
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                _ = wake.changed() => {}
                _ = tokio::time::sleep(self.opts.renew_every) => {}
            }
            let now = now_us();
            let claimed = match self
                .store
                .bus_claim_replays(
                    &self.group,
                    T::NAME,
                    &self.member,
                    now,
                    now + 2 * self.ttl_us(),
                    8,
                )
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(group = %self.group, error = %e, "claiming replays failed");
                    continue;
                }
            };
            for (dl, row) in claimed {
                let cp = Checkpoint::Replay {
                    id: dl.id.clone(),
                    grp: self.group.clone(),
                    topic: T::NAME.to_owned(),
                    part: row.part,
                    owner: self.member.clone(),
                    items: row.items,
                };
                let (error, attempts) = match decode::<T>(&row.payload) {
                    Ok(items) => {
                        let batch = Batch::<T> {
                            part: row.part,
                            rows: vec![Delivery {
                                seq: row.seq,
                                created_us: row.created_us,
                                items,
                            }],
                            checkpoint: cp.clone(),
                            replay: true,
                        };
                        let mut stop = shutdown.clone();
                        match self.attempt(&batch, &mut stop).await {
                            Ok(None) => {
                                tracing::info!(group = %self.group, id = %dl.id, "dead letter replayed");
                                continue;
                            }
                            Ok(Some(f)) => f,
                            Err(_) => return,
                        }
                    }
                    Err(e) => (format!("undecodable: {e}"), 0),
                };
                if self.dead_letter(&cp, &row, &error, attempts).await.is_err() {
                    continue;
                }
            }
        }
    }
}

/// The wake-up topic of a group's replays (poked by the API after a replay request).
pub fn replay_topic(group: &str) -> String {
    format!("replay:{group}")
}

/// Sleeps `d` unless stopped first; true when stopped.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        r = stop.wait_for(|s| *s) => r.is_ok(),
        _ = tokio::time::sleep(d) => false,
    }
}

fn now_us() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1000
}
