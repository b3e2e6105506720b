-- Tally schema, version 6: API keys for machines (`tally apikey create|list|revoke`).
-- A key is `tally_<prefix>_<secret>`: `prefix` (16 hex characters) finds the row,
-- `secret_hash` is the SHA-256 of the whole key (the key itself is shown once, at
-- creation, and never stored). `tenant` is one tenant id or `*` (every tenant);
-- `scopes` are admin API scopes (`activity:read`, `tokens:read`, `admin`).
-- A revoked key keeps its row (`revoked_at` set) so that audits can name it.
CREATE TABLE IF NOT EXISTS api_keys (
    id          uuid        PRIMARY KEY,
    prefix      text        NOT NULL UNIQUE,
    secret_hash bytea       NOT NULL CHECK (octet_length(secret_hash) = 32),
    tenant      text        NOT NULL CHECK (tenant <> ''),
    scopes      text[]      NOT NULL,
    description text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
