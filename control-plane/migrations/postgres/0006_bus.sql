-- The durable bus (issue 12): the database is the log, the live bus only wakes consumers up.
-- A publisher appends rows to bus_log in the same transaction as the state change they report
-- (a transactional outbox: for fingerprint events, the ingest transaction), so a committed
-- change is always published and a rolled-back one never is.

-- Next sequence number per topic. Appending takes this row's lock until commit, so within a
-- topic sequence order is commit order and a consumer's cursor can never skip a row that
-- commits later with a smaller number.
CREATE TABLE bus_heads (
    topic    text PRIMARY KEY,
    next_seq bigint NOT NULL
);

-- One row per (publish, partition): the items of one partition, encoded together.
CREATE TABLE bus_log (
    topic      text NOT NULL,
    seq        bigint NOT NULL,
    part       bigint  NOT NULL,     -- hash of the items' key (SPIFFE ID / workload key) mod 16
    items      bigint  NOT NULL,     -- how many items the payload holds
    created_us bigint NOT NULL,
    payload    bytea NOT NULL,
    PRIMARY KEY (topic, seq)
);
CREATE INDEX bus_log_part ON bus_log (topic, part, seq);
ALTER TABLE bus_log ALTER COLUMN payload SET STORAGE EXTERNAL;

-- A consumer group's cursor and lease per partition. A member owns a partition while its lease
-- runs; committing work moves the cursor only if the member still owns it and the cursor is
-- where the member read from (fencing), in the same transaction as the work's effects.
CREATE TABLE bus_partitions (
    grp            text NOT NULL,
    topic          text NOT NULL,
    part           bigint  NOT NULL,
    seq            bigint NOT NULL DEFAULT 0,
    owner          text,
    lease_until_us bigint NOT NULL DEFAULT 0,
    handled        bigint NOT NULL DEFAULT 0,   -- items whose effects were committed
    PRIMARY KEY (grp, topic, part)
);

-- Members of a group alive recently, so each can take its share of partitions.
CREATE TABLE bus_members (
    grp     text NOT NULL,
    topic   text NOT NULL,
    member  text NOT NULL,
    seen_us bigint NOT NULL,
    PRIMARY KEY (grp, topic, member)
);

-- Rows a group gave up on after its retries (or could not decode). Replay is requested through
-- the API and done by a member of the group, which deletes the row when the replay commits.
CREATE TABLE bus_dead_letters (
    id                  text PRIMARY KEY,   -- UUIDv7
    grp                 text NOT NULL,
    topic               text NOT NULL,
    part                bigint  NOT NULL,
    seq                 bigint NOT NULL,
    items               bigint  NOT NULL,
    payload             bytea NOT NULL,
    error               text NOT NULL,
    attempts            bigint  NOT NULL,
    created_us          bigint NOT NULL,
    replay_requested_us bigint,
    claimed_by          text,
    claimed_until_us    bigint NOT NULL DEFAULT 0
);
CREATE INDEX bus_dead_letters_grp ON bus_dead_letters (grp, id);
