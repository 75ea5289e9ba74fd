//! The search indexer: the ja4 service's durable consumer group `search` of
//! `fingerprint.events`, which writes each stored event's search rows after ingest committed it
//! (see `store::events` for why search is not written by ingest itself).
//!
//! Each batch is written with its checkpoint in one transaction, so an event is indexed exactly
//! once even when the process dies mid-batch or another replica takes the partition over, and a
//! lagging or stopped indexer loses nothing: it carries on from its cursor.

use std::sync::Arc;

use hais_shared::event::FingerprintEvent;

use crate::bus::durable::{Ack, Batch, Handler, HandlerFuture};
use crate::bus::log::FingerprintEvents;
use crate::store::Store;

/// The consumer group's name.
pub const GROUP: &str = "search";

/// Writes the search rows of each batch of stored events.
#[derive(Debug)]
pub struct SearchIndexer {
    pub store: Arc<dyn Store>,
}

impl Handler<FingerprintEvents> for SearchIndexer {
    fn handle<'a>(&'a self, batch: &'a Batch<FingerprintEvents>) -> HandlerFuture<'a> {
        Box::pin(async move {
            let events: Vec<&FingerprintEvent> = batch.items().collect();
            self.store.index_events(&events, &batch.checkpoint).await?;
            Ok(Ack::Committed)
        })
    }
}
