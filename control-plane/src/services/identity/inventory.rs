//! The discovered-workloads inventory: what runs in the fleet, from the first event on, with
//! or without registration entries.
//!
//! Two background tasks of the identity service keep the `workloads` table (see
//! [`crate::store::workloads`] for why it is apart from the roll-ups):
//! * [`Inventory`], a durable consumer of `fingerprint.events` (group `identity`): per batch,
//!   the newest facts of each workload key, the selectors they yield, and what the current
//!   entries and templates make of them, committed with the group's checkpoint (exactly once
//!   in effect, replicas share the partitions).
//! * [`spawn_reresolver`]: after every change of the entries or templates (this process's own,
//!   or announced on the bus), every stored workload is resolved again, so a new entry or
//!   template shows in the inventory at once, without waiting for the workload's next flow.
//!
//! A batch handled with the old entries could commit after the re-resolution passed its keys;
//! [`Identity::epoch`] closes that gap: the consumer holds it shared while it resolves and
//! commits, the re-resolver takes it exclusively once before each pass.

use std::collections::BTreeMap;
use std::sync::Arc;

use hais_shared::event::FingerprintEvent;
use hais_shared::registration::selectors_for;
use hais_shared::workload::WorkloadKind;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Identity;
use crate::bus::durable::{Ack, Batch, Handler, HandlerFuture};
use crate::bus::log::FingerprintEvents;
use crate::store::workloads::{WorkloadFacts, WorkloadRecord};
use crate::store::{Store, now_us, to_us};

/// Workloads re-resolved per store round trip.
const RERESOLVE_PAGE: u32 = 1000;

/// The consumer of `fingerprint.events` that records workloads.
#[derive(Debug)]
pub struct Inventory {
    pub store: Arc<dyn Store>,
    pub identity: Arc<Identity>,
}

/// The facts of each workload key in a batch, newest first filled from older ones (see
/// [`WorkloadFacts::fill_from`]), with the newest event's time.
pub fn newest_facts<'a>(
    events: impl Iterator<Item = &'a FingerprintEvent>,
) -> BTreeMap<String, (WorkloadFacts, i64)> {
    let mut by_key: BTreeMap<String, Vec<&FingerprintEvent>> = BTreeMap::new();
    for e in events {
        let key = match &e.workload.key {
            Some(k) => k.clone(),
            // Stored before keys were set on ingest.
            None => match hais_shared::workload::workload_key(e) {
                Some(k) => k,
                None => continue,
            },
        };
        by_key.entry(key).or_default().push(e);
    }
    by_key
        .into_iter()
        .map(|(key, mut events)| {
            // Oldest first; a tie keeps log order (the later one is newer).
            events.sort_by_key(|e| e.timestamp);
            let mut facts = WorkloadFacts::default();
            for e in &events {
                let mut newer = WorkloadFacts::of(e);
                newer.fill_from(&facts);
                facts = newer;
            }
            let ts = to_us(events.last().expect("one event per key").timestamp);
            (key, (facts, ts))
        })
        .collect()
}

/// The record of workload `key` whose (merged) facts are `facts`, seen last at `facts_us`,
/// resolved with `resolve`.
pub fn record(
    key: String,
    facts: WorkloadFacts,
    facts_us: i64,
    resolve: impl Fn(&FingerprintEvent) -> Option<crate::store::workloads::Resolved>,
) -> Option<WorkloadRecord> {
    let kind = WorkloadKind::of_key(&key)?.as_str();
    let e = facts.as_event();
    let namespace = facts.workload.k8s_namespace.clone().or_else(|| {
        facts
            .workload
            .container_labels
            .get("io.kubernetes.pod.namespace")
            .cloned()
    });
    Some(WorkloadRecord {
        kind,
        namespace: namespace.filter(|_| kind == "k8s"),
        selectors: selectors_for(&e).iter().map(ToString::to_string).collect(),
        facts_us,
        resolution: resolve(&e),
        facts,
        key,
    })
}

impl Handler<FingerprintEvents> for Inventory {
    fn handle<'a>(&'a self, batch: &'a Batch<FingerprintEvents>) -> HandlerFuture<'a> {
        Box::pin(async move {
            let newest = newest_facts(batch.items());
            let keys: Vec<String> = newest.keys().cloned().collect();
            let stored = self.store.workload_facts(&keys).await?;
            let _epoch = self.identity.epoch.read().await;
            let snap = self.identity.snapshot();
            let rows: Vec<WorkloadRecord> = newest
                .into_iter()
                .filter_map(|(key, (mut facts, ts))| {
                    if let Some(old) = stored.get(&key) {
                        facts.fill_from(old);
                    }
                    record(key, facts, ts, |e| snap.resolve_one(e))
                })
                .collect();
            self.store
                .record_workloads(&rows, &batch.checkpoint)
                .await?;
            Ok(Ack::Committed)
        })
    }
}

/// Resolves every stored workload again with the current entries and templates; returns how
/// many changed.
pub async fn reresolve(
    store: &dyn Store,
    identity: &Identity,
) -> Result<usize, crate::store::StoreError> {
    // Every batch resolved with the previous snapshot has committed once this is acquired.
    drop(identity.epoch.write().await);
    let snap = identity.snapshot();
    let mut after = String::new();
    let mut changed = 0;
    loop {
        let page = store.workload_resolutions(&after, RERESOLVE_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.key.clone();
        let updates: Vec<_> = page
            .into_iter()
            .filter_map(|w| {
                let now = snap.resolve_one(&w.facts.as_event());
                (now != w.resolution).then_some((w.key, now))
            })
            .collect();
        changed += updates.len();
        if !updates.is_empty() {
            store.set_workload_resolutions(&updates, now_us()).await?;
        }
    }
    Ok(changed)
}

/// Re-resolves the inventory whenever the process's entries or templates change.
pub fn spawn_reresolver(
    store: Arc<dyn Store>,
    identity: Arc<Identity>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let mut changes = identity.changes();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = crate::services::stopped(&mut shutdown) => return,
                r = changes.changed() => if r.is_err() { return },
            }
            match reresolve(&*store, &identity).await {
                Ok(n) => tracing::info!(changed = n, "workloads resolved again"),
                Err(e) => {
                    tracing::warn!(error = %e, "re-resolving workloads failed; retrying");
                    // Try again on the next change, or shortly.
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    changes.mark_changed();
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hais_shared::event::{Flow, Transport};

    fn ev(host: &str, exe: &str, secs: i64) -> FingerprintEvent {
        let mut e = FingerprintEvent::new(
            "a1",
            host,
            Flow {
                src_ip: "10.0.0.1".parse().unwrap(),
                src_port: 1,
                dst_ip: "10.0.0.2".parse().unwrap(),
                dst_port: 443,
                transport: Transport::Tcp,
            },
        );
        e.timestamp = time::OffsetDateTime::from_unix_timestamp(1_800_000_000 + secs).unwrap();
        e.workload.pid = Some(secs as u32 + 1);
        e.workload.uid = Some(0);
        e.workload.exe = Some(exe.into());
        e.workload.key = hais_shared::workload::workload_key(&e);
        e
    }

    #[test]
    fn one_record_per_key_with_the_newest_facts() {
        let mut a_new = ev("h1", "/usr/bin/curl", 5);
        a_new.workload.exe_sha256 = Some("b".repeat(64));
        let events = [
            a_new.clone(),
            ev("h1", "/usr/bin/curl", 1),
            ev("h1", "/usr/bin/wget", 2),
        ];
        let rows: Vec<WorkloadRecord> = newest_facts(events.iter())
            .into_iter()
            .filter_map(|(k, (f, ts))| record(k, f, ts, |_| None))
            .collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].key, "host:h1:curl:0");
        assert_eq!(rows[0].kind, "host");
        assert_eq!(rows[0].facts_us, to_us(a_new.timestamp));
        assert_eq!(rows[0].facts.workload.exe_sha256, a_new.workload.exe_sha256);
        assert!(
            rows[0]
                .selectors
                .iter()
                .any(|s| s == "unix:path:/usr/bin/curl")
        );
        assert!(
            rows[0]
                .selectors
                .iter()
                .any(|s| s == "hais:workload:host:h1:curl:0")
        );
        assert_eq!(rows[1].key, "host:h1:wget:0");
        // Unattributed flows are no workload.
        let mut u = ev("h1", "/x", 3);
        u.workload = hais_shared::event::Workload {
            unattributed: Some("not-local".into()),
            ..Default::default()
        };
        assert!(newest_facts([u].iter()).is_empty());
        // A newer event without the executable keeps the one an older event gave.
        let mut bare = ev("h1", "/usr/bin/curl", 9);
        bare.workload.exe = None;
        bare.workload.process = Some("curl".into());
        let mut full = ev("h1", "/usr/bin/curl", 8);
        full.workload.process = Some("curl".into());
        let m = newest_facts([bare.clone(), full].iter());
        let (f, ts) = &m["host:h1:curl:0"];
        assert_eq!(f.workload.exe.as_deref(), Some("/usr/bin/curl"));
        assert_eq!(*ts, to_us(bare.timestamp));
    }
}
