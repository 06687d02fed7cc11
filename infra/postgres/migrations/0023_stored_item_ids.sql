-- An item_reference (Codex and the Vercel AI SDK send them) names an item of the tenant's stored conversations by its
-- id. 0014's index held every value of every conversation, and the lookup did not use it: it read the tenant's stored
-- responses latest first, all of them for an early turn or an unknown id (about 0.7 s for 200,000). The lookup now
-- finds the responses holding the id by this index, which holds the items' ids alone.
DROP INDEX IF EXISTS stored_responses_items;
CREATE INDEX stored_responses_item_ids ON stored_responses
    USING gin ((jsonb_path_query_array(conversation, '$[*].id')) jsonb_path_ops);
