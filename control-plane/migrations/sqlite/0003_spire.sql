-- Agent enrollment (spire service). The CA itself lives in `settings` (key `spire_ca`), written
-- once by the first process to start, so processes sharing the database share the CA.

-- One-time join tokens. Only the SHA-256 of the secret is stored; `used_us` is set exactly once,
-- by the enrollment that consumes the token (a conditional UPDATE, so two concurrent
-- enrollments with one token cannot both win).
CREATE TABLE join_tokens (
    id          TEXT PRIMARY KEY,          -- 16 hex chars, the public half of the token
    secret_hash TEXT NOT NULL,             -- hex SHA-256 of the secret
    description TEXT,
    created_by  TEXT NOT NULL,
    created_us  INTEGER NOT NULL,
    expires_us  INTEGER NOT NULL,
    used_us     INTEGER,
    agent_id    TEXT                       -- the agent that consumed it
);

-- Enrolled agents and their last heartbeat (hb_* columns: the fields of wire::Heartbeat).
CREATE TABLE agents (
    id                  TEXT PRIMARY KEY,  -- UUIDv7 chosen by the control plane
    spiffe_id           TEXT NOT NULL UNIQUE,
    hostname            TEXT NOT NULL,
    agent_version       TEXT NOT NULL,
    token_id            TEXT NOT NULL,
    enrolled_us         INTEGER NOT NULL,
    svid_serial         TEXT NOT NULL,     -- hex serial of the newest SVID issued
    svid_expires_us     INTEGER NOT NULL,
    revoked_us          INTEGER,
    last_heartbeat_us   INTEGER,           -- control-plane clock at receipt
    last_addr           TEXT,              -- peer address of that heartbeat
    hb_version          TEXT,
    hb_uptime_s         INTEGER,
    hb_interfaces       TEXT,              -- JSON array of strings
    hb_packets          INTEGER,
    hb_bytes            INTEGER,
    hb_drops            INTEGER,
    hb_parse_errors     INTEGER,
    hb_spool_depth      INTEGER,
    hb_spool_dropped    INTEGER,
    hb_svid_expiry_unix INTEGER,
    hb_sent_at_ms       INTEGER,
    hb_hostname         TEXT
);
CREATE INDEX agents_revoked ON agents (revoked_us) WHERE revoked_us IS NOT NULL;
