-- Workloads list `q=` (a substring of the key): a trigram index makes `key LIKE '%…%'` an index
-- lookup instead of a walk of every key (80 ms at p99 with 100,000 workloads when nothing
-- matches, see benches/README.md).
--
-- pg_trgm is a trusted extension (PostgreSQL 13+): a role with CREATE on the database may
-- install it. It goes into `public` (or stays where it already is), never into the control
-- plane's own schema, so dropping one schema never takes another's index with it. A role that
-- may not install it gets a notice and no index: the search still works, only slower.
DO $$
DECLARE
    ext_schema text;
BEGIN
    BEGIN
        CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public;
    EXCEPTION WHEN insufficient_privilege OR feature_not_supported OR undefined_file
                   OR unique_violation THEN
        RAISE NOTICE 'pg_trgm unavailable (%): workloads q= searches without an index', SQLERRM;
    END;
    SELECT n.nspname INTO ext_schema
      FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'pg_trgm';
    IF ext_schema IS NOT NULL THEN
        EXECUTE format('CREATE INDEX workloads_key_trgm ON workloads USING gin (key %I.gin_trgm_ops)',
                       ext_schema);
    END IF;
END
$$;
