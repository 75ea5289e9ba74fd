-- Discovered workloads and registration templates (identity service, issue 13). See the SQLite
-- migration of the same number for the meaning of each column.

CREATE TABLE workloads (
    key         text COLLATE "C" PRIMARY KEY,
    kind        text COLLATE "C" NOT NULL,
    namespace   text COLLATE "C",
    facts       text NOT NULL,
    selectors   text NOT NULL,
    facts_us    bigint NOT NULL,
    spiffe_id   text COLLATE "C",
    resolved_by text,
    resolved_us bigint
) WITH (fillfactor = 80);
CREATE INDEX workloads_namespace ON workloads (namespace, key) WHERE namespace IS NOT NULL;
CREATE INDEX workloads_spiffe_id ON workloads (spiffe_id, key) WHERE spiffe_id IS NOT NULL;

CREATE TABLE workload_rollups (
    key           text COLLATE "C" NOT NULL,
    dim           text COLLATE "C" NOT NULL,
    dim_value     text COLLATE "C" NOT NULL,
    first_seen_us bigint NOT NULL,
    last_seen_us  bigint NOT NULL,
    count         bigint NOT NULL,
    PRIMARY KEY (key, dim, dim_value)
) WITH (fillfactor = 70);
CREATE INDEX workload_rollups_by_dim ON workload_rollups (dim, dim_value, key);

CREATE TABLE registration_templates (
    id          text COLLATE "C" PRIMARY KEY,
    pattern     text NOT NULL,
    selectors   text NOT NULL,
    description text,
    created_by  text NOT NULL,
    created_us  bigint NOT NULL,
    key_sha256  text NOT NULL UNIQUE
);
