-- Tally schema, migration 14: one token_usage row per model call.
--
-- A call may be reported by its span and by log records (OpenLIT's
-- gen_ai.client.inference.operation.details event, opentelemetry-util-genai's
-- events), in any order, in different requests, to different instances. Each
-- stored token row leaves its keys here, under the writers' token lock
-- (`tallytok`): 's' + trace id + span id, and 'r' + gen_ai.response.id. A later
-- report of a call whose key is here is not stored (a span replaces a log
-- record's row instead: the span's row is preferred). `tenant_id` is the
-- sender's tenant scope (its ingest key's tenant; '' for senders bound to none):
-- reports match only within one scope. (ts, id) name the token_usage row that
-- stands for the call. Keys are kept a day (`created_at`, server time; a BRIN
-- index: keys arrive in time order, and it costs next to nothing per insert).
-- The partial index finds the keys of log records (few) that a span replaces.
CREATE TABLE IF NOT EXISTS token_calls (
    tenant_id text NOT NULL,
    call_key text NOT NULL,
    ts timestamptz NOT NULL,
    id uuid NOT NULL,
    from_span boolean NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, call_key)
);
CREATE INDEX IF NOT EXISTS token_calls_created_at ON token_calls USING brin (created_at);
CREATE INDEX IF NOT EXISTS token_calls_logs ON token_calls (tenant_id, call_key)
    WHERE NOT from_span;
