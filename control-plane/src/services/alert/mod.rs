//! The `alert` service — a **placeholder**. It has the status endpoint every service gets (`GET /api/alert/status`)
//! and a live bus subscription that counts what it sees; its real work is not built yet.

/// The service, as [`super::all`] lists it.
pub const ALERT: super::Placeholder = super::Placeholder {
    name: "alert",
    seed_port: 3006,
    description: "Alert: alert lifecycle, dedup and notification channels. Placeholder: status endpoint and bus listener only.",
};
