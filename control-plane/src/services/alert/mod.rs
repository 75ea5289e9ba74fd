//! The `alert` service — a **placeholder**. It has the status endpoint every service gets (`GET /api/alert/status`),
//! a live bus subscription and a durable consumer that count what they see; its real work is not built yet.

/// The service, as [`super::all`] lists it.
pub const ALERT: super::Placeholder = super::Placeholder {
    name: "alert",
    seed_port: 3006,
    description: "Alert: alert lifecycle, dedup and notification channels. Placeholder: status endpoint, bus listener, and a durable consumer of fingerprint events that counts them.",
};
