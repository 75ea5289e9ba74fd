-- Correlation service (issue 14): per-identity baselines, findings, and who started presenting
-- which client fingerprint when (the shared-fingerprint detector's prevalence).

-- One row per identity (SPIFFE ID, else workload key): hais_correlation::Baseline as JSON.
-- `version` grows with every write: the consumer and the analysts' accept/reset each write only
-- over the version they read, so neither loses the other's change.
CREATE TABLE correlation_baselines (
    identity   TEXT PRIMARY KEY,
    state      TEXT NOT NULL,             -- learning | established
    baseline   TEXT NOT NULL,             -- JSON: hais_correlation::Baseline
    version    INTEGER NOT NULL,
    updated_us INTEGER NOT NULL
) WITHOUT ROWID;

-- One row per identity × detector × method × fingerprint × destination (`fkey`, the
-- FindingKey's text); recurrences update it. `id` is the finding's UUIDv7 (time-ordered: the
-- list pages by it, newest first).
CREATE TABLE correlation_findings (
    id            TEXT PRIMARY KEY,
    fkey          TEXT NOT NULL UNIQUE,
    identity      TEXT NOT NULL,
    detector      TEXT NOT NULL,
    severity      INTEGER NOT NULL,       -- 0 info, 1 low, 2 medium, 3 high, 4 critical
    last_seen_us  INTEGER NOT NULL,
    finding       TEXT NOT NULL           -- JSON: hais_correlation::Finding
) WITHOUT ROWID;
CREATE INDEX correlation_findings_identity ON correlation_findings (identity, id);
CREATE INDEX correlation_findings_detector ON correlation_findings (detector, id);

-- The first time each identity presented each client fingerprint (JA4 stable key, JA4H a_b,
-- JA4T, JA4D): how many identities present it, and which established ones started recently.
CREATE TABLE correlation_adoptions (
    method      TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    identity    TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    ts_us       INTEGER NOT NULL,
    established INTEGER NOT NULL,         -- 1 when the identity was established then
    PRIMARY KEY (method, fingerprint, identity)
) WITHOUT ROWID;
CREATE INDEX correlation_adoptions_recent ON correlation_adoptions (method, fingerprint, established, ts_us);
