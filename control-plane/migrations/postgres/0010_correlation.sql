-- Correlation service (issue 14). See the SQLite migration of the same number for the meaning
-- of each table and column.

CREATE TABLE correlation_baselines (
    identity   text COLLATE "C" PRIMARY KEY,
    state      text NOT NULL,
    baseline   text NOT NULL,
    version    bigint NOT NULL,
    updated_us bigint NOT NULL
) WITH (fillfactor = 80);

CREATE TABLE correlation_findings (
    id            text COLLATE "C" PRIMARY KEY,
    fkey          text COLLATE "C" NOT NULL UNIQUE,
    identity      text COLLATE "C" NOT NULL,
    detector      text COLLATE "C" NOT NULL,
    severity      bigint NOT NULL,
    last_seen_us  bigint NOT NULL,
    finding       text NOT NULL
) WITH (fillfactor = 80);
CREATE INDEX correlation_findings_identity ON correlation_findings (identity, id);
CREATE INDEX correlation_findings_detector ON correlation_findings (detector, id);

CREATE TABLE correlation_adoptions (
    method      text COLLATE "C" NOT NULL,
    fingerprint text COLLATE "C" NOT NULL,
    identity    text COLLATE "C" NOT NULL,
    event_id    text NOT NULL,
    ts_us       bigint NOT NULL,
    established bigint NOT NULL,
    PRIMARY KEY (method, fingerprint, identity)
);
CREATE INDEX correlation_adoptions_recent ON correlation_adoptions (method, fingerprint, established, ts_us);
