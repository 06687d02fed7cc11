-- Keys of the admin HTTP API (/admin/v1/...): operators, not tenants. Made with
-- `python -m services.ingress.admin admin-keys create`; only the SHA-256 digest is stored, as for tenant keys.
CREATE TABLE admin_keys (
    id          text PRIMARY KEY,
    name        text NOT NULL DEFAULT '',
    key_digest  bytea NOT NULL UNIQUE,
    key_prefix  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
