-- The alert service's severity rules (issue 15). See the SQLite migration of the same number.
CREATE TABLE alert_severity_rules (
    id               text COLLATE "C" PRIMARY KEY,  -- UUIDv7: id order is creation order
    source           text,                    -- correlation | policy | threat
    rule             text,                    -- detector, policy or feed
    identity_pattern text,                    -- glob (`*`)
    fingerprint      text,
    severity         bigint NOT NULL,         -- 0 info … 4 critical
    reason           text NOT NULL,
    created_by       text NOT NULL,
    created_us       bigint NOT NULL
);
