-- The conversations' retention sweep (every ingress instance, every 5 minutes) found the items past their tenant's
-- retention by joining every item to its conversation and tenant: a read of the whole table at every pass, its cost
-- growing with what is kept rather than with what is deleted. Each item now carries its tenant, so that the sweep
-- finds them tenant by tenant in this index, as it finds the conversations in conversations_tenant_updated.
ALTER TABLE conversation_items ADD COLUMN tenant_id text;
UPDATE conversation_items i SET tenant_id = c.tenant_id FROM conversations c WHERE c.id = i.conversation_id;
ALTER TABLE conversation_items ALTER COLUMN tenant_id SET NOT NULL;
CREATE INDEX conversation_items_tenant_created ON conversation_items (tenant_id, created_at);
-- served only the sweep
DROP INDEX conversation_items_created;
