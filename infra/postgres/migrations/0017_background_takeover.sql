-- Background responses outlive the ingress instance finishing them: finisher names it (its instance id), and another
-- instance claims the response when that one beats no more; the answer is read from reply_topic from reply_offset
-- on. input_count: how many of the conversation's items are the response's own input (they join its conversation).
ALTER TABLE stored_responses ADD COLUMN finisher text, ADD COLUMN reply_offset bigint, ADD COLUMN input_count int;
CREATE INDEX stored_responses_unfinished ON stored_responses (finish_by)
    WHERE response->>'status' IN ('queued', 'in_progress');
