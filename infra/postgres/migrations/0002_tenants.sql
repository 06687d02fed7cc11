-- Tenants and their API keys. Keys are stored as SHA-256 digests: a key is 256 random bits, so a fast hash is safe
-- (no dictionary to guess from) and lets every request be checked with one indexed lookup.
CREATE TABLE tenants (
    id                   text PRIMARY KEY CHECK (id ~ '^[a-zA-Z0-9._-]{1,64}$'),
    name                 text NOT NULL DEFAULT '',
    requests_per_minute  integer CHECK (requests_per_minute > 0),     -- NULL: unlimited
    tokens_per_minute    integer CHECK (tokens_per_minute > 0),       -- NULL: unlimited
    monthly_token_quota  bigint CHECK (monthly_token_quota > 0),      -- NULL: unlimited
    retention_days       integer NOT NULL DEFAULT 0 CHECK (retention_days >= 0),  -- 0: no text stored anywhere
    max_priority         text NOT NULL DEFAULT 'interactive'
                         CHECK (max_priority IN ('interactive', 'batch', 'best_effort')),
    default_priority     text NOT NULL DEFAULT 'interactive'
                         CHECK (default_priority IN ('interactive', 'batch', 'best_effort')),
    default_profile      text CHECK (default_profile IN ('latency', 'throughput', 'cost')),
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name        text NOT NULL DEFAULT '',
    key_digest  bytea NOT NULL UNIQUE,
    key_prefix  text NOT NULL,            -- the first characters, so people can tell their keys apart
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);
