-- Threat service (issue 16): feeds, their indicators, the matches judged on ingest (published as
-- detections) and the per-country counts of the map.

-- One row per feed: where it comes from and how its last refresh went.
CREATE TABLE threat_feeds (
    name            TEXT PRIMARY KEY,
    format          TEXT NOT NULL,            -- services::threat::feeds::Format
    location        TEXT NOT NULL,            -- http(s):// URL or file path
    interval_secs   INTEGER NOT NULL,         -- refresh period; 0: only on request
    verdict         TEXT NOT NULL,            -- verdict of block-list formats
    enabled         INTEGER NOT NULL,
    source          TEXT NOT NULL,
    licence         TEXT,
    created_us      INTEGER NOT NULL,
    last_attempt_us INTEGER,
    last_refresh_us INTEGER,                  -- last successful import (indicators swapped)
    rows_ok         INTEGER NOT NULL DEFAULT 0,
    rows_bad        INTEGER NOT NULL DEFAULT 0,
    rows_skipped    INTEGER NOT NULL DEFAULT 0,
    indicators      INTEGER NOT NULL DEFAULT 0,
    errors          TEXT NOT NULL DEFAULT '[]', -- JSON: the first bad rows, [{row, reason}]
    last_error      TEXT                      -- why the last attempt failed (fetch, read)
) WITHOUT ROWID;

-- One row per indicator. `ikey` is kind, method and canonical value (unique within a feed, so
-- a refresh keeps ids and first-seen times); `body` the whole indicator as JSON.
CREATE TABLE threat_indicators (
    id           TEXT PRIMARY KEY,
    feed         TEXT NOT NULL,
    ikey         TEXT NOT NULL,
    kind         TEXT NOT NULL,
    method       TEXT NOT NULL,               -- '' unless kind = fingerprint
    value        TEXT NOT NULL,
    verdict      INTEGER NOT NULL,            -- 0 benign, 1 suspicious, 2 malicious
    expires_us   INTEGER,
    first_seen_us INTEGER NOT NULL,
    body         TEXT NOT NULL,
    UNIQUE (feed, ikey)
) WITHOUT ROWID;
CREATE INDEX threat_indicators_value ON threat_indicators (value, id);
CREATE INDEX threat_indicators_kind ON threat_indicators (kind, id);

-- One row per identity × indicator × destination: the threat match the alert service hears of
-- as a Detection with the same id and a growing count.
CREATE TABLE threat_matches (
    mkey          TEXT PRIMARY KEY,
    id            TEXT NOT NULL UNIQUE,
    identity      TEXT NOT NULL,
    count         INTEGER NOT NULL,
    first_seen_us INTEGER NOT NULL,
    last_seen_us  INTEGER NOT NULL,
    detection     TEXT NOT NULL               -- JSON: the last Detection published
) WITHOUT ROWID;
CREATE INDEX threat_matches_identity ON threat_matches (identity, id);

-- Events and identities per remote country and hour (the map).
CREATE TABLE threat_geo (
    hour_us  INTEGER NOT NULL,
    country  TEXT NOT NULL,                   -- ISO alpha-2, '' when unknown
    identity TEXT NOT NULL,
    events   INTEGER NOT NULL,
    PRIMARY KEY (hour_us, country, identity)
) WITHOUT ROWID;

-- A number every indicator change increases: processes rebuild their matcher when it moved.
CREATE TABLE threat_generation (
    one        INTEGER PRIMARY KEY CHECK (one = 1),
    generation INTEGER NOT NULL
);
INSERT INTO threat_generation (one, generation) VALUES (1, 0);
