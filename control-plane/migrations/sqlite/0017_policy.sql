-- Policy service (issue 17): versioned Cedar policy sets and the violations found on the stream.

-- Every change of the policy set is a new row; the highest version is the active set. A rollback
-- is a new version with an older one's sources, so history is never rewritten.
CREATE TABLE policy_versions (
    version    INTEGER PRIMARY KEY,
    sources    TEXT NOT NULL,             -- JSON: [{name, text}], hais_policy::Source
    author     TEXT NOT NULL,             -- the user (or `directory:<path>`) that made it
    comment    TEXT NOT NULL,
    origin     TEXT NOT NULL,             -- api | directory | rollback
    diff       TEXT NOT NULL,             -- unified diff from the previous version's sources
    policies   INTEGER NOT NULL,          -- policies in the set
    created_us INTEGER NOT NULL
);

-- One row per identity × rule × destination × mode (`vkey`); recurrences update it (count,
-- last seen, latest explained decision). `id` is the violation's UUIDv7, kept on recurrence (the
-- detection published for the alert service carries it).
CREATE TABLE policy_violations (
    id           TEXT PRIMARY KEY,
    vkey         TEXT NOT NULL UNIQUE,
    identity     TEXT NOT NULL,
    outcome      TEXT NOT NULL,           -- alert | deny | audit
    count        INTEGER NOT NULL,
    first_seen_us INTEGER NOT NULL,
    last_seen_us INTEGER NOT NULL,
    violation    TEXT NOT NULL            -- JSON: store::policy::Violation
) WITHOUT ROWID;
CREATE INDEX policy_violations_identity ON policy_violations (identity, id);
CREATE INDEX policy_violations_outcome ON policy_violations (outcome, id);
-- Findings retention deletes violations not seen for `findings_retention_days`.
CREATE INDEX policy_violations_seen ON policy_violations (last_seen_us);
