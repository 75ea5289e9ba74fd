//! The `correlation` service — a **placeholder**. It has a status endpoint (`GET /api/correlation/status`)
//! and a live bus subscription that counts what it sees; its real work is not built yet.

/// Shown by the status endpoint, so nobody mistakes the placeholder for the real thing.
pub const DESCRIPTION: &str = "Correlation: per-identity baselines and anomaly detection. Placeholder: consumes the fingerprint-event work queue and counts events; no analysis yet.";
