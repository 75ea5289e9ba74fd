//! Registration entries: selectors → workload SPIFFE ID, and how one is chosen for a workload.
//!
//! An entry matches a workload when *every* one of its selectors is among the workload's
//! selectors (SPIRE's rule). SPIRE hands a workload every matching SVID; an event names one
//! identity, so HaIS picks **the most specific entry: the one with the most selectors**. When
//! several entries tie with different SPIFFE IDs, the oldest entry (lowest id; ids are UUIDv7,
//! so time-ordered) wins and the match is flagged as a conflict, which the identity API reports
//! so an operator can add a selector to break the tie.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::selector::{Selector, SelectorError};
use crate::spiffe::{SpiffeId, SpiffeIdError};

/// Most selectors one entry may carry.
pub const MAX_SELECTORS_PER_ENTRY: usize = 32;

/// One registration entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationEntry {
    /// Time-ordered id (UUIDv7 text) assigned by the identity service.
    pub id: String,
    pub spiffe_id: SpiffeId,
    /// Sorted, without duplicates, never empty.
    pub selectors: Vec<Selector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Why an entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    #[error("spiffe_id: {0}")]
    SpiffeId(#[from] SpiffeIdError),
    #[error("selectors[{index}]: {source}")]
    Selector {
        index: usize,
        #[source]
        source: SelectorError,
    },
    #[error("an entry needs between 1 and {MAX_SELECTORS_PER_ENTRY} selectors, got {0}")]
    SelectorCount(usize),
}

/// Validates and normalises the parts of a new entry (the caller assigns the id).
pub fn validate(
    spiffe_id: &str,
    selectors: &[String],
) -> Result<(SpiffeId, Vec<Selector>), EntryError> {
    let id = SpiffeId::parse(spiffe_id)?;
    if selectors.is_empty() || selectors.len() > MAX_SELECTORS_PER_ENTRY {
        return Err(EntryError::SelectorCount(selectors.len()));
    }
    let mut parsed = selectors
        .iter()
        .enumerate()
        .map(|(index, s)| {
            Selector::parse(s).map_err(|source| EntryError::Selector { index, source })
        })
        .collect::<Result<Vec<_>, _>>()?;
    parsed.sort();
    parsed.dedup();
    Ok((id, parsed))
}

impl RegistrationEntry {
    /// A validated entry from text (see [`validate`]).
    pub fn from_text(
        id: impl Into<String>,
        spiffe_id: &str,
        selectors: &[&str],
        description: Option<String>,
    ) -> Result<RegistrationEntry, EntryError> {
        let texts: Vec<String> = selectors.iter().map(|s| s.to_string()).collect();
        let (spiffe_id, selectors) = validate(spiffe_id, &texts)?;
        Ok(RegistrationEntry {
            id: id.into(),
            spiffe_id,
            selectors,
            description,
        })
    }
}

/// The entry chosen for a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match<'a> {
    pub entry: &'a RegistrationEntry,
    /// Another entry with as many selectors, naming a different SPIFFE ID, also matched.
    pub conflict: bool,
}

/// The most specific entry whose selectors are all in `observed` (see the module documentation
/// for the tie rule), or `None`.
pub fn best_match<'a>(
    entries: &'a [RegistrationEntry],
    observed: &BTreeSet<Selector>,
) -> Option<Match<'a>> {
    let mut best: Option<&RegistrationEntry> = None;
    let mut conflict = false;
    for e in entries {
        if !e.selectors.iter().all(|s| observed.contains(s)) {
            continue;
        }
        match best {
            None => best = Some(e),
            Some(b) => {
                let (n, bn) = (e.selectors.len(), b.selectors.len());
                if n > bn || (n == bn && e.id < b.id) {
                    conflict = n == bn && e.spiffe_id != b.spiffe_id;
                    best = Some(e);
                } else if n == bn && e.spiffe_id != b.spiffe_id {
                    conflict = true;
                }
            }
        }
    }
    best.map(|entry| Match { entry, conflict })
}

/// The selectors an event's workload presents: what the agent observed, plus the agent and the
/// host that saw the flow. Facts that do not make a valid selector (an odd user name) are left
/// out rather than refusing the event.
pub fn selectors_for(e: &crate::event::FingerprintEvent) -> BTreeSet<Selector> {
    use crate::selector::Kind;
    let w = &e.workload;
    let mut out = BTreeSet::new();
    let mut add = |kind: Kind, v: String| {
        if let Ok(s) = Selector::new(kind, v) {
            out.insert(s);
        }
    };
    add(Kind::HaisAgent, e.agent_id.clone());
    add(Kind::HaisHost, e.host.clone());
    if w.pid.is_none() {
        // Nothing observed about a process: only the node-level selectors apply.
        return out;
    }
    if let Some(uid) = w.uid {
        add(Kind::UnixUid, uid.to_string());
    }
    for (kind, v) in [
        (Kind::UnixUser, &w.user),
        (Kind::UnixPath, &w.exe),
        (Kind::UnixSha256, &w.exe_sha256),
        (Kind::K8sNs, &w.k8s_namespace),
        (Kind::K8sSa, &w.k8s_service_account),
        (Kind::K8sPodUid, &w.pod),
    ] {
        if let Some(v) = v {
            add(kind, v.clone());
        }
    }
    if let Some(pod) = &w.k8s_pod_name {
        add(Kind::K8sPodName, pod.clone());
    }
    if let Some(key) = crate::workload::workload_key(e) {
        add(Kind::HaisWorkload, key);
    }
    if w.container_runtime.as_deref() == Some("docker") {
        if let Some(id) = &w.container {
            add(Kind::DockerId, id.clone());
        }
        if let Some(image) = &w.container_image {
            add(Kind::DockerImageId, image.clone());
        }
        for (k, v) in &w.container_labels {
            add(Kind::DockerLabel, format!("{k}:{v}"));
        }
    }
    out
}

/// An entry read from SPIRE, before the identity service gives it an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedEntry {
    /// The entry's id in SPIRE, kept as the description for traceability.
    pub spire_id: String,
    pub spiffe_id: SpiffeId,
    pub selectors: Vec<Selector>,
}

/// What an import found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub entries: Vec<ImportedEntry>,
    /// `(SPIRE entry id, reason)` for entries that could not be imported.
    pub skipped: Vec<(String, String)>,
}

#[derive(Deserialize)]
struct SpireDoc {
    #[serde(default)]
    entries: Vec<SpireEntry>,
}

#[derive(Deserialize)]
struct SpireEntry {
    #[serde(default)]
    id: String,
    spiffe_id: SpireId,
    #[serde(default)]
    parent_id: Option<SpireId>,
    #[serde(default)]
    selectors: Vec<SpireSelector>,
}

#[derive(Deserialize)]
struct SpireId {
    trust_domain: String,
    #[serde(default)]
    path: String,
}

#[derive(Deserialize)]
struct SpireSelector {
    #[serde(rename = "type")]
    ty: String,
    value: String,
}

/// Reads the JSON that `spire-server entry show -output json` prints. Each entry's selectors
/// (`{"type":"unix","value":"uid:1000"}`) become HaIS selectors; a parent that is a HaIS agent
/// (`…/hais/agent/<id>`) becomes a `hais:agent:<id>` selector, keeping the entry scoped to that
/// node. Entries with selector kinds HaIS does not observe (e.g. `k8s:container-name`) are
/// skipped with the reason, not half-imported: dropping a selector would widen the entry.
pub fn import_spire_json(text: &str) -> Result<ImportReport, serde_json::Error> {
    let doc: SpireDoc = serde_json::from_str(text)?;
    let mut report = ImportReport::default();
    for e in doc.entries {
        let spiffe_id = match SpiffeId::new(&e.spiffe_id.trust_domain, &e.spiffe_id.path) {
            Ok(id) => id,
            Err(err) => {
                report.skipped.push((e.id, format!("spiffe_id: {err}")));
                continue;
            }
        };
        let mut texts: Vec<String> = e
            .selectors
            .iter()
            .map(|s| format!("{}:{}", s.ty, s.value))
            .collect();
        if let Some(agent) = e
            .parent_id
            .and_then(|p| SpiffeId::new(&p.trust_domain, &p.path).ok())
            .and_then(|p| p.agent_id().map(str::to_owned))
        {
            texts.push(format!("hais:agent:{agent}"));
        }
        match validate(spiffe_id.as_str(), &texts) {
            Ok((spiffe_id, selectors)) => report.entries.push(ImportedEntry {
                spire_id: e.id,
                spiffe_id,
                selectors,
            }),
            Err(err) => report.skipped.push((e.id, err.to_string())),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, spiffe: &str, sels: &[&str]) -> RegistrationEntry {
        RegistrationEntry::from_text(id, spiffe, sels, None).unwrap()
    }

    fn observed(sels: &[&str]) -> BTreeSet<Selector> {
        sels.iter().map(|s| Selector::parse(s).unwrap()).collect()
    }

    #[test]
    fn an_entry_matches_only_when_all_its_selectors_are_observed() {
        let entries = [entry(
            "01",
            "spiffe://prod/ns/payments/sa/api",
            &["k8s:ns:payments", "k8s:sa:api"],
        )];
        let w = observed(&["k8s:ns:payments", "k8s:sa:api", "unix:uid:1000"]);
        assert_eq!(
            best_match(&entries, &w).unwrap().entry.spiffe_id.as_str(),
            "spiffe://prod/ns/payments/sa/api"
        );
        assert!(best_match(&entries, &observed(&["k8s:ns:payments"])).is_none());
        assert!(best_match(&entries, &BTreeSet::new()).is_none());
    }

    #[test]
    fn the_most_specific_entry_wins() {
        let entries = [
            entry("01", "spiffe://prod/ns/payments", &["k8s:ns:payments"]),
            entry(
                "02",
                "spiffe://prod/ns/payments/sa/api",
                &["k8s:ns:payments", "k8s:sa:api"],
            ),
        ];
        let m = best_match(&entries, &observed(&["k8s:ns:payments", "k8s:sa:api"])).unwrap();
        assert_eq!(m.entry.id, "02");
        assert!(!m.conflict);
        let m = best_match(&entries, &observed(&["k8s:ns:payments", "k8s:sa:web"])).unwrap();
        assert_eq!(m.entry.id, "01");
    }

    #[test]
    fn equal_specificity_picks_the_oldest_and_flags_a_conflict() {
        let entries = [
            entry("02", "spiffe://prod/b", &["unix:uid:1000"]),
            entry("01", "spiffe://prod/a", &["unix:user:svc"]),
            entry("03", "spiffe://prod/a", &["unix:path:/usr/bin/x"]),
        ];
        let w = observed(&["unix:uid:1000", "unix:user:svc"]);
        let m = best_match(&entries, &w).unwrap();
        assert_eq!(m.entry.id, "01");
        assert!(m.conflict);
        // Two entries naming the same ID are not a conflict.
        let w = observed(&["unix:user:svc", "unix:path:/usr/bin/x"]);
        let m = best_match(&entries, &w).unwrap();
        assert_eq!(m.entry.id, "01");
        assert!(!m.conflict);
    }

    #[test]
    fn validation_normalises_and_names_the_bad_selector() {
        let (_, s) = validate(
            "spiffe://prod/x",
            &["unix:uid:1".into(), "k8s:ns:a".into(), "unix:uid:1".into()],
        )
        .unwrap();
        assert_eq!(s.len(), 2, "duplicates removed");
        let e = validate("spiffe://prod/x", &["unix:uid:1".into(), "bogus".into()]).unwrap_err();
        assert!(e.to_string().starts_with("selectors[1]:"), "{e}");
        assert!(matches!(
            validate("spiffe://prod/x", &[]),
            Err(EntryError::SelectorCount(0))
        ));
        assert!(matches!(
            validate("http://x", &["unix:uid:1".into()]),
            Err(EntryError::SpiffeId(_))
        ));
    }

    #[test]
    fn selectors_come_from_observed_facts_and_the_node() {
        use crate::event::{FingerprintEvent, Flow, Transport};
        let mut e = FingerprintEvent::new(
            "a7",
            "web-01",
            Flow {
                src_ip: "10.0.0.1".parse().unwrap(),
                src_port: 1,
                dst_ip: "10.0.0.2".parse().unwrap(),
                dst_port: 2,
                transport: Transport::Tcp,
            },
        );
        let names = |e: &FingerprintEvent| {
            selectors_for(e)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&e), ["hais:agent:a7", "hais:host:web-01"]);
        e.workload.pid = Some(10);
        e.workload.uid = Some(1000);
        e.workload.user = Some("svc".into());
        e.workload.exe = Some("/usr/bin/curl".into());
        e.workload.container = Some("c".repeat(64));
        e.workload.container_runtime = Some("docker".into());
        e.workload
            .container_labels
            .insert("app".into(), "pay".into());
        e.workload.k8s_namespace = Some("payments".into());
        e.workload.k8s_service_account = Some("api".into());
        e.workload.pod = Some("8d3e5c2a-1b4f-4e6a-9c7d-0e1f2a3b4c5d".into());
        e.workload.cmdline = Some("curl x".into());
        e.workload.k8s_pod_name = Some("api-7d4b9c8f6d-x2x9q".into());
        e.workload.container_image = Some("shop/api:1.2".into());
        let got = names(&e);
        for want in [
            "k8s:pod-name:api-7d4b9c8f6d-x2x9q",
            "docker:image_id:shop/api:1.2",
            "hais:workload:k8s:payments:deployment/api",
            "unix:uid:1000",
            "unix:user:svc",
            "unix:path:/usr/bin/curl",
            "docker:label:app:pay",
            "k8s:ns:payments",
            "k8s:sa:api",
            "k8s:pod-uid:8d3e5c2a-1b4f-4e6a-9c7d-0e1f2a3b4c5d",
            "hais:agent:a7",
        ] {
            assert!(got.iter().any(|g| g == want), "{want} missing from {got:?}");
        }
        assert!(got.iter().any(|g| g.starts_with("docker:id:")));
        // An invalid fact is left out, not fatal.
        e.workload.user = Some("bad user".into());
        assert!(!names(&e).iter().any(|g| g.starts_with("unix:user:")));
        let entries = [entry(
            "01",
            "spiffe://prod/ns/payments/sa/api",
            &["k8s:ns:payments", "k8s:sa:api"],
        )];
        assert_eq!(
            best_match(&entries, &selectors_for(&e))
                .unwrap()
                .entry
                .spiffe_id
                .as_str(),
            "spiffe://prod/ns/payments/sa/api"
        );
    }

    #[test]
    fn imports_spire_entry_show_json() {
        let json = r#"{"entries": [
          {"id": "e1", "spiffe_id": {"trust_domain": "prod.example", "path": "/ns/payments/sa/api"},
           "parent_id": {"trust_domain": "prod.example", "path": "/spire/agent/k8s_psat/c1/n1"},
           "selectors": [{"type": "k8s", "value": "ns:payments"}, {"type": "k8s", "value": "sa:api"}],
           "x509_svid_ttl": 3600, "federates_with": [], "admin": false, "downstream": false,
           "expires_at": "0", "dns_names": [], "revision_number": "0", "store_svid": false, "jwt_svid_ttl": 0},
          {"id": "e2", "spiffe_id": {"trust_domain": "prod.example", "path": "/db"},
           "parent_id": {"trust_domain": "prod.example", "path": "/hais/agent/a7"},
           "selectors": [{"type": "unix", "value": "uid:999"}]},
          {"id": "e3", "spiffe_id": {"trust_domain": "prod.example", "path": "/web"},
           "selectors": [{"type": "k8s", "value": "container-name:nginx"}]},
          {"id": "e4", "spiffe_id": {"trust_domain": "Bad TD", "path": "/x"},
           "selectors": [{"type": "unix", "value": "uid:1"}]}
        ]}"#;
        let r = import_spire_json(json).unwrap();
        assert_eq!(r.entries.len(), 2);
        assert_eq!(r.entries[0].spire_id, "e1");
        assert_eq!(
            r.entries[0]
                .selectors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["k8s:ns:payments", "k8s:sa:api"]
        );
        assert_eq!(
            r.entries[1]
                .selectors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["unix:uid:999", "hais:agent:a7"]
        );
        let skipped: Vec<&str> = r.skipped.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(skipped, ["e3", "e4"]);
        assert!(
            r.skipped[0]
                .1
                .contains("unknown selector k8s:container-name"),
            "{:?}",
            r.skipped
        );
        assert!(import_spire_json("{not json").is_err());
        assert_eq!(import_spire_json("{}").unwrap(), ImportReport::default());
    }
}
