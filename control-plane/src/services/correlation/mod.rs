//! The `correlation` service — a **placeholder**. It has the status endpoint every service gets
//! (`GET /api/correlation/status`), a live bus subscription that counts what it sees, and a
//! durable consumer of the fingerprint-event work queue that counts events; its real work is
//! not built yet.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{BoxFuture, Host, Implementation, Service, ServiceError};
use crate::bus::{BusMessage, Handler, topics};

/// The service, as [`super::all`] lists it.
#[derive(Debug, Default)]
pub struct Correlation;

impl Service for Correlation {
    fn name(&self) -> &'static str {
        "correlation"
    }
    fn seed_port(&self) -> u16 {
        3003
    }
    fn description(&self) -> &'static str {
        "Correlation: per-identity baselines and anomaly detection. Placeholder: consumes the \
         fingerprint-event work queue and counts events; no analysis yet."
    }
    fn implementation(&self) -> Implementation {
        Implementation::Placeholder
    }

    /// Consumes the durable work queue of fingerprint events, counting them in the status.
    fn start<'a>(&'a self, host: &'a mut Host) -> BoxFuture<'a, Result<(), ServiceError>> {
        let stats = host.stats.clone();
        let handler: Handler = Arc::new(move |m: Arc<BusMessage>| {
            let stats = stats.clone();
            Box::pin(async move {
                /// Counts the batch's events without building them.
                #[derive(serde::Deserialize)]
                struct Batch {
                    events: Vec<serde::de::IgnoredAny>,
                }
                let n = m.payload_as::<Batch>().map_or(0, |b| b.events.len());
                stats.work_events.fetch_add(n as u64, Ordering::Relaxed);
                Ok(())
            })
        });
        host.tasks.push(host.app.bus.consume(
            topics::FINGERPRINT_EVENTS,
            self.name(),
            &host.app.instance.to_string(),
            handler,
            host.shutdown.clone(),
        ));
        Box::pin(async { Ok(()) })
    }
}
