//! The correlation service: learns which fingerprints each workload identity normally presents
//! and raises findings, with their evidence, when that changes. The domain logic (baselines,
//! learning, detectors, findings) is the `hais-correlation` crate; this module feeds it and
//! stores what it returns.
//!
//! A durable consumer group `correlation` of `fingerprint.events` ([`Correlator`]) handles each
//! batch in three steps: it loads from the store the baselines of the batch's identities and the
//! prevalence of the client fingerprints they do not know, runs a fresh
//! [`hais_correlation::Engine`] over the batch in log order, and commits in one transaction the
//! baselines (each over the version it read), the findings (absorbed into the stored ones), the
//! adoptions, the findings as [`hais_shared::detection::Detection`]s on the durable topic
//! `detections` (for the alert service), and its checkpoint. The bus partitions events by
//! identity (the key is [`hais_correlation::identity_of`]), so one member of the group handles
//! an identity at a time and replicas share the work; the state is all in the store, so a
//! restart, or another replica taking a partition over, carries on where the last commit left.
//!
//! Analysts accept a fingerprint into a baseline or reset an identity to learning through the
//! API ([`routes`]); those write over the version they read too, and a batch that read an older
//! version is judged again.

pub mod routes;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use hais_correlation::{Engine, Observation};
use utoipa_axum::router::OpenApiRouter;

use super::{BoxFuture, Host, Service, ServiceError, ServiceStats};
use crate::bus::durable::{Ack, Batch, Handler, HandlerError, HandlerFuture};
use crate::bus::log::{Detections, DurableTopic, FingerprintEvents};
use crate::bus::topics::{Appended, BusAppended};
use crate::state::AppState;
use crate::store::correlation::Commit;
use crate::store::{Store, now_us};

/// The service's name (consumer group, API prefix).
pub const NAME: &str = "correlation";

/// Times a batch is judged again when an analyst changed one of its baselines meanwhile.
const COMMIT_ATTEMPTS: usize = 3;

/// The service, as [`super::all`] lists it.
#[derive(Debug, Default)]
pub struct CorrelationService {
    handle: std::sync::OnceLock<Arc<Correlation>>,
}

/// What the routes need once the service started.
#[derive(Debug)]
pub struct Correlation {
    pub config: hais_correlation::Config,
}

impl Service for CorrelationService {
    fn name(&self) -> &'static str {
        NAME
    }
    fn seed_port(&self) -> u16 {
        3003
    }
    fn description(&self) -> &'static str {
        "Correlation: per-identity fingerprint baselines (learning, then established) and \
         explained findings when an identity presents something new (new-fingerprint, \
         shared-fingerprint, path-change, ssh-session), published for the alert service."
    }
    fn routes(&self) -> OpenApiRouter<AppState> {
        super::with_handle(routes::routes(), self.handle.get())
    }
    fn start<'a>(&'a self, host: &'a mut Host) -> BoxFuture<'a, Result<(), ServiceError>> {
        Box::pin(async move {
            let config = host.app.config.correlation.detectors();
            let _ = self.handle.set(Arc::new(Correlation {
                config: config.clone(),
            }));
            let handler = Arc::new(Correlator {
                store: host.app.store.clone(),
                app: host.app.clone(),
                config,
                stats: host.stats.clone(),
            });
            super::consume::<FingerprintEvents>(host, NAME, handler);
            host.expire_findings(&[crate::store::expiry::CORRELATION_FINDINGS]);
            Ok(())
        })
    }
}

/// The consumer of `fingerprint.events` that judges them.
#[derive(Debug)]
pub struct Correlator {
    pub store: Arc<dyn Store>,
    /// To wake the `detections` consumers of every process once findings are committed.
    pub app: AppState,
    pub config: hais_correlation::Config,
    pub stats: Arc<ServiceStats>,
}

impl Correlator {
    /// Judges `observations` on the stored state and commits the outcome with `batch`'s
    /// checkpoint; `Ok(false)` when a baseline changed since it was read.
    async fn judge(
        &self,
        observations: &[Observation],
        batch: &Batch<FingerprintEvents>,
    ) -> Result<bool, HandlerError> {
        let identities: Vec<String> = observations
            .iter()
            .map(|o| o.identity.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let stored = self.store.correlation_baselines(&identities).await?;
        let mut engine = Engine::new(self.config.clone());
        let mut versions = HashMap::new();
        for (identity, s) in stored {
            versions.insert(identity, s.version);
            engine.load(s.baseline);
        }
        let unknown: Vec<_> = engine
            .unknown_fingerprints(observations)
            .into_iter()
            .collect();
        if !unknown.is_empty() {
            let oldest = observations.iter().map(|o| o.ts_us).min().unwrap_or(0);
            let since = oldest.saturating_sub(self.config.shared_window_us);
            let recent = self.config.shared_threshold.saturating_mul(4).max(1);
            for ((method, fp), p) in self
                .store
                .correlation_prevalence(&unknown, since, recent)
                .await?
            {
                engine.load_prevalence(method, fp, p);
            }
        }
        for o in observations {
            engine.observe(o);
        }
        let changes = engine.take_changes();
        let baselines: Vec<_> = changes
            .baselines
            .into_iter()
            .map(|b| {
                let v = versions.get(&b.identity).copied();
                (b, v)
            })
            .collect();
        let commit = Commit {
            baselines: &baselines,
            findings: &changes.findings,
            adoptions: &changes.adoptions,
            now_us: now_us(),
        };
        let done = self
            .store
            .correlation_commit(&commit, &batch.checkpoint)
            .await?;
        if done && !changes.findings.is_empty() {
            tracing::info!(
                findings = changes.findings.len(),
                "correlation findings raised or updated"
            );
            // The alert group's replicas in other processes would otherwise find the rows at
            // their next poll.
            self.app
                .publish::<BusAppended>(&Appended {
                    topic: Detections::NAME.to_owned(),
                    items: changes.findings.len() as u64,
                })
                .await;
        }
        Ok(done)
    }
}

impl Handler<FingerprintEvents> for Correlator {
    fn handle<'a>(&'a self, batch: &'a Batch<FingerprintEvents>) -> HandlerFuture<'a> {
        Box::pin(async move {
            let observations: Vec<Observation> =
                batch.items().map(Observation::from_event).collect();
            for _ in 0..COMMIT_ATTEMPTS {
                if self.judge(&observations, batch).await? {
                    self.stats
                        .work_events
                        .fetch_add(observations.len() as u64, Ordering::Relaxed);
                    return Ok(Ack::Committed);
                }
            }
            Err(HandlerError::transient(
                "baselines kept changing while the batch was judged",
            ))
        })
    }
}
