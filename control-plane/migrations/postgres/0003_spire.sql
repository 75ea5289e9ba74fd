-- Agent enrollment (spire service), PostgreSQL. The CA itself lives in `settings` (key `spire_ca`), written
-- once by the first process to start, so processes sharing the database share the CA.

-- One-time join tokens. Only the SHA-256 of the secret is stored; `used_us` is set exactly once,
-- by the enrollment that consumes the token (a conditional UPDATE, so two concurrent
-- enrollments with one token cannot both win).
CREATE TABLE join_tokens (
    id          text PRIMARY KEY,          -- 16 hex chars, the public half of the token
    secret_hash text NOT NULL,             -- hex SHA-256 of the secret
    description text,
    created_by  text NOT NULL,
    created_us  bigint NOT NULL,
    expires_us  bigint NOT NULL,
    used_us     bigint,
    agent_id    text                       -- the agent that consumed it
);

-- Enrolled agents and their last heartbeat (hb_* columns: the fields of wire::Heartbeat).
CREATE TABLE agents (
    id                  text COLLATE "C" PRIMARY KEY, -- UUIDv7; byte order = keyset order
    spiffe_id           text NOT NULL UNIQUE,
    hostname            text NOT NULL,
    agent_version       text NOT NULL,
    token_id            text NOT NULL,
    enrolled_us         bigint NOT NULL,
    svid_serial         text NOT NULL,     -- hex serial of the newest SVID issued
    svid_expires_us     bigint NOT NULL,
    revoked_us          bigint,
    last_heartbeat_us   bigint,           -- control-plane clock at receipt
    last_addr           text,              -- peer address of that heartbeat
    hb_version          text,
    hb_uptime_s         bigint,
    hb_interfaces       text,              -- JSON array of strings
    hb_packets          bigint,
    hb_bytes            bigint,
    hb_drops            bigint,
    hb_parse_errors     bigint,
    hb_spool_depth      bigint,
    hb_spool_dropped    bigint,
    hb_svid_expiry_unix bigint,
    hb_sent_at_ms       bigint,
    hb_hostname         text
);
CREATE INDEX agents_revoked ON agents (revoked_us) WHERE revoked_us IS NOT NULL;
