//! In-process bus: one broadcast channel shared by every service in the process.
//!
//! Work queues are served from the same channel, so they are exactly as durable as the process:
//! good enough for the embedded mode, where producer and consumers live and die together.

use std::sync::Arc;

use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use super::{Bus, BusFuture, BusMessage, Handler, SUBSCRIBER_BUFFER};

#[derive(Debug, Clone)]
pub struct MemoryBus {
    tx: broadcast::Sender<Arc<BusMessage>>,
}

impl MemoryBus {
    pub fn new() -> Self {
        MemoryBus {
            tx: broadcast::channel(SUBSCRIBER_BUFFER).0,
        }
    }
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self::new()
    }
}

impl Bus for MemoryBus {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn publish<'a>(&'a self, msg: &'a Arc<BusMessage>) -> BusFuture<'a, ()> {
        // No receiver is not an error: nobody is listening yet.
        let _ = self.tx.send(msg.clone());
        Box::pin(async { Ok(()) })
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<BusMessage>> {
        self.tx.subscribe()
    }

    fn consume(
        &self,
        topic: &str,
        group: &str,
        _consumer: &str,
        handler: Handler,
        mut shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let mut rx = self.tx.subscribe();
        let topic = topic.to_owned();
        let group = group.to_owned();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => return,
                    m = rx.recv() => m,
                };
                match msg {
                    Ok(m) if m.topic == topic => {
                        if let Err(e) = handler(m).await {
                            tracing::warn!(%topic, %group, error = %e, "in-process handler failed; message dropped");
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(%topic, %group, skipped = n, "in-process consumer lagged");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        })
    }

    fn ping(&self) -> BusFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
}
