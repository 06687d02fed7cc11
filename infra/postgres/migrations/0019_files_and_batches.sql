-- OpenAI's Files API (/v1/files) and Batch API (/v1/batches), for tenants that opted in to retention: a file holds
-- prompts or answers. A file is kept until its expires_at (the upload's expires_after, else its tenant's retention) or
-- until it is deleted; a batch, its results and its output files for the tenant's retention after it was created.
CREATE TABLE files (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    purpose     text NOT NULL,  -- batch (uploaded), batch_output (a batch's output or error file)
    filename    text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,  -- set by the upload's expires_after; the tenant's retention applies as well
    content     bytea NOT NULL
);
CREATE INDEX files_tenant_created ON files (tenant_id, created_at);

CREATE TABLE batches (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    batch       jsonb NOT NULL,  -- the batch object as OpenAI returns it, less request_counts and usage (counted)
    finisher    text  -- the ingress instance running it while it is validating, in_progress, finalizing or cancelling
);
CREATE INDEX batches_tenant_created ON batches (tenant_id, created_at);
CREATE INDEX batches_unfinished ON batches (created_at)
    WHERE batch->>'status' IN ('validating', 'in_progress', 'finalizing', 'cancelling');

-- one row per request of a batch that has its answer (or its error): what a run taken over does not run again
CREATE TABLE batch_results (
    batch_id       text NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    line           int NOT NULL,  -- the request's line in the input file, from 1
    succeeded      boolean NOT NULL,  -- a 200: the output file's; else the error file's
    result         text NOT NULL,  -- the output line, JSON
    input_tokens   int NOT NULL DEFAULT 0,
    cached_tokens  int NOT NULL DEFAULT 0,
    output_tokens  int NOT NULL DEFAULT 0,
    reasoning_tokens int NOT NULL DEFAULT 0,
    PRIMARY KEY (batch_id, line)
);
