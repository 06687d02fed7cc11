-- Safety (issue 6): per-tenant screening policies, the human review queue, reviewers and their sessions, audit trail.

CREATE TABLE safety_policies (
    tenant_id  text PRIMARY KEY,               -- '*' is the default for tenants without their own row
    policy     jsonb NOT NULL,                 -- services.safety.policy.Policy as JSON
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE safety_users (
    username      text PRIMARY KEY,
    password_hash text NOT NULL,               -- scrypt, salted (services/safety/auth.py)
    role          text NOT NULL CHECK (role IN ('reviewer', 'admin')),
    can_unmask    boolean NOT NULL DEFAULT false,  -- may see retained text without PII masking
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE safety_sessions (
    token_hash text PRIMARY KEY,               -- sha256 of the cookie's token; the token itself is never stored
    username   text NOT NULL REFERENCES safety_users ON DELETE CASCADE,
    expires_at timestamptz NOT NULL
);

CREATE TABLE safety_review_items (
    id          bigserial PRIMARY KEY,
    request_id  text NOT NULL,
    tenant_id   text,
    model       text NOT NULL,
    stage       text NOT NULL CHECK (stage IN ('prompt', 'output')),
    action      text NOT NULL CHECK (action IN ('hold', 'release', 'block')),
    categories  text[] NOT NULL,
    scores      jsonb NOT NULL,
    priority    integer NOT NULL,
    deadline_at timestamptz NOT NULL,
    snippet     text NOT NULL,                 -- PII and secrets masked; all a reviewer sees without retained text
    text        text,                          -- only when the tenant set retain_text
    reply_topic text NOT NULL,
    held        jsonb,                         -- the held request or final event; erased once decided
    status      text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'claimed', 'decided')),
    claimed_by  text REFERENCES safety_users,
    claimed_at  timestamptz,
    decision    text CHECK (decision IN ('approve', 'reject', 'relabel')),
    labels      text[],                        -- the categories a reviewer says apply (the exported label)
    note        text,
    decided_by  text REFERENCES safety_users,
    decided_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (request_id, stage)                 -- a redelivered ContentFlagged is stored once
);
CREATE INDEX safety_review_queue ON safety_review_items (status, priority DESC, created_at);

CREATE TABLE safety_audit (
    id      bigserial PRIMARY KEY,
    item_id bigint REFERENCES safety_review_items ON DELETE CASCADE,
    actor   text NOT NULL,                     -- a username, or 'system'
    action  text NOT NULL,                     -- flagged, claimed, decided, released, withheld, signed_in, user_added
    detail  jsonb NOT NULL DEFAULT '{}',
    at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX safety_audit_item ON safety_audit (item_id, at);
