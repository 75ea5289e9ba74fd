//! The identity service: registration entries (selectors → workload SPIFFE ID), resolution of
//! every ingested event's workload to a SPIFFE ID, and the identity inventory.
//!
//! **Resolution happens centrally, on ingest** ([`resolve`], called by
//! [`crate::services::ja4::store_events`], the one path both HTTP ingest and the agents' QUIC
//! uplink take): the selectors a workload presents are derived from the facts the agent observed
//! (`hais_shared::registration::selectors_for`), the most specific entry whose selectors are all
//! among them wins (most selectors; a tie goes to the oldest entry and is flagged as a conflict),
//! and the event is stored with that entry's SPIFFE ID and selectors. Agents never hold or decide
//! workload identities, and a new entry applies to the next event ingested, with no agent
//! involved. An event no entry matches keeps whatever SPIFFE ID its sender gave (HaIS agents
//! send none; a trusted service posting to `/api/ja4/ingest` may have resolved it itself).
//!
//! Every process that ingests (ja4) or serves entries (identity) holds a [`Snapshot`] of the
//! entries in memory, reloaded from the shared store after its own changes, when another process
//! announces a change on the bus (`identity.entries`), and every [`REFRESH_INTERVAL`] in case a
//! message was missed.
//!
//! Conflicts are counted (`hais_identity_conflicts_total`) and recorded per pair of identities
//! (`identity_conflicts`), which the inventory shows; the tie rule is documented in
//! `hais_shared::registration`.

pub mod inventory;
pub mod routes;
pub mod workloads;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use hais_shared::event::FingerprintEvent;
use hais_shared::registration::{RegistrationEntry, best_match, selectors_for};
use hais_shared::selector::Selector;
use hais_shared::template::{RegistrationTemplate, best_template};
use tokio::sync::watch;
use utoipa_axum::router::OpenApiRouter;

use super::{BoxFuture, Host, Service, ServiceError};
use crate::bus::listen::{OnLive, Received};
use crate::bus::topics::IdentityEntries;
use crate::state::AppState;
use crate::store::identity::ConflictDeltas;
use crate::store::rollup::Seen;
use crate::store::workloads::Resolved;
use crate::store::{IngestOutcome, Store, StoreError, to_us};

/// The service, as [`super::all`] lists it: the entries routes and, once started, the
/// process's [`Identity`] handle they use.
#[derive(Debug, Default)]
pub struct IdentityService {
    identity: OnceLock<Arc<Identity>>,
}

impl Service for IdentityService {
    fn name(&self) -> &'static str {
        NAME
    }
    fn seed_port(&self) -> u16 {
        3004
    }
    fn description(&self) -> &'static str {
        "Identity: registration entries (selectors → workload SPIFFE ID), resolution of every \
         ingested event to a SPIFFE ID, and the identity inventory."
    }
    fn routes(&self) -> OpenApiRouter<AppState> {
        super::with_handle(routes::routes(), self.identity.get())
    }
    fn start<'a>(&'a self, host: &'a mut Host) -> BoxFuture<'a, Result<(), ServiceError>> {
        Box::pin(async move {
            let identity = handle(host).await?;
            let _ = self.identity.set(identity.clone());
            // The discovered-workloads inventory (see `inventory`).
            let store = host.app.store.clone();
            super::consume::<crate::bus::log::FingerprintEvents>(
                host,
                NAME,
                Arc::new(inventory::Inventory {
                    store: store.clone(),
                    identity: identity.clone(),
                }),
            );
            host.tasks.push(inventory::spawn_reresolver(
                store,
                identity,
                host.shutdown.clone(),
            ));
            Ok(())
        })
    }
}

/// The service's name (the ja4 service asks whether this process hosts it).
pub const NAME: &str = "identity";

/// How often the entries are reloaded even when no change was announced.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// The registration entries and templates at one moment, in id order (oldest first), and the
/// trust domain templates render into.
#[derive(Debug, Default)]
pub struct Snapshot {
    entries: Vec<RegistrationEntry>,
    templates: Vec<RegistrationTemplate>,
    trust_domain: String,
}

impl Snapshot {
    pub fn new(mut entries: Vec<RegistrationEntry>) -> Snapshot {
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        Snapshot {
            entries,
            ..Snapshot::default()
        }
    }

    /// This snapshot with `templates` rendering into trust domain `td`.
    pub fn with_templates(
        mut self,
        td: &str,
        mut templates: Vec<RegistrationTemplate>,
    ) -> Snapshot {
        templates.sort_by(|a, b| a.id.cmp(&b.id));
        self.templates = templates;
        self.trust_domain = td.to_owned();
        self
    }

    pub fn entries(&self) -> &[RegistrationEntry] {
        &self.entries
    }

    pub fn templates(&self) -> &[RegistrationTemplate] {
        &self.templates
    }

    /// Whether nothing can name a workload.
    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.templates.is_empty()
    }

    /// A digest of what resolution depends on: when it changes, stored workloads are resolved
    /// again.
    fn digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for e in &self.entries {
            (&e.id, e.spiffe_id.as_str(), &e.selectors).hash(&mut h);
        }
        for t in &self.templates {
            (&t.id, &t.pattern, &t.selectors).hash(&mut h);
        }
        self.trust_domain.hash(&mut h);
        h.finish()
    }

    /// What names the workload of `e` now: the best entry, else the best template (see
    /// `hais_shared::template` for why an entry wins).
    pub fn resolve_one(&self, e: &FingerprintEvent) -> Option<Resolved> {
        if self.is_empty() {
            return None;
        }
        let observed = selectors_for(e);
        if let Some((spiffe_id, _, _, entry)) = match_one(self, &observed) {
            return Some(Resolved {
                spiffe_id,
                by: format!("entry:{entry}"),
            });
        }
        best_template(&self.templates, &self.trust_domain, e, &observed).map(|(t, id)| Resolved {
            spiffe_id: id.to_string(),
            by: format!("template:{}", t.id),
        })
    }
}

/// A tied match: the event at `index` got `spiffe_id`, and equally specific entries named
/// `others` too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub index: usize,
    pub spiffe_id: String,
    pub others: Vec<String>,
}

/// What [`resolve`] did to a batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// Indexes of the events an entry matched.
    pub resolved: Vec<usize>,
    pub conflicts: Vec<Conflict>,
}

/// True when two events present the same selectors (what `selectors_for` reads is equal).
fn same_facts(a: &FingerprintEvent, b: &FingerprintEvent) -> bool {
    let (x, y) = (&a.workload, &b.workload);
    a.agent_id == b.agent_id
        && a.host == b.host
        && x.pid.is_some() == y.pid.is_some()
        && x.uid == y.uid
        && x.user == y.user
        && x.exe == y.exe
        && x.exe_sha256 == y.exe_sha256
        && x.k8s_namespace == y.k8s_namespace
        && x.k8s_service_account == y.k8s_service_account
        && x.pod == y.pod
        && x.container_runtime == y.container_runtime
        && x.container == y.container
        && x.container_labels == y.container_labels
        && x.container_image == y.container_image
        && x.container_name == y.container_name
        && x.k8s_pod_name == y.k8s_pod_name
        && x.process == y.process
        && x.unattributed == y.unattributed
}

/// The match for one set of observed selectors: (SPIFFE ID, the entry's selectors, the other
/// SPIFFE IDs of a tie, the entry's id).
type Matched = Option<(String, Vec<String>, Vec<String>, String)>;

fn match_one(snap: &Snapshot, observed: &BTreeSet<Selector>) -> Matched {
    let m = best_match(&snap.entries, observed)?;
    let others = if m.conflict {
        let n = m.entry.selectors.len();
        let mut o: Vec<String> = snap
            .entries
            .iter()
            .filter(|e| {
                e.selectors.len() == n
                    && e.spiffe_id != m.entry.spiffe_id
                    && e.selectors.iter().all(|s| observed.contains(s))
            })
            .map(|e| e.spiffe_id.to_string())
            .collect();
        o.sort();
        o.dedup();
        o
    } else {
        Vec::new()
    };
    Some((
        m.entry.spiffe_id.to_string(),
        m.entry.selectors.iter().map(ToString::to_string).collect(),
        others,
        m.entry.id.clone(),
    ))
}

/// A template's match, in [`Matched`]'s shape (no selectors of an entry, no tie).
fn match_template(snap: &Snapshot, e: &FingerprintEvent, observed: &BTreeSet<Selector>) -> Matched {
    best_template(&snap.templates, &snap.trust_domain, e, observed)
        .map(|(t, id)| (id.to_string(), Vec::new(), Vec::new(), t.id.clone()))
}

/// Gives each event its workload key, then resolves its workload against the entries, else the
/// templates: sets `workload.spiffe_id` and `workload.selectors` (the matched entry's selectors;
/// none for a template) when one matches, and leaves the event alone otherwise. Consecutive
/// events with the same facts (one process's flows) are matched once.
pub fn resolve(snap: &Snapshot, events: &mut [FingerprintEvent]) -> Resolution {
    set_keys(events);
    let mut out = Resolution::default();
    if snap.is_empty() {
        return out;
    }
    let mut prev: Option<(usize, Matched)> = None;
    for i in 0..events.len() {
        let matched = match &prev {
            Some((p, m)) if same_facts(&events[*p], &events[i]) => m.clone(),
            _ => {
                let observed = selectors_for(&events[i]);
                match_one(snap, &observed).or_else(|| match_template(snap, &events[i], &observed))
            }
        };
        if let Some((id, selectors, others, _)) = &matched {
            let w = &mut events[i].workload;
            w.spiffe_id = Some(id.clone());
            w.selectors = selectors.clone();
            out.resolved.push(i);
            if !others.is_empty() {
                out.conflicts.push(Conflict {
                    index: i,
                    spiffe_id: id.clone(),
                    others: others.clone(),
                });
            }
        }
        prev = Some((i, matched));
    }
    out
}

/// Gives every event its workload key (`hais_shared::workload`), replacing whatever the sender
/// put there. Consecutive events with the same facts share the computed key.
pub fn set_keys(events: &mut [FingerprintEvent]) {
    for i in 0..events.len() {
        let key = match i.checked_sub(1) {
            Some(p) if same_facts(&events[p], &events[i]) => events[p].workload.key.clone(),
            _ => hais_shared::workload::workload_key(&events[i]),
        };
        events[i].workload.key = key;
    }
}

/// The identity state of one process: the entries snapshot and how to refresh it.
#[derive(Debug)]
pub struct Identity {
    snapshot: RwLock<Arc<Snapshot>>,
    /// Serialises reloads, so the last one to finish read the newest entries.
    reload: tokio::sync::Mutex<()>,
    trust_domain: String,
    /// The digest of the newest snapshot; receivers learn that resolution changed.
    changes: watch::Sender<u64>,
    /// Held shared while a batch is resolved and committed with one snapshot, exclusively by
    /// the inventory's re-resolution (see [`inventory`]).
    pub epoch: tokio::sync::RwLock<()>,
}

impl Default for Identity {
    fn default() -> Self {
        Identity {
            snapshot: RwLock::default(),
            reload: tokio::sync::Mutex::default(),
            trust_domain: String::new(),
            changes: watch::Sender::new(Snapshot::default().digest()),
            epoch: tokio::sync::RwLock::default(),
        }
    }
}

impl Identity {
    /// Loads the entries and templates from the store; templates render into `trust_domain`.
    pub async fn load(store: &dyn Store, trust_domain: &str) -> Result<Identity, StoreError> {
        let id = Identity {
            trust_domain: trust_domain.to_owned(),
            ..Identity::default()
        };
        id.refresh(store).await?;
        Ok(id)
    }

    /// The trust domain templates render into.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Tells when the entries or templates changed (a reload that found something new).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The entries now (cheap: one `Arc`).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reloads the entries from the store.
    pub async fn refresh(&self, store: &dyn Store) -> Result<(), StoreError> {
        let _g = self.reload.lock().await;
        let entries = store
            .all_entries()
            .await?
            .iter()
            .map(|r| r.to_entry())
            .collect::<Result<Vec<_>, _>>()?;
        let templates = store
            .all_templates()
            .await?
            .iter()
            .map(|r| r.to_template())
            .collect::<Result<Vec<_>, _>>()?;
        let snap = Snapshot::new(entries).with_templates(&self.trust_domain, templates);
        let digest = snap.digest();
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snap);
        self.changes
            .send_if_modified(|d| std::mem::replace(d, digest) != digest);
        Ok(())
    }
}

/// Reloads the process's entries, counting the outcome.
pub async fn refresh(state: &AppState, identity: &Identity) {
    let m = &state.metrics.identity;
    match identity.refresh(&*state.store).await {
        Ok(()) => m.refreshes.fetch_add(1, Ordering::Relaxed),
        Err(e) => {
            tracing::warn!(error = %e, "reloading registration entries failed");
            m.refresh_failures.fetch_add(1, Ordering::Relaxed)
        }
    };
}

/// After an ingest committed: counts the newly stored events' resolution and records their
/// conflicts. A failure to record is logged, not returned: the events are stored already.
pub async fn record(
    state: &AppState,
    events: &[FingerprintEvent],
    r: &Resolution,
    out: &IngestOutcome,
) {
    let m = &state.metrics.identity;
    let stored: BTreeSet<usize> = out.stored.iter().copied().collect();
    let resolved = r.resolved.iter().filter(|i| stored.contains(i)).count();
    m.resolved.fetch_add(resolved as u64, Ordering::Relaxed);
    m.unmatched
        .fetch_add((stored.len() - resolved) as u64, Ordering::Relaxed);
    let mut deltas = ConflictDeltas::new();
    for c in r.conflicts.iter().filter(|c| stored.contains(&c.index)) {
        m.conflicts.fetch_add(1, Ordering::Relaxed);
        let ts = to_us(events[c.index].timestamp);
        for other in &c.others {
            deltas
                .entry((c.spiffe_id.clone(), other.clone()))
                .and_modify(|s: &mut Seen| s.add(ts))
                .or_insert_with(|| Seen::new(ts));
        }
    }
    if !deltas.is_empty() {
        tracing::warn!(
            conflicts = deltas.len(),
            "equally specific registration entries name different SPIFFE IDs; the oldest won"
        );
        if let Err(e) = state.store.record_conflicts(&deltas).await {
            tracing::warn!(error = %e, "recording identity conflicts failed");
        }
    }
}

/// The process's [`Identity`] handle, loaded by the first service that asks (the identity
/// service, or the ja4 service, which resolves every ingested event with it). Loading it also
/// starts keeping it fresh.
pub async fn handle(host: &mut Host) -> Result<Arc<Identity>, StoreError> {
    if let Some(id) = host.shared::<Identity>() {
        return Ok(id);
    }
    let identity =
        Arc::new(Identity::load(&*host.app.store, &host.app.config.spire.trust_domain).await?);
    host.tasks.push(
        host.app
            .listener("identity entries", host.shutdown.clone())
            .every(REFRESH_INTERVAL)
            .spawn(Refresher {
                state: host.app.clone(),
                identity: identity.clone(),
            }),
    );
    host.share(identity.clone());
    Ok(identity)
}

/// Keeps an [`Identity`] fresh: reloads on every `identity.entries` message (from any process),
/// when the bus listener lagged, and every [`REFRESH_INTERVAL`].
struct Refresher {
    state: AppState,
    identity: Arc<Identity>,
}

impl OnLive for Refresher {
    async fn message(&mut self, m: Received<'_>) {
        if m.payload::<IdentityEntries>().is_some() {
            refresh(&self.state, &self.identity).await;
        }
    }
    async fn lagged(&mut self, _skipped: u64) {
        refresh(&self.state, &self.identity).await;
    }
    async fn tick(&mut self) {
        refresh(&self.state, &self.identity).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hais_shared::event::{Fingerprint, Flow, Transport};
    use hais_shared::fingerprint::Method;

    fn entry(id: &str, spiffe: &str, sels: &[&str]) -> RegistrationEntry {
        RegistrationEntry::from_text(id, spiffe, sels, None).unwrap()
    }

    fn ev(uid: Option<u32>) -> FingerprintEvent {
        let mut e = FingerprintEvent::new(
            "a1",
            "web-01",
            Flow {
                src_ip: "10.0.0.1".parse().unwrap(),
                src_port: 1,
                dst_ip: "10.0.0.2".parse().unwrap(),
                dst_port: 443,
                transport: Transport::Tcp,
            },
        );
        e.fingerprints.push(Fingerprint {
            method: Method::Ja4,
            value: "x_y_z".into(),
        });
        if let Some(uid) = uid {
            e.workload.pid = Some(1);
            e.workload.uid = Some(uid);
            e.workload.user = Some(format!("u{uid}"));
        }
        e
    }

    #[test]
    fn resolves_most_specific_and_reports_ties() {
        let snap = Snapshot::new(vec![
            entry(
                "03",
                "spiffe://t/tie",
                &["unix:user:u7", "hais:host:web-01"],
            ),
            entry("01", "spiffe://t/node", &["hais:host:web-01"]),
            entry("02", "spiffe://t/uid7", &["unix:uid:7", "hais:host:web-01"]),
        ]);
        let mut events = vec![ev(Some(7)), ev(Some(7)), ev(Some(8)), ev(None)];
        events[3].workload.spiffe_id = Some("spiffe://t/given".into());
        let r = resolve(&snap, &mut events);
        assert_eq!(r.resolved, [0, 1, 2, 3]);
        // uid 7: two entries of two selectors tie; the oldest (02) wins, flagged.
        assert_eq!(
            events[0].workload.spiffe_id.as_deref(),
            Some("spiffe://t/uid7")
        );
        assert_eq!(
            events[0].workload.selectors,
            ["unix:uid:7", "hais:host:web-01"]
        );
        assert_eq!(events[1].workload, events[0].workload);
        assert_eq!(
            r.conflicts,
            [0, 1].map(|index| Conflict {
                index,
                spiffe_id: "spiffe://t/uid7".into(),
                others: vec!["spiffe://t/tie".into()],
            })
        );
        // uid 8 and a node without process facts: only the node entry matches.
        assert_eq!(
            events[2].workload.spiffe_id.as_deref(),
            Some("spiffe://t/node")
        );
        assert_eq!(
            events[3].workload.spiffe_id.as_deref(),
            Some("spiffe://t/node")
        );
        // No entries: events are left as sent.
        let mut e = vec![ev(Some(7))];
        assert_eq!(resolve(&Snapshot::default(), &mut e), Resolution::default());
        assert_eq!(e[0].workload.spiffe_id, None);
    }
}
