-- Event search off the ingest path; see the PostgreSQL migration of the same number. One table
-- here (SQLite has no partitions); retention deletes from it by id.

CREATE TABLE event_search (
    id           BLOB PRIMARY KEY,
    host         TEXT NOT NULL,
    agent_id     TEXT NOT NULL,
    src_ip       TEXT NOT NULL,
    dst_ip       TEXT NOT NULL,
    dst_port     INTEGER NOT NULL,
    server_name  TEXT,
    spiffe_id    TEXT,
    workload_key TEXT
) WITHOUT ROWID;

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
