-- Event search (issue 13); see the PostgreSQL migration of the same number. The side table is
-- one table here (SQLite has no partitions); retention deletes from it by id.

ALTER TABLE events ADD COLUMN spiffe_id TEXT;
ALTER TABLE events ADD COLUMN workload_key TEXT;

UPDATE events
   SET spiffe_id = json_extract(workload, '$.spiffe_id'),
       workload_key = json_extract(workload, '$.key')
 WHERE workload IS NOT NULL;

CREATE TABLE event_fingerprints (
    method TEXT NOT NULL,
    value  TEXT NOT NULL,
    id     BLOB NOT NULL,
    PRIMARY KEY (method, value, id)
) WITHOUT ROWID;

INSERT OR IGNORE INTO event_fingerprints (method, value, id)
SELECT json_extract(f.value, '$.method'), json_extract(f.value, '$.value'), e.id
  FROM events e, json_each(e.fingerprints) f;

CREATE INDEX event_fingerprints_method ON event_fingerprints (method, id);
-- Retention deletes by id range.
CREATE INDEX event_fingerprints_id ON event_fingerprints (id);

CREATE INDEX events_host ON events (host, id);
CREATE INDEX events_agent ON events (agent_id, id);
CREATE INDEX events_src_ip ON events (src_ip, id);
CREATE INDEX events_dst_ip ON events (dst_ip, id);
CREATE INDEX events_dst_port ON events (dst_port, id);
CREATE INDEX events_server_name ON events (server_name, id) WHERE server_name IS NOT NULL;
CREATE INDEX events_spiffe_id ON events (spiffe_id, id) WHERE spiffe_id IS NOT NULL;
CREATE INDEX events_workload_key ON events (workload_key, id) WHERE workload_key IS NOT NULL;
