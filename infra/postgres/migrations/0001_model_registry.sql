-- The model registry: the models the platform serves. Seeded from infra/models/models.yaml at start-up.
CREATE TABLE models (
    id            text PRIMARY KEY CHECK (id ~ '^[a-zA-Z0-9._-]+$'),
    source        text NOT NULL,
    version       text NOT NULL,
    max_model_len integer NOT NULL CHECK (max_model_len > 0),
    is_default    boolean NOT NULL DEFAULT false,
    enabled       boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX models_one_default ON models (is_default) WHERE is_default;
