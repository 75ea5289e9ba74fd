-- Event search (issue 13): the events API filters by every flow field, identity, workload and
-- fingerprint, newest first. Each filter has a btree index ending in the id, so "this value,
-- newest first, after this cursor" is a backward index range scan in every daily partition
-- (and a time range prunes partitions: the id is the time).
--
-- The resolved SPIFFE ID and the workload key get columns of their own (they are also inside the
-- workload JSON, which is not queried). Fingerprints go to a side table, one row per
-- (event, method, value), partitioned exactly like `events` (same bounds, same names with
-- `event_fingerprints` for `events`), so retention drops both together.
--
-- Upgrade cost: existing events are backfilled (the columns from their workload JSON, the side
-- table from their fingerprints JSON) and every index is built in this migration; on a large
-- database it takes minutes, during which the control plane does not start.

ALTER TABLE events ADD COLUMN spiffe_id text COLLATE "C";
ALTER TABLE events ADD COLUMN workload_key text COLLATE "C";

UPDATE events
   SET spiffe_id = workload::jsonb ->> 'spiffe_id',
       workload_key = workload::jsonb ->> 'key'
 WHERE workload IS NOT NULL;

CREATE TABLE event_fingerprints (
    method text COLLATE "C" NOT NULL,
    value  text COLLATE "C" NOT NULL,
    id     uuid NOT NULL,
    PRIMARY KEY (method, value, id)
) PARTITION BY RANGE (id);

-- One side partition per existing events partition, with the same bounds.
DO $$
DECLARE
    p record;
BEGIN
    FOR p IN
        SELECT c.relname::text AS name, pg_get_expr(c.relpartbound, c.oid) AS bound
          FROM pg_inherits i
          JOIN pg_class c ON c.oid = i.inhrelid
          JOIN pg_class t ON t.oid = i.inhparent
          JOIN pg_namespace n ON n.oid = t.relnamespace
         WHERE t.relname = 'events' AND n.nspname = current_schema()
    LOOP
        IF p.name LIKE 'events\_p%' THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF event_fingerprints %s',
                           'event_fingerprints' || substr(p.name, 7), p.bound);
        END IF;
    END LOOP;
END
$$;

INSERT INTO event_fingerprints (method, value, id)
SELECT DISTINCT f ->> 'method', f ->> 'value', e.id
  FROM events e, jsonb_array_elements(e.fingerprints::jsonb) f;

CREATE INDEX event_fingerprints_method ON event_fingerprints (method, id);

CREATE INDEX events_host ON events (host, id);
CREATE INDEX events_agent ON events (agent_id, id);
CREATE INDEX events_src_ip ON events (src_ip, id);
CREATE INDEX events_dst_ip ON events (dst_ip, id);
CREATE INDEX events_dst_port ON events (dst_port, id);
CREATE INDEX events_server_name ON events (server_name, id) WHERE server_name IS NOT NULL;
CREATE INDEX events_spiffe_id ON events (spiffe_id, id) WHERE spiffe_id IS NOT NULL;
CREATE INDEX events_workload_key ON events (workload_key, id) WHERE workload_key IS NOT NULL;
