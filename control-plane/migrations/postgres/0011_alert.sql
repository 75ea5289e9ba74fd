-- The alert service (issue 15): alerts, history, suppressions, channels, the notification
-- outbox. See the SQLite migration of the same number for the meaning of each column.

-- One alert per dedup key (hais_shared::detection::Detection::dedup_key): source, rule,
-- identity, method + fingerprint, destination. `count`, `first_seen_us`, `last_seen_us` and
-- `event_ids` sum up the detections linked to it (`alert_detections`).
CREATE TABLE alerts (
    id            text COLLATE "C" PRIMARY KEY,          -- UUIDv7, so id order is creation order
    dedup_key     text NOT NULL UNIQUE,
    source        text NOT NULL,             -- correlation | policy | threat
    rule          text NOT NULL,             -- detector, policy or feed
    identity      text NOT NULL,             -- SPIFFE ID, else the workload key
    method        text,
    fingerprint   text,
    destination   text,
    severity      bigint NOT NULL,          -- 0 info … 4 critical
    status        text NOT NULL,             -- open | acknowledged | resolved | suppressed
    summary       text NOT NULL,
    count         bigint NOT NULL,
    first_seen_us bigint NOT NULL,
    last_seen_us  bigint NOT NULL,
    created_us    bigint NOT NULL,
    updated_us    bigint NOT NULL,
    event_ids     text NOT NULL,             -- JSON array of UUIDs, most recent last, ≤ 20
    attributes    text NOT NULL              -- JSON object (host, namespace, …)
);
CREATE INDEX alerts_status ON alerts (status, id);
CREATE INDEX alerts_identity ON alerts (identity, id);
-- Grouping: the same fingerprint across identities.
CREATE INDEX alerts_fingerprint ON alerts (fingerprint, id) WHERE fingerprint IS NOT NULL;

-- The detections (findings, violations, matches) folded into each alert, by their source id:
-- a replayed detection whose count is not higher changes nothing.
CREATE TABLE alert_detections (
    detection_id text COLLATE "C" PRIMARY KEY,
    alert_id     text NOT NULL,
    count        bigint NOT NULL,
    last_seen_us bigint NOT NULL
);
CREATE INDEX alert_detections_alert ON alert_detections (alert_id);

-- Every transition and comment of an alert: who, when, what.
CREATE TABLE alert_history (
    alert_id text NOT NULL,
    seq      bigint NOT NULL,
    at_us    bigint NOT NULL,
    actor    text NOT NULL,                  -- a user, or `alert` for the service itself
    action   text NOT NULL,                  -- opened | recorded-suppressed | acknowledged | resolved | reopened | comment
    status   text NOT NULL,                  -- the status after the action
    comment  text,
    PRIMARY KEY (alert_id, seq)
);

-- Suppressions: detections matching every field set (identity, fingerprint, destination, rule)
-- are dropped (`drop`) or recorded as suppressed alerts that notify nobody (`record`) until
-- `expires_us`.
CREATE TABLE alert_suppressions (
    id          text COLLATE "C" PRIMARY KEY,
    identity    text,
    fingerprint text,
    destination text,
    rule        text,
    action      text NOT NULL,               -- drop | record
    reason      text NOT NULL,
    created_by  text NOT NULL,
    created_us  bigint NOT NULL,
    expires_us  bigint
);

-- Notification channels. `settings` holds what may be shown (URL, addresses, routing);
-- `secret` (HMAC key, SMTP password) is never returned by the API.
CREATE TABLE alert_channels (
    id           text COLLATE "C" PRIMARY KEY,
    name         text NOT NULL UNIQUE,
    kind         text NOT NULL,              -- webhook | slack | alertmanager | syslog | email
    enabled      bigint NOT NULL,
    min_severity bigint NOT NULL,
    identity_pattern text,                   -- glob (`*`), NULL: every identity
    settings     text NOT NULL,              -- JSON
    secret       text,
    created_by   text NOT NULL,
    created_us   bigint NOT NULL,
    updated_us   bigint NOT NULL,
    -- Health and back-off, kept by the deliverers.
    failures     bigint NOT NULL DEFAULT 0, -- consecutive
    next_try_us  bigint NOT NULL DEFAULT 0,
    last_error   text,
    last_ok_us   bigint,
    delivered    bigint NOT NULL DEFAULT 0,
    failed       bigint NOT NULL DEFAULT 0
);

-- The outbox: one row per notification (alert × channel × firing/resolved), written in the
-- transaction that changed the alert, deleted once delivered. A claim (`claimed_until_us`)
-- that outlives its deliverer (a crash) expires and the row is delivered again.
CREATE TABLE alert_outbox (
    id               text COLLATE "C" PRIMARY KEY,        -- UUIDv7: delivery order per channel
    channel_id       text NOT NULL,
    alert_id         text NOT NULL,
    kind             text NOT NULL,           -- firing | resolved | test
    created_us       bigint NOT NULL,
    attempts         bigint NOT NULL DEFAULT 0,
    claimed_until_us bigint NOT NULL DEFAULT 0
);
CREATE INDEX alert_outbox_channel ON alert_outbox (channel_id, id);
