-- Model registry, worker side: versions and variants of each model, and demand tiers (hot / warm / cold).

-- Every version of a model's weights the platform has served; models.version names the current one.
CREATE TABLE model_versions (
    model_id   text NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    version    text NOT NULL,
    source     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_id, version)
);

-- How a model can be run: precision and quantization. A request (CompletionRequested.variant) or the model's default
-- picks one; quantization is the vLLM method name (NULL: unquantized), dtype the activation precision it needs.
CREATE TABLE model_variants (
    model_id     text NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    variant      text NOT NULL CHECK (variant ~ '^[a-z0-9_-]+$'),
    quantization text,
    dtype        text NOT NULL,
    is_default   boolean NOT NULL DEFAULT false,
    enabled      boolean NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_id, variant)
);
CREATE UNIQUE INDEX model_variants_one_default ON model_variants (model_id) WHERE is_default;

-- Requests served per model and hour, written by the workers; the tiers are computed from it.
CREATE TABLE model_demand (
    model_id text NOT NULL,
    hour     timestamptz NOT NULL,
    requests bigint NOT NULL DEFAULT 0 CHECK (requests >= 0),
    PRIMARY KEY (model_id, hour)
);

-- The latest tier of each model with the replica count it calls for (thresholds and counts are settings).
CREATE TABLE model_tiers (
    model_id          text PRIMARY KEY REFERENCES models (id) ON DELETE CASCADE,
    tier              text NOT NULL CHECK (tier IN ('hot', 'warm', 'cold')),
    requests_per_hour double precision NOT NULL,
    replicas          integer NOT NULL CHECK (replicas >= 0),
    computed_at       timestamptz NOT NULL DEFAULT now()
);
