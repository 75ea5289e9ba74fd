//! Configuration: defaults, then a TOML file, then `HAIS_*` environment variables, then
//! command-line flags — each layer overriding the one before.
//!
//! Every key is listed once in [`KEYS`], with its environment variable, default and meaning. The
//! same table drives the environment overrides and the `--help` text, so the two cannot drift.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::service::ServiceName;

/// Why the configuration could not be loaded. Messages name the file, key or variable at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML for HaIS: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}={value:?} is not a valid {kind}")]
    Env {
        var: &'static str,
        value: String,
        kind: &'static str,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// How a key's value is parsed from an environment variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Str,
    Int,
    /// Comma-separated in the environment, an array of strings in the file.
    List,
}

/// One documented configuration key.
#[derive(Debug, Clone, Copy)]
pub struct KeyDoc {
    /// Key in the TOML file (dotted for tables, e.g. `upstreams.ja4`).
    pub key: &'static str,
    /// Environment variable that overrides it.
    pub env: &'static str,
    pub kind: KeyKind,
    /// Default, as shown in `--help`.
    pub default: &'static str,
    pub help: &'static str,
}

/// Every configuration key. Order is the order shown in `--help`.
pub const KEYS: &[KeyDoc] = &[
    KeyDoc {
        key: "service",
        env: "HAIS_SERVICE",
        kind: KeyKind::Str,
        default: "all",
        help: "which service this process runs: all, gateway, ja4, spire, correlation, identity, policy, alert, threat",
    },
    KeyDoc {
        key: "listen",
        env: "HAIS_LISTEN",
        kind: KeyKind::Str,
        default: "0.0.0.0:<seed port>",
        help: "listen address; the seed port is 3000 for all/gateway, 3001..3007 for the services",
    },
    KeyDoc {
        key: "data_dir",
        env: "HAIS_DATA_DIR",
        kind: KeyKind::Str,
        default: "./data",
        help: "directory for the embedded SQLite database",
    },
    KeyDoc {
        key: "database_url",
        env: "HAIS_DATABASE_URL",
        kind: KeyKind::Str,
        default: "sqlite://<data_dir>/hais.db",
        help: "sqlite://... or postgres://...",
    },
    KeyDoc {
        key: "database_read_url",
        env: "HAIS_DATABASE_READ_URL",
        kind: KeyKind::Str,
        default: "(unset: everything on database_url)",
        help: "postgres://... of a streaming read replica for searches and roll-up reads (used once it has replayed past the read's own writes)",
    },
    KeyDoc {
        key: "database_schema",
        env: "HAIS_DATABASE_SCHEMA",
        kind: KeyKind::Str,
        default: "public",
        help: "PostgreSQL schema holding HaIS tables (created if missing)",
    },
    KeyDoc {
        key: "database_max_connections",
        env: "HAIS_DATABASE_MAX_CONNECTIONS",
        kind: KeyKind::Int,
        default: "8",
        help: "connection pool size",
    },
    KeyDoc {
        key: "redis_url",
        env: "HAIS_REDIS_URL",
        kind: KeyKind::Str,
        default: "(unset: in-process bus)",
        help: "redis://... to share the event bus between processes",
    },
    KeyDoc {
        key: "redis_prefix",
        env: "HAIS_REDIS_PREFIX",
        kind: KeyKind::Str,
        default: "hais",
        help: "prefix of every Redis channel and stream name",
    },
    KeyDoc {
        key: "redis_stream_maxlen",
        env: "HAIS_REDIS_STREAM_MAXLEN",
        kind: KeyKind::Int,
        default: "10000",
        help: "ignored (kept so older files load): durable bus messages live in the database, Redis only carries live messages",
    },
    KeyDoc {
        key: "log_format",
        env: "HAIS_LOG_FORMAT",
        kind: KeyKind::Str,
        default: "text",
        help: "text or json",
    },
    KeyDoc {
        key: "log_filter",
        env: "HAIS_LOG_FILTER",
        kind: KeyKind::Str,
        default: "info",
        help: "tracing filter, e.g. info,hais_control_plane=debug",
    },
    KeyDoc {
        key: "admin_password",
        env: "HAIS_ADMIN_PASSWORD",
        kind: KeyKind::Str,
        default: "(unset: generated and printed once)",
        help: "password of the `admin` user created on first start",
    },
    KeyDoc {
        key: "jwt_secret",
        env: "HAIS_JWT_SECRET",
        kind: KeyKind::Str,
        default: "(unset: generated once, kept in the database)",
        help: "HS256 signing secret (>= 32 bytes); processes sharing a database share the stored one",
    },
    KeyDoc {
        key: "access_token_ttl_secs",
        env: "HAIS_ACCESS_TOKEN_TTL_SECS",
        kind: KeyKind::Int,
        default: "900",
        help: "lifetime of user access tokens",
    },
    KeyDoc {
        key: "refresh_token_ttl_secs",
        env: "HAIS_REFRESH_TOKEN_TTL_SECS",
        kind: KeyKind::Int,
        default: "604800",
        help: "lifetime of refresh tokens (single use, rotated on refresh)",
    },
    KeyDoc {
        key: "service_token_ttl_secs",
        env: "HAIS_SERVICE_TOKEN_TTL_SECS",
        kind: KeyKind::Int,
        default: "3600",
        help: "lifetime of service tokens that services mint for each other",
    },
    KeyDoc {
        key: "retention_days",
        env: "HAIS_RETENTION_DAYS",
        kind: KeyKind::Int,
        default: "30",
        help: "events (and roll-ups not seen since) older than this are deleted; 0 keeps everything",
    },
    KeyDoc {
        key: "findings_retention_days",
        env: "HAIS_FINDINGS_RETENTION_DAYS",
        kind: KeyKind::Int,
        default: "90",
        help: "correlation findings and threat matches not seen for this long are deleted; 0 keeps them",
    },
    KeyDoc {
        key: "retention_interval_secs",
        env: "HAIS_RETENTION_INTERVAL_SECS",
        kind: KeyKind::Int,
        default: "3600",
        help: "how often retention runs",
    },
    KeyDoc {
        key: "max_body_bytes",
        env: "HAIS_MAX_BODY_BYTES",
        kind: KeyKind::Int,
        default: "8388608",
        help: "largest accepted request body (413 beyond)",
    },
    KeyDoc {
        key: "max_batch_events",
        env: "HAIS_MAX_BATCH_EVENTS",
        kind: KeyKind::Int,
        default: "5000",
        help: "most events in one ingest request",
    },
    KeyDoc {
        key: "shutdown_grace_secs",
        env: "HAIS_SHUTDOWN_GRACE_SECS",
        kind: KeyKind::Int,
        default: "30",
        help: "how long shutdown waits for in-flight requests and writes",
    },
    KeyDoc {
        key: "spire.trust_domain",
        env: "HAIS_SPIRE_TRUST_DOMAIN",
        kind: KeyKind::Str,
        default: "hais.local",
        help: "SPIFFE trust domain of the built-in CA (fixed once the CA exists in the database)",
    },
    KeyDoc {
        key: "spire.svid_ttl",
        env: "HAIS_SPIRE_SVID_TTL",
        kind: KeyKind::Str,
        default: "1h",
        help: "lifetime of the X.509-SVIDs the CA issues (agents renew at half-life); e.g. 30m, 1h, 3600",
    },
    KeyDoc {
        key: "spire.expired_renewal_grace",
        env: "HAIS_SPIRE_EXPIRED_RENEWAL_GRACE",
        kind: KeyKind::Str,
        default: "7d",
        help: "an agent whose SVID expired at most this long ago (a control-plane outage) may renew it by proving it holds its key, if it is not revoked and the SVID is its latest; 0 disables",
    },
    KeyDoc {
        key: "spire.token_ttl",
        env: "HAIS_SPIRE_TOKEN_TTL",
        kind: KeyKind::Str,
        default: "1h",
        help: "default lifetime of join tokens (at most 30d)",
    },
    KeyDoc {
        key: "spire.stale_after",
        env: "HAIS_SPIRE_STALE_AFTER",
        kind: KeyKind::Str,
        default: "90s",
        help: "an agent without a heartbeat for this long is shown as stale (3 heartbeat intervals)",
    },
    KeyDoc {
        key: "spire.server_dns_names",
        env: "HAIS_SPIRE_SERVER_DNS_NAMES",
        kind: KeyKind::List,
        default: "(none)",
        help: "extra DNS names in the uplink's server certificate, besides localhost",
    },
    KeyDoc {
        key: "spire.external.trust_domain",
        env: "HAIS_SPIRE_EXTERNAL_TRUST_DOMAIN",
        kind: KeyKind::Str,
        default: "(none)",
        help: "trust domain of a SPIRE deployment whose agents (spiffe://<td>/hais/agent/<name>) may stream without enrolling",
    },
    KeyDoc {
        key: "spire.external.bundle_file",
        env: "HAIS_SPIRE_EXTERNAL_BUNDLE_FILE",
        kind: KeyKind::Str,
        default: "(none)",
        help: "that SPIRE's trust bundle: PEM or SPIFFE JWKS (`spire-server bundle show -format spiffe`), re-read every refresh",
    },
    KeyDoc {
        key: "spire.external.bundle_endpoint",
        env: "HAIS_SPIRE_EXTERNAL_BUNDLE_ENDPOINT",
        kind: KeyKind::Str,
        default: "(none)",
        help: "or its SPIFFE bundle endpoint, https://HOST:PORT[/path] (https_web profile)",
    },
    KeyDoc {
        key: "spire.external.bundle_endpoint_ca",
        env: "HAIS_SPIRE_EXTERNAL_BUNDLE_ENDPOINT_CA",
        kind: KeyKind::Str,
        default: "(web PKI roots)",
        help: "PEM file of roots for the bundle endpoint's TLS certificate",
    },
    KeyDoc {
        key: "spire.external.refresh",
        env: "HAIS_SPIRE_EXTERNAL_REFRESH",
        kind: KeyKind::Str,
        default: "5m",
        help: "how often the SPIRE bundle is reloaded",
    },
    KeyDoc {
        key: "spire.external.health_url",
        env: "HAIS_SPIRE_EXTERNAL_HEALTH_URL",
        kind: KeyKind::Str,
        default: "(none)",
        help: "SPIRE server health endpoint (e.g. http://spire-server:8080/ready), reported by the spire service",
    },
    KeyDoc {
        key: "ja4.uplink_bind",
        env: "HAIS_JA4_UPLINK_BIND",
        kind: KeyKind::Str,
        default: "0.0.0.0:3001",
        help: "UDP address of the agents' QUIC uplink and enrollment endpoint; `off` disables it",
    },
    KeyDoc {
        key: "ja4.uplink_max_connections",
        env: "HAIS_JA4_UPLINK_MAX_CONNECTIONS",
        kind: KeyKind::Int,
        default: "10000",
        help: "most agent connections at once (enrolled agents and handshakes in progress); more are refused",
    },
    KeyDoc {
        key: "ja4.enroll_max_connections",
        env: "HAIS_JA4_ENROLL_MAX_CONNECTIONS",
        kind: KeyKind::Int,
        default: "64",
        help: "most enrollment (hais-enroll/1) connections at once, a budget apart from ja4.uplink_max_connections so unauthenticated peers cannot lock agents out; each lives at most 30 s",
    },
    KeyDoc {
        key: "ja4.uplink_max_streams",
        env: "HAIS_JA4_UPLINK_MAX_STREAMS",
        kind: KeyKind::Int,
        default: "32",
        help: "most requests (batches) one agent connection may have in flight",
    },
    KeyDoc {
        key: "ja4.uplink_request_timeout",
        env: "HAIS_JA4_UPLINK_REQUEST_TIMEOUT",
        kind: KeyKind::Str,
        default: "30s",
        help: "how long an agent may take to send one whole request; a slower one is answered with an error (1s to 10m)",
    },
    KeyDoc {
        key: "auth.max_concurrent_hashes",
        env: "HAIS_AUTH_MAX_CONCURRENT_HASHES",
        kind: KeyKind::Int,
        default: "0 (one per CPU)",
        help: "password hashes (Argon2id, ~19 MiB each) computed at once; bounds login memory and CPU",
    },
    KeyDoc {
        key: "auth.max_queued_hashes",
        env: "HAIS_AUTH_MAX_QUEUED_HASHES",
        kind: KeyKind::Int,
        default: "64",
        help: "logins waiting for a hashing slot; more are answered 503 with Retry-After",
    },
    KeyDoc {
        key: "auth.login_free_failures",
        env: "HAIS_AUTH_LOGIN_FREE_FAILURES",
        kind: KeyKind::Int,
        default: "5",
        help: "failed logins per source address and per user name before back-off (1s, doubling) starts",
    },
    KeyDoc {
        key: "auth.login_max_backoff",
        env: "HAIS_AUTH_LOGIN_MAX_BACKOFF",
        kind: KeyKind::Str,
        default: "15m",
        help: "longest login back-off; failure counts are forgotten after this long without failures",
    },
    KeyDoc {
        key: "auth.trusted_proxies",
        env: "HAIS_AUTH_TRUSTED_PROXIES",
        kind: KeyKind::List,
        default: "(none)",
        help: "addresses or CIDRs of reverse proxies whose X-Forwarded-For names the client (for login throttling)",
    },
    KeyDoc {
        key: "policy.directory",
        env: "HAIS_POLICY_DIRECTORY",
        kind: KeyKind::Str,
        default: "(none)",
        help: "a directory of .cedar files kept as the policy set: read every 5 s, a change validated and stored as a new version (author directory:<path>); an invalid change is logged and not applied",
    },
    KeyDoc {
        key: "alert.max_backoff",
        env: "HAIS_ALERT_MAX_BACKOFF",
        kind: KeyKind::Str,
        default: "5m",
        help: "longest wait between two delivery attempts to a failing notification channel (the wait doubles from 1s; 1s to 1h)",
    },
    KeyDoc {
        key: "alert.resend_interval",
        env: "HAIS_ALERT_RESEND_INTERVAL",
        kind: KeyKind::Str,
        default: "1m",
        help: "how often active alerts are sent again to Alertmanager channels, so that they stay firing there (10s to 1h; Alertmanager's resolve_timeout must be longer)",
    },
    KeyDoc {
        key: "alert.secrets_key",
        env: "HAIS_ALERT_SECRETS_KEY",
        kind: KeyKind::Str,
        default: "(the file <data_dir>/alert-secrets.key, created on first start)",
        help: "64 hex digits: the key sealing notification channels' secrets (webhook HMAC keys, SMTP passwords) in the store; every process running the alert service must have the same",
    },
    KeyDoc {
        key: "bus.max_attempts",
        env: "HAIS_BUS_MAX_ATTEMPTS",
        kind: KeyKind::Int,
        default: "5",
        help: "deliveries of a failing bus message (with back-off) before it goes to the dead letters",
    },
    KeyDoc {
        key: "bus.lease_ttl",
        env: "HAIS_BUS_LEASE_TTL",
        kind: KeyKind::Str,
        default: "10s",
        help: "how long a consumer replica owns its partitions without renewing; a dead replica's work is taken over after this (2s to 10m)",
    },
    KeyDoc {
        key: "bus.batch_rows",
        env: "HAIS_BUS_BATCH_ROWS",
        kind: KeyKind::Int,
        default: "64",
        help: "bus log rows (each one ingest batch's events of one partition) handed to a consumer at once",
    },
    KeyDoc {
        key: "correlation.learning_period",
        env: "HAIS_CORRELATION_LEARNING_PERIOD",
        kind: KeyKind::Str,
        default: "7d",
        help: "an identity's baseline is learnt for at least this long after its first event (and learning_min_flows flows) before new fingerprints are findings",
    },
    KeyDoc {
        key: "correlation.learning_min_flows",
        env: "HAIS_CORRELATION_LEARNING_MIN_FLOWS",
        kind: KeyKind::Int,
        default: "100",
        help: "flows an identity's baseline is learnt from at least (with learning_period)",
    },
    KeyDoc {
        key: "correlation.shared_threshold",
        env: "HAIS_CORRELATION_SHARED_THRESHOLD",
        kind: KeyKind::Int,
        default: "5",
        help: "shared-fingerprint: established identities that must start presenting one fingerprint within an hour, after at most one before",
    },
    KeyDoc {
        key: "correlation.ssh_session",
        env: "HAIS_CORRELATION_SSH_SESSION",
        kind: KeyKind::Str,
        default: "off",
        help: "ssh-session detector (on/off); off by default because of US patent US10135847B2, see NOTICE",
    },
    KeyDoc {
        key: "threat.refresh_interval",
        env: "HAIS_THREAT_REFRESH_INTERVAL",
        kind: KeyKind::Str,
        default: "6h",
        help: "how often configured feeds ([[threat.feeds]] without their own interval) and the built-in FoxIO mapping are re-imported (1m to 30d)",
    },
    KeyDoc {
        key: "threat.country_db",
        env: "HAIS_THREAT_COUNTRY_DB",
        kind: KeyKind::Str,
        default: "(none)",
        help: "MMDB file giving each remote address's country (ip-location-db from scripts/fetch-geo.sh, or MaxMind/DB-IP country or city data); none: no geolocation",
    },
    KeyDoc {
        key: "threat.asn_db",
        env: "HAIS_THREAT_ASN_DB",
        kind: KeyKind::List,
        default: "(none)",
        help: "ASN files: MMDB (GeoLite2-ASN, DB-IP ASN) or ip-location-db CSV (asn-ipv4.csv, asn-ipv6.csv); searched in order",
    },
    KeyDoc {
        key: "threat.foxio_mapping",
        env: "HAIS_THREAT_FOXIO_MAPPING",
        kind: KeyKind::Str,
        default: "on",
        help: "import FoxIO's ja4plus-mapping.csv shipped in the binary as feed `foxio` (FoxIO License 1.1, see NOTICE)",
    },
    KeyDoc {
        key: "threat.feeds.<array of tables>",
        env: "(file only)",
        kind: KeyKind::Str,
        default: "(none)",
        help: "feeds to keep imported: [[threat.feeds]] name, format (foxio-csv, ja4db-json, ip-list, sslbl-ja3-csv, threatfox-json, misp-json), location (URL or path), interval, verdict, source, licence",
    },
    KeyDoc {
        key: "http.max_connections",
        env: "HAIS_HTTP_MAX_CONNECTIONS",
        kind: KeyKind::Int,
        default: "10000",
        help: "most HTTP(S) connections open at once (all listeners), lowered to fit the open-file limit; when full, the oldest idle connection is closed for a new one",
    },
    KeyDoc {
        key: "http.header_read_timeout",
        env: "HAIS_HTTP_HEADER_READ_TIMEOUT",
        kind: KeyKind::Str,
        default: "10s",
        help: "a request head (and the TLS handshake) must arrive within this; HTTP/1 also waits at most this long for the next request (1s to 10m)",
    },
    KeyDoc {
        key: "http.idle_timeout",
        env: "HAIS_HTTP_IDLE_TIMEOUT",
        kind: KeyKind::Str,
        default: "60s",
        help: "a connection without a request in flight for this long is closed (1s to 1h)",
    },
    KeyDoc {
        key: "http.request_body_timeout",
        env: "HAIS_HTTP_REQUEST_BODY_TIMEOUT",
        kind: KeyKind::Str,
        default: "60s",
        help: "a request body must arrive within this of its head; slower ones are answered 400 (1s to 1h)",
    },
    KeyDoc {
        key: "http.h2_keepalive_interval",
        env: "HAIS_HTTP_H2_KEEPALIVE_INTERVAL",
        kind: KeyKind::Str,
        default: "30s",
        help: "HTTP/2 PING interval; a peer not answering within 20s is disconnected",
    },
    KeyDoc {
        key: "http.h2_max_concurrent_streams",
        env: "HAIS_HTTP_H2_MAX_CONCURRENT_STREAMS",
        kind: KeyKind::Int,
        default: "100",
        help: "most requests in flight on one HTTP/2 connection",
    },
    KeyDoc {
        key: "tls.cert_file",
        env: "HAIS_TLS_CERT_FILE",
        kind: KeyKind::Str,
        default: "(none: plain HTTP)",
        help: "PEM certificate chain (leaf first); with tls.key_file the API is served over HTTPS (HTTP/2 and HTTP/1.1, TLS 1.2+); both reloaded when they change",
    },
    KeyDoc {
        key: "tls.key_file",
        env: "HAIS_TLS_KEY_FILE",
        kind: KeyKind::Str,
        default: "(none)",
        help: "PEM private key (PKCS#8, PKCS#1 or SEC1); refused if others may read it, a warning if its group may",
    },
    KeyDoc {
        key: "tls.redirect_http_listen",
        env: "HAIS_TLS_REDIRECT_HTTP_LISTEN",
        kind: KeyKind::Str,
        default: "(none)",
        help: "optional plain-HTTP address answering every request with a 308 to the https:// URL",
    },
    KeyDoc {
        key: "tls.reload_interval",
        env: "HAIS_TLS_RELOAD_INTERVAL",
        kind: KeyKind::Str,
        default: "5s",
        help: "how often the certificate and key files are checked for changes (a broken new pair is logged, the old one kept)",
    },
    KeyDoc {
        key: "upstreams.<service>",
        env: "HAIS_UPSTREAM_<SERVICE>",
        kind: KeyKind::Str,
        default: "http://127.0.0.1:<seed port>",
        help: "where the split-mode gateway sends /api/<service>/...",
    },
];

/// The resolved configuration of one process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub service: ServiceName,
    pub listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    /// A PostgreSQL read replica for roll-up reads (`store::postgres`).
    pub database_read_url: Option<String>,
    pub database_schema: Option<String>,
    pub database_max_connections: u32,
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    pub redis_stream_maxlen: usize,
    pub log_format: LogFormat,
    pub log_filter: String,
    pub admin_password: Option<String>,
    pub jwt_secret: Option<String>,
    pub access_token_ttl_secs: u64,
    pub refresh_token_ttl_secs: u64,
    pub service_token_ttl_secs: u64,
    pub retention_days: u32,
    /// Findings outlive the events they cite: an analyst looks back further than the raw flows
    /// are kept (`store::expiry`).
    pub findings_retention_days: u32,
    pub retention_interval_secs: u64,
    pub max_body_bytes: usize,
    pub max_batch_events: usize,
    pub shutdown_grace_secs: u64,
    pub upstreams: BTreeMap<String, String>,
    pub spire: SpireConfig,
    pub ja4: Ja4Config,
    pub auth: AuthConfig,
    pub bus: BusConfig,
    pub correlation: CorrelationConfig,
    pub policy: PolicyConfig,
    pub alert: AlertConfig,
    pub threat: ThreatConfig,
    pub http: HttpConfig,
    pub tls: TlsConfig,
}

/// `[bus]`: durable consumers (see `bus::durable`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    pub max_attempts: u32,
    pub lease_ttl: HumanDuration,
    pub batch_rows: i64,
}

impl Default for BusConfig {
    fn default() -> Self {
        let d = crate::bus::durable::ConsumerOptions::default();
        BusConfig {
            max_attempts: d.max_attempts,
            lease_ttl: HumanDuration(d.lease_ttl),
            batch_rows: d.max_rows,
        }
    }
}

impl BusConfig {
    /// The consumer tuning these keys give: leases renewed five times per TTL.
    pub fn consumer_options(&self) -> crate::bus::durable::ConsumerOptions {
        crate::bus::durable::ConsumerOptions {
            max_attempts: self.max_attempts,
            lease_ttl: self.lease_ttl.0,
            renew_every: self.lease_ttl.0 / 5,
            max_rows: self.batch_rows,
            ..Default::default()
        }
    }
}

/// `[correlation]`: how baselines learn and when the detectors speak (see
/// `hais_correlation::Config`, whose other settings keep their defaults).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorrelationConfig {
    pub learning_period: HumanDuration,
    pub learning_min_flows: u64,
    pub shared_threshold: u32,
    pub ssh_session: OnOff,
}

impl Default for CorrelationConfig {
    fn default() -> Self {
        let d = hais_correlation::Config::default();
        CorrelationConfig {
            learning_period: HumanDuration::from_secs((d.learning_period_us / 1_000_000) as u64),
            learning_min_flows: d.learning_min_flows,
            shared_threshold: d.shared_threshold,
            ssh_session: OnOff(d.ssh_session),
        }
    }
}

impl CorrelationConfig {
    /// The detectors' settings these keys give.
    pub fn detectors(&self) -> hais_correlation::Config {
        hais_correlation::Config {
            learning_period_us: i64::try_from(self.learning_period.0.as_micros())
                .unwrap_or(i64::MAX),
            learning_min_flows: self.learning_min_flows,
            shared_threshold: self.shared_threshold,
            ssh_session: self.ssh_session.0,
            ..hais_correlation::Config::default()
        }
    }
}

/// A switch: `on`/`off` (or `true`/`false`) in the environment, a string or a boolean in the
/// file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnOff(pub bool);

impl<'de> Deserialize<'de> for OnOff {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(b) => Ok(OnOff(b)),
            Raw::Text(t) => match t.trim() {
                "on" | "true" => Ok(OnOff(true)),
                "off" | "false" => Ok(OnOff(false)),
                other => Err(serde::de::Error::custom(format!(
                    "{other:?} is neither on nor off"
                ))),
            },
        }
    }
}

/// `[policy]`: where policy sets come from besides the API (see `services::policy`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// A directory of `.cedar` files, hot-reloaded as the policy set.
    pub directory: Option<PathBuf>,
}

/// `[alert]`: notification delivery (see `services::alert`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertConfig {
    pub max_backoff: HumanDuration,
    pub resend_interval: HumanDuration,
    /// Hex key sealing channel secrets (`services::alert::secrets`); `None`: the data
    /// directory's key file.
    pub secrets_key: Option<String>,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            max_backoff: HumanDuration::from_secs(300),
            resend_interval: HumanDuration::from_secs(60),
            secrets_key: None,
        }
    }
}

/// `[threat]`: feeds, their refresh, and the geolocation files (see `services::threat`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThreatConfig {
    pub refresh_interval: HumanDuration,
    pub country_db: Option<PathBuf>,
    pub asn_db: Vec<PathBuf>,
    pub foxio_mapping: OnOff,
    pub feeds: Vec<ThreatFeedConfig>,
}

impl Default for ThreatConfig {
    fn default() -> Self {
        ThreatConfig {
            refresh_interval: HumanDuration::from_secs(6 * 3600),
            country_db: None,
            asn_db: Vec::new(),
            foxio_mapping: OnOff(true),
            feeds: Vec::new(),
        }
    }
}

/// One `[[threat.feeds]]` entry: a feed the service keeps imported (created or updated at
/// start; feeds added through the API live in the store only).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThreatFeedConfig {
    pub name: String,
    pub format: String,
    pub location: String,
    #[serde(default)]
    pub interval: Option<HumanDuration>,
    #[serde(default)]
    pub verdict: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub licence: Option<String>,
}

/// `[auth]`: the cost bounds of logins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// 0: one per CPU.
    pub max_concurrent_hashes: usize,
    pub max_queued_hashes: usize,
    pub login_free_failures: u32,
    pub login_max_backoff: HumanDuration,
    /// Addresses (`192.0.2.1`) or networks (`10.0.0.0/8`).
    pub trusted_proxies: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            max_concurrent_hashes: 0,
            max_queued_hashes: 64,
            login_free_failures: 5,
            login_max_backoff: HumanDuration::from_secs(15 * 60),
            trusted_proxies: Vec::new(),
        }
    }
}

impl AuthConfig {
    /// The trusted proxies, parsed (validated by [`Config::check`]).
    pub fn proxies(&self) -> Vec<crate::auth::client_ip::Cidr> {
        self.trusted_proxies
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

/// `[spire]`: the built-in SPIFFE CA and the fleet view.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpireConfig {
    pub trust_domain: String,
    pub svid_ttl: HumanDuration,
    /// How long after its expiry an SVID may still be renewed by an agent proving it holds the
    /// key (`RecoverRequest`): a control-plane outage longer than `svid_ttl` must not strand
    /// the fleet. Zero disables it.
    pub expired_renewal_grace: Grace,
    pub token_ttl: HumanDuration,
    pub stale_after: HumanDuration,
    pub server_dns_names: Vec<String>,
    pub external: ExternalSpireConfig,
}

impl Default for SpireConfig {
    fn default() -> Self {
        SpireConfig {
            trust_domain: hais_shared::spiffe::DEFAULT_TRUST_DOMAIN.into(),
            svid_ttl: HumanDuration::from_secs(3600),
            expired_renewal_grace: Grace(Duration::from_secs(7 * 86_400)),
            token_ttl: HumanDuration::from_secs(3600),
            stale_after: HumanDuration::from_secs(90),
            server_dns_names: Vec::new(),
            external: ExternalSpireConfig::default(),
        }
    }
}

/// `[spire.external]`: a SPIRE deployment whose agents' X.509-SVIDs the uplink accepts, beside
/// the built-in CA's. Agents there take their identity from their SPIRE agent
/// (`spiffe://<trust_domain>/hais/agent/<name>`) instead of enrolling with a join token.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExternalSpireConfig {
    /// The SPIRE trust domain; setting it turns the integration on.
    pub trust_domain: Option<String>,
    /// Its trust bundle as a file (PEM, or the SPIFFE JWKS that `spire-server bundle show
    /// -format spiffe` prints), re-read every `refresh`.
    pub bundle_file: Option<PathBuf>,
    /// Or its SPIFFE bundle endpoint (`https://…`, the `https_web` profile), fetched every
    /// `refresh`.
    pub bundle_endpoint: Option<String>,
    /// PEM roots for the bundle endpoint's TLS certificate (default: the web PKI roots).
    pub bundle_endpoint_ca: Option<PathBuf>,
    /// How often the bundle is reloaded (SPIRE rotates its CA; the default follows a rotation
    /// well within SPIRE's default CA lifetime).
    pub refresh: Option<HumanDuration>,
    /// The SPIRE server's health endpoint, e.g. `http://spire-server:8080/ready`, polled and
    /// reported by the spire service.
    pub health_url: Option<String>,
}

/// Default [`ExternalSpireConfig::refresh`].
pub const EXTERNAL_BUNDLE_REFRESH: Duration = Duration::from_secs(300);

impl ExternalSpireConfig {
    fn check(&self, builtin_td: &str) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(format!("spire.external: {m}")));
        let Some(td) = &self.trust_domain else {
            if self.bundle_file.is_some() || self.bundle_endpoint.is_some() {
                return bad("a bundle is configured but trust_domain is not".into());
            }
            return Ok(());
        };
        if let Err(e) = hais_shared::spiffe::validate_trust_domain(td) {
            return bad(format!("trust_domain {td:?}: {e}"));
        }
        if td == builtin_td {
            return bad(format!(
                "trust_domain {td:?} is the built-in CA's (spire.trust_domain); they must differ"
            ));
        }
        match (&self.bundle_file, &self.bundle_endpoint) {
            (None, None) => bad("set bundle_file or bundle_endpoint".into()),
            (Some(_), Some(_)) => bad("set bundle_file or bundle_endpoint, not both".into()),
            (None, Some(url)) if !url.starts_with("https://") => bad(format!(
                "bundle_endpoint {url:?} must be an https:// URL (SPIFFE bundle endpoints use TLS)"
            )),
            _ => Ok(()),
        }?;
        if let Some(url) = &self.health_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return bad(format!("health_url {url:?} must be an http(s):// URL"));
        }
        Ok(())
    }

    /// How often the bundle is reloaded.
    pub fn refresh(&self) -> Duration {
        self.refresh.map_or(EXTERNAL_BUNDLE_REFRESH, |r| r.0)
    }
}

/// Longest join-token lifetime: a token is a bearer credential, so it must not live for long.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 86_400);

/// `[ja4]`: the agents' QUIC uplink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ja4Config {
    /// `None` (`off` in the file) disables the uplink.
    #[serde(deserialize_with = "de_bind")]
    pub uplink_bind: Option<SocketAddr>,
    pub uplink_max_connections: usize,
    /// Enrollment connections have their own, smaller budget: they are unauthenticated, and
    /// must never take the slots of enrolled agents.
    pub enroll_max_connections: usize,
    pub uplink_max_streams: u32,
    /// A stream whose request is not complete by then is answered with an error and closed, so
    /// a slow or stalled sender cannot hold one of the connection's streams for ever.
    pub uplink_request_timeout: HumanDuration,
}

impl Default for Ja4Config {
    fn default() -> Self {
        Ja4Config {
            uplink_bind: Some(SocketAddr::from((
                [0, 0, 0, 0],
                crate::services::ja4::SEED_PORT,
            ))),
            uplink_max_connections: 10_000,
            enroll_max_connections: 64,
            uplink_max_streams: 32,
            uplink_request_timeout: HumanDuration::from_secs(30),
        }
    }
}

/// `[http]`: limits of the HTTP(S) listeners, so idle or slow connections cannot exhaust the
/// process's file descriptors (see `crate::server`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Most connections open at once over every HTTP listener of the process; lowered at start
    /// to what the open-file limit leaves after a reserve for the store and the uplink.
    pub max_connections: usize,
    /// Time allowed for a TLS handshake and for a request head once the server waits for one.
    pub header_read_timeout: HumanDuration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: HumanDuration,
    /// A request body must have arrived this long after its head.
    pub request_body_timeout: HumanDuration,
    pub h2_keepalive_interval: HumanDuration,
    pub h2_max_concurrent_streams: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_connections: 10_000,
            header_read_timeout: HumanDuration::from_secs(10),
            idle_timeout: HumanDuration::from_secs(60),
            request_body_timeout: HumanDuration::from_secs(60),
            h2_keepalive_interval: HumanDuration::from_secs(30),
            h2_max_concurrent_streams: 100,
        }
    }
}

/// `[tls]`: HTTPS on the process's listener (the gateway's, in practice).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// A plain-HTTP listener that redirects every request to the HTTPS one.
    pub redirect_http_listen: Option<SocketAddr>,
    pub reload_interval: HumanDuration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert_file: None,
            key_file: None,
            redirect_http_listen: None,
            reload_interval: HumanDuration::from_secs(5),
        }
    }
}

impl TlsConfig {
    /// Whether the listener speaks HTTPS.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }
}

fn de_bind<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    match s.trim() {
        "off" | "" => Ok(None),
        a => a.parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!(
                "ja4.uplink_bind {a:?} is neither an address like 0.0.0.0:3001 nor `off`"
            ))
        }),
    }
}

/// A duration written for humans: `90s`, `30m`, `1h`, `7d`, or bare seconds (`3600`, as a
/// string or an integer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn from_secs(s: u64) -> Self {
        HumanDuration(Duration::from_secs(s))
    }
}

impl std::str::FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s)
            .map(HumanDuration)
            .ok_or_else(|| format!("{s:?} is not a duration like 90s, 30m, 1h or 7d"))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(n) if n > 0 => Ok(HumanDuration::from_secs(n)),
            Raw::Secs(_) => Err(serde::de::Error::custom("a duration must be positive")),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A duration that may be zero (`0` or `off` turns the feature off), like
/// `spire.expired_renewal_grace`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grace(pub Duration);

impl Grace {
    pub fn is_off(&self) -> bool {
        self.0.is_zero()
    }
}

impl<'de> Deserialize<'de> for Grace {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(n) => Ok(Grace(Duration::from_secs(n))),
            Raw::Text(t) if matches!(t.trim(), "0" | "off") => Ok(Grace(Duration::ZERO)),
            Raw::Text(t) => parse_duration(&t).map(Grace).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{t:?} is not a duration like 90s, 30m, 1h or 7d, nor 0/off"
                ))
            }),
        }
    }
}

/// Parses `90s`, `30m`, `1h`, `7d` or bare seconds; `None` for anything else, zero included.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 's') => (&s[..i], 1),
        (i, 'm') => (&s[..i], 60),
        (i, 'h') => (&s[..i], 3600),
        (i, 'd') => (&s[..i], 86_400),
        _ => (s, 1),
    };
    let n: u64 = num.parse().ok()?;
    let secs = n.checked_mul(mult)?;
    (secs > 0 && secs <= 100 * 365 * 86_400).then(|| Duration::from_secs(secs))
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            service: ServiceName::All,
            listen: None,
            data_dir: PathBuf::from("./data"),
            database_url: None,
            database_read_url: None,
            database_schema: None,
            database_max_connections: 8,
            redis_url: None,
            redis_prefix: "hais".into(),
            redis_stream_maxlen: 10_000,
            log_format: LogFormat::Text,
            log_filter: "info".into(),
            admin_password: None,
            jwt_secret: None,
            access_token_ttl_secs: 900,
            refresh_token_ttl_secs: 7 * 24 * 3600,
            service_token_ttl_secs: 3600,
            retention_days: 30,
            findings_retention_days: 90,
            retention_interval_secs: 3600,
            max_body_bytes: 8 * 1024 * 1024,
            max_batch_events: 5000,
            shutdown_grace_secs: 30,
            upstreams: BTreeMap::new(),
            spire: SpireConfig::default(),
            ja4: Ja4Config::default(),
            auth: AuthConfig::default(),
            bus: BusConfig::default(),
            correlation: CorrelationConfig::default(),
            policy: PolicyConfig::default(),
            alert: AlertConfig::default(),
            threat: ThreatConfig::default(),
            http: HttpConfig::default(),
            tls: TlsConfig::default(),
        }
    }
}

impl Config {
    /// Loads defaults, then `file` (if any), then the `HAIS_*` variables found by `env`.
    /// `env` is a parameter so tests can supply their own environment.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse {
                        path: path.to_owned(),
                        message: e.to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        for k in KEYS.iter().filter(|k| !k.key.contains('<')) {
            if let Some(v) = env(k.env) {
                let value = match k.kind {
                    KeyKind::Str => toml::Value::String(v),
                    KeyKind::List => toml::Value::Array(
                        v.split(',')
                            .map(str::trim)
                            .filter(|x| !x.is_empty())
                            .map(|x| toml::Value::String(x.to_owned()))
                            .collect(),
                    ),
                    KeyKind::Int => {
                        toml::Value::Integer(v.trim().parse().map_err(|_| ConfigError::Env {
                            var: k.env,
                            value: v.clone(),
                            kind: "integer",
                        })?)
                    }
                };
                insert_dotted(&mut table, k.key, value)?;
            }
        }
        let mut upstreams = match table.remove("upstreams") {
            Some(toml::Value::Table(t)) => t,
            Some(_) => {
                return Err(ConfigError::Invalid(
                    "`upstreams` must be a table of service = \"url\"".into(),
                ));
            }
            None => toml::Table::new(),
        };
        for svc in ServiceName::split() {
            let var = format!("HAIS_UPSTREAM_{}", svc.as_str().to_ascii_uppercase());
            if let Some(v) = env(&var) {
                upstreams.insert(svc.as_str().to_owned(), toml::Value::String(v));
            }
        }
        table.insert("upstreams".into(), toml::Value::Table(upstreams));
        let origin = file
            .map(Path::to_owned)
            .unwrap_or_else(|| "<environment>".into());
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: origin,
                    message: e.to_string(),
                })?;
        config.check()?;
        Ok(config)
    }

    /// Rejects values that would only fail later, less clearly.
    pub fn check(&self) -> Result<(), ConfigError> {
        if let Some(s) = &self.jwt_secret
            && s.len() < 32
        {
            return Err(ConfigError::Invalid(
                "jwt_secret (HAIS_JWT_SECRET) must be at least 32 bytes".into(),
            ));
        }
        if let Some(p) = &self.admin_password {
            crate::auth::check_new_password(p).map_err(|m| {
                ConfigError::Invalid(format!("admin_password (HAIS_ADMIN_PASSWORD): {m}"))
            })?;
        }
        if let Some(bad) = self
            .auth
            .trusted_proxies
            .iter()
            .find(|p| p.parse::<crate::auth::client_ip::Cidr>().is_err())
        {
            return Err(ConfigError::Invalid(format!(
                "auth.trusted_proxies: {bad:?} is not an address or CIDR such as 10.0.0.0/8"
            )));
        }
        if self.auth.max_queued_hashes > 100_000 {
            return Err(ConfigError::Invalid(
                "auth.max_queued_hashes must be at most 100000".into(),
            ));
        }
        if let Some(schema) = &self.database_schema
            && !is_identifier(schema)
        {
            return Err(ConfigError::Invalid(format!(
                "database_schema {schema:?} must be a lowercase identifier ([a-z_][a-z0-9_]*, at most 63 bytes)"
            )));
        }
        if self.max_batch_events == 0 || self.max_body_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "max_batch_events must be > 0 and max_body_bytes >= 1024".into(),
            ));
        }
        if self.redis_stream_maxlen < 100 {
            return Err(ConfigError::Invalid(
                "redis_stream_maxlen must be at least 100".into(),
            ));
        }
        let is_pg = |u: &str| u.starts_with("postgres://") || u.starts_with("postgresql://");
        if let Some(r) = &self.database_read_url
            && !(is_pg(r) && self.database_url.as_deref().is_some_and(is_pg))
        {
            return Err(ConfigError::Invalid(
                "database_read_url (HAIS_DATABASE_READ_URL) must be a postgres:// URL, and needs a postgres:// database_url".into(),
            ));
        }
        if self.database_max_connections == 0 {
            return Err(ConfigError::Invalid(
                "database_max_connections must be > 0".into(),
            ));
        }
        hais_shared::spiffe::validate_trust_domain(&self.spire.trust_domain).map_err(|e| {
            ConfigError::Invalid(format!(
                "spire.trust_domain {:?}: {e}",
                self.spire.trust_domain
            ))
        })?;
        // Agents renew at half-life, so short lifetimes mean frequent renewals; below 10 s a
        // renewal could not even finish. Lifetimes under 5 m are for tests (the CA backdates
        // them less, see hais_svid).
        if self.spire.svid_ttl.0 < Duration::from_secs(10) {
            return Err(ConfigError::Invalid(
                "spire.svid_ttl must be at least 10s (and should be at least 5m)".into(),
            ));
        }
        if self.spire.svid_ttl.0 < Duration::from_secs(300) {
            tracing::warn!(
                svid_ttl_s = self.spire.svid_ttl.0.as_secs(),
                "spire.svid_ttl is under 5m: agents will renew very often (meant for tests)"
            );
        }
        if let Some(bad) = self.spire.server_dns_names.iter().find(|n| !is_dns_name(n)) {
            return Err(ConfigError::Invalid(format!(
                "spire.server_dns_names: {bad:?} is not a DNS name"
            )));
        }
        self.spire.external.check(&self.spire.trust_domain)?;
        if self.spire.token_ttl.0 > MAX_TOKEN_TTL {
            return Err(ConfigError::Invalid(
                "spire.token_ttl must be at most 30d".into(),
            ));
        }
        let t = self.ja4.uplink_request_timeout.0;
        if t < Duration::from_secs(1) || t > Duration::from_secs(600) {
            return Err(ConfigError::Invalid(
                "ja4.uplink_request_timeout must be between 1s and 10m".into(),
            ));
        }
        if self.ja4.uplink_max_connections == 0
            || self.ja4.enroll_max_connections == 0
            || self.ja4.uplink_max_streams == 0
        {
            return Err(ConfigError::Invalid(
                "ja4.uplink_max_connections, ja4.enroll_max_connections and ja4.uplink_max_streams must be > 0".into(),
            ));
        }
        self.check_http()?;
        let b = &self.bus;
        if !(1..=100).contains(&b.max_attempts)
            || !(1..=10_000).contains(&b.batch_rows)
            || !(2..=600).contains(&b.lease_ttl.0.as_secs())
        {
            return Err(ConfigError::Invalid(
                "bus.max_attempts must be 1 to 100, bus.batch_rows 1 to 10000, bus.lease_ttl 2s to 10m".into(),
            ));
        }
        let c = &self.correlation;
        if !(1..=1_000_000).contains(&c.shared_threshold) {
            return Err(ConfigError::Invalid(
                "correlation.shared_threshold must be 1 to 1000000".into(),
            ));
        }
        let a = &self.alert;
        if !(1..=3600).contains(&a.max_backoff.0.as_secs())
            || !(10..=3600).contains(&a.resend_interval.0.as_secs())
        {
            return Err(ConfigError::Invalid(
                "alert.max_backoff must be 1s to 1h, alert.resend_interval 10s to 1h".into(),
            ));
        }
        if let Some(k) = &a.secrets_key
            && (k.len() != 64 || !k.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(ConfigError::Invalid(
                "alert.secrets_key (HAIS_ALERT_SECRETS_KEY) must be 64 hex digits".into(),
            ));
        }
        let t = &self.threat;
        if !(60..=30 * 86400).contains(&t.refresh_interval.0.as_secs()) {
            return Err(ConfigError::Invalid(
                "threat.refresh_interval must be 1m to 30d".into(),
            ));
        }
        for f in &t.feeds {
            if crate::store::threat::Format::parse(&f.format).is_none() {
                return Err(ConfigError::Invalid(format!(
                    "threat.feeds {}: unknown format {:?}",
                    f.name, f.format
                )));
            }
            if f.verdict
                .as_deref()
                .is_some_and(|v| crate::store::threat::Verdict::parse(v).is_none())
            {
                return Err(ConfigError::Invalid(format!(
                    "threat.feeds {}: verdict must be benign, suspicious or malicious",
                    f.name
                )));
            }
        }
        for name in self.upstreams.keys() {
            if ServiceName::parse(name).is_none() {
                return Err(ConfigError::Invalid(format!(
                    "upstreams.{name}: unknown service"
                )));
            }
        }
        Ok(())
    }

    fn check_http(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.into()));
        let h = &self.http;
        let within = |d: HumanDuration, max: u64| (1..=max).contains(&d.0.as_secs());
        if h.max_connections == 0 || h.h2_max_concurrent_streams == 0 {
            return bad("http.max_connections and http.h2_max_concurrent_streams must be > 0");
        }
        if !within(h.header_read_timeout, 600) {
            return bad("http.header_read_timeout must be between 1s and 10m");
        }
        if !within(h.idle_timeout, 3600) {
            return bad("http.idle_timeout must be between 1s and 1h");
        }
        if !within(h.request_body_timeout, 3600) {
            return bad("http.request_body_timeout must be between 1s and 1h");
        }
        if !within(h.h2_keepalive_interval, 3600) {
            return bad("http.h2_keepalive_interval must be between 1s and 1h");
        }
        let t = &self.tls;
        if t.cert_file.is_some() != t.key_file.is_some() {
            return bad("tls.cert_file and tls.key_file must be set together");
        }
        if t.redirect_http_listen.is_some() && !t.enabled() {
            return bad("tls.redirect_http_listen needs tls.cert_file and tls.key_file");
        }
        if !within(t.reload_interval, 86_400) {
            return bad("tls.reload_interval must be between 1s and 1d");
        }
        Ok(())
    }

    /// The listen address: the configured one, or 0.0.0.0 on the service's seed port.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], self.service.seed_port())))
    }

    /// The database URL: the configured one, or the embedded SQLite file under `data_dir`.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(u) => u.clone(),
            None => format!("sqlite://{}", self.data_dir.join("hais.db").display()),
        }
    }

    /// Where the split-mode gateway reaches `service`.
    pub fn upstream(&self, service: ServiceName) -> String {
        self.upstreams
            .get(service.as_str())
            .cloned()
            .unwrap_or_else(|| format!("http://127.0.0.1:{}", service.seed_port()))
    }

    /// The `--help` section listing every key, generated from [`KEYS`].
    pub fn help_text() -> String {
        let mut out = String::from(
            "Configuration (precedence: flags > HAIS_* environment > TOML file > defaults):\n",
        );
        for k in KEYS {
            out.push_str(&format!(
                "  {:<28} {:<30} default {}\n      {}\n",
                k.key, k.env, k.default, k.help
            ));
        }
        out
    }
}

/// A host name for a certificate's DNS SAN: dot-separated labels of letters, digits and `-`
/// (a leading `*.` allowed), at most 253 bytes.
fn is_dns_name(s: &str) -> bool {
    let s = s.strip_prefix("*.").unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Sets `a.b = value` in `table`, creating the sub-table `a` when missing.
fn insert_dotted(
    table: &mut toml::Table,
    key: &str,
    value: toml::Value,
) -> Result<(), ConfigError> {
    match key.split_once('.') {
        None => {
            table.insert(key.to_owned(), value);
            Ok(())
        }
        Some((head, rest)) => {
            let sub = table
                .entry(head)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match sub {
                toml::Value::Table(t) => insert_dotted(t, rest, value),
                _ => Err(ConfigError::Invalid(format!("`{head}` must be a table"))),
            }
        }
    }
}

/// A safe SQL identifier: lowercase ASCII letters, digits and `_`, not starting with a digit.
pub fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_config_is_valid() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/config/control-plane.toml");
        let c = Config::load(Some(&path), |_| None).unwrap();
        assert_eq!(
            c.spire.server_dns_names,
            vec!["hais-cp.internal".to_owned()]
        );
        assert_eq!(
            c.ja4.uplink_request_timeout.0,
            std::time::Duration::from_secs(30)
        );
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_run_everything_embedded() {
        let c = Config::load(None, env_of(&[])).unwrap();
        assert_eq!(c.service, ServiceName::All);
        assert_eq!(c.listen_addr().port(), 3000);
        assert_eq!(c.database_url(), "sqlite://./data/hais.db");
        assert!(c.redis_url.is_none());
    }

    #[test]
    fn read_replica_url() {
        let c = Config::load(
            None,
            env_of(&[
                ("HAIS_DATABASE_URL", "postgres://p/hais"),
                ("HAIS_DATABASE_READ_URL", "postgres://r/hais"),
            ]),
        )
        .unwrap();
        assert_eq!(c.database_read_url.as_deref(), Some("postgres://r/hais"));
        // SQLite has no replicas.
        let e = Config::load(
            None,
            env_of(&[("HAIS_DATABASE_READ_URL", "postgres://r/hais")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("database_read_url"), "{e}");
        let e = Config::load(
            None,
            env_of(&[
                ("HAIS_DATABASE_URL", "postgres://p/hais"),
                ("HAIS_DATABASE_READ_URL", "sqlite://x.db"),
            ]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("database_read_url"), "{e}");
    }

    #[test]
    fn env_overrides_file() {
        let dir = std::env::temp_dir().join(format!("hais-cfg-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "service = \"ja4\"\nretention_days = 7\n[upstreams]\nja4 = \"http://a:1\"\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&path),
            env_of(&[
                ("HAIS_RETENTION_DAYS", "9"),
                ("HAIS_UPSTREAM_ALERT", "http://b:2"),
            ]),
        )
        .unwrap();
        assert_eq!(c.service, ServiceName::Service("ja4"));
        assert_eq!(c.listen_addr().port(), 3001);
        assert_eq!(c.retention_days, 9);
        assert_eq!(c.upstream(ServiceName::Service("ja4")), "http://a:1");
        assert_eq!(c.upstream(ServiceName::Service("alert")), "http://b:2");
        assert_eq!(
            c.upstream(ServiceName::Service("threat")),
            "http://127.0.0.1:3007"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn nested_keys_from_env_and_durations() {
        let c = Config::load(
            None,
            env_of(&[
                ("HAIS_SPIRE_TRUST_DOMAIN", "example.org"),
                ("HAIS_SPIRE_SVID_TTL", "30m"),
                ("HAIS_SPIRE_SERVER_DNS_NAMES", "cp.example.org, cp2"),
                ("HAIS_JA4_UPLINK_BIND", "off"),
                ("HAIS_SPIRE_EXPIRED_RENEWAL_GRACE", "2d"),
                ("HAIS_JA4_ENROLL_MAX_CONNECTIONS", "8"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.spire.expired_renewal_grace.0,
            Duration::from_secs(2 * 86_400)
        );
        assert_eq!(c.ja4.enroll_max_connections, 8);
        let off = Config::load(None, env_of(&[("HAIS_SPIRE_EXPIRED_RENEWAL_GRACE", "0")])).unwrap();
        assert!(off.spire.expired_renewal_grace.is_off());
        assert!(
            Config::load(
                None,
                env_of(&[("HAIS_SPIRE_EXPIRED_RENEWAL_GRACE", "soon")])
            )
            .is_err()
        );
        assert!(Config::load(None, env_of(&[("HAIS_SPIRE_SVID_TTL", "5s")])).is_err());
        assert!(Config::load(None, env_of(&[("HAIS_JA4_ENROLL_MAX_CONNECTIONS", "0")])).is_err());
        assert_eq!(c.spire.trust_domain, "example.org");
        assert_eq!(c.spire.svid_ttl.0, Duration::from_secs(1800));
        assert_eq!(c.spire.server_dns_names, ["cp.example.org", "cp2"]);
        assert_eq!(c.ja4.uplink_bind, None);
        let d = Config::load(None, env_of(&[])).unwrap();
        assert_eq!(d.ja4.uplink_bind.unwrap().port(), 3001);
        assert_eq!(
            d.spire.expired_renewal_grace.0,
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(d.ja4.enroll_max_connections, 64);
        assert_eq!(d.spire.trust_domain, "hais.local");
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("3600"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("0h"), None);
        assert_eq!(parse_duration("1w"), None);
        assert_eq!(parse_duration(""), None);
        let e = Config::load(None, env_of(&[("HAIS_SPIRE_TRUST_DOMAIN", "Bad TD")])).unwrap_err();
        assert!(e.to_string().contains("spire.trust_domain"), "{e}");
        let e = Config::load(
            None,
            env_of(&[("HAIS_SPIRE_SERVER_DNS_NAMES", "ok.example, bad name")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("server_dns_names"), "{e}");
        let e = Config::load(None, env_of(&[("HAIS_JA4_UPLINK_BIND", "nowhere")])).unwrap_err();
        assert!(e.to_string().contains("uplink_bind"), "{e}");
        assert_eq!(d.ja4.uplink_request_timeout.0, Duration::from_secs(30));
        let t = Config::load(None, env_of(&[("HAIS_JA4_UPLINK_REQUEST_TIMEOUT", "5s")])).unwrap();
        assert_eq!(t.ja4.uplink_request_timeout.0, Duration::from_secs(5));
        for bad in ["11m", "0s"] {
            let e = Config::load(None, env_of(&[("HAIS_JA4_UPLINK_REQUEST_TIMEOUT", bad)]))
                .unwrap_err();
            assert!(
                e.to_string().contains("uplink_request_timeout"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn http_limits_and_tls_from_env_and_their_checks() {
        let d = Config::load(None, env_of(&[])).unwrap();
        assert_eq!(d.http.max_connections, 10_000);
        assert_eq!(d.http.header_read_timeout.0, Duration::from_secs(10));
        assert_eq!(d.http.idle_timeout.0, Duration::from_secs(60));
        assert!(!d.tls.enabled());
        let c = Config::load(
            None,
            env_of(&[
                ("HAIS_HTTP_MAX_CONNECTIONS", "50"),
                ("HAIS_HTTP_HEADER_READ_TIMEOUT", "5s"),
                ("HAIS_HTTP_IDLE_TIMEOUT", "2m"),
                ("HAIS_HTTP_REQUEST_BODY_TIMEOUT", "3m"),
                ("HAIS_HTTP_H2_KEEPALIVE_INTERVAL", "10s"),
                ("HAIS_HTTP_H2_MAX_CONCURRENT_STREAMS", "16"),
                ("HAIS_TLS_CERT_FILE", "/etc/hais/tls/cert.pem"),
                ("HAIS_TLS_KEY_FILE", "/etc/hais/tls/key.pem"),
                ("HAIS_TLS_REDIRECT_HTTP_LISTEN", "0.0.0.0:8080"),
                ("HAIS_TLS_RELOAD_INTERVAL", "30s"),
            ]),
        )
        .unwrap();
        assert_eq!(c.http.max_connections, 50);
        assert_eq!(c.http.header_read_timeout.0, Duration::from_secs(5));
        assert_eq!(c.http.idle_timeout.0, Duration::from_secs(120));
        assert_eq!(c.http.request_body_timeout.0, Duration::from_secs(180));
        assert_eq!(c.http.h2_keepalive_interval.0, Duration::from_secs(10));
        assert_eq!(c.http.h2_max_concurrent_streams, 16);
        assert!(c.tls.enabled());
        assert_eq!(c.tls.redirect_http_listen.unwrap().port(), 8080);
        assert_eq!(c.tls.reload_interval.0, Duration::from_secs(30));
        for (env, culprit) in [
            (
                vec![("HAIS_HTTP_MAX_CONNECTIONS", "0")],
                "http.max_connections",
            ),
            (
                vec![("HAIS_HTTP_HEADER_READ_TIMEOUT", "11m")],
                "header_read_timeout",
            ),
            (vec![("HAIS_HTTP_IDLE_TIMEOUT", "2h")], "idle_timeout"),
            (vec![("HAIS_TLS_CERT_FILE", "/c.pem")], "set together"),
            (
                vec![("HAIS_TLS_REDIRECT_HTTP_LISTEN", "0.0.0.0:80")],
                "redirect_http_listen needs",
            ),
        ] {
            let e = Config::load(None, env_of(&env)).unwrap_err();
            assert!(e.to_string().contains(culprit), "{env:?}: {e}");
        }
    }

    #[test]
    fn bad_values_name_the_culprit() {
        let e = Config::load(None, env_of(&[("HAIS_RETENTION_DAYS", "soon")])).unwrap_err();
        assert!(e.to_string().contains("HAIS_RETENTION_DAYS"), "{e}");
        let e = Config::load(None, env_of(&[("HAIS_JWT_SECRET", "short")])).unwrap_err();
        assert!(e.to_string().contains("jwt_secret"), "{e}");
        let e = Config::load(None, env_of(&[("HAIS_DATABASE_SCHEMA", "x; drop")])).unwrap_err();
        assert!(e.to_string().contains("database_schema"), "{e}");
        let e = Config::load(None, env_of(&[("HAIS_SERVICE", "nope")])).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let e = Config::load(None, env_of(&[("HAIS_ALERT_SECRETS_KEY", "abc")])).unwrap_err();
        assert!(e.to_string().contains("alert.secrets_key"), "{e}");
        let key = "0f".repeat(32);
        let c = Config::load(None, env_of(&[("HAIS_ALERT_SECRETS_KEY", key.as_str())])).unwrap();
        assert_eq!(c.alert.secrets_key.as_deref(), Some(key.as_str()));
    }

    #[test]
    fn external_spire_settings_from_env_and_their_checks() {
        let c = Config::load(
            None,
            env_of(&[
                ("HAIS_SPIRE_EXTERNAL_TRUST_DOMAIN", "prod.example"),
                ("HAIS_SPIRE_EXTERNAL_BUNDLE_FILE", "/etc/spire/bundle.pem"),
                ("HAIS_SPIRE_EXTERNAL_REFRESH", "1m"),
                ("HAIS_SPIRE_EXTERNAL_HEALTH_URL", "http://spire:8080/ready"),
            ]),
        )
        .unwrap();
        let x = &c.spire.external;
        assert_eq!(x.trust_domain.as_deref(), Some("prod.example"));
        assert_eq!(x.refresh(), Duration::from_secs(60));
        assert_eq!(x.health_url.as_deref(), Some("http://spire:8080/ready"));
        assert_eq!(
            Config::default().spire.external.refresh(),
            EXTERNAL_BUNDLE_REFRESH
        );
        for (env, culprit) in [
            (
                vec![("HAIS_SPIRE_EXTERNAL_TRUST_DOMAIN", "prod.example")],
                "bundle_file or bundle_endpoint",
            ),
            (
                vec![("HAIS_SPIRE_EXTERNAL_BUNDLE_FILE", "/b.pem")],
                "trust_domain is not",
            ),
            (
                vec![
                    ("HAIS_SPIRE_EXTERNAL_TRUST_DOMAIN", "hais.local"),
                    ("HAIS_SPIRE_EXTERNAL_BUNDLE_FILE", "/b.pem"),
                ],
                "must differ",
            ),
            (
                vec![
                    ("HAIS_SPIRE_EXTERNAL_TRUST_DOMAIN", "prod.example"),
                    ("HAIS_SPIRE_EXTERNAL_BUNDLE_ENDPOINT", "http://spire:8443"),
                ],
                "https://",
            ),
            (
                vec![
                    ("HAIS_SPIRE_EXTERNAL_TRUST_DOMAIN", "prod.example"),
                    ("HAIS_SPIRE_EXTERNAL_BUNDLE_FILE", "/b.pem"),
                    ("HAIS_SPIRE_EXTERNAL_BUNDLE_ENDPOINT", "https://spire:8443"),
                ],
                "not both",
            ),
            (
                vec![
                    ("HAIS_SPIRE_EXTERNAL_TRUST_DOMAIN", "Bad TD"),
                    ("HAIS_SPIRE_EXTERNAL_BUNDLE_FILE", "/b.pem"),
                ],
                "trust_domain",
            ),
        ] {
            let e = Config::load(None, env_of(&env)).unwrap_err();
            assert!(e.to_string().contains(culprit), "{env:?}: {e}");
        }
    }
}
