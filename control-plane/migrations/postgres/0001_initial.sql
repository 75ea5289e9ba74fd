-- HaIS control plane, PostgreSQL schema. Times are µs since the Unix epoch (bigint), as in SQLite.
-- Text keys use COLLATE "C" (byte order): prefix search becomes an index range scan and keyset
-- pagination orders exactly as in SQLite.

-- Events are range partitioned by their UUIDv7 id, whose leading 48 bits are the millisecond
-- timestamp: one partition per calendar month, created on demand by the ingest path. The id alone
-- is the primary key, so a replay is detected whatever timestamp it carries.
CREATE TABLE events (
    id           uuid NOT NULL,
    ts_us        bigint NOT NULL,
    agent_id     text NOT NULL,
    host         text NOT NULL,
    src_ip       text NOT NULL,
    src_port     integer NOT NULL,
    dst_ip       text NOT NULL,
    dst_port     integer NOT NULL,
    transport    text NOT NULL,
    server_name  text,
    -- JSON text rather than jsonb: stored for the record, never queried inside, and parsing to
    -- jsonb would cost ingest throughput for nothing.
    fingerprints text NOT NULL,
    workload     text,
    received_us  bigint NOT NULL,
    PRIMARY KEY (id)
) PARTITION BY RANGE (id);

-- Roll-ups are updated in place on every batch; a lower fillfactor leaves room for HOT updates
-- (no indexed column changes on update).
CREATE TABLE fingerprints (
    method        text COLLATE "C" NOT NULL,
    value         text COLLATE "C" NOT NULL,
    part_a        text COLLATE "C",
    part_b        text COLLATE "C",
    part_c        text COLLATE "C",
    first_seen_us bigint NOT NULL,
    last_seen_us  bigint NOT NULL,
    count         bigint NOT NULL,
    PRIMARY KEY (method, value)
) WITH (fillfactor = 70);
CREATE INDEX fingerprints_value ON fingerprints (value);
CREATE INDEX fingerprints_part_a ON fingerprints (part_a);
CREATE INDEX fingerprints_part_b ON fingerprints (part_b);
CREATE INDEX fingerprints_part_c ON fingerprints (part_c);

CREATE TABLE fingerprint_dims (
    dim           text COLLATE "C" NOT NULL,
    dim_value     text COLLATE "C" NOT NULL,
    method        text COLLATE "C" NOT NULL,
    value         text COLLATE "C" NOT NULL,
    first_seen_us bigint NOT NULL,
    last_seen_us  bigint NOT NULL,
    count         bigint NOT NULL,
    PRIMARY KEY (dim, dim_value, method, value)
) WITH (fillfactor = 70);
CREATE INDEX fingerprint_dims_fp ON fingerprint_dims (method, value, dim);

CREATE TABLE fingerprint_hourly (
    hour_us bigint NOT NULL,
    method  text COLLATE "C" NOT NULL,
    value   text COLLATE "C" NOT NULL,
    count   bigint NOT NULL,
    PRIMARY KEY (hour_us, method, value)
) WITH (fillfactor = 70);

CREATE TABLE fingerprint_labels (
    method     text COLLATE "C" NOT NULL,
    value      text COLLATE "C" NOT NULL,
    label      text COLLATE "C" NOT NULL,
    created_us bigint NOT NULL,
    PRIMARY KEY (method, value, label)
);

CREATE TABLE users (
    username      text PRIMARY KEY,
    password_hash text NOT NULL,
    role          text NOT NULL,
    created_us    bigint NOT NULL
);

CREATE TABLE refresh_tokens (
    token_hash text PRIMARY KEY,
    username   text NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    expires_us bigint NOT NULL
);

CREATE TABLE settings (
    key   text PRIMARY KEY,
    value text NOT NULL
);
