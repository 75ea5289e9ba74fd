//! The live topics, each a type: its name on the bus and the type of its payload, in this one
//! file. Publishing ([`super::publish`], `AppState::publish`) and reading
//! ([`super::BusMessage::decode`], [`super::listen::Received::payload`]) both go through a
//! topic type, so a publisher cannot send a payload under the wrong name and a consumer cannot
//! read one with the wrong shape (nor re-declare it and drift).
//!
//! **Wire compatibility.** Processes of different versions share Redis pub/sub during a rolling
//! upgrade, so a payload's JSON is a contract: field names stay, a new field is optional
//! (`#[serde(default)]`, unknown fields are ignored by older readers), and a closed set (an enum)
//! gains a value only when every reader knows it. A message a reader cannot decode is skipped,
//! logged and counted (`hais_bus_undecodable_total`), never fatal. The unit tests below pin each
//! payload to the JSON the topic carried before it was typed.
//!
//! Durable topics (kept in the database until handled) are declared in [`super::log`]; a topic
//! may be both, as `fingerprint.events` is ([`FingerprintEvents`]: its live message is the
//! notification of what ingest just appended).

use hais_shared::event::FingerprintEvent;
use hais_shared::fingerprint::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use super::log::FingerprintEvents;
use crate::auth::Role;
use crate::store::RetentionOutcome;

/// A topic of the live bus: its name (the Redis channel is `<prefix>:bus:<NAME>`) and what its
/// messages carry. Implemented by one zero-sized type per topic, below.
pub trait LiveTopic: Send + Sync + 'static {
    /// The topic's name on the bus (`BusMessage::topic`).
    const NAME: &'static str;
    /// What a message of the topic carries, as JSON.
    type Payload: Serialize + DeserializeOwned + Send + Sync + 'static;
}

/// A value that may be published as `T`'s payload: the payload type itself, or a view that
/// serializes to the same JSON without owning its data (so that publishing a large batch does
/// not copy it; see [`FingerprintBatchRef`]).
pub trait Encodes<T: LiveTopic>: Serialize {}

impl<T: LiveTopic> Encodes<T> for T::Payload {}

/// Declares a topic: its type, name and payload.
macro_rules! live_topic {
    ($(#[$doc:meta])* $topic:ident = $name:literal: $payload:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $topic;

        impl LiveTopic for $topic {
            const NAME: &'static str = $name;
            type Payload = $payload;
        }
    };
}

// ------------------------------------------------------------------------- fingerprint.events

/// Newly stored fingerprint events, live (every subscriber, best effort): for dashboards, caches
/// and waking durable consumers. Work that must not be lost consumes the durable topic of the
/// same name instead (`bus::durable::Consumer<FingerprintEvents>`).
impl LiveTopic for FingerprintEvents {
    const NAME: &'static str = <Self as super::log::DurableTopic>::NAME;
    type Payload = FingerprintBatch;
}

/// Payload of `fingerprint.events`: one ingest batch's newly stored events (replays are never
/// published).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FingerprintBatch {
    pub events: Vec<FingerprintEvent>,
}

/// [`FingerprintBatch`] borrowing its events: how ingest publishes them, serialized straight from
/// the stored events (a batch is large; cloning it to publish would cost an allocation per field).
#[derive(Debug, Serialize)]
pub struct FingerprintBatchRef<'a> {
    pub events: Vec<&'a FingerprintEvent>,
}

impl Encodes<FingerprintEvents> for FingerprintBatchRef<'_> {}

// ------------------------------------------------------------------------------ the others

live_topic!(
    /// A label was attached to a fingerprint or removed from it (`/api/ja4/fingerprints/…/labels`).
    FingerprintLabeled = "fingerprint.labeled": LabelChange
);

/// Payload of `fingerprint.labeled`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelChange {
    pub method: Method,
    pub value: String,
    pub label: String,
    /// The user (token subject) who changed it.
    pub by: String,
    /// True when the label was removed; absent from the JSON when it was added (as published
    /// before this field was typed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
}

live_topic!(
    /// A service started in some process: lets split deployments see each other (every
    /// service's status lists the origins it heard).
    ServiceStarted = "service.started": ServiceStart
);

/// Payload of `service.started`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStart {
    pub service: String,
    /// The process (one UUIDv7 per start).
    pub instance: uuid::Uuid,
}

live_topic!(
    /// A user was created (`change` is always `created`, `role` always set).
    UserCreated = "user.created": UserEvent
);

live_topic!(
    /// A user was disabled, enabled, given a role, changed its password, or was deleted. Account
    /// changes are on the bus rather than in an audit log API.
    UserChanged = "user.changed": UserEvent
);

/// Payload of `user.created` and `user.changed`: the two topics share it, so a consumer of both
/// reads one shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEvent {
    pub username: String,
    /// The new role (creation, role change); `null` otherwise.
    pub role: Option<Role>,
    pub change: UserChangeKind,
    /// The admin (token subject) who made the change, or the user for its own password.
    pub by: String,
}

/// What happened to a user. A closed set: a new kind needs every reader to know it first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserChangeKind {
    Created,
    Disabled,
    Enabled,
    Role,
    Password,
    Deleted,
}

live_topic!(
    /// A retention pass ran (periodic or `POST /api/ja4/retention`): what it deleted.
    RetentionRan = "retention.ran": RetentionOutcome
);

live_topic!(
    /// An agent enrolled with a join token and got its first SVID.
    AgentEnrolled = "agent.enrolled": AgentEnrollment
);

/// Payload of `agent.enrolled`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentEnrollment {
    pub agent_id: String,
    pub spiffe_id: String,
    pub hostname: String,
    /// When its first SVID expires (µs since the epoch).
    pub svid_expires_us: i64,
}

live_topic!(
    /// An agent was revoked. Every process with an uplink adds it to its revocation set and
    /// closes the agent's live connections at once (the store is re-read periodically too, for a
    /// lost message).
    AgentRevoked = "agent.revoked": AgentRevocation
);

/// Payload of `agent.revoked`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRevocation {
    pub agent_id: String,
    pub spiffe_id: String,
    /// When it was revoked (µs since the epoch).
    pub revoked_us: i64,
    /// The admin (token subject) who revoked it.
    pub by: String,
}

live_topic!(
    /// An agent's fleet status changed (the spire service's sweep): online, stale, revoked.
    AgentStatusChanged = "agent.status": AgentStatusChange
);

/// Payload of `agent.status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatusChange {
    pub agent_id: String,
    pub status: AgentStatus,
    /// `null` for an agent the sweep had not seen yet (announced only when it is online).
    pub previous: Option<AgentStatus>,
}

/// An agent's status in the fleet view. Defined here, with the payload that carries it, because
/// the bus imports no service; the spire service re-exports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    /// A heartbeat arrived within `spire.stale_after`.
    Online,
    /// No heartbeat for `spire.stale_after` (or none ever).
    Stale,
    /// Revoked: its connections are refused.
    Revoked,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Online => "online",
            AgentStatus::Stale => "stale",
            AgentStatus::Revoked => "revoked",
        }
    }
}

live_topic!(
    /// Registration entries or templates changed. Every process resolving workload identities
    /// (ja4, identity) reloads them, so split processes resolve with the new entries at once rather
    /// than at their next periodic reload.
    IdentityEntries = "identity.entries": EntriesChange
);

/// Payload of `identity.entries`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntriesChange {
    pub action: EntriesAction,
    /// The entries (or templates) concerned.
    pub ids: Vec<String>,
}

/// What was done to registration entries. A closed set: a new action needs every reader to know
/// it first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntriesAction {
    Created,
    Updated,
    Deleted,
    Imported,
    /// A registration template was created (`ids`: templates).
    #[serde(rename = "template-created")]
    TemplateCreated,
    /// A registration template was deleted.
    #[serde(rename = "template-deleted")]
    TemplateDeleted,
}

live_topic!(
    /// Rows were appended to a durable topic, or a dead letter's replay was requested: wakes
    /// the durable consumers waiting for them (`bus::durable::Wakeups`) instead of their next
    /// poll. A live message under a durable topic's own name wakes them too.
    BusAppended = "bus.appended": Appended
);

/// Payload of `bus.appended`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appended {
    /// The wake-up key: a durable topic's name, or `replay:<group>`
    /// (`bus::durable::replay_topic`).
    pub topic: String,
    pub items: u64,
}

#[cfg(test)]
mod tests {
    //! Each payload serializes to the JSON its topic carried when publishers built it with
    //! `serde_json::json!` (the literals below are those `json!` calls), and reads it back: a
    //! process of the previous version on the same Redis understands this one and vice versa.

    use serde_json::json;

    use super::*;

    /// `payload` encodes to `old` (field names and values) and `old` decodes to `payload`.
    fn same_wire<T: LiveTopic>(payload: &T::Payload, old: serde_json::Value)
    where
        T::Payload: PartialEq + std::fmt::Debug,
    {
        assert_eq!(serde_json::to_value(payload).unwrap(), old, "{}", T::NAME);
        let back: T::Payload = serde_json::from_value(old).unwrap();
        assert_eq!(&back, payload, "{}", T::NAME);
    }

    #[test]
    fn names_are_the_published_ones() {
        let names = [
            FingerprintEvents::NAME,
            FingerprintLabeled::NAME,
            ServiceStarted::NAME,
            UserCreated::NAME,
            UserChanged::NAME,
            RetentionRan::NAME,
            AgentEnrolled::NAME,
            AgentRevoked::NAME,
            AgentStatusChanged::NAME,
            IdentityEntries::NAME,
            BusAppended::NAME,
        ];
        assert_eq!(
            names,
            [
                "fingerprint.events",
                "fingerprint.labeled",
                "service.started",
                "user.created",
                "user.changed",
                "retention.ran",
                "agent.enrolled",
                "agent.revoked",
                "agent.status",
                "identity.entries",
                "bus.appended",
            ]
        );
    }

    #[test]
    fn fingerprint_events() {
        let e: FingerprintEvent = serde_json::from_value(json!({
            "id": "0192f6f0-0000-7000-8000-000000000001",
            "timestamp": "2026-12-07T10:00:00Z",
            "agent_id": "a1",
            "host": "web-01",
            "flow": {"src_ip": "10.0.0.1", "src_port": 40000, "dst_ip": "10.0.0.2",
                     "dst_port": 443, "transport": "tcp"},
            "fingerprints": [{"method": "ja4", "value": "t13d1516h2_8daaf6152771_b186095e22b6"}],
        }))
        .unwrap();
        let old = json!({ "events": [&e] });
        // The borrowed view ingest publishes and the owned payload readers get agree.
        let view = FingerprintBatchRef { events: vec![&e] };
        assert_eq!(serde_json::to_value(&view).unwrap(), old);
        same_wire::<FingerprintEvents>(&FingerprintBatch { events: vec![e] }, old);
    }

    #[test]
    fn fingerprint_labeled() {
        let mut p = LabelChange {
            method: Method::Ja4,
            value: "t13d_x_y".into(),
            label: "suspicious".into(),
            by: "ana".into(),
            removed: false,
        };
        same_wire::<FingerprintLabeled>(
            &p,
            json!({"method": "ja4", "value": "t13d_x_y", "label": "suspicious", "by": "ana"}),
        );
        p.removed = true;
        same_wire::<FingerprintLabeled>(
            &p,
            json!({"method": "ja4", "value": "t13d_x_y", "label": "suspicious", "by": "ana",
                   "removed": true}),
        );
    }

    #[test]
    fn service_started() {
        let instance = uuid::Uuid::now_v7();
        same_wire::<ServiceStarted>(
            &ServiceStart {
                service: "ja4".into(),
                instance,
            },
            json!({"service": "ja4", "instance": instance}),
        );
    }

    #[test]
    fn users() {
        let created = UserEvent {
            username: "ana".into(),
            role: Some(Role::Analyst),
            change: UserChangeKind::Created,
            by: "admin".into(),
        };
        same_wire::<UserCreated>(
            &created,
            json!({"username": "ana", "role": "analyst", "change": "created", "by": "admin"}),
        );
        for (kind, text) in [
            (UserChangeKind::Disabled, "disabled"),
            (UserChangeKind::Enabled, "enabled"),
            (UserChangeKind::Role, "role"),
            (UserChangeKind::Password, "password"),
            (UserChangeKind::Deleted, "deleted"),
        ] {
            same_wire::<UserChanged>(
                &UserEvent {
                    username: "ana".into(),
                    role: None,
                    change: kind,
                    by: "admin".into(),
                },
                json!({"username": "ana", "role": null, "change": text, "by": "admin"}),
            );
        }
    }

    #[test]
    fn retention_ran() {
        same_wire::<RetentionRan>(
            &RetentionOutcome {
                events_deleted: 10,
                fingerprints_deleted: 2,
                partitions_dropped: 1,
                events_deleted_estimated: true,
            },
            json!({"events_deleted": 10, "fingerprints_deleted": 2, "partitions_dropped": 1,
                   "events_deleted_estimated": true}),
        );
    }

    #[test]
    fn agents() {
        same_wire::<AgentEnrolled>(
            &AgentEnrollment {
                agent_id: "a1".into(),
                spiffe_id: "spiffe://hais.local/hais/agent/a1".into(),
                hostname: "web-01".into(),
                svid_expires_us: 1_800_000_000_000_000,
            },
            json!({"agent_id": "a1", "spiffe_id": "spiffe://hais.local/hais/agent/a1",
                   "hostname": "web-01", "svid_expires_us": 1_800_000_000_000_000i64}),
        );
        same_wire::<AgentRevoked>(
            &AgentRevocation {
                agent_id: "a1".into(),
                spiffe_id: "spiffe://hais.local/hais/agent/a1".into(),
                revoked_us: 1_700_000_000_000_000,
                by: "admin".into(),
            },
            json!({"agent_id": "a1", "spiffe_id": "spiffe://hais.local/hais/agent/a1",
                   "revoked_us": 1_700_000_000_000_000i64, "by": "admin"}),
        );
        same_wire::<AgentStatusChanged>(
            &AgentStatusChange {
                agent_id: "a1".into(),
                status: AgentStatus::Stale,
                previous: Some(AgentStatus::Online),
            },
            json!({"agent_id": "a1", "status": "stale", "previous": "online"}),
        );
        same_wire::<AgentStatusChanged>(
            &AgentStatusChange {
                agent_id: "a1".into(),
                status: AgentStatus::Online,
                previous: None,
            },
            json!({"agent_id": "a1", "status": "online", "previous": null}),
        );
        for s in [
            AgentStatus::Online,
            AgentStatus::Stale,
            AgentStatus::Revoked,
        ] {
            assert_eq!(json!(s), s.as_str());
        }
    }

    #[test]
    fn identity_entries() {
        for (action, text) in [
            (EntriesAction::Created, "created"),
            (EntriesAction::Updated, "updated"),
            (EntriesAction::Deleted, "deleted"),
            (EntriesAction::Imported, "imported"),
        ] {
            same_wire::<IdentityEntries>(
                &EntriesChange {
                    action,
                    ids: vec!["e1".into(), "e2".into()],
                },
                json!({ "action": text, "ids": ["e1", "e2"] }),
            );
        }
    }

    #[test]
    fn bus_appended() {
        same_wire::<BusAppended>(
            &Appended {
                topic: "replay:correlation".into(),
                items: 3,
            },
            json!({"topic": "replay:correlation", "items": 3}),
        );
    }
}
