//! In-process live bus: one broadcast channel shared by every service in the process. (Durable
//! topics do not go through it: see [`super::durable`].)

use std::sync::Arc;

use tokio::sync::broadcast;

use super::{Bus, BusFuture, BusMessage, SUBSCRIBER_BUFFER};

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

    fn ping(&self) -> BusFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
}
