-- Safety (issues 4 and 6): the n choices of one request (n > 1) are n requests sharing one prompt; a prompt flagged
-- for review is one item for all of them, not n items before a reviewer.

ALTER TABLE safety_review_items ADD COLUMN choice_of text;              -- the request id its choices share
ALTER TABLE safety_review_items ADD COLUMN choice_ids text[] NOT NULL DEFAULT '{}';  -- the choices the item stands for

-- one item per request, stage and action: choices flagged alike join it (an action differs only when the tenant's
-- policy changed between two choices' screenings)
CREATE UNIQUE INDEX safety_review_choice_items ON safety_review_items (choice_of, stage, action)
    WHERE choice_of IS NOT NULL;
