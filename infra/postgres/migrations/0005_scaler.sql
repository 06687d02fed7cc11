-- The scaler: demand history per model (the forecast learns from it), the forecast made for each bucket (its accuracy
-- is measured against the demand that came), and every scaling decision with its reason.
CREATE TABLE scaler_demand (
    model          text NOT NULL,
    bucket_start   timestamptz NOT NULL,
    bucket_seconds integer NOT NULL CHECK (bucket_seconds > 0),
    requests       bigint NOT NULL CHECK (requests >= 0),
    PRIMARY KEY (model, bucket_start)
);

CREATE TABLE scaler_forecasts (
    model             text NOT NULL,
    bucket_start      timestamptz NOT NULL,
    requests_per_hour double precision NOT NULL,
    basis             text NOT NULL,
    PRIMARY KEY (model, bucket_start)
);

CREATE TABLE scaler_decisions (
    id                bigserial PRIMARY KEY,
    model             text NOT NULL,
    decided_at        timestamptz NOT NULL,
    policy            text NOT NULL,
    tier              text NOT NULL CHECK (tier IN ('hot', 'warm', 'cold')),
    action            text NOT NULL CHECK (action IN ('scale_up', 'scale_down', 'hold')),
    current_replicas  integer NOT NULL,
    desired_replicas  integer NOT NULL,
    forecast_per_hour double precision,
    reason            text NOT NULL,
    signals           jsonb NOT NULL
);
CREATE INDEX scaler_decisions_model_time ON scaler_decisions (model, decided_at DESC);
