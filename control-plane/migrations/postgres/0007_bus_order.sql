-- The durable bus without a global append lock (issue 12, throughput; docs/ARCHITECTURE.md, "The
-- durable bus"). Appending used to take bus_heads' row lock until commit, so that seq order was
-- commit order; that serialised the commits of every ingest transaction. Now:
-- * seq comes from a sequence (no lock; numbers are handed out in no particular commit order),
--   and each row records the top-level transaction that wrote it (xid, pg_current_xact_id());
-- * consumers read only rows whose xid is below the horizon pg_snapshot_xmin(pg_current_snapshot())
--   (every transaction with a smaller xid has ended, and no transaction can still get one), in
--   (xid, seq) order, and their cursor is an (xid, seq) pair: nothing can later commit before it.
-- Rows written before this migration keep xid 0: they were appended under the lock, so their seq
-- order is their commit order, and they all come before any new row.
--
-- Upgrading: processes of the previous version must be stopped. bus_heads is dropped so that
-- their appends fail rather than write seq numbers the sequence also hands out, and their
-- consumers would not know the (xid, seq) cursor.

CREATE SEQUENCE bus_log_seq;
SELECT setval('bus_log_seq',
              greatest(coalesce((SELECT max(next_seq) FROM bus_heads), 0),
                       coalesce((SELECT max(seq) FROM bus_log), 0)) + 1, false);
DROP TABLE bus_heads;

ALTER TABLE bus_log ADD COLUMN xid bigint NOT NULL DEFAULT 0;
ALTER TABLE bus_log ALTER COLUMN xid SET DEFAULT (pg_current_xact_id()::text::bigint);
ALTER TABLE bus_log ALTER COLUMN seq SET DEFAULT nextval('bus_log_seq');
DROP INDEX bus_log_part;
CREATE INDEX bus_log_order ON bus_log (topic, part, xid, seq);
-- Payloads are compressed with lz4 where the server has it (3-4 times smaller for event rows, whose
-- hosts, agents and fingerprints repeat; fewer TOAST chunks and WAL bytes for a few ms of CPU);
-- else they stay out of line uncompressed, as before.
DO $$
BEGIN
    IF 'lz4' = ANY (SELECT unnest(enumvals) FROM pg_settings
                    WHERE name = 'default_toast_compression') THEN
        ALTER TABLE bus_log ALTER COLUMN payload SET STORAGE EXTENDED;
        ALTER TABLE bus_log ALTER COLUMN payload SET COMPRESSION lz4;
    END IF;
END
$$;

-- A group's cursor is (xid, seq); passed_* count what its cursor moved past (handled or
-- dead-lettered), so its lag is what the topic's counters hold beyond that, without reading
-- the log.
ALTER TABLE bus_partitions ADD COLUMN xid bigint NOT NULL DEFAULT 0;
ALTER TABLE bus_partitions ADD COLUMN passed_rows bigint NOT NULL DEFAULT 0;
ALTER TABLE bus_partitions ADD COLUMN passed_items bigint NOT NULL DEFAULT 0;

-- Rows and items ever appended to a topic. One row per appending connection (shard =
-- pg_backend_pid()), so concurrent appenders never wait on each other's counter; trimming folds
-- the shards into shard 0 now and then.
CREATE TABLE bus_counts (
    topic text NOT NULL,
    shard bigint NOT NULL,
    log_rows  bigint NOT NULL,
    log_items bigint NOT NULL,
    PRIMARY KEY (topic, shard)
);
-- Rows and items trimmed from a partition: where a group registered later starts counting.
CREATE TABLE bus_trimmed (
    topic text NOT NULL,
    part  bigint NOT NULL,
    log_rows  bigint NOT NULL DEFAULT 0,
    log_items bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (topic, part)
);

-- Counting starts with what the log holds now: what was trimmed before is in nobody's lag.
INSERT INTO bus_counts (topic, shard, log_rows, log_items)
SELECT topic, 0, count(*), coalesce(sum(items), 0) FROM bus_log GROUP BY topic;
INSERT INTO bus_trimmed (topic, part)
SELECT DISTINCT topic, part FROM bus_partitions;
UPDATE bus_partitions p SET
    passed_rows = (SELECT count(*) FROM bus_log l
                   WHERE l.topic = p.topic AND l.part = p.part AND l.seq <= p.seq),
    passed_items = (SELECT coalesce(sum(l.items), 0) FROM bus_log l
                    WHERE l.topic = p.topic AND l.part = p.part AND l.seq <= p.seq);
