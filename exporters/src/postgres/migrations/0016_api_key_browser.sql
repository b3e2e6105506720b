-- Tally schema, version 16: REST ingest restrictions of an ingest key
-- (`tally apikey create --scope ingest --origin https://app.example --action ui.click`).
-- `allowed_origins`: browser origins that may use the key (answered in CORS
-- preflights; a request with an Origin header must present a key listing it);
-- empty for a key meant for servers. `allowed_actions`: the actions the key may
-- write on `POST /api/v1/events` (an entry ending in `*` is a prefix); empty: any.
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS allowed_origins text[] NOT NULL DEFAULT '{}';
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS allowed_actions text[] NOT NULL DEFAULT '{}';
