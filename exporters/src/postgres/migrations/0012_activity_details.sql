-- Tally schema, version 12: details of each activity event (issue 18).
-- duration_ms:   span end − start in milliseconds (NULL for log records);
-- name:          the span name, or the log record's event name;
-- error_type:    `error.type`, else `exception.type`;
-- error_message: the span status message, else `exception.message` (redacted
--                like any attribute value before it is stored).
-- Nullable without a default: adding them rewrites no partition and fills
-- nothing retroactively; rows written before stay NULL there. Added on the
-- partitioned parent, so every partition (existing and future) has them.
ALTER TABLE activity_events ADD COLUMN IF NOT EXISTS duration_ms double precision;
ALTER TABLE activity_events ADD COLUMN IF NOT EXISTS name text;
ALTER TABLE activity_events ADD COLUMN IF NOT EXISTS error_type text;
ALTER TABLE activity_events ADD COLUMN IF NOT EXISTS error_message text;

-- The user whose rows an API key with scope `self:read` reads (`tally apikey
-- create --scope self:read --tenant T --user U`); NULL for every other key.
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS user_id text;
