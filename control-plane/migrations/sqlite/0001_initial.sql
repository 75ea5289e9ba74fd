-- HaIS control plane, embedded SQLite schema. Times are µs since the Unix epoch (INTEGER).
-- Text keys use SQLite's default BINARY collation (byte order), the same order PostgreSQL gets
-- from COLLATE "C", so keyset pagination behaves identically on both backends.

CREATE TABLE events (
    id           BLOB PRIMARY KEY,      -- UUIDv7, 16 bytes; byte order = time order
    ts_us        INTEGER NOT NULL,
    agent_id     TEXT NOT NULL,
    host         TEXT NOT NULL,
    src_ip       TEXT NOT NULL,
    src_port     INTEGER NOT NULL,
    dst_ip       TEXT NOT NULL,
    dst_port     INTEGER NOT NULL,
    transport    TEXT NOT NULL,
    server_name  TEXT,
    fingerprints TEXT NOT NULL,         -- JSON array of {method, value}
    workload     TEXT,                  -- JSON object, NULL when unattributed
    received_us  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE fingerprints (
    method        TEXT NOT NULL,
    value         TEXT NOT NULL,
    part_a        TEXT,
    part_b        TEXT,
    part_c        TEXT,
    first_seen_us INTEGER NOT NULL,
    last_seen_us  INTEGER NOT NULL,
    count         INTEGER NOT NULL,
    PRIMARY KEY (method, value)
) WITHOUT ROWID;
CREATE INDEX fingerprints_value ON fingerprints (value);
CREATE INDEX fingerprints_part_a ON fingerprints (part_a);
CREATE INDEX fingerprints_part_b ON fingerprints (part_b);
CREATE INDEX fingerprints_part_c ON fingerprints (part_c);

CREATE TABLE fingerprint_dims (
    dim           TEXT NOT NULL,        -- host | agent | server_name | identity
    dim_value     TEXT NOT NULL,
    method        TEXT NOT NULL,
    value         TEXT NOT NULL,
    first_seen_us INTEGER NOT NULL,
    last_seen_us  INTEGER NOT NULL,
    count         INTEGER NOT NULL,
    PRIMARY KEY (dim, dim_value, method, value)
) WITHOUT ROWID;
CREATE INDEX fingerprint_dims_fp ON fingerprint_dims (method, value, dim);

CREATE TABLE fingerprint_hourly (
    hour_us INTEGER NOT NULL,
    method  TEXT NOT NULL,
    value   TEXT NOT NULL,
    count   INTEGER NOT NULL,
    PRIMARY KEY (hour_us, method, value)
) WITHOUT ROWID;

CREATE TABLE fingerprint_labels (
    method     TEXT NOT NULL,
    value      TEXT NOT NULL,
    label      TEXT NOT NULL,
    created_us INTEGER NOT NULL,
    PRIMARY KEY (method, value, label)
) WITHOUT ROWID;

CREATE TABLE users (
    username      TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL,
    created_us    INTEGER NOT NULL
);

CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,        -- SHA-256 of the token; the token itself is never stored
    username   TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    expires_us INTEGER NOT NULL
);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
