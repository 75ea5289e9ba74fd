-- Threat service (issue 16). See the SQLite migration of the same number for the meaning of each
-- table and column.

CREATE TABLE threat_feeds (
    name            text COLLATE "C" PRIMARY KEY,
    format          text NOT NULL,
    location        text NOT NULL,
    interval_secs   bigint NOT NULL,
    verdict         text NOT NULL,
    enabled         bigint NOT NULL,
    source          text NOT NULL,
    licence         text,
    created_us      bigint NOT NULL,
    last_attempt_us bigint,
    last_refresh_us bigint,
    rows_ok         bigint NOT NULL DEFAULT 0,
    rows_bad        bigint NOT NULL DEFAULT 0,
    rows_skipped    bigint NOT NULL DEFAULT 0,
    indicators      bigint NOT NULL DEFAULT 0,
    errors          text NOT NULL DEFAULT '[]',
    last_error      text
);

CREATE TABLE threat_indicators (
    id           text COLLATE "C" PRIMARY KEY,
    feed         text COLLATE "C" NOT NULL,
    ikey         text COLLATE "C" NOT NULL,
    kind         text COLLATE "C" NOT NULL,
    method       text COLLATE "C" NOT NULL,
    value        text COLLATE "C" NOT NULL,
    verdict      bigint NOT NULL,
    expires_us   bigint,
    first_seen_us bigint NOT NULL,
    body         text NOT NULL,
    UNIQUE (feed, ikey)
);
CREATE INDEX threat_indicators_value ON threat_indicators (value, id);
CREATE INDEX threat_indicators_kind ON threat_indicators (kind, id);

CREATE TABLE threat_matches (
    mkey          text COLLATE "C" PRIMARY KEY,
    id            text COLLATE "C" NOT NULL UNIQUE,
    identity      text COLLATE "C" NOT NULL,
    count         bigint NOT NULL,
    first_seen_us bigint NOT NULL,
    last_seen_us  bigint NOT NULL,
    detection     text NOT NULL
) WITH (fillfactor = 80);
CREATE INDEX threat_matches_identity ON threat_matches (identity, id);

CREATE TABLE threat_geo (
    hour_us  bigint NOT NULL,
    country  text COLLATE "C" NOT NULL,
    identity text COLLATE "C" NOT NULL,
    events   bigint NOT NULL,
    PRIMARY KEY (hour_us, country, identity)
) WITH (fillfactor = 80);

CREATE TABLE threat_generation (
    one        bigint PRIMARY KEY CHECK (one = 1),
    generation bigint NOT NULL
);
INSERT INTO threat_generation (one, generation) VALUES (1, 0);
