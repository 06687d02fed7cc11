-- An item_reference (Codex and the Vercel AI SDK send them) names an item of the tenant's stored conversations by its
-- id. Without an index the lookup read every stored response of the tenant: about 70 ms for 20,000, and past the 2 s
-- lookup timeout for a few hundred thousand. This indexes the ids alone, not the text.
CREATE INDEX stored_responses_item_ids ON stored_responses
    USING gin ((jsonb_path_query_array(conversation, '$[*].id')) jsonb_path_ops);
