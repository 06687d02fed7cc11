-- Safety (issue 6): retained text in the review queue is erased when its tenant's retention ends; held items nobody
-- decided by their deadline are expired (the tenant policy's on_review_expiry applied).

ALTER TABLE safety_review_items ADD COLUMN text_expires_at timestamptz;  -- the purge erases text after this instant
ALTER TABLE safety_review_items ADD COLUMN expired_at timestamptz;       -- when an undecided held item expired

ALTER TABLE safety_review_items DROP CONSTRAINT safety_review_items_status_check;
ALTER TABLE safety_review_items ADD CONSTRAINT safety_review_items_status_check
    CHECK (status IN ('pending', 'claimed', 'decided', 'expired'));

CREATE INDEX safety_review_text_expiry ON safety_review_items (text_expires_at) WHERE text IS NOT NULL;
CREATE INDEX safety_review_held_deadline ON safety_review_items (deadline_at) WHERE held IS NOT NULL;
