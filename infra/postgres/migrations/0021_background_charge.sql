-- A background response keeps what its tenant's limits were charged when it was asked (the estimate): an instance
-- that takes it over settles that charge with the tokens used, as the instance that asked would have.
ALTER TABLE stored_responses ADD COLUMN charge jsonb;  -- {"window", "month", "tokens"} (rate_limits.Charge)
