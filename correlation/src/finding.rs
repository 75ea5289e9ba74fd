//! Findings: what a detector concluded about one identity, with its evidence. One finding per
//! identity × detector × method × fingerprint × destination ([`FindingKey`]); a recurrence is
//! absorbed into it ([`Finding::absorb`]): count, last seen and the most recent evidence.

use std::collections::BTreeMap;

use hais_shared::detection::{Detection, MAX_EVIDENCE_EVENTS, Severity, Source};
use hais_shared::fingerprint::Method;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// The detectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Detector {
    /// An established identity presents a fingerprint outside its baseline.
    NewFingerprint,
    /// A fingerprint seen from at most one identity starts appearing from many within the
    /// prevalence window.
    SharedFingerprint,
    /// The hop count or the TCP/TLS latency gap to a destination left its learned spread.
    PathChange,
    /// An identity whose baseline has no interactive SSH sessions opens one (off by default).
    SshSession,
}

impl Detector {
    pub const ALL: [Detector; 4] = [
        Detector::NewFingerprint,
        Detector::SharedFingerprint,
        Detector::PathChange,
        Detector::SshSession,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Detector::NewFingerprint => "new-fingerprint",
            Detector::SharedFingerprint => "shared-fingerprint",
            Detector::PathChange => "path-change",
            Detector::SshSession => "ssh-session",
        }
    }

    pub fn parse(s: &str) -> Option<Detector> {
        Detector::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// What makes two findings the same.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FindingKey {
    pub identity: String,
    pub detector: Detector,
    pub method: Method,
    pub fingerprint: String,
    /// The destination, for findings about one (path-change, server-side fingerprints).
    pub destination: Option<String>,
}

impl FindingKey {
    /// The key as one string (a unique column in the store), its parts separated by a byte no
    /// part may contain.
    pub fn text(&self) -> String {
        [
            self.identity.as_str(),
            self.detector.as_str(),
            self.method.as_str(),
            &self.fingerprint,
            self.destination.as_deref().unwrap_or_default(),
        ]
        .join("\u{1f}")
    }

    /// The finding's id: a UUIDv7 whose time is the first occurrence's and whose other bits are
    /// a hash of the key, so a replay names the finding as the first run did.
    pub fn id(&self, first_seen_us: i64) -> Uuid {
        let text = self.text();
        let mut bytes = [0u8; 10];
        let a = fnv1a(text.as_bytes(), 0xcbf2_9ce4_8422_2325).to_be_bytes();
        let b = fnv1a(text.as_bytes(), 0x8422_2325_cbf2_9ce4).to_be_bytes();
        bytes[..8].copy_from_slice(&a);
        bytes[8..].copy_from_slice(&b[..2]);
        let ms = u64::try_from(first_seen_us.max(0) / 1000).unwrap_or(0);
        uuid::Builder::from_unix_timestamp_millis(ms, &bytes).into_uuid()
    }
}

fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    let mut h = seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub id: Uuid,
    #[serde(flatten)]
    pub key: FindingKey,
    pub severity: Severity,
    /// One sentence a person can act on.
    pub summary: String,
    /// The most recent events that show it, oldest first, at most [`MAX_EVIDENCE_EVENTS`].
    pub event_ids: Vec<Uuid>,
    pub first_seen_us: i64,
    pub last_seen_us: i64,
    pub count: u64,
    /// `host`, `namespace`, `workload` of the latest evidence.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

impl Finding {
    /// A first occurrence.
    pub fn new(
        key: FindingKey,
        severity: Severity,
        summary: String,
        event_id: Uuid,
        ts_us: i64,
        attributes: BTreeMap<String, String>,
    ) -> Finding {
        Finding {
            id: key.id(ts_us),
            key,
            severity,
            summary,
            event_ids: vec![event_id],
            first_seen_us: ts_us,
            last_seen_us: ts_us,
            count: 1,
            attributes,
        }
    }

    /// Takes in a later occurrence (or a batch of them) of the same finding: counts add, times
    /// widen, the evidence keeps the most recent events, the most severe reading and its
    /// summary win (the earlier on a tie). The id stays: the alert service deduplicates by it.
    pub fn absorb(&mut self, later: &Finding) {
        debug_assert_eq!(self.key, later.key);
        self.first_seen_us = self.first_seen_us.min(later.first_seen_us);
        if later.last_seen_us >= self.last_seen_us {
            self.attributes.clone_from(&later.attributes);
        }
        self.last_seen_us = self.last_seen_us.max(later.last_seen_us);
        self.count = self.count.saturating_add(later.count);
        if later.severity > self.severity {
            self.severity = later.severity;
            self.summary.clone_from(&later.summary);
        }
        for id in &later.event_ids {
            if !self.event_ids.contains(id) {
                self.event_ids.push(*id);
            }
        }
        let excess = self.event_ids.len().saturating_sub(MAX_EVIDENCE_EVENTS);
        self.event_ids.drain(..excess);
    }

    /// The finding as the alert service receives it.
    pub fn detection(&self) -> Detection {
        let at = |us: i64| {
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        };
        Detection {
            id: self.id,
            source: Source::Correlation,
            rule: self.key.detector.as_str().to_owned(),
            severity: self.severity,
            identity: self.key.identity.clone(),
            method: Some(self.key.method),
            fingerprint: Some(self.key.fingerprint.clone()),
            destination: self.key.destination.clone(),
            summary: self.summary.clone(),
            event_ids: self.event_ids.clone(),
            first_seen: at(self.first_seen_us),
            last_seen: at(self.last_seen_us),
            count: self.count,
            attributes: self.attributes.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> FindingKey {
        FindingKey {
            identity: "spiffe://td/web".into(),
            detector: Detector::NewFingerprint,
            method: Method::Ja4,
            fingerprint: "t13d1516h2_8daaf6152771_e5627efa2ab1".into(),
            destination: None,
        }
    }

    #[test]
    fn ids_are_v7_stable_and_distinct() {
        let k = key();
        let id = k.id(1_700_000_000_000_000);
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(id, k.id(1_700_000_000_000_000));
        let mut other = k.clone();
        other.destination = Some("10.0.0.1:443".into());
        assert_ne!(id, other.id(1_700_000_000_000_000));
        assert!(id < k.id(1_700_000_001_000_000));
    }

    #[test]
    fn absorb_counts_widens_and_bounds_the_evidence() {
        let mut f = Finding::new(
            key(),
            Severity::Low,
            "low".into(),
            Uuid::from_u128(1),
            100,
            BTreeMap::new(),
        );
        let first_id = f.id;
        for i in 2..40u128 {
            let later = Finding::new(
                key(),
                if i == 5 {
                    Severity::High
                } else {
                    Severity::Low
                },
                format!("s{i}"),
                Uuid::from_u128(i),
                100 + i as i64,
                BTreeMap::new(),
            );
            f.absorb(&later);
        }
        assert_eq!(f.id, first_id);
        assert_eq!(f.count, 39);
        assert_eq!((f.first_seen_us, f.last_seen_us), (100, 139));
        assert_eq!((f.severity, f.summary.as_str()), (Severity::High, "s5"));
        assert_eq!(f.event_ids.len(), MAX_EVIDENCE_EVENTS);
        assert_eq!(f.event_ids.last(), Some(&Uuid::from_u128(39)));
        let d = f.detection();
        assert_eq!(
            (d.rule.as_str(), d.count, d.id),
            ("new-fingerprint", 39, first_id)
        );
    }
}
