//! Detections: what a judging service (correlation, policy, threat) concluded about the traffic
//! of one identity, in the one shape the alert service turns into alerts.
//!
//! Each judging service keeps its own richer record (a correlation finding with its baseline, a
//! policy violation with the deciding rules, a threat match with the feed entry) and publishes a
//! [`Detection`] on the durable topic `detections` in the same transaction that stores it. A
//! recurrence of the same conclusion is published again with the **same id**, a higher `count`
//! and a later `last_seen`, so the alert service can deduplicate by id and, across sources, by
//! [`Detection::dedup_key`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::fingerprint::Method;

/// At most this many event ids travel as a detection's evidence (the most recent ones); the
/// source service keeps the full record.
pub const MAX_EVIDENCE_EVENTS: usize = 20;

/// Which service concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Correlation,
    Policy,
    Threat,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Correlation => "correlation",
            Source::Policy => "policy",
            Source::Threat => "threat",
        }
    }
}

/// How urgent a detection is. Ordered: `Info < Low < Medium < High < Critical`, so routing rules
/// can say "at least medium".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] = [
        Severity::Info,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// Parses the lowercase name (API parameters, configuration).
    pub fn parse(s: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// One conclusion about one identity, as the alert service receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detection {
    /// The id of the finding, violation or match in its source service (UUIDv7). The same
    /// conclusion recurring keeps its id.
    pub id: Uuid,
    pub source: Source,
    /// What concluded, within the source: a correlation detector (`new-fingerprint`), a policy's
    /// name, a threat feed's name.
    pub rule: String,
    pub severity: Severity,
    /// The SPIFFE ID when one was resolved, else the workload key (`crate::workload`).
    pub identity: String,
    pub method: Option<Method>,
    pub fingerprint: Option<String>,
    /// Where the traffic went, as `ip:port` or a server name, when the conclusion is about one
    /// destination.
    pub destination: Option<String>,
    /// One sentence a person can act on.
    pub summary: String,
    /// Events that show it, most recent last, at most [`MAX_EVIDENCE_EVENTS`].
    pub event_ids: Vec<Uuid>,
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
    /// How many times it was observed so far (events, or evaluations for policy).
    pub count: u64,
    /// Context for routing and labels: `host`, `namespace`, `workload`, … (small, flat).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

impl Detection {
    /// What makes two detections "the same alert": source, rule, identity, fingerprint and
    /// destination. Separated by a byte no field may contain.
    pub fn dedup_key(&self) -> String {
        let method = self.method.map(Method::as_str).unwrap_or_default();
        [
            self.source.as_str(),
            &self.rule,
            &self.identity,
            method,
            self.fingerprint.as_deref().unwrap_or_default(),
            self.destination.as_deref().unwrap_or_default(),
        ]
        .join("\u{1f}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detection() -> Detection {
        Detection {
            id: Uuid::now_v7(),
            source: Source::Correlation,
            rule: "new-fingerprint".into(),
            severity: Severity::Medium,
            identity: "spiffe://example.org/ns/a/sa/b".into(),
            method: Some(Method::Ja4),
            fingerprint: Some("t13d1516h2_8daaf6152771_b186095e22b6".into()),
            destination: None,
            summary: "presents a JA4 outside its baseline".into(),
            event_ids: vec![Uuid::now_v7()],
            first_seen: OffsetDateTime::UNIX_EPOCH,
            last_seen: OffsetDateTime::UNIX_EPOCH,
            count: 1,
            attributes: BTreeMap::new(),
        }
    }

    #[test]
    fn severity_orders_and_parses() {
        assert!(Severity::Low < Severity::High);
        for s in Severity::ALL {
            assert_eq!(Severity::parse(s.as_str()), Some(s));
        }
        assert_eq!(Severity::parse("urgent"), None);
    }

    #[test]
    fn json_shape_is_stable() {
        let d = detection();
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["source"], "correlation");
        assert_eq!(v["severity"], "medium");
        assert_eq!(v["method"], "ja4");
        assert_eq!(v["first_seen"], "1970-01-01T00:00:00Z");
        assert!(v.get("attributes").is_none());
        let back: Detection = serde_json::from_value(v).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn dedup_key_ignores_counts_but_not_the_destination() {
        let a = detection();
        let mut b = a.clone();
        b.id = Uuid::now_v7();
        b.count = 7;
        assert_eq!(a.dedup_key(), b.dedup_key());
        b.destination = Some("10.0.0.1:443".into());
        assert_ne!(a.dedup_key(), b.dedup_key());
    }
}
