-- The durable bus: consumers' cursors become (xid, seq) pairs and lag is counted, not scanned
-- (issue 12, throughput; the PostgreSQL migration of the same number explains the order). SQLite
-- has one writer, so commit order is seq order already: bus_heads keeps numbering the rows and
-- xid stays 0, which makes (xid, seq) order seq order. The SQL the two backends share reads and
-- checkpoints (xid, seq) alike.

ALTER TABLE bus_log ADD COLUMN xid INTEGER NOT NULL DEFAULT 0;
DROP INDEX bus_log_part;
CREATE INDEX bus_log_order ON bus_log (topic, part, xid, seq);

-- A group's cursor is (xid, seq); passed_* count what its cursor moved past (handled or
-- dead-lettered), so its lag is what the topic's counters hold beyond that.
ALTER TABLE bus_partitions ADD COLUMN xid INTEGER NOT NULL DEFAULT 0;
ALTER TABLE bus_partitions ADD COLUMN passed_rows INTEGER NOT NULL DEFAULT 0;
ALTER TABLE bus_partitions ADD COLUMN passed_items INTEGER NOT NULL DEFAULT 0;

-- Rows and items ever appended to a topic (one shard here: one writer).
CREATE TABLE bus_counts (
    topic TEXT NOT NULL,
    shard INTEGER NOT NULL,
    log_rows  INTEGER NOT NULL,
    log_items INTEGER NOT NULL,
    PRIMARY KEY (topic, shard)
);
-- Rows and items trimmed from a partition: where a group registered later starts counting.
CREATE TABLE bus_trimmed (
    topic TEXT NOT NULL,
    part  INTEGER NOT NULL,
    log_rows  INTEGER NOT NULL DEFAULT 0,
    log_items INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (topic, part)
);

-- Counting starts with what the log holds now: what was trimmed before is in nobody's lag.
INSERT INTO bus_counts (topic, shard, log_rows, log_items)
SELECT topic, 0, count(*), coalesce(sum(items), 0) FROM bus_log GROUP BY topic;
INSERT INTO bus_trimmed (topic, part)
SELECT DISTINCT topic, part FROM bus_partitions;
UPDATE bus_partitions SET
    passed_rows = (SELECT count(*) FROM bus_log l
                   WHERE l.topic = bus_partitions.topic AND l.part = bus_partitions.part
                     AND l.seq <= bus_partitions.seq),
    passed_items = (SELECT coalesce(sum(l.items), 0) FROM bus_log l
                    WHERE l.topic = bus_partitions.topic AND l.part = bus_partitions.part
                      AND l.seq <= bus_partitions.seq);
