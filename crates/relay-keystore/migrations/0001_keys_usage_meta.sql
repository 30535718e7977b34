-- relay-keystore schema 1: keys, their usage totals, and the admin token's digest.
-- Names and tenants are 1 to 64 characters of A-Z a-z 0-9 . _ - (checked by the relay).
CREATE TABLE relay_keys (
    name        TEXT PRIMARY KEY,
    -- SHA-256 of the key bytes, lowercase hex; never the key.
    sha256      TEXT NOT NULL UNIQUE,
    tenant      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    -- Unix seconds; 0 means never.
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT,
    origin      TEXT NOT NULL CHECK (origin IN ('preconfigured', 'created'))
);

-- Totals over every instance: each adds its deltas (messages = messages + $n).
CREATE TABLE relay_key_usage (
    name      TEXT PRIMARY KEY REFERENCES relay_keys (name),
    messages  BIGINT NOT NULL DEFAULT 0,
    bytes     BIGINT NOT NULL DEFAULT 0,
    rooms     BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE relay_keystore_meta (
    key    TEXT PRIMARY KEY,
    value  BYTEA NOT NULL
);
