-- What an instance that takes a background response over needs to replay its replies as the instance that asked
-- read them: whether its events are kept for stream readers, and whether its output waits for the verdict of a
-- prompt screened beside generation.
ALTER TABLE stored_responses ADD COLUMN streamed boolean NOT NULL DEFAULT false;
ALTER TABLE stored_responses ADD COLUMN screened_beside boolean NOT NULL DEFAULT false;
