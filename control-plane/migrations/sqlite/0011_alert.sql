-- The alert service (issue 15): alerts deduplicated from detections, their history, the
-- suppressions that silence them, notification channels and the notification outbox.

-- One alert per dedup key (hais_shared::detection::Detection::dedup_key): source, rule,
-- identity, method + fingerprint, destination. `count`, `first_seen_us`, `last_seen_us` and
-- `event_ids` sum up the detections linked to it (`alert_detections`).
CREATE TABLE alerts (
    id            TEXT PRIMARY KEY,          -- UUIDv7, so id order is creation order
    dedup_key     TEXT NOT NULL UNIQUE,
    source        TEXT NOT NULL,             -- correlation | policy | threat
    rule          TEXT NOT NULL,             -- detector, policy or feed
    identity      TEXT NOT NULL,             -- SPIFFE ID, else the workload key
    method        TEXT,
    fingerprint   TEXT,
    destination   TEXT,
    severity      INTEGER NOT NULL,          -- 0 info … 4 critical
    status        TEXT NOT NULL,             -- open | acknowledged | resolved | suppressed
    summary       TEXT NOT NULL,
    count         INTEGER NOT NULL,
    first_seen_us INTEGER NOT NULL,
    last_seen_us  INTEGER NOT NULL,
    created_us    INTEGER NOT NULL,
    updated_us    INTEGER NOT NULL,
    event_ids     TEXT NOT NULL,             -- JSON array of UUIDs, most recent last, ≤ 20
    attributes    TEXT NOT NULL              -- JSON object (host, namespace, …)
);
CREATE INDEX alerts_status ON alerts (status, id);
CREATE INDEX alerts_identity ON alerts (identity, id);
-- Grouping: the same fingerprint across identities.
CREATE INDEX alerts_fingerprint ON alerts (fingerprint, id) WHERE fingerprint IS NOT NULL;

-- The detections (findings, violations, matches) folded into each alert, by their source id:
-- a replayed detection whose count is not higher changes nothing.
CREATE TABLE alert_detections (
    detection_id TEXT PRIMARY KEY,
    alert_id     TEXT NOT NULL,
    count        INTEGER NOT NULL,
    last_seen_us INTEGER NOT NULL
);
CREATE INDEX alert_detections_alert ON alert_detections (alert_id);

-- Every transition and comment of an alert: who, when, what.
CREATE TABLE alert_history (
    alert_id TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    at_us    INTEGER NOT NULL,
    actor    TEXT NOT NULL,                  -- a user, or `alert` for the service itself
    action   TEXT NOT NULL,                  -- opened | recorded-suppressed | acknowledged | resolved | reopened | comment
    status   TEXT NOT NULL,                  -- the status after the action
    comment  TEXT,
    PRIMARY KEY (alert_id, seq)
);

-- Suppressions: detections matching every field set (identity, fingerprint, destination, rule)
-- are dropped (`drop`) or recorded as suppressed alerts that notify nobody (`record`) until
-- `expires_us`.
CREATE TABLE alert_suppressions (
    id          TEXT PRIMARY KEY,
    identity    TEXT,
    fingerprint TEXT,
    destination TEXT,
    rule        TEXT,
    action      TEXT NOT NULL,               -- drop | record
    reason      TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_us  INTEGER NOT NULL,
    expires_us  INTEGER
);

-- Notification channels. `settings` holds what may be shown (URL, addresses, routing);
-- `secret` (HMAC key, SMTP password) is never returned by the API.
CREATE TABLE alert_channels (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    kind         TEXT NOT NULL,              -- webhook | slack | alertmanager | syslog | email
    enabled      INTEGER NOT NULL,
    min_severity INTEGER NOT NULL,
    identity_pattern TEXT,                   -- glob (`*`), NULL: every identity
    settings     TEXT NOT NULL,              -- JSON
    secret       TEXT,
    created_by   TEXT NOT NULL,
    created_us   INTEGER NOT NULL,
    updated_us   INTEGER NOT NULL,
    -- Health and back-off, kept by the deliverers.
    failures     INTEGER NOT NULL DEFAULT 0, -- consecutive
    next_try_us  INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    last_ok_us   INTEGER,
    delivered    INTEGER NOT NULL DEFAULT 0,
    failed       INTEGER NOT NULL DEFAULT 0
);

-- The outbox: one row per notification (alert × channel × firing/resolved), written in the
-- transaction that changed the alert, deleted once delivered. A claim (`claimed_until_us`)
-- that outlives its deliverer (a crash) expires and the row is delivered again.
CREATE TABLE alert_outbox (
    id               TEXT PRIMARY KEY,        -- UUIDv7: delivery order per channel
    channel_id       TEXT NOT NULL,
    alert_id         TEXT NOT NULL,
    kind             TEXT NOT NULL,           -- firing | resolved | test
    created_us       INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    claimed_until_us INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX alert_outbox_channel ON alert_outbox (channel_id, id);
