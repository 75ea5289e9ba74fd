//! The durable log's vocabulary: typed topics, partitions, and the rows publishers append.
//!
//! A durable topic is a type ([`DurableTopic`]): its name, the type of its items, and the key
//! that partitions them. Items of one key always land in the same partition, and a partition is
//! handled by one member of a consumer group at a time, in log order, so per-identity state
//! needs no locks. Publishing turns items into [`OutboxRow`]s (one per partition touched, items
//! encoded together by the topic, [`DurableTopic::encode`]) that the store appends in the
//! publisher's own transaction ([`crate::store::bus`]).

use std::borrow::Cow;
use std::collections::BTreeMap;

use hais_shared::detection::Detection;
use hais_shared::event::FingerprintEvent;
use hais_shared::wire;
use prost::Message as _;
use serde::Serialize;

/// Partitions per topic. Fixed: a partition's rows, cursors and leases are keyed by its number,
/// so changing it needs a migration. 16 bounds a group at 16 useful members.
pub const PARTITIONS: i64 = 16;

/// A topic whose items are kept until every consumer group has committed their effects.
pub trait DurableTopic: Send + Sync + 'static {
    /// The topic's name in the log (`bus_log.topic`).
    const NAME: &'static str;
    /// What one item is (serialized as JSON only to show a dead letter).
    type Item: Serialize + Send + Sync + 'static;
    /// The key whose items must be handled in order by one consumer (an identity).
    fn key(item: &Self::Item) -> Cow<'_, str>;
    /// The payload of one row holding `items`.
    fn encode(items: &[&Self::Item]) -> Vec<u8>;
    /// The items of one row's payload.
    fn decode(payload: &[u8]) -> Result<Vec<Self::Item>, DecodeError>;
}

/// Why a stored payload could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("invalid item: {0}")]
    Item(#[from] wire::WireError),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// Fingerprint events newly stored by ingest (replays never appear), partitioned by the
/// workload they belong to.
#[derive(Debug)]
pub struct FingerprintEvents;

impl DurableTopic for FingerprintEvents {
    const NAME: &'static str = "fingerprint.events";
    type Item = FingerprintEvent;
    fn key(e: &FingerprintEvent) -> Cow<'_, str> {
        workload_key(e)
    }

    /// Protobuf: the agents' wire message for each event ([`wire::Event`]) plus what only the
    /// control plane adds (the selectors of the entry that named the workload, the workload
    /// key). A third of the
    /// bytes of JSON, and decoded without parsing text (UUIDs, timestamps, addresses).
    fn encode(items: &[&FingerprintEvent]) -> Vec<u8> {
        StoredEvents {
            events: items
                .iter()
                .map(|e| StoredEvent {
                    event: Some(wire::Event::from(*e)),
                    selectors: e.workload.selectors.clone(),
                    key: e.workload.key.clone(),
                })
                .collect(),
        }
        .encode_to_vec()
    }

    /// Rows written before the protobuf payloads (migration `0007_bus_order`) hold a JSON array:
    /// they start with `[`, which no protobuf payload of this message does (its first byte is
    /// field 1's tag, `0x0a`).
    fn decode(payload: &[u8]) -> Result<Vec<FingerprintEvent>, DecodeError> {
        if payload.first() == Some(&b'[') {
            return Ok(serde_json::from_slice(payload)?);
        }
        StoredEvents::decode(payload)?
            .events
            .into_iter()
            .map(|s| {
                let mut e = FingerprintEvent::try_from(s.event.unwrap_or_default())?;
                e.workload.selectors = s.selectors;
                e.workload.key = s.key;
                Ok(e)
            })
            .collect()
    }
}

/// What the judging services (correlation, policy, threat) concluded, for the alert service;
/// partitioned by identity so one consumer sees an identity's detections in order. JSON payloads:
/// detections are few next to events, and readable as they are stored.
#[derive(Debug)]
pub struct Detections;

impl DurableTopic for Detections {
    const NAME: &'static str = "detections";
    type Item = Detection;
    fn key(d: &Detection) -> Cow<'_, str> {
        Cow::Borrowed(&d.identity)
    }

    fn encode(items: &[&Detection]) -> Vec<u8> {
        serde_json::to_vec(items).unwrap_or_default()
    }

    fn decode(payload: &[u8]) -> Result<Vec<Detection>, DecodeError> {
        Ok(serde_json::from_slice(payload)?)
    }
}

/// A `fingerprint.events` row's payload.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredEvents {
    #[prost(message, repeated, tag = "1")]
    events: Vec<StoredEvent>,
}

/// One stored event: the wire message and what the control plane added.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredEvent {
    #[prost(message, optional, tag = "1")]
    event: Option<wire::Event>,
    #[prost(string, repeated, tag = "2")]
    selectors: Vec<String>,
    /// The workload key set on ingest (`hais_shared::workload`).
    #[prost(string, optional, tag = "3")]
    key: Option<String>,
}

/// The key whose events one consumer handles in order: the identity correlation baselines are
/// kept for ([`hais_correlation::identity_of`]: the SPIFFE ID when one was resolved, else the
/// workload key, else the host and agent), so one consumer sees all of an identity's events.
pub fn workload_key(e: &FingerprintEvent) -> Cow<'_, str> {
    hais_correlation::identity_of(e)
}

/// The partition of a key: FNV-1a, which is stable across processes, versions and platforms
/// (the std hasher is seeded per process).
pub fn partition_of(key: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % PARTITIONS as u64) as i64
}

/// One row to append: the items of one partition from one publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub topic: &'static str,
    pub part: i64,
    pub items: i64,
    pub payload: Vec<u8>,
}

/// Groups `items` by partition and encodes each group as one row.
pub fn outbox<'a, T: DurableTopic>(items: impl IntoIterator<Item = &'a T::Item>) -> Vec<OutboxRow> {
    let mut parts: BTreeMap<i64, Vec<&T::Item>> = BTreeMap::new();
    for item in items {
        parts
            .entry(partition_of(&T::key(item)))
            .or_default()
            .push(item);
    }
    parts
        .into_iter()
        .map(|(part, items)| OutboxRow {
            topic: T::NAME,
            part,
            items: items.len() as i64,
            payload: T::encode(&items),
        })
        .collect()
}

/// The items of one stored row.
pub fn decode<T: DurableTopic>(payload: &[u8]) -> Result<Vec<T::Item>, DecodeError> {
    T::decode(payload)
}

/// A stored payload of a known topic as JSON (to show a dead letter); `None` when the topic is
/// unknown or the payload does not decode.
pub fn payload_json(topic: &str, payload: &[u8]) -> Option<serde_json::Value> {
    fn json<T: DurableTopic>(payload: &[u8]) -> Option<serde_json::Value> {
        serde_json::to_value(decode::<T>(payload).ok()?).ok()
    }
    match topic {
        FingerprintEvents::NAME => json::<FingerprintEvents>(payload),
        Detections::NAME => json::<Detections>(payload),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(host: &str, exe: Option<&str>, spiffe: Option<&str>) -> FingerprintEvent {
        let mut e: FingerprintEvent = serde_json::from_value(serde_json::json!({
            "id": uuid::Uuid::now_v7(),
            "timestamp": "2026-12-07T10:00:00Z",
            "agent_id": "a1",
            "host": host,
            "flow": {"src_ip": "10.0.0.1", "src_port": 40000, "dst_ip": "10.0.0.2",
                     "dst_port": 443, "transport": "tcp"},
            "fingerprints": [{"method": "ja4", "value": "t13d1516h2_8daaf6152771_b186095e22b6"}],
        }))
        .unwrap();
        e.workload.exe = exe.map(Into::into);
        e.workload.spiffe_id = spiffe.map(Into::into);
        e
    }

    #[test]
    fn partitions_are_stable_and_spread() {
        // Fixed values: a change of hash would reorder every deployed log.
        assert_eq!(partition_of(""), (0xcbf2_9ce4_8422_2325u64 % 16) as i64);
        let used: std::collections::BTreeSet<i64> = (0..200)
            .map(|i| partition_of(&format!("spiffe://td/w{i}")))
            .collect();
        assert_eq!(used.len(), PARTITIONS as usize);
        assert!(used.iter().all(|p| (0..PARTITIONS).contains(p)));
    }

    #[test]
    fn a_resolved_identity_outranks_the_facts() {
        let a = event("h1", Some("/usr/bin/curl"), Some("spiffe://td/web"));
        assert_eq!(workload_key(&a), "spiffe://td/web");
        let b = event("h1", Some("/usr/bin/curl"), None);
        assert_eq!(workload_key(&b), "host:h1:curl:");
        let mut k = b.clone();
        k.workload.key = Some("k8s:shop:deployment/web".into());
        assert_eq!(workload_key(&k), "k8s:shop:deployment/web");
        let c = event("h1", None, None);
        assert_eq!(workload_key(&c), "agent:h1:a1");
    }

    #[test]
    fn outbox_groups_by_partition_and_round_trips() {
        let events: Vec<_> = (0..50)
            .map(|i| event(&format!("h{i}"), Some("/bin/x"), None))
            .collect();
        let rows = outbox::<FingerprintEvents>(&events);
        assert_eq!(rows.iter().map(|r| r.items).sum::<i64>(), 50);
        let mut back = Vec::new();
        for r in &rows {
            let items = decode::<FingerprintEvents>(&r.payload).unwrap();
            assert_eq!(items.len() as i64, r.items);
            assert!(
                items
                    .iter()
                    .all(|e| partition_of(&workload_key(e)) == r.part)
            );
            back.extend(items);
        }
        back.sort_by_key(|e| e.id);
        let mut want = events.clone();
        want.sort_by_key(|e| e.id);
        assert_eq!(back, want);
    }

    #[test]
    fn payloads_keep_every_field_and_old_json_rows_still_decode() {
        let mut e = event("h1", Some("/usr/bin/curl"), Some("spiffe://td/web"));
        e.server_name = Some("api.example.com".into());
        e.workload.selectors = vec!["unix:uid:0".into(), "unix:user:root".into()];
        e.workload.key = Some("host:h1:curl:".into());
        e.workload.container_labels = vec![("app".into(), "web".into())].into_iter().collect();
        let bin = FingerprintEvents::encode(&[&e]);
        assert_eq!(bin.first(), Some(&0x0a));
        assert_eq!(decode::<FingerprintEvents>(&bin).unwrap(), vec![e.clone()]);
        let json = serde_json::to_vec(&[&e]).unwrap();
        assert!(bin.len() < json.len());
        assert_eq!(decode::<FingerprintEvents>(&json).unwrap(), vec![e.clone()]);
        assert!(decode::<FingerprintEvents>(b"\xff\x00garbage").is_err());
        assert_eq!(
            payload_json(FingerprintEvents::NAME, &bin).unwrap()[0]["id"],
            e.id.to_string()
        );
        assert_eq!(payload_json("unknown.topic", &bin), None);
    }

    #[test]
    fn detections_partition_by_identity_and_round_trip() {
        let d: Detection = serde_json::from_value(serde_json::json!({
            "id": uuid::Uuid::now_v7(), "source": "policy", "rule": "no-egress",
            "severity": "high", "identity": "spiffe://td/web", "method": null,
            "fingerprint": null, "destination": "10.0.0.9:443", "summary": "denied",
            "event_ids": [], "first_seen": "2026-12-07T10:00:00Z",
            "last_seen": "2026-12-07T10:00:00Z", "count": 1,
        }))
        .unwrap();
        let rows = outbox::<Detections>([&d]);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].part, partition_of("spiffe://td/web"));
        assert_eq!(decode::<Detections>(&rows[0].payload).unwrap(), vec![d]);
        assert_eq!(
            payload_json(Detections::NAME, &rows[0].payload).unwrap()[0]["rule"],
            "no-egress"
        );
        assert!(decode::<Detections>(b"not json").is_err());
    }
}
