-- Workload identity (identity service): registration entries, and the per-identity roll-ups of
-- the inventory. Per identity × fingerprint roll-ups are `fingerprint_dims` rows with
-- dim = 'identity' (0001); the tables here add what is per identity only.

-- Registration entries: selectors → workload SPIFFE ID. `selectors` holds the validated,
-- sorted, distinct selectors one per line (selectors cannot contain control characters);
-- `key_sha256` (hex SHA-256 of spiffe_id, newline, selectors) makes a second entry with the
-- same SPIFFE ID and selector set a conflict without indexing unbounded text.
CREATE TABLE registration_entries (
    id          TEXT PRIMARY KEY,          -- UUIDv7 chosen by the identity service
    spiffe_id   TEXT NOT NULL,
    selectors   TEXT NOT NULL,
    description TEXT,
    created_by  TEXT NOT NULL,             -- username, service subject, or `spire-import`
    created_us  INTEGER NOT NULL,
    key_sha256  TEXT NOT NULL UNIQUE
);

-- Roll-ups per workload identity, folded by the roll-up stage with the fingerprint roll-ups.
-- dim '' (dim_value '') is the identity itself; 'host', 'agent' and 'destination' (the TLS
-- server name, else dst ip:port) are what it was seen with.
CREATE TABLE identity_rollups (
    spiffe_id     TEXT NOT NULL,
    dim           TEXT NOT NULL,
    dim_value     TEXT NOT NULL,
    first_seen_us INTEGER NOT NULL,
    last_seen_us  INTEGER NOT NULL,
    count         INTEGER NOT NULL,
    PRIMARY KEY (spiffe_id, dim, dim_value)
) WITHOUT ROWID;
CREATE INDEX identity_rollups_ids ON identity_rollups (spiffe_id) WHERE dim = '';

-- Events given `spiffe_id` while an equally specific entry named `other_spiffe_id` (a tie that
-- the oldest entry won; add a selector to one of the entries to break it).
CREATE TABLE identity_conflicts (
    spiffe_id       TEXT NOT NULL,
    other_spiffe_id TEXT NOT NULL,
    first_seen_us   INTEGER NOT NULL,
    last_seen_us    INTEGER NOT NULL,
    count           INTEGER NOT NULL,
    PRIMARY KEY (spiffe_id, other_spiffe_id)
) WITHOUT ROWID;
