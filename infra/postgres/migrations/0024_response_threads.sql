-- A response that continues a stored one (previous_response_id) stores only the items it adds (its input, then its
-- output), not the whole conversation before it again: a chain of n responses stored its first turns n times, so its
-- storage grew with the square of its length (agent loops run hundreds of turns). Its conversation is read by walking
-- previous_id back to the chain's first response.
--
-- A thread is a first response and every response continuing it, directly or not. Its text is kept while the tenant's
-- retention covers its latest response (last_at), as each response's copy of the conversation was kept while its own
-- age was covered: the sweep deletes whole threads. A response past its own retention, or deleted by its tenant, is
-- no longer readable by id, but its items stay while later responses of the thread read them (a deleted one that none
-- continues is removed at once).
CREATE TABLE response_threads (
    id        text PRIMARY KEY,  -- the id of its first response
    tenant_id text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    last_at   timestamptz NOT NULL DEFAULT now()  -- when its latest response was stored
);
CREATE INDEX response_threads_tenant_last ON response_threads (tenant_id, last_at);

-- each response stored before holds its whole conversation: a thread of its own
INSERT INTO response_threads (id, tenant_id, last_at) SELECT id, tenant_id, created_at FROM stored_responses;
ALTER TABLE stored_responses
    ADD COLUMN thread_id   text REFERENCES response_threads (id) ON DELETE CASCADE,
    ADD COLUMN previous_id text,  -- the response it continues, whose conversation comes before its own items
    -- how many items its whole conversation holds (the earlier responses' included); for those stored before, the
    -- length of their conversation, counted when one is continued rather than here (that would read every one)
    ADD COLUMN item_count  integer,
    ADD COLUMN deleted     boolean NOT NULL DEFAULT false;  -- deleted by its tenant, kept while others continue it
UPDATE stored_responses SET thread_id = id;
ALTER TABLE stored_responses ALTER COLUMN thread_id SET NOT NULL;
COMMENT ON COLUMN stored_responses.conversation IS
    'the items it adds to the conversation of the response it continues (previous_id), or the whole conversation';
CREATE INDEX stored_responses_thread ON stored_responses (thread_id);
CREATE INDEX stored_responses_previous ON stored_responses (previous_id) WHERE previous_id IS NOT NULL;
-- the sweep finds threads past retention now, not responses
DROP INDEX stored_responses_tenant_created;
