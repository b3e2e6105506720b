-- Tally schema, version 10: which ingest API key wrote a row (`api_keys.id`;
-- NULL for a record sent without a key, or written by Tally itself). Never the
-- secret. Nullable without a default: adding the columns rewrites nothing.
ALTER TABLE activity_events ADD COLUMN IF NOT EXISTS ingest_key_id uuid;
ALTER TABLE token_usage ADD COLUMN IF NOT EXISTS ingest_key_id uuid;
ALTER TABLE rejected_events ADD COLUMN IF NOT EXISTS ingest_key_id uuid;
