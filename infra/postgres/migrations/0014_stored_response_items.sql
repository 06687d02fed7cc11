-- Responses API input may name an item of a stored response by its id (item_reference): this index finds the
-- responses whose conversation holds an item with that id (conversation @> '[{"id": ...}]').
CREATE INDEX stored_responses_items ON stored_responses USING gin (conversation jsonb_path_ops);
