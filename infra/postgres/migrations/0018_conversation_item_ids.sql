-- A Responses API item_reference may name an item of a conversation: found by its id.
CREATE INDEX conversation_items_id ON conversation_items (id);
