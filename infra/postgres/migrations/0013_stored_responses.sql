-- Responses API answers kept for previous_response_id and GET /v1/responses/{id} (issue 4: a tenant may opt in to
-- retention for a number of days). Only tenants whose retention_days is above 0 store any; a response is readable
-- for retention_days after it was made, as the tenant's setting stands now, and the ingress deletes it after that (or
-- as soon as the tenant's retention is turned off).
CREATE TABLE stored_responses (
    id            text PRIMARY KEY,
    tenant_id     text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    conversation  jsonb NOT NULL,  -- the items that led to it (input, and the earlier responses'), then its output
    response      jsonb NOT NULL   -- the response object, as the client got it
);
CREATE INDEX stored_responses_tenant_created ON stored_responses (tenant_id, created_at);
