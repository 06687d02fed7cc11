-- A tenant's response-cache opt-ins (issue 8). The defaults are the safe ones: entries stay in the tenant's own scope,
-- and only reproducible requests (temperature 0 or a fixed seed) are cached.
ALTER TABLE tenants
    -- NULL: the tenant's own scope. A name: the tenant reads and writes the entries of this shared scope, with every
    -- other tenant that opted in to the same name.
    ADD COLUMN cache_shared_scope text CHECK (cache_shared_scope ~ '^[a-zA-Z0-9._-]{1,64}$'),
    -- true: sampled requests (temperature > 0, no seed) are cached too, one sample standing in for all.
    ADD COLUMN cache_sampled boolean NOT NULL DEFAULT false;
