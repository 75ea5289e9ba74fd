//! The process's counters, in [`crate::state::AppState`]: a handful of atomics rendered by hand
//! in the Prometheus text format. The set is small and fixed, and this keeps a metrics framework
//! out of the dependency tree. (Below the services: `ops` serves them with each service's own
//! lines, `Service::metrics`.)

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::StatusCode;

/// Upper bounds (seconds) of the request-duration histogram buckets.
const BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Process-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Responses by status class: 1xx..5xx at index 1..5.
    pub http_responses: [AtomicU64; 6],
    pub http_duration_buckets: [AtomicU64; BUCKETS.len()],
    pub http_duration_count: AtomicU64,
    pub http_duration_sum_us: AtomicU64,
    /// Handlers that panicked (answered 500 by `gateway::layers`).
    pub http_panics: std::sync::Arc<AtomicU64>,
    /// Logins refused by the back-off before any password check.
    pub login_throttled: AtomicU64,
    /// Logins with a wrong password, unknown user or disabled account.
    pub login_failures: AtomicU64,
    pub ingest_batches: AtomicU64,
    pub ingest_stored: AtomicU64,
    pub ingest_duplicates: AtomicU64,
    pub ingest_rejected: AtomicU64,
    pub bus_published: AtomicU64,
    pub bus_failures: AtomicU64,
    pub bus_received: AtomicU64,
    /// What the process's live listeners skipped: lag, payloads of the wrong shape.
    pub bus_live: std::sync::Arc<crate::bus::listen::LiveCounters>,
    pub retention_events_deleted: AtomicU64,
    /// The agents' QUIC uplink (`services::ja4::uplink`).
    pub uplink: UplinkMetrics,
    /// Workload identity resolution on ingest (`services::identity`).
    pub identity: IdentityMetrics,
    /// The HTTP listeners' connections (`crate::server`), shared with the serving loop.
    pub http_connections: std::sync::Arc<crate::server::ConnMetrics>,
}

/// Counters of identity resolution (events count once, when newly stored).
#[derive(Debug, Default)]
pub struct IdentityMetrics {
    /// Events given a SPIFFE ID by a registration entry.
    pub resolved: AtomicU64,
    /// Events no entry matched.
    pub unmatched: AtomicU64,
    /// Resolved events whose best match tied with an entry naming another SPIFFE ID.
    pub conflicts: AtomicU64,
    /// Reloads of the registration entries (after changes, on the bus, periodically).
    pub refreshes: AtomicU64,
    pub refresh_failures: AtomicU64,
}

/// Counters of the QUIC uplink. Batches also count in the `ingest_*` totals.
#[derive(Debug, Default)]
pub struct UplinkMetrics {
    /// Connections open now (a gauge).
    pub connections_active: AtomicU64,
    pub connections: AtomicU64,
    /// Refused before or after the handshake: over the limit, no or wrong identity, revoked.
    pub connections_refused: AtomicU64,
    pub batches: AtomicU64,
    pub events: AtomicU64,
    pub events_rejected: AtomicU64,
    pub heartbeats: AtomicU64,
    pub enrollments: AtomicU64,
    pub renewals: AtomicU64,
    /// Requests answered with a wire `Error`.
    pub errors: AtomicU64,
}

impl Metrics {
    pub(crate) fn observe(&self, status: StatusCode, elapsed: Duration) {
        let class = (status.as_u16() / 100) as usize;
        if let Some(c) = self.http_responses.get(class) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let secs = elapsed.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.http_duration_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.http_duration_count.fetch_add(1, Ordering::Relaxed);
        self.http_duration_sum_us
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// Renders the Prometheus text exposition format.
    pub fn render(&self, service: &str, store: &str, bus: &str) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# HELP hais_build_info Build and runtime facts.\n# TYPE hais_build_info gauge"
        );
        let _ = writeln!(
            o,
            "hais_build_info{{version=\"{}\",service=\"{service}\",store=\"{store}\",bus=\"{bus}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(
            o,
            "# HELP hais_http_responses_total HTTP responses by status class.\n# TYPE hais_http_responses_total counter"
        );
        for class in 1..=5 {
            let _ = writeln!(
                o,
                "hais_http_responses_total{{class=\"{class}xx\"}} {}",
                g(&self.http_responses[class])
            );
        }
        let _ = writeln!(
            o,
            "# HELP hais_http_request_duration_seconds Request latency.\n# TYPE hais_http_request_duration_seconds histogram"
        );
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                o,
                "hais_http_request_duration_seconds_bucket{{le=\"{b}\"}} {}",
                g(&self.http_duration_buckets[i])
            );
        }
        let count = g(&self.http_duration_count);
        let _ = writeln!(
            o,
            "hais_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            o,
            "hais_http_request_duration_seconds_sum {}",
            g(&self.http_duration_sum_us) as f64 / 1e6
        );
        let _ = writeln!(o, "hais_http_request_duration_seconds_count {count}");
        self.http_connections.render(&mut o);
        for (name, help, v) in [
            (
                "hais_http_panics_total",
                "Requests whose handler panicked (answered 500; see the log).",
                &*self.http_panics,
            ),
            (
                "hais_login_throttled_total",
                "Logins refused by the failed-login back-off (429), before any password check.",
                &self.login_throttled,
            ),
            (
                "hais_login_failures_total",
                "Logins with a wrong password, an unknown user or a disabled account.",
                &self.login_failures,
            ),
            (
                "hais_ingest_batches_total",
                "Ingest requests accepted.",
                &self.ingest_batches,
            ),
            (
                "hais_ingest_events_stored_total",
                "Events newly stored.",
                &self.ingest_stored,
            ),
            (
                "hais_ingest_events_duplicate_total",
                "Events ignored as replays.",
                &self.ingest_duplicates,
            ),
            (
                "hais_ingest_events_rejected_total",
                "Events refused by validation.",
                &self.ingest_rejected,
            ),
            (
                "hais_bus_published_total",
                "Messages published on the bus.",
                &self.bus_published,
            ),
            (
                "hais_bus_publish_failures_total",
                "Bus publishes that failed.",
                &self.bus_failures,
            ),
            (
                "hais_bus_received_total",
                "Messages received from the bus.",
                &self.bus_received,
            ),
            (
                "hais_bus_lagged_total",
                "Live messages skipped by listeners that fell behind.",
                &self.bus_live.lagged,
            ),
            (
                "hais_bus_undecodable_total",
                "Live messages skipped because their payload did not match their topic.",
                &self.bus_live.undecodable,
            ),
            (
                "hais_retention_events_deleted_total",
                "Events deleted by retention.",
                &self.retention_events_deleted,
            ),
            (
                "hais_uplink_connections_total",
                "Uplink connections accepted (enrollment and mutual TLS).",
                &self.uplink.connections,
            ),
            (
                "hais_uplink_connections_refused_total",
                "Uplink connections refused: over the limit, no or wrong identity, revoked.",
                &self.uplink.connections_refused,
            ),
            (
                "hais_uplink_batches_total",
                "Event batches acknowledged over the uplink.",
                &self.uplink.batches,
            ),
            (
                "hais_uplink_events_total",
                "Events received over the uplink (stored, duplicate or rejected).",
                &self.uplink.events,
            ),
            (
                "hais_uplink_events_rejected_total",
                "Uplink events rejected as invalid or from another agent.",
                &self.uplink.events_rejected,
            ),
            (
                "hais_uplink_heartbeats_total",
                "Agent heartbeats recorded.",
                &self.uplink.heartbeats,
            ),
            (
                "hais_uplink_enrollments_total",
                "Agents enrolled.",
                &self.uplink.enrollments,
            ),
            (
                "hais_uplink_renewals_total",
                "Agent SVIDs renewed.",
                &self.uplink.renewals,
            ),
            (
                "hais_uplink_errors_total",
                "Uplink requests answered with an error.",
                &self.uplink.errors,
            ),
            (
                "hais_identity_events_resolved_total",
                "Stored events given a SPIFFE ID by a registration entry.",
                &self.identity.resolved,
            ),
            (
                "hais_identity_events_unmatched_total",
                "Stored events no registration entry matched.",
                &self.identity.unmatched,
            ),
            (
                "hais_identity_conflicts_total",
                "Stored events whose most specific entries tied, naming different SPIFFE IDs.",
                &self.identity.conflicts,
            ),
            (
                "hais_identity_refreshes_total",
                "Reloads of the registration entries.",
                &self.identity.refreshes,
            ),
            (
                "hais_identity_refresh_failures_total",
                "Reloads of the registration entries that failed.",
                &self.identity.refresh_failures,
            ),
        ] {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                g(v)
            );
        }
        let _ = writeln!(
            o,
            "# HELP hais_uplink_connections_active Uplink connections open now.\n\
             # TYPE hais_uplink_connections_active gauge\nhais_uplink_connections_active {}",
            g(&self.uplink.connections_active)
        );
        o
    }
}

/// Appends counters (`name`, `help`, value) to `/metrics` text, one HELP/TYPE/value block
/// each: how services write their own counters.
pub fn write_counters(out: &mut String, counters: &[(&str, &str, &std::sync::atomic::AtomicU64)]) {
    use std::fmt::Write as _;
    for (name, help, v) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            v.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
}
