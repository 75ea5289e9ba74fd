-- Roll-ups leave the ingest transaction. An ingest transaction appends its events and one record
-- of its pre-aggregated roll-up deltas (only events that were new); the roll-up stage folds
-- records into fingerprints / fingerprint_dims / fingerprint_hourly in large merged chunks and
-- deletes them in the same transaction, so each delta is applied exactly once, crash or not.
CREATE TABLE rollup_pending (
    id         bigserial PRIMARY KEY,
    events     bigint NOT NULL,      -- new events the record covers
    created_us bigint NOT NULL,
    deltas     bytea NOT NULL        -- store::rollup::Rollups::encode
);
-- Written once, read once, deleted: compressing it would only cost ingest CPU.
ALTER TABLE rollup_pending ALTER COLUMN deltas SET STORAGE EXTERNAL;
