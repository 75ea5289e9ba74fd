//! The event bus: every stored event batch and every state change is published here.
//!
//! Two delivery styles, because services need both:
//! * **live fan-out** ([`Bus::subscribe`]): every subscriber in every process sees every message,
//!   best effort (a slow subscriber may lag and skip). For dashboards, caches and wake-ups.
//!   [`memory::MemoryBus`] inside one process (the embedded default), [`redis::RedisBus`]
//!   (pub/sub) between processes. Each topic is a type ([`topics`]: its name and payload);
//!   messages are put on the bus with [`publish`] and followed by a [`listen::Listener`] task.
//! * **durable topics** ([`log`], [`durable`]): the database is the log. Publishers append in
//!   their own transaction; consumer groups share a topic's partitions, commit their progress
//!   with their effects, retry, and dead-letter what keeps failing. The same code serves SQLite
//!   embedded and PostgreSQL split; live messages only wake consumers up. Why the database and
//!   not Redis streams: see docs/ARCHITECTURE.md ("The durable bus").

pub mod durable;
pub mod listen;
pub mod log;
pub mod memory;
pub mod redis;
pub mod topics;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use topics::{Encodes, LiveTopic};

/// One message on the bus.
///
/// The payload is kept as the JSON text it was serialized to once, at publication: an event
/// batch is large, every service in the process sees it, and a tree of `serde_json::Value`s
/// would cost an allocation per field for each copy. Consumers parse it with
/// [`BusMessage::decode`], typed by the topic ([`topics`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BusMessage {
    /// Unique id (UUIDv7), so consumers can drop redeliveries.
    pub id: uuid::Uuid,
    pub topic: String,
    /// The service (and process instance) that published it, e.g. `ja4/0192…`.
    pub origin: String,
    pub payload: Box<serde_json::value::RawValue>,
}

impl BusMessage {
    /// A message of topic `T` from `origin` (`service/instance`), its payload serialized once.
    pub fn encode<T: LiveTopic>(
        origin: &str,
        payload: &impl Encodes<T>,
    ) -> Result<Self, serde_json::Error> {
        Ok(BusMessage {
            id: uuid::Uuid::now_v7(),
            topic: T::NAME.to_owned(),
            origin: origin.to_owned(),
            payload: serde_json::value::to_raw_value(payload)?,
        })
    }

    /// The payload as `T`'s, when the message is of topic `T` (`None` for another topic). An
    /// `Err` is a message of that name whose payload does not have `T`'s shape (a process of
    /// another version, a bug): skip it, log it, count it; [`listen::Received::payload`] does.
    pub fn decode<T: LiveTopic>(&self) -> Option<Result<T::Payload, serde_json::Error>> {
        (self.topic == T::NAME).then(|| serde_json::from_str(self.payload.get()))
    }

    /// The payload as a JSON tree, for ad-hoc inspection (tests, logs).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.payload.get()).unwrap_or(serde_json::Value::Null)
    }
}

/// Publishes `payload` on topic `T` (see [`Bus::publish`]). The one way to put a message on the
/// bus: name and payload type come from the same [`LiveTopic`], so they cannot disagree.
pub async fn publish<T: LiveTopic>(
    bus: &dyn Bus,
    origin: &str,
    payload: &impl Encodes<T>,
) -> Result<(), BusError> {
    let msg = Arc::new(BusMessage::encode::<T>(origin, payload)?);
    bus.publish(&msg).await
}

/// Why the bus failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("message could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

pub type BusFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BusError>> + Send + 'a>>;

/// How many messages a live subscriber may fall behind before it skips.
pub const SUBSCRIBER_BUFFER: usize = 4096;

/// The bus interface; object safe so the backend is chosen at run time.
pub trait Bus: Send + Sync + std::fmt::Debug {
    fn backend(&self) -> &'static str;

    /// Publishes to live subscribers and to the topic's work queue. In-process receivers share
    /// the one message.
    fn publish<'a>(&'a self, msg: &'a Arc<BusMessage>) -> BusFuture<'a, ()>;

    /// A live feed of every message on every topic. Messages are shared, not copied, between
    /// subscribers: an event batch's payload is large and every service in the process listens.
    fn subscribe(&self) -> broadcast::Receiver<Arc<BusMessage>>;

    /// Proves the bus is reachable (for `/ready`).
    fn ping(&self) -> BusFuture<'_, ()>;
}

/// Opens the Redis bus when a URL is given, else the in-process one.
pub async fn open(
    redis_url: Option<&str>,
    prefix: &str,
    shutdown: watch::Receiver<bool>,
) -> Result<Arc<dyn Bus>, BusError> {
    Ok(match redis_url {
        Some(url) => Arc::new(redis::RedisBus::connect(url, prefix, shutdown).await?),
        None => Arc::new(memory::MemoryBus::new()),
    })
}
