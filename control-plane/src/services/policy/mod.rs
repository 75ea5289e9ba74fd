//! The policy service: zero-trust rules over identity × fingerprint × destination, written in
//! Cedar (crate `hais-policy`), evaluated on every event of the stream, explained, and tried
//! against stored history before they are turned on.
//!
//! * **Policy sets** are versioned in the store ([`crate::store::policy`]): every change is a new
//!   version with its author, comment and diff; a rollback is a new version with an older one's
//!   sources. A set is compiled and validated against the schema before it is stored, so an
//!   invalid one is refused (with file, line and column) and the previous version stays active.
//! * **Live evaluation**: a durable consumer group `policy` of `fingerprint.events` evaluates
//!   each event (identity resolved at ingest) against the active set; violations — enforced
//!   (`alert`, `deny`) and audit-mode — are stored, merged per identity × rule × destination,
//!   and the enforced ones published as [`Detection`]s on `detections` with the checkpoint, in
//!   one transaction; the alert service turns them into alerts. Deny is recorded and alerted
//!   only: agents do not enforce yet.
//! * Other processes notice a new version by polling its number every [`RELOAD_EVERY`].
//! * **Dry-run** ([`routes`]): a draft set against the stored events of a time range, per
//!   identity the decisions that would change; nothing is stored or alerted.

pub mod routes;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use hais_policy::{Compiled, Decision, Facts, Outcome};
use hais_shared::detection::{Detection, MAX_EVIDENCE_EVENTS, Source};
use hais_shared::event::FingerprintEvent;
use utoipa_axum::router::OpenApiRouter;
use uuid::Uuid;

use super::{BoxFuture, Host, Service, ServiceError, ServiceStats};
use crate::bus::durable::{Ack, Batch, Handler, HandlerFuture};
use crate::bus::log::{Detections, DurableTopic, FingerprintEvents};
use crate::bus::topics::{Appended, BusAppended};
use crate::state::AppState;
use crate::store::policy::{NewVersion, PolicyVersion, Violation, ViolationDraft};
use crate::store::{Store, StoreError, now_us, to_us};

/// The service's name (consumer group, API prefix).
pub const NAME: &str = "policy";

/// How often a process checks whether another one stored a new version.
pub const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// The service, as [`super::all`] lists it.
#[derive(Debug, Default)]
pub struct PolicyService {
    handle: OnceLock<Arc<Policy>>,
}

/// The active set: its version (0: none was ever stored, nothing is evaluated) and compiled form.
#[derive(Debug, Default)]
pub struct Active {
    pub version: i64,
    pub compiled: Compiled,
}

/// The started service's state, shared by its consumer, reloader and routes.
#[derive(Debug)]
pub struct Policy {
    pub store: Arc<dyn Store>,
    pub app: AppState,
    active: RwLock<Arc<Active>>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    pub counts: Counts,
}

/// What the consumer did since the process started (`/metrics`).
#[derive(Debug, Default)]
pub struct Counts {
    pub events: AtomicU64,
    pub allowed: AtomicU64,
    pub violations: AtomicU64,
    pub audit: AtomicU64,
    pub errors: AtomicU64,
    pub reloads: AtomicU64,
    /// Reads of `policy.directory` that failed or were refused.
    pub directory_errors: AtomicU64,
}

impl Policy {
    /// The active set now (cheap: an `Arc` clone).
    pub fn active(&self) -> Arc<Active> {
        self.active
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Loads the stored current version if it is not the active one. A stored set that no
    /// longer compiles (a schema change across an upgrade) is logged and the previous one kept.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let _one = self.reloading.lock().await;
        let latest = self.store.policy_latest_version().await?;
        if latest == self.active().version {
            return Ok(());
        }
        let Some(v) = self.store.policy_version(latest).await? else {
            return Ok(());
        };
        let compiled = tokio::task::spawn_blocking(move || hais_policy::compile(&v.sources))
            .await
            .map_err(|e| StoreError::Corrupt(format!("compiling the policy set: {e}")))?;
        match compiled {
            Ok(compiled) => {
                tracing::info!(
                    version = latest,
                    policies = compiled.len(),
                    "policy set active"
                );
                *self.active.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Active {
                    version: latest,
                    compiled,
                });
                self.counts.reloads.fetch_add(1, Ordering::Relaxed);
            }
            Err(problems) => {
                tracing::error!(
                    version = latest,
                    problems = %problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
                    "stored policy set does not compile; the previous one stays active"
                );
            }
        }
        Ok(())
    }

    /// Stores `sources` (compiled already: `policies` of them) as the next version, with its diff
    /// from the current one, and activates it in this process. `expected`: the version the change
    /// was made over (`None`: the current one).
    pub async fn store_version(
        &self,
        sources: &[hais_policy::Source],
        policies: usize,
        author: &str,
        comment: &str,
        origin: &str,
        expected: Option<i64>,
    ) -> Result<PolicyVersion, StoreError> {
        let current = self.store.policy_latest_version().await?;
        let previous = match current {
            0 => Vec::new(),
            v => self
                .store
                .policy_version(v)
                .await?
                .map(|v| v.sources)
                .unwrap_or_default(),
        };
        let d = routes::diff(&previous, sources);
        let version = self
            .store
            .policy_put_version(
                &NewVersion {
                    sources,
                    author,
                    comment,
                    origin,
                    diff: &d,
                    policies: policies as i64,
                    expected: Some(expected.unwrap_or(current)),
                },
                now_us(),
            )
            .await?;
        self.reload().await?;
        self.store
            .policy_version(version)
            .await?
            .ok_or_else(|| StoreError::Corrupt("a stored policy version vanished".into()))
    }
}

/// Keeps the policy set equal to a directory's `.cedar` files (`policy.directory`): what was
/// last read, so an unchanged or already refused directory is not compiled again.
#[derive(Debug)]
struct Directory {
    policy: Arc<Policy>,
    path: std::path::PathBuf,
    last: tokio::sync::Mutex<Option<Vec<hais_policy::Source>>>,
}

impl Directory {
    /// Reads the directory; a change that validates becomes a new version, one that does not is
    /// logged (file, line, column) and counted, and the active version stays.
    async fn sync(&self) -> Result<(), StoreError> {
        let path = self.path.clone();
        let read = tokio::task::spawn_blocking(move || {
            let sources = hais_policy::load_sources(std::slice::from_ref(&path))?;
            let compiled = hais_policy::compile(&sources);
            Ok::<_, std::io::Error>((sources, compiled))
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("reading the policy directory: {e}")))?;
        let (sources, compiled) = match read {
            Ok(r) => r,
            Err(e) => {
                self.policy
                    .counts
                    .directory_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "policy: the policy directory cannot be read");
                return Ok(());
            }
        };
        let mut last = self.last.lock().await;
        if last.as_ref() == Some(&sources) {
            return Ok(());
        }
        *last = Some(sources.clone());
        let compiled = match compiled {
            Ok(c) => c,
            Err(problems) => {
                self.policy
                    .counts
                    .directory_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    directory = %self.path.display(),
                    problems = %problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
                    "policy directory refused; the active version stays"
                );
                return Ok(());
            }
        };
        let current = self.policy.store.policy_latest_version().await?;
        if current != 0
            && let Some(v) = self.policy.store.policy_version(current).await?
            && v.sources == sources
        {
            return Ok(());
        }
        let author = format!("directory:{}", self.path.display());
        let comment = format!("loaded from {}", self.path.display());
        match self
            .policy
            .store_version(&sources, compiled.len(), &author, &comment, "directory", Some(current))
            .await
        {
            // Another replica stored it first.
            Err(StoreError::Conflict(_)) => {
                *last = None;
                Ok(())
            }
            other => other.map(|v| {
                tracing::info!(version = v.version, directory = %self.path.display(), "policy directory loaded");
            }),
        }
    }
}

impl Service for PolicyService {
    fn name(&self) -> &'static str {
        NAME
    }
    fn seed_port(&self) -> u16 {
        3005
    }
    fn description(&self) -> &'static str {
        "Policy: zero-trust rules as code (Cedar) over workload identity, connection kind, \
         destination and fingerprints; versioned sets with diffs and rollback, validation with \
         line and column, every event evaluated with the deciding policies explained, violations \
         published for the alert service, audit mode, and dry-runs over stored history."
    }
    fn routes(&self) -> OpenApiRouter<AppState> {
        super::with_handle(routes::routes(), self.handle.get())
    }
    fn start<'a>(&'a self, host: &'a mut Host) -> BoxFuture<'a, Result<(), ServiceError>> {
        Box::pin(async move {
            let policy = Arc::new(Policy {
                store: host.app.store.clone(),
                app: host.app.clone(),
                active: RwLock::new(Arc::new(Active::default())),
                reloading: tokio::sync::Mutex::new(()),
                counts: Counts::default(),
            });
            policy.reload().await?;
            let _ = self.handle.set(policy.clone());
            super::consume::<FingerprintEvents>(
                host,
                NAME,
                Arc::new(Evaluate {
                    policy: policy.clone(),
                    stats: host.stats.clone(),
                }),
            );
            if let Some(path) = host.app.config.policy.directory.clone() {
                let dir = Arc::new(Directory {
                    policy: policy.clone(),
                    path,
                    last: tokio::sync::Mutex::new(None),
                });
                host.tasks.push(super::spawn_every(
                    RELOAD_EVERY,
                    host.shutdown.clone(),
                    "policy: reading the policy directory",
                    move || {
                        let dir = dir.clone();
                        async move { dir.sync().await }
                    },
                ));
            }
            host.expire_findings(&[crate::store::expiry::POLICY_VIOLATIONS]);
            // Activates versions stored by other processes.
            host.tasks.push(super::spawn_every(
                RELOAD_EVERY,
                host.shutdown.clone(),
                "policy: reloading the policy set",
                move || {
                    let policy = policy.clone();
                    async move { policy.reload().await }
                },
            ));
            Ok(())
        })
    }
    fn metrics<'a>(&'a self, _state: &'a AppState, out: &'a mut String) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            use std::fmt::Write as _;
            let Some(p) = self.handle.get() else {
                return;
            };
            let c = &p.counts;
            crate::metrics::write_counters(
                out,
                &[
                    (
                        "hais_policy_events_total",
                        "Events evaluated by the policy service.",
                        &c.events,
                    ),
                    (
                        "hais_policy_allowed_total",
                        "Events the active policy set allowed.",
                        &c.allowed,
                    ),
                    (
                        "hais_policy_violations_total",
                        "Events the active policy set denied (alert or deny).",
                        &c.violations,
                    ),
                    (
                        "hais_policy_audit_matches_total",
                        "Audit-mode policies an event satisfied (recorded, not alerted).",
                        &c.audit,
                    ),
                    (
                        "hais_policy_eval_errors_total",
                        "Policies that failed to evaluate on an event (skipped by Cedar).",
                        &c.errors,
                    ),
                    (
                        "hais_policy_reloads_total",
                        "Policy set versions activated.",
                        &c.reloads,
                    ),
                    (
                        "hais_policy_directory_errors_total",
                        "Reads of policy.directory that failed or were refused (invalid set).",
                        &c.directory_errors,
                    ),
                ],
            );
            let a = p.active();
            let _ = writeln!(
                out,
                "# HELP hais_policy_version The active policy set's version (0: none).\n\
                 # TYPE hais_policy_version gauge\nhais_policy_version {}\n\
                 # HELP hais_policy_policies Policies in the active set.\n\
                 # TYPE hais_policy_policies gauge\nhais_policy_policies {}",
                a.version,
                a.compiled.len()
            );
        })
    }
}

/// The violation `decision` on `e` amounts to (`rule`, `outcome` and `severity` given: the
/// enforced decision's, or one audit policy's), with the detection the alert service gets when
/// it is enforced.
fn draft(
    e: &FingerprintEvent,
    facts: &Facts,
    decision: &Decision,
    version: i64,
    rule: String,
    outcome: &str,
    severity: hais_shared::detection::Severity,
) -> ViolationDraft {
    let destination = facts.resource.address();
    let identity = facts.principal.identity.clone();
    let ts = to_us(e.timestamp);
    let key = [
        identity.as_str(),
        rule.as_str(),
        destination.as_str(),
        if outcome == "audit" {
            "audit"
        } else {
            "enforced"
        },
    ]
    .join("\u{1e}");
    let violation = Violation {
        id: Uuid::now_v7(),
        identity: identity.clone(),
        rule: rule.clone(),
        outcome: outcome.to_owned(),
        severity,
        version,
        action: facts.action.as_str().to_owned(),
        destination: destination.clone(),
        sni: facts.resource.sni.clone(),
        count: 1,
        first_seen_us: ts,
        last_seen_us: ts,
        event_ids: vec![e.id],
        decision: decision.clone(),
    };
    let detection = (outcome != "audit").then(|| {
        let why: Vec<String> = decision
            .policies
            .iter()
            .flat_map(|p| p.fields.iter())
            .filter(|(k, _)| k.contains('.'))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let to = match &facts.resource.sni {
            Some(sni) => format!("{destination} ({sni})"),
            None => destination.clone(),
        };
        let summary = format!(
            "{identity} {} to {to} {} by policy {rule} (policy set v{version}){}",
            facts.action.as_str(),
            if outcome == "deny" {
                "denied"
            } else {
                "alerted"
            },
            if why.is_empty() {
                String::new()
            } else {
                format!(": {}", why.join(", "))
            }
        );
        let mut attributes = BTreeMap::new();
        attributes.insert("host".into(), e.host.clone());
        attributes.insert("effect".into(), outcome.to_owned());
        attributes.insert("action".into(), facts.action.as_str().to_owned());
        attributes.insert("policy_version".into(), version.to_string());
        if let Some(ns) = &facts.principal.namespace {
            attributes.insert("namespace".into(), ns.clone());
        }
        if let Some(ja4) = facts.context.get("ja4") {
            attributes.insert("ja4".into(), ja4.clone());
        }
        Detection {
            id: violation.id,
            source: Source::Policy,
            rule: rule.clone(),
            severity,
            identity: identity.clone(),
            method: None,
            fingerprint: None,
            destination: Some(destination.clone()),
            summary,
            event_ids: vec![e.id],
            first_seen: e.timestamp,
            last_seen: e.timestamp,
            count: 1,
            attributes,
        }
    });
    ViolationDraft {
        key,
        violation,
        detection,
    }
}

/// The outcome of evaluating a batch.
#[derive(Debug, Default)]
pub struct Evaluated {
    /// Violations merged per key (counts added, the latest decision and evidence kept).
    pub drafts: Vec<ViolationDraft>,
    pub allowed: u64,
    pub violations: u64,
    pub audit: u64,
    pub errors: u64,
}

/// Evaluates `events` against `active` (no I/O). Nothing is evaluated without a set.
pub fn evaluate_batch<'a>(
    active: &Active,
    events: impl Iterator<Item = &'a FingerprintEvent>,
) -> Evaluated {
    let mut out = Evaluated::default();
    if active.version == 0 {
        return out;
    }
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for e in events {
        let facts = Facts::of_event(e, None);
        let decision = match active.compiled.evaluate(&facts) {
            Ok(d) => d,
            Err(err) => {
                tracing::warn!(event = %e.id, error = %err, "policy: event not evaluated");
                out.errors += 1;
                continue;
            }
        };
        out.errors += decision.errors.len() as u64;
        let mut drafts = Vec::new();
        if decision.is_violation() {
            out.violations += 1;
            drafts.push(draft(
                e,
                &facts,
                &decision,
                active.version,
                decision.rule(),
                decision.outcome.as_str(),
                decision
                    .severity
                    .unwrap_or(hais_policy::eval::DEFAULT_DENY_SEVERITY),
            ));
        } else {
            out.allowed += 1;
        }
        for a in &decision.audit {
            out.audit += 1;
            drafts.push(draft(
                e,
                &facts,
                &decision,
                active.version,
                a.id.clone(),
                "audit",
                a.severity,
            ));
        }
        for d in drafts {
            match by_key.get(&d.key) {
                Some(&i) => absorb(&mut out.drafts[i], d),
                None => {
                    by_key.insert(d.key.clone(), out.drafts.len());
                    out.drafts.push(d);
                }
            }
        }
    }
    out
}

/// Folds a later occurrence `d` of the same violation into `into`.
fn absorb(into: &mut ViolationDraft, d: ViolationDraft) {
    let v = &mut into.violation;
    v.count += 1;
    v.first_seen_us = v.first_seen_us.min(d.violation.first_seen_us);
    v.last_seen_us = v.last_seen_us.max(d.violation.last_seen_us);
    v.decision = d.violation.decision;
    v.event_ids.extend(d.violation.event_ids);
    let excess = v.event_ids.len().saturating_sub(MAX_EVIDENCE_EVENTS);
    v.event_ids.drain(..excess);
    if let (Some(into), Some(d)) = (&mut into.detection, d.detection) {
        into.count += 1;
        into.first_seen = into.first_seen.min(d.first_seen);
        if d.last_seen >= into.last_seen {
            into.last_seen = d.last_seen;
            into.summary = d.summary;
        }
        into.event_ids.extend(d.event_ids);
        let excess = into.event_ids.len().saturating_sub(MAX_EVIDENCE_EVENTS);
        into.event_ids.drain(..excess);
    }
}

/// The consumer of `fingerprint.events` (group `policy`).
struct Evaluate {
    policy: Arc<Policy>,
    stats: Arc<ServiceStats>,
}

impl Handler<FingerprintEvents> for Evaluate {
    fn handle<'a>(&'a self, batch: &'a Batch<FingerprintEvents>) -> HandlerFuture<'a> {
        Box::pin(async move {
            let p = &self.policy;
            let active = p.active();
            let evaluated = evaluate_batch(&active, batch.items());
            let n = batch.items().count() as u64;
            let c = &p.counts;
            if active.version != 0 {
                c.events.fetch_add(n, Ordering::Relaxed);
            }
            c.allowed.fetch_add(evaluated.allowed, Ordering::Relaxed);
            c.violations
                .fetch_add(evaluated.violations, Ordering::Relaxed);
            c.audit.fetch_add(evaluated.audit, Ordering::Relaxed);
            c.errors.fetch_add(evaluated.errors, Ordering::Relaxed);
            self.stats.work_events.fetch_add(n, Ordering::Relaxed);
            if evaluated.drafts.is_empty() {
                return Ok(Ack::Done);
            }
            p.store
                .policy_commit(&evaluated.drafts, &batch.checkpoint, now_us())
                .await?;
            let published = evaluated
                .drafts
                .iter()
                .filter(|d| d.detection.is_some())
                .count() as u64;
            if published > 0 {
                tracing::info!(violations = published, "policy violations raised");
                // The alert group's replicas in other processes would otherwise find the rows at
                // their next poll.
                p.app
                    .publish::<BusAppended>(&Appended {
                        topic: Detections::NAME.to_owned(),
                        items: published,
                    })
                    .await;
            }
            Ok(Ack::Committed)
        })
    }
}

/// Whether an outcome counts as a violation in a dry-run comparison.
pub(crate) fn violates(o: Outcome) -> bool {
    o != Outcome::Allow
}
