//! The `correlation` service — a **placeholder**. It has the status endpoint every service gets
//! (`GET /api/correlation/status`), a live bus subscription that counts what it sees, and a
//! durable consumer group of `fingerprint.events` that counts events; its real work is not
//! built yet.

/// The service, as [`super::all`] lists it.
pub const CORRELATION: super::Placeholder = super::Placeholder {
    name: "correlation",
    seed_port: 3003,
    description: "Correlation: per-identity baselines and anomaly detection. Placeholder: \
                  consumes fingerprint events durably and counts them; no analysis yet.",
};
