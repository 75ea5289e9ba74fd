//! The search indexer: the ja4 service's durable consumer group `search` of
//! `fingerprint.events`, which writes each stored event's search rows after ingest committed it
//! (see `store::events` for why search is not written by ingest itself).
//!
//! Each batch is written with its checkpoint in one transaction, so an event is indexed exactly
//! once even when the process dies mid-batch or another replica takes the partition over, and a
//! lagging or stopped indexer loses nothing: it carries on from its cursor.

use std::sync::Arc;

use hais_shared::event::FingerprintEvent;

use crate::bus::durable::{Ack, Batch, Handler, HandlerError, HandlerFuture};
use crate::bus::log::FingerprintEvents;
use crate::store::Store;

/// The consumer group's name.
pub const GROUP: &str = "search";

/// Index transactions one process runs at once. The group has a worker per bus partition (16),
/// and each transaction holds a database connection while it writes ten btrees; unbounded, they
/// took the whole pool (8 by default) for seconds and ingest timed out waiting for a
/// connection. Two keep both cores of a small server busy; the other workers wait with their
/// batch read, holding no connection, and the next transactions are the larger for it.
pub const MAX_CONCURRENT: usize = 2;

/// Writes the search rows of each batch of stored events.
#[derive(Debug)]
pub struct SearchIndexer {
    store: Arc<dyn Store>,
    running: tokio::sync::Semaphore,
}

impl SearchIndexer {
    pub fn new(store: Arc<dyn Store>) -> SearchIndexer {
        SearchIndexer {
            store,
            running: tokio::sync::Semaphore::new(MAX_CONCURRENT),
        }
    }
}

impl Handler<FingerprintEvents> for SearchIndexer {
    fn handle<'a>(&'a self, batch: &'a Batch<FingerprintEvents>) -> HandlerFuture<'a> {
        Box::pin(async move {
            let _turn = self
                .running
                .acquire()
                .await
                .map_err(|_| HandlerError::transient("search indexer closed"))?;
            let events: Vec<&FingerprintEvent> = batch.items().collect();
            let t = std::time::Instant::now();
            self.store.index_events(&events, &batch.checkpoint).await?;
            tracing::debug!(events = events.len(), took = ?t.elapsed(), "search rows written");
            Ok(Ack::Committed)
        })
    }
}
