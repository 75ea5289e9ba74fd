//! The `policy` service — a **placeholder**. It has a status endpoint (`GET /api/policy/status`)
//! and a live bus subscription that counts what it sees; its real work is not built yet.

/// Shown by the status endpoint, so nobody mistakes the placeholder for the real thing.
pub const DESCRIPTION: &str = "Policy: zero-trust policy as code evaluated on the event stream. Placeholder: status endpoint and bus listener only.";
