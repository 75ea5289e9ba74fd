//! The `identity` service — a **placeholder**. It has a status endpoint (`GET /api/identity/status`)
//! and a live bus subscription that counts what it sees; its real work is not built yet.

/// Shown by the status endpoint, so nobody mistakes the placeholder for the real thing.
pub const DESCRIPTION: &str = "Identity: workload SPIFFE IDs, registration entries, inventory. Placeholder: status endpoint and bus listener only.";
