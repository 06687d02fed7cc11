-- A held request or output is kept as the JSON text it arrived as (json, not jsonb): jsonb refuses the escape \u0000,
-- which a prompt or a model's output may hold, and the held content is released exactly as it was held.
ALTER TABLE safety_review_items ALTER COLUMN held TYPE json USING held::json;
