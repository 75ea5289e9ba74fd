-- Account lifecycle (issue 11): users can be disabled; every login opens a session that access
-- and refresh tokens name, so logging out, disabling a user, changing a password or a role ends
-- its tokens at once; service tokens are recorded by id (the JWT's jti) so they can be listed
-- and revoked.

ALTER TABLE users ADD COLUMN disabled_us bigint;
ALTER TABLE users ADD COLUMN password_changed_us bigint;

CREATE TABLE sessions (
    id          text PRIMARY KEY,            -- UUIDv7; the access token's `sid` claim
    username    text NOT NULL,
    created_us  bigint NOT NULL,
    expires_us  bigint NOT NULL,               -- the last refresh token's expiry
    revoked_us  bigint
);
CREATE INDEX sessions_username ON sessions (username);

-- Refresh tokens now belong to a session. Tokens from before are dropped (their users log in
-- again): they name no session that could be revoked.
DELETE FROM refresh_tokens;
ALTER TABLE refresh_tokens ADD COLUMN session_id text NOT NULL DEFAULT '';
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

CREATE TABLE service_tokens (
    id          text PRIMARY KEY,            -- UUIDv7; the token's `jti` claim
    subject     text NOT NULL,
    created_by  text NOT NULL,
    created_us  bigint NOT NULL,
    expires_us  bigint NOT NULL,
    revoked_us  bigint
);

-- User names are case-insensitive from now on and stored in lower case. A name whose lower-case
-- form another user already has is left as it is (an admin can delete one of the two).
UPDATE users SET username = lower(username)
WHERE username <> lower(username)
  AND (SELECT count(*) FROM users u2 WHERE lower(u2.username) = lower(users.username)) = 1;
