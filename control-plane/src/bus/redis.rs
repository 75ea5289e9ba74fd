//! Redis bus: pub/sub for live fan-out, streams with consumer groups for work queues.
//!
//! Names: channel `<prefix>:bus:<topic>`, stream `<prefix>:stream:<topic>` (capped at about
//! `redis_stream_maxlen` entries: a fingerprint-event entry carries a whole ingest batch, so the
//! cap bounds Redis memory when consumers stay down). One background task per process holds the pattern subscription and
//! forwards into a local broadcast channel, so [`Bus::subscribe`] is cheap and reconnects are
//! handled in one place.

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use redis::streams::{StreamReadOptions, StreamReadReply};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

use super::{Bus, BusError, BusFuture, BusMessage, Handler, SUBSCRIBER_BUFFER};

/// How long one XREADGROUP waits for new entries before checking for shutdown.
const BLOCK_MS: usize = 1000;

#[derive(Clone)]
pub struct RedisBus {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    /// Approximate cap of each topic's stream: older entries beyond it are trimmed.
    stream_maxlen: usize,
    local: broadcast::Sender<Arc<BusMessage>>,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisBus {
    /// Connects, and starts the subscription task (which stops when `shutdown` turns true).
    /// Returns once the subscription is active, so nothing published afterwards is missed.
    pub async fn connect(
        url: &str,
        prefix: &str,
        stream_maxlen: usize,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, BusError> {
        let client = redis::Client::open(url)?;
        let conn = client.get_connection_manager().await?;
        let (local, _) = broadcast::channel(SUBSCRIBER_BUFFER);
        let bus = RedisBus {
            client,
            conn,
            prefix: prefix.to_owned(),
            stream_maxlen,
            local,
        };
        let mut pubsub = bus.client.get_async_pubsub().await?;
        pubsub.psubscribe(bus.channel("*")).await?;
        tokio::spawn(bus.clone().forward(pubsub, shutdown));
        Ok(bus)
    }

    fn channel(&self, topic: &str) -> String {
        format!("{}:bus:{topic}", self.prefix)
    }

    fn stream(&self, topic: &str) -> String {
        format!("{}:stream:{topic}", self.prefix)
    }

    /// Forwards pub/sub messages to local subscribers; resubscribes after connection loss.
    async fn forward(self, mut pubsub: redis::aio::PubSub, mut shutdown: watch::Receiver<bool>) {
        loop {
            {
                let mut stream = pubsub.on_message();
                loop {
                    let msg = tokio::select! {
                        _ = shutdown.wait_for(|s| *s) => return,
                        m = stream.next() => m,
                    };
                    let Some(msg) = msg else { break };
                    match serde_json::from_slice::<BusMessage>(msg.get_payload_bytes()) {
                        Ok(m) => {
                            let _ = self.local.send(Arc::new(m));
                        }
                        Err(e) => tracing::warn!(
                            channel = msg.get_channel_name(),
                            error = %e,
                            "ignoring undecodable bus message"
                        ),
                    }
                }
            }
            tracing::warn!("redis subscription lost; reconnecting");
            loop {
                tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                match self.client.get_async_pubsub().await {
                    Ok(mut p) => {
                        if p.psubscribe(self.channel("*")).await.is_ok() {
                            pubsub = p;
                            tracing::info!("redis subscription restored");
                            break;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "redis reconnect failed"),
                }
            }
        }
    }
}

/// Ids of one read, with each entry's decoded message (None when undecodable).
type Entries = Vec<(String, Option<Arc<BusMessage>>)>;

fn entries(reply: StreamReadReply) -> Entries {
    reply
        .keys
        .into_iter()
        .flat_map(|k| k.ids)
        .map(|e| {
            let msg = e
                .get::<Vec<u8>>("m")
                .and_then(|b| serde_json::from_slice::<BusMessage>(&b).ok())
                .map(Arc::new);
            (e.id, msg)
        })
        .collect()
}

impl Bus for RedisBus {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn publish<'a>(&'a self, msg: &'a Arc<BusMessage>) -> BusFuture<'a, ()> {
        Box::pin(async move {
            let body = serde_json::to_vec(&**msg)?;
            let mut conn = self.conn.clone();
            let _: () = redis::pipe()
                .cmd("PUBLISH")
                .arg(self.channel(&msg.topic))
                .arg(&body)
                .ignore()
                .cmd("XADD")
                .arg(self.stream(&msg.topic))
                .arg("MAXLEN")
                .arg("~")
                .arg(self.stream_maxlen)
                .arg("*")
                .arg("m")
                .arg(&body)
                .ignore()
                .query_async(&mut conn)
                .await?;
            Ok(())
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<BusMessage>> {
        self.local.subscribe()
    }

    fn consume(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
        handler: Handler,
        mut shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let client = self.client.clone();
        let stream = self.stream(topic);
        let group = group.to_owned();
        let consumer = consumer.to_owned();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                let run =
                    consume_loop(&client, &stream, &group, &consumer, &handler, &mut shutdown);
                match run.await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(%stream, %group, error = %e, "work queue consumer failed; retrying");
                        tokio::select! {
                            _ = shutdown.wait_for(|s| *s) => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
        })
    }

    fn ping(&self) -> BusFuture<'_, ()> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let _: String = redis::cmd("PING").query_async(&mut conn).await?;
            Ok(())
        })
    }
}

/// Reads the group's entries until shutdown. Starts with this consumer's pending entries (those
/// delivered before a crash and never acknowledged), then takes new ones. A handler failure
/// leaves the entry pending and rewinds to the pending list after a pause.
async fn consume_loop(
    client: &redis::Client,
    stream: &str,
    group: &str,
    consumer: &str,
    handler: &Handler,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), BusError> {
    // A dedicated connection: XREADGROUP BLOCK would stall a shared multiplexed one.
    let cfg = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(Duration::from_millis(BLOCK_MS as u64 + 5000)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await?;
    // Start at "0": a group created after messages were published still gets them.
    let created: Result<(), redis::RedisError> =
        conn.xgroup_create_mkstream(stream, group, "0").await;
    if let Err(e) = created
        && e.code() != Some("BUSYGROUP")
    {
        return Err(e.into());
    }
    let mut pending = true;
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let opts = StreamReadOptions::default()
            .group(group, consumer)
            .count(100)
            .block(if pending { 1 } else { BLOCK_MS });
        let from = [if pending { "0" } else { ">" }];
        let keys = [stream];
        let reply: Option<StreamReadReply> = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return Ok(()),
            r = conn.xread_options(&keys, &from, &opts) => r?,
        };
        let batch = reply.map(entries).unwrap_or_default();
        if pending && batch.is_empty() {
            pending = false;
            continue;
        }
        for (id, msg) in batch {
            let ok = match msg {
                Some(m) => match handler(m).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(%stream, %group, %id, error = %e, "handler failed; will retry");
                        false
                    }
                },
                None => {
                    tracing::warn!(%stream, %id, "dropping undecodable stream entry");
                    true
                }
            };
            if ok {
                let _: i64 = conn.xack(stream, group, &[&id]).await?;
            } else {
                pending = true;
                tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                break;
            }
        }
    }
}
