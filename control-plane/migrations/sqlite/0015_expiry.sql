-- Findings and threat matches age out (`store::expiry`): a retention pass deletes those not seen
-- for `findings_retention_days`, and finds them by when they were last seen.
CREATE INDEX correlation_findings_last_seen ON correlation_findings (last_seen_us);
CREATE INDEX threat_matches_last_seen ON threat_matches (last_seen_us);
