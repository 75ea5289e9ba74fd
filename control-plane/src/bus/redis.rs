//! Redis bus: pub/sub for live fan-out between processes (durable topics live in the database,
//! see [`super::durable`]; Redis here keeps nothing, so its restart loses nothing).
//!
//! Names: channel `<prefix>:bus:<topic>`. One background task per process holds the pattern
//! subscription and forwards into a local broadcast channel, so [`Bus::subscribe`] is cheap and
//! reconnects are handled in one place.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::{broadcast, watch};
use tokio_stream::StreamExt;

use super::{Bus, BusError, BusFuture, BusMessage, SUBSCRIBER_BUFFER};

#[derive(Clone)]
pub struct RedisBus {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
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
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, BusError> {
        let client = redis::Client::open(url)?;
        let conn = client.get_connection_manager().await?;
        let (local, _) = broadcast::channel(SUBSCRIBER_BUFFER);
        let bus = RedisBus {
            client,
            conn,
            prefix: prefix.to_owned(),
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

impl Bus for RedisBus {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn publish<'a>(&'a self, msg: &'a Arc<BusMessage>) -> BusFuture<'a, ()> {
        Box::pin(async move {
            let body = serde_json::to_vec(&**msg)?;
            let mut conn = self.conn.clone();
            let _: () = redis::cmd("PUBLISH")
                .arg(self.channel(&msg.topic))
                .arg(&body)
                .query_async(&mut conn)
                .await?;
            Ok(())
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<BusMessage>> {
        self.local.subscribe()
    }

    fn ping(&self) -> BusFuture<'_, ()> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let _: String = redis::cmd("PING").query_async(&mut conn).await?;
            Ok(())
        })
    }
}
