//! The `spire` service — a **placeholder**. It has a status endpoint (`GET /api/spire/status`)
//! and a live bus subscription that counts what it sees; its real work is not built yet.

/// Shown by the status endpoint, so nobody mistakes the placeholder for the real thing.
pub const DESCRIPTION: &str = "SPIRE / trust: built-in SPIFFE CA or external SPIRE, agent enrollment, SVID rotation. Placeholder: status endpoint and bus listener only.";
