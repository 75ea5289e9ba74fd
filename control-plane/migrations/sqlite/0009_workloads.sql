-- Discovered workloads and registration templates (identity service, issue 13).

-- Every workload key seen (hais_shared::workload): the facts of its newest event, the selectors
-- they yield, and what the registration entries and templates resolve it to now. Written by the
-- identity service's consumer of `fingerprint.events`; `spiffe_id` is rewritten whenever the
-- entries or templates change. Counts and where it was seen are roll-ups (`workload_rollups`).
CREATE TABLE workloads (
    key         TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,             -- k8s | container | host
    namespace   TEXT,                      -- Kubernetes namespace, for the list's filter
    facts       TEXT NOT NULL,             -- JSON: store::workloads::WorkloadFacts
    selectors   TEXT NOT NULL,             -- the newest event's selectors, one per line
    facts_us    INTEGER NOT NULL,          -- that event's time
    spiffe_id   TEXT,
    resolved_by TEXT,                      -- entry:<id> | template:<id>
    resolved_us INTEGER
) WITHOUT ROWID;
CREATE INDEX workloads_namespace ON workloads (namespace, key) WHERE namespace IS NOT NULL;
CREATE INDEX workloads_spiffe_id ON workloads (spiffe_id, key) WHERE spiffe_id IS NOT NULL;

-- Roll-ups per workload key, folded with the fingerprint roll-ups (as identity_rollups): dim ''
-- is the workload itself; 'host', 'agent' and 'destination' where it was seen.
CREATE TABLE workload_rollups (
    key           TEXT NOT NULL,
    dim           TEXT NOT NULL,
    dim_value     TEXT NOT NULL,
    first_seen_us INTEGER NOT NULL,
    last_seen_us  INTEGER NOT NULL,
    count         INTEGER NOT NULL,
    PRIMARY KEY (key, dim, dim_value)
) WITHOUT ROWID;
-- The list's host and agent filters: workloads seen on one host, in key order.
CREATE INDEX workload_rollups_by_dim ON workload_rollups (dim, dim_value, key);

-- Registration templates (hais_shared::template): SPIFFE ID patterns applied to every workload
-- their selectors scope. `key_sha256` (pattern, newline, selectors) makes a twin a conflict.
CREATE TABLE registration_templates (
    id          TEXT PRIMARY KEY,          -- UUIDv7 chosen by the identity service
    pattern     TEXT NOT NULL,
    selectors   TEXT NOT NULL,             -- sorted, distinct, one per line; may be empty
    description TEXT,
    created_by  TEXT NOT NULL,
    created_us  INTEGER NOT NULL,
    key_sha256  TEXT NOT NULL UNIQUE
);
