//! The `policy` service — a **placeholder**. It has the status endpoint every service gets (`GET /api/policy/status`),
//! a live bus subscription and a durable consumer that count what they see; its real work is not built yet.

/// The service, as [`super::all`] lists it.
pub const POLICY: super::Placeholder = super::Placeholder {
    name: "policy",
    seed_port: 3005,
    description: "Policy: zero-trust policy as code evaluated on the event stream. Placeholder: status endpoint, bus listener, and a durable consumer of fingerprint events that counts them.",
};
