-- Tally schema, version 18: token usage from OTLP metrics (issue 17 item 6).
-- Applied by `tally migrate` and at start-up; every statement is idempotent.
--
-- * token_metric_minutes: per-minute totals of the GenAI client histograms
--   `gen_ai.client.token.usage` (one row per token type: input, output,
--   cache_read, cache_write, reasoning) and `gen_ai.client.operation.duration`
--   (token_type ''), by tenant, provider, model and operation. `minute` is the
--   UTC minute of the data point's time. Writers add increments to a row
--   (INSERT … ON CONFLICT DO UPDATE), so `tokens_sum`, `calls_count` and
--   `duration_sum_s` are sums over every point committed so far.
-- * token_metric_series: the last point stored of each metric stream (its
--   start time, time, count and sum), keyed by the SHA-256 of its identity
--   (metric name, resource, scope and point attributes). A cumulative point adds
--   only its growth since that point; a point not later than it is a resend
--   and adds nothing. Kept in PostgreSQL, so every instance and a restarted one
--   agree; a writer locks its series (pg_advisory_xact_lock on the first 8
--   bytes of the key) from reading it until COMMIT.
-- Both carry tenant_id, so row_security.sql gives them the tenant policies.
-- Retention deletes minutes older than retention.raw_days and series not seen
-- for as long.
CREATE TABLE IF NOT EXISTS token_metric_minutes (
    tenant_id      text             NOT NULL DEFAULT '',
    minute         timestamptz      NOT NULL,
    provider       text             NOT NULL DEFAULT '',
    model          text             NOT NULL DEFAULT '',
    operation      text             NOT NULL DEFAULT '',
    token_type     text             NOT NULL DEFAULT '',
    tokens_sum     bigint           NOT NULL DEFAULT 0,
    calls_count    bigint           NOT NULL DEFAULT 0,
    duration_sum_s double precision NOT NULL DEFAULT 0,
    updated_at     timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, minute, provider, model, operation, token_type)
);
CREATE INDEX IF NOT EXISTS token_metric_minutes_minute ON token_metric_minutes (minute);

CREATE TABLE IF NOT EXISTS token_metric_series (
    tenant_id  text             NOT NULL DEFAULT '',
    series_key text             NOT NULL,
    start_ns   bigint           NOT NULL,
    time_ns    bigint           NOT NULL,
    count      bigint           NOT NULL,
    sum        double precision NOT NULL,
    seen_at    timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, series_key)
);
CREATE INDEX IF NOT EXISTS token_metric_series_seen_at ON token_metric_series USING brin (seen_at);
