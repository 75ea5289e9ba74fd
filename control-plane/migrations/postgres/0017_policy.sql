-- Policy service (issue 17). See the SQLite migration of the same number for the meaning of each
-- table and column.

CREATE TABLE policy_versions (
    version    bigint PRIMARY KEY,
    sources    text NOT NULL,
    author     text NOT NULL,
    comment    text NOT NULL,
    origin     text NOT NULL,
    diff       text NOT NULL,
    policies   bigint NOT NULL,
    created_us bigint NOT NULL
);

CREATE TABLE policy_violations (
    id            text COLLATE "C" PRIMARY KEY,
    vkey          text COLLATE "C" NOT NULL UNIQUE,
    identity      text COLLATE "C" NOT NULL,
    outcome       text COLLATE "C" NOT NULL,
    count         bigint NOT NULL,
    first_seen_us bigint NOT NULL,
    last_seen_us  bigint NOT NULL,
    violation     text NOT NULL
) WITH (fillfactor = 80);
CREATE INDEX policy_violations_identity ON policy_violations (identity, id);
CREATE INDEX policy_violations_outcome ON policy_violations (outcome, id);
-- Findings retention deletes violations not seen for `findings_retention_days`.
CREATE INDEX policy_violations_seen ON policy_violations (last_seen_us);
