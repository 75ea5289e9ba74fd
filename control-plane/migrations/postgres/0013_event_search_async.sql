-- Event search off the ingest path (issue 13; issue 3's ingest rate).
--
-- 0008 indexed every filter on `events` itself, so each ingest transaction maintained eight more
-- btrees plus `event_fingerprints`: PostgreSQL ingest fell from 115k to 46k events/s. Now
-- `events` keeps its primary key only, and the filter columns are copied, with their indexes,
-- into `event_search`, one row per event, which the ja4 service's durable consumer group
-- `search` of `fingerprint.events` writes after the event commits (with `event_fingerprints`,
-- which ingest no longer writes either). Search therefore lags ingest by the group's lag
-- (milliseconds when it keeps up; `hais_bus_group_lag_items{group="search"}` says).
--
-- Like `event_fingerprints`, `event_search` is partitioned exactly like `events` (same bounds,
-- `event_search_pYYYYMMDD` for `events_pYYYYMMDD`), created with it and retired with it.
--
-- Upgrade: the rows of every existing event are copied here, then the old indexes are dropped.
-- The group `search` starts at the beginning of what the bus log still holds, so events stored
-- shortly before the upgrade are indexed again; the primary keys make that a no-op.

CREATE TABLE event_search (
    id           uuid NOT NULL,
    host         text COLLATE "C" NOT NULL,
    agent_id     text COLLATE "C" NOT NULL,
    src_ip       text COLLATE "C" NOT NULL,
    dst_ip       text COLLATE "C" NOT NULL,
    dst_port     integer NOT NULL,
    server_name  text COLLATE "C",
    spiffe_id    text COLLATE "C",
    workload_key text COLLATE "C",
    PRIMARY KEY (id)
) PARTITION BY RANGE (id);

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
            EXECUTE format('CREATE TABLE %I PARTITION OF event_search %s',
                           'event_search' || substr(p.name, 7), p.bound);
        END IF;
    END LOOP;
END
$$;

INSERT INTO event_search
       (id, host, agent_id, src_ip, dst_ip, dst_port, server_name, spiffe_id, workload_key)
SELECT id, host, agent_id, src_ip, dst_ip, dst_port, server_name, spiffe_id, workload_key
  FROM events;

DROP INDEX events_host;
DROP INDEX events_agent;
DROP INDEX events_src_ip;
DROP INDEX events_dst_ip;
DROP INDEX events_dst_port;
DROP INDEX events_server_name;
DROP INDEX events_spiffe_id;
DROP INDEX events_workload_key;

CREATE INDEX event_search_host ON event_search (host, id);
CREATE INDEX event_search_agent ON event_search (agent_id, id);
CREATE INDEX event_search_src_ip ON event_search (src_ip, id);
CREATE INDEX event_search_dst_ip ON event_search (dst_ip, id);
CREATE INDEX event_search_dst_port ON event_search (dst_port, id);
CREATE INDEX event_search_server_name ON event_search (server_name, id)
    WHERE server_name IS NOT NULL;
CREATE INDEX event_search_spiffe_id ON event_search (spiffe_id, id) WHERE spiffe_id IS NOT NULL;
CREATE INDEX event_search_workload_key ON event_search (workload_key, id)
    WHERE workload_key IS NOT NULL;
