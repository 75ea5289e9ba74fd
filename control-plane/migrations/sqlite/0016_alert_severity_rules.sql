-- The alert service's severity rules (issue 15): a detection matching every field a rule sets
-- (source, rule, identity glob, fingerprint) gets the rule's severity before it is folded into
-- an alert; the oldest matching rule wins.
CREATE TABLE alert_severity_rules (
    id               TEXT PRIMARY KEY,        -- UUIDv7: id order is creation order
    source           TEXT,                    -- correlation | policy | threat
    rule             TEXT,                    -- detector, policy or feed
    identity_pattern TEXT,                    -- glob (`*`)
    fingerprint      TEXT,
    severity         INTEGER NOT NULL,        -- 0 info … 4 critical
    reason           TEXT NOT NULL,
    created_by       TEXT NOT NULL,
    created_us       INTEGER NOT NULL
);
