-- OpenAI's Conversations API (/v1/conversations) and the Responses API's conversation parameter: a conversation's
-- items, kept only for tenants that opted in to retention. Each item is readable for retention_days after it was
-- added, and a conversation for retention_days after its last change, as the tenant's setting stands now; the
-- ingress deletes what no retention covers (or all of a tenant whose retention is off).
CREATE TABLE conversations (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),  -- its last change: items added or removed, metadata set
    metadata    jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX conversations_tenant_updated ON conversations (tenant_id, updated_at);

CREATE TABLE conversation_items (
    conversation_id  text NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    position         bigserial,  -- the conversation's order
    id               text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    item             jsonb NOT NULL,  -- in OpenAI's listed shape, with its id
    PRIMARY KEY (conversation_id, id)
);
CREATE INDEX conversation_items_order ON conversation_items (conversation_id, position);
CREATE INDEX conversation_items_created ON conversation_items (created_at);
