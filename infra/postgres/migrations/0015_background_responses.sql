-- Responses API background mode: the response is stored at once (status queued) and finished by the ingress
-- instance that queued it. finish_by: its deadline; a response still queued past it failed with its instance (the
-- instance stopped). reply_topic: where that instance hears the work, so that a cancel from any instance reaches it.
ALTER TABLE stored_responses ADD COLUMN finish_by timestamptz, ADD COLUMN reply_topic text;
