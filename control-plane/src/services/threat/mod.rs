//! The `threat` service — a **placeholder**. It has the status endpoint every service gets (`GET /api/threat/status`),
//! a live bus subscription and a durable consumer that count what they see; its real work is not built yet.

/// The service, as [`super::all`] lists it.
pub const THREAT: super::Placeholder = super::Placeholder {
    name: "threat",
    seed_port: 3007,
    description: "Threat intelligence: known-fingerprint and IP reputation feeds, geolocation, enrichment. Placeholder: status endpoint, bus listener, and a durable consumer of fingerprint events that counts them.",
};
