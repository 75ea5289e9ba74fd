//! The event bus: every stored event batch and every state change is published here.
//!
//! Two delivery styles, because services need both:
//! * **live fan-out** ([`Bus::subscribe`]): every subscriber in every process sees every message,
//!   best effort (a slow subscriber may lag and skip). For dashboards, caches and wake-ups.
//!   [`memory::MemoryBus`] inside one process (the embedded default), [`redis::RedisBus`]
//!   (pub/sub) between processes.
//! * **durable topics** ([`log`], [`durable`]): the database is the log. Publishers append in
//!   their own transaction; consumer groups share a topic's partitions, commit their progress
//!   with their effects, retry, and dead-letter what keeps failing. The same code serves SQLite
//!   embedded and PostgreSQL split; live messages only wake consumers up. Why the database and
//!   not Redis streams: see docs/ARCHITECTURE.md ("The durable bus").

pub mod durable;
pub mod log;
pub mod memory;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

/// Topic names. Payloads are JSON; see each constant.
pub mod topics {
    /// A batch of newly stored fingerprint events: payload `{"events": [FingerprintEvent…]}`.
    pub const FINGERPRINT_EVENTS: &str = "fingerprint.events";
    /// A label was attached: payload `{"method", "value", "label"}`.
    pub const FINGERPRINT_LABELED: &str = "fingerprint.labeled";
    /// A service process started: payload `{"service", "instance"}`.
    pub const SERVICE_STARTED: &str = "service.started";
    /// A user was created: payload `{"username", "role"}`.
    pub const USER_CREATED: &str = "user.created";
    /// A user was changed: payload `{"username", "change" (disabled, enabled, role, password,
    /// deleted), "role", "by"}`.
    pub const USER_CHANGED: &str = "user.changed";
    /// Retention ran: payload is a `RetentionOutcome`.
    pub const RETENTION_RAN: &str = "retention.ran";
    /// An agent enrolled: payload `{"agent_id", "spiffe_id", "hostname", "svid_expires_us"}`.
    pub const AGENT_ENROLLED: &str = "agent.enrolled";
    /// An agent was revoked: payload `{"agent_id", "spiffe_id", "revoked_us", "by"}`. Uplinks
    /// close the agent's live connections when they see it.
    pub const AGENT_REVOKED: &str = "agent.revoked";
    /// An agent's fleet status changed: payload `{"agent_id", "status", "previous"}` (status
    /// `online`, `stale` or `revoked`).
    pub const AGENT_STATUS: &str = "agent.status";
    /// Registration entries changed: payload `{"action": "created"|"updated"|"deleted"|"imported",
    /// "ids": [entry id…]}`. Every process resolving identities (ja4, identity) reloads them.
    pub const IDENTITY_ENTRIES: &str = "identity.entries";
}

/// One message on the bus.
///
/// The payload is kept as the JSON text it was serialized to once, at publication: an event
/// batch is large, every service in the process sees it, and a tree of `serde_json::Value`s
/// would cost an allocation per field for each copy. Consumers parse what they need with
/// [`BusMessage::payload_as`].
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
    /// A message whose payload is `payload` serialized as JSON.
    pub fn new(topic: &str, origin: &str, payload: &impl Serialize) -> Self {
        // Our payload types have string keys and no failing `Serialize`; `null` is the
        // harmless answer should one ever fail.
        let payload = serde_json::value::to_raw_value(payload).unwrap_or_else(|e| {
            tracing::error!(topic, error = %e, "bus payload not serializable");
            serde_json::value::RawValue::from_string("null".into()).expect("valid JSON")
        });
        BusMessage {
            id: uuid::Uuid::now_v7(),
            topic: topic.to_owned(),
            origin: origin.to_owned(),
            payload,
        }
    }

    /// The payload parsed as `T` (borrowing from the message where `T` allows it).
    pub fn payload_as<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.payload.get())
    }

    /// The payload as a JSON tree, for ad-hoc inspection (tests, logs).
    pub fn json(&self) -> serde_json::Value {
        self.payload_as().unwrap_or(serde_json::Value::Null)
    }
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
