-- Principals (issue 10): API keys. Only a SHA-256 of each token is kept: tokens are 256
-- random bits, so a fast hash is as safe as a slow one and keeps every request cheap.

CREATE TABLE api_keys (
    id            uuid PRIMARY KEY,
    name          text NOT NULL,
    tenant        text NOT NULL DEFAULT 'default',
    scopes        text[] NOT NULL,
    token_hash    bytea NOT NULL UNIQUE,
    -- the token's first characters, to tell keys apart in listings
    token_prefix  text NOT NULL,
    created_at    timestamptz NOT NULL,
    created_by    text NOT NULL,
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz,
    -- requests per minute for this key instead of limits.per_minute (0: no limit)
    rate_per_minute integer
);


-- Who did what, from where, in which request (the actor is the authenticated principal).
ALTER TABLE audit_log ADD COLUMN tenant text NOT NULL DEFAULT 'default';
ALTER TABLE audit_log ADD COLUMN address text;
ALTER TABLE audit_log ADD COLUMN request_id text;
CREATE INDEX audit_log_id_desc ON audit_log (id DESC);
